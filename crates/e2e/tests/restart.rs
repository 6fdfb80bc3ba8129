//! Test 5: the daemon is stopped with SIGTERM between pull and run and
//! started again on the same root and socket; containerd keeps running,
//! reconnects, and everything the daemon had is still there. The fd holder
//! keeps the socket meanwhile: connections wait instead of being refused.

use anyhow::Result;
use hologram_e2e::image::content::DEFAULT_CMD_OUTPUT;
use hologram_e2e::snapshotter::socket_accepts;
use hologram_e2e::{expected_rootfs_report, TestEnv, ROOTFS_CHECK_SCRIPT, SNAPSHOTTER};

#[test]
fn restart_between_pull_and_run() -> Result<()> {
    let mut env = TestEnv::start()?;
    env.pull()?;
    let top = env.image.chain_ids[2].clone();
    // A stopped container with a write in its active snapshot.
    env.ctr(&[
        "run",
        "--snapshotter",
        SNAPSHOTTER,
        &env.image.reference,
        "keeper",
        "/bin/sh",
        "-c",
        "echo persisted > /data/p.txt",
    ])?;
    let before = env.snapshots()?;
    let top_info = env.info(&top)?;

    let status = env.snapshotter.stop()?;
    assert_eq!(status.code(), Some(0));
    assert!(
        socket_accepts(env.snapshotter.socket()),
        "the fd holder should keep the socket while no daemon runs"
    );
    assert!(
        env.snapshotter.holder_pid().is_some(),
        "the fd holder outlives the daemon"
    );
    assert!(
        env.containerd.is_running()?,
        "containerd died with the snapshotter"
    );

    env.snapshotter.start_again()?;
    env.wait_snapshotter_reachable(Some(&top))?;

    assert_eq!(env.snapshots()?, before, "{}", env.diagnostics());
    let after = env.info(&top)?;
    assert_eq!(after["Name"], top_info["Name"]);
    assert_eq!(after["Parent"], top_info["Parent"]);
    assert_eq!(after["Kind"], "Committed");
    {
        let m = env.mount_snapshot("keeper")?;
        let p = std::fs::read_to_string(m.path().join("data/p.txt"))?;
        assert_eq!(p, "persisted\n");
    }

    let report = env.run("check", &["/bin/sh", "-c", ROOTFS_CHECK_SCRIPT])?;
    assert_eq!(report, expected_rootfs_report(), "{}", env.diagnostics());
    let hello = env.run("default-cmd", &[])?;
    assert_eq!(hello, DEFAULT_CMD_OUTPUT);
    env.ctr(&["containers", "rm", "keeper"])?;

    // A second restart via the helper (SIGTERM + start).
    env.snapshotter.restart()?;
    env.wait_snapshotter_reachable(Some(&top))?;
    let hello = env.run("default-cmd2", &[])?;
    assert_eq!(hello, DEFAULT_CMD_OUTPUT, "{}", env.diagnostics());
    Ok(())
}
