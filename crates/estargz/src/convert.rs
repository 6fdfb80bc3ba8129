//! Converter: plain tar stream in, eStargz blob out.
//!
//! Layout written (the same as the reference implementation's):
//!
//! * every input entry's header blocks (including PAX / GNU long-name
//!   extension headers) are copied verbatim from the input;
//! * each regular-file chunk starts a new gzip member; the member that holds
//!   the last chunk of a file also holds that file's tar padding and the
//!   headers of all following entries up to the next file payload;
//! * the landmark entry comes first (`.no.prefetch.landmark`) or after the
//!   prioritized files (`.prefetch.landmark`);
//! * the TOC member holds the `stargz.index.json` tar entry and the two zero
//!   blocks that end the tar; the 51-byte footer follows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom, Write};

use flate2::write::GzEncoder;
use hologram_oci::{Digest, Sha256Writer};

use crate::index::clean_name;
use crate::toc::{encode_toc_json, Toc, TocEntry};
use crate::{
    footer_bytes, Error, Index, DEFAULT_CHUNK_SIZE, MAX_FILE_SIZE, NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK, TOC_JSON_NAME,
};

/// Inputs up to this size are spooled in memory, larger ones in a temp file.
const SPOOL_IN_MEMORY: usize = 64 << 20;
const BLOCK: u64 = 512;
const LANDMARK_CONTENTS: u8 = 0x0f;
/// Longest hardlink chain followed when ordering prioritized files.
const MAX_LINK_HOPS: usize = 64;

/// Options of [`convert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertOptions {
    /// Largest uncompressed chunk of a regular file (default 4 MiB).
    pub chunk_size: usize,
    /// Files to put first, in this order, followed by `.prefetch.landmark`.
    /// Paths are relative to the layer root ("/etc/x", "./etc/x" and "etc/x"
    /// are the same); their parent directories (and hardlink targets) move
    /// along. Files not in this layer are skipped and reported in
    /// [`Converted::missed_prioritized_files`]. Empty: no prefetch, the layer
    /// gets `.no.prefetch.landmark`.
    pub prioritized_files: Vec<String>,
    /// gzip level 0-9 (default 9, as ctr-remote).
    pub gzip_level: u32,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            prioritized_files: Vec::new(),
            gzip_level: 9,
        }
    }
}

