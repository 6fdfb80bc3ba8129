//! Test 4: removing the image lets containerd's garbage collector remove the
//! snapshots from the daemon, and the daemon frees their directories.

use std::time::Duration;

use anyhow::Result;
use hologram_e2e::util::wait_until;
use hologram_e2e::{expected_rootfs_report, TestEnv, ROOTFS_CHECK_SCRIPT};

#[test]
fn image_removal_garbage_collects_snapshots() -> Result<()> {
    let env = TestEnv::start()?;
    env.pull()?;
    env.run("check", &["/bin/sh", "-c", ROOTFS_CHECK_SCRIPT])?;
    let before = env.snapshotter.snapshot_dirs()?;
    assert!(before.len() >= 3, "snapshot dirs after pull: {before:?}");

    env.ctr(&["images", "rm", "--sync", &env.image.reference])?;
    let rows = env.snapshots()?;
    assert!(
        rows.is_empty(),
        "snapshots left after images rm --sync: {rows:?}"
    );

    // `--sync` runs containerd's GC before returning. The GC removes from
    // the backend every snapshot its metadata no longer knows (Remove for
    // each) and then calls the snapshotter's Cleanup, which the proxy
    // forwards; GC waits for both. So when the daemon's Remove/Cleanup
    // have returned, its directories must be gone. A short grace period
    // only tolerates slow file deletion, not a missing Cleanup.
    let snapshotter = &env.snapshotter;
    let res = wait_until(
        "snapshot directories to be removed",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || Ok(snapshotter.snapshot_dirs()?.is_empty()),
    );
    if let Err(e) = res {
        panic!(
            "{e:#}\nleft in {}/snapshots: {:?}\n{}",
            snapshotter.root().display(),
            snapshotter.snapshot_dirs()?,
            env.diagnostics()
        );
    }

    // The daemon still works after GC: pull and run again.
    env.pull()?;
    let report = env.run("check2", &["/bin/sh", "-c", ROOTFS_CHECK_SCRIPT])?;
    assert_eq!(report, expected_rootfs_report(), "{}", env.diagnostics());
    Ok(())
}
