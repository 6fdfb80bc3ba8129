//! Issue 12: restarts running containers never notice. A container keeps
//! looking names up in its lazily mounted layers (each lookup of a new name
//! is a FUSE request to the daemon: nothing caches it) while the daemon is
//! (a) stopped with SIGTERM and started again, (b) killed with -9 and
//! started again, (c) replaced by another binary, and (d) killed with -9
//! after its fd holder was killed and replaced. Throughout:
//!
//! * no lookup fails (a dead FUSE connection would say "Transport endpoint
//!   is not connected"); lookups issued while no daemon runs wait and then
//!   succeed (the kernel queues them; FUSE_NOTIFY_RESEND brings back those
//!   the killed daemon had read);
//! * a `ctr` call made while no daemon runs is queued on the kept socket and
//!   succeeds (containerd never sees a refused connection);
//! * after each restart, with the page cache dropped, the whole root
//!   filesystem reads back correctly through the new daemon.
//!
//! The longest pause the container saw around each restart is printed
//! (`--nocapture`); it is not asserted beyond a generous bound.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hologram_e2e::lazy::LazyEnv;
use hologram_e2e::util::wait_until;
use hologram_e2e::{expected_rootfs_report, ROOTFS_CHECK_SCRIPT, SNAPSHOTTER};

/// Looks up a new name in a loop; prints `ok N UPTIME` or `FAIL N why`.
const READER: &str = r#"
i=0
while :; do
  i=$((i+1))
  if stat /probe-$i >/dev/null 2>/tmp/err; then
    echo "FAIL $i exists"
  elif grep -q "No such file" /tmp/err; then
    echo "ok $i $(cut -d' ' -f1 /proc/uptime)"
  else
    echo "FAIL $i $(cat /tmp/err)"
  fi
  cat /data/keep.txt >/dev/null || echo "FAIL $i keep.txt"
  busybox usleep 20000
done
"#;

/// Generous bound on the pause a reader sees (start-up under CPU load).
const MAX_PAUSE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
enum Restart {
    Term,
    Kill9,
    NewBinary,
    HolderThenKill9,
}

/// (iteration, uptime seconds) of the reader's `ok` lines; any FAIL line
/// is an error.
fn reader_log(path: &Path) -> Result<Vec<(u64, f64)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("FAIL") {
            bail!(
                "the container saw a failure: {line}\n--- reader log tail ---\n{}",
                tail_of(&text)
            );
        }
        let mut w = line.split_whitespace();
        if let (Some("ok"), Some(i), Some(t)) = (w.next(), w.next(), w.next()) {
            out.push((i.parse()?, t.parse()?));
        }
    }
    Ok(out)
}

