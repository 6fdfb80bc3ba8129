//! Test helpers: an in-memory upstream, a server on a loopback port, an
//! observer that records, and waiting for conditions with a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hologram_ctp96::client::{ClientConfig, ClientObserver, Ctp96Client};
use hologram_ctp96::server::{Server, ServerConfig, Upstream, UpstreamError};
use hologram_ctp96::wire::EnergyHints;
use hologram_oci::Digest;

/// Blobs and manifests in memory; counts reads and in-flight reads.
#[derive(Debug, Default)]
pub struct MemUpstream {
    pub blobs: HashMap<Digest, Bytes>,
    pub manifests: HashMap<String, (Bytes, String)>,
    pub reads: AtomicUsize,
    pub delay: Option<Duration>,
    /// Reads wait for a permit of this (a test holds them until it adds
    /// permits: no timing assumptions).
    pub gate: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    /// The next read at or past this offset fails (once).
    pub fail_once_at: Mutex<Option<u64>>,
    /// Whether the server may cache what it reads here.
    pub cacheable: bool,
}

impl MemUpstream {
    pub fn with_blob(mut self, b: Bytes) -> (Self, Digest) {
        let d = Digest::of(&b);
        self.blobs.insert(d, b);
        (self, d)
    }
}

#[async_trait::async_trait]
impl Upstream for MemUpstream {
    async fn manifest(&self, reference: &str) -> Result<(Bytes, String), UpstreamError> {
        self.manifests
            .get(reference)
            .cloned()
            .ok_or_else(|| UpstreamError::NotFound(reference.to_owned()))
    }

    async fn read(
        &self,
        _repository: Option<&str>,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, UpstreamError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        if let Some(g) = &self.gate {
            if let Ok(p) = g.acquire().await {
                p.forget();
            }
        }
        {
            let mut f = self.fail_once_at.lock().unwrap();
            if f.is_some_and(|at| offset >= at) {
                *f = None;
                return Err(UpstreamError::Unavailable("upstream hiccup".into()));
            }
        }
        let b = self
            .blobs
            .get(digest)
            .ok_or_else(|| UpstreamError::NotFound(digest.to_string()))?;
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= b.len() as u64)
            .ok_or_else(|| UpstreamError::OutOfRange(format!("{offset}+{len}")))?;
        Ok(b.slice(offset as usize..end as usize))
    }

    async fn size(&self, _repository: Option<&str>, digest: &Digest) -> Result<u64, UpstreamError> {
        self.blobs
            .get(digest)
            .map(|b| b.len() as u64)
            .ok_or_else(|| UpstreamError::NotFound(digest.to_string()))
    }

    fn cacheable(&self) -> bool {
        self.cacheable
    }
}

/// `n` bytes whose values depend on their offset.
pub fn pattern(n: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..n)
            .map(|i| ((i * 31 + usize::from(seed)) % 251) as u8)
            .collect::<Vec<_>>(),
    )
}

/// A running server on its own runtime, so that stopping it ends every
/// connection too, as a process that dies would. Dropping it stops it.
pub struct Running {
    pub addr: SocketAddr,
    pub server: Server,
    rt: Option<tokio::runtime::Runtime>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server: its tasks and connections are gone when this returns
    /// (the listening socket is closed).
    pub async fn stop(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        // The port refuses connections once the listener is dropped.
        let addr = self.addr;
        assert!(
            wait_for(Duration::from_secs(5), || std::net::TcpStream::connect(
                addr
            )
            .is_err())
            .await,
            "the stopped server still accepts"
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

pub async fn start(cfg: ServerConfig, up: Arc<dyn Upstream>, addr: Option<SocketAddr>) -> Running {
    let listener =
        std::net::TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = Server::new(cfg, up).unwrap();
    let s = server.clone();
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let _ = s.serve(listener, std::future::pending()).await;
    });
    Running {
        addr,
        server,
        rt: Some(rt),
    }
}

/// Records every operation and hint.
#[derive(Debug, Default)]
pub struct Recorder {
    pub ops: Mutex<Vec<(String, String)>>,
    pub hints: Mutex<Vec<EnergyHints>>,
    pub leases: Mutex<Vec<f64>>,
}

impl Recorder {
    pub fn count(&self, op: &str, result: &str) -> usize {
        self.ops
            .lock()
            .unwrap()
            .iter()
            .filter(|(o, r)| o == op && r == result)
            .count()
    }
}

impl ClientObserver for Recorder {
    fn op(&self, op: &'static str, result: &'static str) {
        self.ops.lock().unwrap().push((op.into(), result.into()));
    }
    fn hints(&self, h: &EnergyHints) {
        self.hints.lock().unwrap().push(*h);
    }
    fn lease(&self, s: f64) {
        self.leases.lock().unwrap().push(s);
    }
}

pub fn client(
    url: &str,
    rec: &Arc<Recorder>,
    fetch_timeout: Duration,
    retries: u32,
) -> Ctp96Client {
    let mut cfg = ClientConfig::new(url);
    cfg.fetch_timeout = fetch_timeout;
    cfg.request_timeout = Duration::from_secs(2).min(fetch_timeout);
    cfg.retries = retries;
    Ctp96Client::new(cfg, Arc::clone(rec) as Arc<dyn ClientObserver>).unwrap()
}

/// Waits (polling) until `f` holds, at most `timeout`; false if it never did.
pub async fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}
