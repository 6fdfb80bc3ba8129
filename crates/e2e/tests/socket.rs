//! Test 7: socket ownership. A second daemon must not steal the socket of a
//! live one; a stale (dead) socket is replaced; a regular file at the
//! socket path is not deleted.

use std::os::unix::net::UnixListener;
use std::time::Duration;

use anyhow::Result;
use hologram_e2e::snapshotter::socket_accepts;
use hologram_e2e::util::short_tempdir;
use hologram_e2e::{Containerd, Snapshotter, SNAPSHOTTER};

/// The daemon serves snapshots through containerd: prepare, info, rm.
fn assert_serves(containerd: &Containerd, key: &str) -> Result<()> {
    containerd.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "prepare", key])?;
    let info = containerd.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "info", key])?;
    let info: serde_json::Value = serde_json::from_str(&info)?;
    assert_eq!(info["Kind"], "Active", "{info}");
    assert_eq!(info["Name"], key, "{info}");
    containerd.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "rm", key])?;
    Ok(())
}

#[test]
fn second_daemon_on_live_socket_refuses() -> Result<()> {
    let dir = short_tempdir("hg-e2e-")?;
    let socket = dir.path().join("sn.sock");
    let mut first = Snapshotter::start(&dir.path().join("sn"), &socket)?;
    let mut containerd = Containerd::start(&socket)?;
    containerd.attach_log("hologram-snapshotter", first.log());
    assert_serves(&containerd, "before")?;

    let out = first.run_competitor(&dir.path().join("sn2"), Duration::from_secs(20))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "second daemon started on a live socket: {text}"
    );
    let lower = text.to_lowercase();
    assert!(
        ["in use", "already", "another", "live", "running", "serv"]
            .iter()
            .any(|w| lower.contains(w))
            || text.contains(&socket.display().to_string()),
        "refusal does not explain itself: {text:?}"
    );

    assert!(
        first.is_running()?,
        "first daemon died\n{}",
        first.log_tail(30)
    );
    assert!(
        socket_accepts(&socket),
        "the live daemon's socket was removed"
    );
    assert_serves(&containerd, "after")?;
    drop(containerd);
    first.stop()?;
    Ok(())
}

fn starts_over_stale_path(make_stale: impl FnOnce(&std::path::Path) -> Result<()>) -> Result<()> {
    let dir = short_tempdir("hg-e2e-")?;
    let socket = dir.path().join("sn.sock");
    make_stale(&socket)?;
    assert!(socket.exists());
    assert!(!socket_accepts(&socket));
    let mut sn = Snapshotter::start(&dir.path().join("sn"), &socket)?;
    let mut containerd = Containerd::start(&socket)?;
    containerd.attach_log("hologram-snapshotter", sn.log());
    assert_serves(&containerd, "p1")?;
    drop(containerd);
    sn.stop()?;
    Ok(())
}

/// A path that is not a socket at all is not "stale": the daemon must not
/// delete someone else's file, so it refuses to start and leaves it alone.
#[test]
fn plain_file_at_socket_path_is_left_alone() -> Result<()> {
    let dir = short_tempdir("hg-e2e-")?;
    let socket = dir.path().join("sn.sock");
    std::fs::write(&socket, "not a socket")?;
    let sn = Snapshotter::new(&dir.path().join("sn"), &socket)?;
    let out = sn.run_competitor(&dir.path().join("sn"), Duration::from_secs(20))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "daemon started over a regular file: {text}"
    );
    assert!(
        text.contains(&socket.display().to_string()),
        "refusal does not name the path: {text:?}"
    );
    assert_eq!(std::fs::read_to_string(&socket)?, "not a socket");
    Ok(())
}

#[test]
fn dead_socket_at_socket_path_is_replaced() -> Result<()> {
    starts_over_stale_path(|p| {
        // Bound then closed: the socket file stays, nobody listens.
        let listener = UnixListener::bind(p)?;
        drop(listener);
        Ok(())
    })
}
