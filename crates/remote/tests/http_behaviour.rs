//! Behaviours a real registry cannot be made to show, against a
//! hand-written HTTP/1.1 server: token auth and refresh, redirects, servers
//! that ignore Range, hangs, wrong bytes, 5xx, mirrors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use hologram_remote::{Digest, Error, Reference, RegistryBlob, RegistryClient, RegistryConfig};
use hologram_source::BlobSource;

const REPO: &str = "test/repo";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn reference(host: &str) -> Reference {
    Reference::parse(&format!("{host}/{REPO}:latest")).unwrap()
}

fn blob_path(digest: &Digest) -> String {
    format!("/v2/{REPO}/blobs/{digest}")
}

fn client(cfg: RegistryConfig) -> RegistryClient {
    RegistryClient::new(cfg).unwrap()
}

#[derive(Default)]
struct TokenState {
    valid: HashSet<String>,
    issued: usize,
    expires_in: u64,
}

/// A registry requiring bearer tokens from its own /token endpoint, which
/// wants basic credentials user:pass.
async fn token_registry(data: Arc<Vec<u8>>, state: Arc<Mutex<TokenState>>) -> MockServer {
    MockServer::start(move |req| {
        let host = req.header("host").unwrap_or("").to_string();
        if req.path() == "/token" {
            let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("user:pass"));
            if req.header("authorization") != Some(want.as_str()) {
                return Reply::status(401);
            }
            let mut st = state.lock().unwrap();
            st.issued += 1;
            let t = format!("tok-{}", st.issued);
            st.valid.insert(t.clone());
            return Reply::json(200, &serde_json::json!({"token": t, "expires_in": st.expires_in}));
        }
        let ok = req
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| state.lock().unwrap().valid.contains(t));
        if !ok {
            return Reply::status(401)
                .header(
                    "WWW-Authenticate",
                    &format!("Bearer realm=\"http://{host}/token\",service=\"mock-registry\",scope=\"repository:{REPO}:pull\""),
                )
                .body(r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#);
        }
        serve_range(req, &data)
    })
    .await
}

#[tokio::test]
async fn bearer_token_is_fetched_cached_and_refreshed_mid_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Arc::new(pseudo_random(300_000, 1));
    let digest = Digest::of(&data);
    let state = Arc::new(Mutex::new(TokenState {
        expires_in: 300,
        ..Default::default()
    }));
    let srv = token_registry(data.clone(), state.clone()).await;
    let mut cfg = test_config(tmp.path());
    cfg.docker_config = Some(write_docker_config(tmp.path(), &srv.host(), "user", "pass"));
    let c = client(cfg);
    let r = reference(&srv.host());
    let blob = RegistryBlob::new(c.clone(), r.clone(), digest, data.len() as u64);

    assert_eq!(&blob.read_at(0, 100).await.unwrap()[..], &data[0..100]);
    let unauthorized =
        |s: &MockServer| s.count(|q| q.path() != "/token" && q.header("authorization").is_none());
    let token_reqs = |s: &MockServer| s.count(|q| q.path() == "/token");
    assert_eq!(unauthorized(&srv), 1);
    assert_eq!(token_reqs(&srv), 1);
    let tr = srv
        .requests()
        .into_iter()
        .find(|q| q.path() == "/token")
        .unwrap();
    assert_eq!(tr.query("service"), vec!["mock-registry".to_string()]);
    assert_eq!(tr.query("scope"), vec![format!("repository:{REPO}:pull")]);
    assert_eq!(tr.query("account"), vec!["user".to_string()]);

    // Cached: no new challenge, no new token.
    assert_eq!(
        &blob.read_at(1000, 5000).await.unwrap()[..],
        &data[1000..6000]
    );
    assert_eq!(token_reqs(&srv), 1);
    let total_before = srv.requests().len();

    // The token expires server-side: the next read gets a 401 with the old
    // token, re-authenticates once and succeeds.
    state.lock().unwrap().valid.clear();
    assert_eq!(
        &blob.read_at(250_000, 50_000).await.unwrap()[..],
        &data[250_000..]
    );
    assert_eq!(token_reqs(&srv), 2);
    assert_eq!(srv.requests().len(), total_before + 3); // 401, token, retry

    // Many concurrent readers hitting the expiry share one token request.
    state.lock().unwrap().valid.clear();
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let b = blob.clone();
        tasks.push(tokio::spawn(async move { b.read_at(i * 1000, 1000).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap().unwrap();
        assert_eq!(&got[..], &data[i * 1000..(i + 1) * 1000]);
    }
    assert_eq!(token_reqs(&srv), 3);
    assert_eq!(state.lock().unwrap().issued, 3);
}

#[tokio::test]
async fn short_lived_token_is_renewed_before_it_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Arc::new(pseudo_random(10_000, 2));
    let digest = Digest::of(&data);
    let state = Arc::new(Mutex::new(TokenState {
        expires_in: 1,
        ..Default::default()
    }));
    let srv = token_registry(data.clone(), state.clone()).await;
    let mut cfg = test_config(tmp.path());
    cfg.docker_config = Some(write_docker_config(tmp.path(), &srv.host(), "user", "pass"));
    let c = client(cfg);
    let r = reference(&srv.host());
    c.read_range(&r, &digest, 0, 10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.read_range(&r, &digest, 10, 10).await.unwrap();
    // The second token was fetched proactively: still only one 401.
    assert_eq!(srv.count(|q| q.path() == "/token"), 2);
    assert_eq!(
        srv.count(|q| q.path() != "/token" && q.header("authorization").is_none()),
        1
    );
}

#[tokio::test]
async fn wrong_credentials_are_unauthorized_without_retries() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Arc::new(pseudo_random(100, 3));
    let state = Arc::new(Mutex::new(TokenState {
        expires_in: 60,
        ..Default::default()
    }));
    let srv = token_registry(data.clone(), state).await;
    let mut cfg = test_config(tmp.path());
    cfg.docker_config = Some(write_docker_config(
        tmp.path(),
        &srv.host(),
        "user",
        "wrong",
    ));
    let c = client(cfg);
    let err = c
        .read_range(&reference(&srv.host()), &Digest::of(&data), 0, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err}");
    assert_eq!(srv.requests().len(), 2); // the 401 and the refused token request
}

