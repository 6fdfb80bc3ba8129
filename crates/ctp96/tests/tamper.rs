//! A meddling proxy between the client and a real server: it flips a
//! payload byte, reorders frames, replays a frame of an earlier response
//! (renumbered and re-sealed so only the nonce gives it away), changes the
//! session id, breaks a CRC, cuts the stream, or sends garbage. Each is
//! detected and counted by its reason, and the read returns the right bytes
//! after a refetch; a proxy that tampers every time makes the read fail
//! after the bounded retries, in bounded time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use common::*;
use hologram_ctp96::frame::{decode_all, Frame, FrameKind, HEADER_LEN};
use hologram_ctp96::server::ServerConfig;
use hologram_source::SourceError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tamper {
    FlipPayload,
    Reorder,
    Replay,
    WrongSession,
    BadCrc,
    Truncate,
    Garbage,
}

struct Proxy {
    upstream: String,
    http: reqwest::Client,
    /// What to do to the next fetch responses (front first); empty: nothing.
    plan: Mutex<VecDeque<Tamper>>,
    /// Tamper with every fetch response.
    always: Mutex<Option<Tamper>>,
    /// The frames of the last response passed through untouched.
    last: Mutex<Vec<Frame>>,
    fetches: AtomicUsize,
}

fn first_data(frames: &[Frame]) -> usize {
    frames
        .iter()
        .position(|f| f.header.kind == FrameKind::Data)
        .unwrap()
}

fn apply(t: Tamper, frames: Vec<Frame>, last: &[Frame]) -> Vec<u8> {
    let mut frames = frames;
    let i = first_data(&frames);
    let encode = |fs: &[Frame]| {
        fs.iter()
            .flat_map(|f| f.encode().to_vec())
            .collect::<Vec<u8>>()
    };
    match t {
        Tamper::FlipPayload => {
            let mut out = Vec::new();
            for (k, f) in frames.iter().enumerate() {
                let mut b = f.encode().to_vec();
                if k == i {
                    b[HEADER_LEN + 3] ^= 0x40; // header untouched: only the digest can tell
                }
                out.extend(b);
            }
            out
        }
        Tamper::Reorder => {
            let (a, b) = (frames[i].header.sequence, frames[i + 1].header.sequence);
            frames.swap(i, i + 1);
            assert_ne!(a, b);
            encode(&frames)
        }
        Tamper::Replay => {
            // The same frame of the earlier response: same range, offset and
            // bytes, renumbered to fit here and re-sealed (valid CRC).
            let mut old = last[first_data(last)].clone();
            assert_eq!(old.header.object_offset, frames[i].header.object_offset);
            old.header.sequence = frames[i].header.sequence;
            frames[i] = old;
            encode(&frames)
        }
        Tamper::WrongSession => {
            frames[i].header.session ^= 0x10;
            encode(&frames)
        }
        Tamper::BadCrc => {
            let mut b = encode(&frames);
            let at: usize = frames[..i]
                .iter()
                .map(|f| HEADER_LEN + f.payload.len())
                .sum();
            b[at + 44] ^= 0x01; // a nonce byte, CRC left as it was
            b
        }
        Tamper::Truncate => {
            let b = encode(&frames);
            b[..b.len() / 2 + 7].to_vec()
        }
        Tamper::Garbage => (0..5000u32).map(|i| (i * 7 % 256) as u8).collect(),
    }
}

async fn forward(
    State(p): State<Arc<Proxy>>,
    method: Method,
    uri: Uri,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let url = format!(
        "{}/{}{}",
        p.upstream,
        rest,
        uri.query().map(|q| format!("?{q}")).unwrap_or_default()
    );
    let mut rb = p.http.request(method, url).body(body);
    if let Some(ct) = headers.get("content-type") {
        rb = rb.header("content-type", ct);
    }
    let resp = rb.send().await.unwrap();
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = resp.bytes().await.unwrap();
    let mut out = bytes.to_vec();
    if rest.ends_with("/fetch") && status == StatusCode::OK {
        p.fetches.fetch_add(1, Ordering::Relaxed);
        let frames = decode_all(&bytes).expect("the real server sends valid frames");
        let t = p
            .always
            .lock()
            .unwrap()
            .or_else(|| p.plan.lock().unwrap().pop_front());
        match t {
            Some(t) => out = apply(t, frames, &p.last.lock().unwrap()),
            None => *p.last.lock().unwrap() = frames,
        }
    }
    (status, [("content-type", ct)], out).into_response()
}

