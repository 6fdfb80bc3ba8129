//! The snapshotter: containerd's snapshot operations over the metadata store
//! and the snapshot directories. Everything here is synchronous; the gRPC
//! layer (`service.rs`) runs it on blocking threads.
//!
//! On-disk layout under the root (the same as containerd's overlayfs
//! snapshotter, so operators recognise it):
//!
//! ```text
//! <root>/metadata.redb        the metadata store
//! <root>/lock                 held (flock) by the one daemon that owns the root
//! <root>/snapshots/<id>/fs    the snapshot's files (overlay upperdir, or a lower layer)
//! <root>/snapshots/<id>/work  overlay workdir (active snapshots)
//! <root>/snapshots/new-*      a directory being created (inside a write transaction)
//! ```
//!
//! Crash safety: every directory change happens while the store's write
//! transaction is held. New directories are made under a temporary name and
//! renamed to their id before the transaction commits; removal commits the
//! metadata first and deletes the directory after. A crash therefore leaves at
//! most orphan directories, which [`Snapshotter::cleanup`] reclaims.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{chown, DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use hologram_store::filter::Filter;
use hologram_store::{Info, Kind, MetaStore, Snapshot, StoreError, Usage};

use hologram_oci::labels;

use crate::disk_usage::disk_usage;
use crate::mountinfo::unmount_below;
use crate::mounts::{mounts_for, Mount};
use crate::plan::{ImageError, Images, LayerPlan, LayerRequest};
use crate::remote::{self, CheckState, Fallback, RemoteLayers};
use crate::trust::TrustGate;

/// How long a Prepare may wait for the check of the layer below it, when
/// that layer came from another image (see [`Snapshotter::check_below`]).
const CHECK_BELOW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Errors with a gRPC class; see `service.rs` for the mapping.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The refusal of a snapshot on a layer still being restored.
fn unrestored(parent: &str, pending: &remote::RestoringLayer) -> StoreError {
    StoreError::FailedPrecondition(format!("cannot use {parent:?} yet: {pending}"))
}

fn io_err(what: impl std::fmt::Display, e: io::Error) -> StoreError {
    StoreError::Internal(format!("{what}: {e}"))
}

/// Another process holds the root's lock: fatal, never retried.
#[derive(Debug, thiserror::Error)]
#[error("snapshotter root {0} is in use by another hologram-snapshotter process")]
pub struct RootInUse(pub PathBuf);

/// The exclusive claim of a root directory (`<root>/lock`, flock): one
/// daemon per root.
#[derive(Debug)]
pub struct RootLock(File);

impl RootLock {
    /// Creates the root if needed and locks it; [`RootInUse`] when another
    /// process holds it.
    pub fn acquire(root: &Path) -> anyhow::Result<RootLock> {
        use anyhow::Context as _;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root.join("snapshots"))
            .with_context(|| format!("cannot create snapshotter root {}", root.display()))?;
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => Ok(RootLock(lock)),
            Err(fs::TryLockError::WouldBlock) => Err(RootInUse(root.to_owned()).into()),
            Err(fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        }
    }

    /// Another handle on the same lock (held while any handle is open).
    pub fn try_clone(&self) -> std::io::Result<RootLock> {
        self.0.try_clone().map(RootLock)
    }
}