#[tokio::test]
async fn basic_challenge_sends_configured_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Arc::new(pseudo_random(5000, 4));
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
    );
    let d2 = data.clone();
    let srv = MockServer::start(move |req| {
        if req.header("authorization") != Some(want.as_str()) {
            return Reply::status(401).header("WWW-Authenticate", "Basic realm=\"registry\"");
        }
        serve_range(req, &d2)
    })
    .await;
    let digest = Digest::of(&data);

    // Without credentials: Unauthorized after the one challenge.
    let anon = client(test_config(tmp.path()));
    let err = anon
        .read_range(&reference(&srv.host()), &digest, 0, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err}");
    assert_eq!(srv.requests().len(), 1);

    let mut cfg = test_config(tmp.path());
    cfg.docker_config = Some(write_docker_config(
        tmp.path(),
        &srv.host(),
        "alice",
        "s3cret",
    ));
    let c = client(cfg);
    let r = reference(&srv.host());
    assert_eq!(
        &c.read_range(&r, &digest, 10, 20).await.unwrap()[..],
        &data[10..30]
    );
    assert_eq!(
        &c.fetch_blob(&r, &digest, 1 << 20).await.unwrap()[..],
        &data[..]
    );
    // 1 (anon) + 401 + retry + proactive basic for the second call.
    assert_eq!(srv.requests().len(), 4);
}

#[tokio::test]
async fn redirects_keep_range_and_drop_authorization() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Arc::new(pseudo_random(100_000, 5));
    let digest = Digest::of(&data);
    let d2 = data.clone();
    let storage = MockServer::start(move |req| serve_range(req, &d2)).await;
    let storage_host = storage.host();
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("u:p")
    );
    let dg = digest;
    let registry = MockServer::start(move |req| {
        if req.header("authorization") != Some(want.as_str()) {
            return Reply::status(401).header("WWW-Authenticate", "Basic realm=\"r\"");
        }
        if req.path() == blob_path(&dg) {
            return Reply::status(307).header(
                "Location",
                &format!("http://{storage_host}/store/{dg}?sig=secret"),
            );
        }
        Reply::status(404)
    })
    .await;
    let mut cfg = test_config(tmp.path());
    cfg.docker_config = Some(write_docker_config(tmp.path(), &registry.host(), "u", "p"));
    let c = client(cfg);
    let r = reference(&registry.host());

    assert_eq!(
        &c.read_range(&r, &digest, 10, 20).await.unwrap()[..],
        &data[10..30]
    );
    assert_eq!(
        &c.fetch_blob(&r, &digest, 1 << 20).await.unwrap()[..],
        &data[..]
    );
    assert_eq!(c.blob_size(&r, &digest).await.unwrap(), data.len() as u64);

    let seen = storage.requests();
    assert_eq!(seen.len(), 3);
    for q in &seen {
        assert!(
            q.header("authorization").is_none(),
            "Authorization leaked to storage: {q:?}"
        );
        assert_eq!(q.query("sig"), vec!["secret".to_string()]);
    }
    assert_eq!(seen[0].header("range"), Some("bytes=10-29"));
    assert_eq!(seen[1].header("range"), None);
    assert_eq!(seen[2].method, "HEAD");
}

