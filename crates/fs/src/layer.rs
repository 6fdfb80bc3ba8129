//! One lazily fetched layer: its validated index, where its bytes come from,
//! and the read path that turns (file, offset, length) into verified bytes.
//!
//! Read path, in order: find the chunks that cover the range → for each chunk
//! not in the [`ChunkCache`], fetch its compressed bytes (merged with adjacent
//! missing chunks into one range request, within a window) → decompress and
//! check the chunk digest (`hologram_estargz::decompress_chunk`; a mismatch is
//! an error, counted, and never cached) → store → copy the requested slice.
//!
//! Fetches are single-flight per chunk: a reader that needs a chunk another
//! thread is fetching waits for that fetch instead of issuing its own, so many
//! readers never storm a slow registry. Every wait and every fetch is bounded
//! by `fetch_timeout`: a dead registry gives an error (EIO) in bounded time.
//!
//! Warming ([`Layer::warm`]) is one sequential pass over the whole blob, from
//! offset 0: the part before the prefetch landmark at full speed (prefetch),
//! the rest rate-limited (background fetch). The pass hashes every
//! compressed byte (the layer digest) and every decompressed byte (the diff
//! ID) and, given the digests the image claims ([`LayerDigests`]), ends in a
//! [`Verdict`]: a layer whose bytes are not what its image's manifest and
//! config say is marked bad, after which every read of it fails.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hologram_estargz::{decompress_chunk, Chunk, Index, NodeKind};
use hologram_oci::Digest;
use hologram_source::BlobSource;

use crate::cache::ChunkCache;
use crate::demand::DemandGate;
use crate::observer::Observer;
use crate::profile::{Learner, ProfileFiles};
use crate::spool::Spool;

/// Tunables of the read path.
#[derive(Debug, Clone)]
pub struct LayerConfig {
    /// Bound on one fetch (including the source's retries) and on waiting for
    /// another reader's fetch. Peers default to minutes; we default to 30 s.
    pub fetch_timeout: Duration,
    /// On a miss, also fetch following adjacent chunks (blob order) that are
    /// not cached, up to this many extra compressed bytes: eStargz puts files
    /// used together next to each other, and a request costs a round trip.
    pub readaround: u64,
    /// On a miss, also fetch the adjacent uncached chunks (before and after)
    /// of the other files in the same directory, up to this many compressed
    /// bytes (0: off).
    pub dir_readaround: u64,
    /// Largest single range request.
    pub max_request: u64,
    /// Fetch the files before the prefetch landmark at mount.
    pub prefetch: bool,
    /// Fetch the rest of the layer in the background.
    pub background_fetch: bool,
    /// Background fetch rate limit in bytes per second (0 = unlimited).
    pub background_rate: u64,
    /// How long a failed fetch of a chunk is remembered: the kernel retries
    /// a failed read at once (readahead, then synchronously), and each
    /// retry must fail at once too rather than wait another `fetch_timeout`.
    pub failure_memory: Duration,
    /// Offer FUSE passthrough for files complete in the cache. Off when the
    /// daemon hands its connections over across restarts: the kernel fixes
    /// each open inode's I/O mode (cached or passthrough) and a successor
    /// that does not know it would fail opens with EIO.
    pub passthrough: bool,
    /// Background fetch starts (and resumes) only once on-demand fetches
    /// have been quiet this long ([`crate::demand::DemandGate`]).
    pub background_quiet: Duration,
    /// Longest a prefetch or background request waits for its turn (the
    /// whole-layer check must not starve under endless reads).
    pub yield_max: Duration,
    /// Size of one background request: small, so that an on-demand read
    /// arriving meanwhile waits at most one short transfer for the link.
    pub background_window: u64,
    /// A read that misses in a file larger than the read-around also
    /// fetches, in the background and in parallel pieces, up to this many
    /// compressed bytes of the file after it (0: off). A large file read
    /// from its start (a shared library mapped and faulted in, a big
    /// module) then costs a few parallel round trips instead of one per
    /// read-around window.
    pub file_ahead: u64,
    /// The first read that misses in a directory also fetches, in the
    /// background and in parallel pieces, the other small files of that
    /// directory, up to this many compressed bytes (0: off).
    pub dir_ahead: u64,
}

impl Default for LayerConfig {
    fn default() -> Self {
        LayerConfig {
            fetch_timeout: Duration::from_secs(30),
            readaround: 64 * 1024,
            dir_readaround: 0,
            max_request: 8 * 1024 * 1024,
            prefetch: true,
            background_fetch: true,
            background_rate: 32 * 1024 * 1024,
            failure_memory: Duration::from_secs(2),
            passthrough: true,
            background_quiet: Duration::from_millis(500),
            yield_max: Duration::from_secs(10),
            background_window: 512 * 1024,
            file_ahead: 0,
            dir_ahead: 0,
        }
    }
}

/// Why a read failed. All of these become EIO at the FUSE edge.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no such inode {0}")]
    NoInode(u64),
    #[error("inode {0} is not a regular file")]
    NotFile(u64),
    #[error("fetching {what} of layer {layer} failed: {msg}")]
    Fetch {
        layer: String,
        what: String,
        msg: String,
    },
    #[error("chunk {digest} of layer {layer} failed verification: {msg}")]
    Verify {
        layer: String,
        digest: Digest,
        msg: String,
    },
    #[error("timed out after {0:?} waiting for layer data")]
    Timeout(Duration),
    #[error("chunk cache: {0}")]
    Cache(#[from] std::io::Error),
    #[error("layer {layer} failed verification and is no longer served: {reason}")]
    Rejected { layer: String, reason: String },
}

/// What the image claims about the blob: its digest (the manifest's layer
/// descriptor) and the digest of its uncompressed tar stream (the config's
/// diff ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerDigests {
    pub blob: Digest,
    pub diff_id: Digest,
}

/// Where the whole-blob check of a layer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not every byte has been seen yet (or no digests to compare with).
    Pending,
    /// The blob and its uncompressed stream have the digests claimed.
    Verified,
    /// They do not (or the blob is not a valid gzip stream): why.
    Bad(String),
}

/// Called once when a layer's verdict is reached (the daemon records it).
pub type VerdictHook = Box<dyn Fn(&Verdict) + Send + Sync>;

/// Per-layer counters the daemon reads at scrape time (per-event counts go
/// through the [`Observer`]).
#[derive(Debug, Default)]
pub struct LayerStats {
    /// Uncompressed bytes returned to readers.
    pub bytes_served: AtomicU64,
    pub verify_failures: AtomicU64,
    /// Compressed bytes fetched for readers (on demand).
    pub demand_bytes: AtomicU64,
    /// Compressed bytes fetched by prefetch / background fetch.
    pub prefetched_bytes: AtomicU64,
    pub background_bytes: AtomicU64,
    /// Verified chunks the cache could not store (disk full, I/O error):
    /// served from memory instead.
    pub cache_write_failures: AtomicU64,
}

/// Most bytes of verified chunks a layer keeps in memory when the cache
/// cannot store them.
const SPILL_LIMIT: u64 = 64 << 20;

/// Verified chunks the cache could not store, oldest first out.
#[derive(Debug, Default)]
struct Spill {
    chunks: HashMap<Digest, Arc<Vec<u8>>>,
    order: std::collections::VecDeque<Digest>,
    bytes: u64,
}

