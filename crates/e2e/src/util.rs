//! Small helpers shared by the harness.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The Cargo workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr().context("local_addr")?.port())
}

/// A fresh temp dir under /tmp (short path: unix socket paths must stay
/// below ~100 bytes). With `HOLOGRAM_E2E_KEEP=1` it is kept after the test
/// (processes are still stopped and mounts still unmounted) for debugging.
pub fn short_tempdir(prefix: &str) -> Result<tempfile::TempDir> {
    let keep = std::env::var_os("HOLOGRAM_E2E_KEEP").is_some_and(|v| v == "1");
    tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(keep)
        .tempdir_in("/tmp")
        .with_context(|| format!("creating temp dir {prefix}* in /tmp"))
}

/// A containerd namespace that is unique to this test process and call.
pub fn unique_namespace() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("hge2e-{}-{n}", std::process::id())
}

/// The last `lines` lines of a (log) file, or a note that it is unreadable.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Calls `check` every `interval` until it returns `Ok(true)` or `timeout`
/// passes. An `Err` from `check` is fatal and returned at once (map
/// retryable failures to `Ok(false)`).
pub fn wait_until<F>(what: &str, timeout: Duration, interval: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Result<bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().with_context(|| format!("while waiting for {what}"))? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(interval);
    }
}

/// Checks that the external programs the harness runs are installed.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing programs for the e2e tests: {} (Debian: apt-get install -y containerd runc \
             docker-registry skopeo busybox-static python3)",
            missing.join(", ")
        );
    }
    Ok(())
}
