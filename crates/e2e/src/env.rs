//! `TestEnv`: registry + test image + hologram-snapshotter + containerd, and
//! parsers for `ctr snapshots` output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::containerd::{Containerd, SNAPSHOTTER};
use crate::image::{build_and_push, TestImage};
use crate::mounts::unmount_under;
use crate::process::run_with_timeout;
use crate::registry::Registry;
use crate::snapshotter::Snapshotter;
use crate::util::{require_tools, short_tempdir, wait_until};

/// Programs the e2e tests run.
pub const REQUIRED_TOOLS: &[&str] = &[
    "containerd",
    "ctr",
    "runc",
    "containerd-shim-runc-v2",
    "docker-registry",
    "skopeo",
    "python3",
    "mount",
    "umount",
];

/// One row of `ctr snapshots ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub key: String,
    pub parent: Option<String>,
    pub kind: String,
}

/// Parses `ctr snapshots ls` (header `KEY PARENT KIND`; the parent column
/// is blank for snapshots without a parent).
pub fn parse_snapshot_ls(out: &str) -> Result<Vec<SnapshotRow>> {
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    if !header.starts_with("KEY") {
        bail!("unexpected `ctr snapshots ls` header: {header:?}");
    }
    let mut rows = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let row = match f.as_slice() {
            [key, kind] => SnapshotRow {
                key: (*key).to_string(),
                parent: None,
                kind: (*kind).to_string(),
            },
            [key, parent, kind] => SnapshotRow {
                key: (*key).to_string(),
                parent: Some((*parent).to_string()),
                kind: (*kind).to_string(),
            },
            _ => bail!("unexpected `ctr snapshots ls` line: {line:?}"),
        };
        rows.push(row);
    }
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(rows)
}

/// One row of `ctr snapshots usage`.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub key: String,
    pub bytes: f64,
    pub inodes: u64,
}

fn unit_factor(unit: &str) -> Result<f64> {
    Ok(match unit {
        "B" => 1.0,
        "KiB" | "kB" | "KB" => 1024.0,
        "MiB" | "MB" => 1024.0 * 1024.0,
        "GiB" | "GB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" | "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => bail!("unknown size unit {unit:?}"),
    })
}

/// Parses `ctr snapshots usage` (`KEY SIZE INODES`, size like "2.0 MiB").
pub fn parse_usage(out: &str) -> Result<Vec<UsageRow>> {
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    if !header.starts_with("KEY") {
        bail!("unexpected `ctr snapshots usage` header: {header:?}");
    }
    let mut rows = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [key, number, unit, inodes] = f.as_slice() else {
            bail!("unexpected `ctr snapshots usage` line: {line:?}");
        };
        let number: f64 = number
            .parse()
            .with_context(|| format!("size in {line:?}"))?;
        rows.push(UsageRow {
            key: (*key).to_string(),
            bytes: number * unit_factor(unit)?,
            inodes: inodes
                .parse()
                .with_context(|| format!("inodes in {line:?}"))?,
        });
    }
    Ok(rows)
}

/// A mount made by the test (from `ctr snapshots mounts`); unmounted on drop.
pub struct MountGuard {
    target: PathBuf,
}

impl MountGuard {
    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = unmount_under(&self.target) {
            eprintln!("e2e cleanup: {e:#}");
        }
    }
}

/// Executes the `mount -t TYPE SOURCE TARGET -o OPTIONS` lines printed by
/// `ctr snapshots mounts TARGET KEY`.
pub fn mount_printed(mount_lines: &str, target: &Path) -> Result<MountGuard> {
    std::fs::create_dir_all(target).with_context(|| format!("mkdir {}", target.display()))?;
    let guard = MountGuard {
        target: target.to_path_buf(),
    };
    let mut count = 0;
    for line in mount_lines.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (fstype, source, options) = match f.as_slice() {
            ["mount", "-t", t, src, _target, "-o", opts] => (*t, *src, *opts),
            ["mount", "-t", t, src, _target] => (*t, *src, ""),
            _ => bail!("unexpected mount line {line:?}"),
        };
        let mut cmd = Command::new("mount");
        let is_bind = options.split(',').any(|o| o == "bind" || o == "rbind");
        if !is_bind {
            cmd.arg("-t").arg(fstype);
        }
        if !options.is_empty() {
            cmd.arg("-o").arg(options);
        }
        cmd.arg(source).arg(target);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(30))?;
        if !out.status.success() {
            bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        count += 1;
    }
    if count == 0 {
        bail!("no mounts in {mount_lines:?}");
    }
    Ok(guard)
}

/// Everything one test needs. Field order is drop order: containerd first,
/// then the snapshotter (which also unmounts below its root), then the
/// registry, then the temp dir with the snapshotter root and the image.
pub struct TestEnv {
    pub containerd: Containerd,
    pub snapshotter: Snapshotter,
    pub registry: Registry,
    pub image: TestImage,
    dir: TempDir,
}

impl TestEnv {
    /// Starts registry, pushes the test image, starts the snapshotter on
    /// `<tmp>/sn` with socket `<tmp>/sn.sock` and a containerd using it.
    pub fn start() -> Result<Self> {
        require_tools(REQUIRED_TOOLS)?;
        let dir = short_tempdir("hg-e2e-")?;
        let registry = Registry::start()?;
        let image = build_and_push(&registry, dir.path())?;
        let root = dir.path().join("sn");
        let socket = dir.path().join("sn.sock");
        let snapshotter = Snapshotter::start(&root, &socket)?;
        let mut containerd = Containerd::start(&socket)?;
        containerd.attach_log("hologram-snapshotter", snapshotter.log());
        Ok(Self {
            containerd,
            snapshotter,
            registry,
            image,
            dir,
        })
    }

