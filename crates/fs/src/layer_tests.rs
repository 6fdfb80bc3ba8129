//! Unit tests of the read path over an in-memory eStargz blob and a fake
//! `BlobSource` (pure logic: no mount, no network). The real thing — FUSE,
//! registry, containerd — is tested in crates/e2e.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use hologram_estargz::{convert, ConvertOptions, Index, NodeKind};
use hologram_source::{BlobSource, SourceError, SourceKind};

use super::*;
use crate::observer::NoObserver;

/// Serves a blob from memory; counts requests; can corrupt, hang or fail.
#[derive(Debug)]
struct FakeBlob {
    data: Vec<u8>,
    requests: AtomicU64,
    /// `read_ranges` calls and the number of ranges of the last one.
    batches: AtomicU64,
    last_batch: AtomicU64,
    hang: AtomicBool,
    fail: AtomicBool,
    corrupt_at: AtomicU64, // flip this byte offset if != u64::MAX
    delay: Duration,
    /// Bytes served.
    served: AtomicU64,
}

#[async_trait::async_trait]
impl BlobSource for FakeBlob {
    fn digest(&self) -> &Digest {
        static FAKE: Digest = Digest::from_bytes([0xfa; 32]);
        &FAKE
    }
    fn kind(&self) -> SourceKind {
        SourceKind::Registry
    }
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    async fn read_at(&self, offset: u64, len: u64) -> Result<bytes::Bytes, SourceError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(SourceError::Unavailable("registry gone".into()));
        }
        tokio::time::sleep(self.delay).await;
        self.served.fetch_add(len, Ordering::SeqCst);
        let mut v = self.data[offset as usize..(offset + len) as usize].to_vec();
        let c = self.corrupt_at.load(Ordering::SeqCst);
        if c != u64::MAX && c >= offset && c < offset + len {
            v[(c - offset) as usize] ^= 0xff;
        }
        Ok(bytes::Bytes::from(v))
    }
    async fn read_ranges(
        &self,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>, SourceError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.last_batch.store(ranges.len() as u64, Ordering::SeqCst);
        let mut out = Vec::new();
        for r in ranges {
            out.push(self.read_at(r.start, r.end - r.start).await?);
        }
        Ok(out)
    }
}

/// A layer with files a (300 KiB, 3 chunks of 128 KiB), b (5 bytes), c (20 KiB).
fn blob() -> (Vec<u8>, Index, Vec<u8>) {
    let (out, index, a, _) = blob_with_digests();
    (out, index, a)
}

