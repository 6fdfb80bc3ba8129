//! The daemon's Prometheus endpoint, checked with Python's
//! prometheus_client parser: every family is declared with the right type,
//! counters move by what a lazy pull + run did, /healthz and `hologram
//! status` agree; a taken metrics port is a clear start-up error; an
//! unopenable store keeps the daemon up with /healthz saying why (503).

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use hologram_e2e::image::content::DEFAULT_CMD_OUTPUT;
use hologram_e2e::lazy::{hologram_ok, image_facts, LazyEnv, LazyOptions};
use hologram_e2e::process::Daemon;
use hologram_e2e::prom::{healthz, scrape, Exposition};
use hologram_e2e::util::{free_port, short_tempdir, tail, wait_until};
use hologram_e2e::Snapshotter;

/// (family name as the parser reports it, type). Counter families are
/// named without `_total`.
const FAMILIES: &[(&str, &str)] = &[
    ("hologram_snapshotter_operations", "counter"),
    (
        "hologram_snapshotter_operation_duration_seconds",
        "histogram",
    ),
    ("hologram_fuse_operations", "counter"),
    ("hologram_fuse_read_duration_seconds", "histogram"),
    ("hologram_fuse_read_bytes", "counter"),
    ("hologram_resolver_operations", "counter"),
    ("hologram_witness_operations", "counter"),
    ("hologram_ctp96_operations", "counter"),
    ("hologram_layer_checks", "counter"),
    ("hologram_energy_hints", "gauge"),
    ("hologram_lease_duration_seconds", "gauge"),
    ("hologram_remote_fetch_duration_seconds", "histogram"),
    ("hologram_remote_fetches", "counter"),
    ("hologram_fetched_bytes", "counter"),
    ("hologram_cache_requests", "counter"),
    ("hologram_chunk_verification_failures", "counter"),
    ("hologram_remote_fallbacks", "counter"),
    ("hologram_mounted_layers", "gauge"),
    ("hologram_cache_bytes", "gauge"),
    ("process_resident_memory_bytes", "gauge"),
];

fn delta(before: &Exposition, after: &Exposition, sample: &str, labels: &[(&str, &str)]) -> f64 {
    after.sum(sample, labels) - before.sum(sample, labels)
}

