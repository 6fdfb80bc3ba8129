//! CTP-96 end to end: real containerd, the daemon with `HOLOGRAM_NET=ctp96`
//! and `hologram ctp96 serve --upstream` in front of the local registry. An
//! eStargz image is pulled lazily and runs, and the daemon never asks the
//! registry for anything: everything the daemon and `hologram pull` send
//! to the registry goes through a proxy that records each request, and the
//! only requests are `hologram pull`'s own (the manifest by tag and the
//! config, which it stores in containerd's content store); the daemon read
//! the manifest by digest, the config, the TOCs and the chunks over
//! CTP-96. The metrics and `hologram status` show the CTP-96 traffic.
//!
//! With `HOLOGRAM_NET=auto` and an endpoint nobody listens on, the same
//! image is served from the registry, with a warning and a fallback count.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use hologram_e2e::image::content::DEFAULT_CMD_OUTPUT;
use hologram_e2e::lazy::{hologram_bin, hologram_ok, image_facts, LazyEnv, LazyOptions};
use hologram_e2e::process::Daemon;
use hologram_e2e::prom::scrape;
use hologram_e2e::proxy::CountingProxy;
use hologram_e2e::util::{free_port, wait_until};

fn env_with(net: &str, endpoint: &str) -> Result<(LazyEnv, String)> {
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let env = LazyEnv::start_with(LazyOptions {
        metrics_address: Some(metrics.clone()),
        env: vec![
            ("HOLOGRAM_NET".into(), net.into()),
            ("HOLOGRAM_CTP96_ENDPOINT".into(), endpoint.into()),
        ],
        ..LazyOptions::default()
    })?;
    Ok((env, metrics))
}

