//! Mounts under a path, from /proc/self/mountinfo, and detaching them. Used
//! before a snapshot directory is deleted or re-mounted, so that nothing ever
//! recurses into a live (or dead) FUSE mount.

use std::path::{Path, PathBuf};

/// Undo mountinfo's octal escapes (`\040` for space, etc.).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `root` in `mountinfo` text, deepest first.
pub fn mounts_below_in(mountinfo: &str, root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(root))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Mount points at or below `root` now.
pub fn mounts_below(root: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map_or_else(|_| Vec::new(), |t| mounts_below_in(&t, root))
}

/// The FUSE connection number (the mount's device minor, its directory
/// under /sys/fs/fuse/connections) of the hologram mount (source
/// `hologram:<layer>`) on top at `mountpoint` in `mountinfo` text.
pub fn fuse_connection_in(mountinfo: &str, mountpoint: &Path) -> Option<u32> {
    mountinfo.lines().rev().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let mp = PathBuf::from(unescape(fields.get(4)?));
        let sep = fields.iter().position(|f| *f == "-")?;
        let fstype = fields.get(sep + 1)?;
        let source = fields.get(sep + 2)?;
        let (_, minor) = fields.get(2)?.split_once(':')?;
        let ours =
            (*fstype == "fuse" || *fstype == "fuse.hologram") && source.starts_with("hologram:");
        (mp == mountpoint && ours)
            .then(|| minor.parse().ok())
            .flatten()
    })
}

/// [`fuse_connection_in`] for this process's mounts now.
pub fn fuse_connection_at(mountpoint: &Path) -> Option<u32> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|t| fuse_connection_in(&t, mountpoint))
}

/// Detaches (lazily) every mount at or below `root`; failures are logged.
pub fn unmount_below(root: &Path) {
    for m in mounts_below(root) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mountpoint = %m.display(), error = %e, "cannot detach mount");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_mounts_deepest_first_with_escapes() {
        let mi = "22 1 0:21 / /proc rw - proc proc rw\n\
                  90 1 0:50 / /r/snapshots/3/fs ro - fuse hologram:sha256:ab ro\n\
                  91 1 0:51 / /r/snapshots/3/fs/deep ro - fuse x ro\n\
                  92 1 0:52 / /r/snapshots/30/fs ro - fuse x ro\n\
                  93 1 0:53 / /r/snap\\040shots/x rw - tmpfs t rw\n";
        assert_eq!(
            mounts_below_in(mi, Path::new("/r/snapshots/3")),
            vec![
                PathBuf::from("/r/snapshots/3/fs/deep"),
                PathBuf::from("/r/snapshots/3/fs")
            ]
        );
        assert_eq!(
            mounts_below_in(mi, Path::new("/r/snap shots")),
            vec![PathBuf::from("/r/snap shots/x")]
        );
        assert_eq!(
            fuse_connection_in(mi, Path::new("/r/snapshots/3/fs")),
            Some(50)
        );
        assert_eq!(
            fuse_connection_in(mi, Path::new("/r/snapshots/30/fs")),
            None,
            "not ours"
        );
        assert_eq!(fuse_connection_in(mi, Path::new("/r/snapshots/3")), None);
    }
}