#[test]
fn metrics_after_lazy_pull_and_run() -> Result<()> {
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let env = LazyEnv::start_with(LazyOptions {
        metrics_address: Some(metrics.clone()),
        ..LazyOptions::default()
    })?;
    let original = env.push_mkimage(false, "e2e/layers:src")?;
    let target = format!("{}/e2e/layers:esgz", env.registry.addr());
    env.convert(&original.reference, &target, &[])?;
    let facts = image_facts(&target)?;

    let m0 = scrape(&metrics)?;
    for (name, kind) in FAMILIES {
        let f = m0
            .family(name)
            .with_context(|| format!("family {name} missing at start-up:\n{}", m0.text))?;
        assert_eq!(&f.kind, kind, "type of {name}");
    }
    assert_eq!(m0.sum("hologram_mounted_layers", &[]), 0.0);
    // Seeded label sets exist from start-up, at 0.
    for (op, result) in [("prepare", "ok"), ("prepare", "error")] {
        assert!(
            m0.family("hologram_snapshotter_operations")
                .is_some_and(|f| f
                    .samples
                    .iter()
                    .any(|s| s.labels.get("op").map(String::as_str) == Some(op)
                        && s.labels.get("result").map(String::as_str) == Some(result))),
            "no seeded series op={op} result={result}"
        );
    }

    let sum = env.hologram_pull(&target)?;
    assert_eq!((sum.layers, sum.lazy), (3, 3), "{}", sum.text);
    let hello = env.run(&target, "hello", &[])?;
    assert_eq!(hello, DEFAULT_CMD_OUTPUT);
    let m1 = scrape(&metrics)?;
    for (name, kind) in FAMILIES {
        let f = m1.family(name).with_context(|| format!("{name} missing"))?;
        assert_eq!(&f.kind, kind, "type of {name}");
    }

    let ops = "hologram_snapshotter_operations_total";
    let prepare_all = delta(&m0, &m1, ops, &[("op", "prepare")]);
    let prepare_exists = delta(
        &m0,
        &m1,
        ops,
        &[("op", "prepare"), ("result", "already_exists")],
    );
    let prepare_ok = delta(&m0, &m1, ops, &[("op", "prepare"), ("result", "ok")]);
    eprintln!("prepare: {prepare_all} (already_exists {prepare_exists}, ok {prepare_ok})");
    assert!(
        prepare_all >= 4.0,
        "prepare ops {prepare_all} < 3 layers + 1 container"
    );
    assert_eq!(
        prepare_exists, 3.0,
        "3 lazily mounted layers = 3 AlreadyExists"
    );
    assert!(prepare_ok >= 1.0, "the container's snapshot");
    assert_eq!(
        delta(&m0, &m1, ops, &[("op", "prepare"), ("result", "error")]),
        0.0
    );
    let prepare_durations = delta(
        &m0,
        &m1,
        "hologram_snapshotter_operation_duration_seconds_count",
        &[("op", "prepare")],
    );
    assert_eq!(prepare_durations, prepare_all, "histogram count = op count");
    let fuse_reads = delta(
        &m0,
        &m1,
        "hologram_fuse_operations_total",
        &[("op", "read"), ("result", "ok")],
    );
    assert!(fuse_reads > 0.0, "no FUSE reads counted");
    assert_eq!(
        delta(
            &m0,
            &m1,
            "hologram_fuse_operations_total",
            &[("op", "read"), ("result", "error")]
        ),
        0.0
    );
    let read_bytes = delta(&m0, &m1, "hologram_fuse_read_bytes_total", &[]);
    assert!(read_bytes > 0.0);
    let fetched = delta(
        &m0,
        &m1,
        "hologram_fetched_bytes_total",
        &[("source", "registry")],
    );
    let layer_bytes = facts.layer_bytes() as f64;
    eprintln!("fetched {fetched} of {layer_bytes} layer bytes; FUSE served {read_bytes}");
    assert!(
        fetched > 0.0 && fetched <= layer_bytes,
        "fetched {fetched}, layers {layer_bytes}"
    );
    assert!(
        delta(
            &m0,
            &m1,
            "hologram_cache_requests_total",
            &[("result", "miss")]
        ) > 0.0
    );
    assert!(
        delta(
            &m0,
            &m1,
            "hologram_fuse_read_duration_seconds_count",
            &[("result", "ok")]
        ) >= fuse_reads
    );
    assert_eq!(m1.sum("hologram_mounted_layers", &[]), 3.0);
    assert!(m1.sum("hologram_cache_bytes", &[]) > 0.0);
    assert!(m1.sum("process_resident_memory_bytes", &[]) > 1e6);
    assert_eq!(
        m1.sum("hologram_chunk_verification_failures_total", &[]),
        0.0
    );
    assert_eq!(m1.sum("hologram_remote_fallbacks_total", &[]), 0.0);

    let h = healthz(&metrics)?;
    assert_eq!(
        h.status,
        200,
        "/healthz: {}",
        String::from_utf8_lossy(&h.body)
    );

    let status = hologram_ok(
        &["status", "--metrics", &format!("http://{metrics}/metrics")],
        Duration::from_secs(30),
    )?;
    eprintln!("{status}");
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with("mounted layers"))
        .with_context(|| format!("no mounted layers line in:\n{status}"))?;
    assert_eq!(line.split_whitespace().last(), Some("3"), "{line}");
    Ok(())
}