/// One snapshotter over one root directory.
pub struct Snapshotter {
    root: PathBuf,
    store: Arc<MetaStore>,
    /// overlay supports `index=off` on this kernel (containerd sets it then).
    index_off: bool,
    /// Lazily served layers; `None` when the daemon runs without them.
    remote: Option<Arc<RemoteLayers>>,
    /// Witness verification of image layers; `None` when trust is off.
    trust: Option<Arc<TrustGate>>,
    /// Manifests and configs of the images whose layers are prepared.
    images: Option<Images>,
    /// What happened to the images prepared here (the node's page).
    book: Arc<crate::node::NodeBook>,
    /// Held for the daemon's lifetime: one owner per root.
    _lock: File,
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Snapshotter {
    /// Opens (creating if needed) the snapshotter root. Fails if another
    /// process owns it. Remote layers committed before a restart are mounted
    /// again (from their local TOC copy: no network needed).
    pub fn open(
        root: &Path,
        remote: Option<Arc<RemoteLayers>>,
        trust: Option<Arc<TrustGate>>,
    ) -> anyhow::Result<Self> {
        let lock = RootLock::acquire(root)?;
        Self::open_locked(root, lock, remote, trust)
    }

    /// [`Snapshotter::open`] with the root's lock already held.
    pub fn open_locked(
        root: &Path,
        lock: RootLock,
        remote: Option<Arc<RemoteLayers>>,
        trust: Option<Arc<TrustGate>>,
    ) -> anyhow::Result<Self> {
        // Ids must never be reused: start above every id that has a directory,
        // even one whose transaction never committed (see MetaStore docs).
        let floor = max_dir_id(&root.join("snapshots"))?;
        let store = Arc::new(
            MetaStore::open_with_floor(&root.join("metadata.redb"), floor)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        let index_off = Path::new("/sys/module/overlay/parameters/index").exists();
        let images = remote.as_ref().map(|r| {
            r.attach_store(Arc::clone(&store));
            Images::new(r.client().clone(), tokio::runtime::Handle::current())
                .with_ctp96(r.ctp96_for_images())
        });
        let sn = Snapshotter {
            root: root.to_owned(),
            store,
            index_off,
            remote,
            trust,
            images,
            book: Arc::new(crate::node::NodeBook::new()),
            _lock: lock.0,
        };
        sn.restore_remote();
        Ok(sn)
    }

    /// Re-mounts every committed remote snapshot from the local TOC copies
    /// (no network); a layer without one is restored in the background.
    /// Failures are logged, never fatal: the daemon must start, and start
    /// at once, even when a registry is unreachable.
    fn restore_remote(&self) {
        let Some(remote) = &self.remote else { return };
        let Ok(filter) =
            Filter::parse_all(&[format!("kind==committed,labels.\"{}\"", labels::REMOTE)])
        else {
            return;
        };
        let Ok(infos) = self.store.walk(&filter) else {
            return;
        };
        for info in infos {
            let Ok((id, _, _)) = self.store.info(&info.name) else {
                continue;
            };
            let fs = self.dir(id).join("fs");
            match remote.restore(id, &info.name, &info.labels, &fs) {
                Ok(remote::Restored::Mounted) => {
                    tracing::info!(snapshot = %info.name, "remote layer mounted again")
                }
                // Logged by the restore thread; shown by `hologram status`.
                Ok(remote::Restored::InBackground) => {}
                Err(e) => tracing::error!(snapshot = %info.name, error = %e,
                    "cannot mount remote layer again; containers using it will fail to read"),
            }
        }
        remote.release_unclaimed(&self.snapshots_dir());
    }

    /// What happened to the images prepared here (the node's page).
    pub fn book(&self) -> &Arc<crate::node::NodeBook> {
        &self.book
    }

    /// The remote-layer manager, if any.
    pub fn remote(&self) -> Option<&Arc<RemoteLayers>> {
        self.remote.as_ref()
    }

    /// Whether the metadata store answers a read transaction.
    pub fn check_store(&self) -> Result<()> {
        self.store.check()
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.snapshots_dir().join(id.to_string())
    }

    fn mounts(&self, s: &Snapshot) -> Vec<Mount> {
        mounts_for(
            s,
            |id| self.dir(id).join("fs"),
            |id| self.dir(id).join("work"),
            self.index_off,
        )
    }

    /// Prepare (kind Active) or View (kind View): a new snapshot on `parent`.
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let labels = remote::strip_reserved(labels);
        if kind == Kind::Active {
            match LayerRequest::parse(key, &labels) {
                LayerRequest::NotALayer => {}
                req => return self.prepare_layer(key, parent, labels, req),
            }
        }
        self.create_plain(kind, key, parent, labels)
    }

    /// A snapshot for containerd to fill (or a container's rootfs), never on
    /// a layer that failed its check.
    fn create_plain(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.wait_for_restores(parent)?;
        let snap = self.store.write(|t| {
            let snap = t.create(kind, key, parent, labels)?;
            self.refuse_bad_ancestors(&snap, parent)?;
            self.make_dir(&snap)?;
            Ok(snap)
        })?;
        Ok(self.mounts(&snap))
    }

    /// No snapshot may be built on a layer that failed its check, nor on
    /// one not restored yet after a restart (its mount would be an empty
    /// directory).
    fn refuse_bad_ancestors(&self, snap: &Snapshot, parent: &str) -> Result<()> {
        let Some(r) = &self.remote else { return Ok(()) };
        if snap.parent_ids.iter().any(|id| r.is_bad(*id)) {
            return Err(StoreError::FailedPrecondition(format!(
                "a layer below {parent:?} failed its check (its content is not what its image claims) and is no longer served; remove the image that brought it and pull again"
            )));
        }
        // No wait here (a write transaction is held): `wait_for_restores`
        // waited before it.
        if let Some(pending) = r.wait_restored(&snap.parent_ids, std::time::Instant::now()) {
            return Err(unrestored(parent, &pending));
        }
        Ok(())
    }

    /// Waits, at most `fetch_timeout`, for the background restore of any
    /// layer below `parent` (see [`RemoteLayers::restore`]); refuses the
    /// snapshot if one is still not restored then. Called before a write
    /// transaction: the wait holds no lock.
    fn wait_for_restores(&self, parent: &str) -> Result<()> {
        let Some(r) = &self.remote else { return Ok(()) };
        if parent.is_empty() || r.restoring().is_empty() {
            return Ok(());
        }
        let mut ids = Vec::new();
        let mut name = parent.to_owned();
        // The chain is short (one entry per layer); bounded anyway.
        while !name.is_empty() && ids.len() < 4096 {
            let Ok((id, info, _)) = self.store.info(&name) else {
                break; // the store's own check reports a missing parent
            };
            ids.push(id);
            name = info.parent;
        }
        let deadline = std::time::Instant::now() + r.fetch_timeout();
        match r.wait_restored(&ids, deadline) {
            Some(pending) => Err(unrestored(parent, &pending)),
            None => Ok(()),
        }
    }

    /// Prepare of an image layer during unpack, in order: the plan (labels
    /// → verified manifest and config → layer), the trust gate, an existing
    /// snapshot of the chain, the layer below, then create (transaction 1),
    /// mount, commit under the chain ID (transaction 2) and answer
    /// AlreadyExists, so containerd skips download and unpack. Anything that
    /// cannot be served lazily becomes a plain active snapshot for
    /// containerd to unpack into, said loudly.
    fn prepare_layer(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        req: LayerRequest,
    ) -> Result<Vec<Mount>> {
        let planned = self.plan(req).inspect_err(|refused| {
            // Refused before the gate could name the image's UOR-ID (no
            // provenance in enforce mode, a manifest that is not what its
            // digest says): the page shows it under the labels' names.
            self.book.refused_by_labels(
                labels
                    .get(labels::CRI_IMAGE_REF)
                    .or_else(|| labels.get(labels::STARGZ_REFERENCE))
                    .map(String::as_str),
                labels.get(labels::CRI_MANIFEST_DIGEST).map(String::as_str),
                self.trust.as_deref().map_or("", TrustGate::mode_name),
                &refused.to_string(),
            );
        })?;
        let (plan, prov_labels) = match planned {
            Ok(p) => p,
            Err(reason) => return self.fallback(key, parent, labels, reason),
        };
        let chain = plan.chain_id.to_string();
        let exists = || StoreError::AlreadyExists(format!("target snapshot {chain:?}"));
        let mut labels = labels;
        labels.extend(prov_labels);
        // Already served (another namespace, an earlier pull): containerd
        // finds it with a Walk on the ref label and parent.
        if let Some(info) = self.committed_chain(&chain, parent)? {
            match remote::reuse(&info.labels, &plan) {
                Ok(()) => {
                    let id = self.store.info(&info.name).ok().map(|(id, _, _)| id);
                    self.book.present(&plan, id);
                    return Err(exists());
                }
                Err(f) => {
                    self.book.unpacked(&plan, &f);
                    return self.fallback(key, parent, labels, f);
                }
            }
        }
        self.wait_for_restores(parent)?;
        self.check_below(&plan, parent)?;
        let Some(remote) = self.remote.clone() else {
            let f = Fallback::new("disabled", "remote snapshots are disabled");
            self.book.unpacked(&plan, &f);
            return self.fallback(key, parent, labels, f);
        };
        let snap = self.store.write(|t| {
            let snap = t.create(Kind::Active, key, parent, labels.clone())?;
            self.refuse_bad_ancestors(&snap, parent)?;
            self.make_dir(&snap)?;
            Ok(snap)
        })?;
        let fs_dir = self.dir(snap.id).join("fs");
        // The chain's own name, unless a snapshot of the chain on another
        // parent has it (a lower layer unpacked apart in another namespace):
        // containerd finds remote snapshots by label and parent, not name.
        let name = if self.store.info(&chain).is_ok() {
            format!("{chain}/{}", snap.id)
        } else {
            chain.clone()
        };
        let extra = match remote.mount(snap.id, &name, &plan, &fs_dir) {
            Ok(extra) => extra,
            Err(reason) => {
                remote.record_fallback(&reason);
                self.book.unpacked(&plan, &reason);
                tracing::warn!(layer = %plan.layer.digest, image = %plan.image.name(), reason = %reason,
                    "layer cannot be served lazily: containerd will download and unpack it");
                return Ok(self.mounts(&snap));
            }
        };
        let mut commit_labels = labels;
        commit_labels.extend(extra);
        if commit_labels.contains_key(crate::trust::LABEL_NETWORK) {
            // Provenance (HOLOGRAM_VERBOSE): the transport the bytes came over.
            commit_labels.extend(remote.transport_labels());
        }
        match self
            .store
            .write(|t| t.commit(key, &name, Usage::default(), commit_labels))
        {
            Ok(_) => {
                self.book.lazy(&plan, snap.id);
                tracing::info!(layer = %plan.layer.digest, image = %plan.image.name(), chain_id = %chain, "layer mounted lazily");
                Err(exists())
            }
            Err(e) => {
                remote.unmount(snap.id);
                unmount_below(&fs_dir);
                let _ = self.remove(key);
                match e {
                    StoreError::AlreadyExists(_) => Err(exists()),
                    other => Err(other),
                }
            }
        }
    }

    /// The committed snapshot of `chain` on `parent`, as containerd's Walk
    /// after an AlreadyExists looks for it.
    fn committed_chain(&self, chain: &str, parent: &str) -> Result<Option<Info>> {
        let filter = Filter::parse_all(&[format!(
            "kind==committed,labels.\"{}\"=={chain},parent=={parent:?}",
            labels::SNAPSHOT_REF
        )])
        .map_err(|e| StoreError::Internal(format!("chain filter: {e}")))?;
        Ok(self.store.walk(&filter)?.into_iter().find(|i| {
            i.parent == parent
                && i.labels.get(labels::SNAPSHOT_REF).map(String::as_str) == Some(chain)
        }))
    }

    /// Makes the plan of an image-layer Prepare and puts it through the
    /// trust gate. `Err` when refused; `Ok(Err)` when the layer is to be
    /// unpacked (why); `Ok(Ok)` the plan and its provenance labels.
    #[allow(clippy::type_complexity)]
    fn plan(
        &self,
        req: LayerRequest,
    ) -> Result<std::result::Result<(LayerPlan, BTreeMap<String, String>), Fallback>> {
        let gate = self.trust.as_deref();
        let unverifiable = |category: &'static str, reason: String| {
            if let Some(g) = gate {
                g.unverifiable(&reason)?;
            }
            Ok(Err(Fallback::new(category, reason)))
        };
        let labels = match req {
            LayerRequest::NotALayer => {
                return Ok(Err(Fallback::new("no_labels", "not an image layer")))
            }
            LayerRequest::Unlabelled { chain_id, why } => {
                let reason = match chain_id {
                    Some(c) => format!("layer {c} has no provenance ({why})"),
                    None => why,
                };
                return unverifiable("no_labels", reason);
            }
            LayerRequest::Labelled(l) => l,
        };
        let (Some(images), true) = (&self.images, gate.is_some() || self.remote_enabled()) else {
            return Ok(Err(Fallback::new(
                "disabled",
                "remote snapshots are disabled in the configuration",
            )));
        };
        let facts = match images.facts(&labels.image, labels.manifest.as_ref()) {
            Ok(f) => f,
            // No policy lets bytes through that are not what they claim.
            Err(ImageError::Invalid { image, reason }) => {
                if let Some(g) = gate {
                    g.unverifiable(&format!("image {image}: {reason}"))?;
                }
                return Err(StoreError::FailedPrecondition(format!(
                    "image {image}: {reason}"
                )));
            }
            Err(e @ ImageError::Unavailable { .. }) => {
                return unverifiable("fetch_error", e.to_string())
            }
        };
        self.book.image(&facts);
        let prov = match gate {
            Some(g) => {
                let checked = g.check(&facts);
                self.book.verdict(&facts, verdict_of(g, &facts, &checked));
                Some(checked?)
            }
            None => None,
        };
        let plan = match LayerPlan::new(&labels, facts) {
            Ok(p) => p,
            Err(m) => {
                return unverifiable(
                    "label_mismatch",
                    format!("the layer labels do not fit the image: {m}"),
                )
            }
        };
        if !self.remote_enabled() {
            return Ok(Err(Fallback::new(
                "disabled",
                "remote snapshots are disabled in the configuration",
            )));
        }
        let prov_labels = gate.map(|g| g.labels(prov.as_ref())).unwrap_or_default();
        Ok(Ok((plan, prov_labels)))
    }

