//! Whole-tree comparison of two root filesystems (`scripts/treedump.py`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::lazy::run_script;

/// `scripts/treedump.py` output: path -> entry (type, mode, uid, gid,
/// xattrs, and per type size/nlink/mtime/sha256/links, target, rdev).
#[derive(Debug, Clone)]
pub struct TreeDump {
    pub paths: BTreeMap<String, Value>,
    /// Paths whose lstat/read/xattr calls failed.
    pub errors: Vec<String>,
}

impl TreeDump {
    /// Dumps the tree at `root` (reads every regular file).
    pub fn of(root: &Path) -> Result<Self> {
        let root_s = root.display().to_string();
        let out = run_script("treedump.py", &[&root_s], Duration::from_secs(600))?;
        let v: Value = serde_json::from_str(&out).context("treedump.py output")?;
        let paths = v["paths"]
            .as_object()
            .context("treedump without paths")?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let errors = v["errors"]
            .as_array()
            .context("treedump without errors")?
            .iter()
            .map(|e| e.as_str().unwrap_or_default().to_owned())
            .collect();
        Ok(Self { paths, errors })
    }

    pub fn get(&self, path: &str) -> Option<&Value> {
        self.paths.get(path)
    }

    /// Value of xattr `name` of `path`, decoded.
    pub fn xattr(&self, path: &str, name: &str) -> Option<Vec<u8>> {
        let b64 = self.paths.get(path)?["xattrs"][name].as_str()?;
        base64_decode(b64)
    }

    /// Things an overlay root filesystem must never show: whiteout files
    /// (`.wh.*` names, 0/0 character devices), overlayfs' private xattrs.
    pub fn leaks(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (p, e) in &self.paths {
            let base = p.rsplit('/').next().unwrap_or(p);
            if base.starts_with(".wh.") {
                out.push(format!("{p}: whiteout name is visible"));
            }
            if e["type"] == "char" && e["rdev"] == serde_json::json!([0, 0]) {
                out.push(format!("{p}: 0/0 character device (whiteout) is visible"));
            }
            if let Some(x) = e["xattrs"].as_object() {
                for k in x.keys() {
                    if k.starts_with("trusted.overlay.") || k.starts_with("user.overlay.") {
                        out.push(format!("{p}: overlay xattr {k} is visible"));
                    }
                }
            }
        }
        out
    }
}

/// Differences between `a` (named `a_name`) and `b`: paths only in one of
/// them and, per common path, every differing field.
pub fn compare(a: &TreeDump, a_name: &str, b: &TreeDump, b_name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in a.paths.keys() {
        if !b.paths.contains_key(p) {
            out.push(format!("{p}: only in {a_name}"));
        }
    }
    for (p, eb) in &b.paths {
        let Some(ea) = a.paths.get(p) else {
            out.push(format!("{p}: only in {b_name}"));
            continue;
        };
        let (Some(ma), Some(mb)) = (ea.as_object(), eb.as_object()) else {
            continue;
        };
        let mut keys: Vec<&String> = ma.keys().chain(mb.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let (va, vb) = (ma.get(k), mb.get(k));
            if va != vb {
                out.push(format!(
                    "{p}: {k} differs: {a_name}={} {b_name}={}",
                    va.map_or("<none>".into(), Value::to_string),
                    vb.map_or("<none>".into(), Value::to_string)
                ));
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    }
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let n = chunk.len().saturating_sub(1);
        for i in 0..n {
            out.push(((acc >> (16 - 8 * i)) & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn decodes_base64() {
        assert_eq!(base64_decode("dGVzdA==").unwrap(), b"test");
        assert_eq!(
            base64_decode("AQAAAgAEAAA=").unwrap(),
            [1, 0, 0, 2, 0, 4, 0, 0]
        );
        assert_eq!(base64_decode("").unwrap(), b"");
    }

    #[test]
    fn compares_and_finds_leaks() {
        let mk = |v: Value| TreeDump {
            paths: v
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            errors: vec![],
        };
        let a = mk(serde_json::json!({
            ".": {"type": "dir", "mode": 493, "xattrs": {}},
            "x": {"type": "reg", "mode": 420, "sha256": "sha256:1", "xattrs": {}},
            "a/.wh.b": {"type": "reg", "mode": 0, "xattrs": {}},
        }));
        let b = mk(serde_json::json!({
            ".": {"type": "dir", "mode": 493, "xattrs": {"trusted.overlay.opaque": "eQ=="}},
            "x": {"type": "reg", "mode": 420, "sha256": "sha256:2", "xattrs": {}},
            "c": {"type": "char", "mode": 0, "rdev": [0, 0], "xattrs": {}},
        }));
        let d = compare(&a, "A", &b, "B");
        assert!(
            d.iter().any(|l| l.starts_with("a/.wh.b: only in A")),
            "{d:?}"
        );
        assert!(d.iter().any(|l| l.starts_with("c: only in B")), "{d:?}");
        assert!(
            d.iter().any(|l| l.starts_with("x: sha256 differs")),
            "{d:?}"
        );
        assert!(
            d.iter().any(|l| l.starts_with(".: xattrs differs")),
            "{d:?}"
        );
        assert_eq!(a.leaks().len(), 1);
        assert_eq!(b.leaks().len(), 2);
    }
}
