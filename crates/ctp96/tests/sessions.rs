//! Client against the real server on loopback: batched reads, leases
//! (renewal, expiry, revocation), a server restart mid-session, the
//! session limit, energy hints, errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hologram_ctp96::client::Ctp96Blob;
use hologram_ctp96::server::ServerConfig;
use hologram_oci::Digest;
use hologram_source::{BlobSource as _, SourceError};

fn small_frames() -> ServerConfig {
    ServerConfig {
        frame_payload: 1000,
        ..ServerConfig::default()
    }
}

#[tokio::test]
async fn many_scattered_ranges_in_one_round_trip() {
    let blob = pattern(300_000, 7);
    let (up, d) = MemUpstream::default().with_blob(blob.clone());
    let srv = start(small_frames(), Arc::new(up), None).await;
    let rec = Arc::new(Recorder::default());
    let c = client(&srv.url(), &rec, Duration::from_secs(10), 2);
    let src = Ctp96Blob::new(c.clone(), Some("e2e/lazy".into()), d, blob.len() as u64);
    let ranges: Vec<std::ops::Range<u64>> = (0..40u64)
        .map(|i| (i * 7001)..(i * 7001 + 1 + i * 97))
        .chain([299_000..300_000, 5..6, 0..300_000])
        .collect();
    let got = src.read_ranges(&ranges).await.unwrap();
    assert_eq!(got.len(), ranges.len());
    for (r, g) in ranges.iter().zip(&got) {
        assert_eq!(&g[..], &blob[r.start as usize..r.end as usize], "{r:?}");
    }
    assert_eq!(
        srv.server.stats().fetches.load(Ordering::Relaxed),
        1,
        "43 ranges, one fetch request"
    );
    assert_eq!(c.stats().sessions_opened.load(Ordering::Relaxed), 1);
    assert_eq!(rec.count("fetch", "ok"), 1);
    assert_eq!(c.stats().frames_rejected.load(Ordering::Relaxed), 0);
    // read_at is a batch of one; out-of-range reads never reach the server
    assert_eq!(src.read_at(10, 5).await.unwrap(), blob.slice(10..15));
    assert!(matches!(
        src.read_at(299_999, 2).await,
        Err(SourceError::OutOfRange(_))
    ));
    assert_eq!(srv.server.stats().fetches.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn server_errors_per_range_are_the_reads_errors() {
    let blob = pattern(5000, 1);
    let (up, d) = MemUpstream::default().with_blob(blob.clone());
    let srv = start(small_frames(), Arc::new(up), None).await;
    let rec = Arc::new(Recorder::default());
    let c = client(&srv.url(), &rec, Duration::from_secs(5), 2);
    let missing = Digest::of(b"not there");
    let r = c.read(None, &[(d, 0..10), (missing, 0..10)]).await;
    assert!(matches!(r, Err(SourceError::NotFound(_))), "{r:?}");
    // the server says the range is past the end (the size given was wrong)
    let lying = Ctp96Blob::new(c.clone(), None, d, 10_000);
    let r = lying.read_at(4990, 20).await;
    assert!(matches!(r, Err(SourceError::OutOfRange(_))), "{r:?}");
    assert_eq!(c.stats().frames_rejected.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn an_upstream_failure_inside_a_range_is_an_error_frame_and_a_retry() {
    // 5 MiB: the server reads it upstream in 2 MiB pieces; the second
    // piece fails once, after the first piece's frames went out.
    let blob = pattern(5 << 20, 8);
    let (up, d) = MemUpstream::default().with_blob(blob.clone());
    *up.fail_once_at.lock().unwrap() = Some(2 << 20);
    let srv = start(ServerConfig::default(), Arc::new(up), None).await;
    let rec = Arc::new(Recorder::default());
    let c = client(&srv.url(), &rec, Duration::from_secs(10), 2);
    let got = c
        .read(None, &[(d, 100..100), (d, 10..20), (d, 0..(5 << 20))])
        .await
        .unwrap();
    assert!(got[0].is_empty());
    assert_eq!(got[1], blob.slice(10..20));
    assert_eq!(got[2], blob);
    assert_eq!(
        rec.count("fetch", "retry"),
        1,
        "the ERROR frame's range was asked again"
    );
    assert_eq!(
        c.stats().frames_rejected.load(Ordering::Relaxed),
        0,
        "a well-formed response"
    );
    assert_eq!(srv.server.stats().fetches.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn leases_are_renewed_before_they_expire() {
    let blob = pattern(1000, 2);
    let (up, d) = MemUpstream::default().with_blob(blob.clone());
    let srv = start(
        ServerConfig {
            lease: Duration::from_secs(3),
            ..small_frames()
        },
        Arc::new(up),
        None,
    )
    .await;
    let rec = Arc::new(Recorder::default());
    let c = client(&srv.url(), &rec, Duration::from_secs(5), 2);
    c.read(None, &[(d, 0..100)]).await.unwrap();
    let (first, _) = c.session().unwrap();
    // 3 renewals take ~3 s: longer than the lease itself
    assert!(
        wait_for(Duration::from_secs(10), || c
            .stats()
            .renewals
            .load(Ordering::Relaxed)
            >= 3)
        .await,
        "renewed {} times",
        c.stats().renewals.load(Ordering::Relaxed)
    );
    assert_eq!(srv.server.sessions(), 1);
    c.read(None, &[(d, 0..100)]).await.unwrap();
    assert_eq!(c.session().unwrap().0, first, "the same session throughout");
    assert_eq!(c.stats().sessions_opened.load(Ordering::Relaxed), 1);
    assert_eq!(rec.leases.lock().unwrap()[0], 3.0);
    // A client that goes away stops renewing: the lease runs out.
    drop(c);
    assert!(
        wait_for(Duration::from_secs(8), || srv.server.sessions() == 0).await,
        "the server drops the session once its lease ends"
    );
}

#[tokio::test]
async fn revoked_and_expired_sessions_are_reopened() {
    let blob = pattern(1000, 3);
    let (up, d) = MemUpstream::default().with_blob(blob.clone());
    let srv = start(small_frames(), Arc::new(up), None).await;
    let rec = Arc::new(Recorder::default());
    let c = client(&srv.url(), &rec, Duration::from_secs(5), 2);
    c.read(None, &[(d, 0..100)]).await.unwrap();
    let (sid, _) = c.session().unwrap();
    // revoke it behind the client's back
    let resp = reqwest::Client::new()
        .delete(format!("{}/v1/sessions/{sid}", srv.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(srv.server.sessions(), 0);
    let got = c.read(None, &[(d, 100..200)]).await.unwrap();
    assert_eq!(got[0], blob.slice(100..200));
    assert_ne!(c.session().unwrap().0, sid, "a new session");
    assert_eq!(c.stats().sessions_opened.load(Ordering::Relaxed), 2);
    // an explicit close revokes on the server
    c.close().await;
    assert_eq!(srv.server.sessions(), 0);
    assert_eq!(rec.count("session_close", "ok"), 1);
}

#[tokio::test]
async fn a_server_restart_mid_session_is_survived() {
    let blob = pattern(20_000, 4);
    let (up, d) = MemUpstream::default().with_blob(blob.clone());
    let up = Arc::new(up);
    let srv = start(small_frames(), up.clone(), None).await;
    let addr = srv.addr;
    let rec = Arc::new(Recorder::default());
    let c = client(&srv.url(), &rec, Duration::from_secs(2), 2);
    c.read(None, &[(d, 0..100)]).await.unwrap();
    srv.stop().await;
    // Down: a bounded error, never a hang.
    let t = Instant::now();
    let r = c.read(None, &[(d, 0..100)]).await;
    assert!(matches!(r, Err(SourceError::Unavailable(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // Back, with no memory of the session: the client opens a new one.
    let srv = start(small_frames(), up, Some(addr)).await;
    let got = c.read(None, &[(d, 5000..15000)]).await.unwrap();
    assert_eq!(got[0], blob.slice(5000..15000));
    assert_eq!(c.stats().sessions_opened.load(Ordering::Relaxed), 2);
    assert_eq!(srv.server.sessions(), 1);
}

#[tokio::test]
async fn the_session_limit_is_a_clear_error_with_backoff() {
    let blob = pattern(1000, 5);
    let (up, d) = MemUpstream::default().with_blob(blob.clone());
    let srv = start(
        ServerConfig {
            max_sessions: 1,
            ..small_frames()
        },
        Arc::new(up),
        None,
    )
    .await;
    let rec_a = Arc::new(Recorder::default());
    let a = client(&srv.url(), &rec_a, Duration::from_secs(5), 2);
    a.read(None, &[(d, 0..10)]).await.unwrap();
    let rec_b = Arc::new(Recorder::default());
    let b = client(&srv.url(), &rec_b, Duration::from_secs(1), 2);
    let t = Instant::now();
    let e = b.read(None, &[(d, 0..10)]).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(
        matches!(&e, SourceError::Unavailable(m) if m.contains("session limit")),
        "{e}"
    );
    assert_eq!(rec_b.count("session_open", "limit"), 1);
    let refused = srv.server.stats().sessions_refused.load(Ordering::Relaxed);
    assert_eq!(refused, 1);
    // Backoff: the next read fails at once without asking the server.
    let t = Instant::now();
    assert!(b.read(None, &[(d, 0..10)]).await.is_err());
    assert!(t.elapsed() < Duration::from_millis(1500));
    assert_eq!(
        srv.server.stats().sessions_refused.load(Ordering::Relaxed),
        refused
    );
    // A slot frees up: a client with time to wait gets in.
    a.close().await;
    let rec_c = Arc::new(Recorder::default());
    let c = client(&srv.url(), &rec_c, Duration::from_secs(5), 2);
    assert_eq!(
        c.read(None, &[(d, 0..10)]).await.unwrap()[0],
        blob.slice(0..10)
    );
}

#[tokio::test]
async fn hints_follow_the_servers_load_and_bound_the_client() {
    let blob = pattern(400_000, 6);
    let (mut up, d) = MemUpstream::default().with_blob(blob.clone());
    // Upstream reads wait until the test lets them go.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    up.gate = Some(gate.clone());
    let up = Arc::new(up);
    let srv = start(
        ServerConfig {
            fetch_slots: 2,
            ..small_frames()
        },
        up.clone(),
        None,
    )
    .await;
    // Hold both fetch slots, then look at the hints a new session gets.
    let rec = Arc::new(Recorder::default());
    let busy = client(&srv.url(), &rec, Duration::from_secs(10), 3);
    let b2 = busy.clone();
    let h1 = tokio::spawn(async move { b2.read(None, &[(d, 0..10)]).await });
    let b3 = busy.clone();
    let h2 = tokio::spawn(async move { b3.read(None, &[(d, 10..20)]).await });
    assert!(
        wait_for(Duration::from_secs(5), || up.reads.load(Ordering::Relaxed)
            >= 2)
        .await
    );
    let info: hologram_ctp96::wire::SessionInfo = reqwest::Client::new()
        .post(format!("{}/v1/sessions", srv.url()))
        .header("content-type", "application/json")
        .body(r#"{"nonce":"000000000000000000000001","client":"test"}"#)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    let h = info.energy_hints;
    assert_eq!(h.load, 1.0, "{h:?}");
    assert_eq!(h.concurrency, 1);
    assert_eq!(h.chunk_size, 1 << 20);
    assert_eq!(h.retry_after_ms, 250);
    // a third fetch now is refused with 503 busy, and the client retries
    // after the wait the server asked for
    let t = Instant::now();
    let b4 = busy.clone();
    let third = tokio::spawn(async move { b4.read(None, &[(d, 20..30)]).await });
    let stats = srv.server.stats();
    assert!(
        wait_for(Duration::from_secs(10), || stats
            .fetches_busy
            .load(Ordering::Relaxed)
            >= 1)
        .await,
        "the third fetch was not refused while both slots were held"
    );
    gate.add_permits(1 << 20);
    let got = third.await.unwrap().unwrap();
    assert_eq!(got[0], blob.slice(20..30));
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "waited {:?}",
        t.elapsed()
    );
    h1.await.unwrap().unwrap();
    h2.await.unwrap().unwrap();
    // The client keeps the last hints: a fetch alone on a server of two
    // slots is load 0.5, so 4 at a time and 4 MiB per request.
    busy.read(None, &[(d, 0..10)]).await.unwrap();
    let last = busy.hints();
    assert_eq!(
        (last.concurrency, last.chunk_size),
        (4, 4 << 20),
        "{last:?}"
    );
    assert!(!rec.hints.lock().unwrap().is_empty());
}

#[tokio::test]
async fn manifests_by_reference_and_uor_id() {
    let manifest = bytes::Bytes::from_static(br#"{"schemaVersion":2}"#);
    let mut up = MemUpstream::default();
    up.manifests.insert(
        "e2e/x:1".into(),
        (
            manifest.clone(),
            "application/vnd.oci.image.manifest.v1+json".into(),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let srv = start(
        ServerConfig {
            cache_dir: Some(dir.path().to_path_buf()),
            ..small_frames()
        },
        Arc::new(up),
        None,
    )
    .await;
    let rec = Arc::new(Recorder::default());
    let c = client(&srv.url(), &rec, Duration::from_secs(5), 1);
    let uor = hologram_trust::UorId::of(&manifest);
    assert!(matches!(
        c.manifest_by_uor(&uor).await,
        Err(SourceError::NotFound(_))
    ));
    let r = c.resolve("e2e/x:1").await.unwrap();
    assert_eq!(r.uor_id, uor.to_string());
    assert_eq!(r.digest, Digest::of(&manifest));
    assert_eq!(r.size, manifest.len() as u64);
    assert_eq!(c.manifest_by_uor(&uor).await.unwrap(), manifest);
    // a restarted server with the same cache still knows it
    srv.stop().await;
    let srv = start(
        ServerConfig {
            cache_dir: Some(dir.path().to_path_buf()),
            ..small_frames()
        },
        Arc::new(MemUpstream::default()),
        None,
    )
    .await;
    let c = client(&srv.url(), &rec, Duration::from_secs(5), 1);
    assert_eq!(c.manifest_by_uor(&uor).await.unwrap(), manifest);
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_fetch_slot() {
    use tokio::io::AsyncWriteExt as _;
    let blob = pattern(32 << 20, 12);
    let (up, d) = MemUpstream::default().with_blob(blob.clone());
    let srv = start(
        ServerConfig {
            fetch_slots: 1,
            upstream_timeout: Duration::from_secs(1),
            ..ServerConfig::default()
        },
        Arc::new(up),
        None,
    )
    .await;
    let info: hologram_ctp96::wire::SessionInfo = serde_json::from_slice(
        &reqwest::Client::new()
            .post(format!("{}/v1/sessions", srv.url()))
            .header("content-type", "application/json")
            .body(r#"{"nonce":"00000000000000000000000a","client":"stalled"}"#)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    // Ask for 32 MiB and never read the answer.
    let body = format!(
        r#"{{"ranges":[{{"digest":"{d}","offset":0,"length":{}}}]}}"#,
        32 << 20
    );
    let mut stalled = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "POST /v1/sessions/{}/fetch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                info.session_id,
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || srv
            .server
            .stats()
            .fetches
            .load(Ordering::Relaxed)
            == 1)
        .await
    );
    // The only slot is taken until the server gives up on that client.
    let rec = Arc::new(Recorder::default());
    let c = client(&srv.url(), &rec, Duration::from_secs(15), 20);
    let t = Instant::now();
    let got = c.read(None, &[(d, 0..1000)]).await.unwrap();
    assert_eq!(got[0], blob.slice(0..1000));
    assert!(srv.server.stats().fetches_busy.load(Ordering::Relaxed) >= 1);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    drop(stalled);
}

#[tokio::test]
async fn upstream_blobs_are_cached_whole_and_checked() {
    let blob = pattern(3 << 20, 13);
    let (mut up, d) = MemUpstream::default().with_blob(blob.clone());
    up.cacheable = true;
    // A blob whose bytes do not match the digest it is stored under.
    let lie = hologram_oci::Digest::of(b"something else");
    up.blobs.insert(lie, pattern(1000, 14));
    let up = Arc::new(up);
    let dir = tempfile::tempdir().unwrap();
    let srv = start(
        ServerConfig {
            cache_dir: Some(dir.path().to_path_buf()),
            ..ServerConfig::default()
        },
        up.clone(),
        None,
    )
    .await;
    let rec = Arc::new(Recorder::default());
    let c = client(&srv.url(), &rec, Duration::from_secs(10), 1);
    assert_eq!(
        c.read(None, &[(d, 10..20)]).await.unwrap()[0],
        blob.slice(10..20)
    );
    let stats = srv.server.stats();
    assert!(
        wait_for(Duration::from_secs(10), || stats
            .blobs_cached
            .load(Ordering::Relaxed)
            == 1)
        .await,
        "the whole blob is copied into the cache in the background"
    );
    let cached = dir.path().join("blobs/sha256").join(d.hex());
    assert_eq!(std::fs::read(&cached).unwrap(), blob);
    let reads = up.reads.load(Ordering::Relaxed);
    let got = c.read(None, &[(d, 0..(3 << 20)), (d, 5..6)]).await.unwrap();
    assert_eq!(got[0], blob);
    assert_eq!(
        up.reads.load(Ordering::Relaxed),
        reads,
        "served from the cache"
    );
    assert!(stats.bytes_from_cache.load(Ordering::Relaxed) >= 3 << 20);
    // The lying blob is served (the client checks content against the TOC,
    // not the server) but never cached.
    c.read(None, &[(lie, 0..10)]).await.unwrap();
    let lie_path = dir.path().join("blobs/sha256").join(lie.hex());
    assert!(
        wait_for(Duration::from_secs(5), || up.reads.load(Ordering::Relaxed)
            >= reads + 2)
        .await,
        "the fill read it"
    );
    assert!(
        !wait_for(Duration::from_secs(1), || lie_path.exists()).await,
        "never cached"
    );
    assert_eq!(stats.blobs_cached.load(Ordering::Relaxed), 1);
}
