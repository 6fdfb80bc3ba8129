//! Remote layers: mounting a planned layer through FUSE, keeping it checked,
//! and mounting it again after a restart.
//!
//! containerd's handshake (see `../shared/FIELD-NOTES.md` §1): during unpack,
//! Prepare carries `containerd.io/snapshot.ref = <chainID>` plus layer labels.
//! If we can serve the layer remotely we mount it, commit it under the chainID
//! and answer AlreadyExists; containerd then skips download and unpack.
//! Otherwise the snapshot stays a plain active one and containerd unpacks into
//! it — and we say so, loudly (a warning naming the layer and the reason, and
//! a counted fallback), because silent fallbacks are what users of other lazy
//! snapshotters complain about most.
//!
//! Every mounted layer carries the digests its image claims (blob and diff
//! ID); its background pass checks them (`hologram_fs::layer`), and the
//! verdict is recorded on the snapshot ([`labels::HOLOGRAM_VERIFIED`]). A bad
//! layer fails every read and no new snapshot may be built on it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hologram_estargz::IndexLimits;
use hologram_fs::cache::ChunkCache;
use hologram_fs::demand::DemandGate;
use hologram_fs::fuse::MountedLayer;
use hologram_fs::layer::{Layer, LayerConfig, LayerDigests, Verdict, VerdictHook};
use hologram_fs::observer::Observer;
use hologram_fs::MAX_TOC_REGION;
use hologram_oci::{labels, Digest, Reference};
use hologram_remote::{RegistryBlob, RegistryClient, RegistryConfig};
use hologram_source::BlobSource;
use hologram_store::MetaStore;
use hologram_telemetry::Metrics;

use crate::fdstore::client::{Handover, Inherited};
use crate::fdstore::{Key, Meta};
use crate::plan::LayerPlan;
use crate::profiles::Profiles;

/// Settings of the remote path (from the config file and environment).
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    pub enabled: bool,
    pub layer: LayerConfig,
    pub cache_limit: u64,
    pub registry: RegistryConfig,
    pub fuse_threads: usize,
    /// Most TOC entries of one layer.
    pub max_toc_entries: usize,
    /// Most index memory of all mounted layers together, bytes.
    pub index_budget: u64,
    /// The transport (`HOLOGRAM_NET`, `[ctp96]`).
    pub ctp96: crate::ctp96::Ctp96Config,
    /// Credentials given at run time (the CRI proxy's pull secrets).
    pub credentials: Option<Arc<hologram_remote::SessionCredentials>>,
    /// Prefetch profiles learned on the node (`[profiles]`).
    pub profiles: crate::profiles::ProfileConfig,
}

/// Why a layer is not served lazily: a short category (a metric label) and
/// the full reason (the log line, the operator's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub category: &'static str,
    pub reason: String,
}

impl Fallback {
    pub fn new(category: &'static str, reason: impl Into<String>) -> Self {
        Fallback {
            category,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The whole-blob check of a remote snapshot, as recorded in its labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckState {
    Pending,
    Verified,
    Bad,
}

impl CheckState {
    pub fn label(self) -> &'static str {
        match self {
            CheckState::Pending => "pending",
            CheckState::Verified => "verified",
            CheckState::Bad => "bad",
        }
    }

    pub fn of(labels: &BTreeMap<String, String>) -> CheckState {
        match labels.get(labels::HOLOGRAM_VERIFIED).map(String::as_str) {
            Some("verified") => CheckState::Verified,
            Some("bad") => CheckState::Bad,
            _ => CheckState::Pending,
        }
    }
}

/// What a committed remote snapshot serves, read back from the labels the
/// daemon wrote on it (parsed like any other label: typed, or unusable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub layer: Digest,
    pub toc: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub image: Reference,
    pub state: CheckState,
}

impl Served {
    pub fn from_labels(l: &BTreeMap<String, String>) -> Result<Served, String> {
        let get = |k: &str| l.get(k).ok_or_else(|| format!("no {k} label"));
        let digest =
            |k: &str| get(k).and_then(|v| Digest::parse(v).map_err(|e| format!("label {k}: {e}")));
        Ok(Served {
            layer: digest(labels::HOLOGRAM_LAYER)?,
            toc: digest(labels::HOLOGRAM_TOC)?,
            diff_id: digest(labels::HOLOGRAM_DIFF_ID)?,
            size: get(labels::HOLOGRAM_BLOB_SIZE)?
                .parse()
                .map_err(|e| format!("label {}: {e}", labels::HOLOGRAM_BLOB_SIZE))?,
            image: Reference::parse(get(labels::HOLOGRAM_IMAGE)?)
                .map_err(|e| format!("label {}: {e}", labels::HOLOGRAM_IMAGE))?,
            state: CheckState::of(l),
        })
    }
}

/// Where verdicts are recorded: the metadata store, once it is open.
type StoreSlot = Arc<Mutex<Option<Arc<MetaStore>>>>;

/// The remote layers this daemon serves.
pub struct RemoteLayers {
    cfg: RemoteConfig,
    client: RegistryClient,
    /// Registry or CTP-96, per layer.
    sources: crate::ctp96::Sources,
    cache: Arc<ChunkCache>,
    rt: tokio::runtime::Handle,
    toc_dir: PathBuf,
    /// Compressed bytes fetched ahead of each layer's check, by snapshot
    /// id (`hologram_fs::spool`).
    spool_dir: PathBuf,
    mounts: Mutex<HashMap<u64, MountedLayer>>,
    /// Snapshots whose layer failed its check.
    bad: Arc<Mutex<HashSet<u64>>>,
    store: StoreSlot,
    observer: Arc<dyn Observer>,
    metrics: Option<Arc<Metrics>>,
    /// The fd holder, when restarts hand FUSE connections over.
    handover: Mutex<Option<Arc<Handover>>>,
    /// FUSE connections an earlier daemon left, by snapshot id, until
    /// [`RemoteLayers::restore`] takes them over.
    inherited: Mutex<HashMap<u64, Inherited>>,
    /// On-demand reads of every layer: prefetch and background fetch of
    /// all layers yield to them (they share the link).
    demand: Arc<DemandGate>,
    /// What each mounted snapshot serves (for the node's page).
    served: Mutex<HashMap<u64, (Served, Option<String>)>>,
    /// Prefetch profiles learned on the node.
    profiles: Option<Profiles>,
    /// Committed snapshots whose layer is being restored in the background
    /// (no local TOC copy at start: the index must come from the registry).
    restoring: Mutex<HashMap<u64, Arc<PendingRestore>>>,
    /// Set by [`RemoteLayers::shutdown`]: background restores stop.
    stopping: AtomicBool,
}

/// First and longest wait between two attempts of a background restore.
const RESTORE_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// Whether a mount may fetch the layer's TOC from the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TocFrom {
    /// Only the local TOC copy (restoring at start: no network).
    LocalCopy,
    /// The local copy, else the registry (bounded by `fetch_timeout`).
    AnyWhere,
}

