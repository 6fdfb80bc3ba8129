//! Test 6: kill -9 of the daemon in the middle of a pull. After a restart
//! the pull succeeds, containers run, and every snapshot containerd lists
//! exists in the daemon with an existing parent.

use std::collections::BTreeSet;
use std::fs::File;
use std::process::Stdio;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hologram_e2e::process::wait_timeout;
use hologram_e2e::{
    expected_rootfs_report, parse_usage, TestEnv, ROOTFS_CHECK_SCRIPT, SNAPSHOTTER,
};

#[test]
fn kill9_during_pull_then_recover() -> Result<()> {
    let mut env = TestEnv::start()?;
    let out_path = env.dir().join("pull1.out");
    let mut pull = env.containerd.ctr_command(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        SNAPSHOTTER,
        &env.image.reference,
    ]);
    let out = File::create(&out_path)?;
    pull.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let mut child = pull.spawn().context("spawning background pull")?;

    // Kill as soon as the first snapshot directory exists (the first
    // Prepare of the unpack), while layers are still to be applied.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if !env.snapshotter.snapshot_dirs()?.is_empty() {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "pull ended ({status}) before the daemon created a snapshot dir:\n{}\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                env.diagnostics()
            );
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            bail!(
                "no snapshot dir appeared within 30 s\n{}",
                env.diagnostics()
            );
        }
        sleep(Duration::from_millis(1));
    }
    env.snapshotter.kill9()?;

    let status = match wait_timeout(&mut child, Duration::from_secs(120))? {
        Some(s) => s,
        None => {
            child.kill()?;
            child.wait()?;
            bail!(
                "pull hung for 120 s after the daemon was killed\n{}",
                env.diagnostics()
            );
        }
    };
    let pull_out = std::fs::read_to_string(&out_path)?;
    assert!(
        !status.success(),
        "the pull succeeded although the daemon was killed during unpack:\n{pull_out}"
    );

    env.snapshotter.start_again()?;
    env.wait_snapshotter_reachable(None)?;
    env.pull()?;
    let report = env.run("check", &["/bin/sh", "-c", ROOTFS_CHECK_SCRIPT])?;
    assert_eq!(report, expected_rootfs_report(), "{}", env.diagnostics());

    // Consistency: the image's layers are committed; every listed snapshot
    // can be stat-ed in the daemon, and every listed parent is listed too.
    let rows = env.snapshots()?;
    let keys: BTreeSet<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    for id in &env.image.chain_ids {
        let row = rows.iter().find(|r| &r.key == id);
        assert_eq!(
            row.map(|r| r.kind.as_str()),
            Some("Committed"),
            "layer {id} in {rows:?}"
        );
    }
    for row in &rows {
        if let Some(parent) = &row.parent {
            assert!(
                keys.contains(parent.as_str()),
                "{row:?} has a missing parent; {rows:?}"
            );
        }
        let info = env.info(&row.key)?;
        assert_eq!(info["Name"], row.key.as_str(), "{info}");
        assert_eq!(info["Kind"], row.kind.as_str(), "{info}");
    }
    let usage = parse_usage(&env.snapshots_cmd(&["usage"])?)?;
    assert_eq!(usage.len(), rows.len(), "{usage:?} vs {rows:?}");
    Ok(())
}
