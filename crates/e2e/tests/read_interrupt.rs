//! Issue 12: a signal cancels a read that waits on the network. With the
//! registry hung (a misbehaving proxy) and `fetch_timeout_secs = 30`, a
//! Python process reads a never-fetched file of a lazily pulled layer
//! straight through its FUSE mountpoint; a timer signal whose handler
//! raises arrives after 1 s. The kernel sends FUSE_INTERRUPT for the read;
//! the daemon answers it EINTR at once (the fetch goes on), so the process
//! leaves read(2) within a couple of seconds instead of 30. The daemon
//! keeps serving, counts the interrupt, logs no error, and once the
//! registry answers again the file reads right.
//!
//! The read is `O_DIRECT`: a buffered read waits for the kernel's
//! readahead, a background request the kernel never interrupts (only a
//! fatal signal ends that wait). A synchronous FUSE read — direct I/O, the
//! kernel's single-page retries after a failed readahead — is
//! interruptible (a buffered read measured once: EINTR after 30 s, when the
//! readahead failed and the kernel's synchronous retry was interrupted).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use hologram_e2e::faulty::{Fault, FaultyProxy};
use hologram_e2e::lazy::{json_str, sha256_digest, LazyEnv, LazyOptions};
use hologram_e2e::process::run_with_timeout;
use hologram_e2e::util::wait_until;

const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

const CONFIG: &str = "[remote]\n\
plain_http = true\n\
fetch_timeout_secs = 30\n\
background_fetch = false\n\
prefetch = false\n\
readaround_kib = 0\n\
cache_size_mib = 1024\n";

/// Reads `argv[1]` (O_DIRECT when `argv[2]` is "direct") with a SIGALRM
/// after 1 s whose handler raises; prints what happened and when.
const READER: &str = r#"
import mmap, os, signal, sys, time
class Interrupted(Exception):
    pass
def handler(signum, frame):
    raise Interrupted()
signal.signal(signal.SIGALRM, handler)
flags = os.O_RDONLY | (os.O_DIRECT if sys.argv[2] == "direct" else 0)
fd = os.open(sys.argv[1], flags)
buf = mmap.mmap(-1, 64 * 1024)
start = time.monotonic()
signal.setitimer(signal.ITIMER_REAL, 1.0)
try:
    n = os.readv(fd, [buf])
    print("read", n, time.monotonic() - start)
except Interrupted:
    print("interrupted", 0, time.monotonic() - start)
except OSError as e:
    print("errno%d" % e.errno, 0, time.monotonic() - start)
"#;

/// Runs [`READER`] on `path`: (outcome, seconds in read).
fn read_with_alarm(path: &std::path::Path, mode: &str) -> Result<(String, f64)> {
    let out = run_with_timeout(
        Command::new("python3")
            .arg("-c")
            .arg(READER)
            .arg(path)
            .arg(mode),
        FETCH_TIMEOUT * 3,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = stdout.split_whitespace();
    let (Some(what), Some(_), Some(secs)) = (words.next(), words.next(), words.next()) else {
        anyhow::bail!(
            "reader said {stdout:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Ok((what.to_owned(), secs.parse().context("seconds")?))
}

fn interrupted_reads(metrics: &str) -> Result<f64> {
    let r = hologram_e2e::registry::http_get(metrics, "/metrics", &[])?;
    let body = String::from_utf8_lossy(&r.body).into_owned();
    Ok(body
        .lines()
        .filter(|l| {
            l.starts_with("hologram_fuse_operations_total{")
                && l.contains("op=\"read\"")
                && l.contains("result=\"interrupted\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[test]
fn a_signal_cancels_a_read_waiting_on_a_hung_registry() -> Result<()> {
    let metrics = format!("127.0.0.1:{}", hologram_e2e::util::free_port()?);
    let env = LazyEnv::start_with(LazyOptions {
        config: CONFIG.to_owned(),
        metrics_address: Some(metrics.clone()),
        ..LazyOptions::default()
    })?;
    let original = env.push_mkimage(true, "e2e/layers:interrupt-src")?;
    let proxy = FaultyProxy::start(env.registry.addr())?;
    let target = format!("{}/e2e/layers:interrupt-esgz", proxy.addr());
    env.convert(&original.reference, &target, &[])?;
    let sum = env.hologram_pull(&target)?;
    assert_eq!((sum.layers, sum.lazy), (4, 4), "{}", sum.text);
    // The layer with the random files, read on the host through its mount.
    let mount = env
        .fuse_mounts()?
        .into_iter()
        .map(|m| m.mountpoint)
        .find(|m| m.join("data/rand-1.bin").is_file())
        .context("no layer mount has data/rand-1.bin")?;
    let direct_file = mount.join("data/rand-1.bin");
    // A cached file, to show the mount keeps serving.
    let keep = mount.join("data/keep.txt");
    let keep_bytes = std::fs::read(&keep).ok();

    proxy.set(Fault::Hang);
    let (what, secs) = read_with_alarm(&direct_file, "direct")?;
    println!("O_DIRECT read of an unfetched file, registry hung: {what} after {secs:.2} s (fetch_timeout {FETCH_TIMEOUT:?})");
    assert_eq!(what, "interrupted", "{}", env.diagnostics());
    assert!(
        secs < 3.0,
        "EINTR after {secs:.2} s (the signal came after 1 s)\n{}",
        env.diagnostics()
    );
    assert_eq!(interrupted_reads(&metrics)?, 1.0);
    // The daemon keeps serving the mount meanwhile.
    if let Some(k) = &keep_bytes {
        assert_eq!(&std::fs::read(&keep)?, k);
    }
    assert!(mount.join("data").read_dir()?.count() > 0);

    // The registry answers again: the file reads right.
    proxy.set(Fault::Pass);
    let want = json_str(&original.summary["files"], "data/rand-1.bin")?.to_owned();
    wait_until(
        "rand-1.bin to read again",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            Ok(std::fs::read(&direct_file)
                .map(|b| sha256_digest(&b))
                .is_ok_and(|d| d == want || d.strip_prefix("sha256:") == Some(&want)))
        },
    )?;
    let errors = env.log_lines("ERROR");
    assert!(errors.is_empty(), "{errors:#?}");
    Ok(())
}
