//! Disk use of a directory tree, counted like containerd's `fs.DiskUsage`:
//! allocated blocks (st_blocks × 512) and inodes, each hard-linked inode once,
//! without following symlinks or crossing into other filesystems.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use hologram_store::Usage;

/// Measures `root`. Entries that vanish during the walk are skipped.
pub fn disk_usage(root: &Path) -> io::Result<Usage> {
    let meta = fs::symlink_metadata(root)?;
    let dev = meta.dev();
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![(root.to_owned(), meta)];
    while let Some((path, meta)) = stack.pop() {
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += i64::try_from(meta.blocks()).unwrap_or(i64::MAX / 1024) * 512;
        }
        if meta.is_dir() && meta.dev() == dev {
            let entries = match fs::read_dir(&path) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                match entry.metadata() {
                    Ok(m) => stack.push((entry.path(), m)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counts_blocks_inodes_and_hardlinks_once() {
        let d = tempfile::tempdir().unwrap();
        let empty = disk_usage(d.path()).unwrap();
        assert_eq!(empty.inodes, 1);
        fs::write(d.path().join("a"), vec![7u8; 100_000]).unwrap();
        fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("sub/l")).unwrap();
        let u = disk_usage(d.path()).unwrap();
        assert_eq!(u.inodes, 4, "root, a(=b), sub, l");
        assert!(u.size >= 100_000 + empty.size, "{u:?}");
        assert!(
            u.size < 2 * 100_000 + 64 * 1024,
            "hardlink counted once: {u:?}"
        );
    }
}