/// [`blob`], with the blob digest and diff ID the converter measured.
fn blob_with_digests() -> (Vec<u8>, Index, Vec<u8>, LayerDigests) {
    let mut tar = tar::Builder::new(Vec::new());
    let a: Vec<u8> = (0..300 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (name, data) in [
        ("a", a.clone()),
        ("b", b"hello".to_vec()),
        ("c", vec![7u8; 20 * 1024]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, Cursor::new(data)).unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let mut out = Vec::new();
    let opts = ConvertOptions {
        chunk_size: 128 * 1024,
        gzip_level: 1,
        ..ConvertOptions::default()
    };
    let conv = convert(Cursor::new(raw), &mut out, &opts).unwrap();
    let toc_region_start = conv.toc_offset as usize;
    let region = out[toc_region_start..out.len() - hologram_estargz::FOOTER_SIZE as usize].to_vec();
    let index = crate::index_from_region(
        &region,
        &conv.toc_digest,
        out.len() as u64,
        hologram_estargz::IndexLimits::default(),
    )
    .unwrap();
    let digests = LayerDigests {
        blob: conv.digest,
        diff_id: conv.diff_id,
    };
    (out, index, a, digests)
}

fn layer(
    cfg: LayerConfig,
) -> (
    tempfile::TempDir,
    Arc<FakeBlob>,
    Layer,
    Vec<u8>,
    tokio::runtime::Runtime,
) {
    let (data, index, a) = blob();
    let src = Arc::new(FakeBlob {
        data,
        requests: AtomicU64::new(0),
        batches: AtomicU64::new(0),
        last_batch: AtomicU64::new(0),
        hang: AtomicBool::new(false),
        fail: AtomicBool::new(false),
        corrupt_at: AtomicU64::new(u64::MAX),
        delay: Duration::from_millis(50),
        served: AtomicU64::new(0),
    });
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(dir.path(), 1 << 30).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let l = Layer::new(
        index,
        src.clone(),
        cache,
        rt.handle().clone(),
        cfg,
        Arc::new(NoObserver),
    );
    (dir, src, l, a, rt)
}

fn ino(l: &Layer, name: &str) -> u64 {
    l.index()
        .lookup(Index::ROOT, std::ffi::OsStr::new(name))
        .unwrap()
}

fn quiet() -> LayerConfig {
    LayerConfig {
        prefetch: false,
        background_fetch: false,
        readaround: 0,
        failure_memory: Duration::ZERO,
        ..LayerConfig::default()
    }
}

#[test]
fn reads_across_chunks_are_exact() {
    let (_d, _src, l, a, _rt) = layer(quiet());
    let i = ino(&l, "a");
    assert_eq!(l.index().node(i).unwrap().kind, NodeKind::Reg);
    assert_eq!(l.index().chunks(l.index().node(i).unwrap()).len(), 3);
    // a read spanning the first chunk boundary, and one past the end
    let got = l.read(i, 128 * 1024 - 10, 100).unwrap();
    assert_eq!(got, a[128 * 1024 - 10..128 * 1024 + 90]);
    let tail = l.read(i, 300 * 1024 - 5, 4096).unwrap();
    assert_eq!(tail, a[300 * 1024 - 5..]);
    assert!(l.read(i, 300 * 1024, 10).unwrap().is_empty());
    assert_eq!(l.read(ino(&l, "b"), 0, 100).unwrap(), b"hello");
}

#[test]
fn missing_chunks_split_by_a_cached_one_are_fetched_in_one_batch() {
    let (_d, src, l, a, _rt) = layer(quiet());
    let i = ino(&l, "a");
    // the middle chunk first
    assert_eq!(
        l.read(i, 128 * 1024, 10).unwrap(),
        a[128 * 1024..128 * 1024 + 10]
    );
    assert_eq!(src.batches.load(Ordering::SeqCst), 1);
    // a read over all three: chunks 0 and 2 are missing, in two runs, and
    // go to the source in one read_ranges call
    let all = l.read(i, 0, 300 * 1024).unwrap();
    assert_eq!(all, a);
    assert_eq!(src.batches.load(Ordering::SeqCst), 2, "one more call");
    assert_eq!(src.last_batch.load(Ordering::SeqCst), 2, "of two ranges");
}

#[test]
fn many_readers_of_one_chunk_make_one_request() {
    let (_d, src, l, a, _rt) = layer(quiet());
    let l = Arc::new(l);
    let i = ino(&l, "a");
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|k| {
            let (l, b) = (Arc::clone(&l), Arc::clone(&barrier));
            std::thread::spawn(move || {
                b.wait();
                l.read(i, k as u64 * 1000, 1000).unwrap()
            })
        })
        .collect();
    for (k, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), a[k * 1000..(k + 1) * 1000]);
    }
    assert_eq!(src.requests.load(Ordering::SeqCst), 1, "single flight");
    // served from the cache afterwards
    l.read(i, 0, 10).unwrap();
    assert_eq!(src.requests.load(Ordering::SeqCst), 1);
}

#[test]
fn readaround_merges_adjacent_chunks_into_one_request() {
    let cfg = LayerConfig {
        readaround: 1 << 20,
        ..quiet()
    };
    let (_d, src, l, _a, _rt) = layer(cfg);
    l.read(ino(&l, "a"), 0, 10).unwrap();
    assert_eq!(src.requests.load(Ordering::SeqCst), 1);
    // everything after it in the blob came along
    l.read(ino(&l, "c"), 0, 10).unwrap();
    l.read(ino(&l, "a"), 299 * 1024, 10).unwrap();
    assert_eq!(src.requests.load(Ordering::SeqCst), 1);
}

