//! Test 3: the snapshots API as seen through `ctr snapshots`: listing, info,
//! labels, usage, prepare/commit/view/remove and removal of a parent.

use anyhow::{Context, Result};
use hologram_e2e::{parse_usage, TestEnv, SNAPSHOTTER};

#[test]
fn ls_info_usage_prepare_commit_and_remove() -> Result<()> {
    let env = TestEnv::start()?;
    env.pull()?;
    let chain = env.image.chain_ids.clone();
    let top = chain[2].clone();

    // ls: exactly the three committed layers, each on top of the previous.
    let rows = env.snapshots()?;
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (i, id) in chain.iter().enumerate() {
        let row = rows
            .iter()
            .find(|r| &r.key == id)
            .with_context(|| format!("layer {i} ({id}) missing from ls: {rows:?}"))?;
        assert_eq!(row.kind, "Committed", "{row:?}");
        let want_parent = if i == 0 {
            None
        } else {
            Some(chain[i - 1].clone())
        };
        assert_eq!(row.parent, want_parent, "{row:?}");
    }

    // info: JSON with name, parent and kind.
    for (i, id) in chain.iter().enumerate() {
        let info = env.info(id)?;
        assert_eq!(info["Name"], id.as_str(), "{info}");
        assert_eq!(info["Kind"], "Committed", "{info}");
        if i == 0 {
            assert!(info.get("Parent").is_none(), "{info}");
        } else {
            assert_eq!(info["Parent"], chain[i - 1].as_str(), "{info}");
        }
    }

    // Labels: containerd forwards "containerd.io/snapshot/" labels to the
    // snapshotter (Update); both kinds show up in info.
    env.snapshots_cmd(&[
        "label",
        &top,
        "containerd.io/snapshot/e2e=hello",
        "e2e.plain=yes",
    ])?;
    let info = env.info(&top)?;
    assert_eq!(
        info["Labels"]["containerd.io/snapshot/e2e"], "hello",
        "{info}"
    );
    assert_eq!(info["Labels"]["e2e.plain"], "yes", "{info}");
    assert_eq!(info["Kind"], "Committed", "{info}");

    // usage: every layer has a size and inodes; the busybox layer is big.
    let usage = parse_usage(&env.snapshots_cmd(&["usage"])?)?;
    assert_eq!(usage.len(), 3, "{usage:?}");
    for u in &usage {
        assert!(u.bytes > 0.0 && u.inodes > 0, "empty usage {u:?}");
    }
    let base = usage
        .iter()
        .find(|u| u.key == chain[0])
        .context("base layer usage")?;
    assert!(
        base.bytes >= 1024.0 * 1024.0,
        "busybox layer reported as {} bytes",
        base.bytes
    );
    assert!(
        base.inodes >= 30,
        "busybox layer reported {} inodes",
        base.inodes
    );
    let single = parse_usage(&env.snapshots_cmd(&["usage", &chain[1]])?)?;
    assert_eq!(single.len(), 1, "{single:?}");

    // prepare on top of the image; a parent with children can't be removed.
    env.snapshots_cmd(&["prepare", "t1", &top])?;
    let t1 = env.info("t1")?;
    assert_eq!(t1["Kind"], "Active", "{t1}");
    assert_eq!(t1["Parent"], top.as_str(), "{t1}");
    let err = env.snapshots_cmd_fails(&["rm", &top])?;
    assert!(
        err.contains("child") || err.to_lowercase().contains("failed precondition"),
        "unexpected error removing a parent: {err}"
    );
    env.snapshots_cmd(&["rm", "t1"])?;
    let gone = env.snapshots_cmd_fails(&["info", "t1"])?;
    assert!(
        gone.contains("not found"),
        "info of removed snapshot: {gone}"
    );
    assert_eq!(env.snapshots()?, rows);

    // prepare -> write -> commit -> view: the committed content is visible.
    env.snapshots_cmd(&["prepare", "t2", &top])?;
    {
        let m = env.mount_snapshot("t2")?;
        std::fs::write(m.path().join("committed.txt"), "from t2\n")?;
        std::fs::remove_file(m.path().join("data/layer2.txt"))?;
    }
    env.containerd.commit_rooted(SNAPSHOTTER, "c2", "t2")?;
    let c2 = env.info("c2")?;
    assert_eq!(c2["Kind"], "Committed", "{c2}");
    assert_eq!(c2["Parent"], top.as_str(), "{c2}");
    assert!(
        env.snapshots_cmd_fails(&["info", "t2"])?
            .contains("not found"),
        "the active snapshot must be gone after commit"
    );
    env.containerd.view_rooted(SNAPSHOTTER, "v2", "c2")?;
    {
        let m = env.mount_snapshot("v2")?;
        assert_eq!(
            std::fs::read_to_string(m.path().join("committed.txt"))?,
            "from t2\n"
        );
        assert!(
            !m.path().join("data/layer2.txt").exists(),
            "deletion was not committed"
        );
        assert!(m.path().join("data/hard.txt").exists());
    }
    let c2_usage = parse_usage(&env.snapshots_cmd(&["usage", "c2"])?)?;
    assert_eq!(c2_usage.len(), 1);
    assert!(c2_usage[0].inodes >= 1, "{c2_usage:?}");
    env.snapshots_cmd(&["rm", "v2"])?;
    env.snapshots_cmd(&["rm", "c2"])?;
    assert_eq!(env.snapshots()?, rows, "{}", env.diagnostics());
    Ok(())
}