/// Result of [`convert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// Digest of the TOC JSON: the value of the
    /// [`crate::TOC_DIGEST_ANNOTATION`] layer annotation.
    pub toc_digest: Digest,
    /// Digest of the whole uncompressed output tar stream (the layer's diff
    /// ID in the image config).
    pub diff_id: Digest,
    /// Digest of the compressed blob (the layer descriptor's digest).
    pub digest: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    /// Size of the uncompressed tar stream
    /// ([`crate::UNCOMPRESSED_SIZE_ANNOTATION`]).
    pub uncompressed_size: u64,
    /// Offset of the TOC gzip member in the blob.
    pub toc_offset: u64,
    /// Prioritized files that are not in this layer.
    pub missed_prioritized_files: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InKind {
    Dir,
    Reg,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

/// One input tar entry, located in the spooled input.
struct InEntry {
    /// First byte of its header blocks (extension headers included).
    hdr_start: u64,
    /// First byte of its data.
    data_start: u64,
    size: u64,
    kind: InKind,
    name: String,
    key: String,
    link_name: String,
    mode: u32,
    uid: u64,
    gid: u64,
    uname: String,
    gname: String,
    mtime: i64,
    dev_major: u32,
    dev_minor: u32,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn tar_err(e: io::Error) -> Error {
    Error::InputTar(e.to_string())
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// PAX `mtime` ("123.456"), rounded to whole seconds.
fn parse_pax_time(v: &str) -> Option<i64> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = int.parse().ok()?;
    let round = frac.bytes().next().is_some_and(|d| d >= b'5');
    Some(if round {
        if int.starts_with('-') {
            secs - 1
        } else {
            secs + 1
        }
    } else {
        secs
    })
}

/// A numeric header field; an empty (all NUL / space) field is 0, as in
/// the reference implementation's tar reader.
fn numeric(
    hdr: &tar::Header,
    parsed: io::Result<u64>,
    field: std::ops::Range<usize>,
) -> Result<u64, String> {
    parsed.or_else(|e| {
        if hdr.as_bytes()[field].iter().all(|&b| b == 0 || b == b' ') {
            Ok(0)
        } else {
            Err(e.to_string())
        }
    })
}

fn index_tar<R: Read + Seek>(r: R) -> Result<Vec<InEntry>, Error> {
    let mut archive = tar::Archive::new(r);
    let mut out = Vec::new();
    let mut prev_end = 0u64;
    for ent in archive.entries_with_seek().map_err(tar_err)? {
        let mut ent = ent.map_err(tar_err)?;
        let name = String::from_utf8(ent.path_bytes().into_owned()).map_err(|e| {
            Error::InputTar(format!(
                "entry name {:?} is not UTF-8 (eStargz TOC names are JSON strings)",
                String::from_utf8_lossy(e.as_bytes())
            ))
        })?;
        let ierr = |m: String| Error::InputTar(format!("entry {name:?}: {m}"));
        let hdr = ent.header();
        let raw_type = hdr.as_bytes()[156];
        let kind = match hdr.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if raw_type == 0 && name.ends_with('/') {
                    InKind::Dir
                } else {
                    InKind::Reg
                }
            }
            tar::EntryType::Directory => InKind::Dir,
            tar::EntryType::Symlink => InKind::Symlink,
            tar::EntryType::Link => InKind::Hardlink,
            tar::EntryType::Char => InKind::Char,
            tar::EntryType::Block => InKind::Block,
            tar::EntryType::Fifo => InKind::Fifo,
            other => return Err(ierr(format!("unsupported tar entry type {other:?}"))),
        };
        let key = clean_name(&name).map_err(ierr)?.join("/");
        let link_name = match ent.link_name_bytes() {
            Some(l) if matches!(kind, InKind::Symlink | InKind::Hardlink) => {
                String::from_utf8(l.into_owned())
                    .map_err(|_| ierr("link target is not UTF-8".into()))?
            }
            _ => String::new(),
        };
        let mode = numeric(hdr, hdr.mode().map(u64::from), 100..108).map_err(&ierr)? as u32;
        let uid = numeric(hdr, hdr.uid(), 108..116).map_err(&ierr)?;
        let gid = numeric(hdr, hdr.gid(), 116..124).map_err(&ierr)?;
        let mut mtime = numeric(hdr, hdr.mtime(), 136..148).map_err(&ierr)? as i64;
        let mut uname =
            String::from_utf8_lossy(hdr.username_bytes().unwrap_or_default()).into_owned();
        let mut gname =
            String::from_utf8_lossy(hdr.groupname_bytes().unwrap_or_default()).into_owned();
        let (mut dev_major, mut dev_minor) = (0, 0);
        if matches!(kind, InKind::Char | InKind::Block) {
            dev_major = hdr
                .device_major()
                .map_err(|e| ierr(e.to_string()))?
                .unwrap_or(0);
            dev_minor = hdr
                .device_minor()
                .map_err(|e| ierr(e.to_string()))?
                .unwrap_or(0);
        }
        let raw_header = ent.raw_header_position();
        let data_start = ent.raw_file_position();
        let size = ent.size();
        if kind == InKind::Reg && size > MAX_FILE_SIZE {
            return Err(ierr(format!("{size} bytes is over the 1 TiB limit")));
        }
        if raw_header < prev_end || raw_header + BLOCK != data_start {
            return Err(ierr("unexpected tar layout".into()));
        }
        let mut xattrs = BTreeMap::new();
        if let Some(pax) = ent.pax_extensions().map_err(tar_err)? {
            for ext in pax {
                let ext = ext.map_err(tar_err)?;
                let key = ext.key_bytes();
                if let Some(x) = key.strip_prefix(b"SCHILY.xattr.") {
                    let xname = String::from_utf8(x.to_vec())
                        .map_err(|_| ierr("xattr name is not UTF-8".into()))?;
                    xattrs.insert(xname, ext.value_bytes().to_vec());
                } else if key == b"mtime" {
                    if let Some(t) = ext.value().ok().and_then(parse_pax_time) {
                        mtime = t;
                    }
                } else if key == b"uname" {
                    uname = String::from_utf8_lossy(ext.value_bytes()).into_owned();
                } else if key == b"gname" {
                    gname = String::from_utf8_lossy(ext.value_bytes()).into_owned();
                }
            }
        }
        out.push(InEntry {
            hdr_start: prev_end,
            data_start,
            size,
            kind,
            name,
            key,
            link_name,
            mode,
            uid,
            gid,
            uname,
            gname,
            mtime,
            dev_major,
            dev_minor,
            xattrs,
        });
        prev_end = data_start
            .checked_add(round_up(size))
            .ok_or_else(|| Error::InputTar("size overflow".into()))?;
    }
    Ok(out)
}