#[test]
fn corrupted_chunk_is_an_error_and_never_cached() {
    let (_d, src, l, _a, _rt) = layer(quiet());
    let i = ino(&l, "c");
    let chunk = l.index().chunks(l.index().node(i).unwrap())[0].clone();
    // inside the deflate data, just after the 10-byte gzip header
    src.corrupt_at
        .store(chunk.blob_offset + 12, Ordering::SeqCst);
    let e = l.read(i, 0, 100).unwrap_err();
    assert!(
        matches!(e, ReadError::Verify { .. } | ReadError::Fetch { .. }),
        "{e:?}"
    );
    assert_eq!(l.stats.verify_failures.load(Ordering::SeqCst), 1);
    assert!(!l.cache().contains(&chunk.digest));
    // other files still read; the bad one reads once the source is honest
    assert_eq!(l.read(ino(&l, "b"), 0, 5).unwrap(), b"hello");
    src.corrupt_at.store(u64::MAX, Ordering::SeqCst);
    assert_eq!(l.read(i, 0, 3).unwrap(), vec![7u8; 3]);
}

#[test]
fn a_source_that_never_answers_fails_within_the_timeout() {
    let cfg = LayerConfig {
        fetch_timeout: Duration::from_millis(400),
        ..quiet()
    };
    let (_d, src, l, _a, _rt) = layer(cfg);
    let i = ino(&l, "a");
    src.hang.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let e = l.read(i, 0, 10).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        matches!(e, ReadError::Fetch { .. } | ReadError::Timeout(_)),
        "{e:?}"
    );
    // a failing source: error, then recovery
    src.hang.store(false, Ordering::SeqCst);
    src.fail.store(true, Ordering::SeqCst);
    assert!(l.read(i, 0, 10).is_err());
    src.fail.store(false, Ordering::SeqCst);
    assert_eq!(l.read(i, 0, 10).unwrap().len(), 10);
}

#[test]
fn background_fetch_fills_the_cache() {
    let cfg = LayerConfig {
        background_fetch: true,
        background_rate: 0,
        ..quiet()
    };
    let (_d, src, l, _a, _rt) = layer(cfg);
    assert_eq!(l.pending_chunks(), 5);
    l.warm();
    assert_eq!(l.pending_chunks(), 0);
    let before = src.requests.load(Ordering::SeqCst);
    l.read(ino(&l, "a"), 0, 1000).unwrap();
    assert_eq!(
        src.requests.load(Ordering::SeqCst),
        before,
        "served from the cache"
    );
    assert!(l.stats.background_bytes.load(Ordering::SeqCst) > 0);
}

#[test]
fn a_bad_chunk_in_the_readaround_window_does_not_fail_a_good_read() {
    let cfg = LayerConfig {
        readaround: 1 << 20,
        ..quiet()
    };
    let (_d, src, l, a, _rt) = layer(cfg);
    let c = l.index().chunks(l.index().node(ino(&l, "c")).unwrap())[0].clone();
    src.corrupt_at.store(c.blob_offset + 12, Ordering::SeqCst);
    // a's chunks come first in the blob; c's bad chunk rides along in the window
    assert_eq!(l.read(ino(&l, "a"), 0, 100).unwrap(), a[..100]);
    assert_eq!(
        l.stats.verify_failures.load(Ordering::SeqCst),
        1,
        "the bad chunk was fetched and refused"
    );
    assert!(l.read(ino(&l, "c"), 0, 10).is_err());
}

/// What [`checked_layer`] sets up.
type Checked = (
    tempfile::TempDir,
    Arc<FakeBlob>,
    Layer,
    Arc<Mutex<Vec<Verdict>>>,
    tokio::runtime::Runtime,
);

