//! Issue 12: start-up never waits on a registry. After a lazy pull the
//! daemon is restarted (handover on: the mounts live on with the fd holder)
//! with the local TOC copies of two of the image's three layers deleted and
//! the registry hung (a misbehaving proxy in front of it). Before, the
//! daemon fetched each missing TOC before serving its socket, bounded by
//! `fetch_timeout_secs` per layer (2 × 10 s here). Now:
//!
//! - the socket is served at once (a containerd call answers well before
//!   one `fetch_timeout`);
//! - the metric `hologram_restoring_layers`, the node API and
//!   `hologram status` show the two layers restoring, with the last error;
//! - a Prepare on the image's chain waits at most `fetch_timeout`, then is
//!   refused with FailedPrecondition naming a layer and the reason;
//! - once the registry answers again, the layers are mounted in the
//!   background (the inherited FUSE connections taken over) and a
//!   container of the image runs and reads the right bytes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hologram_e2e::faulty::{Fault, FaultyProxy};
use hologram_e2e::image::content::DEFAULT_CMD_OUTPUT;
use hologram_e2e::lazy::{hologram, image_facts, LazyEnv, LazyOptions};
use hologram_e2e::util::wait_until;

const FETCH_TIMEOUT_SECS: u64 = 10;
const TOC: &str = "containerd.io/snapshot/stargz/toc.digest";

fn config() -> String {
    format!(
        "[remote]\n\
         plain_http = true\n\
         fetch_timeout_secs = {FETCH_TIMEOUT_SECS}\n\
         background_fetch = false\n\
         prefetch = true\n\
         cache_size_mib = 1024\n"
    )
}

fn metric(metrics: &str, name: &str) -> Result<Option<f64>> {
    let r = hologram_e2e::registry::http_get(metrics, "/metrics", &[])?;
    let body = String::from_utf8_lossy(&r.body).into_owned();
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok()))
}