    fn remote_enabled(&self) -> bool {
        self.remote.as_ref().is_some_and(|r| r.enabled())
    }

    /// The layer below comes from the same image, or was checked: when
    /// another image's layer serves the chain below (the same diff IDs
    /// claimed by different bytes), it is checked now, and a Prepare on a
    /// layer whose content is not what its image claims is refused.
    fn check_below(&self, plan: &LayerPlan, parent: &str) -> Result<()> {
        let (Some(below), Some(remote)) = (plan.layer_below(), &self.remote) else {
            return Ok(());
        };
        let Ok((id, info, _)) = self.store.info(parent) else {
            return Ok(()); // the store's own check reports a missing parent
        };
        let Ok(served) = remote::Served::from_labels(&info.labels) else {
            return Ok(()); // unpacked by containerd, which verified it
        };
        if served.layer == below.digest || served.state == CheckState::Verified {
            return Ok(());
        }
        let refuse = |why: String| {
            StoreError::FailedPrecondition(format!(
                "layer {} of image {} sits on chain {parent}, whose bytes come from layer {} of image {}: {why}",
                plan.layer.digest,
                plan.image.name(),
                served.layer,
                served.image
            ))
        };
        if served.state == CheckState::Bad || remote.is_bad(id) {
            return Err(refuse(
                "that layer failed its check; remove the image that brought it and pull again"
                    .into(),
            ));
        }
        tracing::warn!(layer = %plan.layer.digest, below = %served.layer, "the layer below comes from another image and is not yet checked: checking it now");
        let deadline = std::time::Instant::now() + CHECK_BELOW_TIMEOUT;
        match remote.verify_now(id, deadline) {
            Some(hologram_fs::layer::Verdict::Verified) => Ok(()),
            Some(hologram_fs::layer::Verdict::Bad(why)) => Err(refuse(format!(
                "that layer failed its check ({why}); remove the image that brought it and pull again"
            ))),
            _ => Err(refuse(
                "that layer could not be checked in time; try again".into(),
            )),
        }
    }

