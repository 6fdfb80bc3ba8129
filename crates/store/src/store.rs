//! The snapshot metadata store: one redb file, one write transaction per
//! snapshotter operation.
//!
//! Semantics follow containerd's `snapshots/storage` package (the bolt store
//! behind its overlayfs snapshotter), rule for rule:
//!
//! * a snapshot is created Active or View, on a Committed parent (or none);
//! * Commit turns an Active snapshot into a Committed one under a new name,
//!   keeping its id (its directory stays where it is), replacing its labels;
//! * a snapshot with children cannot be removed;
//! * labels with an empty value are not stored (setting one to "" deletes it);
//! * ids come from a persistent counter and are never reused, even across a
//!   crash (see [`MetaStore::open_with_floor`]).
//!
//! Every mutation runs inside [`MetaStore::write`], whose closure may do the
//! matching filesystem step before the transaction commits: the caller creates
//! a directory under a temporary name, renames it into place, and only then
//! lets the metadata commit (the pattern of containerd's overlay snapshotter).
//! A crash at any point leaves either no metadata (the directory is an orphan
//! that Cleanup reclaims) or metadata whose directory exists.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::filter::{Filter, SnapshotFields};
use crate::{Kind, StoreError};

/// snapshot name (key) -> JSON-encoded [`Record`].
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// (parent name, child name) -> (); answers "does this snapshot have children".
const CHILDREN: TableDefinition<(&str, &str), ()> = TableDefinition::new("children");
/// Store-wide counters and the schema version.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const NEXT_ID: &str = "next_id";
const SCHEMA: &str = "schema_version";
const SCHEMA_VERSION: u64 = 1;

/// containerd's limit for one label: key and value together (labels.Validate).
pub const MAX_LABEL_SIZE: usize = 4096;
/// Our limit for all labels of one snapshot together (containerd sets none; a
/// bound keeps a hostile client from bloating every later Walk).
pub const MAX_LABELS_TOTAL: usize = 256 * 1024;
/// Longest key or parent name accepted.
pub const MAX_KEY_LEN: usize = 4096;

/// A snapshot's public description (containerd's `snapshots.Info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub parent: String,
    pub kind: Kind,
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the Unix epoch.
    pub created_ns: i64,
    /// Nanoseconds since the Unix epoch.
    pub updated_ns: i64,
}

/// Disk use of a snapshot, as containerd's `snapshots.Usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// What the snapshotter needs to build mounts: its id and its ancestors' ids,
/// nearest parent first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: u64,
    pub kind: Kind,
    pub parent_ids: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: u64,
    kind: Kind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    parent: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    created_ns: i64,
    updated_ns: i64,
    /// Recorded at commit; zero for active and view snapshots.
    #[serde(default)]
    usage: Usage,
}

impl Record {
    fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_owned(),
            parent: self.parent.clone(),
            kind: self.kind,
            labels: self.labels.clone(),
            created_ns: self.created_ns,
            updated_ns: self.updated_ns,
        }
    }
}

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Internal(format!("metadata store: {}", e.into()))
}

fn now_ns() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn decode(name: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::Internal(format!(
            "metadata store: snapshot {name:?} record is corrupt: {e}"
        ))
    })
}

fn encode(rec: &Record) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(rec)
        .map_err(|e| StoreError::Internal(format!("metadata store: encode: {e}")))
}

/// Checks a snapshot key or parent name. containerd accepts any non-empty
/// string; we also refuse NUL bytes and absurd lengths.
pub fn validate_key(what: &str, key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument(format!(
            "{what} must not be empty"
        )));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::InvalidArgument(format!(
            "{what} is {} bytes long, the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    if key.contains('\0') {
        return Err(StoreError::InvalidArgument(format!(
            "{what} {key:?} contains a NUL byte"
        )));
    }
    Ok(())
}

/// containerd's label rule (each key+value at most 4096 bytes, keys non-empty)
/// plus a bound on the total.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), StoreError> {
    let mut total = 0usize;
    for (k, v) in labels {
        if k.is_empty() {
            return Err(StoreError::InvalidArgument(
                "label key must not be empty".into(),
            ));
        }
        let size = k.len() + v.len();
        if size > MAX_LABEL_SIZE {
            let shown: String = k.chars().take(64).collect();
            return Err(StoreError::InvalidArgument(format!(
                "label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {shown}"
            )));
        }
        total += size;
    }
    if total > MAX_LABELS_TOTAL {
        return Err(StoreError::InvalidArgument(format!(
            "labels of one snapshot total {total} bytes, the limit is {MAX_LABELS_TOTAL}"
        )));
    }
    Ok(())
}