#[tokio::test]
async fn server_ignoring_range_is_sliced_but_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Arc::new(pseudo_random(50_000, 6));
    let digest = Digest::of(&data);
    let d2 = data.clone();
    let srv = MockServer::start(move |_req| Reply::status(200).body(d2.to_vec())).await;
    let c = client(test_config(tmp.path()));
    let r = reference(&srv.host());
    for (off, len) in [(0u64, 1u64), (0, 50_000), (12_345, 678), (49_999, 1)] {
        let got = c.read_range(&r, &digest, off, len).await.unwrap();
        assert_eq!(&got[..], &data[off as usize..(off + len) as usize]);
    }
    let err = c.read_range(&r, &digest, 49_999, 2).await.unwrap_err();
    assert!(matches!(err, Error::OutOfRange(_)), "{err}");

    // A huge blob sent whole is refused after the headers, without retrying.
    let huge = MockServer::start(|_req| {
        Reply::status(200)
            .header("Content-Length", &(65u64 << 20).to_string())
            .body(vec![0u8; 1024])
    })
    .await;
    let err = c
        .read_range(&reference(&huge.host()), &digest, 0, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    assert_eq!(huge.requests().len(), 1);
}

#[tokio::test]
async fn silent_server_fails_within_total_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = MockServer::start(|_req| Reply::Hang).await;
    let mut cfg = test_config(tmp.path());
    cfg.request_timeout = Duration::from_secs(10);
    cfg.total_timeout = Duration::from_millis(1500);
    let c = client(cfg);
    let r = reference(&srv.host());
    let digest = Digest::of(b"whatever");

    let start = Instant::now();
    let err = c.read_range(&r, &digest, 0, 4096).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    assert!(err.is_retryable());
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "{took:?}"
    );

    let blob = RegistryBlob::new(c.clone(), r.clone(), digest, 1 << 20);
    let start = Instant::now();
    assert!(matches!(
        blob.read_at(100, 100).await,
        Err(hologram_source::SourceError::Unavailable(_))
    ));
    assert!(start.elapsed() < Duration::from_secs(5));

    let start = Instant::now();
    assert!(matches!(c.fetch_manifest(&r).await, Err(Error::Timeout(_))));
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn per_attempt_timeout_then_retry_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Arc::new(pseudo_random(1000, 7));
    let n = Arc::new(AtomicUsize::new(0));
    let (d2, n2) = (data.clone(), n.clone());
    let srv = MockServer::start(move |req| {
        if n2.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Hang
        } else {
            serve_range(req, &d2)
        }
    })
    .await;
    let mut cfg = test_config(tmp.path());
    cfg.request_timeout = Duration::from_millis(500);
    cfg.total_timeout = Duration::from_secs(5);
    let c = client(cfg);
    let start = Instant::now();
    let got = c
        .read_range(&reference(&srv.host()), &Digest::of(&data), 5, 10)
        .await
        .unwrap();
    assert_eq!(&got[..], &data[5..15]);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(n.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connection_refused_gives_transport_error_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = test_config(tmp.path());
    cfg.retries = 2;
    let c = client(cfg);
    let r = reference(&format!("127.0.0.1:{}", dead_port()));
    let start = Instant::now();
    let err = c.read_range(&r, &Digest::of(b"x"), 0, 1).await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn manifest_bytes_are_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let good = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec();
    let good_digest = Digest::of(&good);
    let evil = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"evil":1},"layers":[]}"#.to_vec();
    let (g, gd) = (good.clone(), good_digest);
    let srv = MockServer::start(move |req| {
        let p = req.path();
        if p.ends_with("/manifests/good") {
            Reply::status(200)
                .header("Content-Type", OCI_MANIFEST)
                .header("Docker-Content-Digest", &gd.to_string())
                .body(g.clone())
        } else if p.ends_with("/manifests/lying") {
            // Docker-Content-Digest names other content.
            Reply::status(200)
                .header("Content-Type", OCI_MANIFEST)
                .header("Docker-Content-Digest", &gd.to_string())
                .body(evil.clone())
        } else if p.contains("/manifests/sha256:") {
            // Wrong bytes for any digest.
            Reply::status(200)
                .header("Content-Type", OCI_MANIFEST)
                .body(evil.clone())
        } else {
            Reply::status(404)
        }
    })
    .await;
    let c = client(test_config(tmp.path()));
    let base = reference(&srv.host());

    let m = c.fetch_manifest(&base.with_tag("good")).await.unwrap();
    assert_eq!(&m.bytes[..], &good[..]);
    assert_eq!(m.digest, good_digest);
    assert_eq!(m.media_type, OCI_MANIFEST);
    assert!(!m.is_index());

    let err = c.fetch_manifest(&base.with_tag("lying")).await.unwrap_err();
    assert!(
        matches!(&err, Error::DigestMismatch { expected, .. } if *expected == good_digest),
        "{err}"
    );

    let err = c
        .fetch_manifest(&base.with_digest(&good_digest))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::DigestMismatch { expected, .. } if *expected == good_digest),
        "{err}"
    );

    let err = c
        .fetch_manifest(&base.with_tag("missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    // DigestMismatch and NotFound are not retried.
    assert_eq!(srv.requests().len(), 4);
}

#[tokio::test]
async fn server_errors_are_retried_client_errors_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Arc::new(pseudo_random(4096, 8));
    let digest = Digest::of(&data);
    let n = Arc::new(AtomicUsize::new(0));
    let (d2, n2) = (data.clone(), n.clone());
    let srv = MockServer::start(move |req| {
        let i = n2.fetch_add(1, Ordering::SeqCst);
        if req.path().contains("/flaky/") && i < 2 {
            return Reply::status(503).body("try later");
        }
        if req.path().contains("/slow-down/") && i == 0 {
            return Reply::status(429);
        }
        if req.path().contains("/broken/") {
            return Reply::status(500).body("boom");
        }
        if req.path().contains("/missing/") {
            return Reply::json(
                404,
                &serde_json::json!({"errors":[{"code":"BLOB_UNKNOWN"}]}),
            );
        }
        serve_range(req, &d2)
    })
    .await;
    let mut cfg = test_config(tmp.path());
    cfg.retries = 2;
    let c = client(cfg);
    let r_of = |repo: &str| Reference::parse(&format!("{}/{repo}/x:latest", srv.host())).unwrap();

    let got = c
        .read_range(&r_of("flaky"), &digest, 100, 50)
        .await
        .unwrap();
    assert_eq!(&got[..], &data[100..150]);
    assert_eq!(n.swap(0, Ordering::SeqCst), 3);

    let got = c
        .fetch_blob(&r_of("slow-down"), &digest, 1 << 20)
        .await
        .unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(n.swap(0, Ordering::SeqCst), 2);

    let err = c
        .read_range(&r_of("missing"), &digest, 0, 1)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(m) if m.contains("BLOB_UNKNOWN")),
        "{err}"
    );
    assert_eq!(n.swap(0, Ordering::SeqCst), 1);

    let err = c
        .read_range(&r_of("broken"), &digest, 0, 1)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Http { status: 500, body_excerpt, .. } if body_excerpt == "boom"),
        "{err}"
    );
    assert_eq!(n.swap(0, Ordering::SeqCst), 3); // 1 + 2 retries
}