#[test]
fn an_image_runs_lazily_over_ctp96_and_the_daemon_never_asks_the_registry() -> Result<()> {
    let port = free_port()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let (env, metrics) = env_with("ctp96", &endpoint)?;
    let original = env.push_mkimage(false, "e2e/ctp96:src")?;
    let target = format!("{}/e2e/ctp96:esgz", env.registry.addr());
    env.convert(&original.reference, &target, &[])?;
    let facts = image_facts(&target)?;

    let mut cmd = Command::new(hologram_bin()?);
    cmd.args([
        "ctp96",
        "serve",
        "-v",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--upstream",
        &format!("http://{}", env.registry.addr()),
        "--cache",
    ])
    .arg(env.dir().join("ctp96-cache"))
    .args(["--lease", "30s"]);
    let log = env.dir().join("ctp96-server.log");
    let mut server = Daemon::spawn("hologram ctp96 serve", cmd, &log)?;
    wait_until(
        "the CTP-96 server to listen",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || Ok(TcpStream::connect(("127.0.0.1", port)).is_ok()),
    )
    .with_context(|| server.log_tail(20))?;

    // What the daemon and `hologram pull` ask the registry, recorded.
    let proxy = CountingProxy::start(env.registry.addr())?;
    let reference = format!("{}/e2e/ctp96:esgz", proxy.addr());
    let sum = env.hologram_pull(&reference)?;
    let n = facts.layers.len();
    assert_eq!(
        (sum.layers, sum.lazy, sum.unpacked),
        (n, n, 0),
        "{}\n{}",
        sum.text,
        env.diagnostics()
    );
    env.check_layers_fuse_mounted(&facts)?;
    let out = env.run(&reference, "over-ctp96", &[])?;
    assert_eq!(out, DEFAULT_CMD_OUTPUT, "{}", env.diagnostics());
    // Every file of the image read through the lazy mounts.
    let all = env.run(
        &reference,
        "read-all",
        &[
            "/bin/sh",
            "-c",
            "find / -xdev -type f -exec cat {} + | wc -c",
        ],
    )?;
    assert!(
        all.trim().parse::<u64>().is_ok_and(|b| b > 0),
        "{all}\n{}",
        env.diagnostics()
    );

    let requests = proxy.requests();
    assert!(
        requests.iter().any(|r| r.contains("/manifests/")),
        "the proxy saw the pull: {requests:#?}"
    );
    let config = facts.manifest["config"]["digest"]
        .as_str()
        .context("config digest")?;
    let blobs: Vec<&String> = requests.iter().filter(|r| r.contains("/blobs/")).collect();
    assert!(
        blobs.len() == 1 && blobs[0].contains(config),
        "blob requests other than `hologram pull`'s one of the config: {requests:#?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains("/manifests/sha256:")),
        "the daemon read the manifest from the registry: {requests:#?}"
    );
    for l in &facts.layers {
        let asked: Vec<&String> = requests.iter().filter(|r| r.contains(&l.digest)).collect();
        assert!(
            asked.is_empty(),
            "layer {} was asked of the registry: {asked:#?}",
            l.digest
        );
    }
    eprintln!(
        "registry requests through the proxy ({}):\n{}",
        requests.len(),
        requests.join("\n")
    );

    // The node's JSON API names the transport, the session and its lease,
    // and where each lazy layer's bytes come from.
    let r = hologram_e2e::registry::http_get(&metrics, "/api/v1/node", &[])?;
    let node: serde_json::Value = serde_json::from_slice(&r.body)?;
    let c = &node["ctp96"];
    assert_eq!(c["mode"], "ctp96", "{node:#}");
    assert_eq!(c["endpoint"], endpoint.as_str(), "{node:#}");
    assert!(
        c["session_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{c:#}"
    );
    assert!(
        c["lease_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{c:#}"
    );
    assert!(
        c["lease_seconds"].as_f64().is_some_and(|s| s > 0.0),
        "{c:#}"
    );
    let sources: Vec<&serde_json::Value> = node["images"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["layers"].as_array().into_iter().flatten())
        .map(|l| &l["source"])
        .collect();
    assert!(
        sources.len() >= n && sources.iter().all(|s| *s == "ctp96"),
        "{node:#}"
    );

    let m = scrape(&metrics)?;
    let over_ctp96 = m.sum("hologram_fetched_bytes_total", &[("source", "ctp96")]);
    eprintln!("fetched over CTP-96: {over_ctp96} bytes");
    assert!(over_ctp96 > 0.0, "{}", m.text);
    assert_eq!(
        m.sum("hologram_fetched_bytes_total", &[("source", "registry")]),
        0.0
    );
    let op = |op: &str, result: &str| {
        m.sum(
            "hologram_ctp96_operations_total",
            &[("op", op), ("result", result)],
        )
    };
    assert_eq!(op("session_open", "ok"), 1.0, "one session for every layer");
    assert!(op("fetch", "ok") >= 1.0);
    assert_eq!(op("fetch", "error"), 0.0);
    assert_eq!(
        m.sum(
            "hologram_ctp96_operations_total",
            &[("op", "frame_rejected")]
        ),
        0.0
    );
    assert_eq!(m.sum("hologram_lease_duration_seconds", &[]), 30.0);
    assert!(m.sum("hologram_energy_hints", &[("hint", "concurrency")]) >= 1.0);
    assert_eq!(
        m.sum("hologram_remote_fetches_total", &[("result", "error")]),
        0.0
    );

    let status = hologram_ok(
        &["status", "--metrics", &format!("http://{metrics}/metrics")],
        Duration::from_secs(30),
    )?;
    eprintln!("{status}");
    assert!(status.contains("\nCTP-96\n"), "{status}");
    assert!(
        status.contains("sessions               1 opened"),
        "{status}"
    );
    assert!(status.contains("frames rejected        none"), "{status}");

    server.terminate(Duration::from_secs(10))?;
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(server_log.contains("session opened"), "{server_log}");
    Ok(())
}

#[test]
fn auto_with_an_unreachable_endpoint_falls_back_to_the_registry() -> Result<()> {
    // A port nothing listens on.
    let endpoint = format!("http://127.0.0.1:{}", free_port()?);
    let (env, metrics) = env_with("auto", &endpoint)?;
    let original = env.push_mkimage(false, "e2e/ctp96:src")?;
    let target = format!("{}/e2e/ctp96:auto", env.registry.addr());
    env.convert(&original.reference, &target, &[])?;
    let facts = image_facts(&target)?;
    let sum = env.hologram_pull(&target)?;
    let n = facts.layers.len();
    assert_eq!((sum.layers, sum.lazy), (n, n), "{}", sum.text);
    let out = env.run(&target, "auto", &[])?;
    assert_eq!(out, DEFAULT_CMD_OUTPUT, "{}", env.diagnostics());
    let m = scrape(&metrics)?;
    assert!(
        m.sum(
            "hologram_ctp96_operations_total",
            &[("op", "fallback"), ("result", "unreachable")]
        ) >= 1.0,
        "{}",
        m.text
    );
    assert!(m.sum("hologram_fetched_bytes_total", &[("source", "registry")]) > 0.0);
    assert!(
        !env.log_lines("CTP-96 endpoint unreachable").is_empty(),
        "no warning in the daemon log"
    );
    Ok(())
}