/// The reference implementation's name cleaning for prioritized files
/// (`path.Clean("/" + name)` without the leading slash).
fn clean_lexically(name: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

fn parent_key(key: &str) -> &str {
    key.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

/// Orders prioritized entries first (parents and hardlink targets before
/// them), like the reference implementation.
struct Prioritizer<'a> {
    entries: &'a [InEntry],
    by_key: HashMap<&'a str, usize>,
    picked: Vec<usize>,
    picked_set: HashSet<usize>,
}

impl Prioritizer<'_> {
    fn pick(&mut self, i: usize) {
        if self.picked_set.insert(i) {
            self.picked.push(i);
        }
    }

    /// Moves `key` (and what it needs) to the front; false if not found.
    fn move_rec(&mut self, key: &str, hops: usize) -> bool {
        if key.is_empty() {
            if let Some(&i) = self.by_key.get("") {
                self.pick(i);
            }
            return true;
        }
        let Some(&i) = self.by_key.get(key) else {
            return false;
        };
        if self.picked_set.contains(&i) {
            return true;
        }
        self.move_rec(parent_key(key), hops);
        let e = &self.entries[i];
        if e.kind == InKind::Hardlink && hops < MAX_LINK_HOPS {
            let target = clean_lexically(&e.link_name);
            self.move_rec(&target, hops + 1);
        }
        self.pick(i);
        true
    }
}

/// Counts and hashes the compressed output.
struct Counter<W: Write> {
    inner: W,
    n: u64,
    hash: Sha256Writer,
}

impl<W: Write> Write for Counter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.hash.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the uncompressed tar stream as a sequence of gzip members.
struct BlobWriter<W: Write> {
    idle: Option<Counter<W>>,
    gz: Option<GzEncoder<Counter<W>>>,
    level: flate2::Compression,
    diff: Sha256Writer,
    ulen: u64,
}

fn state_err() -> io::Error {
    io::Error::other("eStargz writer used after a failed write")
}

impl<W: Write> BlobWriter<W> {
    /// Appends tar bytes to the current member (opening one if needed).
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.gz.is_none() {
            self.open()?;
        }
        self.diff.update(data);
        self.ulen += data.len() as u64;
        self.gz.as_mut().ok_or_else(state_err)?.write_all(data)
    }

    fn open(&mut self) -> io::Result<()> {
        let c = self.idle.take().ok_or_else(state_err)?;
        self.gz = Some(GzEncoder::new(c, self.level));
        Ok(())
    }

    fn close_member(&mut self) -> io::Result<()> {
        if let Some(gz) = self.gz.take() {
            self.idle = Some(gz.finish()?);
        }
        Ok(())
    }

    /// Ends the current member and starts a new one; returns its offset.
    fn start_member(&mut self) -> io::Result<u64> {
        self.close_member()?;
        let off = self.idle.as_ref().ok_or_else(state_err)?.n;
        self.open()?;
        Ok(off)
    }

    fn offset(&self) -> io::Result<u64> {
        Ok(self.idle.as_ref().ok_or_else(state_err)?.n)
    }

    fn write_raw(&mut self, data: &[u8]) -> io::Result<()> {
        self.idle.as_mut().ok_or_else(state_err)?.write_all(data)
    }
}

fn new_header(name: &str, size: u64) -> Result<tar::Header, Error> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

fn name_if_changed(seen: &mut HashMap<u64, String>, id: u64, name: &str) -> String {
    if name.is_empty() || seen.get(&id).map(String::as_str) == Some(name) {
        return String::new();
    }
    seen.insert(id, name.to_owned());
    name.to_owned()
}

/// A TOC `modtime`: RFC 3339 in UTC; zero (unknown) and times outside
/// years 1-9999, which have no RFC 3339 form, are left out.
fn format_mtime(secs: i64) -> String {
    if secs == 0 {
        return String::new();
    }
    if (-62_135_596_800..=253_402_207_200).contains(&secs) {
        hologram_oci::time::format_unix(secs)
    } else {
        String::new()
    }
}