#[tokio::test]
async fn inconsistent_partial_responses_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Arc::new(pseudo_random(1000, 9));
    let d2 = data.clone();
    let srv = MockServer::start(move |req| {
        if req.path().contains("/shifted/") {
            return Reply::status(206)
                .header("Content-Range", "bytes 1-10/1000")
                .body(d2[1..11].to_vec());
        }
        if req.path().contains("/short/") {
            return Reply::status(206)
                .header("Content-Range", "bytes 0-9/1000")
                .body(d2[0..5].to_vec());
        }
        Reply::status(206).body(d2[0..10].to_vec())
    })
    .await;
    let c = client(test_config(tmp.path()));
    let digest = Digest::of(&data);
    for repo in ["shifted", "short", "no-content-range"] {
        let r = Reference::parse(&format!("{}/{repo}/x", srv.host())).unwrap();
        let err = c.read_range(&r, &digest, 0, 10).await.unwrap_err();
        assert!(matches!(err, Error::InvalidResponse(_)), "{repo}: {err}");
    }
    assert_eq!(srv.requests().len(), 3);

    // Out-of-bounds reads never reach the network.
    let blob = RegistryBlob::new(c.clone(), reference(&srv.host()), digest, 1000);
    assert!(matches!(
        blob.read_at(990, 11).await,
        Err(hologram_source::SourceError::OutOfRange(_))
    ));
    assert!(matches!(
        blob.read_at(u64::MAX, 2).await,
        Err(hologram_source::SourceError::OutOfRange(_))
    ));
    assert_eq!(blob.read_at(1000, 0).await.unwrap().len(), 0);
    assert_eq!(blob.kind().as_str(), "registry");
    assert_eq!(blob.size(), 1000);
    assert_eq!(srv.requests().len(), 3);
}