/// Labels as stored: empty values dropped (containerd's boltutil does the same).
fn stored_labels(labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().filter(|(_, v)| !v.is_empty()).collect()
}

/// The metadata store. Cheap to share behind an `Arc`; every method is a
/// complete transaction.
pub struct MetaStore {
    db: Database,
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore").finish_non_exhaustive()
    }
}

impl MetaStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_floor(path, 0)
    }

    /// Opens the store and makes sure the next id is greater than `floor`.
    /// The snapshotter passes the highest id it finds on disk: a crash after a
    /// directory was renamed into place but before its transaction committed
    /// must not let that id be handed out again.
    pub fn open_with_floor(path: &Path, floor: u64) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| {
            StoreError::Internal(format!(
                "cannot open metadata store {}: {e}",
                path.display()
            ))
        })?;
        let store = MetaStore { db };
        let tx = store.db.begin_write().map_err(db_err)?;
        {
            tx.open_table(SNAPSHOTS).map_err(db_err)?;
            tx.open_table(CHILDREN).map_err(db_err)?;
            let mut meta = tx.open_table(META).map_err(db_err)?;
            let schema = meta.get(SCHEMA).map_err(db_err)?.map(|g| g.value());
            match schema {
                None => {
                    meta.insert(SCHEMA, SCHEMA_VERSION).map_err(db_err)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(v) => {
                    return Err(StoreError::Internal(format!(
                        "metadata store {} has schema version {v}; this build reads version {SCHEMA_VERSION}",
                        path.display()
                    )))
                }
            }
            let next = meta.get(NEXT_ID).map_err(db_err)?.map_or(1, |g| g.value());
            if next <= floor {
                meta.insert(NEXT_ID, floor + 1).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(store)
    }

    /// Runs `f` in one write transaction. If `f` returns `Ok`, the transaction
    /// commits (durably) and `f`'s value is returned; otherwise it is rolled
    /// back and `f`'s error returned. Write transactions are serialized, so
    /// concurrent callers see each other's effects in some total order.
    pub fn write<T, E>(&self, f: impl FnOnce(&mut Txn<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let tx = self.db.begin_write().map_err(|e| E::from(db_err(e)))?;
        let mut txn = Txn { tx: &tx };
        let out = f(&mut txn);
        match out {
            Ok(v) => {
                tx.commit().map_err(|e| E::from(db_err(e)))?;
                Ok(v)
            }
            Err(e) => {
                // Dropping an uncommitted write transaction aborts it.
                drop(tx);
                Err(e)
            }
        }
    }

    /// A read transaction over every table: is the store usable right now?
    pub fn check(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        tx.open_table(SNAPSHOTS).map_err(db_err)?;
        tx.open_table(CHILDREN).map_err(db_err)?;
        tx.open_table(META).map_err(db_err)?;
        Ok(())
    }

    /// Info of the snapshot named `key`.
    pub fn info(&self, key: &str) -> Result<(u64, Info, Usage), StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(SNAPSHOTS).map_err(db_err)?;
        let rec = t
            .get(key)
            .map_err(db_err)?
            .map(|g| decode(key, g.value()))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("snapshot {key}")))?;
        Ok((rec.id, rec.info(key), rec.usage))
    }

    /// The snapshot `key` with its ancestors, for mounts. Only active and view
    /// snapshots have mounts (containerd: FailedPrecondition otherwise).
    pub fn snapshot(&self, key: &str) -> Result<Snapshot, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(SNAPSHOTS).map_err(db_err)?;
        let rec =
            get_rec(&t, key)?.ok_or_else(|| StoreError::NotFound(format!("snapshot {key}")))?;
        if rec.kind == Kind::Committed {
            return Err(StoreError::FailedPrecondition(format!(
                "requested snapshot {key} not active or view"
            )));
        }
        let parent_ids = ancestors(&t, &rec.parent)?;
        Ok(Snapshot {
            id: rec.id,
            kind: rec.kind,
            parent_ids,
        })
    }

    /// Every snapshot matching `filter`, in name order.
    pub fn walk(&self, filter: &Filter) -> Result<Vec<Info>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(SNAPSHOTS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let name = k.value();
            let rec = decode(name, v.value())?;
            let fields = SnapshotFields {
                name,
                parent: &rec.parent,
                kind: rec.kind.as_str(),
                labels: &rec.labels,
            };
            if filter.matches(&fields) {
                out.push(rec.info(name));
            }
        }
        Ok(out)
    }

    /// The ids of all snapshots, for Cleanup.
    pub fn ids(&self) -> Result<HashSet<u64>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(SNAPSHOTS).map_err(db_err)?;
        let mut ids = HashSet::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            ids.insert(decode(k.value(), v.value())?.id);
        }
        Ok(ids)
    }
}