async fn start_proxy(upstream: String) -> (String, Arc<Proxy>) {
    let p = Arc::new(Proxy {
        upstream,
        http: reqwest::Client::new(),
        plan: Mutex::new(VecDeque::new()),
        always: Mutex::new(None),
        last: Mutex::new(Vec::new()),
        fetches: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/{*rest}", any(forward))
        .with_state(Arc::clone(&p));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (url, p)
}

#[tokio::test]
async fn every_kind_of_tampering_is_detected_and_refetched() {
    let blob = pattern(50_000, 9);
    let (up, d) = MemUpstream::default().with_blob(blob.clone());
    let srv = start(
        ServerConfig {
            frame_payload: 1000,
            ..ServerConfig::default()
        },
        Arc::new(up),
        None,
    )
    .await;
    let (url, proxy) = start_proxy(srv.url()).await;
    let rec = Arc::new(Recorder::default());
    let c = client(&url, &rec, Duration::from_secs(10), 3);
    let ranges = vec![(d, 0..4000), (d, 10_000..13_500), (d, 40_000..40_001)];
    let check = |got: Vec<Bytes>| {
        for ((_, r), g) in ranges.iter().zip(&got) {
            assert_eq!(&g[..], &blob[r.start as usize..r.end as usize]);
        }
    };
    // an untouched read first (the replay needs an earlier response)
    check(c.read(None, &ranges).await.unwrap());
    let cases = [
        (Tamper::FlipPayload, "digest"),
        (Tamper::Reorder, "sequence"),
        (Tamper::Replay, "replay"),
        (Tamper::WrongSession, "session"),
        (Tamper::BadCrc, "crc"),
        (Tamper::Truncate, "truncated"),
        (Tamper::Garbage, "crc"),
    ];
    for (t, reason) in cases {
        proxy.plan.lock().unwrap().push_back(t);
        let before = proxy.fetches.load(Ordering::Relaxed);
        let counted = rec.count("frame_rejected", reason);
        let got = c.read(None, &ranges).await;
        let got = got.unwrap_or_else(|e| panic!("{t:?}: {e}"));
        check(got);
        assert_eq!(
            rec.count("frame_rejected", reason) - counted,
            1,
            "{t:?} counted as {reason}"
        );
        assert_eq!(
            proxy.fetches.load(Ordering::Relaxed) - before,
            2,
            "{t:?}: one rejected response, one refetch"
        );
    }
    assert_eq!(
        c.stats().frames_rejected.load(Ordering::Relaxed),
        cases.len() as u64
    );
    assert_eq!(c.stats().sessions_opened.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn completed_ranges_are_kept_and_only_the_rest_refetched() {
    let blob = pattern(20_000, 10);
    let (up, d) = MemUpstream::default().with_blob(blob.clone());
    let srv = start(
        ServerConfig {
            frame_payload: 1000,
            ..ServerConfig::default()
        },
        Arc::new(up),
        None,
    )
    .await;
    let (url, proxy) = start_proxy(srv.url()).await;
    let rec = Arc::new(Recorder::default());
    let c = client(&url, &rec, Duration::from_secs(10), 3);
    // The stream is cut in its middle: range 0 (small) is complete by then.
    let ranges = vec![(d, 0..500), (d, 1000..19_000)];
    proxy.plan.lock().unwrap().push_back(Tamper::Truncate);
    let got = c.read(None, &ranges).await.unwrap();
    assert_eq!(got[0], blob.slice(0..500));
    assert_eq!(got[1], blob.slice(1000..19_000));
    assert_eq!(
        srv.server
            .stats()
            .bytes_from_upstream
            .load(Ordering::Relaxed),
        500 + 18_000 + 18_000,
        "range 0 was not asked for again"
    );
}

#[tokio::test]
async fn a_proxy_that_always_tampers_fails_the_read_after_bounded_retries() {
    let blob = pattern(10_000, 11);
    let (up, d) = MemUpstream::default().with_blob(blob.clone());
    let srv = start(
        ServerConfig {
            frame_payload: 1000,
            ..ServerConfig::default()
        },
        Arc::new(up),
        None,
    )
    .await;
    let (url, proxy) = start_proxy(srv.url()).await;
    *proxy.always.lock().unwrap() = Some(Tamper::FlipPayload);
    let rec = Arc::new(Recorder::default());
    let c = client(&url, &rec, Duration::from_secs(10), 2);
    let t = Instant::now();
    let e = c.read(None, &[(d, 0..5000)]).await.unwrap_err();
    assert!(
        matches!(&e, SourceError::Integrity(m) if m.contains("digest")),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(proxy.fetches.load(Ordering::Relaxed), 3, "1 + 2 retries");
    assert_eq!(rec.count("frame_rejected", "digest"), 3);
    assert_eq!(rec.count("fetch", "error"), 1);
}

/// A hostile server: a valid session, then fetch answers that stall, or
/// that never end (HINT frames forever).
async fn hostile(mode: &'static str) -> String {
    use hologram_ctp96::frame::FrameFields;
    async fn open(body: Bytes) -> Response {
        let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let info = serde_json::json!({
            "session_id": "00000000000000aa", "lease_id": "l", "expires_at": "x",
            "lease_seconds": 60, "nonce": req["nonce"],
            "energy_hints": {"load": 0.0, "concurrency": 4, "chunk_size": 1048576},
            "latency_hints": {"upstream_ms": 0.0, "cache_hit_ratio": 0.0}
        });
        (StatusCode::CREATED, serde_json::to_vec(&info).unwrap()).into_response()
    }
    let fetch = move || async move {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        tokio::spawn(async move {
            let mut seq = 0u64;
            loop {
                if mode == "stall" {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let hint =
                    serde_json::to_vec(&hologram_ctp96::wire::EnergyHints::default()).unwrap();
                let f = Frame::new(
                    FrameFields {
                        kind: FrameKind::Hint,
                        session: 0xaa,
                        sequence: seq,
                        request_index: 0,
                        object_offset: 0,
                        nonce: {
                            let mut n = [0u8; 12];
                            n[4..].copy_from_slice(&seq.to_be_bytes());
                            n
                        },
                        unix_ms: 0,
                    },
                    Bytes::from(hint),
                )
                .unwrap();
                seq += 1;
                if tx.send(Ok(f.encode())).await.is_err() {
                    return;
                }
            }
        });
        axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
    };
    let app = Router::new()
        .route("/v1/sessions", axum::routing::post(open))
        .route("/v1/sessions/{id}/fetch", axum::routing::post(fetch));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    url
}

#[tokio::test]
async fn a_hostile_server_never_makes_the_client_hang_or_hoard() {
    let d = hologram_oci::Digest::of(b"x");
    // a response that stalls after its headers: bounded by the timeouts
    let url = hostile("stall").await;
    let rec = Arc::new(Recorder::default());
    let c = client(&url, &rec, Duration::from_secs(3), 5);
    let t = Instant::now();
    let e = c.read(None, &[(d, 0..10)]).await.unwrap_err();
    assert!(matches!(e, SourceError::Unavailable(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // a response that never ends: cut off at the control-frame limit
    let url = hostile("flood").await;
    let rec = Arc::new(Recorder::default());
    let c = client(&url, &rec, Duration::from_secs(10), 1);
    let e = c.read(None, &[(d, 0..10)]).await.unwrap_err();
    assert!(matches!(e, SourceError::Integrity(_)), "{e}");
    assert_eq!(rec.count("frame_rejected", "order"), 1);
    // the second response reuses the first one's nonces: a replay
    assert_eq!(rec.count("frame_rejected", "replay"), 1);
}