/// Reads a tar stream (uncompressed) and writes an eStargz blob to `output`.
///
/// The input is spooled first (in memory up to 64 MiB, else in a temp file)
/// because entries are reordered (prioritized files) and de-duplicated (a
/// later entry with the same cleaned path replaces an earlier one, as in the
/// reference implementation). Existing `stargz.index.json` and landmark
/// entries are dropped. Names must be UTF-8, must not contain `..`, and
/// hardlinks must point at regular files, or the result would not mount.
/// The written blob is checked with [`Index::build_with_toc_offset`] before
/// returning.
pub fn convert<R: Read, W: Write>(
    mut input: R,
    output: W,
    opts: &ConvertOptions,
) -> Result<Converted, Error> {
    check_options(opts)?;
    let mut spool = tempfile::SpooledTempFile::new(SPOOL_IN_MEMORY);
    io::copy(&mut input, &mut spool)?;
    spool.seek(SeekFrom::Start(0))?;
    let entries = index_tar(&mut spool)?;
    let (kept, last) = keep_last(&entries);
    check_hardlinks(&entries, &kept, &last)?;
    let (order, landmark, missed) = output_order(&entries, &kept, opts);
    let mut w = TocWriter::new(output, opts, spool);
    for slot in order {
        match slot {
            Slot::Landmark => w.landmark(landmark)?,
            Slot::Entry(i) => w.entry(&entries[i])?,
        }
    }
    let (toc, toc_digest, written) = w.finish()?;
    // Self-check: our own reader must accept what we wrote.
    Index::build_with_toc_offset(&toc, written.size, written.toc_offset)?;
    Ok(Converted {
        toc_digest,
        diff_id: written.diff_id,
        digest: written.digest,
        size: written.size,
        uncompressed_size: written.uncompressed_size,
        toc_offset: written.toc_offset,
        missed_prioritized_files: missed,
    })
}

fn check_options(opts: &ConvertOptions) -> Result<(), Error> {
    if opts.chunk_size == 0 {
        return Err(Error::Options("chunk size must be at least 1 byte".into()));
    }
    if opts.gzip_level > 9 {
        return Err(Error::Options(format!(
            "gzip level {} is not in 0..=9",
            opts.gzip_level
        )));
    }
    Ok(())
}

/// The entries to write: TOC and landmarks dropped, and of several entries
/// with one cleaned path only the last. Also the last index per path.
fn keep_last(entries: &[InEntry]) -> (Vec<usize>, HashMap<&str, usize>) {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if e.key == TOC_JSON_NAME || e.key == PREFETCH_LANDMARK || e.key == NO_PREFETCH_LANDMARK {
            continue;
        }
        last.insert(e.key.as_str(), i);
    }
    let kept = (0..entries.len())
        .filter(|&i| last.get(entries[i].key.as_str()) == Some(&i))
        .collect();
    (kept, last)
}

/// Hardlinks must end, after following hardlink chains, at a regular file
/// of this layer.
fn check_hardlinks(
    entries: &[InEntry],
    kept: &[usize],
    last: &HashMap<&str, usize>,
) -> Result<(), Error> {
    for &i in kept {
        let e = &entries[i];
        if e.kind != InKind::Hardlink {
            continue;
        }
        let mut cur = i;
        for _ in 0..=kept.len() {
            let c = &entries[cur];
            if c.kind != InKind::Hardlink {
                break;
            }
            let target = clean_name(&c.link_name)
                .map_err(|r| {
                    Error::InputTar(format!("hardlink {:?} -> {:?}: {r}", e.name, c.link_name))
                })?
                .join("/");
            cur = *last.get(target.as_str()).ok_or_else(|| {
                Error::InputTar(format!(
                    "hardlink {:?} -> {:?}: the target is not in this layer",
                    e.name, c.link_name
                ))
            })?;
        }
        if entries[cur].kind != InKind::Reg {
            return Err(Error::InputTar(format!(
                "hardlink {:?} -> {:?}: the target is not a regular file (eStargz readers present hardlinks only to regular files)",
                e.name, e.link_name
            )));
        }
    }
    Ok(())
}

/// One thing to write, in output order.
enum Slot {
    Entry(usize),
    Landmark,
}

