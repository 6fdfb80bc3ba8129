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

use crate::disk_usage::disk_usage;
use crate::mountinfo::unmount_below;
use crate::mounts::{mounts_for, Mount};
use crate::remote::{self, Fallback, LayerRef, RemoteLayers, LABEL_REMOTE, LABEL_SNAPSHOT_REF};
use crate::trust::TrustGate;

/// Errors with a gRPC class; see `service.rs` for the mapping.
pub type Result<T> = std::result::Result<T, StoreError>;

fn io_err(what: impl std::fmt::Display, e: io::Error) -> StoreError {
    StoreError::Internal(format!("{what}: {e}"))
}

/// Another process holds the root's lock: fatal, never retried.
#[derive(Debug, thiserror::Error)]
#[error("snapshotter root {0} is in use by another hologram-snapshotter process")]
pub struct RootInUse(pub PathBuf);

/// One snapshotter over one root directory.
pub struct Snapshotter {
    root: PathBuf,
    store: MetaStore,
    /// overlay supports `index=off` on this kernel (containerd sets it then).
    index_off: bool,
    /// Lazily served layers; `None` when the daemon runs without them.
    remote: Option<Arc<RemoteLayers>>,
    /// Witness verification of image layers; `None` when trust is off.
    trust: Option<Arc<TrustGate>>,
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
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(RootInUse(root.to_owned()).into()),
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        }
        // Ids must never be reused: start above every id that has a directory,
        // even one whose transaction never committed (see MetaStore docs).
        let floor = max_dir_id(&root.join("snapshots"))?;
        let store = MetaStore::open_with_floor(&root.join("metadata.redb"), floor)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let index_off = Path::new("/sys/module/overlay/parameters/index").exists();
        let sn = Snapshotter {
            root: root.to_owned(),
            store,
            index_off,
            remote,
            trust,
            _lock: lock,
        };
        sn.restore_remote();
        Ok(sn)
    }

    /// Re-mounts every committed remote snapshot. Failures are logged, never
    /// fatal: the daemon must start even when a registry is unreachable.
    fn restore_remote(&self) {
        let Some(remote) = &self.remote else { return };
        let Ok(filter) = Filter::parse_all(&[format!("kind==committed,labels.\"{LABEL_REMOTE}\"")])
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
            match remote.restore(id, &info.labels, &fs) {
                Ok(()) => tracing::info!(snapshot = %info.name, "remote layer mounted again"),
                Err(e) => tracing::error!(snapshot = %info.name, error = %e,
                    "cannot mount remote layer again; containers using it will fail to read"),
            }
        }
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
        if kind == Kind::Active {
            if let Some(decision) = remote::layer_ref(&labels) {
                let chain_id = labels.get(LABEL_SNAPSHOT_REF).cloned().unwrap_or_default();
                return self.prepare_layer(key, parent, labels, &chain_id, decision);
            }
            // containerd 1.6's `ctr image pull` unpacks through
            // rootfs.ApplyLayer, which sends no labels at all: recognise its
            // key, so such a layer is still an image layer — with no
            // provenance — and not a silent plain snapshot.
            if let Some(chain_id) = remote::unpack_chain_id(key) {
                let reason = "no layer labels (the client unpacked without remote-snapshot labels, e.g. plain `ctr pull`; use `hologram pull` or CRI)";
                return self.prepare_layer(key, parent, labels, chain_id, Err(reason.to_owned()));
            }
        }
        let snap = self.store.write(|t| {
            let snap = t.create(kind, key, parent, labels)?;
            self.make_dir(&snap)?;
            Ok(snap)
        })?;
        Ok(self.mounts(&snap))
    }

    /// Prepare of an image layer during unpack (`snapshot.ref` present): serve
    /// it remotely if we can (commit under the chain ID and answer
    /// AlreadyExists, so containerd skips download and unpack), otherwise a
    /// plain active snapshot for containerd to unpack into, with a warning.
    fn prepare_layer(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        chain_id: &str,
        decision: std::result::Result<LayerRef, String>,
    ) -> Result<Vec<Mount>> {
        let exists = || StoreError::AlreadyExists(format!("target snapshot {chain_id:?}"));
        // Trust first: nothing of an image that fails its policy is mounted
        // or unpacked, whatever else is already here.
        let mut labels = labels;
        let mut decision = decision;
        if let Some(gate) = &self.trust {
            let prov = gate.check_layer(chain_id, &labels)?;
            if let (Some(p), Ok(lr)) = (&prov, &mut decision) {
                // The verified manifest, not the client's labels, names the TOC.
                let (toc, size) = crate::trust::layer_facts(p, &lr.layer_digest);
                lr.toc_digest = toc.or(lr.toc_digest.take());
                lr.size = size.or(lr.size);
            }
            labels.extend(gate.labels(prov.as_ref()));
        }
        // Already served (another namespace, an earlier pull): containerd
        // finds it with a Walk on the ref label and parent.
        if let Ok((_, info, _)) = self.store.info(chain_id) {
            if info.kind == Kind::Committed && info.parent == parent {
                return Err(exists());
            }
        }
        let disabled = || Fallback::new("disabled", "remote snapshots are disabled");
        let (lr, remote) = match (decision, self.remote.clone()) {
            (Ok(lr), Some(r)) if r.enabled() => (lr, r),
            (Ok(_), _) => return self.fallback(key, parent, labels, chain_id, disabled()),
            (Err(reason), _) => {
                return self.fallback(
                    key,
                    parent,
                    labels,
                    chain_id,
                    Fallback::new("no_labels", reason),
                )
            }
        };
        let snap = self.store.write(|t| {
            let snap = t.create(Kind::Active, key, parent, labels.clone())?;
            self.make_dir(&snap)?;
            Ok(snap)
        })?;
        let fs_dir = self.dir(snap.id).join("fs");
        let extra = match remote.mount(snap.id, &lr, &fs_dir) {
            Ok(extra) => extra,
            Err(reason) => {
                remote.record_fallback(&reason);
                tracing::warn!(layer = %lr.layer_digest, image = %lr.image, reason = %reason,
                    "layer cannot be served lazily: containerd will download and unpack it");
                return Ok(self.mounts(&snap));
            }
        };
        let mut commit_labels = labels;
        commit_labels.extend(extra);
        match self
            .store
            .write(|t| t.commit(key, chain_id, Usage::default(), commit_labels))
        {
            Ok(_) => {
                tracing::info!(layer = %lr.layer_digest, image = %lr.image, chain_id = %chain_id, "layer mounted lazily");
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

    /// A plain active snapshot for a layer we do not serve lazily, said loudly.
    fn fallback(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        chain_id: &str,
        reason: Fallback,
    ) -> Result<Vec<Mount>> {
        if let Some(r) = &self.remote {
            r.record_fallback(&reason);
        }
        let layer = labels
            .get(remote::LABEL_CRI_LAYER_DIGEST)
            .or_else(|| labels.get(remote::LABEL_STARGZ_DIGEST))
            .cloned()
            .unwrap_or_else(|| format!("chain {chain_id}"));
        tracing::warn!(layer = %layer, reason = %reason, "layer cannot be served lazily: containerd will download and unpack it");
        let snap = self.store.write(|t| {
            let snap = t.create(Kind::Active, key, parent, labels)?;
            self.make_dir(&snap)?;
            Ok(snap)
        })?;
        Ok(self.mounts(&snap))
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
        let mut labels = labels;
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

    /// Updates labels (see `Txn::update`).
    pub fn update(&self, info: &Info, field_paths: &[String]) -> Result<Info> {
        self.store.write(|t| t.update(info, field_paths))
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