/// A layer that checks itself against `claimed` (given the converter's
/// digests), with a hook recording the verdicts it hears.
fn checked_layer(cfg: LayerConfig, claimed: impl FnOnce(LayerDigests) -> LayerDigests) -> Checked {
    let (data, index, _a, digests) = blob_with_digests();
    let src = Arc::new(FakeBlob {
        data,
        requests: AtomicU64::new(0),
        batches: AtomicU64::new(0),
        last_batch: AtomicU64::new(0),
        hang: AtomicBool::new(false),
        fail: AtomicBool::new(false),
        corrupt_at: AtomicU64::new(u64::MAX),
        delay: Duration::from_millis(1),
        served: AtomicU64::new(0),
    });
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(dir.path(), 1 << 30).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let h = Arc::clone(&heard);
    let l = Layer::new(
        index,
        src.clone(),
        cache,
        rt.handle().clone(),
        cfg,
        Arc::new(NoObserver),
    )
    .with_expected(
        claimed(digests),
        Some(Box::new(move |v: &Verdict| {
            h.lock().unwrap().push(v.clone())
        })),
    );
    (dir, src, l, heard, rt)
}

fn background() -> LayerConfig {
    LayerConfig {
        background_fetch: true,
        background_rate: 0,
        max_request: 4096,
        background_window: 4096,
        background_quiet: Duration::ZERO,
        ..quiet()
    }
}

#[test]
fn the_background_pass_verifies_blob_and_diff_id() {
    let (_d, src, l, heard, _rt) = checked_layer(background(), |d| d);
    assert_eq!(l.verdict(), Verdict::Pending);
    l.warm();
    assert_eq!(l.verdict(), Verdict::Verified);
    assert_eq!(*heard.lock().unwrap(), [Verdict::Verified]);
    assert_eq!(l.pending_chunks(), 0, "the pass filled the cache");
    // Small windows: every byte fetched once, no chunk fetched twice.
    assert_eq!(
        l.stats.background_bytes.load(Ordering::SeqCst),
        src.data.len() as u64
    );
    let n = src.requests.load(Ordering::SeqCst);
    assert!(n >= 4, "{n} requests for {} bytes", src.data.len());
}

#[test]
fn a_layer_whose_content_is_not_its_claimed_diff_id_is_rejected() {
    let (_d, _src, l, heard, _rt) = checked_layer(background(), |d| LayerDigests {
        diff_id: Digest::of(b"another layer's diff ID"),
        ..d
    });
    // Readable until the verdict is in...
    assert_eq!(l.read(ino(&l, "b"), 0, 5).unwrap(), b"hello");
    l.warm();
    match l.verdict() {
        Verdict::Bad(why) => assert!(why.contains("diff ID"), "{why}"),
        v => panic!("{v:?}"),
    }
    assert_eq!(heard.lock().unwrap().len(), 1);
    // ...and never after, cached or not.
    let e = l.read(ino(&l, "b"), 0, 5).unwrap_err();
    assert!(matches!(e, ReadError::Rejected { .. }), "{e:?}");
}

#[test]
fn a_registry_serving_other_bytes_is_caught_by_the_blob_digest() {
    let (_d, src, l, _heard, _rt) = checked_layer(background(), |d| d);
    // A byte of a tar header (not a chunk payload): no chunk check sees it.
    src.corrupt_at.store(3, Ordering::SeqCst);
    l.warm();
    match l.verdict() {
        Verdict::Bad(why) => assert!(why.contains("gzip") || why.contains("digest"), "{why}"),
        v => panic!("{v:?}"),
    }
}

#[test]
fn verify_now_checks_a_layer_whose_background_fetch_is_off() {
    let (_d, _src, l, _heard, _rt) = checked_layer(quiet(), |d| d);
    l.warm();
    assert_eq!(l.verdict(), Verdict::Pending, "nothing fetched");
    let v = l.verify_now(Instant::now() + Duration::from_secs(30));
    assert_eq!(v, Verdict::Verified);
}