/// The category of the [`Fallback`] a start-up restore returns when the
/// layer has no usable local TOC copy.
const NO_TOC_COPY: &str = "no_toc_copy";

/// A committed remote snapshot restored in the background: what it serves,
/// how the attempts went, and whether it is still wanted.
#[derive(Debug)]
struct PendingRestore {
    name: String,
    served: Served,
    since: SystemTime,
    state: Mutex<RestoreState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct RestoreState {
    attempts: u32,
    last_error: Option<String>,
    /// The snapshot was removed (or the daemon stops): give up, and never
    /// put a mount in the table for it.
    cancelled: bool,
    /// The restore loop ended (mounted, or cancelled).
    done: bool,
}

impl PendingRestore {
    fn cancel(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.cancelled = true;
        }
        self.changed.notify_all();
    }

    fn cancelled(&self) -> bool {
        self.state.lock().map(|s| s.cancelled).unwrap_or(true)
    }

    /// Records a failed attempt; returns whether it failed differently
    /// from the one before (worth a warning).
    fn failed(&self, error: String) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        s.attempts += 1;
        let new = s.last_error.as_deref() != Some(error.as_str());
        s.last_error = Some(error);
        new
    }

    fn finish(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.done = true;
        }
        self.changed.notify_all();
    }

    /// Waits `d` unless cancelled meanwhile; returns whether it was.
    fn sleep_unless_cancelled(&self, d: Duration) -> bool {
        let Ok(s) = self.state.lock() else {
            return true;
        };
        match self.changed.wait_timeout_while(s, d, |s| !s.cancelled) {
            Ok((s, _)) => s.cancelled,
            Err(_) => true,
        }
    }

    /// Waits until the restore loop ended or `deadline`; returns whether it
    /// ended.
    fn wait_done(&self, deadline: Instant) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        while !s.done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = match self.changed.wait_timeout(s, left) {
                Ok((s, _)) => s,
                Err(_) => return false,
            };
        }
        true
    }
}

/// A layer being restored in the background, as `hologram status`, the
/// node's page and a refused Prepare name it.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoringLayer {
    pub snapshot_id: u64,
    pub snapshot: String,
    pub layer: Digest,
    pub image: String,
    /// Attempts that failed so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the daemon started restoring it, Unix seconds.
    pub since: f64,
}

impl std::fmt::Display for RestoringLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "layer {} (snapshot {:?}) is not restored yet since the daemon started: its TOC has no local copy and must come from the registry",
            self.layer, self.snapshot
        )?;
        match &self.last_error {
            Some(e) => write!(
                f,
                ", which failed {} time(s), last: {e}; retrying in the background",
                self.attempts
            ),
            None => write!(f, "; first attempt running"),
        }
    }
}

/// How [`RemoteLayers::restore`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Mounted now, from the local TOC copy.
    Mounted,
    /// No local TOC copy: restoring in the background.
    InBackground,
}

/// Most chunks one learned profile records.
const LEARN_MAX_CHUNKS: usize = 200_000;

/// A mounted layer as the node's page shows it.
#[derive(Clone)]
pub struct MountedInfo {
    pub layer_ref: Arc<Layer>,
    pub layer: Digest,
    pub size: u64,
    /// The image it was mounted for, as its labels name it.
    pub image: String,
    pub manifest: Option<String>,
}

