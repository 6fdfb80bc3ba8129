//! Compressed bytes fetched ahead of the whole-layer pass, kept for it.
//!
//! The pass ([`crate::layer::Layer::warm`]) hashes every compressed byte of
//! the blob in order. Bytes that on-demand reads or a profile prefetch
//! fetched before the pass got there would otherwise be fetched a second
//! time; the spool keeps them in a sparse file (one per mounted layer,
//! removed when the pass is done or the layer goes away) and the pass reads
//! them from there. A spool that cannot write (disk full) only stops
//! sparing the network: nothing depends on it.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Most bytes one layer's spool holds.
pub const SPOOL_LIMIT: u64 = 512 << 20;

#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    file: File,
    /// Ranges held, start → end, disjoint and not touching.
    have: Mutex<BTreeMap<u64, u64>>,
}

impl Spool {
    /// A new, empty spool file at `path` (replaced if it exists).
    pub fn create(path: &Path) -> std::io::Result<Spool> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Spool {
            path: path.to_owned(),
            file,
            have: Mutex::new(BTreeMap::new()),
        })
    }

    fn held(&self) -> u64 {
        self.have
            .lock()
            .map(|h| h.iter().map(|(s, e)| e - s).sum())
            .unwrap_or(u64::MAX)
    }

    /// Keeps `data`, the blob bytes at `start`.
    pub fn put(&self, start: u64, data: &[u8]) {
        if data.is_empty() || self.held() + data.len() as u64 > SPOOL_LIMIT {
            return;
        }
        if self.file.write_all_at(data, start).is_err() {
            return;
        }
        let Ok(mut have) = self.have.lock() else {
            return;
        };
        let (mut s, mut e) = (start, start + data.len() as u64);
        // Merge with every range that overlaps or touches [s, e).
        let touching: Vec<(u64, u64)> = have
            .range(..=e)
            .filter(|(_, &end)| end >= s)
            .map(|(&a, &b)| (a, b))
            .collect();
        for (a, b) in touching {
            have.remove(&a);
            s = s.min(a);
            e = e.max(b);
        }
        have.insert(s, e);
    }

    /// Splits `r` into the parts the spool holds (`true`) and the rest,
    /// in order.
    pub fn split(&self, r: &Range<u64>) -> Vec<(Range<u64>, bool)> {
        let Ok(have) = self.have.lock() else {
            return vec![(r.clone(), false)];
        };
        let mut out = Vec::new();
        let mut pos = r.start;
        // The range that may cover `pos`, then every one starting inside r.
        let first = have.range(..=pos).next_back().map(|(&a, &b)| (a, b));
        let rest = have.range(pos + 1..r.end).map(|(&a, &b)| (a, b));
        for (a, b) in first.into_iter().chain(rest) {
            if b <= pos {
                continue;
            }
            if a > pos {
                out.push((pos..a.min(r.end), false));
            }
            let end = b.min(r.end);
            if end > a.max(pos) {
                out.push((a.max(pos)..end, true));
            }
            pos = end;
            if pos >= r.end {
                break;
            }
        }
        if pos < r.end {
            out.push((pos..r.end, false));
        }
        out
    }

    /// The held bytes of `r` (which [`Spool::split`] said are held).
    pub fn read(&self, r: &Range<u64>) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; (r.end - r.start) as usize];
        self.file.read_exact_at(&mut buf, r.start)?;
        Ok(buf)
    }

    /// Forgets everything before `pos` (the pass has hashed it): the file's
    /// blocks there are released.
    pub fn release_before(&self, pos: u64) {
        let Ok(mut have) = self.have.lock() else {
            return;
        };
        let gone: Vec<(u64, u64)> = have.range(..pos).map(|(&a, &b)| (a, b)).collect();
        for (a, b) in gone {
            have.remove(&a);
            if b > pos {
                have.insert(pos, b);
            }
        }
        drop(have);
        // Punching the hole is only about disk space; failure is harmless.
        let _ = nix::fcntl::fallocate(
            &self.file,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            i64::try_from(pos).unwrap_or(i64::MAX),
        );
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn held_ranges_merge_and_split() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::create(&d.path().join("x")).unwrap();
        s.put(10, &[1; 10]); // 10..20
        s.put(30, &[2; 5]); // 30..35
        s.put(20, &[3; 2]); // 20..22, touches 10..20
        assert_eq!(
            s.split(&(0..40)),
            vec![
                (0..10, false),
                (10..22, true),
                (22..30, false),
                (30..35, true),
                (35..40, false)
            ]
        );
        assert_eq!(
            s.split(&(12..31)),
            vec![(12..22, true), (22..30, false), (30..31, true)]
        );
        assert_eq!(s.split(&(40..50)), vec![(40..50, false)]);
        assert_eq!(s.read(&(19..22)).unwrap(), vec![1, 3, 3]);
        s.release_before(31);
        assert_eq!(
            s.split(&(0..40)),
            vec![(0..31, false), (31..35, true), (35..40, false)]
        );
        let path = d.path().join("x");
        drop(s);
        assert!(!path.exists(), "removed with the layer");
    }
}
