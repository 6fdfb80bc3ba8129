#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

// ---------------------------------------------------------------------------
// The exposition, read by the reference parser (Python's prometheus_client).

const PARSE_SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    if fam.name in out:
        sys.exit("family declared twice: " + fam.name)
    out[fam.name] = {
        "type": fam.type,
        "samples": [[s.name, s.labels, s.value] for s in fam.samples],
    }
json.dump(out, sys.stdout)
"#;

const PYTHON_MISSING: &str = "the Python module prometheus_client is needed to check the \
    exposition format and none of $HOLOGRAM_PYTHON, python3, /usr/bin/python3 has it: install it \
    with `python3 -m pip install prometheus-client`, or on Debian/Ubuntu `apt-get install \
    python3-prometheus-client` (for /usr/bin/python3); `make dev-setup` does this";

/// The first interpreter that can import `prometheus_client.parser`.
fn python() -> String {
    let mut candidates: Vec<String> = Vec::new();
    if let Ok(p) = std::env::var("HOLOGRAM_PYTHON") {
        candidates.push(p);
    }
    candidates.push("python3".into());
    candidates.push("/usr/bin/python3".into());
    for c in candidates {
        let ok = Command::new(&c)
            .args(["-c", "import prometheus_client.parser"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return c;
        }
    }
    panic!("{PYTHON_MISSING}");
}

#[derive(Debug)]
struct Family {
    typ: String,
    /// (sample name, labels, value)
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

type Families = BTreeMap<String, Family>;

/// Parses `text` with Python's prometheus_client; panics with its error
/// output when it refuses the text.
fn parse_with_python(text: &str) -> Families {
    let mut child = Command::new(python())
        .args(["-c", PARSE_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n--- text ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut families = Families::new();
    for (name, fam) in json.as_object().unwrap() {
        let samples = fam["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s[1]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                (
                    s[0].as_str().unwrap().to_owned(),
                    labels,
                    s[2].as_f64().unwrap(),
                )
            })
            .collect();
        families.insert(
            name.clone(),
            Family {
                typ: fam["type"].as_str().unwrap().to_owned(),
                samples,
            },
        );
    }
    families
}

/// The value of the sample `name{labels}`, or None.
fn value(families: &Families, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    families
        .values()
        .flat_map(|f| f.samples.iter())
        .find(|(n, l, _)| n == name && *l == want)
        .map(|(_, _, v)| *v)
}

fn get(families: &Families, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(families, name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

/// Every family of a fresh registry, as Python names it (counters without
/// `_total`), with its type.
const SEED: &[(&str, &str)] = &[
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
    ("hologram_remote_fetch_duration_seconds", "histogram"),
    ("hologram_remote_fetches", "counter"),
    ("hologram_fetched_bytes", "counter"),
    ("hologram_cache_requests", "counter"),
    ("hologram_chunk_verification_failures", "counter"),
    ("hologram_layer_checks", "counter"),
    ("hologram_remote_fallbacks", "counter"),
    ("hologram_prefetch_profiles", "counter"),
    ("hologram_energy_hints", "gauge"),
    ("hologram_lease_duration_seconds", "gauge"),
    ("hologram_mounted_layers", "gauge"),
    ("hologram_restoring_layers", "gauge"),
    ("hologram_cache_bytes", "gauge"),
    ("hologram_cache_limit_bytes", "gauge"),
    ("hologram_prefetch_bytes", "counter"),
    ("hologram_background_fetch_bytes", "gauge"),
    ("hologram_background_pending_chunks", "gauge"),
    ("hologram_served_bytes", "counter"),
    ("hologram_cache_write_failures", "gauge"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_start_time_seconds", "gauge"),
    ("process_cpu_seconds", "counter"),
    ("process_open_fds", "gauge"),
];

#[test]
fn fresh_registry_declares_every_family() {
    let m = Metrics::new();
    let text = m.encode();
    let families = parse_with_python(&text);
    for (name, typ) in SEED {
        match families.get(*name) {
            Some(fam) => assert_eq!(fam.typ, *typ, "type of {name}"),
            None => {
                // Python yields no family without samples: such a family
                // (no event yet, no label set known in advance) must still
                // be declared.
                let suffix = if *typ == "counter" { "_total" } else { "" };
                let decl = format!("# TYPE {name}{suffix} {typ}\n");
                assert!(text.contains(&decl), "family {name} missing:\n{text}");
                assert!(!text.contains(&format!("\n{name}{suffix}{{")), "{name}");
            }
        }
    }
    // Nothing else: a sample whose name does not fit its # TYPE line would
    // show up as an extra untyped family.
    let extra: Vec<_> = families
        .keys()
        .filter(|k| !SEED.iter().any(|(n, _)| n == k))
        .collect();
    assert!(extra.is_empty(), "unexpected families {extra:?}");
    // The text names the same families, with the suffixes Prometheus wants.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        let typ = line.split_whitespace().nth(3).unwrap();
        assert_eq!(typ == "counter", name.ends_with("_total"), "{line}");
    }
    assert_eq!(
        text.lines().filter(|l| l.starts_with("# TYPE ")).count(),
        SEED.len()
    );

    // The known label sets are there with 0.
    for op in SNAPSHOTTER_OPS {
        for result in ["ok", "error"] {
            let v = get(
                &families,
                "hologram_snapshotter_operations_total",
                &[("op", op), ("result", result)],
            );
            assert_eq!(v, 0.0);
        }
        let c = get(
            &families,
            "hologram_snapshotter_operation_duration_seconds_count",
            &[("op", op)],
        );
        assert_eq!(c, 0.0);
    }
    for op in FUSE_OPS {
        assert_eq!(
            get(
                &families,
                "hologram_fuse_operations_total",
                &[("op", op), ("result", "error")]
            ),
            0.0
        );
    }
    for source in FETCH_SOURCES {
        assert_eq!(
            get(
                &families,
                "hologram_fetched_bytes_total",
                &[("source", source)]
            ),
            0.0
        );
        assert_eq!(
            get(
                &families,
                "hologram_remote_fetch_duration_seconds_count",
                &[("source", source)]
            ),
            0.0
        );
    }
    for reason in FALLBACK_REASONS {
        assert_eq!(
            get(
                &families,
                "hologram_remote_fallbacks_total",
                &[("reason", reason)]
            ),
            0.0
        );
    }
    assert_eq!(
        get(
            &families,
            "hologram_cache_requests_total",
            &[("result", "hit")]
        ),
        0.0
    );
    assert_eq!(
        get(
            &families,
            "hologram_cache_requests_total",
            &[("result", "miss")]
        ),
        0.0
    );
    assert_eq!(
        get(&families, "hologram_chunk_verification_failures_total", &[]),
        0.0
    );
    assert_eq!(get(&families, "hologram_fuse_read_bytes_total", &[]), 0.0);
    assert_eq!(get(&families, "hologram_mounted_layers", &[]), 0.0);
    assert_eq!(get(&families, "hologram_served_bytes_total", &[]), 0.0);
    assert_eq!(get(&families, "hologram_lease_duration_seconds", &[]), 0.0);
    assert!(get(&families, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(get(&families, "process_start_time_seconds", &[]) > 1.0e9);
}

#[test]
fn counters_move_by_what_was_recorded() {
    let m = Metrics::new();
    m.snapshotter_op("prepare", RESULT_OK, 0.003);
    m.snapshotter_op("prepare", RESULT_OK, 0.004);
    m.snapshotter_op("commit", RESULT_ERROR, 1.5);
    m.fuse_op("lookup", "ok");
    m.fuse_op("lookup", "ok");
    m.fuse_op("getattr", "error");
    m.fuse_read(0.002, 4096, "ok");
    m.fuse_read(0.5, 100, "ok");
    m.fuse_read(0.001, 0, "error");
    m.resolver_op("resolve", "ok");
    m.witness_op("verify", "error");
    m.ctp96_op("fetch", "ok");
    let h = m.fuse_handles(&[]);
    h.fetch("registry", 0.2, 1000, true);
    h.fetch("registry", 0.3, 24, true);
    h.fetch("ctp96", 2.0, 0, false);
    m.cache_lookup(true);
    m.cache_lookup(true);
    m.cache_lookup(true);
    m.cache_lookup(false);
    h.verification_failure();
    m.fallback("not_estargz");
    m.fallback("not_estargz");
    m.fallback("sha256:4f1c9b3e0d...: the blob is gone");
    m.set_energy_hint("joules_per_byte", 0.5);
    m.set_lease_duration(3600.0);
    // A digest as an op name must not become a label value.
    m.snapshotter_op(
        "sha256:0123456789abcdef0123456789abcdef0123456789abcdef",
        "ok",
        0.1,
    );
    m.set_collector(Box::new(|s: &mut GaugeSnapshot| {
        s.mounted_layers = 3;
        s.cache_bytes = 1 << 20;
        s.cache_limit_bytes = 1 << 30;
        s.prefetch_bytes = 777;
        s.background_fetch_bytes = 888;
        s.background_pending_chunks = 9;
        s.bytes_served = 123_456;
        s.cache_write_failures = 4;
    }));

    let text = m.encode();
    let f = parse_with_python(&text);
    let ops = "hologram_snapshotter_operations_total";
    assert_eq!(get(&f, ops, &[("op", "prepare"), ("result", "ok")]), 2.0);
    assert_eq!(get(&f, ops, &[("op", "prepare"), ("result", "error")]), 0.0);
    assert_eq!(get(&f, ops, &[("op", "commit"), ("result", "error")]), 1.0);
    assert_eq!(get(&f, ops, &[("op", "other"), ("result", "ok")]), 1.0);
    assert!(
        !text.contains("sha256"),
        "a digest leaked into a label:\n{text}"
    );
    let dur = "hologram_snapshotter_operation_duration_seconds";
    assert_eq!(get(&f, &format!("{dur}_count"), &[("op", "prepare")]), 2.0);
    assert!((get(&f, &format!("{dur}_sum"), &[("op", "prepare")]) - 0.007).abs() < 1e-9);
    assert_eq!(
        get(
            &f,
            &format!("{dur}_bucket"),
            &[("op", "prepare"), ("le", "0.0025")]
        ),
        0.0
    );
    assert_eq!(
        get(
            &f,
            &format!("{dur}_bucket"),
            &[("op", "prepare"), ("le", "0.005")]
        ),
        2.0
    );
    assert_eq!(
        get(
            &f,
            &format!("{dur}_bucket"),
            &[("op", "commit"), ("le", "1")]
        ),
        0.0
    );
    assert_eq!(
        get(
            &f,
            &format!("{dur}_bucket"),
            &[("op", "commit"), ("le", "+Inf")]
        ),
        1.0
    );

    let fuse = "hologram_fuse_operations_total";
    assert_eq!(get(&f, fuse, &[("op", "lookup"), ("result", "ok")]), 2.0);
    assert_eq!(
        get(&f, fuse, &[("op", "getattr"), ("result", "error")]),
        1.0
    );
    assert_eq!(get(&f, "hologram_fuse_read_bytes_total", &[]), 4196.0);
    let rd = "hologram_fuse_read_duration_seconds";
    assert_eq!(get(&f, &format!("{rd}_count"), &[("result", "ok")]), 2.0);
    assert_eq!(get(&f, &format!("{rd}_count"), &[("result", "error")]), 1.0);
    assert_eq!(
        get(
            &f,
            &format!("{rd}_bucket"),
            &[("result", "ok"), ("le", "0.0025")]
        ),
        1.0
    );

    assert_eq!(
        get(
            &f,
            "hologram_resolver_operations_total",
            &[("op", "resolve"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &f,
            "hologram_witness_operations_total",
            &[("op", "verify"), ("result", "error")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &f,
            "hologram_ctp96_operations_total",
            &[("op", "fetch"), ("result", "ok")]
        ),
        1.0
    );

    assert_eq!(
        get(
            &f,
            "hologram_fetched_bytes_total",
            &[("source", "registry")]
        ),
        1024.0
    );
    assert_eq!(
        get(&f, "hologram_fetched_bytes_total", &[("source", "cache")]),
        0.0
    );
    assert_eq!(
        get(&f, "hologram_fetched_bytes_total", &[("source", "ctp96")]),
        0.0
    );
    let fd = "hologram_remote_fetch_duration_seconds";
    assert_eq!(
        get(&f, &format!("{fd}_count"), &[("source", "registry")]),
        2.0
    );
    assert!((get(&f, &format!("{fd}_sum"), &[("source", "registry")]) - 0.5).abs() < 1e-9);
    let fetches = "hologram_remote_fetches_total";
    assert_eq!(
        get(&f, fetches, &[("source", "registry"), ("result", "ok")]),
        2.0
    );
    assert_eq!(
        get(&f, fetches, &[("source", "ctp96"), ("result", "error")]),
        1.0
    );

    assert_eq!(
        get(&f, "hologram_cache_requests_total", &[("result", "hit")]),
        3.0
    );
    assert_eq!(
        get(&f, "hologram_cache_requests_total", &[("result", "miss")]),
        1.0
    );
    assert_eq!(
        get(&f, "hologram_chunk_verification_failures_total", &[]),
        1.0
    );
    assert_eq!(
        get(
            &f,
            "hologram_remote_fallbacks_total",
            &[("reason", "not_estargz")]
        ),
        2.0
    );
    assert_eq!(
        get(
            &f,
            "hologram_remote_fallbacks_total",
            &[("reason", "other")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &f,
            "hologram_remote_fallbacks_total",
            &[("reason", "fetch_error")]
        ),
        0.0
    );
    assert_eq!(
        get(&f, "hologram_energy_hints", &[("hint", "joules_per_byte")]),
        0.5
    );
    assert_eq!(get(&f, "hologram_lease_duration_seconds", &[]), 3600.0);

    assert_eq!(get(&f, "hologram_mounted_layers", &[]), 3.0);
    assert_eq!(get(&f, "hologram_cache_bytes", &[]), 1048576.0);
    assert_eq!(get(&f, "hologram_cache_limit_bytes", &[]), 1073741824.0);
    assert_eq!(get(&f, "hologram_prefetch_bytes_total", &[]), 777.0);
    assert_eq!(get(&f, "hologram_background_fetch_bytes", &[]), 888.0);
    assert_eq!(get(&f, "hologram_background_pending_chunks", &[]), 9.0);
    assert_eq!(get(&f, "hologram_served_bytes_total", &[]), 123456.0);
    assert_eq!(get(&f, "hologram_cache_write_failures", &[]), 4.0);

    // Counting again moves only what was counted.
    m.cache_lookup(false);
    let f2 = parse_with_python(&m.encode());
    assert_eq!(
        get(&f2, "hologram_cache_requests_total", &[("result", "miss")]),
        2.0
    );
    assert_eq!(
        get(&f2, "hologram_cache_requests_total", &[("result", "hit")]),
        3.0
    );
}

#[test]
fn label_values_are_kept_small() {
    assert_eq!(label_value("prepare"), "prepare");
    assert_eq!(label_value("not_estargz"), "not_estargz");
    assert_eq!(label_value("v1.2-x"), "v1.2-x");
    assert_eq!(label_value(""), OTHER);
    assert_eq!(label_value("sha256:abcd"), OTHER);
    assert_eq!(label_value("a b"), OTHER);
    assert_eq!(label_value("x\"y"), OTHER);
    assert_eq!(label_value(&"a".repeat(41)), OTHER);
    assert_eq!(label_value(&"a".repeat(40)), "a".repeat(40));
}

#[test]
fn parse_listen_cases() {
    assert_eq!(parse_listen("off").unwrap(), None);
    assert_eq!(parse_listen(" OFF ").unwrap(), None);
    assert_eq!(
        parse_listen("127.0.0.1:8080").unwrap(),
        Some("127.0.0.1:8080".parse().unwrap())
    );
    assert_eq!(
        parse_listen("0.0.0.0:9100").unwrap(),
        Some("0.0.0.0:9100".parse().unwrap())
    );
    assert_eq!(
        parse_listen("[::1]:8080").unwrap(),
        Some("[::1]:8080".parse().unwrap())
    );
    assert_eq!(
        parse_listen("localhost:8081").unwrap(),
        Some("127.0.0.1:8081".parse().unwrap())
    );
    assert_eq!(
        parse_listen(DEFAULT_METRICS_ADDRESS).unwrap(),
        Some("127.0.0.1:8080".parse().unwrap())
    );

    let e = parse_listen(":8080").unwrap_err().to_string();
    assert!(
        e.contains("0.0.0.0:8080") && e.contains("127.0.0.1:8080"),
        "{e}"
    );
    let e = parse_listen("8080").unwrap_err().to_string();
    assert!(e.contains("0.0.0.0:8080"), "{e}");
    for bad in [
        "",
        "example.com:8080",
        "127.0.0.1",
        "127.0.0.1:99999",
        "localhost:x",
        "on",
    ] {
        let e = parse_listen(bad).unwrap_err();
        assert!(
            matches!(e, TelemetryError::InvalidAddress { .. }),
            "{bad:?}: {e}"
        );
    }
}

// ---------------------------------------------------------------------------
// The HTTP endpoint.

/// A plain HTTP/1.1 GET: (status, content type, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ctype, body.to_owned())
}

#[tokio::test]
async fn serves_metrics_and_health() {
    let metrics = Metrics::new();
    metrics.cache_lookup(true);
    metrics.set_collector(Box::new(|s: &mut GaugeSnapshot| s.mounted_layers = 2));
    let healthy = Arc::new(AtomicBool::new(true));
    let h = Arc::clone(&healthy);
    let health: HealthCheck = Arc::new(move || {
        if h.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("the store is not open".to_owned())
        }
    });
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(
        listener,
        Arc::clone(&metrics),
        health,
        async move {
            let _ = stopped.await;
        },
    ));

    let (status, ctype, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(ctype, CONTENT_TYPE);
    assert!(
        body.contains("# TYPE hologram_mounted_layers gauge\nhologram_mounted_layers 2\n"),
        "{body}"
    );
    let f = parse_with_python(&body);
    assert_eq!(
        get(&f, "hologram_cache_requests_total", &[("result", "hit")]),
        1.0
    );

    let (status, _, body) = http_get(addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    healthy.store(false, Ordering::SeqCst);
    let (status, _, body) = http_get(addr, "/healthz").await;
    assert_eq!(status, 503);
    assert!(body.contains("the store is not open"), "{body}");

    let (status, _, _) = http_get(addr, "/nope").await;
    assert_eq!(status, 404);

    stop.send(()).unwrap();
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), server).await;
    assert!(
        matches!(out, Ok(Ok(Ok(())))),
        "server did not stop cleanly: {out:?}"
    );
}

#[tokio::test]
async fn a_taken_port_is_a_bind_error() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let health: HealthCheck = Arc::new(|| Ok(()));
    let err = serve(addr, Metrics::new(), health, std::future::pending())
        .await
        .unwrap_err();
    match &err {
        TelemetryError::Bind { addr: a, source } => {
            assert_eq!(*a, addr);
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        }
        other => panic!("expected Bind, got {other:?}"),
    }
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(matches!(bind(addr).await, Err(TelemetryError::Bind { .. })));
}

// ---------------------------------------------------------------------------
// The shipped dashboard only queries series that the daemon exports.

const DASHBOARD: &str = include_str!("../../../packaging/grafana-dashboard.json");

/// Every `hologram_*` / `process_*` identifier in `text`.
fn metric_names(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &text[i..];
        if at_word_start && (rest.starts_with("hologram_") || rest.starts_with("process_")) {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(&rest[..len]);
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn dashboard_queries_exported_series() {
    let dash: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is not valid JSON");
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    let m = Metrics::new();
    let text = m.encode();
    let names = metric_names(DASHBOARD);
    assert!(names.len() > 20, "{names:?}");
    for name in names {
        let exported = text.lines().filter(|l| !l.starts_with('#')).any(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))
        });
        assert!(
            exported,
            "the dashboard queries {name}, which /metrics does not have"
        );
    }
}

// ---------------------------------------------------------------------------
// The node's page and its JSON API.

/// A raw HTTP/1.1 request: (status, head, body).
async fn http_raw(addr: SocketAddr, method: &str, path: &str, host: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// A registry with some traffic and a daemon callback that describes one
/// image with a lazy and an unpacked layer.
fn busy_node() -> Arc<Metrics> {
    let m = Metrics::new();
    let h = m.fuse_handles(&["read"]);
    h.fetch("registry", 0.1, 3000, true);
    h.fetch("registry", 0.1, 0, false);
    h.read(0.001, 4096, true);
    m.cache_lookup(true);
    m.cache_lookup(true);
    m.cache_lookup(true);
    m.cache_lookup(false);
    h.verification_failure();
    m.layer_check("verified");
    m.fallback("not_estargz");
    m.snapshotter_op("prepare", "ok", 0.01);
    m.snapshotter_op("prepare", "already_exists", 0.01);
    m.set_node_collector(Box::new(|s: &mut api::NodeState| {
        s.daemon_version = "9.9.9".into();
        s.mounted_layers = 1;
        s.cache.bytes = 100;
        s.cache.limit_bytes = 1000;
        s.images.push(api::ImageState {
            reference: "127.0.0.1:5000/e2e/x:1".into(),
            manifest_digest: Some(format!("sha256:{}", "a".repeat(64))),
            layers: vec![
                api::LayerState {
                    digest: format!("sha256:{}", "b".repeat(64)),
                    size: 5000,
                    mode: api::LayerMode::Lazy,
                    demand_bytes: 3000,
                    check: Some("pending".into()),
                    ..Default::default()
                },
                api::LayerState {
                    digest: format!("sha256:{}", "c".repeat(64)),
                    size: 700,
                    mode: api::LayerMode::Unpacked,
                    fallback: Some(api::FallbackInfo {
                        category: "not_estargz".into(),
                        reason: "no TOC digest annotation".into(),
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
    }));
    m
}

#[test]
fn node_state_counts_what_the_registry_counted_and_what_the_daemon_said() {
    let m = busy_node();
    let s = m.node_state();
    assert_eq!(s.api_version, api::API_VERSION);
    assert_eq!(s.daemon_version, "9.9.9");
    assert_eq!(s.transfer.fetched_bytes.get("registry"), Some(&3000));
    assert_eq!(s.transfer.fetched_bytes.get("ctp96"), Some(&0));
    assert_eq!(s.transfer.fetch_errors.get("registry"), Some(&1));
    assert_eq!(s.transfer.read_bytes, 4096);
    assert_eq!((s.cache.hits, s.cache.misses), (3, 1));
    assert_eq!(s.cache.hit_ratio, Some(0.75));
    assert_eq!(s.cache.bytes, 100);
    assert_eq!(s.checks.chunk_verification_failures, 1);
    assert_eq!((s.checks.layers_verified, s.checks.layers_bad), (1, 0));
    assert_eq!(
        s.checks.fallbacks,
        BTreeMap::from([("not_estargz".to_owned(), 1)])
    );
    assert_eq!(
        s.operations.get("prepare"),
        Some(&api::OpCount { ok: 1, errors: 1 })
    );
    assert!(s.ctp96.is_none(), "no CTP-96 series: no CTP-96 section");
    assert!(s.generated_at > 1.6e9 && s.uptime_seconds >= 0.0);
    assert!(s.resident_bytes > 0);
    assert_eq!(s.images[0].layers[0].fetched_bytes(), 3000);

    // A fresh registry: no lookups, no ratio.
    assert_eq!(Metrics::new().node_state().cache.hit_ratio, None);

    // CTP-96 series make the section appear, with the hints and the lease.
    m.declare_ctp96_op("fetch", "ok");
    m.ctp96_op("session_open", "ok");
    m.set_energy_hint("load", 0.5);
    m.set_lease_duration(300.0);
    let c = m.node_state().ctp96.unwrap();
    assert_eq!(c.operations.get("fetch/ok"), Some(&0));
    assert_eq!(c.operations.get("session_open/ok"), Some(&1));
    assert_eq!(c.hints.get("load"), Some(&0.5));
    assert_eq!(c.lease_seconds, 300.0);
    // and the series are the registry's own
    assert!(m
        .encode()
        .contains("hologram_ctp96_operations_total{op=\"session_open\",result=\"ok\"} 1"));
}

/// The JSON API's shape, field by field: what `hologram status` and the
/// page read. A renamed field fails here.
#[test]
fn node_json_shape() {
    let v: Value = serde_json::to_value(busy_node().node_state()).unwrap();
    for key in [
        "api_version",
        "daemon_version",
        "generated_at",
        "uptime_seconds",
        "resident_bytes",
        "images",
        "mounted_layers",
        "cache",
        "transfer",
        "checks",
        "trust",
        "ctp96",
        "throughput",
        "warnings",
        "operations",
    ] {
        assert!(v.get(key).is_some(), "no {key} in {v:#}");
    }
    assert_eq!(v["api_version"], 1);
    assert_eq!(v["cache"]["hit_ratio"], 0.75);
    assert_eq!(v["transfer"]["fetched_bytes"]["registry"], 3000);
    assert_eq!(v["checks"]["fallbacks"]["not_estargz"], 1);
    assert_eq!(v["operations"]["prepare"]["ok"], 1);
    let img = &v["images"][0];
    assert_eq!(img["reference"], "127.0.0.1:5000/e2e/x:1");
    assert!(img["trust"].is_null());
    let lazy = &img["layers"][0];
    assert_eq!(lazy["mode"], "lazy");
    assert_eq!(lazy["size"], 5000);
    assert_eq!(lazy["demand_bytes"], 3000);
    assert_eq!(lazy["check"], "pending");
    let unpacked = &img["layers"][1];
    assert_eq!(unpacked["mode"], "unpacked");
    assert_eq!(unpacked["fallback"]["category"], "not_estargz");
    assert_eq!(unpacked["fallback"]["reason"], "no TOC digest annotation");
    // Round trip, and a newer daemon's extra fields do not break a reader.
    let back: api::NodeState = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(back, busy_node().node_state_without_clock(&back));
    let mut newer = v;
    newer["a_field_from_the_future"] = Value::Bool(true);
    newer["images"][0]["layers"][0]["another"] = Value::from(1);
    let parsed: api::NodeState = serde_json::from_value(newer).unwrap();
    assert_eq!(parsed.images[0].layers[0].mode, api::LayerMode::Lazy);
}

impl Metrics {
    /// The node state with the clock fields of `like` (for comparisons).
    fn node_state_without_clock(&self, like: &api::NodeState) -> api::NodeState {
        api::NodeState {
            generated_at: like.generated_at,
            uptime_seconds: like.uptime_seconds,
            resident_bytes: like.resident_bytes,
            // process-wide: other tests add to them meanwhile
            warnings: like.warnings.clone(),
            throughput: like.throughput.clone(),
            ..self.node_state()
        }
    }
}

#[test]
fn the_page_has_no_inline_script_style_or_handler_and_the_script_parses_no_html() {
    let html = ui::INDEX_HTML;
    // Every <script> has a src, and no element has an event handler or a
    // style attribute (the CSP would block them; keep the page honest).
    for (i, _) in html.match_indices("<script") {
        let tag = &html[i..i + html[i..].find('>').unwrap()];
        assert!(tag.contains("src=\"/ui.js\""), "inline script: {tag}");
    }
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains(" style="), "inline style attribute");
    assert!(!lower.contains("<style"), "inline style element");
    for attr in [" onload=", " onclick=", " onerror=", "javascript:"] {
        assert!(!lower.contains(attr), "{attr} in the page");
    }
    assert!(
        !lower.contains("http://") && !lower.contains("https://"),
        "external asset"
    );
    // The script builds the DOM from text nodes only.
    let code: String = ui::UI_JS
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "DOMParser",
        "createContextualFragment",
        "srcdoc",
    ] {
        assert!(!code.contains(sink), "{sink} in ui.js");
    }
    assert!(code.contains(api::NODE_PATH), "the script reads the API");
    assert!(!ui::UI_CSS.contains("url("), "no external style resource");
}

#[tokio::test]
async fn serves_the_page_and_the_api_with_a_strict_policy() {
    let metrics = busy_node();
    let health: HealthCheck = Arc::new(|| Ok(()));
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(listener, metrics, health, async move {
        let _ = stopped.await;
    }));
    let host = addr.to_string();
    for (path, ctype, needle) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<script src=\"/ui.js\" defer>",
        ),
        ("/ui.js", "text/javascript; charset=utf-8", "textContent"),
        ("/ui.css", "text/css; charset=utf-8", "progress"),
        ("/ui", "text/html; charset=utf-8", "/api/v1/node"),
        ("/favicon.svg", "image/svg+xml", "<svg"),
        ("/api/v1/node", "application/json", "\"api_version\":1"),
    ] {
        let (status, head, body) = http_raw(addr, "GET", path, &host).await;
        assert_eq!(status, 200, "{path}: {head}");
        assert_eq!(header(&head, "content-type"), Some(ctype), "{path}");
        assert_eq!(
            header(&head, "content-security-policy"),
            Some(ui::CONTENT_SECURITY_POLICY),
            "{path}"
        );
        let csp = ui::CONTENT_SECURITY_POLICY;
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
        assert!(csp.contains("default-src 'none'"));
        assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
        assert_eq!(header(&head, "x-frame-options"), Some("deny"));
        assert_eq!(header(&head, "referrer-policy"), Some("no-referrer"));
        assert!(body.contains(needle), "{path}: no {needle:?}");
    }
    let (_, head, body) = http_raw(addr, "GET", "/api/v1/node", "localhost:1").await;
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["images"][0]["layers"][1]["mode"], "unpacked");

    // Read-only.
    for method in ["POST", "PUT", "DELETE"] {
        let (status, _, _) = http_raw(addr, method, "/api/v1/node", &host).await;
        assert_eq!(status, 405, "{method}");
    }
    // DNS rebinding: a page of another site that resolves to 127.0.0.1
    // sends its own name as Host; the page, the API and the metrics (image
    // names are in the series) refuse it; /healthz says only ok.
    for path in ["/", "/api/v1/node", "/ui.js", "/metrics"] {
        let (status, _, body) = http_raw(addr, "GET", path, "evil.example:8080").await;
        assert_eq!(status, 421, "{path}");
        assert!(!body.contains("e2e/x"), "{path}: {body}");
    }
    let (status, _, _) = http_raw(addr, "GET", "/metrics", "127.0.0.1:9").await;
    assert_eq!(status, 200);
    stop.send(()).unwrap();
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), server).await;
    assert!(matches!(out, Ok(Ok(Ok(())))), "{out:?}");
}

#[test]
fn local_hosts() {
    for ok in [
        "127.0.0.1:8080",
        "127.0.0.1",
        "127.1.2.3:1",
        "localhost",
        "LOCALHOST:8080",
        "[::1]:8080",
        "[::1]",
    ] {
        assert!(ui::is_local_host(ok), "{ok}");
    }
    for bad in [
        "",
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
        "10.0.0.1:8080",
        "[::2]:80",
        "[::1]x",
        "127.0.0.1:80:80",
        "127.0.0.1:http",
    ] {
        assert!(!ui::is_local_host(bad), "{bad}");
    }
}
