//! The fd holder as the daemon uses it, with the real `hologram-fdstore`
//! process: fds survive the daemon side going away, the holder going away,
//! and a holder alone for its grace period exits and cleans up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hologram_oci::Digest;
use hologram_snapshotter::fdstore::client::{Handover, HandoverConfig};
use hologram_snapshotter::fdstore::{Key, Meta};

fn config(dir: &Path, grace: Duration) -> HandoverConfig {
    HandoverConfig::for_root(
        dir,
        PathBuf::from(env!("CARGO_BIN_EXE_hologram-fdstore")),
        grace,
    )
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn holder_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("fdstore.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped by its parent, this test) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Kills the holder this test started (by pid) when the test ends.
struct KillHolder(PathBuf);
impl Drop for KillHolder {
    fn drop(&mut self) {
        if let Some(pid) = holder_pid(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn file_with(text: &str) -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn contents(fd: std::os::fd::OwnedFd) -> String {
    let mut f = std::fs::File::from(fd);
    f.rewind().unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

fn fuse_meta(n: u32) -> Meta {
    Meta::Fuse {
        mountpoint: format!("/nonexistent/snapshots/{n}/fs").into(),
        layer: Digest::of(n.to_string().as_bytes()),
        conn: 100_000 + n,
        passthrough: false,
    }
}

#[test]
fn fds_outlive_the_daemon_and_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let _kill = KillHolder(dir.path().to_path_buf());
    let cfg = config(dir.path(), Duration::from_secs(30));

    // A "daemon" hands two fds over, then goes away.
    let first = Handover::start(cfg.clone()).unwrap();
    assert!(first.take().unwrap().is_empty());
    let (a, b) = (file_with("alpha"), file_with("beta"));
    first.put(Key::Fuse(1), fuse_meta(1), a.as_fd()).unwrap();
    first.put(Key::Fuse(2), fuse_meta(2), b.as_fd()).unwrap();
    first.remove(Key::Fuse(2));
    first.close();
    drop((first, a, b));
    let pid = holder_pid(dir.path()).expect("the holder wrote its pid");

    // The next one gets back what is left, with its description.
    let second = Handover::start(cfg.clone()).unwrap();
    let mut got = second.take().unwrap();
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![Key::Fuse(1)]);
    let one = got.remove(&Key::Fuse(1)).unwrap();
    assert_eq!(one.meta, fuse_meta(1));
    // As the daemon does with a connection it took over: hand it over again
    // (so a new holder gets it too).
    second
        .put(Key::Fuse(1), one.meta.clone(), one.fd.as_fd())
        .unwrap();
    assert_eq!(contents(one.fd), "alpha");
    assert_eq!(
        holder_pid(dir.path()),
        Some(pid),
        "the same holder served both"
    );

    // The holder dies: the daemon side starts another and hands over again.
    let c = file_with("gamma");
    second
        .put(
            Key::Grpc,
            Meta::Grpc {
                path: "/x.sock".into(),
            },
            c.as_fd(),
        )
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("a new holder", Duration::from_secs(20), || {
        holder_pid(dir.path()).is_some_and(|p| p != pid && alive(p))
    });
    wait_for("the fds handed over again", Duration::from_secs(20), || {
        second.take().map(|m| m.len() == 2).unwrap_or(false)
    });
    second.close();
    drop(second);

    let third = Handover::start(cfg).unwrap();
    let mut got = third.take().unwrap();
    assert_eq!(contents(got.remove(&Key::Grpc).unwrap().fd), "gamma");
    assert_eq!(contents(got.remove(&Key::Fuse(1)).unwrap().fd), "alpha");
    third.close();
}

#[test]
fn a_holder_alone_for_its_grace_period_exits() {
    let dir = tempfile::tempdir().unwrap();
    let _kill = KillHolder(dir.path().to_path_buf());
    let cfg = config(dir.path(), Duration::from_secs(1));
    let h = Handover::start(cfg.clone()).unwrap();
    let f = file_with("x");
    h.put(Key::Fuse(9), fuse_meta(9), f.as_fd()).unwrap();
    let pid = holder_pid(dir.path()).unwrap();
    h.close();
    drop(h);
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the holder did not exit\n{}",
            std::fs::read_to_string(&cfg.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!cfg.socket.exists(), "socket removed");
    assert!(!cfg.pid_file.exists(), "pid file removed");
    let log = std::fs::read_to_string(&cfg.log).unwrap();
    assert!(
        log.contains("no daemon came back within the grace period"),
        "{log}"
    );
}

#[test]
fn only_one_holder_serves_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let _kill = KillHolder(dir.path().to_path_buf());
    let cfg = config(dir.path(), Duration::from_secs(30));
    let h = Handover::start(cfg.clone()).unwrap();
    let out = std::process::Command::new(&cfg.binary)
        .arg("--socket")
        .arg(&cfg.socket)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another holder serves this socket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(h.holder_alive());
    h.close();
}