    /// The test's temp dir (snapshotter root, socket, log, image layout).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ctr <args>` in the test namespace; stdout or a detailed error.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        self.containerd.ctr(args)
    }

    /// `ctr snapshots --snapshotter hologram <args>`.
    pub fn snapshots_cmd(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["snapshots", "--snapshotter", SNAPSHOTTER];
        full.extend_from_slice(args);
        self.ctr(&full)
    }

    /// Like `snapshots_cmd` but expects failure and returns stderr.
    pub fn snapshots_cmd_fails(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["snapshots", "--snapshotter", SNAPSHOTTER];
        full.extend_from_slice(args);
        self.containerd.ctr_fails(&full)
    }

    /// `ctr images pull --plain-http --snapshotter hologram REF` (unpacks).
    pub fn pull(&self) -> Result<String> {
        self.ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            SNAPSHOTTER,
            &self.image.reference,
        ])
    }

    /// `ctr run --rm --snapshotter hologram REF ID [CMD...]`; returns the
    /// container's output (see [`Containerd::run_logged`]).
    pub fn run(&self, id: &str, command: &[&str]) -> Result<String> {
        let mut args = vec![
            "--rm",
            "--snapshotter",
            SNAPSHOTTER,
            &self.image.reference,
            id,
        ];
        args.extend_from_slice(command);
        self.containerd.run_logged(None, &args)
    }

    /// Parsed `ctr snapshots --snapshotter hologram ls`.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRow>> {
        parse_snapshot_ls(&self.snapshots_cmd(&["ls"])?)
    }

    /// Parsed JSON of `ctr snapshots --snapshotter hologram info KEY`.
    pub fn info(&self, key: &str) -> Result<serde_json::Value> {
        let out = self.snapshots_cmd(&["info", key])?;
        serde_json::from_str(&out).with_context(|| format!("parsing info JSON: {out}"))
    }

    /// Mounts snapshot `key` (via `ctr snapshots mounts`) at a fresh dir.
    pub fn mount_snapshot(&self, key: &str) -> Result<MountGuard> {
        static N: AtomicU32 = AtomicU32::new(0);
        let target = self
            .dir()
            .join(format!("mnt{}", N.fetch_add(1, Ordering::Relaxed)));
        let target_s = target.display().to_string();
        let lines = self.snapshots_cmd(&["mounts", &target_s, key])?;
        mount_printed(&lines, &target).with_context(|| format!("mounting snapshot {key}"))
    }

    /// After a snapshotter restart, waits (up to 20 s) until containerd's
    /// proxy reaches the daemon again: `probe_key` is Stat-ed via `info`, or
    /// without one a throw-away snapshot is prepared and removed.
    pub fn wait_snapshotter_reachable(&self, probe_key: Option<&str>) -> Result<()> {
        static N: AtomicU32 = AtomicU32::new(0);
        let mut last_err = None;
        let res = wait_until(
            "containerd to reach the restarted snapshotter",
            Duration::from_secs(20),
            Duration::from_millis(250),
            || {
                let probe = match probe_key {
                    Some(key) => self.snapshots_cmd(&["info", key]).map(drop),
                    None => {
                        let key = format!("reconnect-probe-{}", N.fetch_add(1, Ordering::Relaxed));
                        self.snapshots_cmd(&["prepare", &key])
                            .and_then(|_| self.snapshots_cmd(&["rm", &key]))
                            .map(drop)
                    }
                };
                match probe {
                    Ok(()) => Ok(true),
                    Err(e) => {
                        last_err = Some(e);
                        Ok(false)
                    }
                }
            },
        );
        match (res, last_err) {
            (Ok(()), _) => Ok(()),
            (Err(e), Some(last)) => Err(last.context(format!("{e:#}"))),
            (Err(e), None) => Err(e.context(self.diagnostics())),
        }
    }

    /// Tails of the containerd and snapshotter logs.
    pub fn diagnostics(&self) -> String {
        self.containerd.diagnostics()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parses_ls() {
        let out = "KEY   PARENT KIND\n\
                   sha256:b sha256:a Committed \n\
                   sha256:a          Committed \n\
                   t1 sha256:b Active\n";
        let rows = parse_snapshot_ls(out).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].key, "sha256:a");
        assert_eq!(rows[0].parent, None);
        assert_eq!(rows[1].parent.as_deref(), Some("sha256:a"));
        assert_eq!(rows[2].kind, "Active");
        assert!(parse_snapshot_ls("KEY PARENT KIND\n").unwrap().is_empty());
    }

    #[test]
    fn parses_usage() {
        let out = "KEY SIZE INODES\nsha256:a 2.0 MiB 45\nsha256:b 16.0 KiB 4\n";
        let rows = parse_usage(out).unwrap();
        assert_eq!(rows[0].bytes, 2.0 * 1024.0 * 1024.0);
        assert_eq!(rows[0].inodes, 45);
        assert_eq!(rows[1].bytes, 16.0 * 1024.0);
    }
}
