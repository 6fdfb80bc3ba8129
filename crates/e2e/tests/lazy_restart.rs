//! kill -9 of the daemon after a lazy pull, with handover off
//! (`HOLOGRAM_HANDOVER=0`; with it on, the mounts live on: see
//! restart_keeps_containers.rs): its FUSE mounts die with it
//! ("Transport endpoint is not connected"). The restarted daemon detaches
//! the dead mounts and mounts the layers again from its local TOC copies —
//! with the registry stopped, to prove no network is needed for that — and
//! the image runs; unfetched files read again once the registry is back.
//! The node's JSON API lists the layers mounted again under their image.

use anyhow::Result;
use hologram_e2e::image::content::DEFAULT_CMD_OUTPUT;
use hologram_e2e::lazy::{image_facts, LazyEnv, LazyOptions};

#[test]
fn layers_are_mounted_again_after_kill9_without_the_registry() -> Result<()> {
    let metrics = format!("127.0.0.1:{}", hologram_e2e::util::free_port()?);
    let mut env = LazyEnv::start_with(LazyOptions {
        env: vec![("HOLOGRAM_HANDOVER".into(), "0".into())],
        metrics_address: Some(metrics.clone()),
        ..LazyOptions::default()
    })?;
    let original = env.push_mkimage(false, "e2e/layers:restart")?;
    let target = format!("{}/e2e/layers:restart-esgz", env.registry.addr());
    env.convert(&original.reference, &target, &[])?;
    let facts = image_facts(&target)?;
    let sum = env.hologram_pull(&target)?;
    assert_eq!(sum.lazy, 3, "{}", sum.text);
    // Read the default command's files once so they are cached.
    assert_eq!(env.run(&target, "before", &[])?, DEFAULT_CMD_OUTPUT);

    env.snapshotter.kill9()?;
    // The old mounts are dead now.
    let dead = env.fuse_mounts()?;
    assert_eq!(
        dead.len(),
        3,
        "the dead mounts stay until someone detaches them"
    );
    let probe = std::fs::read_dir(&dead[0].mountpoint).map(|_| ());
    assert!(probe.is_err(), "a mount of a dead daemon should not answer");

    env.registry.stop()?;
    env.snapshotter.start_again()?;
    // containerd reconnects to the proxy plugin with a back-off: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while env
        .ctr(&["snapshots", "--snapshotter", "hologram", "ls"])
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "containerd did not reconnect\n{}",
            env.diagnostics()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let again = env.log_lines("remote layer mounted again");
    assert_eq!(again.len(), 3, "{}", env.diagnostics());
    env.check_layers_fuse_mounted(&facts)?;
    // The page's API: the restarted daemon knows the layers from their
    // snapshots' labels.
    let r = hologram_e2e::registry::http_get(&metrics, "/api/v1/node", &[])?;
    let node: serde_json::Value = serde_json::from_slice(&r.body)?;
    let img = node["images"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["manifest_digest"] == facts.manifest_digest.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        img["manifest_digest"],
        facts.manifest_digest.as_str(),
        "{node:#}"
    );
    let layers: Vec<(&str, &str)> = img["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (
                l["digest"].as_str().unwrap_or(""),
                l["mode"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let want: Vec<(&str, &str)> = facts
        .layers
        .iter()
        .map(|l| (l.digest.as_str(), "lazy"))
        .collect();
    assert_eq!(layers, want, "{node:#}");
    assert_eq!(
        env.fuse_mounts()?.len(),
        3,
        "dead mounts were detached, not stacked"
    );
    // Cached files serve without the registry.
    assert_eq!(
        env.run(&target, "after", &[])?,
        DEFAULT_CMD_OUTPUT,
        "{}",
        env.diagnostics()
    );

    env.registry.start_again()?;
    let out = env.run(
        &target,
        "full",
        &["/bin/sh", "-c", "cat /data/keep.txt /opaque/new.txt"],
    )?;
    assert!(
        out.starts_with("keep v3 (layer 3)"),
        "{out}\n{}",
        env.diagnostics()
    );
    Ok(())
}