#[test]
fn verify_now_gives_up_at_its_deadline() {
    let (_d, src, l, _heard, _rt) = checked_layer(
        LayerConfig {
            fetch_timeout: Duration::from_millis(300),
            ..quiet()
        },
        |d| d,
    );
    src.hang.store(true, Ordering::SeqCst);
    let t = Instant::now();
    assert_eq!(l.verify_now(t + Duration::from_secs(5)), Verdict::Pending);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn a_failed_fetch_is_remembered_so_retries_fail_at_once() {
    let cfg = LayerConfig {
        fetch_timeout: Duration::from_millis(500),
        failure_memory: Duration::from_millis(300),
        ..quiet()
    };
    let (_d, src, l, a, _rt) = layer(cfg);
    let i = ino(&l, "a");
    src.hang.store(true, Ordering::SeqCst);
    let t = Instant::now();
    assert!(l.read(i, 0, 10).is_err());
    let first = t.elapsed();
    assert!(first >= Duration::from_millis(400), "{first:?}");
    let before = src.requests.load(Ordering::SeqCst);
    // The kernel's retries: answered at once, no new request.
    let t = Instant::now();
    for _ in 0..5 {
        let e = l.read(i, 0, 10).unwrap_err();
        assert!(e.to_string().contains("moments ago"), "{e}");
    }
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(src.requests.load(Ordering::SeqCst), before);
    // Recovery once the source answers again and the memory has passed.
    src.hang.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        match l.read(i, 0, 10) {
            Ok(got) => break got,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("no recovery: {e}"),
        }
    };
    assert_eq!(got, a[..10]);
}

#[test]
fn verified_bytes_are_served_when_the_cache_cannot_store_them() {
    let (d, src, l, a, _rt) = layer(quiet());
    // The cache's directory is gone: every write fails.
    std::fs::remove_dir_all(d.path()).unwrap();
    let i = ino(&l, "a");
    assert_eq!(l.read(i, 1000, 5000).unwrap(), a[1000..6000]);
    assert_eq!(l.read(i, 200_000, 100).unwrap(), a[200_000..200_100]);
    assert!(l.stats.cache_write_failures.load(Ordering::SeqCst) >= 2);
    // Served from memory afterwards: no new request.
    let n = src.requests.load(Ordering::SeqCst);
    assert_eq!(l.read(i, 1000, 10).unwrap(), a[1000..1010]);
    assert_eq!(src.requests.load(Ordering::SeqCst), n);
}

#[test]
fn a_learned_profile_lists_first_reads_in_order_once() {
    let (_d, _src, l, _a, _rt) = layer(quiet());
    let l = l.with_learning(Duration::from_secs(3600), 1000);
    assert!(l.take_learned(false).is_none(), "nothing read yet");
    l.read(ino(&l, "c"), 0, 10).unwrap();
    l.read(ino(&l, "a"), 200 * 1024, 10).unwrap();
    l.read(ino(&l, "c"), 5, 10).unwrap(); // c again: no new entry
    l.read(ino(&l, "a"), 0, 10).unwrap();
    assert!(l.take_learned(false).is_none(), "the window has not passed");
    let p = l.take_learned(true).unwrap();
    assert_eq!(
        p,
        vec![
            (std::path::PathBuf::from("c"), vec![0]),
            (std::path::PathBuf::from("a"), vec![128 * 1024, 0]),
        ]
    );
    assert!(l.take_learned(true).is_none(), "taken once");
}

#[test]
fn learning_stops_after_its_window() {
    let (_d, _src, l, _a, _rt) = layer(quiet());
    let l = l.with_learning(Duration::from_millis(1), 1000);
    l.read(ino(&l, "b"), 0, 5).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    l.read(ino(&l, "c"), 0, 5).unwrap();
    let p = l.take_learned(false).unwrap();
    assert_eq!(p, vec![(std::path::PathBuf::from("b"), vec![0])]);
}

