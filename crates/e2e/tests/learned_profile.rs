//! Issue 11: profiles learned on the node. The first run of a plain
//! eStargz image (no prefetch landmark) records the order its workload
//! reads each layer in; the daemon stores it per layer digest under
//! `<root>/profiles`. Given those files (here: moved into a `shared_dirs`
//! directory, as another node would get them), a later lazy pull of the
//! same image with an empty cache prefetches in that order at mount: with
//! the registry stopped right after, the workload still runs. Without the
//! profile (background fetch is off) it could not.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use hologram_e2e::lazy::{LazyEnv, LazyOptions, LAZY_CONFIG};
use hologram_e2e::util::wait_until;

const WORKLOAD: &str = "cat /data/keep.txt /opaque/new.txt";

fn profile_files(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    Ok(v)
}

#[test]
fn a_profile_learned_on_one_run_prefetches_the_next_pull() -> Result<()> {
    let config = format!("{LAZY_CONFIG}\n[profiles]\nlearn_window_secs = 1\n");
    let mut env = LazyEnv::start_with(LazyOptions {
        config: config.clone(),
        ..LazyOptions::default()
    })?;
    let original = env.push_mkimage(false, "e2e/learn:src")?;
    let target = format!("{}/e2e/learn:esgz", env.registry.addr());
    env.convert(&original.reference, &target, &[])?;

    // First run: learned.
    let sum = env.hologram_pull(&target)?;
    assert_eq!(sum.lazy, 3, "{}", sum.text);
    let out = env.run(&target, "learn", &["/bin/sh", "-c", WORKLOAD])?;
    assert_eq!(out, "keep v3 (layer 3)\nnew in layer 2 (opaque dir)\n");
    let own = env.snapshotter.root().join("profiles");
    wait_until(
        "the learned profiles to be stored",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || Ok(!profile_files(&own)?.is_empty()),
    )
    .with_context(|| env.diagnostics())?;
    // Wait until the layers that read /data/keep.txt and /opaque/new.txt
    // have both written theirs (they are learned side by side).
    let mut texts = String::new();
    wait_until(
        "both read files in the profiles",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            texts = profile_files(&own)?
                .iter()
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .collect::<Vec<_>>()
                .join("\n");
            Ok(texts.contains("\"data/keep.txt\"") && texts.contains("\"opaque/new.txt\""))
        },
    )
    .with_context(|| format!("{texts}\n{}", env.diagnostics()))?;
    assert!(
        texts.contains("\"format\":\"hologram-profile/1\""),
        "{texts}"
    );
    assert!(
        !texts.contains("layer2.txt"),
        "a file the workload never read is in a profile: {texts}"
    );

    // "Another node": the image gone, the daemon's cache emptied, the
    // profiles only in a shared directory.
    env.ctr(&["images", "rm", "--sync", &target])?;
    env.snapshotter.stop()?;
    let root = env.snapshotter.root().to_path_buf();
    std::fs::remove_dir_all(root.join("cache")).context("emptying the cache")?;
    let shared = env.dir().join("shared-profiles");
    std::fs::create_dir_all(&shared)?;
    let learned = profile_files(&own)?;
    for p in &learned {
        let name = p.file_name().context("profile file name")?;
        std::fs::rename(p, shared.join(name))?;
    }
    env.snapshotter.write_config(&format!(
        "{config}shared_dirs = [{:?}]\n",
        shared.display().to_string()
    ))?;
    let before = env.log_lines("learned-profile prefetch done").len();
    env.snapshotter.start_again()?;

    let sum = env.hologram_pull(&target)?;
    assert_eq!(sum.lazy, 3, "{}", sum.text);
    let applied = env.log_lines("prefetching by a learned profile").len();
    assert!(
        applied >= learned.len(),
        "{applied} layers prefetched by a profile, {} profiles\n{}",
        learned.len(),
        env.diagnostics()
    );
    wait_until(
        "the profile prefetch of every profiled layer",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || Ok(env.log_lines("learned-profile prefetch done").len() >= before + learned.len()),
    )
    .with_context(|| env.diagnostics())?;
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