/// The output order: with prioritized files, those first (with their
/// parents and hardlink targets), then `.prefetch.landmark`, then the rest;
/// without, `.no.prefetch.landmark` first. Also the landmark's name and the
/// prioritized files not found.
fn output_order(
    entries: &[InEntry],
    kept: &[usize],
    opts: &ConvertOptions,
) -> (Vec<Slot>, &'static str, Vec<String>) {
    let mut order: Vec<Slot> = Vec::with_capacity(kept.len() + 1);
    let mut missed = Vec::new();
    if opts.prioritized_files.is_empty() {
        order.push(Slot::Landmark);
        order.extend(kept.iter().map(|&i| Slot::Entry(i)));
        return (order, NO_PREFETCH_LANDMARK, missed);
    }
    let mut p = Prioritizer {
        entries,
        by_key: kept.iter().map(|&i| (entries[i].key.as_str(), i)).collect(),
        picked: Vec::new(),
        picked_set: HashSet::new(),
    };
    for f in &opts.prioritized_files {
        if !p.move_rec(&clean_lexically(f), 0) {
            missed.push(f.clone());
        }
    }
    order.extend(p.picked.iter().map(|&i| Slot::Entry(i)));
    order.push(Slot::Landmark);
    order.extend(
        kept.iter()
            .filter(|i| !p.picked_set.contains(i))
            .map(|&i| Slot::Entry(i)),
    );
    (order, PREFETCH_LANDMARK, missed)
}

/// What the blob writer measured.
struct Written {
    digest: Digest,
    diff_id: Digest,
    size: u64,
    uncompressed_size: u64,
    toc_offset: u64,
}

/// Writes entries as eStargz members and records them in the TOC.
struct TocWriter<W: Write, S: Read + Seek> {
    bw: BlobWriter<W>,
    toc: Toc,
    spool: S,
    chunk_size: u64,
    unames: HashMap<u64, String>,
    gnames: HashMap<u64, String>,
    buf: Vec<u8>,
}

const ZEROS: [u8; BLOCK as usize * 2] = [0u8; BLOCK as usize * 2];

impl<W: Write, S: Read + Seek> TocWriter<W, S> {
    fn new(output: W, opts: &ConvertOptions, spool: S) -> Self {
        TocWriter {
            bw: BlobWriter {
                idle: Some(Counter {
                    inner: output,
                    n: 0,
                    hash: Digest::hasher(),
                }),
                gz: None,
                level: flate2::Compression::new(opts.gzip_level),
                diff: Digest::hasher(),
                ulen: 0,
            },
            toc: Toc {
                version: 1,
                entries: Vec::new(),
            },
            spool,
            chunk_size: opts.chunk_size as u64,
            unames: HashMap::new(),
            gnames: HashMap::new(),
            buf: vec![0u8; 64 << 10],
        }
    }

    /// The landmark entry: a 1-byte file in a member of its own.
    fn landmark(&mut self, name: &str) -> Result<(), Error> {
        let h = new_header(name, 1)?;
        self.bw.write(h.as_bytes())?;
        let offset = self.bw.start_member()?;
        self.bw.write(&[LANDMARK_CONTENTS])?;
        let d = Digest::of(&[LANDMARK_CONTENTS]).to_string();
        self.toc.entries.push(TocEntry {
            name: name.to_owned(),
            kind: "reg".into(),
            size: 1,
            mode: 0o644,
            offset: offset as i64,
            digest: d.clone(),
            chunk_digest: d,
            ..TocEntry::default()
        });
        self.bw.write(&ZEROS[..BLOCK as usize - 1])?;
        Ok(())
    }

    /// One input entry: its header blocks verbatim, then its data (a
    /// regular file's in chunks, each starting a member), then padding.
    fn entry(&mut self, e: &InEntry) -> Result<(), Error> {
        let hdr_len = (e.data_start - e.hdr_start) as usize;
        let mut hdr = vec![0u8; hdr_len];
        self.spool.seek(SeekFrom::Start(e.hdr_start))?;
        self.spool.read_exact(&mut hdr)?;
        self.bw.write(&hdr)?;
        let ent = self.toc_entry(e);
        self.spool.seek(SeekFrom::Start(e.data_start))?;
        if e.kind == InKind::Reg {
            self.file_chunks(e, ent)?;
        } else {
            // Data of other entry types (normally none) is kept as is.
            self.copy_data(e, e.size, None)?;
            self.toc.entries.push(ent);
        }
        let pad = (round_up(e.size) - e.size) as usize;
        self.bw.write(&ZEROS[..pad])?;
        Ok(())
    }

