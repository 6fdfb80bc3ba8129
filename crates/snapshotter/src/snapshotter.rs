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

use hologram_store::filter::Filter;
use hologram_store::{Info, Kind, MetaStore, Snapshot, StoreError, Usage};

use crate::disk_usage::disk_usage;
use crate::mounts::{mounts_for, Mount};

/// Errors with a gRPC class; see `service.rs` for the mapping.
pub type Result<T> = std::result::Result<T, StoreError>;

fn io_err(what: impl std::fmt::Display, e: io::Error) -> StoreError {
    StoreError::Internal(format!("{what}: {e}"))
}

/// One snapshotter over one root directory.
pub struct Snapshotter {
    root: PathBuf,
    store: MetaStore,
    /// overlay supports `index=off` on this kernel (containerd sets it then).
    index_off: bool,
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
    /// process owns it.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
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
            Err(fs::TryLockError::WouldBlock) => anyhow::bail!(
                "snapshotter root {} is in use by another hologram-snapshotter process",
                root.display()
            ),
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
        Ok(Snapshotter {
            root: root.to_owned(),
            store,
            index_off,
            _lock: lock,
        })
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
        let snap = self.store.write(|t| {
            let snap = t.create(kind, key, parent, labels)?;
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
        self.store.write(|t| {
            // Usage is measured inside the transaction so nothing can remove
            // the directory between the measurement and the commit.
            let (id, info, _) = self.store.info(key)?;
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