    /// A plain active snapshot for a layer we do not serve lazily, said loudly.
    fn fallback(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        reason: Fallback,
    ) -> Result<Vec<Mount>> {
        if let Some(r) = &self.remote {
            r.record_fallback(&reason);
        }
        let layer = labels
            .get(labels::CRI_LAYER_DIGEST)
            .or_else(|| labels.get(labels::STARGZ_DIGEST))
            .cloned()
            .unwrap_or_else(|| format!("key {key}"));
        if !self.book.has_fallback(&layer, &reason) {
            self.book.unpacked_by_labels(
                labels
                    .get(labels::CRI_IMAGE_REF)
                    .or_else(|| labels.get(labels::STARGZ_REFERENCE))
                    .map(String::as_str),
                labels.get(labels::CRI_MANIFEST_DIGEST).map(String::as_str),
                &layer,
                &reason,
            );
        }
        tracing::warn!(layer = %layer, reason = %reason, "layer cannot be served lazily: containerd will download and unpack it");
        self.create_plain(Kind::Active, key, parent, labels)
    }

    /// Makes `snapshots/<id>` under a temporary name, then renames it into
    /// place. Runs inside the creating transaction.
    fn make_dir(&self, snap: &Snapshot) -> Result<()> {
        let dst = self.dir(snap.id);
        if fs::symlink_metadata(&dst).is_ok() {
            return Err(StoreError::Internal(format!(
                "snapshot directory {} already exists; refusing to reuse id {}",
                dst.display(),
                snap.id
            )));
        }
        let tmp = self.snapshots_dir().join(format!("new-{}", snap.id));
        // A leftover from a crash inside an earlier transaction with this id.
        let _ = fs::remove_dir_all(&tmp);
        let build = || -> io::Result<()> {
            fs::DirBuilder::new().mode(0o700).create(&tmp)?;
            fs::DirBuilder::new().mode(0o755).create(tmp.join("fs"))?;
            if snap.kind == Kind::Active {
                fs::DirBuilder::new().mode(0o711).create(tmp.join("work"))?;
            }
            // As containerd's overlay snapshotter: the new upper dir takes the
            // owner of its parent's, so user-namespaced images keep working.
            if let Some(pid) = snap.parent_ids.first() {
                let st = fs::metadata(self.dir(*pid).join("fs"))?;
                chown(tmp.join("fs"), Some(st.uid()), Some(st.gid()))?;
            }
            fs::rename(&tmp, &dst)
        };
        build().map_err(|e| {
            let _ = fs::remove_dir_all(&tmp);
            io_err(
                format!("cannot create snapshot directory {}", dst.display()),
                e,
            )
        })
    }