impl Spill {
    fn get(&self, d: &Digest) -> Option<Arc<Vec<u8>>> {
        self.chunks.get(d).cloned()
    }

    fn put(&mut self, d: Digest, bytes: Vec<u8>) {
        if self.chunks.contains_key(&d) {
            return;
        }
        self.bytes += bytes.len() as u64;
        self.chunks.insert(d, Arc::new(bytes));
        self.order.push_back(d);
        while self.bytes > SPILL_LIMIT && self.order.len() > 1 {
            if let Some(old) = self.order.pop_front() {
                if let Some(v) = self.chunks.remove(&old) {
                    self.bytes -= v.len() as u64;
                }
            }
        }
    }
}

/// A chunk's identity within its blob: several small files may share one
/// gzip member (same `blob_offset`, different `inner_offset`).
fn key(c: &Chunk) -> (u64, u64) {
    c.key()
}

/// Whether `b` directly follows `a` in the blob (next member, or the same one).
fn adjacent(a: &Chunk, b: &Chunk) -> bool {
    a.blob_offset + a.blob_len == b.blob_offset || a.blob_offset == b.blob_offset
}

#[derive(Debug, Default)]
struct Flight {
    done: Mutex<Option<Result<(), String>>>,
    cv: Condvar,
}

impl Flight {
    fn finish(&self, r: Result<(), String>) {
        if let Ok(mut d) = self.done.lock() {
            *d = Some(r);
        }
        self.cv.notify_all();
    }

    fn wait(&self, deadline: Instant) -> Option<Result<(), String>> {
        let mut d = self.done.lock().ok()?;
        loop {
            if let Some(r) = d.as_ref() {
                return Some(r.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            d = self.cv.wait_timeout(d, deadline - now).ok()?.0;
        }
    }
}

/// Who asked for a fetch, for accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Read,
    Prefetch,
    Background,
}

/// See the module documentation.
pub struct Layer {
    index: Index,
    source: Arc<dyn BlobSource>,
    cache: Arc<ChunkCache>,
    rt: tokio::runtime::Handle,
    cfg: LayerConfig,
    inflight: Mutex<HashMap<(u64, u64), Arc<Flight>>>,
    closed: AtomicBool,
    observer: Arc<dyn Observer>,
    pub stats: LayerStats,
    expected: Option<LayerDigests>,
    verdict: Mutex<Verdict>,
    hook: Option<VerdictHook>,
    /// The sequential pass (one at a time: warm and verify_now share it).
    pass: Mutex<Pass>,
    /// Chunks whose fetch failed just now: (when, why).
    failures: Mutex<HashMap<(u64, u64), (Instant, String)>>,
    spill: Mutex<Spill>,
    /// On-demand activity of every layer on the link.
    gate: Arc<DemandGate>,
    /// The directory (parent inode) of the file of each chunk, by position
    /// in blob order (0: none); 4 bytes per chunk.
    dir_of_pos: Vec<u32>,
    /// Files in the order they were first opened, when recording a
    /// profile ([`Layer::with_access_log`]).
    access: Option<Mutex<AccessLog>>,
    /// Learns this layer's read order on the node ([`Layer::with_learning`]).
    learner: Option<Learner>,
    /// A learned profile's chunks (positions in blob order), in the order
    /// to prefetch them ([`Layer::with_profile`]).
    profile: Vec<usize>,
    /// Compressed bytes fetched ahead of the pass, for the pass
    /// ([`Layer::with_spool`]).
    spool: Option<Spool>,
    /// Where the pass is (a copy of `Pass::pos` readable without its lock).
    pass_pos: AtomicU64,
    /// Pieces of [`Layer::fetch_ahead`] in flight.
    ahead_in_flight: std::sync::atomic::AtomicUsize,
    /// Directories whose small files [`Layer::fetch_ahead`] fetched.
    ahead_dirs: Mutex<std::collections::HashSet<u64>>,
}

/// Largest file `dir_ahead` fetches.
const DIR_AHEAD_FILE_MAX: u64 = 256 * 1024;

/// Compressed bytes of one [`Layer::fetch_ahead`] request.
const AHEAD_PIECE: u64 = 256 * 1024;
/// Most [`Layer::fetch_ahead`] requests of one layer in flight.
const AHEAD_IN_FLIGHT: usize = 8;

/// Chunks of a profile fetched by one request batch (before gap filling).
const PROFILE_BATCH_CHUNKS: usize = 48;
/// Compressed bytes of a profile batch.
const PROFILE_BATCH_BYTES: u64 = 4 << 20;
/// Profile batches in flight at once (each up to
/// `hologram_remote::RANGES_IN_FLIGHT` range requests).
const PROFILE_WORKERS: usize = 2;
/// Uncached chunks between two chunks of a batch are fetched too when they
/// are at most this many compressed bytes: one request instead of two.
const PROFILE_GAP_FILL: u64 = 32 * 1024;

/// First opens, in order (bounded).
#[derive(Debug, Default)]
struct AccessLog {
    seen: std::collections::HashSet<u64>,
    order: Vec<u64>,
}

/// Most files an access log keeps.
const ACCESS_LOG_MAX: usize = 1 << 20;

/// Progress of the sequential pass over the blob.
struct Pass {
    /// Every byte before this offset went through the hashers.
    pos: u64,
    blob: hologram_oci::Sha256Writer,
    gz: Option<flate2::write::MultiGzDecoder<hologram_oci::Sha256Writer>>,
}

impl Pass {
    fn new() -> Pass {
        Pass {
            pos: 0,
            blob: Digest::hasher(),
            gz: Some(flate2::write::MultiGzDecoder::new(Digest::hasher())),
        }
    }
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer")
            .field("digest", &self.source.digest())
            .finish_non_exhaustive()
    }
}

impl Layer {
    /// A layer over an already validated index.
    pub fn new(
        index: Index,
        source: Arc<dyn BlobSource>,
        cache: Arc<ChunkCache>,
        rt: tokio::runtime::Handle,
        cfg: LayerConfig,
        observer: Arc<dyn Observer>,
    ) -> Layer {
        Layer {
            index,
            source,
            cache,
            rt,
            cfg,
            inflight: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            observer,
            stats: LayerStats::default(),
            expected: None,
            verdict: Mutex::new(Verdict::Pending),
            hook: None,
            pass: Mutex::new(Pass::new()),
            failures: Mutex::new(HashMap::new()),
            spill: Mutex::new(Spill::default()),
            gate: Arc::new(DemandGate::default()),
            access: None,
            learner: None,
            profile: Vec::new(),
            spool: None,
            pass_pos: AtomicU64::new(0),
            ahead_in_flight: std::sync::atomic::AtomicUsize::new(0),
            ahead_dirs: Mutex::new(std::collections::HashSet::new()),
            dir_of_pos: Vec::new(),
        }
        .with_dirs()
    }

    /// Fills `dir_of_pos` from the index (only when directory read-around
    /// is on: it costs 4 bytes per chunk).
    fn with_dirs(mut self) -> Layer {
        if self.cfg.dir_readaround == 0 {
            return self;
        }
        let order = self.index.blob_order();
        let mut pos_of_id = vec![u32::MAX; order.len()];
        for (pos, &id) in order.iter().enumerate() {
            if let Some(slot) = pos_of_id.get_mut(id as usize) {
                *slot = u32::try_from(pos).unwrap_or(u32::MAX);
            }
        }
        let mut dirs = vec![0u32; order.len()];
        for ino in 1..=self.index.len() as u64 {
            let Some(node) = self.index.node(ino) else {
                continue;
            };
            if node.kind != NodeKind::Reg {
                continue;
            }
            let parent = u32::try_from(node.parent).unwrap_or(0);
            for id in self.index.chunk_ids(node) {
                if let Some(&pos) = pos_of_id.get(id as usize) {
                    if let Some(d) = dirs.get_mut(pos as usize) {
                        *d = parent;
                    }
                }
            }
        }
        self.dir_of_pos = dirs;
        self
    }