#[test]
fn taken_metrics_port_is_a_clear_startup_error() -> Result<()> {
    let dir = short_tempdir("hg-met-")?;
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let mut sn = Snapshotter::new(&dir.path().join("sn"), &dir.path().join("sn.sock"))?;
    sn.set_metrics_address(&addr);
    let out = sn.run_competitor(&dir.path().join("sn"), Duration::from_secs(30))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with {addr} taken:\n{stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("cannot serve metrics") && last.contains(&addr) && last.contains("in use"),
        "unclear error for a taken metrics port: {last:?}\n{stderr}"
    );
    assert!(!dir.path().join("sn.sock").exists(), "socket left behind");
    drop(taken);
    Ok(())
}

/// Starts the daemon on `root` (whose store cannot be opened) and checks
/// that it stays up with /healthz answering 503 and the reason, then stops
/// on SIGTERM.
fn unhealthy_store(label: &str, spoil: impl Fn(&std::path::Path) -> Result<()>) -> Result<()> {
    let dir = short_tempdir("hg-met-")?;
    let root = dir.path().join("sn");
    std::fs::create_dir_all(&root)?;
    spoil(&root.join("metadata.redb"))?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut sn = Snapshotter::new(&root, &dir.path().join("sn.sock"))?;
    sn.set_metrics_address(&metrics);
    let cmd: Command = sn.command(&root, sn.socket());
    let mut daemon = Daemon::spawn("hologram-snapshotter", cmd, sn.log())?;
    // Until the first open attempt fails, /healthz says "not open yet"
    // (also 503); then it must say why.
    let mut body = String::new();
    let mut seen = Vec::new();
    wait_until(
        "/healthz to report the store error",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            if let Some(s) = daemon.try_exited()? {
                anyhow::bail!("daemon exited ({s}):\n{}", tail(sn.log(), 20));
            }
            match healthz(&metrics) {
                Ok(r) => {
                    body = format!("{} {}", r.status, String::from_utf8_lossy(&r.body));
                    seen.push(r.status);
                    Ok(body.contains("metadata store cannot be opened"))
                }
                Err(_) => Ok(false),
            }
        },
    )
    .with_context(|| format!("{label}: last /healthz answer: {body}"))?;
    eprintln!("{label}: /healthz -> {body}");
    assert!(
        seen.iter().all(|s| *s == 503),
        "{label}: /healthz answered {seen:?}"
    );
    assert!(body.starts_with("503 "), "{label}: /healthz {body}");
    assert!(
        body.contains("metadata.redb"),
        "{label}: /healthz does not name the store: {body}"
    );
    // Still up, still unhealthy, after a second attempt (every 5 s).
    let log = sn.log().to_path_buf();
    hologram_e2e::util::wait_until(
        &format!("{label}: a second attempt to open the store"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            Ok(std::fs::read_to_string(&log)?
                .matches("cannot open the snapshotter root; retrying")
                .count()
                >= 2)
        },
    )?;
    assert!(daemon.try_exited()?.is_none(), "{label}: daemon gave up");
    assert_eq!(healthz(&metrics)?.status, 503);
    assert!(scrape(&metrics)?
        .family("hologram_mounted_layers")
        .is_some());
    assert!(
        !sn.socket().exists(),
        "{label}: socket served without a store"
    );
    let retries = std::fs::read_to_string(sn.log())?
        .matches("cannot open the snapshotter root; retrying")
        .count();
    assert!(retries >= 2, "{label}: {retries} retries logged");
    let status = daemon.terminate(Duration::from_secs(15))?;
    eprintln!("{label}: after SIGTERM: {status}");
    Ok(())
}

#[test]
fn healthz_is_503_while_the_store_cannot_be_opened() -> Result<()> {
    unhealthy_store("metadata.redb is a directory", |p| {
        std::fs::create_dir(p)?;
        Ok(())
    })?;
    unhealthy_store("metadata.redb is garbage", |p| {
        std::fs::write(p, vec![0x5a; 8192])?;
        Ok(())
    })
}