fn tail_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The longest gap between consecutive lookups after index `from`.
fn longest_pause(log: &[(u64, f64)], from: usize) -> Duration {
    log.get(from.saturating_sub(1)..)
        .unwrap_or_default()
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .fold(0.0, f64::max)
        .max(0.0)
        .pipe(Duration::from_secs_f64)
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl Pipe for f64 {}

fn drop_caches() -> Result<()> {
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache")
}

/// Connections waiting in the listening socket's backlog (`ss`'s Recv-Q
/// for a listening unix socket).
fn pending_connections(socket: &Path) -> Result<u64> {
    let out = std::process::Command::new("ss")
        .args(["-xlnH"])
        .output()
        .context("ss")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let want = socket.display().to_string();
    Ok(text
        .lines()
        .filter(|l| l.split_whitespace().any(|f| f == want))
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum())
}

fn ok_lines(log: &Path) -> usize {
    reader_log(log).map(|l| l.len()).unwrap_or(0)
}

#[test]
fn containers_keep_reading_across_restarts() -> Result<()> {
    let mut env = LazyEnv::start()?;
    let original = env.push_mkimage(false, "e2e/layers:handover")?;
    let target = format!("{}/e2e/layers:handover-esgz", env.registry.addr());
    env.convert(&original.reference, &target, &[])?;
    let sum = env.hologram_pull(&target)?;
    assert_eq!(sum.lazy, 3, "{}", sum.text);

    let log = env.dir().join("reader.log");
    let uri = format!("file://{}", log.display());
    env.ctr(&[
        "run",
        "-d",
        "--log-uri",
        &uri,
        "--snapshotter",
        SNAPSHOTTER,
        &target,
        "reader",
        "/bin/sh",
        "-c",
        READER,
    ])?;
    wait_until(
        "the reader to start",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || Ok(ok_lines(&log) >= 5),
    )?;

    // The upgrade: the same build at another path.
    let v2 = env.dir().join("v2");
    std::fs::create_dir_all(&v2)?;
    let bin_dir: PathBuf = env
        .snapshotter
        .binary()
        .parent()
        .context("binary dir")?
        .to_path_buf();
    for b in ["hologram-snapshotter", "hologram-fdstore"] {
        std::fs::copy(bin_dir.join(b), v2.join(b)).with_context(|| format!("copying {b}"))?;
    }

    let mut report = Vec::new();
    for kind in [
        Restart::Term,
        Restart::Kill9,
        Restart::NewBinary,
        Restart::HolderThenKill9,
    ] {
        let seen_before = ok_lines(&log);
        let holder = env.snapshotter.holder_pid().context("no fd holder runs")?;
        match kind {
            Restart::Term => {
                env.snapshotter.stop()?;
            }
            Restart::Kill9 => {
                env.snapshotter.kill9()?;
            }
            Restart::NewBinary => {
                env.snapshotter.stop()?;
                env.snapshotter.set_binary(v2.join("hologram-snapshotter"));
            }
            Restart::HolderThenKill9 => {
                let holder_log = env.snapshotter.root().join("fdstore.log");
                let kept = |p: &Path| {
                    std::fs::read_to_string(p)
                        .map(|t| t.matches(" kept").count())
                        .unwrap_or(0)
                };
                let before = kept(&holder_log);
                env.snapshotter.kill_holder()?;
                // The daemon starts a new holder and hands it everything
                // again: 3 FUSE connections and the socket.
                wait_until(
                    "a new holder with everything handed over",
                    Duration::from_secs(30),
                    Duration::from_millis(50),
                    || {
                        Ok(env.snapshotter.holder_pid().is_some_and(|p| p != holder)
                            && kept(&holder_log) >= before + 4)
                    },
                )?;
                env.snapshotter.kill9()?;
            }
        }
        if !matches!(kind, Restart::HolderThenKill9) {
            assert_eq!(
                env.snapshotter.holder_pid(),
                Some(holder),
                "the holder outlives the daemon"
            );
        }
        // No daemon runs now. A ctr call that needs the snapshotter waits
        // in the kept socket's backlog.
        let containerd =
            env.containerd
                .ctr_command(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]);
        let call = std::thread::spawn(move || {
            let mut cmd = containerd;
            hologram_e2e::process::run_with_timeout(&mut cmd, Duration::from_secs(120))
        });
        let socket = env.snapshotter.socket().to_path_buf();
        let queued = wait_until(
            "containerd's connection queued on the kept socket",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || Ok(pending_connections(&socket)? >= 1),
        );
        let down_at = Instant::now();
        env.snapshotter.start_again()?;
        let down_for = down_at.elapsed();
        let out = call
            .join()
            .map_err(|_| anyhow::anyhow!("ctr thread panicked"))??;
        assert!(
            out.status.success(),
            "{kind:?}: ctr during the restart failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            env.diagnostics()
        );
        // The reader keeps going.
        wait_until(
            "the reader to keep going",
            MAX_PAUSE,
            Duration::from_millis(50),
            || Ok(ok_lines(&log) >= seen_before + 20),
        )
        .with_context(|| {
            format!(
                "{kind:?}\n--- reader log tail ---\n{}\n{}",
                tail_of(&std::fs::read_to_string(&log).unwrap_or_default()),
                env.diagnostics()
            )
        })?;
        let entries = reader_log(&log).with_context(|| format!("{kind:?}"))?;
        let pause = longest_pause(&entries, seen_before);
        assert!(pause < MAX_PAUSE, "{kind:?}: paused {pause:?}");
        // Everything reads back through the new daemon, nothing from cache.
        drop_caches()?;
        let (out, _) = env.exec(
            "reader",
            &["/bin/sh", "-c", ROOTFS_CHECK_SCRIPT],
            Duration::from_secs(60),
        )?;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected_rootfs_report(),
            "{kind:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            env.diagnostics()
        );
        let taken = env.log_lines("took over the FUSE connection left by the previous daemon");
        report.push(format!(
            "{kind:?}: longest pause seen by the container {:.2} s (daemon down for {:.2} s of it; ctr queued on the kept socket: {}); connections taken over so far: {}",
            pause.as_secs_f64(),
            down_for.as_secs_f64(),
            queued.is_ok(),
            taken.len()
        ));
    }
    // Every restart took the three layers' connections over (none was
    // mounted again: that would have broken the container).
    assert_eq!(
        env.log_lines("took over the FUSE connection left by the previous daemon")
            .len(),
        12,
        "{}",
        env.diagnostics()
    );
    assert_eq!(env.fuse_mounts()?.len(), 3, "no mount stacked or lost");
    eprintln!("{}", report.join("\n"));
    env.ctr(&["tasks", "kill", "-s", "KILL", "reader"])?;
    wait_until(
        "the reader to stop",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            Ok(env
                .ctr(&["tasks", "ls"])
                .map(|t| {
                    !t.lines()
                        .any(|l| l.starts_with("reader ") && l.contains("RUNNING"))
                })
                .unwrap_or(false))
        },
    )?;
    env.ctr(&["tasks", "rm", "reader"])?;
    env.ctr(&["containers", "rm", "reader"])?;
    Ok(())
}