    /// Records the order in which files are first opened (a profile for
    /// `hologram convert --record`).
    pub fn with_access_log(mut self) -> Layer {
        self.access = Some(Mutex::new(AccessLog::default()));
        self
    }

    /// Notes that regular file `ino` was opened (first opens only count).
    pub fn record_open(&self, ino: u64) {
        let Some(log) = &self.access else { return };
        if let Ok(mut l) = log.lock() {
            if l.order.len() < ACCESS_LOG_MAX && l.seen.insert(ino) {
                l.order.push(ino);
            }
        }
    }

    /// Paths (from the layer root) of the files opened so far, in the order
    /// of their first open; empty without an access log.
    pub fn opened_in_order(&self) -> Vec<std::path::PathBuf> {
        let Some(log) = &self.access else {
            return Vec::new();
        };
        let order = log.lock().map(|l| l.order.clone()).unwrap_or_default();
        order
            .into_iter()
            .filter_map(|ino| self.index.path_of(ino))
            .collect()
    }

    /// Learns the order in which this layer's chunks are first read, for
    /// `window` after the first read (see [`crate::profile`]).
    pub fn with_learning(mut self, window: Duration, max_chunks: usize) -> Layer {
        self.learner = Some(Learner::new(window, max_chunks));
        self
    }