    /// The TOC entry of `e`, without offsets and digests.
    fn toc_entry(&mut self, e: &InEntry) -> TocEntry {
        let mut ent = TocEntry {
            name: e.name.clone(),
            mode: i64::from(e.mode),
            uid: e.uid as i64,
            gid: e.gid as i64,
            user_name: name_if_changed(&mut self.unames, e.uid, &e.uname),
            group_name: name_if_changed(&mut self.gnames, e.gid, &e.gname),
            mod_time: format_mtime(e.mtime),
            xattrs: e.xattrs.clone(),
            ..TocEntry::default()
        };
        ent.kind = match e.kind {
            InKind::Dir => "dir",
            InKind::Reg => "reg",
            InKind::Symlink => "symlink",
            InKind::Hardlink => "hardlink",
            InKind::Char => "char",
            InKind::Block => "block",
            InKind::Fifo => "fifo",
        }
        .into();
        match e.kind {
            InKind::Symlink | InKind::Hardlink => ent.link_name = e.link_name.clone(),
            InKind::Char | InKind::Block => {
                ent.dev_major = i64::from(e.dev_major);
                ent.dev_minor = i64::from(e.dev_minor);
            }
            _ => {}
        }
        ent
    }

    /// A regular file's data, one member per chunk; its `reg` entry then
    /// one `chunk` entry per further chunk.
    fn file_chunks(&mut self, e: &InEntry, mut ent: TocEntry) -> Result<(), Error> {
        ent.size = e.size as i64;
        let first = self.toc.entries.len();
        let mut file_hash = Digest::hasher();
        let mut written = 0u64;
        if e.size == 0 {
            self.toc.entries.push(ent.clone());
        }
        while written < e.size {
            let remain = e.size - written;
            let csize = remain.min(self.chunk_size);
            if remain >= self.chunk_size {
                ent.chunk_size = self.chunk_size as i64;
            }
            ent.offset = self.bw.start_member()? as i64;
            ent.chunk_offset = written as i64;
            let mut chunk_hash = Digest::hasher();
            self.copy_data(e, csize, Some((&mut chunk_hash, &mut file_hash)))?;
            ent.chunk_digest = chunk_hash.finish().to_string();
            self.toc.entries.push(ent);
            written += csize;
            ent = TocEntry {
                name: e.name.clone(),
                kind: "chunk".into(),
                ..TocEntry::default()
            };
        }
        if let Some(f) = self.toc.entries.get_mut(first) {
            f.digest = file_hash.finish().to_string();
        }
        Ok(())
    }

    /// Copies `len` data bytes of `e` from the spool into the blob, hashing
    /// them into `hashes` if given.
    fn copy_data(
        &mut self,
        e: &InEntry,
        len: u64,
        mut hashes: Option<(&mut Sha256Writer, &mut Sha256Writer)>,
    ) -> Result<(), Error> {
        let mut left = len;
        while left > 0 {
            let n = left.min(self.buf.len() as u64) as usize;
            self.spool
                .read_exact(&mut self.buf[..n])
                .map_err(|err| Error::InputTar(format!("entry {:?}: data: {err}", e.name)))?;
            if let Some((a, b)) = hashes.as_mut() {
                a.update(&self.buf[..n]);
                b.update(&self.buf[..n]);
            }
            self.bw.write(&self.buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// The TOC member (TOC JSON entry and the end-of-archive blocks) and
    /// the footer. Returns the TOC, its digest and the blob's measures.
    fn finish(mut self) -> Result<(Toc, Digest, Written), Error> {
        let bw = &mut self.bw;
        bw.close_member()?;
        let toc_offset = bw.offset()?;
        let json = encode_toc_json(&self.toc)?;
        let h = new_header(TOC_JSON_NAME, json.len() as u64)?;
        bw.write(h.as_bytes())?;
        bw.write(&json)?;
        let pad = (round_up(json.len() as u64) - json.len() as u64) as usize;
        bw.write(&ZEROS[..pad])?;
        bw.write(&ZEROS)?;
        bw.close_member()?;
        bw.write_raw(&footer_bytes(toc_offset))?;
        let BlobWriter {
            idle, diff, ulen, ..
        } = self.bw;
        let mut counter = idle.ok_or_else(state_err)?;
        counter.flush()?;
        let written = Written {
            digest: counter.hash.finish(),
            diff_id: diff.finish(),
            size: counter.n,
            uncompressed_size: ulen,
            toc_offset,
        };
        Ok((self.toc, Digest::of(&json), written))
    }
}