impl std::fmt::Debug for RemoteLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLayers")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl RemoteLayers {
    /// `observer` hears the filesystem's events (the metrics' FUSE handles,
    /// or nothing); `metrics` counts fallbacks and checks.
    pub fn new(
        root: &Path,
        cfg: RemoteConfig,
        rt: tokio::runtime::Handle,
        observer: Arc<dyn Observer>,
        metrics: Option<Arc<Metrics>>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let cache = ChunkCache::open(&root.join("cache/chunks"), cfg.cache_limit)
            .with_context(|| format!("cannot open chunk cache under {}", root.display()))?;
        let toc_dir = root.join("cache/tocs");
        std::fs::create_dir_all(&toc_dir)
            .with_context(|| format!("cannot create {}", toc_dir.display()))?;
        // Spool files belong to the mounts of one daemon: an earlier one's
        // are stale (their passes start again from offset 0).
        let spool_dir = root.join("cache/spool");
        let _ = std::fs::remove_dir_all(&spool_dir);
        std::fs::create_dir_all(&spool_dir)
            .with_context(|| format!("cannot create {}", spool_dir.display()))?;
        let client =
            RegistryClient::with_session_credentials(cfg.registry.clone(), cfg.credentials.clone())
                .context("cannot set up the registry client")?;
        let sources = crate::ctp96::Sources::new(&cfg.ctp96, metrics.clone())
            .context("cannot set up the CTP-96 transport")?;
        let profiles = if cfg.profiles.learn || cfg.profiles.apply {
            Some(
                Profiles::open(root, cfg.profiles.clone())
                    .with_context(|| format!("cannot create {}/profiles", root.display()))?,
            )
        } else {
            None
        };
        Ok(RemoteLayers {
            cfg,
            client,
            sources,
            cache: Arc::new(cache),
            rt,
            toc_dir,
            spool_dir,
            mounts: Mutex::new(HashMap::new()),
            bad: Arc::new(Mutex::new(HashSet::new())),
            store: Arc::new(Mutex::new(None)),
            observer,
            metrics,
            handover: Mutex::new(None),
            inherited: Mutex::new(HashMap::new()),
            served: Mutex::new(HashMap::new()),
            demand: Arc::new(DemandGate::default()),
            profiles,
            restoring: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        })
    }

    /// Starts the thread that stores the profiles layers learned once
    /// their learning window has passed (it ends with the daemon).
    pub fn start_profile_keeper(self: &Arc<Self>) -> std::io::Result<()> {
        if !self.profiles.as_ref().is_some_and(Profiles::learn) {
            return Ok(());
        }
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("hologram-profiles".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let Some(me) = weak.upgrade() else { return };
                if me.stopping.load(Ordering::Relaxed) {
                    return;
                }
                for layer in me.layers() {
                    me.save_learned(&layer, false);
                }
            })?;
        Ok(())
    }

    /// Stores what `layer` learned, once its window has passed (`force`:
    /// now).
    fn save_learned(&self, layer: &Layer, force: bool) {
        let Some(p) = &self.profiles else { return };
        if !layer.is_learning() {
            return;
        }
        let Some(files) = layer.take_learned(force) else {
            return;
        };
        let n: usize = files.iter().map(|(_, c)| c.len()).sum();
        match p.save(layer.digest(), files) {
            Ok(Some(path)) => {
                tracing::info!(layer = %layer.digest(), files = n, path = %path.display(), "learned a prefetch profile");
                if let Some(m) = &self.metrics {
                    m.profile("learned");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(layer = %layer.digest(), error = %e, "cannot store the learned prefetch profile")
            }
        }
    }

    /// Hands every FUSE connection over to `handover` from now on, and
    /// offers the connections an earlier daemon left (`inherited`, by
    /// snapshot id) to [`RemoteLayers::restore`].
    pub fn set_handover(&self, handover: Arc<Handover>, inherited: HashMap<u64, Inherited>) {
        if let Ok(mut h) = self.handover.lock() {
            *h = Some(handover);
        }
        if let Ok(mut i) = self.inherited.lock() {
            *i = inherited;
        }
    }

    fn handover(&self) -> Option<Arc<Handover>> {
        self.handover.lock().ok().and_then(|h| h.clone())
    }

    /// Releases the inherited connections no snapshot took over (their
    /// snapshots are gone): the holder closes them, which ends them, and
    /// their dead mounts are detached.
    pub fn release_unclaimed(&self, snapshots_dir: &Path) {
        // A layer restored in the background takes its connection over
        // once its index arrives (the kernel queues its requests meanwhile).
        let pending: HashSet<u64> = self
            .restoring
            .lock()
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default();
        let left: Vec<(u64, Inherited)> = self
            .inherited
            .lock()
            .map(|mut i| {
                let gone: Vec<u64> = i
                    .keys()
                    .filter(|id| !pending.contains(id))
                    .copied()
                    .collect();
                gone.into_iter()
                    .filter_map(|id| i.remove(&id).map(|inh| (id, inh)))
                    .collect()
            })
            .unwrap_or_default();
        let Some(h) = self.handover() else { return };
        for (id, inh) in left {
            tracing::info!(
                snapshot_id = id,
                "releasing a FUSE connection left for a snapshot that is gone"
            );
            h.remove(Key::Fuse(id));
            drop(inh.fd);
            if let Meta::Fuse { mountpoint, .. } = &inh.meta {
                if mountpoint.starts_with(snapshots_dir) {
                    crate::mountinfo::unmount_below(mountpoint);
                }
            }
        }
    }

    /// Where verdicts are recorded (the snapshotter's store).
    pub fn attach_store(&self, store: Arc<MetaStore>) {
        if let Ok(mut s) = self.store.lock() {
            *s = Some(store);
        }
    }

    /// How the layer plans read manifests and configs over CTP-96, when
    /// layers come over it.
    pub fn ctp96_for_images(&self) -> Option<crate::ctp96::ImagesOverCtp96> {
        self.sources.for_images()
    }

    /// The provenance labels of the transport: `hologram.network` and,
    /// with a CTP-96 session open, `hologram.ctp96_session` and
    /// `hologram.lease_id`.
    pub fn transport_labels(&self) -> BTreeMap<String, String> {
        let mut l = BTreeMap::from([(
            crate::trust::LABEL_NETWORK.to_owned(),
            self.sources.describe().to_owned(),
        )]);
        if let Some((session, lease)) = self.sources.client().and_then(|c| c.session()) {
            l.insert(crate::trust::LABEL_CTP96_SESSION.to_owned(), session);
            l.insert(crate::trust::LABEL_LEASE_ID.to_owned(), lease);
        }
        l
    }

    /// The registry client (shared with the layer plans).
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// Counts a fallback (metric); the caller logs it.
    pub fn record_fallback(&self, f: &Fallback) {
        if let Some(m) = &self.metrics {
            m.fallback(f.category);
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// Whether snapshot `id` serves a layer that failed its check.
    pub fn is_bad(&self, id: u64) -> bool {
        self.bad.lock().map(|b| b.contains(&id)).unwrap_or(true)
    }

    /// Marks snapshot `id` bad (restored from its labels at start).
    pub fn mark_bad(&self, id: u64) {
        if let Ok(mut b) = self.bad.lock() {
            b.insert(id);
        }
    }

    /// Mounts the planned layer at `mountpoint` as snapshot `id` (committed
    /// as `name`). Returns the labels to store with the committed snapshot.
    pub fn mount(
        &self,
        id: u64,
        name: &str,
        plan: &LayerPlan,
        mountpoint: &Path,
    ) -> Result<BTreeMap<String, String>, Fallback> {
        let toc = plan
            .toc_digest
            .clone()
            .map_err(|why| Fallback::new("not_estargz", why))?;
        let served = Served {
            layer: plan.layer.digest,
            toc,
            diff_id: plan.diff_id,
            size: plan.layer.size,
            image: plan.image.reference.clone(),
            state: CheckState::Pending,
        };
        self.mount_served(id, name, &served, mountpoint, TocFrom::AnyWhere, None)?;
        self.remember_served(id, &served, Some(plan.image.manifest_digest.to_string()));
        let mut l = BTreeMap::new();
        l.insert(labels::REMOTE.to_owned(), labels::REMOTE_VALUE.to_owned());
        l.insert(
            labels::HOLOGRAM_SOURCE.to_owned(),
            self.sources.describe().to_owned(),
        );
        l.insert(labels::HOLOGRAM_LAYER.to_owned(), served.layer.to_string());
        l.insert(labels::HOLOGRAM_TOC.to_owned(), served.toc.to_string());
        l.insert(
            labels::HOLOGRAM_DIFF_ID.to_owned(),
            served.diff_id.to_string(),
        );
        l.insert(
            labels::HOLOGRAM_BLOB_SIZE.to_owned(),
            served.size.to_string(),
        );
        l.insert(labels::HOLOGRAM_IMAGE.to_owned(), served.image.to_string());
        l.insert(
            labels::HOLOGRAM_MANIFEST.to_owned(),
            plan.image.manifest_digest.to_string(),
        );
        l.insert(
            labels::HOLOGRAM_VERIFIED.to_owned(),
            CheckState::Pending.label().to_owned(),
        );
        Ok(l)
    }

    /// Mounts what `served` describes (a new layer, or one restored; a
    /// background restore passes its `pending` state: a mount for a
    /// snapshot removed meanwhile is dropped, never put in the table).
    fn mount_served(
        &self,
        id: u64,
        name: &str,
        served: &Served,
        mountpoint: &Path,
        toc_from: TocFrom,
        pending: Option<&PendingRestore>,
    ) -> Result<(), Fallback> {
        if !self.cfg.enabled {
            return Err(Fallback::new(
                "disabled",
                "remote snapshots are disabled in the configuration",
            ));
        }
        let source: Arc<dyn BlobSource> = self.sources.source(RegistryBlob::new(
            self.client.clone(),
            served.image.clone(),
            served.layer,
            served.size,
        ));
        let (index, region) = self.index_for(&*source, &served.toc, toc_from)?;
        self.check_budget(&index, served)?;
        let mut layer = Layer::new(
            index,
            Arc::clone(&source),
            Arc::clone(&self.cache),
            self.rt.clone(),
            self.cfg.layer.clone(),
            Arc::clone(&self.observer),
        )
        .with_demand_gate(Arc::clone(&self.demand));
        // A new layer (not a restore) learns when it has no profile.
        let fresh = pending.is_none() && toc_from == TocFrom::AnyWhere;
        layer = self.with_profile(layer, fresh);
        if served.state == CheckState::Verified {
            // Checked before a restart: nothing to compare again.
        } else {
            // The id is unique to this mount; the file goes with the layer.
            layer = layer.with_spool(&self.spool_dir.join(id.to_string()));
            // The TOC region, which decoded to the TOC the manifest names:
            // the check need not fetch it again.
            layer.spool_toc_region(&region);
            layer = layer.with_expected(
                LayerDigests {
                    blob: served.layer,
                    diff_id: served.diff_id,
                },
                Some(self.verdict_hook(id, name)),
            );
        }
        let layer = Arc::new(layer);
        let mounted = match self.take_inherited(id, served, mountpoint) {
            Some((fd, passthrough)) => {
                match hologram_fs::fuse::adopt(
                    Arc::clone(&layer),
                    fd,
                    mountpoint,
                    self.cfg.fuse_threads,
                    passthrough,
                ) {
                    Ok(m) => {
                        tracing::info!(snapshot = name, mountpoint = %mountpoint.display(), "took over the FUSE connection left by the previous daemon");
                        m
                    }
                    Err(e) => {
                        tracing::warn!(snapshot = name, error = %e, "cannot take the FUSE connection over; mounting again");
                        crate::mountinfo::unmount_below(mountpoint);
                        self.fresh_mount(layer, mountpoint)?
                    }
                }
            }
            None => {
                crate::mountinfo::unmount_below(mountpoint);
                self.fresh_mount(layer, mountpoint)?
            }
        };
        self.hand_over(id, served, mountpoint, &mounted);
        match self.mounts.lock() {
            // Checked under the table's lock: `unmount` cancels before it
            // takes the lock, so either it sees this mount or this sees
            // the cancellation.
            Ok(m) if pending.is_some_and(PendingRestore::cancelled) => {
                drop(m);
                if let Some(h) = self.handover() {
                    h.remove(Key::Fuse(id));
                }
                drop(mounted); // unmounts
                Err(Fallback::new(
                    "removed",
                    "the snapshot was removed while its layer was being restored",
                ))
            }
            Ok(mut m) => {
                m.insert(id, mounted);
                Ok(())
            }
            // Never drop (unmount) a fresh mount silently: say why.
            Err(_) => Err(Fallback::new(
                "other",
                "internal error: the mount table is poisoned",
            )),
        }
    }

    /// Prefetch by the layer's profile when there is one; else, on a fresh
    /// mount of a layer without a prefetch landmark, learn one.
    fn with_profile(&self, layer: Layer, fresh: bool) -> Layer {
        let Some(p) = &self.profiles else {
            return layer;
        };
        let refused = || {
            if let Some(m) = &self.metrics {
                m.profile("refused");
            }
        };
        if let Some(found) = p.find(layer.digest(), &refused) {
            let (layer, chunks) = layer.with_profile(&found.files);
            tracing::info!(layer = %layer.digest(), chunks, path = %found.path.display(), "prefetching by a learned profile");
            if let Some(m) = &self.metrics {
                m.profile("applied");
            }
            return layer;
        }
        if fresh && p.learn() && layer.index().prefetch_end().is_none() {
            return layer.with_learning(p.config().window, LEARN_MAX_CHUNKS);
        }
        layer
    }

    fn fresh_mount(&self, layer: Arc<Layer>, mountpoint: &Path) -> Result<MountedLayer, Fallback> {
        hologram_fs::fuse::mount(layer, mountpoint, self.cfg.fuse_threads).map_err(|e| {
            Fallback::new(
                "mount_error",
                format!("FUSE mount at {}: {e}", mountpoint.display()),
            )
        })
    }

    /// The connection an earlier daemon left for snapshot `id`, when it
    /// still serves this very layer at this very mountpoint: its fd and
    /// whether passthrough was negotiated.
    fn take_inherited(
        &self,
        id: u64,
        served: &Served,
        mountpoint: &Path,
    ) -> Option<(OwnedFd, bool)> {
        let inh = self.inherited.lock().ok()?.remove(&id)?;
        let Meta::Fuse {
            mountpoint: mp,
            layer,
            conn,
            passthrough,
        } = inh.meta
        else {
            return None;
        };
        let live = crate::mountinfo::fuse_connection_at(mountpoint);
        if mp != mountpoint || layer != served.layer || live != Some(conn) {
            tracing::info!(snapshot_id = id, held_for = %mp.display(), layer = %layer, conn, live = ?live,
                "the FUSE connection left by the previous daemon does not match this snapshot's mount; mounting again");
            if let Some(h) = self.handover() {
                h.remove(Key::Fuse(id));
            }
            return None;
        }
        Some((inh.fd, passthrough))
    }

    /// Gives the holder a duplicate of the mount's connection (failures are
    /// logged: the mount works, it just will not survive a restart).
    fn hand_over(&self, id: u64, served: &Served, mountpoint: &Path, mounted: &MountedLayer) {
        let Some(h) = self.handover() else { return };
        let (Some(dev), Some(conn)) = (
            mounted.device(),
            crate::mountinfo::fuse_connection_at(mountpoint),
        ) else {
            tracing::warn!(mountpoint = %mountpoint.display(), "no FUSE connection to hand over; this mount will not survive a restart");
            return;
        };
        let meta = Meta::Fuse {
            mountpoint: mountpoint.to_path_buf(),
            layer: served.layer,
            conn,
            passthrough: mounted.passthrough(),
        };
        if let Err(e) = h.put(Key::Fuse(id), meta, dev) {
            tracing::warn!(mountpoint = %mountpoint.display(), error = %format!("{e:#}"), "cannot hand the FUSE connection over; this mount will not survive a restart");
        }
    }

    /// Records a layer's verdict: in memory (refuses new snapshots on a bad
    /// layer), on the snapshot (survives restarts) and in the metrics.
    fn verdict_hook(&self, id: u64, name: &str) -> VerdictHook {
        let (bad, store, metrics, name) = (
            Arc::clone(&self.bad),
            Arc::clone(&self.store),
            self.metrics.clone(),
            name.to_owned(),
        );
        Box::new(move |v: &Verdict| {
            let state = match v {
                Verdict::Pending => return,
                Verdict::Verified => CheckState::Verified,
                Verdict::Bad(_) => {
                    if let Ok(mut b) = bad.lock() {
                        b.insert(id);
                    }
                    CheckState::Bad
                }
            };
            if let Some(m) = &metrics {
                m.layer_check(state.label());
            }
            let store = store.lock().ok().and_then(|s| s.clone());
            if let Some(store) = store {
                let info = hologram_store::Info {
                    name: name.clone(),
                    parent: String::new(),
                    kind: hologram_store::Kind::Committed,
                    labels: BTreeMap::from([(
                        labels::HOLOGRAM_VERIFIED.to_owned(),
                        state.label().to_owned(),
                    )]),
                    created_ns: 0,
                    updated_ns: 0,
                };
                let path = format!("labels.{}", labels::HOLOGRAM_VERIFIED);
                if let Err(e) = store.write(|t| t.update(&info, &[path])) {
                    tracing::warn!(snapshot = %name, error = %e, "cannot record the layer's check");
                }
            }
        })
    }

    /// Refuses a layer whose index would take the daemon's index memory
    /// over its budget.
    fn check_budget(
        &self,
        index: &hologram_estargz::Index,
        served: &Served,
    ) -> Result<(), Fallback> {
        let mounted: u64 = self.layers().iter().map(|l| l.index().heap_bytes()).sum();
        let this = index.heap_bytes();
        if mounted + this > self.cfg.index_budget {
            return Err(Fallback::new(
                "over_budget",
                format!(
                    "the index of layer {} needs {} KiB; with the {} KiB of the layers mounted now that is over the {} KiB budget ([remote] index_memory_mib)",
                    served.layer,
                    this / 1024,
                    mounted / 1024,
                    self.cfg.index_budget / 1024
                ),
            ));
        }
        Ok(())
    }

    fn limits(&self) -> IndexLimits {
        IndexLimits {
            max_entries: self.cfg.max_toc_entries,
        }
    }

    /// The layer's index and its compressed TOC region: from the local TOC
    /// copy when we have one (no network, so restarts do not depend on the
    /// registry), else fetched.
    fn index_for(
        &self,
        source: &dyn BlobSource,
        toc: &Digest,
        toc_from: TocFrom,
    ) -> Result<(hologram_estargz::Index, Vec<u8>), Fallback> {
        // The file name is the digest's 64 hex digits: nothing else can be.
        let path = self.toc_dir.join(toc.hex());
        match read_toc_copy(&path) {
            Ok(Some(region)) => {
                match hologram_fs::index_from_region(&region, toc, source.size(), self.limits()) {
                    Ok(index) => return Ok((index, region)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "local TOC copy unusable; fetching again");
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "local TOC copy unreadable; fetching again")
            }
        }
        if toc_from == TocFrom::LocalCopy {
            return Err(Fallback::new(
                NO_TOC_COPY,
                format!("no usable local copy of TOC {toc}"),
            ));
        }
        let (index, region) = self
            .rt
            .block_on(hologram_fs::load_index(source, toc, self.limits()))
            .map_err(|e| {
                let category = match e {
                    hologram_fs::LoadError::Fetch { .. } => "fetch_error",
                    hologram_fs::LoadError::Format {
                        source: hologram_estargz::Error::InvalidToc(ref m),
                        ..
                    } if m.contains("limit") => "over_budget",
                    _ => "not_estargz",
                };
                Fallback::new(category, e.to_string())
            })?;
        let tmp = self.toc_dir.join(format!(".tmp-{}", toc.hex()));
        if std::fs::write(&tmp, &region)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok((index, region))
    }

    /// Runs the check of snapshot `id`'s layer now (bounded by `deadline`).
    pub fn verify_now(&self, id: u64, deadline: std::time::Instant) -> Option<Verdict> {
        let layer = self
            .mounts
            .lock()
            .ok()
            .and_then(|m| m.get(&id).map(|l| Arc::clone(l.layer())))?;
        Some(layer.verify_now(deadline))
    }

    fn remember_served(&self, id: u64, served: &Served, manifest: Option<String>) {
        if let Ok(mut m) = self.served.lock() {
            m.insert(id, (served.clone(), manifest));
        }
    }

    /// The mounted layers with what they serve, by snapshot id.
    pub fn mounted(&self) -> HashMap<u64, MountedInfo> {
        let layers: Vec<(u64, Arc<Layer>)> = self
            .mounts
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(id, l)| (*id, Arc::clone(l.layer())))
                    .collect()
            })
            .unwrap_or_default();
        let Ok(served) = self.served.lock() else {
            return HashMap::new();
        };
        layers
            .into_iter()
            .filter_map(|(id, layer_ref)| {
                let (s, manifest) = served.get(&id)?;
                Some((
                    id,
                    MountedInfo {
                        layer_ref,
                        layer: s.layer,
                        size: s.size,
                        image: s.image.to_string(),
                        manifest: manifest.clone(),
                    },
                ))
            })
            .collect()
    }

    /// The open CTP-96 session and its lease, if any.
    pub fn ctp96_session(&self) -> Option<(String, String)> {
        self.sources.client().and_then(|c| c.session())
    }

    /// Unmounts the layer of snapshot `id`, if it is one of ours.
    pub fn unmount(&self, id: u64) {
        // A background restore of it stops, and never mounts it after this.
        let pending = self.restoring.lock().ok().and_then(|mut r| r.remove(&id));
        if let Some(p) = pending {
            p.cancel();
            // An attempt in flight ends within `fetch_timeout`, and drops
            // the mount it made: wait for it, so the caller never deletes
            // the directory while a mount appears on it.
            if !p.wait_done(Instant::now() + self.fetch_timeout() + Duration::from_secs(5)) {
                tracing::warn!(
                    snapshot_id = id,
                    "the background restore of a removed snapshot did not stop in time"
                );
            }
            // The connection an earlier daemon left for it, if it waited
            // for the index: released (the caller detaches the mount).
            let inh = self.inherited.lock().ok().and_then(|mut i| i.remove(&id));
            if let Some(inh) = inh {
                if let Some(h) = self.handover() {
                    h.remove(Key::Fuse(id));
                }
                drop(inh.fd);
            }
        }
        if let Ok(mut s) = self.served.lock() {
            s.remove(&id);
        }
        let m = self.mounts.lock().ok().and_then(|mut m| m.remove(&id));
        if let Some(m) = &m {
            self.save_learned(m.layer(), true);
        }
        if m.is_some() {
            if let Some(h) = self.handover() {
                h.remove(Key::Fuse(id));
            }
        }
        drop(m);
        if let Ok(mut b) = self.bad.lock() {
            b.remove(&id);
        }
    }

    /// Re-mounts a committed remote snapshot after a restart, from its labels
    /// and the local TOC copy (no network). A layer without a usable copy
    /// is restored in the background instead ([`Restored::InBackground`]):
    /// start-up never waits on a registry.
    pub fn restore(
        self: &Arc<Self>,
        id: u64,
        name: &str,
        labels: &BTreeMap<String, String>,
        mountpoint: &Path,
    ) -> Result<Restored, Fallback> {
        let served = Served::from_labels(labels).map_err(|e| Fallback::new("no_labels", e))?;
        if served.state == CheckState::Bad {
            self.mark_bad(id);
        }
        let manifest = labels.get(labels::HOLOGRAM_MANIFEST).cloned();
        match self.mount_served(id, name, &served, mountpoint, TocFrom::LocalCopy, None) {
            Ok(()) => {
                self.remember_served(id, &served, manifest);
                Ok(Restored::Mounted)
            }
            Err(f) if f.category == NO_TOC_COPY => {
                self.restore_in_background(id, name, served, manifest, mountpoint)
                    .map_err(|e| {
                        Fallback::new("other", format!("cannot start a restore thread: {e}"))
                    })?;
                Ok(Restored::InBackground)
            }
            Err(f) => Err(f),
        }
    }

    /// Restores snapshot `id` on a thread of its own: attempts with a
    /// growing pause (1 s doubling to 30 s) until mounted, the snapshot is
    /// removed, or the daemon stops.
    fn restore_in_background(
        self: &Arc<Self>,
        id: u64,
        name: &str,
        served: Served,
        manifest: Option<String>,
        mountpoint: &Path,
    ) -> std::io::Result<()> {
        let pending = Arc::new(PendingRestore {
            name: name.to_owned(),
            served,
            since: SystemTime::now(),
            state: Mutex::new(RestoreState::default()),
            changed: Condvar::new(),
        });
        if let Ok(mut r) = self.restoring.lock() {
            r.insert(id, Arc::clone(&pending));
        }
        let me = Arc::clone(self);
        let mountpoint = mountpoint.to_path_buf();
        let p = Arc::clone(&pending);
        let spawned = std::thread::Builder::new()
            .name("hologram-restore".into())
            .spawn(move || me.restore_loop(id, &p, manifest, &mountpoint));
        if spawned.is_err() {
            if let Ok(mut r) = self.restoring.lock() {
                r.remove(&id);
            }
        }
        spawned.map(drop)
    }

    fn restore_loop(
        &self,
        id: u64,
        p: &Arc<PendingRestore>,
        manifest: Option<String>,
        mountpoint: &Path,
    ) {
        let mut pause = RESTORE_BACKOFF.0;
        tracing::info!(snapshot = %p.name, layer = %p.served.layer,
            "no local TOC copy of this layer: restoring it in the background (its index must come from the registry)");
        loop {
            if p.cancelled() || self.stopping.load(Ordering::Relaxed) {
                break;
            }
            match self.mount_served(
                id,
                &p.name,
                &p.served,
                mountpoint,
                TocFrom::AnyWhere,
                Some(p),
            ) {
                Ok(()) => {
                    self.remember_served(id, &p.served, manifest);
                    tracing::info!(snapshot = %p.name, layer = %p.served.layer, "remote layer mounted again (restored in the background)");
                    break;
                }
                Err(_) if p.cancelled() => break,
                Err(f) => {
                    let text = f.to_string();
                    if p.failed(text.clone()) {
                        tracing::warn!(snapshot = %p.name, layer = %p.served.layer, error = %text,
                            retry_in_secs = pause.as_secs(), "cannot restore a remote layer yet; retrying in the background");
                    } else {
                        tracing::debug!(snapshot = %p.name, error = %text, "restore attempt failed again");
                    }
                    if p.sleep_unless_cancelled(pause) {
                        break;
                    }
                    pause = (pause * 2).min(RESTORE_BACKOFF.1);
                }
            }
        }
        if let Ok(mut r) = self.restoring.lock() {
            if r.get(&id).is_some_and(|q| Arc::ptr_eq(q, p)) {
                r.remove(&id);
            }
        }
        p.finish();
    }

    /// The layers being restored in the background, by snapshot id.
    pub fn restoring(&self) -> Vec<RestoringLayer> {
        let all: Vec<(u64, Arc<PendingRestore>)> = self
            .restoring
            .lock()
            .map(|r| r.iter().map(|(id, p)| (*id, Arc::clone(p))).collect())
            .unwrap_or_default();
        let mut out: Vec<RestoringLayer> = all
            .into_iter()
            .map(|(id, p)| {
                let (attempts, last_error) = p
                    .state
                    .lock()
                    .map(|s| (s.attempts, s.last_error.clone()))
                    .unwrap_or_default();
                RestoringLayer {
                    snapshot_id: id,
                    snapshot: p.name.clone(),
                    layer: p.served.layer,
                    image: p.served.image.to_string(),
                    attempts,
                    last_error,
                    since: p
                        .since
                        .duration_since(UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64()),
                }
            })
            .collect();
        out.sort_by_key(|r| r.snapshot_id);
        out
    }

    /// Waits (until `deadline`) for the background restores of any of
    /// `ids`; the first one still not restored then, if any.
    pub fn wait_restored(&self, ids: &[u64], deadline: Instant) -> Option<RestoringLayer> {
        let waiting: Vec<Arc<PendingRestore>> = match self.restoring.lock() {
            Ok(r) => ids.iter().filter_map(|id| r.get(id).cloned()).collect(),
            Err(_) => Vec::new(),
        };
        for p in waiting {
            p.wait_done(deadline);
        }
        let now: HashSet<u64> = ids.iter().copied().collect();
        self.restoring()
            .into_iter()
            .find(|r| now.contains(&r.snapshot_id))
    }

    /// The bound of one fetch (a Prepare waits that long for a layer being
    /// restored below it).
    pub fn fetch_timeout(&self) -> Duration {
        self.cfg.layer.fetch_timeout
    }

    /// Stops everything (daemon shutdown). With a live fd holder the mounts
    /// stay, for the next daemon to take over (running containers keep
    /// their files); without one they are unmounted.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let pending: Vec<Arc<PendingRestore>> = self
            .restoring
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        for p in pending {
            // Its inherited connection (if any) stays with the holder for
            // the next daemon.
            p.cancel();
        }
        let all: Vec<MountedLayer> = self
            .mounts
            .lock()
            .map(|mut m| m.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        for m in &all {
            self.save_learned(m.layer(), true);
        }
        let keep = self.handover().is_some_and(|h| {
            let alive = h.holder_alive();
            h.close();
            alive
        });
        if keep {
            tracing::info!(
                mounts = all.len(),
                "leaving the FUSE mounts to the fd holder for the next daemon"
            );
            for m in all {
                m.leave_mounted();
            }
        } else {
            drop(all);
        }
    }

    /// Layers mounted now (for metrics).
    pub fn layers(&self) -> Vec<Arc<Layer>> {
        self.mounts
            .lock()
            .map(|m| m.values().map(|l| Arc::clone(l.layer())).collect())
            .unwrap_or_default()
    }
}

