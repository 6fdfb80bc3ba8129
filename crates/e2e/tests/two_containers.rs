//! Test 2: two containers of one image have separate writable layers, and a
//! container's writes persist in its active snapshot after it exits.

use anyhow::Result;
use hologram_e2e::image::content::KEEP_V3;
use hologram_e2e::{TestEnv, SNAPSHOTTER};

#[test]
fn containers_do_not_see_each_others_writes() -> Result<()> {
    let env = TestEnv::start()?;
    env.pull()?;
    let top = env.image.chain_ids[2].clone();

    // Container A, kept after exit (no --rm): its snapshot "a" stays.
    let a = env.containerd.run_logged(
        None,
        &[
            "--snapshotter",
            SNAPSHOTTER,
            &env.image.reference,
            "a",
            "/bin/sh",
            "-c",
            "echo A > /data/w.txt && echo changed > /data/keep.txt && cat /data/w.txt",
        ],
    )?;
    assert_eq!(a, "A\n", "{}", env.diagnostics());

    // Container B starts from the same committed layers.
    let b = env.run(
        "b",
        &[
            "/bin/sh",
            "-c",
            "test -e /data/w.txt && echo present || echo absent; cat /data/keep.txt",
        ],
    )?;
    assert_eq!(b, format!("absent\n{KEEP_V3}\n"), "{}", env.diagnostics());

    // A's snapshot is active on top of the image and holds A's writes.
    let info = env.info("a")?;
    assert_eq!(info["Kind"], "Active", "{info}");
    assert_eq!(info["Parent"], top.as_str(), "{info}");
    {
        let m = env.mount_snapshot("a")?;
        let w = std::fs::read_to_string(m.path().join("data/w.txt"))?;
        assert_eq!(w, "A\n");
        let keep = std::fs::read_to_string(m.path().join("data/keep.txt"))?;
        assert_eq!(keep, "changed\n");
        let replaced = std::fs::read_to_string(m.path().join("replaced"))?;
        assert_eq!(replaced, "now a file\n");
    }

    // The committed top layer is untouched: a read-only view of it has
    // neither A's new file nor A's change.
    env.containerd.view_rooted(SNAPSHOTTER, "v-top", &top)?;
    let view_info = env.info("v-top")?;
    assert_eq!(view_info["Kind"], "View", "{view_info}");
    {
        let m = env.mount_snapshot("v-top")?;
        assert!(
            !m.path().join("data/w.txt").exists(),
            "A's write leaked into layer {top}"
        );
        let keep = std::fs::read_to_string(m.path().join("data/keep.txt"))?;
        assert_eq!(keep, format!("{KEEP_V3}\n"));
    }
    env.snapshots_cmd(&["rm", "v-top"])?;

    // Removing container A removes its snapshot.
    env.ctr(&["containers", "rm", "a"])?;
    let keys: Vec<String> = env.snapshots()?.into_iter().map(|r| r.key).collect();
    let mut want = env.image.chain_ids.clone();
    want.sort();
    assert_eq!(keys, want, "{}", env.diagnostics());
    Ok(())
}