/// One open write transaction; see [`MetaStore::write`].
pub struct Txn<'a> {
    tx: &'a redb::WriteTransaction,
}

fn get_rec(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Record>, StoreError> {
    t.get(key)
        .map_err(db_err)?
        .map(|g| decode(key, g.value()))
        .transpose()
}

/// Ids from `parent` up to the base layer, nearest first.
fn ancestors(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    parent: &str,
) -> Result<Vec<u64>, StoreError> {
    let mut ids = Vec::new();
    let mut next = parent.to_owned();
    while !next.is_empty() {
        let rec = get_rec(t, &next)?.ok_or_else(|| {
            StoreError::Internal(format!("metadata store: ancestor {next:?} is missing"))
        })?;
        ids.push(rec.id);
        next = rec.parent;
    }
    Ok(ids)
}

impl Txn<'_> {
    /// Creates an active or view snapshot `key` on `parent` (containerd's
    /// `storage.CreateSnapshot`).
    pub fn create(
        &mut self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Snapshot, StoreError> {
        if kind == Kind::Committed {
            return Err(StoreError::InvalidArgument(format!(
                "snapshot type {} invalid; only snapshots of type Active or View can be created",
                kind.as_str()
            )));
        }
        validate_key("snapshot key", key)?;
        validate_labels(&labels)?;
        let mut t = self.tx.open_table(SNAPSHOTS).map_err(db_err)?;
        let mut parent_ids = Vec::new();
        if !parent.is_empty() {
            let prec = get_rec(&t, parent)?.ok_or_else(|| {
                StoreError::NotFound(format!("parent snapshot {parent:?} does not exist"))
            })?;
            if prec.kind != Kind::Committed {
                return Err(StoreError::InvalidArgument(format!(
                    "parent {parent:?} is not committed snapshot"
                )));
            }
            parent_ids.push(prec.id);
            parent_ids.extend(ancestors(&t, &prec.parent)?);
        }
        if t.get(key).map_err(db_err)?.is_some() {
            return Err(StoreError::AlreadyExists(format!("snapshot {key}")));
        }
        let id = self.next_id()?;
        let now = now_ns();
        let rec = Record {
            id,
            kind,
            parent: parent.to_owned(),
            labels: stored_labels(labels),
            created_ns: now,
            updated_ns: now,
            usage: Usage::default(),
        };
        t.insert(key, encode(&rec)?.as_slice()).map_err(db_err)?;
        if !parent.is_empty() {
            let mut c = self.tx.open_table(CHILDREN).map_err(db_err)?;
            c.insert((parent, key), ()).map_err(db_err)?;
        }
        Ok(Snapshot {
            id,
            kind,
            parent_ids,
        })
    }

    /// Commits active snapshot `key` as `name` (containerd's
    /// `storage.CommitActive`): same id, labels replaced, usage recorded.
    pub fn commit(
        &mut self,
        key: &str,
        name: &str,
        usage: Usage,
        labels: BTreeMap<String, String>,
    ) -> Result<u64, StoreError> {
        validate_key("snapshot name", name)?;
        validate_key("snapshot key", key)?;
        validate_labels(&labels)?;
        let mut t = self.tx.open_table(SNAPSHOTS).map_err(db_err)?;
        if t.get(name).map_err(db_err)?.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "committed snapshot {name}"
            )));
        }
        let mut rec = get_rec(&t, key)?.ok_or_else(|| {
            StoreError::NotFound(format!("failed to get active snapshot {key:?}"))
        })?;
        if rec.kind != Kind::Active {
            return Err(StoreError::FailedPrecondition(format!(
                "snapshot {key:?} is not active (it is {})",
                rec.kind.as_str()
            )));
        }
        // An active snapshot has no children (only committed ones can be parents),
        // so only the link to its own parent moves.
        t.remove(key).map_err(db_err)?;
        let now = now_ns();
        rec.kind = Kind::Committed;
        rec.created_ns = now;
        rec.updated_ns = now;
        rec.labels = stored_labels(labels);
        rec.usage = usage;
        t.insert(name, encode(&rec)?.as_slice()).map_err(db_err)?;
        if !rec.parent.is_empty() {
            let mut c = self.tx.open_table(CHILDREN).map_err(db_err)?;
            c.remove((rec.parent.as_str(), key)).map_err(db_err)?;
            c.insert((rec.parent.as_str(), name), ()).map_err(db_err)?;
        }
        Ok(rec.id)
    }

    /// Removes snapshot `key` (containerd's `storage.Remove`); returns its id
    /// and kind so the caller can reclaim its directory after the commit.
    pub fn remove(&mut self, key: &str) -> Result<(u64, Kind), StoreError> {
        let mut t = self.tx.open_table(SNAPSHOTS).map_err(db_err)?;
        let rec =
            get_rec(&t, key)?.ok_or_else(|| StoreError::NotFound(format!("snapshot {key}")))?;
        let mut c = self.tx.open_table(CHILDREN).map_err(db_err)?;
        let has_child = match c.range((key, "")..).map_err(db_err)?.next() {
            Some(item) => {
                let (k, _) = item.map_err(db_err)?;
                k.value().0 == key
            }
            None => false,
        };
        if has_child {
            return Err(StoreError::FailedPrecondition(format!(
                "cannot remove snapshot {key}: it has children"
            )));
        }
        if !rec.parent.is_empty() {
            c.remove((rec.parent.as_str(), key)).map_err(db_err)?;
        }
        t.remove(key).map_err(db_err)?;
        Ok((rec.id, rec.kind))
    }

    /// Updates the mutable fields of `info.name` (containerd's
    /// `storage.UpdateInfo`): with no field paths all labels are replaced;
    /// `labels` replaces all, `labels.<key>` sets (or, when absent or empty
    /// in `info`, deletes) one label; any other path is InvalidArgument.
    pub fn update(&mut self, info: &Info, field_paths: &[String]) -> Result<Info, StoreError> {
        validate_key("snapshot key", &info.name)?;
        let mut t = self.tx.open_table(SNAPSHOTS).map_err(db_err)?;
        let mut rec = get_rec(&t, &info.name)?
            .ok_or_else(|| StoreError::NotFound(format!("snapshot {}", info.name)))?;
        if field_paths.is_empty() {
            rec.labels = info.labels.clone();
        } else {
            for path in field_paths {
                if let Some(key) = path.strip_prefix("labels.") {
                    match info.labels.get(key) {
                        Some(v) => rec.labels.insert(key.to_owned(), v.clone()),
                        None => rec.labels.remove(key),
                    };
                } else if path == "labels" {
                    rec.labels = info.labels.clone();
                } else {
                    return Err(StoreError::InvalidArgument(format!(
                        "cannot update {path:?} field on snapshot {:?}",
                        info.name
                    )));
                }
            }
        }
        rec.labels = stored_labels(std::mem::take(&mut rec.labels));
        validate_labels(&rec.labels)?;
        rec.updated_ns = now_ns();
        t.insert(info.name.as_str(), encode(&rec)?.as_slice())
            .map_err(db_err)?;
        Ok(rec.info(&info.name))
    }

    fn next_id(&mut self) -> Result<u64, StoreError> {
        let mut meta = self.tx.open_table(META).map_err(db_err)?;
        let id = meta.get(NEXT_ID).map_err(db_err)?.map_or(1, |g| g.value());
        let next = id
            .checked_add(1)
            .ok_or_else(|| StoreError::Internal("snapshot id space exhausted".into()))?;
        meta.insert(NEXT_ID, next).map_err(db_err)?;
        Ok(id)
    }
}