#[test]
fn layers_without_a_toc_copy_are_restored_in_the_background() -> Result<()> {
    let fetch_timeout = Duration::from_secs(FETCH_TIMEOUT_SECS);
    let metrics = format!("127.0.0.1:{}", hologram_e2e::util::free_port()?);
    let mut env = LazyEnv::start_with(LazyOptions {
        config: config(),
        metrics_address: Some(metrics.clone()),
        ..LazyOptions::default()
    })?;
    let original = env.push_mkimage(false, "e2e/layers:bg-restore-src")?;
    let proxy = FaultyProxy::start(env.registry.addr())?;
    let target = format!("{}/e2e/layers:bg-restore-esgz", proxy.addr());
    env.convert(&original.reference, &target, &[])?;
    let facts = image_facts(&target)?;
    let sum = env.hologram_pull(&target)?;
    assert_eq!(sum.lazy, 3, "{}", sum.text);
    assert_eq!(env.run(&target, "before", &[])?, DEFAULT_CMD_OUTPUT);

    env.snapshotter.stop()?;
    // No local TOC copy for the two upper layers: their index must come
    // from the registry, which hangs.
    let missing: Vec<String> = facts.layers[1..].iter().map(|l| l.digest.clone()).collect();
    for l in &facts.layers[1..] {
        let copy = env.toc_copy(&l.annotations[TOC])?;
        std::fs::remove_file(&copy).with_context(|| format!("removing {}", copy.display()))?;
    }
    proxy.set(Fault::Hang);

    let t0 = Instant::now();
    env.snapshotter.start_again()?;
    let serving = t0.elapsed();
    env.ctr(&["snapshots", "--snapshotter", "hologram", "ls"])?;
    let answered = t0.elapsed();
    println!("socket served {serving:?} after the start, ctr snapshots ls answered after {answered:?} (fetch_timeout {fetch_timeout:?}, 2 layers to fetch)");
    assert!(
        answered < fetch_timeout / 2,
        "the daemon waited on the registry before serving: {answered:?}\n{}",
        env.diagnostics()
    );
    let again = env.log_lines("remote layer mounted again");
    assert_eq!(
        again.len(),
        1,
        "one layer had its TOC copy\n{}",
        env.diagnostics()
    );

    // Reported while pending, with the last error once an attempt failed.
    let ok = wait_until(
        "two layers restoring with an error",
        fetch_timeout * 3,
        Duration::from_millis(200),
        || {
            let r = hologram_e2e::registry::http_get(&metrics, "/api/v1/node", &[])?;
            let node: serde_json::Value = serde_json::from_slice(&r.body)?;
            let restoring = node["restoring"].as_array().cloned().unwrap_or_default();
            Ok(restoring.len() == 2
                && restoring.iter().all(|r| {
                    missing.contains(&r["digest"].as_str().unwrap_or("").to_owned())
                        && r["last_error"].as_str().is_some_and(|e| !e.is_empty())
                }))
        },
    );
    assert!(ok.is_ok(), "node API: {ok:?}\n{}", env.diagnostics());
    assert_eq!(metric(&metrics, "hologram_restoring_layers")?, Some(2.0));
    assert_eq!(metric(&metrics, "hologram_mounted_layers")?, Some(1.0));
    let status = hologram(
        &["status", "--metrics", &format!("http://{metrics}/metrics")],
        Duration::from_secs(30),
    )?;
    let status_out = String::from_utf8_lossy(&status.stdout).into_owned();
    println!("{status_out}");
    assert!(
        status_out.contains("RESTORING layers       2"),
        "{status_out}"
    );
    assert!(status_out.contains(&missing[0]), "{status_out}");
    assert!(status_out.contains("last error:"), "{status_out}");

    // A snapshot on the chain: refused, clearly, after at most
    // fetch_timeout — never overlay mounts on an empty directory.
    let top = facts.top_chain_id()?.to_owned();
    let t1 = Instant::now();
    let refused = env.prepare_direct("bg-restore-probe", &top, &[])?;
    let waited = t1.elapsed();
    let status = match refused {
        Ok(n) => panic!("a Prepare on a layer not restored got {n} mounts"),
        Err(s) => s,
    };
    println!("Prepare refused after {waited:?}: {status:?}");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("not restored yet"), "{status:?}");
    assert!(
        missing
            .iter()
            .any(|d| status.message().contains(d.as_str())),
        "{status:?}"
    );
    assert!(
        waited < fetch_timeout + Duration::from_secs(5),
        "{waited:?}"
    );

    // The registry answers again: both layers are mounted in the background.
    proxy.set(Fault::Pass);
    let t2 = Instant::now();
    let restored = wait_until(
        "the layers restored",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || {
            Ok(metric(&metrics, "hologram_restoring_layers")? == Some(0.0)
                && metric(&metrics, "hologram_mounted_layers")? == Some(3.0))
        },
    );
    assert!(restored.is_ok(), "{restored:?}\n{}", env.diagnostics());
    println!("restored {:?} after the registry came back", t2.elapsed());
    assert_eq!(
        env.log_lines("restored in the background").len(),
        2,
        "{}",
        env.diagnostics()
    );
    assert_eq!(
        env.log_lines("took over the FUSE connection").len(),
        3,
        "every inherited connection taken over\n{}",
        env.diagnostics()
    );
    env.check_layers_fuse_mounted(&facts)?;
    assert_eq!(env.fuse_mounts()?.len(), 3, "no mount stacked");
    let out = env.run(
        &target,
        "after",
        &["/bin/sh", "-c", "cat /data/keep.txt /opaque/new.txt"],
    )?;
    assert!(
        out.starts_with("keep v3 (layer 3)"),
        "{out}\n{}",
        env.diagnostics()
    );
    assert_eq!(env.run(&target, "default", &[])?, DEFAULT_CMD_OUTPUT);
    let errors = env.log_lines("ERROR");
    assert!(errors.is_empty(), "{errors:#?}");
    Ok(())
}
