//! The on-disk chunk cache: decompressed, verified chunks, one file each,
//! named by their digest, with a size limit and least-recently-used eviction.
//!
//! Only verified bytes enter (the caller checks the digest before `put`), so a
//! hit is served without hashing again. Writes go to a temporary name and are
//! renamed into place: a crash leaves either a whole chunk or none. Shared by
//! every layer, so a chunk common to two images is fetched once.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hologram_oci::Digest;

#[derive(Debug, Default)]
struct State {
    /// digest -> (size, last use tick)
    entries: HashMap<Digest, (u64, u64)>,
    total: u64,
    tick: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
    seq: AtomicU64,
}

impl ChunkCache {
    /// Opens the cache in `dir` (created 0700), keeping at most `limit` bytes.
    /// Existing chunks are adopted; leftovers of interrupted writes removed.
    pub fn open(dir: &Path, limit: u64) -> io::Result<ChunkCache> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut st = State::default();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            // Only files named by a digest are chunks; anything else is left alone.
            if let Ok(d) = Digest::parse_hex(&name) {
                let meta = entry.metadata()?;
                if meta.is_file() {
                    st.tick += 1;
                    st.total += meta.len();
                    st.entries.insert(d, (meta.len(), st.tick));
                }
            }
        }
        let cache = ChunkCache {
            dir: dir.to_owned(),
            limit,
            state: Mutex::new(st),
            seq: AtomicU64::new(0),
        };
        cache.evict();
        Ok(cache)
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Bytes currently held.
    pub fn total(&self) -> u64 {
        self.state.lock().map(|s| s.total).unwrap_or(0)
    }

    /// The size limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether `digest` is cached (does not count as a use).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.state
            .lock()
            .map(|s| s.entries.contains_key(digest))
            .unwrap_or(false)
    }

    /// The cache file of `digest`, if present, marking it used. Callers may
    /// open it for passthrough.
    pub fn path_of(&self, digest: &Digest) -> Option<PathBuf> {
        let mut st = self.state.lock().ok()?;
        st.tick += 1;
        let tick = st.tick;
        let e = st.entries.get_mut(digest)?;
        e.1 = tick;
        Some(self.path(digest))
    }

    /// Reads `len` bytes at `offset` of cached chunk `digest` into `out`.
    /// `Ok(false)` when the chunk is not (or no longer) cached.
    pub fn read_into(
        &self,
        digest: &Digest,
        offset: u64,
        len: usize,
        out: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let Some(path) = self.path_of(digest) else {
            return Ok(false);
        };
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(digest);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let start = out.len();
        out.resize(start + len, 0);
        let mut done = 0;
        while done < len {
            let n = f.read_at(&mut out[start + done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        out.truncate(start + done);
        Ok(true)
    }

    /// Stores verified chunk bytes. Idempotent.
    pub fn put(&self, digest: &Digest, data: &[u8]) -> io::Result<()> {
        let hex = digest.hex();
        if self.contains(digest) {
            return Ok(());
        }
        let tmp = self.dir.join(format!(
            ".tmp-{}-{hex}",
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> io::Result<()> {
            let mut f = File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(data)?;
            fs::rename(&tmp, self.path(digest))
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let size = data.len() as u64;
        if let Ok(mut st) = self.state.lock() {
            st.tick += 1;
            let tick = st.tick;
            if st.entries.insert(*digest, (size, tick)).is_none() {
                st.total += size;
            }
        }
        self.evict();
        Ok(())
    }

    fn forget(&self, digest: &Digest) {
        if let Ok(mut st) = self.state.lock() {
            if let Some((size, _)) = st.entries.remove(digest) {
                st.total -= size;
            }
        }
    }

    /// Evicts least recently used chunks until the total is within the limit.
    fn evict(&self) {
        let victims: Vec<Digest> = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            if st.total <= self.limit {
                return;
            }
            let mut by_age: Vec<(u64, Digest, u64)> = st
                .entries
                .iter()
                .map(|(k, (size, tick))| (*tick, *k, *size))
                .collect();
            by_age.sort_unstable();
            let mut out = Vec::new();
            // Never the newest entry: its writer is about to read it.
            let n = by_age.len();
            for (_, k, size) in by_age.into_iter().take(n.saturating_sub(1)) {
                if st.total <= self.limit {
                    break;
                }
                st.entries.remove(&k);
                st.total -= size;
                out.push(k);
            }
            out
        };
        for k in victims {
            let _ = fs::remove_file(self.path(&k));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    #[test]
    fn put_read_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(d.path(), 1 << 20).unwrap();
        let mut out = Vec::new();
        assert!(!c.read_into(&digest(1), 0, 3, &mut out).unwrap());
        c.put(&digest(1), b"hello world").unwrap();
        assert!(c.read_into(&digest(1), 6, 5, &mut out).unwrap());
        assert_eq!(out, b"world");
        out.clear();
        assert!(
            c.read_into(&digest(1), 8, 100, &mut out).unwrap(),
            "short read at the end"
        );
        assert_eq!(out, b"rld");
        drop(c);
        std::fs::write(d.path().join(".tmp-9-x"), b"partial").unwrap();
        let c = ChunkCache::open(d.path(), 1 << 20).unwrap();
        assert!(c.contains(&digest(1)));
        assert_eq!(c.total(), 11);
        assert!(!d.path().join(".tmp-9-x").exists());
    }

    #[test]
    fn evicts_least_recently_used() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(d.path(), 250).unwrap();
        c.put(&digest(1), &[1; 100]).unwrap();
        c.put(&digest(2), &[2; 100]).unwrap();
        let mut out = Vec::new();
        assert!(c.read_into(&digest(1), 0, 1, &mut out).unwrap()); // 1 is now newer than 2
        c.put(&digest(3), &[3; 100]).unwrap();
        assert!(c.contains(&digest(1)));
        assert!(!c.contains(&digest(2)), "2 was least recently used");
        assert!(c.contains(&digest(3)));
        assert_eq!(c.total(), 200);
        assert!(!d.path().join(digest(2).hex()).exists());
    }

    #[test]
    fn adopts_only_digest_named_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("not-a-digest"), b"x").unwrap();
        std::fs::write(d.path().join("A".repeat(64)), b"x").unwrap();
        std::fs::create_dir(d.path().join(digest(7).hex())).unwrap();
        let c = ChunkCache::open(d.path(), 1000).unwrap();
        assert_eq!(c.total(), 0);
        assert!(!c.contains(&digest(7)));
    }
}