#[test]
fn a_profile_prefetches_what_it_names_and_skips_what_the_layer_lacks() {
    let cfg = LayerConfig {
        prefetch: true,
        ..quiet()
    };
    let (_d, src, l, a, _rt) = layer(cfg);
    let files = vec![
        (std::path::PathBuf::from("../../etc/passwd"), vec![0]),
        (std::path::PathBuf::from("/a"), vec![0]),
        (std::path::PathBuf::from("nope"), vec![0]),
        (std::path::PathBuf::from("a"), vec![256 * 1024, 1 << 40]),
        (std::path::PathBuf::from("c"), vec![0]),
    ];
    let (l, n) = l.with_profile(&files);
    assert_eq!(n, 2, "a's third chunk and c");
    l.warm();
    let after_warm = src.requests.load(Ordering::SeqCst);
    assert!(after_warm >= 1);
    // What the profile named is here: reading it costs no request...
    assert_eq!(l.read(ino(&l, "c"), 0, 4).unwrap(), vec![7u8; 4]);
    assert_eq!(
        l.read(ino(&l, "a"), 256 * 1024, 100).unwrap(),
        a[256 * 1024..256 * 1024 + 100]
    );
    assert_eq!(src.requests.load(Ordering::SeqCst), after_warm);
    // ...and what it did not name is fetched on demand, verified as ever.
    assert_eq!(l.read(ino(&l, "a"), 0, 100).unwrap(), a[..100]);
    assert!(src.requests.load(Ordering::SeqCst) > after_warm);
}

#[test]
fn the_check_does_not_fetch_again_what_reads_fetched() {
    let cfg = LayerConfig {
        readaround: 0,
        ..background()
    };
    let (dir, src, l, heard, _rt) = checked_layer(cfg, |d| d);
    let l = l.with_spool(&dir.path().join("spool"));
    // Reads first: a's second chunk and c.
    l.read(ino(&l, "a"), 128 * 1024, 10).unwrap();
    l.read(ino(&l, "c"), 0, 10).unwrap();
    let by_reads = src.served.load(Ordering::SeqCst);
    assert!(by_reads > 0);
    l.warm();
    assert_eq!(*heard.lock().unwrap(), [Verdict::Verified]);
    assert_eq!(
        src.served.load(Ordering::SeqCst),
        src.size(),
        "reads + the pass fetched every byte exactly once"
    );
}

#[test]
fn a_corrupt_answer_to_a_read_is_not_what_the_check_hashes() {
    let (dir, src, l, heard, _rt) = checked_layer(background(), |d| d);
    let l = l.with_spool(&dir.path().join("spool"));
    let a = ino(&l, "a");
    let first = l.index().chunks(l.index().node(a).unwrap())[0].clone();
    src.corrupt_at
        .store(first.blob_offset + first.blob_len / 2, Ordering::SeqCst);
    assert!(l.read(a, 0, 10).is_err(), "the corrupt chunk is refused");
    src.corrupt_at.store(u64::MAX, Ordering::SeqCst);
    l.warm();
    assert_eq!(*heard.lock().unwrap(), [Verdict::Verified]);
    assert_eq!(l.read(a, 0, 3).unwrap().len(), 3);
}

#[test]
fn a_miss_fetches_the_small_files_of_its_directory_in_the_background() {
    let cfg = LayerConfig {
        dir_ahead: 1 << 20,
        ..quiet()
    };
    let (_d, src, l, _a, _rt) = layer(cfg);
    let l = Arc::new(l);
    let b = ino(&l, "b");
    l.fetch_ahead(b, 0, 5);
    assert_eq!(l.read(b, 0, 5).unwrap(), b"hello");
    // c (20 KiB) comes without being read; a (300 KiB) is not small.
    let c = l.index().chunks(l.index().node(ino(&l, "c")).unwrap())[0].digest;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !l.cache().contains(&c) {
        assert!(Instant::now() < deadline, "c was not fetched ahead");
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = src.requests.load(Ordering::SeqCst);
    assert_eq!(l.read(ino(&l, "c"), 0, 3).unwrap(), vec![7u8; 3]);
    assert_eq!(src.requests.load(Ordering::SeqCst), before);
    let a = l.index().chunks(l.index().node(ino(&l, "a")).unwrap())[0].digest;
    assert!(!l.cache().contains(&a), "a is over the small-file size");
    // Once per directory.
    l.fetch_ahead(ino(&l, "c"), 0, 3);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(src.requests.load(Ordering::SeqCst), before);
}