    /// Keeps the compressed bytes on-demand reads and prefetch fetch ahead
    /// of the background pass in a sparse file at `path`, so that the pass
    /// (the whole-layer check) does not fetch them again. Only with
    /// background fetch on; without a spool (it cannot be created) the
    /// pass fetches everything itself.
    pub fn with_spool(mut self, path: &std::path::Path) -> Layer {
        if !self.cfg.background_fetch {
            return self;
        }
        match Spool::create(path) {
            Ok(s) => self.spool = Some(s),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "no spool for the layer check: it will fetch what reads fetched again")
            }
        }
        self
    }

    /// After a read of `ino` at `offset..offset+size` that had to fetch:
    /// fetches up to `file_ahead` compressed bytes of the file after the
    /// read-around window, in pieces of [`AHEAD_PIECE`] bytes, from the
    /// runtime's blocking threads (at most [`AHEAD_IN_FLIGHT`] pieces per
    /// layer). Chunks cached or in flight are skipped; a reader that needs
    /// a chunk a piece has in flight waits for that piece only.
    pub fn fetch_ahead(self: &Arc<Self>, ino: u64, offset: u64, size: u32) {
        if (self.cfg.file_ahead == 0 && self.cfg.dir_ahead == 0)
            || self.closed.load(Ordering::Relaxed)
        {
            return;
        }
        let Some(node) = self.index.node(ino) else {
            return;
        };
        if node.kind != NodeKind::Reg {
            return;
        }
        let from = offset
            .saturating_add(u64::from(size))
            .saturating_add(self.cfg.readaround);
        let chunks = self.index.chunks(node);
        let first = chunks.partition_point(|c| c.file_offset < from);
        let mut wanted: Vec<usize> = Vec::new();
        let mut total = 0u64;
        for c in &chunks[first..] {
            if total >= self.cfg.file_ahead {
                break;
            }
            if self.have(&c.digest) {
                continue;
            }
            let Some(p) = self.pos_of(c) else { continue };
            wanted.push(p);
            total += c.blob_len;
        }
        // The directory's other small files, the first time it misses.
        let parent = node.parent;
        let first_in_dir =
            self.cfg.dir_ahead > 0 && self.ahead_dirs.lock().is_ok_and(|mut d| d.insert(parent));
        if first_in_dir {
            let mut dir_total = 0u64;
            for (_, child) in self.index.children(parent) {
                if child == ino {
                    continue;
                }
                let Some(n) = self.index.node(child) else {
                    continue;
                };
                if n.kind != NodeKind::Reg || n.size > DIR_AHEAD_FILE_MAX {
                    continue;
                }
                for c in self.index.chunks(n) {
                    if dir_total >= self.cfg.dir_ahead || self.have(&c.digest) {
                        continue;
                    }
                    if let Some(p) = self.pos_of(c) {
                        wanted.push(p);
                        dir_total += c.blob_len;
                    }
                }
            }
        }
        let wanted = self.fill_gaps(wanted);
        let mut pieces: Vec<Vec<usize>> = Vec::new();
        let (mut cur, mut cur_bytes) = (Vec::new(), 0u64);
        for p in wanted {
            let Some(c) = self.chunk_at(p) else { continue };
            cur.push(p);
            cur_bytes += c.blob_len;
            if cur_bytes >= AHEAD_PIECE {
                pieces.push(std::mem::take(&mut cur));
                cur_bytes = 0;
            }
        }
        if !cur.is_empty() {
            pieces.push(cur);
        }
        for piece in pieces {
            if self.ahead_in_flight.fetch_add(1, Ordering::Relaxed) >= AHEAD_IN_FLIGHT {
                self.ahead_in_flight.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            let me = Arc::clone(self);
            drop(self.rt.spawn_blocking(move || {
                let _ = me.fetch_positions(&piece, Purpose::Prefetch);
                me.ahead_in_flight.fetch_sub(1, Ordering::Relaxed);
            }));
        }
    }

    /// Gives the spool the blob's TOC region (the bytes from the TOC member
    /// to the footer, checked against the TOC digest when the index was
    /// built), so the check does not fetch it again.
    pub fn spool_toc_region(&self, region: &[u8]) {
        let Some(sp) = &self.spool else { return };
        let end = self
            .source
            .size()
            .saturating_sub(hologram_estargz::FOOTER_SIZE);
        if let Some(start) = end.checked_sub(region.len() as u64) {
            sp.put(start, region);
        }
    }

    /// Whether the layer is learning a profile that is not taken yet.
    pub fn is_learning(&self) -> bool {
        self.learner.is_some()
    }

    /// The learned profile once its window has passed (`force`: now, e.g.
    /// at unmount), once; `None` before, after, or when nothing was read.
    pub fn take_learned(&self, force: bool) -> Option<ProfileFiles> {
        let l = self.learner.as_ref()?;
        if !force && !l.window_passed() {
            return None;
        }
        l.take(&self.index)
    }

    /// Prefetches `files` (a learned profile) in their order at mount,
    /// before the prefetch landmark's part. Paths the index does not have
    /// and offsets past a file's end are skipped. Returns the layer and
    /// the number of chunks the profile names here.
    pub fn with_profile(mut self, files: &ProfileFiles) -> (Layer, usize) {
        let mut seen = std::collections::HashSet::new();
        let mut order = Vec::new();
        for (path, offsets) in files {
            let Some(node) =
                crate::profile::resolve(&self.index, path).and_then(|ino| self.index.node(ino))
            else {
                continue;
            };
            let chunks = self.index.chunks(node);
            for &off in offsets {
                let i = chunks.partition_point(|c| c.file_offset + c.size <= off);
                let Some(c) = chunks.get(i).filter(|c| c.file_offset <= off) else {
                    continue;
                };
                if let Some(p) = self.pos_of(c) {
                    if seen.insert(p) {
                        order.push(p);
                    }
                }
            }
        }
        let n = order.len();
        self.profile = order;
        (self, n)
    }

    /// Shares `gate` (one per daemon: the layers share the link), so that
    /// this layer's prefetch and background fetch yield to every layer's
    /// on-demand reads.
    pub fn with_demand_gate(mut self, gate: Arc<DemandGate>) -> Layer {
        self.gate = gate;
        self
    }

    /// The digests the layer's bytes must have; `hook` hears the verdict.
    pub fn with_expected(mut self, expected: LayerDigests, hook: Option<VerdictHook>) -> Layer {
        self.expected = Some(expected);
        self.hook = hook;
        self
    }

    /// Where the whole-blob check stands.
    pub fn verdict(&self) -> Verdict {
        self.verdict
            .lock()
            .map(|v| v.clone())
            .unwrap_or_else(|_| Verdict::Bad("internal lock poisoned".into()))
    }

    fn rejected(&self) -> Option<String> {
        match self.verdict() {
            Verdict::Bad(reason) => Some(reason),
            _ => None,
        }
    }

    fn set_verdict(&self, v: Verdict) {
        if let Ok(mut cur) = self.verdict.lock() {
            if *cur != Verdict::Pending {
                return;
            }
            *cur = v.clone();
        }
        if let Verdict::Bad(reason) = &v {
            tracing::error!(layer = %self.digest(), reason = %reason, "layer failed verification: it is no longer served");
        } else {
            tracing::info!(layer = %self.digest(), "layer verified: blob digest and diff ID match");
        }
        if let Some(h) = &self.hook {
            h(&v);
        }
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Whether FUSE passthrough may be offered (see [`LayerConfig`]).
    pub fn passthrough_allowed(&self) -> bool {
        self.cfg.passthrough
    }

    /// The runtime the layer fetches on (the FUSE edge runs waiting reads
    /// on its blocking threads).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }

    pub fn digest(&self) -> &Digest {
        self.source.digest()
    }

    pub fn source_kind(&self) -> &'static str {
        self.source.kind().as_str()
    }

    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    pub fn observer(&self) -> &Arc<dyn Observer> {
        &self.observer
    }

    /// Whether a chunk's verified bytes are at hand (cache or memory).
    fn have(&self, d: &Digest) -> bool {
        self.cache.contains(d) || self.spill.lock().is_ok_and(|s| s.get(d).is_some())
    }

    /// Copies `len` bytes at `from` of chunk `d` into `out`, from the cache
    /// or from memory; false when neither has it.
    fn copy_chunk(
        &self,
        d: &Digest,
        from: u64,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, ReadError> {
        if self.cache.read_into(d, from, len, out)? {
            return Ok(true);
        }
        let spilled = self.spill.lock().ok().and_then(|s| s.get(d));
        let Some(bytes) = spilled else {
            return Ok(false);
        };
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
        let end = start.saturating_add(len).min(bytes.len());
        out.extend_from_slice(&bytes[start..end]);
        Ok(true)
    }

    /// A fetch of chunk `c` that failed within `failure_memory`.
    fn recent_failure(&self, c: &Chunk) -> Option<String> {
        let f = self.failures.lock().ok()?;
        let (at, why) = f.get(&key(c))?;
        (at.elapsed() < self.cfg.failure_memory).then(|| why.clone())
    }

    fn remember_failure(&self, c: &Chunk, why: &str) {
        let memory = self.cfg.failure_memory;
        if let Ok(mut f) = self.failures.lock() {
            f.retain(|_, (at, _)| at.elapsed() < memory);
            f.insert(key(c), (Instant::now(), why.to_owned()));
        }
    }

    /// Reads like [`Layer::read`], but only when every byte is at hand
    /// (`None` otherwise): never waits on the network, so the FUSE edge can
    /// answer it on its own thread.
    pub fn read_if_cached(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
    ) -> Option<Result<Vec<u8>, ReadError>> {
        let node = self.index.node(ino)?;
        let end = node.size.min(offset.saturating_add(u64::from(size)));
        let chunks = self.index.chunks(node);
        let first = chunks.partition_point(|c| c.file_offset + c.size <= offset);
        let all_here = chunks[first..]
            .iter()
            .take_while(|c| c.file_offset < end)
            .all(|c| self.have(&c.digest));
        all_here.then(|| self.read(ino, offset, size))
    }

    /// Chunks of this layer not in the cache yet (an estimate: it checks the
    /// cache for every chunk, so call it at scrape time, not per read).
    pub fn pending_chunks(&self) -> u64 {
        (0..self.index.blob_order().len())
            .filter_map(|p| self.chunk_at(p))
            .filter(|c| !self.cache.contains(&c.digest))
            .count() as u64
    }

    /// Stops prefetch/background work (at unmount).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// The chunk at position `pos` in blob order.
    fn chunk_at(&self, pos: usize) -> Option<&Chunk> {
        self.index.chunk(*self.index.blob_order().get(pos)?)
    }

    fn pos_of(&self, chunk: &Chunk) -> Option<usize> {
        self.index
            .blob_order()
            .binary_search_by_key(&key(chunk), |&id| self.index.chunk(id).map_or((0, 0), key))
            .ok()
    }

    /// Reads up to `size` bytes at `offset` of regular file `ino`.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, ReadError> {
        if let Some(reason) = self.rejected() {
            return Err(ReadError::Rejected {
                layer: self.digest().to_string(),
                reason,
            });
        }
        let node = self.index.node(ino).ok_or(ReadError::NoInode(ino))?;
        if node.kind != NodeKind::Reg {
            return Err(ReadError::NotFile(ino));
        }
        let end = node.size.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(Vec::new());
        }
        let chunks = self.index.chunks(node);
        let first = chunks.partition_point(|c| c.file_offset + c.size <= offset);
        let wanted: Vec<&Chunk> = chunks[first..]
            .iter()
            .take_while(|c| c.file_offset < end)
            .collect();
        if let Some(l) = &self.learner {
            l.note(ino, &wanted);
        }
        // The chunks of this read that are missing, fetched together: one
        // round trip for a source that batches, even when cached chunks
        // split them into several runs. Failures surface in the loop below.
        // (Missing chunks in one run take the usual path, with read-around.)
        let missing: Vec<usize> = wanted
            .iter()
            .filter(|c| !self.have(&c.digest) && self.recent_failure(c).is_none())
            .filter_map(|c| self.pos_of(c))
            .collect();
        let split = missing.windows(2).any(|w| {
            w[1] != w[0] + 1
                || !matches!((self.chunk_at(w[0]), self.chunk_at(w[1])), (Some(a), Some(b)) if adjacent(a, b))
        });
        let mut counted: Vec<usize> = Vec::new();
        if split {
            for _ in &missing {
                self.observer.cache_lookup(false);
            }
            let _ = self.fetch_positions(&missing, Purpose::Read);
            counted = missing;
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for c in wanted {
            let from = offset.max(c.file_offset) - c.file_offset;
            let to = end.min(c.file_offset + c.size) - c.file_offset;
            let len = (to - from) as usize;
            let mut tries = 0;
            // A chunk the batch above brought in was counted there.
            let mut fetched = self.pos_of(c).is_some_and(|p| counted.contains(&p));
            loop {
                if !(fetched && self.have(&c.digest)) {
                    self.ensure(c, Purpose::Read)?;
                }
                fetched = false;
                if self.copy_chunk(&c.digest, from, len, &mut out)? {
                    break;
                }
                // evicted between fetch and read: fetch once more
                tries += 1;
                if tries > 2 {
                    return Err(ReadError::Fetch {
                        layer: self.digest().to_string(),
                        what: c.digest.to_string(),
                        msg: "chunk cache evicted the chunk before it could be read; is the cache too small?".into(),
                    });
                }
            }
        }
        self.stats
            .bytes_served
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// Makes sure `chunk` is in the cache, fetching it (and a read-around
    /// window after it) if needed.
    fn ensure(&self, chunk: &Chunk, purpose: Purpose) -> Result<(), ReadError> {
        let hit = self.have(&chunk.digest);
        if purpose == Purpose::Read {
            self.observer.cache_lookup(hit);
        }
        if hit {
            return Ok(());
        }
        if let Some(why) = self.recent_failure(chunk) {
            return Err(ReadError::Fetch {
                layer: self.digest().to_string(),
                what: chunk.digest.to_string(),
                msg: format!("failed moments ago: {why}"),
            });
        }
        let Some(pos) = self.pos_of(chunk) else {
            return Err(ReadError::Fetch {
                layer: self.digest().to_string(),
                what: chunk.digest.to_string(),
                msg: "chunk not in the layer index".into(),
            });
        };
        let span = self.readaround_span(pos);
        // Only the chunk asked for decides this read: a bad chunk of another
        // file in the read-around window is that file's problem.
        if let Some((_, e)) = self
            .fetch_positions(&span, purpose)
            .into_iter()
            .find(|(p, _)| *p == pos)
        {
            return Err(e);
        }
        // The chunk we need may have been claimed by another reader.
        if self.have(&chunk.digest) {
            return Ok(());
        }
        self.wait_for(chunk)
    }

    /// The positions to fetch for a miss at `pos`: the chunk, then the
    /// adjacent uncached chunks after it up to `readaround` bytes, and —
    /// both ways — those of the other files of the same directory up to
    /// `dir_readaround` bytes. Files of one directory lie together in the
    /// blob (tar order) and are used together (a package's modules, a
    /// program's libraries), so one request brings a directory's worth of
    /// small files for one round trip.
    fn readaround_span(&self, pos: usize) -> Vec<usize> {
        let dir = self.dir_of_pos.get(pos).copied();
        let same_dir = |p: usize| dir.is_some() && self.dir_of_pos.get(p).copied() == dir;
        let (mut extra, mut dir_extra) = (0u64, 0u64);
        let mut take = |p: usize, c: &Chunk| -> bool {
            if self.have(&c.digest) {
                return false;
            }
            if same_dir(p) && dir_extra + c.blob_len <= self.cfg.dir_readaround {
                dir_extra += c.blob_len;
                return true;
            }
            if extra + c.blob_len <= self.cfg.readaround {
                extra += c.blob_len;
                return true;
            }
            false
        };
        let mut after = Vec::new();
        let mut next = pos + 1;
        while let (Some(prev), Some(c)) = (self.chunk_at(next - 1), self.chunk_at(next)) {
            if !adjacent(prev, c) || !take(next, c) {
                break;
            }
            after.push(next);
            next += 1;
        }
        let mut before = Vec::new();
        let mut prev_pos = pos;
        while let Some(p) = prev_pos.checked_sub(1) {
            let (Some(c), Some(later)) = (self.chunk_at(p), self.chunk_at(prev_pos)) else {
                break;
            };
            if !adjacent(c, later) || !same_dir(p) || !take(p, c) {
                break;
            }
            before.push(p);
            prev_pos = p;
        }
        before.reverse();
        before.push(pos);
        before.extend(after);
        before
    }

    fn wait_for(&self, chunk: &Chunk) -> Result<(), ReadError> {
        let flight = self
            .inflight
            .lock()
            .ok()
            .and_then(|m| m.get(&key(chunk)).cloned());
        let Some(flight) = flight else {
            // Not cached and nobody fetching: fetch it alone.
            let pos = self.pos_of(chunk).unwrap_or(usize::MAX);
            if let Some((_, e)) = self
                .fetch_positions(&[pos], Purpose::Read)
                .into_iter()
                .next()
            {
                return Err(e);
            }
            return if self.have(&chunk.digest) {
                Ok(())
            } else {
                self.wait_for_flight_only(chunk)
            };
        };
        self.finish_wait(&flight, chunk)
    }

    fn wait_for_flight_only(&self, chunk: &Chunk) -> Result<(), ReadError> {
        match self
            .inflight
            .lock()
            .ok()
            .and_then(|m| m.get(&key(chunk)).cloned())
        {
            Some(f) => self.finish_wait(&f, chunk),
            None => Err(ReadError::Fetch {
                layer: self.digest().to_string(),
                what: chunk.digest.to_string(),
                msg: "chunk could not be fetched".into(),
            }),
        }
    }

    fn finish_wait(&self, flight: &Flight, chunk: &Chunk) -> Result<(), ReadError> {
        let deadline = Instant::now() + self.cfg.fetch_timeout + Duration::from_secs(1);
        match flight.wait(deadline) {
            Some(Ok(())) => Ok(()),
            Some(Err(msg)) => Err(ReadError::Fetch {
                layer: self.digest().to_string(),
                what: chunk.digest.to_string(),
                msg,
            }),
            None => Err(ReadError::Timeout(self.cfg.fetch_timeout)),
        }
    }

    /// Claims the chunks at `positions` that are neither cached nor in flight,
    /// fetches them in contiguous runs, verifies, caches, and wakes waiters.
    /// Returns the errors of the chunks this call fetched, by position.
    fn fetch_positions(&self, positions: &[usize], purpose: Purpose) -> Vec<(usize, ReadError)> {
        let mut mine: Vec<(usize, Arc<Flight>)> = Vec::new();
        {
            let Ok(mut inflight) = self.inflight.lock() else {
                let msg = || "internal lock poisoned".to_owned();
                return positions
                    .iter()
                    .map(|p| {
                        (
                            *p,
                            ReadError::Fetch {
                                layer: self.digest().to_string(),
                                what: "chunk".into(),
                                msg: msg(),
                            },
                        )
                    })
                    .collect();
            };
            for &p in positions {
                let Some(c) = self.chunk_at(p) else { continue };
                if self.have(&c.digest) || inflight.contains_key(&key(c)) {
                    continue;
                }
                let f = Arc::new(Flight::default());
                inflight.insert(key(c), Arc::clone(&f));
                mine.push((p, f));
            }
        }
        let mut runs: Vec<&[(usize, Arc<Flight>)]> = Vec::new();
        let mut i = 0;
        while i < mine.len() {
            // a run of blob-contiguous chunks within max_request
            let mut j = i + 1;
            while j < mine.len() {
                let (Some(a), Some(b)) = (self.chunk_at(mine[j - 1].0), self.chunk_at(mine[j].0))
                else {
                    break;
                };
                let start = self.chunk_at(mine[i].0).map_or(0, |c| c.blob_offset);
                if !adjacent(a, b) || b.blob_offset + b.blob_len - start > self.cfg.max_request {
                    break;
                }
                j += 1;
            }
            runs.push(&mine[i..j]);
            i = j;
        }
        match runs.as_slice() {
            [] => Vec::new(),
            [run] => self.fetch_run(run, purpose),
            // Several runs: one read_ranges call, one round trip for a
            // source that batches (CTP-96).
            _ => self.fetch_runs(&runs, purpose),
        }
    }

    /// Fetches `range` of the blob, bounded by `fetch_timeout`, and accounts
    /// for it. Exactly `range.len()` bytes or the reason why not.
    fn fetch_range(&self, range: Range<u64>, purpose: Purpose) -> Result<bytes::Bytes, String> {
        let mut v = self.fetch_ranges(std::slice::from_ref(&range), purpose)?;
        v.pop().ok_or_else(|| "no data".to_owned())
    }

    /// Fetches `ranges` of the blob with one `read_ranges` call, bounded by
    /// `fetch_timeout`, and accounts for them. Exactly the bytes of every
    /// range, or the reason why not.
    fn fetch_ranges(
        &self,
        ranges: &[Range<u64>],
        purpose: Purpose,
    ) -> Result<Vec<bytes::Bytes>, String> {
        let len: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        let _demand = (purpose == Purpose::Read).then(|| self.gate.demand());
        let t = Instant::now();
        let res = self.rt.block_on(async {
            tokio::time::timeout(self.cfg.fetch_timeout, self.source.read_ranges(ranges)).await
        });
        let exact = |d: &Vec<bytes::Bytes>| {
            d.len() == ranges.len()
                && d.iter()
                    .zip(ranges)
                    .all(|(b, r)| b.len() as u64 == r.end - r.start)
        };
        let ok = matches!(&res, Ok(Ok(d)) if exact(d));
        self.observer.fetch(
            self.source_kind(),
            t.elapsed().as_secs_f64(),
            if ok { len } else { 0 },
            ok,
        );
        let data = match res {
            Ok(Ok(d)) if exact(&d) => d,
            other => {
                let msg = match other {
                    Ok(Ok(d)) => format!(
                        "short read: {} bytes in {} pieces, asked for {len} in {}",
                        d.iter().map(|b| b.len()).sum::<usize>(),
                        d.len(),
                        ranges.len()
                    ),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {:?}", self.cfg.fetch_timeout),
                };
                let offset = ranges.first().map_or(0, |r| r.start);
                tracing::warn!(layer = %self.digest(), offset, len, ranges = ranges.len(), error = %msg, "fetch failed");
                return Err(msg);
            }
        };
        match purpose {
            Purpose::Prefetch => self
                .stats
                .prefetched_bytes
                .fetch_add(len, Ordering::Relaxed),
            Purpose::Background => self
                .stats
                .background_bytes
                .fetch_add(len, Ordering::Relaxed),
            Purpose::Read => self.stats.demand_bytes.fetch_add(len, Ordering::Relaxed),
        };
        Ok(data)
    }

    /// The blob range a run of chunks covers.
    fn run_range(&self, run: &[(usize, Arc<Flight>)]) -> Option<Range<u64>> {
        let first = self.chunk_at(run.first()?.0)?;
        let last = self.chunk_at(run.last()?.0)?;
        Some(first.blob_offset..last.blob_offset + last.blob_len)
    }

    /// Fetches one contiguous run; returns the errors by position.
    fn fetch_run(&self, run: &[(usize, Arc<Flight>)], purpose: Purpose) -> Vec<(usize, ReadError)> {
        let Some(range) = self.run_range(run) else {
            return Vec::new();
        };
        match self.fetch_range(range.clone(), purpose) {
            Ok(data) => self.deliver(run, &data, range.start, purpose != Purpose::Background),
            Err(msg) => self.fail_run(run, &range, &msg, purpose),
        }
    }

    /// Fetches several runs with one `read_ranges` call; returns the errors
    /// by position.
    fn fetch_runs(
        &self,
        runs: &[&[(usize, Arc<Flight>)]],
        purpose: Purpose,
    ) -> Vec<(usize, ReadError)> {
        let ranges: Vec<Range<u64>> = runs.iter().filter_map(|r| self.run_range(r)).collect();
        if ranges.len() != runs.len() {
            return runs
                .iter()
                .flat_map(|r| self.fetch_run(r, purpose))
                .collect();
        }
        match self.fetch_ranges(&ranges, purpose) {
            Ok(datas) => runs
                .iter()
                .zip(&ranges)
                .zip(&datas)
                .flat_map(|((run, range), data)| {
                    self.deliver(run, data, range.start, purpose != Purpose::Background)
                })
                .collect(),
            Err(msg) => runs
                .iter()
                .zip(&ranges)
                .flat_map(|(run, range)| self.fail_run(run, range, &msg, purpose))
                .collect(),
        }
    }

    /// Records a failed fetch of `run` and wakes its waiters; the errors by
    /// position.
    fn fail_run(
        &self,
        run: &[(usize, Arc<Flight>)],
        range: &Range<u64>,
        msg: &str,
        purpose: Purpose,
    ) -> Vec<(usize, ReadError)> {
        // Only reads remember failures (their retries fail at once); a
        // failed prefetch leaves the next read free to try.
        if purpose == Purpose::Read {
            for (p, _) in run {
                if let Some(c) = self.chunk_at(*p) {
                    self.remember_failure(c, msg);
                }
            }
        }
        self.complete(run, Err(msg.to_owned()));
        run.iter()
            .map(|(p, _)| {
                let e = ReadError::Fetch {
                    layer: self.digest().to_string(),
                    what: format!("bytes {}..{}", range.start, range.end),
                    msg: msg.to_owned(),
                };
                (*p, e)
            })
            .collect()
    }

    /// Decompresses, verifies and caches the claimed chunks of `run` from
    /// `data` (blob bytes starting at `start`), waking their waiters; with
    /// `spool`, keeps the compressed bytes of the verified chunks the pass
    /// has not reached for it. Returns the errors by position.
    fn deliver(
        &self,
        run: &[(usize, Arc<Flight>)],
        data: &[u8],
        start: u64,
        spool: bool,
    ) -> Vec<(usize, ReadError)> {
        let spool = self.spool.as_ref().filter(|_| spool);
        let pass_pos = self.pass_pos.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for (pos, flight) in run {
            let Some(c) = self.chunk_at(*pos) else {
                continue;
            };
            let lo = (c.blob_offset - start) as usize;
            let hi = lo + c.blob_len as usize;
            let r = match data.get(lo..hi).map(|b| decompress_chunk(c, b)) {
                Some(Ok(bytes)) => {
                    // Only verified bytes: a corrupt answer is refetched
                    // by the pass, never hashed as the layer's.
                    if let (Some(sp), Some(raw)) = (spool, data.get(lo..hi)) {
                        if c.blob_offset + c.blob_len > pass_pos {
                            sp.put(c.blob_offset, raw);
                        }
                    }
                    if let Err(e) = self.cache.put(&c.digest, &bytes) {
                        // Verified bytes are served anyway, from memory.
                        let n = self
                            .stats
                            .cache_write_failures
                            .fetch_add(1, Ordering::Relaxed);
                        if n == 0 {
                            tracing::warn!(layer = %self.digest(), error = %e, "the chunk cache cannot store chunks; serving them from memory");
                        }
                        if let Ok(mut s) = self.spill.lock() {
                            s.put(c.digest, bytes);
                        }
                    }
                    Ok(())
                }
                Some(Err(e)) => {
                    self.stats.verify_failures.fetch_add(1, Ordering::Relaxed);
                    self.observer.verify_failure();
                    tracing::error!(layer = %self.digest(), chunk = %c.digest, error = %e, "chunk failed verification; not cached");
                    errors.push((
                        *pos,
                        ReadError::Verify {
                            layer: self.digest().to_string(),
                            digest: c.digest,
                            msg: e.to_string(),
                        },
                    ));
                    Err(format!("verification failed: {e}"))
                }
                None => Err("range shorter than the chunk".to_owned()),
            };
            if let Err(m) = &r {
                if !errors.iter().any(|(p, _)| p == pos) {
                    let e = ReadError::Fetch {
                        layer: self.digest().to_string(),
                        what: c.digest.to_string(),
                        msg: m.clone(),
                    };
                    errors.push((*pos, e));
                }
            }
            flight.finish(r);
            if let Ok(mut m) = self.inflight.lock() {
                m.remove(&key(c));
            }
        }
        errors
    }

    /// Claims the chunks at `positions` that are neither cached nor in
    /// flight (for a caller that fetches their bytes itself).
    fn claim(&self, positions: impl Iterator<Item = usize>) -> Vec<(usize, Arc<Flight>)> {
        let Ok(mut inflight) = self.inflight.lock() else {
            return Vec::new();
        };
        let mut mine = Vec::new();
        for p in positions {
            let Some(c) = self.chunk_at(p) else { continue };
            if self.have(&c.digest) || inflight.contains_key(&key(c)) {
                continue;
            }
            let f = Arc::new(Flight::default());
            inflight.insert(key(c), Arc::clone(&f));
            mine.push((p, f));
        }
        mine
    }

    fn complete(&self, run: &[(usize, Arc<Flight>)], r: Result<(), String>) {
        let mut m = self.inflight.lock().ok();
        for (p, f) in run {
            f.finish(r.clone());
            if let (Some(m), Some(c)) = (m.as_mut(), self.chunk_at(*p)) {
                m.remove(&key(c));
            }
        }
    }

    /// Prefetch (the blob up to the landmark, at full speed), then background
    /// fetch (the rest, rate limited), as configured: one sequential pass
    /// that also verifies the layer (see the module documentation). Runs
    /// until done or [`Layer::close`]; a failed fetch is retried with
    /// backoff while the layer is mounted.
    pub fn warm(&self) {
        // A mount is activity: background fetch waits its quiet period from
        // now (the container usually starts right after its pull).
        self.gate.touch();
        if self.cfg.prefetch {
            self.prefetch_profile();
        }
        let prefetch_end = if self.cfg.prefetch {
            self.index.prefetch_end()
        } else {
            None
        };
        if let Some(end) = prefetch_end {
            let t = Instant::now();
            let r = self.run_pass(end, Purpose::Prefetch, 0, None);
            tracing::info!(layer = %self.digest(), until = end, result = ?r, elapsed = ?t.elapsed(), "prefetch done");
        }
        if !self.cfg.background_fetch {
            return;
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.run_pass(
                self.source.size(),
                Purpose::Background,
                self.cfg.background_rate,
                None,
            ) {
                Ok(()) => break,
                Err(e) if self.closed.load(Ordering::Relaxed) => {
                    tracing::debug!(layer = %self.digest(), error = %e, "background fetch stopped");
                    return;
                }
                Err(e) => {
                    tracing::warn!(layer = %self.digest(), error = %e, retry_in = ?backoff, "background fetch interrupted");
                    if self.sleep_unless_closed(backoff) {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
        tracing::debug!(layer = %self.digest(), "background fetch done");
    }

    /// Fetches the chunks of the learned profile, in its order: batches of
    /// neighbouring entries, each sorted by blob offset with small gaps
    /// filled (fewer, longer requests), [`PROFILE_WORKERS`] batches at a
    /// time, each batch's runs in parallel. It does not wait for on-demand
    /// reads: the profile is the order the workload itself read in, so it
    /// fetches what the next reads will want, and a read needing a chunk
    /// it has in flight waits for that one fetch instead of issuing another.
    fn prefetch_profile(&self) {
        if self.profile.is_empty() {
            return;
        }
        let t = Instant::now();
        let before = self.stats.prefetched_bytes.load(Ordering::Relaxed);
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let (mut cur, mut bytes) = (Vec::new(), 0u64);
        for &p in &self.profile {
            let Some(c) = self.chunk_at(p) else { continue };
            if self.have(&c.digest) {
                continue;
            }
            cur.push(p);
            bytes += c.blob_len;
            if cur.len() >= PROFILE_BATCH_CHUNKS || bytes >= PROFILE_BATCH_BYTES {
                batches.push(self.fill_gaps(std::mem::take(&mut cur)));
                bytes = 0;
            }
        }
        if !cur.is_empty() {
            batches.push(self.fill_gaps(cur));
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..PROFILE_WORKERS.min(batches.len()) {
                s.spawn(|| loop {
                    if self.closed.load(Ordering::Relaxed) {
                        return;
                    }
                    let Some(batch) = batches.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    let errors = self.fetch_positions(batch, Purpose::Prefetch);
                    failed.fetch_add(errors.len() as u64, Ordering::Relaxed);
                });
            }
        });
        tracing::info!(
            layer = %self.digest(),
            chunks = self.profile.len(),
            batches = batches.len(),
            fetched = self.stats.prefetched_bytes.load(Ordering::Relaxed) - before,
            failed = failed.load(Ordering::Relaxed),
            elapsed = ?t.elapsed(),
            "learned-profile prefetch done"
        );
    }

    /// `batch` sorted by blob position, with the uncached chunks lying
    /// between two of its chunks added when they are few bytes.
    fn fill_gaps(&self, mut batch: Vec<usize>) -> Vec<usize> {
        batch.sort_unstable();
        batch.dedup();
        let mut out = Vec::with_capacity(batch.len());
        for w in batch.windows(2) {
            let (a, b) = (w[0], w[1]);
            out.push(a);
            // Fill only a short, contiguous gap (stop counting early).
            let mut between = 0u64;
            let mut fill = b > a + 1;
            for p in a..b {
                let (Some(x), Some(y)) = (self.chunk_at(p), self.chunk_at(p + 1)) else {
                    fill = false;
                    break;
                };
                if p > a {
                    between += x.blob_len;
                }
                if !adjacent(x, y) || between > PROFILE_GAP_FILL {
                    fill = false;
                    break;
                }
            }
            if fill {
                out.extend(a + 1..b);
            }
        }
        if let Some(&last) = batch.last() {
            out.push(last);
        }
        out
    }

    /// Sleeps up to `d`; true when the layer was closed meanwhile.
    fn sleep_unless_closed(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.closed.load(Ordering::Relaxed) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
        }
        self.closed.load(Ordering::Relaxed)
    }

    /// Runs the whole-blob check now (at full speed) if it has not
    /// finished, within `deadline`. The verdict after the pass.
    pub fn verify_now(&self, deadline: Instant) -> Verdict {
        if self.verdict() == Verdict::Pending {
            if let Err(e) =
                self.run_pass(self.source.size(), Purpose::Background, 0, Some(deadline))
            {
                tracing::warn!(layer = %self.digest(), error = %e, "verification could not finish");
            }
        }
        self.verdict()
    }

    /// Advances the sequential pass up to `until` (a chunk boundary or the
    /// blob's end): fetches window after window, hashes them, caches the
    /// chunks they hold, and at the end of the blob decides the verdict.
    fn run_pass(
        &self,
        until: u64,
        purpose: Purpose,
        rate: u64,
        deadline: Option<Instant>,
    ) -> Result<(), String> {
        let Ok(mut pass) = self.pass.lock() else {
            return Err("internal lock poisoned".into());
        };
        let size = self.source.size();
        let until = until.min(size);
        let started = Instant::now();
        let mut sent = 0u64;
        while pass.pos < until {
            if self.closed.load(Ordering::Relaxed) {
                return Err("layer closed".into());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err("out of time".into());
            }
            if self.rejected().is_some() {
                return Ok(());
            }
            // On-demand reads first: prefetch waits while one is in flight,
            // background fetch until they have been quiet a while. A check
            // someone waits for (a deadline) goes at once.
            let quiet = match purpose {
                Purpose::Prefetch => Some(Duration::ZERO),
                Purpose::Background if deadline.is_none() => Some(self.cfg.background_quiet),
                _ => None,
            };
            if let Some(quiet) = quiet {
                let closed = || self.closed.load(Ordering::Relaxed);
                if !self.gate.wait_for_turn(quiet, self.cfg.yield_max, closed) {
                    return Err("layer closed".into());
                }
            }
            let size = match purpose {
                Purpose::Background if deadline.is_none() => self.cfg.background_window,
                _ => self.cfg.max_request,
            };
            let window = self.next_window(pass.pos, until, size);
            let positions = self.chunks_within(&window);
            let run = self.claim(positions.into_iter());
            let data = match self.pass_window(&window, purpose) {
                Ok(d) => d,
                Err(e) => {
                    self.complete(&run, Err(e.clone()));
                    return Err(e);
                }
            };
            let _ = self.deliver(&run, &data, window.start, false);
            self.hash_window(&mut pass, &data);
            pass.pos = window.end;
            self.pass_pos.store(window.end, Ordering::Relaxed);
            if let Some(sp) = &self.spool {
                sp.release_before(window.end);
            }
            sent += data.len() as u64;
            throttle(started, sent, rate);
        }
        if pass.pos >= size {
            self.finish_pass(&mut pass);
        }
        Ok(())
    }

    /// The bytes of `window` for the pass: what the spool holds from
    /// there, the rest fetched (one `read_ranges` call).
    fn pass_window(&self, window: &Range<u64>, purpose: Purpose) -> Result<bytes::Bytes, String> {
        let parts = match &self.spool {
            Some(sp) => sp.split(window),
            None => Vec::new(),
        };
        let Some(sp) = self
            .spool
            .as_ref()
            .filter(|_| parts.iter().any(|(_, held)| *held))
        else {
            return self.fetch_range(window.clone(), purpose);
        };
        let missing: Vec<Range<u64>> = parts
            .iter()
            .filter(|(_, held)| !held)
            .map(|(r, _)| r.clone())
            .collect();
        let mut fetched = if missing.is_empty() {
            Vec::new()
        } else {
            self.fetch_ranges(&missing, purpose)?
        }
        .into_iter();
        let mut out = Vec::with_capacity((window.end - window.start) as usize);
        for (r, held) in parts {
            if held {
                // A spool that cannot be read only costs a fetch.
                match sp.read(&r) {
                    Ok(b) => out.extend_from_slice(&b),
                    Err(_) => out.extend_from_slice(&self.fetch_range(r, purpose)?),
                }
            } else {
                let b = fetched.next().ok_or("a range got no answer")?;
                out.extend_from_slice(&b);
            }
        }
        Ok(bytes::Bytes::from(out))
    }

    fn hash_window(&self, pass: &mut Pass, data: &[u8]) {
        use std::io::Write as _;
        pass.blob.update(data);
        if let Some(gz) = pass.gz.as_mut() {
            if let Err(e) = gz.write_all(data) {
                pass.gz = None;
                if self.expected.is_some() {
                    self.set_verdict(Verdict::Bad(format!(
                        "the blob is not a valid gzip stream: {e}"
                    )));
                }
            }
        }
    }

    /// Compares what the pass measured with what the image claims.
    fn finish_pass(&self, pass: &mut Pass) {
        let Some(expected) = self.expected else {
            return;
        };
        let blob = std::mem::take(&mut pass.blob).finish();
        let diff_id = match pass.gz.take().map(|gz| gz.finish()) {
            Some(Ok(h)) => h.finish(),
            Some(Err(e)) => {
                return self.set_verdict(Verdict::Bad(format!(
                    "the blob is not a valid gzip stream: {e}"
                )))
            }
            None => return,
        };
        if blob != expected.blob {
            self.set_verdict(Verdict::Bad(format!(
                "the registry served bytes with digest {blob}, not the layer {}",
                expected.blob
            )));
        } else if diff_id != expected.diff_id {
            self.set_verdict(Verdict::Bad(format!(
                "the layer's uncompressed content has diff ID {diff_id}, but the image config claims {}",
                expected.diff_id
            )));
        } else {
            self.set_verdict(Verdict::Verified);
        }
    }

    /// The next window of the pass from `pos`: about `size` bytes,
    /// ending at a chunk start (so every chunk lies wholly in one window),
    /// or at the end of the chunk holding `pos` when that one is larger.
    fn next_window(&self, pos: u64, until: u64, size: u64) -> Range<u64> {
        let order = self.index.blob_order();
        let start_of = |p: usize| self.chunk_at(p).map_or(u64::MAX, |c| c.blob_offset);
        let target = pos.saturating_add(size.max(1)).min(until);
        // The last chunk start at or before `target` that lies after `pos`.
        let i = order.partition_point(|&id| {
            self.index
                .chunk(id)
                .is_some_and(|c| c.blob_offset <= target)
        });
        let mut end = if i > 0 && start_of(i - 1) > pos {
            start_of(i - 1)
        } else {
            target
        };
        if target < until {
            // Do not cut a chunk: extend to the end of the one holding `end`.
            let j = order
                .partition_point(|&id| self.index.chunk(id).is_some_and(|c| c.blob_offset < end));
            if let Some(c) = j.checked_sub(1).and_then(|j| self.chunk_at(j)) {
                if c.blob_offset < end && c.blob_offset + c.blob_len > end {
                    end = (c.blob_offset + c.blob_len).min(until);
                }
            }
        }
        if end <= pos {
            end = until;
        }
        pos..end
    }

    /// Positions (blob order) of the chunks lying wholly inside `r`.
    fn chunks_within(&self, r: &Range<u64>) -> Vec<usize> {
        let order = self.index.blob_order();
        let first = order.partition_point(|&id| {
            self.index
                .chunk(id)
                .is_some_and(|c| c.blob_offset < r.start)
        });
        (first..order.len())
            .take_while(|&p| self.chunk_at(p).is_some_and(|c| c.blob_offset < r.end))
            .filter(|&p| {
                self.chunk_at(p)
                    .is_some_and(|c| c.blob_offset + c.blob_len <= r.end)
            })
            .collect()
    }
}

fn throttle(started: Instant, sent: u64, rate: u64) {
    if rate == 0 {
        return;
    }
    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
#[path = "layer_tests.rs"]
mod tests;
