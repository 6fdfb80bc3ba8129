//! Finding and lazily unmounting mounts below a directory
//! (/proc/self/mountinfo).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::run_with_timeout;

/// Decodes the octal escapes (`\040` for space, ...) of a mountinfo field.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points listed in a mountinfo text, in file order.
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect()
}

/// Mount points strictly below or at `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = parse_mountinfo(&text)
        .into_iter()
        .filter(|mp| mp.starts_with(&dir))
        .collect();
    // Deepest first; for stacked mounts on one path the later (upper) one
    // is listed later in mountinfo, so keep reverse file order among equals.
    found.reverse();
    found.sort_by_key(|mp| std::cmp::Reverse(mp.components().count()));
    Ok(found)
}

/// `umount -l` every mount at or below `dir`, deepest first, repeating until
/// none is left (stacked mounts). Returns the paths that were unmounted.
pub fn unmount_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    for _round in 0..10 {
        let mounts = mounts_under(dir)?;
        if mounts.is_empty() {
            return Ok(done);
        }
        for mp in mounts {
            let out = run_with_timeout(
                Command::new("umount").arg("-l").arg(&mp),
                Duration::from_secs(30),
            )?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                // Already gone because its parent was detached: fine.
                if !err.contains("not mounted") && !err.contains("no mount point") {
                    bail!("umount -l {} failed: {err}", mp.display());
                }
            }
            done.push(mp);
        }
    }
    let left = mounts_under(dir)?;
    if left.is_empty() {
        Ok(done)
    } else {
        bail!("mounts still present below {}: {left:?}", dir.display())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parses_and_unescapes() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![PathBuf::from("/mnt/with space"), PathBuf::from("/proc")]
        );
        assert_eq!(unescape("a\\134b\\011c"), "a\\b\tc");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }
}
