//! Test 1: pull with the hologram snapshotter, then run containers and check
//! the merged root filesystem (whiteouts, opaque dirs, dir->file
//! replacement, modes/owners, symlink, hardlink) and the default command.

use anyhow::Result;
use hologram_e2e::image::content::DEFAULT_CMD_OUTPUT;
use hologram_e2e::{expected_rootfs_report, TestEnv, ROOTFS_CHECK_SCRIPT};

#[test]
fn pull_then_run_shows_correctly_merged_layers() -> Result<()> {
    let env = TestEnv::start()?;
    env.pull()?;

    // The layers were unpacked by hologram (not by a built-in snapshotter).
    let rows = env.snapshots()?;
    assert_eq!(rows.len(), 3, "{rows:?}\n{}", env.diagnostics());
    let overlay_dir = env
        .containerd
        .root()
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    let overlay_used = std::fs::read_dir(&overlay_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        overlay_used, 0,
        "containerd's overlayfs snapshotter was used"
    );
    let dirs = env.snapshotter.snapshot_dirs()?;
    assert!(
        dirs.len() >= 3,
        "expected >= 3 dirs in {}/snapshots, got {dirs:?}",
        env.snapshotter.root().display()
    );

    let report = env.run("check", &["/bin/sh", "-c", ROOTFS_CHECK_SCRIPT])?;
    assert_eq!(report, expected_rootfs_report(), "{}", env.diagnostics());

    let hello = env.run("default-cmd", &[])?;
    assert_eq!(hello, DEFAULT_CMD_OUTPUT, "{}", env.diagnostics());

    // `--rm` removed the containers' active snapshots again.
    let after = env.snapshots()?;
    assert_eq!(after, rows, "{}", env.diagnostics());
    Ok(())
}