    /// Mounts of an active or view snapshot.
    pub fn mounts_of(&self, key: &str) -> Result<Vec<Mount>> {
        let snap = self.store.snapshot(key)?;
        Ok(self.mounts(&snap))
    }

    /// Commits active snapshot `key` as `name`.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let mut labels = remote::strip_reserved(labels);
        self.store.write(|t| {
            // Usage is measured inside the transaction so nothing can remove
            // the directory between the measurement and the commit.
            let (id, info, _) = self.store.info(key)?;
            // Provenance recorded at Prepare survives containerd's Commit,
            // which otherwise replaces all labels.
            for (k, v) in &info.labels {
                if k.starts_with("hologram.") {
                    labels.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            let usage = if info.kind == Kind::Active {
                disk_usage(&self.dir(id).join("fs"))
                    .map_err(|e| io_err(format!("cannot measure snapshot {key}"), e))?
            } else {
                Usage::default() // commit() refuses it with the right error
            };
            t.commit(key, name, usage, labels).map(|_| ())
        })
    }

    /// Removes snapshot `key`: metadata first (atomically), then its directory.
    /// A directory that cannot be removed now is reclaimed by Cleanup.
    pub fn remove(&self, key: &str) -> Result<()> {
        let (id, _) = self.store.write(|t| t.remove(key))?;
        let dir = self.dir(id);
        if let Some(r) = &self.remote {
            r.unmount(id);
        }
        unmount_below(&dir);
        if let Err(e) = fs::remove_dir_all(&dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %dir.display(), error = %e, "snapshot removed; its directory is left for Cleanup");
            }
        }
        Ok(())
    }

    /// Info of `key`.
    pub fn stat(&self, key: &str) -> Result<Info> {
        Ok(self.store.info(key)?.1)
    }

    /// Updates labels (see `Txn::update`). The labels only the daemon
    /// writes (what a remote snapshot serves and whether it was checked)
    /// cannot be set, changed or removed this way.
    pub fn update(&self, info: &Info, field_paths: &[String]) -> Result<Info> {
        let mut info = info.clone();
        info.labels = remote::strip_reserved(std::mem::take(&mut info.labels));
        let paths: Vec<String> = field_paths
            .iter()
            .filter(|p| {
                p.strip_prefix("labels.")
                    .is_none_or(|k| !labels::is_reserved(k))
            })
            .cloned()
            .collect();
        self.store.write(|t| {
            let (_, current, _) = self.store.info(&info.name)?;
            if paths.is_empty() && !field_paths.is_empty() {
                return Ok(current); // only reserved labels were named
            }
            if paths.is_empty() || paths.iter().any(|p| p == "labels") {
                for (k, v) in current
                    .labels
                    .iter()
                    .filter(|(k, _)| labels::is_reserved(k))
                {
                    info.labels.insert(k.clone(), v.clone());
                }
            }
            t.update(&info, &paths)
        })
    }

    /// Disk use: measured now for active snapshots, recorded at commit for
    /// committed ones, zero for views (as containerd's overlay snapshotter).
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let (id, info, usage) = self.store.info(key)?;
        if info.kind == Kind::Active {
            return disk_usage(&self.dir(id).join("fs"))
                .map_err(|e| io_err(format!("cannot measure snapshot {key}"), e));
        }
        Ok(usage)
    }

    /// All snapshots matching any of `filters` (containerd filter syntax).
    pub fn walk(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filter =
            Filter::parse_all(filters).map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        self.store.walk(&filter)
    }

    /// Removes every directory under `snapshots/` that no snapshot owns.
    /// Holds the write transaction while deciding, so a concurrent Prepare's
    /// directory is never mistaken for an orphan.
    pub fn cleanup(&self) -> Result<Vec<PathBuf>> {
        let doomed = self.store.write(|_t| {
            let ids = self.store.ids()?;
            let mut doomed = Vec::new();
            let dir = self.snapshots_dir();
            let entries = fs::read_dir(&dir)
                .map_err(|e| io_err(format!("cannot list {}", dir.display()), e))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| io_err(format!("cannot list {}", dir.display()), e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let orphan = match name.parse::<u64>() {
                    Ok(id) => !ids.contains(&id),
                    Err(_) => name.starts_with("new-") || name.starts_with("rm-"),
                };
                if orphan {
                    // Renamed first, so the removal below never races a new id.
                    let path = entry.path();
                    unmount_below(&path);
                    let to = if name.starts_with("rm-") {
                        path
                    } else {
                        let to = dir.join(format!("rm-{name}"));
                        fs::rename(&path, &to)
                            .map_err(|e| io_err(format!("cannot rename {}", path.display()), e))?;
                        to
                    };
                    doomed.push(to);
                }
            }
            Ok::<_, StoreError>(doomed)
        })?;
        for d in &doomed {
            if let Err(e) = fs::remove_dir_all(d) {
                tracing::warn!(path = %d.display(), error = %e, "cleanup could not remove directory");
            }
        }
        Ok(doomed)
    }
}

/// Highest numeric directory name under `dir` (0 when none).
fn max_dir_id(dir: &Path) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let mut max = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let digits = name
            .strip_prefix("new-")
            .or_else(|| name.strip_prefix("rm-"))
            .unwrap_or(&name);
        if let Ok(id) = digits.parse::<u64>() {
            max = max.max(id);
        }
    }
    Ok(max)
}

/// The page's record of a trust gate verdict.
fn verdict_of(
    gate: &TrustGate,
    facts: &crate::plan::ImageFacts,
    checked: &Result<crate::trust::Provenance>,
) -> hologram_telemetry::api::TrustVerdict {
    use hologram_telemetry::api::TrustVerdict;
    let mode = gate.mode_name().to_owned();
    match checked {
        Ok(p) => TrustVerdict {
            decision: if p.witness_ok { "allowed" } else { "warned" }.to_owned(),
            mode,
            uor_id: p.uor_id.to_string(),
            key_id: p.key_id.clone(),
            reason: p.reason.clone(),
            at: 0.0,
        },
        Err(e) => TrustVerdict {
            decision: "refused".to_owned(),
            mode,
            uor_id: facts.uor_id.to_string(),
            key_id: None,
            reason: Some(e.to_string()),
            at: 0.0,
        },
    }
}
