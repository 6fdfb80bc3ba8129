//! Issue 11: profiles without another tool. `hologram convert --record CMD`
//! runs the workload once on the converted image (through hologram's own
//! FUSE filesystem, stacked with overlayfs, in a chroot) and puts the files
//! it opened, in that order, before each layer's prefetch landmark. A lazy
//! pull of the result fetches them at mount: with the registry stopped
//! right after the pull (and the prefetch), the workload still runs.

use std::time::Duration;

use anyhow::{Context, Result};
use hologram_e2e::lazy::{image_facts, read_toc, toc_names, LazyEnv};
use hologram_e2e::util::wait_until;

const WORKLOAD: &str = "cat /data/keep.txt /opaque/new.txt";

#[test]
fn a_recorded_profile_is_prefetched_at_mount() -> Result<()> {
    let mut env = LazyEnv::start()?;
    let original = env.push_mkimage(false, "e2e/rec:src")?;
    let target = format!("{}/e2e/rec:esgz-rec", env.registry.addr());
    env.convert(&original.reference, &target, &["--record", WORKLOAD])?;

    // The recorded files come first, before the landmark, in their layers.
    let facts = image_facts(&target)?;
    let mut before_landmark = Vec::new();
    for layer in &facts.layers {
        let blob = env.registry.blob_path(&layer.digest)?;
        let names = toc_names(&read_toc(&blob, false)?);
        if let Some(i) = names.iter().position(|n| n == ".prefetch.landmark") {
            before_landmark.extend(names[..i].iter().cloned());
        } else {
            assert!(
                names.iter().any(|n| n == ".no.prefetch.landmark"),
                "{names:?}"
            );
        }
    }
    for f in ["data/keep.txt", "opaque/new.txt"] {
        assert!(
            before_landmark
                .iter()
                .any(|n| n.trim_start_matches("./") == f),
            "{f} not before a landmark: {before_landmark:?}"
        );
    }
    assert!(
        !before_landmark.iter().any(|n| n.ends_with("layer2.txt")),
        "a file the workload never opened was prioritized: {before_landmark:?}"
    );

    // Pulled lazily, the profile is fetched at mount...
    let sum = env.hologram_pull(&target)?;
    assert_eq!(sum.lazy, 3, "{}", sum.text);
    let landmarks = facts.layers.len()
        - facts
            .layers
            .iter()
            .filter(|l| {
                env.registry
                    .blob_path(&l.digest)
                    .ok()
                    .and_then(|b| read_toc(&b, false).ok())
                    .is_some_and(|t| toc_names(&t).iter().any(|n| n == ".no.prefetch.landmark"))
            })
            .count();
    wait_until(
        "the prefetch of every profiled layer",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || Ok(env.log_lines("prefetch done").len() >= landmarks),
    )
    .with_context(|| env.diagnostics())?;
    // ...so the workload runs with the registry gone.
    env.registry.stop()?;
    let out = env.run(&target, "profiled", &["/bin/sh", "-c", WORKLOAD])?;
    assert_eq!(
        out,
        "keep v3 (layer 3)\nnew in layer 2 (opaque dir)\n",
        "{}",
        env.diagnostics()
    );
    Ok(())
}