fn write_hosts(dir: &std::path::Path, registry: &str, toml: &str) {
    let d = dir.join(registry.replace(':', "_") + "_");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("hosts.toml"), toml).unwrap();
}

/// A registry serving the given blobs (by digest) and one manifest for any tag.
async fn simple_registry(blobs: Vec<Arc<Vec<u8>>>, manifest: Vec<u8>) -> MockServer {
    MockServer::start(move |req| {
        if req.path().contains("/manifests/") {
            return Reply::status(200)
                .header("Content-Type", OCI_MANIFEST)
                .body(manifest.clone());
        }
        for b in &blobs {
            if req.path() == blob_path(&Digest::of(b)) {
                return serve_range(req, b);
            }
        }
        Reply::status(404)
    })
    .await
}

#[tokio::test]
async fn hosts_toml_falls_back_from_dead_mirror_to_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Arc::new(pseudo_random(20_000, 10));
    let digest = Digest::of(&data);
    let srv = simple_registry(
        vec![data.clone()],
        br#"{"schemaVersion":2,"config":{},"layers":[]}"#.to_vec(),
    )
    .await;
    let hosts = tmp.path().join("certs.d");
    write_hosts(
        &hosts,
        &srv.host(),
        &format!(
            "server = \"http://{}\"\n\n[host.\"http://127.0.0.1:{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            srv.host(),
            dead_port()
        ),
    );
    let mut cfg = test_config(tmp.path());
    cfg.hosts_dir = Some(hosts);
    cfg.plain_http = false;
    let c = client(cfg);
    let r = reference(&srv.host());
    let start = Instant::now();
    assert_eq!(
        &c.read_range(&r, &digest, 7, 70).await.unwrap()[..],
        &data[7..77]
    );
    assert_eq!(
        &c.read_range(&r, &digest, 700, 70).await.unwrap()[..],
        &data[700..770]
    );
    c.fetch_manifest(&r).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(srv.requests().len(), 3);
}

#[tokio::test]
async fn hosts_toml_mirror_capabilities_headers_and_override_path() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Arc::new(pseudo_random(20_000, 11));
    let digest = Digest::of(&data);
    let other = Arc::new(pseudo_random(100, 12));
    let other_digest = Digest::of(&other);
    let manifest = br#"{"schemaVersion":2,"config":{},"layers":[]}"#.to_vec();
    let srv = simple_registry(vec![data.clone(), other.clone()], manifest.clone()).await;
    let (d2, dg) = (data.clone(), digest);
    let mirror = MockServer::start(move |req| {
        if req.path().ends_with(&dg.to_string()) {
            serve_range(req, &d2)
        } else {
            Reply::status(404)
        }
    })
    .await;
    let hosts = tmp.path().join("certs.d");
    write_hosts(
        &hosts,
        &srv.host(),
        &format!(
            "server = \"http://{srv}\"\n\n[host.\"http://{m}/custom/root\"]\n  capabilities = [\"pull\"]\n  override_path = true\n  [host.\"http://{m}/custom/root\".header]\n    x-mirror-token = \"m1\"\n",
            srv = srv.host(),
            m = mirror.host()
        ),
    );
    let mut cfg = test_config(tmp.path());
    cfg.hosts_dir = Some(hosts);
    let c = client(cfg);
    let r = reference(&srv.host());

    // Resolving a tag is not a mirror's job (capabilities = ["pull"]).
    let m = c.fetch_manifest(&r).await.unwrap();
    assert_eq!(&m.bytes[..], &manifest[..]);
    assert_eq!(mirror.requests().len(), 0);

    // Blobs come from the mirror, under its own API root, with ns= and the header.
    assert_eq!(
        &c.read_range(&r, &digest, 3, 30).await.unwrap()[..],
        &data[3..33]
    );
    let q = &mirror.requests()[0];
    assert_eq!(q.path(), format!("/custom/root/{REPO}/blobs/{digest}"));
    assert_eq!(q.query("ns"), vec![srv.host()]);
    assert_eq!(q.header("x-mirror-token"), Some("m1"));
    assert_eq!(srv.count(|q| q.path().contains("/blobs/")), 0);

    // A blob the mirror lacks comes from the server.
    assert_eq!(
        &c.fetch_blob(&r, &other_digest, 1000).await.unwrap()[..],
        &other[..]
    );
    assert_eq!(srv.count(|q| q.path() == blob_path(&other_digest)), 1);
    assert_eq!(mirror.requests().len(), 2);
}