/// Reads a local TOC copy: a regular file (never a symlink, FIFO or device:
/// opened with `O_NOFOLLOW | O_NONBLOCK` and checked), at most
/// [`MAX_TOC_REGION`] bytes. `Ok(None)` when there is none.
fn read_toc_copy(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    crate::profiles::read_regular(path, MAX_TOC_REGION)
}

/// The labels a Prepare brings, minus the ones only the daemon may write.
pub fn strip_reserved(mut l: BTreeMap<String, String>) -> BTreeMap<String, String> {
    l.retain(|k, _| !labels::is_reserved(k));
    l
}

/// A snapshot that a Prepare of an existing chain may reuse, or why not.
pub fn reuse(existing: &BTreeMap<String, String>, plan: &LayerPlan) -> Result<(), Fallback> {
    if !existing.contains_key(labels::REMOTE) {
        // Not ours: unpacked (and verified) by containerd.
        return Ok(());
    }
    match Served::from_labels(existing) {
        Ok(s) if s.state == CheckState::Bad => Err(Fallback::new(
            "chain_conflict",
            format!(
                "chain {} is served by layer {} (image {}), which failed its check; unpacking this image's own layer {}",
                plan.chain_id, s.layer, s.image, plan.layer.digest
            ),
        )),
        Ok(s) if s.layer == plan.layer.digest || s.state == CheckState::Verified => Ok(()),
        Ok(s) => Err(Fallback::new(
            "chain_conflict",
            format!(
                "chain {} is served by layer {} of image {}, not yet checked against its diff ID; unpacking this image's own layer {} instead of sharing",
                plan.chain_id, s.layer, s.image, plan.layer.digest
            ),
        )),
        Err(e) => Err(Fallback::new(
            "chain_conflict",
            format!("chain {} exists with unreadable labels ({e})", plan.chain_id),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reserved_labels_are_dropped() {
        let l = BTreeMap::from([
            (labels::HOLOGRAM_VERIFIED.to_owned(), "verified".to_owned()),
            (labels::HOLOGRAM_LAYER.to_owned(), "x".to_owned()),
            (labels::REMOTE.to_owned(), "remote snapshot".to_owned()),
            (labels::CRI_IMAGE_REF.to_owned(), "r/i:1".to_owned()),
        ]);
        let kept = strip_reserved(l);
        assert_eq!(kept.keys().collect::<Vec<_>>(), [labels::CRI_IMAGE_REF]);
    }

    #[test]
    fn toc_copies_are_regular_files_only() {
        let d = tempfile::tempdir().unwrap();
        assert!(read_toc_copy(&d.path().join("none")).unwrap().is_none());
        let f = d.path().join("f");
        std::fs::write(&f, b"toc").unwrap();
        assert_eq!(read_toc_copy(&f).unwrap().unwrap(), b"toc");
        let link = d.path().join("l");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(read_toc_copy(&link).is_err(), "symlinks are not followed");
        assert!(read_toc_copy(Path::new("/dev/zero")).is_err());
        let fifo = d.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let t = std::time::Instant::now();
        assert!(read_toc_copy(&fifo).is_err(), "a FIFO is refused");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "never blocks"
        );
    }
}
