//! The CTP-96 server: sessions with leases, manifests by UOR-ID and by
//! reference, blobs with ranges, and the batched, framed `fetch`, over an
//! [`Upstream`] the caller provides (`hologram ctp96 serve` gives it a
//! registry client or an OCI layout). Blobs read from an upstream that
//! wants it are cached on disk, whole and digest-checked.
//!
//! Every upstream call is bounded by `upstream_timeout`; a client that goes
//! away ends its response's producer; fetch streams beyond `fetch_slots`
//! are refused with `503 busy` instead of queueing.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::{Bytes, BytesMut};
use hologram_oci::Digest;
use hologram_trust::UorId;
use rand_core::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::frame::{Frame, FrameFields, FrameKind};
use crate::lease::{OpenError, ServerSession, SessionTable};
use crate::wire::{self, codes, EnergyHints, ErrorBody, LatencyHints, SessionInfo};

/// Media type of a fetch response.
pub const FRAMES_MEDIA_TYPE: &str = "application/vnd.hologram.ctp96.frames";
/// Bytes the server reads from its upstream or cache at once.
const READ_PIECE: u64 = 2 << 20;
/// A HINT frame is sent first and after every this many DATA frames.
const HINT_EVERY: u64 = 64;
/// Manifests remembered by UOR-ID in memory.
const MAX_MANIFESTS: usize = 4096;
/// Largest manifest served.
const MAX_MANIFEST: usize = 4 << 20;

/// Why the upstream could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("out of range: {0}")]
    OutOfRange(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl UpstreamError {
    fn code(&self) -> (&'static str, StatusCode) {
        match self {
            UpstreamError::NotFound(_) => (codes::NOT_FOUND, StatusCode::NOT_FOUND),
            UpstreamError::OutOfRange(_) => {
                (codes::OUT_OF_RANGE, StatusCode::RANGE_NOT_SATISFIABLE)
            }
            UpstreamError::BadRequest(_) => (codes::BAD_REQUEST, StatusCode::BAD_REQUEST),
            UpstreamError::Unavailable(_) => (codes::UNAVAILABLE, StatusCode::BAD_GATEWAY),
        }
    }
}

/// Where the server's bytes come from.
#[async_trait::async_trait]
pub trait Upstream: Send + Sync + std::fmt::Debug + 'static {
    /// The manifest (or index) `reference` names: `repo:tag` or
    /// `repo@sha256:...` (an OCI layout: a ref name or a digest). Its bytes
    /// and media type; digest-addressed ones already checked.
    async fn manifest(&self, reference: &str) -> Result<(Bytes, String), UpstreamError>;
    /// Exactly `len` bytes at `offset` of blob `digest`.
    async fn read(
        &self,
        repository: Option<&str>,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, UpstreamError>;
    /// The blob's size.
    async fn size(&self, repository: Option<&str>, digest: &Digest) -> Result<u64, UpstreamError>;
    /// Whether blobs read from here are worth caching on disk (not for a
    /// local OCI layout).
    fn cacheable(&self) -> bool {
        true
    }
}

/// Server settings (`hologram ctp96 serve` flags).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub max_sessions: usize,
    pub lease: Duration,
    /// Fetch streams served at once; more get `503 busy`.
    pub fetch_slots: usize,
    /// DATA payload size the server sends (at most 1 MiB).
    pub frame_payload: u32,
    /// Whole verified blobs are kept here (`<dir>/blobs/sha256/<hex>`), and
    /// manifests by UOR-ID (`<dir>/manifests/<hex>`).
    pub cache_dir: Option<PathBuf>,
    /// Bound on each upstream call.
    pub upstream_timeout: Duration,
    /// Largest blob copied into the cache.
    pub max_cached_blob: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_sessions: 256,
            lease: Duration::from_secs(300),
            fetch_slots: 64,
            frame_payload: 256 << 10,
            cache_dir: None,
            upstream_timeout: Duration::from_secs(30),
            max_cached_blob: 8 << 30,
        }
    }
}

/// What the server has done (for logs, tests and `hologram status`-like
/// tools).
#[derive(Debug, Default)]
pub struct ServerStats {
    pub sessions_opened: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub fetches: AtomicU64,
    pub fetches_busy: AtomicU64,
    pub frames: AtomicU64,
    pub bytes_from_cache: AtomicU64,
    pub bytes_from_upstream: AtomicU64,
    pub blobs_cached: AtomicU64,
}

/// A CTP-96 server. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    st: Arc<St>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("cfg", &self.st.cfg)
            .field("upstream", &self.st.upstream)
            .finish_non_exhaustive()
    }
}

struct St {
    cfg: ServerConfig,
    upstream: Arc<dyn Upstream>,
    sessions: Mutex<SessionTable>,
    inflight: AtomicUsize,
    salt: [u8; 4],
    counter: AtomicU64,
    manifests: Mutex<HashMap<UorId, (Bytes, String)>>,
    filling: Mutex<HashSet<Digest>>,
    fills: tokio::sync::Semaphore,
    upstream_ms: Mutex<f64>,
    stats: ServerStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    error_with_retry(status, code, message, None)
}

fn error_with_retry(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    retry_after: Option<Duration>,
) -> Response {
    let body = ErrorBody {
        error: code.to_owned(),
        message: message.into(),
        retry_after_ms: retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(d) = retry_after {
        let secs = d.as_secs_f64().ceil().max(1.0) as u64;
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

impl Server {
    /// A server over `upstream`; creates the cache directories.
    pub fn new(mut cfg: ServerConfig, upstream: Arc<dyn Upstream>) -> std::io::Result<Server> {
        cfg.frame_payload = cfg.frame_payload.clamp(1, crate::frame::MAX_DATA_PAYLOAD);
        cfg.fetch_slots = cfg.fetch_slots.max(1);
        if let Some(d) = &cfg.cache_dir {
            std::fs::create_dir_all(d.join("blobs/sha256"))?;
            std::fs::create_dir_all(d.join("manifests"))?;
        }
        let mut salt = [0u8; 4];
        rand_core::OsRng.fill_bytes(&mut salt);
        Ok(Server {
            st: Arc::new(St {
                sessions: Mutex::new(SessionTable::new(cfg.max_sessions, cfg.lease)),
                cfg,
                upstream,
                inflight: AtomicUsize::new(0),
                salt,
                counter: AtomicU64::new(0),
                manifests: Mutex::new(HashMap::new()),
                filling: Mutex::new(HashSet::new()),
                fills: tokio::sync::Semaphore::new(2),
                upstream_ms: Mutex::new(0.0),
                stats: ServerStats::default(),
            }),
        })
    }

    /// Counters of what the server did.
    pub fn stats(&self) -> &ServerStats {
        &self.st.stats
    }

    /// Live sessions.
    pub fn sessions(&self) -> usize {
        let mut t = lock(&self.st.sessions);
        t.purge(Instant::now());
        t.len()
    }

    /// Makes a manifest known by its UOR-ID (an OCI layout's manifests at
    /// start). Returns the UOR-ID.
    pub fn remember_manifest(&self, bytes: Bytes, media_type: String) -> UorId {
        self.st.remember(bytes, media_type)
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/v1/sessions", post(open_session))
            .route("/v1/sessions/{id}", get(get_session).delete(revoke_session))
            .route("/v1/sessions/{id}/renew", post(renew_session))
            .route("/v1/sessions/{id}/fetch", post(fetch))
            .route("/v1/resolve", get(resolve))
            .route("/v1/manifests", get(manifest_by_ref))
            .route("/v1/manifests/{uor_id}", get(manifest_by_uor))
            .route("/v1/blobs/{digest}", get(blob))
            .with_state(Arc::clone(&self.st))
    }

    /// Serves on `listener` until `shutdown` completes; expired sessions
    /// are dropped every second.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let weak = Arc::downgrade(&self.st);
        let reaper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(st) = weak.upgrade() else { return };
                let n = lock(&st.sessions).purge(Instant::now());
                if n > 0 {
                    tracing::info!(expired = n, "sessions whose lease ran out were dropped");
                }
            }
        });
        // A fetch response is a stream of small frames (a 96-byte header,
        // then its payload): with Nagle's algorithm on, a frame written
        // while the previous one is unacknowledged waits for the client's
        // delayed ACK (up to 40 ms) — on every response.
        use axum::serve::ListenerExt as _;
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        let r = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await;
        reaper.abort();
        r
    }
}

impl St {
    fn remember(&self, bytes: Bytes, media_type: String) -> UorId {
        let id = UorId::of(&bytes);
        if let Some(d) = &self.cfg.cache_dir {
            let hexname = hex::encode(id.digest);
            let path = d.join("manifests").join(&hexname);
            let tmp = d.join("manifests").join(format!(".tmp-{hexname}"));
            let mut doc = Vec::with_capacity(bytes.len() + media_type.len() + 1);
            doc.extend_from_slice(media_type.as_bytes());
            doc.push(b'\n');
            doc.extend_from_slice(&bytes);
            if std::fs::write(&tmp, &doc)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .is_err()
            {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        let mut m = lock(&self.manifests);
        if m.len() >= MAX_MANIFESTS && !m.contains_key(&id) {
            m.clear();
        }
        m.insert(id, (bytes, media_type));
        id
    }

    /// A manifest known by UOR-ID: memory, then the cache directory (the
    /// file is checked: it must hash to the UOR-ID it is named by).
    fn known_manifest(&self, id: &UorId) -> Option<(Bytes, String)> {
        if let Some(m) = lock(&self.manifests).get(id) {
            return Some(m.clone());
        }
        let d = self.cfg.cache_dir.as_ref()?;
        let doc = std::fs::read(d.join("manifests").join(hex::encode(id.digest))).ok()?;
        let nl = doc.iter().position(|b| *b == b'\n')?;
        let media = String::from_utf8(doc[..nl].to_vec()).ok()?;
        let bytes = Bytes::copy_from_slice(&doc[nl + 1..]);
        if UorId::of(&bytes) != *id {
            tracing::warn!(uor_id = %id, "cached manifest does not hash to its UOR-ID; ignored");
            return None;
        }
        lock(&self.manifests).insert(*id, (bytes.clone(), media.clone()));
        Some((bytes, media))
    }

    fn hints(&self) -> EnergyHints {
        let inflight = self.inflight.load(Ordering::Relaxed);
        let slots = self.cfg.fetch_slots;
        let (sessions, max) = {
            let t = lock(&self.sessions);
            (t.len(), t.max())
        };
        let load = (inflight as f64 / slots as f64)
            .max(sessions as f64 / max as f64)
            .clamp(0.0, 1.0);
        let concurrency = ((8.0 * (1.0 - load)).round() as u32).max(1);
        let chunk_size = if load < 0.5 {
            8 << 20
        } else if load < 0.8 {
            4 << 20
        } else {
            1 << 20
        };
        EnergyHints {
            load,
            concurrency,
            chunk_size,
            retry_after_ms: if inflight >= slots { 250 } else { 0 },
        }
    }

    fn latency(&self) -> LatencyHints {
        let c = self.stats.bytes_from_cache.load(Ordering::Relaxed) as f64;
        let u = self.stats.bytes_from_upstream.load(Ordering::Relaxed) as f64;
        LatencyHints {
            upstream_ms: *lock(&self.upstream_ms),
            cache_hit_ratio: if c + u > 0.0 { c / (c + u) } else { 0.0 },
        }
    }

    fn info(&self, s: &ServerSession, nonce: String) -> SessionInfo {
        let lease_seconds = lock(&self.sessions).lease().as_secs();
        SessionInfo {
            session_id: wire::format_session_id(s.id),
            lease_id: s.lease_id.clone(),
            expires_at: hologram_oci::time::format_rfc3339(s.expires_wall),
            lease_seconds,
            nonce,
            energy_hints: self.hints(),
            latency_hints: self.latency(),
        }
    }

    fn nonce(&self) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.salt);
        n[4..].copy_from_slice(&self.counter.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        n
    }

    fn note_upstream(&self, t: Instant, bytes: u64) {
        self.stats
            .bytes_from_upstream
            .fetch_add(bytes, Ordering::Relaxed);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let mut m = lock(&self.upstream_ms);
        *m = if *m == 0.0 { ms } else { *m * 0.8 + ms * 0.2 };
    }

    fn cached_path(&self, d: &Digest) -> Option<PathBuf> {
        let dir = self.cfg.cache_dir.as_ref()?;
        Some(dir.join("blobs/sha256").join(d.hex()))
    }

    /// Bytes `[offset, offset+len)` of a blob: from the cache when the
    /// whole blob is there, else from the upstream (and a background copy
    /// of the whole blob into the cache starts).
    async fn read(
        self: &Arc<Self>,
        repository: Option<&str>,
        d: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, UpstreamError> {
        if let Some(path) = self.cached_path(d) {
            let (p, digest) = (path.clone(), *d);
            let r = tokio::task::spawn_blocking(move || read_file_range(&p, offset, len))
                .await
                .map_err(|e| UpstreamError::Unavailable(format!("cache read task: {e}")))?;
            match r {
                Ok(Some(b)) => {
                    self.stats
                        .bytes_from_cache
                        .fetch_add(len, Ordering::Relaxed);
                    return Ok(b);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(blob = %digest, error = %e, "cached blob unreadable");
                    if let UpstreamError::OutOfRange(_) = e {
                        return Err(e);
                    }
                }
            }
            if self.upstream.cacheable() {
                self.start_fill(repository, d);
            }
        }
        let t = Instant::now();
        let r = tokio::time::timeout(
            self.cfg.upstream_timeout,
            self.upstream.read(repository, d, offset, len),
        )
        .await
        .map_err(|_| {
            UpstreamError::Unavailable(format!(
                "upstream gave no answer within {:?}",
                self.cfg.upstream_timeout
            ))
        })??;
        if r.len() as u64 != len {
            return Err(UpstreamError::Unavailable(format!(
                "upstream returned {} of {len} bytes",
                r.len()
            )));
        }
        self.note_upstream(t, len);
        Ok(r)
    }

    /// Copies blob `d` into the cache in the background (once at a time per
    /// blob, two blobs at a time), checking its digest before it is kept.
    fn start_fill(self: &Arc<Self>, repository: Option<&str>, d: &Digest) {
        let Some(path) = self.cached_path(d) else {
            return;
        };
        if !lock(&self.filling).insert(*d) {
            return;
        }
        let (st, repo, digest) = (Arc::clone(self), repository.map(str::to_owned), *d);
        tokio::spawn(async move {
            let r = st.fill(repo.as_deref(), &digest, &path).await;
            match r {
                Ok(size) => {
                    st.stats.blobs_cached.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(blob = %digest, size, "blob cached");
                }
                Err(e) => tracing::warn!(blob = %digest, error = %e, "blob not cached"),
            }
            lock(&st.filling).remove(&digest);
        });
    }

    async fn fill(&self, repo: Option<&str>, d: &Digest, path: &Path) -> Result<u64, String> {
        let _permit = self.fills.acquire().await.map_err(|e| e.to_string())?;
        let timeout = self.cfg.upstream_timeout;
        let size = tokio::time::timeout(timeout, self.upstream.size(repo, d))
            .await
            .map_err(|_| "size: timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if size > self.cfg.max_cached_blob {
            return Err(format!(
                "{size} bytes, over the {} byte limit",
                self.cfg.max_cached_blob
            ));
        }
        let dir = path.parent().ok_or("no cache directory")?;
        let tmp = dir.join(format!(".tmp-{}", d.hex()));
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut hasher = Sha256::new();
        let mut off = 0;
        let result: Result<(), String> = async {
            use tokio::io::AsyncWriteExt as _;
            while off < size {
                let n = READ_PIECE.min(size - off);
                let t = Instant::now();
                let b = tokio::time::timeout(timeout, self.upstream.read(repo, d, off, n))
                    .await
                    .map_err(|_| format!("read at {off}: timed out"))?
                    .map_err(|e| e.to_string())?;
                if b.len() as u64 != n {
                    return Err(format!("short read at {off}"));
                }
                self.note_upstream(t, 0);
                hasher.update(&b);
                file.write_all(&b).await.map_err(|e| e.to_string())?;
                off += n;
            }
            file.flush().await.map_err(|e| e.to_string())?;
            let got: [u8; 32] = hasher.finalize().into();
            if &got != d.as_bytes() {
                return Err("content does not match its digest".into());
            }
            tokio::fs::rename(&tmp, path)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result.map(|()| size)
    }
}

/// `Ok(None)`: no such file. A range past the end is
/// [`UpstreamError::OutOfRange`].
fn read_file_range(path: &Path, offset: u64, len: u64) -> Result<Option<Bytes>, UpstreamError> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(UpstreamError::Unavailable(e.to_string())),
    };
    let size = f
        .metadata()
        .map_err(|e| UpstreamError::Unavailable(e.to_string()))?
        .len();
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(UpstreamError::OutOfRange(format!(
            "bytes {offset}+{len} of a {size}-byte blob"
        )));
    }
    let n = usize::try_from(len).map_err(|_| UpstreamError::BadRequest("length".into()))?;
    let mut buf = vec![0u8; n];
    f.read_exact_at(&mut buf, offset)
        .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
    Ok(Some(Bytes::from(buf)))
}

/// The value of `name` in a query string.
fn query_param(q: Option<&str>, name: &str) -> Option<String> {
    let q = q?;
    let url = reqwest::Url::parse(&format!("http://q.invalid/?{q}")).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn session_id(s: &str) -> Result<u64, Box<Response>> {
    wire::parse_session_id(s).ok_or_else(|| {
        Box::new(error_response(
            StatusCode::NOT_FOUND,
            codes::UNKNOWN_SESSION,
            format!("{s:?} is not a session id"),
        ))
    })
}

fn unknown_session(id: u64) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        codes::UNKNOWN_SESSION,
        format!(
            "no session {} (expired, revoked, or never opened here)",
            wire::format_session_id(id)
        ),
    )
}

async fn open_session(State(st): State<Arc<St>>, body: Bytes) -> Response {
    let req: wire::OpenSession = match wire::parse_json(&body) {
        Ok(r) => r,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, e),
    };
    if !wire::is_client_nonce(&req.nonce) {
        return error_response(
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            "nonce must be 24 lowercase hex digits",
        );
    }
    if let Some(u) = &req.uor_id {
        if UorId::parse(u).is_err() {
            return error_response(
                StatusCode::BAD_REQUEST,
                codes::BAD_REQUEST,
                "invalid uor_id",
            );
        }
    }
    let client: String = req.client.chars().take(128).collect();
    let now = Instant::now();
    for _ in 0..8 {
        let id = rand_core::OsRng.next_u64();
        let mut lease = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut lease);
        let opened = lock(&st.sessions).open(
            id,
            format!("lease-{}", hex::encode(lease)),
            client.clone(),
            req.uor_id.clone(),
            now,
        );
        match opened {
            Ok(Some(s)) => {
                st.stats.sessions_opened.fetch_add(1, Ordering::Relaxed);
                tracing::info!(session = %wire::format_session_id(s.id), client = %s.client, uor_id = ?s.uor_id, "session opened");
                let info = st.info(&s, req.nonce);
                return (StatusCode::CREATED, axum::Json(info)).into_response();
            }
            Ok(None) => continue,
            Err(OpenError::Limit { limit, retry_after }) => {
                st.stats.sessions_refused.fetch_add(1, Ordering::Relaxed);
                return error_with_retry(
                    StatusCode::SERVICE_UNAVAILABLE,
                    codes::SESSION_LIMIT,
                    format!("this server has its limit of {limit} sessions"),
                    Some(retry_after),
                );
            }
        }
    }
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        codes::UNAVAILABLE,
        "no free session id",
    )
}

async fn get_session(State(st): State<Arc<St>>, UrlPath(id): UrlPath<String>) -> Response {
    let id = match session_id(&id) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let s = lock(&st.sessions).get(id, Instant::now()).cloned();
    match s {
        Some(s) => axum::Json(st.info(&s, String::new())).into_response(),
        None => unknown_session(id),
    }
}

async fn renew_session(State(st): State<Arc<St>>, UrlPath(id): UrlPath<String>) -> Response {
    let id = match session_id(&id) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let s = lock(&st.sessions).renew(id, Instant::now());
    match s {
        Some(s) => axum::Json(st.info(&s, String::new())).into_response(),
        None => unknown_session(id),
    }
}

async fn revoke_session(State(st): State<Arc<St>>, UrlPath(id): UrlPath<String>) -> Response {
    let id = match session_id(&id) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    if lock(&st.sessions).revoke(id) {
        tracing::info!(session = %wire::format_session_id(id), "session revoked");
        StatusCode::NO_CONTENT.into_response()
    } else {
        unknown_session(id)
    }
}

/// Gives a fetch slot back when the producer ends, however it ends.
struct Slot(Arc<St>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn fetch(State(st): State<Arc<St>>, UrlPath(id): UrlPath<String>, body: Bytes) -> Response {
    let session = match session_id(&id) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    if lock(&st.sessions).get(session, Instant::now()).is_none() {
        return unknown_session(session);
    }
    let req = match wire::parse_json::<wire::FetchRequest>(&body).and_then(|r| r.check()) {
        Ok(r) => r,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, e),
    };
    let taken = st.inflight.fetch_add(1, Ordering::Relaxed);
    let slot = Slot(Arc::clone(&st));
    if taken >= st.cfg.fetch_slots {
        drop(slot);
        st.stats.fetches_busy.fetch_add(1, Ordering::Relaxed);
        return error_with_retry(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::BUSY,
            format!("all {} fetch slots are in use", st.cfg.fetch_slots),
            Some(Duration::from_millis(250)),
        );
    }
    st.stats.fetches.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(produce(slot, session, req, tx));
    let mut resp =
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(FRAMES_MEDIA_TYPE),
    );
    resp
}

/// Writes the frames of one response; stops when the client goes away.
async fn produce(
    slot: Slot,
    session: u64,
    req: wire::CheckedFetch,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let st = Arc::clone(&slot.0);
    let mut seq = 0u64;
    let mut data_frames = 0u64;
    let mut total = 0u64;
    let frame = |kind: FrameKind, seq: u64, index: u32, offset: u64, payload: Bytes| {
        Frame::new(
            FrameFields {
                kind,
                session,
                sequence: seq,
                request_index: index,
                object_offset: offset,
                nonce: st.nonce(),
                unix_ms: unix_ms(),
            },
            payload,
        )
    };
    macro_rules! send {
        ($f:expr) => {{
            let f = match $f {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "cannot make a frame");
                    return;
                }
            };
            seq += 1;
            st.stats.frames.fetch_add(1, Ordering::Relaxed);
            // A client that stops reading loses its response (and its
            // fetch slot) after `upstream_timeout`.
            match tokio::time::timeout(st.cfg.upstream_timeout, tx.send(Ok(f.encode()))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return, // the client went away
                Err(_) => {
                    tracing::info!(session = %wire::format_session_id(session), "client stopped reading; response dropped");
                    return;
                }
            }
        }};
    }
    let hint = |st: &St| Bytes::from(serde_json::to_vec(&st.hints()).unwrap_or_default());
    send!(frame(FrameKind::Hint, seq, 0, 0, hint(&st)));
    let repo = req.repository.as_deref();
    let piece = READ_PIECE.max(u64::from(st.cfg.frame_payload));
    for (i, (digest, range)) in req.ranges.iter().enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let mut off = range.start;
        let mut failure = None;
        while off < range.end {
            let n = piece.min(range.end - off);
            match st.read(repo, digest, off, n).await {
                Ok(bytes) => {
                    let mut at = 0usize;
                    while at < bytes.len() {
                        let m = (st.cfg.frame_payload as usize).min(bytes.len() - at);
                        let payload = bytes.slice(at..at + m);
                        send!(frame(FrameKind::Data, seq, index, off + at as u64, payload));
                        data_frames += 1;
                        if data_frames.is_multiple_of(HINT_EVERY) {
                            send!(frame(FrameKind::Hint, seq, 0, 0, hint(&st)));
                        }
                        at += m;
                    }
                    total += n;
                    off += n;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            // Bytes of this range already sent are discarded by the client
            // (END still counts them: every DATA byte of the response).
            tracing::info!(blob = %digest, offset = range.start, len = range.end - range.start, error = %e, "range failed");
            let (code, _) = e.code();
            let body = ErrorBody {
                error: code.to_owned(),
                message: e.to_string().chars().take(1024).collect(),
                retry_after_ms: None,
            };
            send!(frame(
                FrameKind::Error,
                seq,
                index,
                0,
                Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
            ));
        }
    }
    let count = u32::try_from(req.ranges.len()).unwrap_or(u32::MAX);
    send!(frame(FrameKind::End, seq, count, total, Bytes::new()));
    let _ = seq;
    drop(slot);
}

async fn resolve(State(st): State<Arc<St>>, RawQuery(q): RawQuery) -> Response {
    let Some(r) = query_param(q.as_deref(), "ref") else {
        return error_response(
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            "ref= is required",
        );
    };
    match upstream_manifest(&st, &r).await {
        Ok((bytes, media_type)) => {
            let id = st.remember(bytes.clone(), media_type.clone());
            axum::Json(wire::Resolved {
                uor_id: id.to_string(),
                digest: Digest::of(&bytes),
                media_type,
                size: bytes.len() as u64,
            })
            .into_response()
        }
        Err(e) => upstream_error(&e),
    }
}

async fn upstream_manifest(st: &St, r: &str) -> Result<(Bytes, String), UpstreamError> {
    if r.is_empty() || r.len() > 512 {
        return Err(UpstreamError::BadRequest("invalid reference".into()));
    }
    let (bytes, media) = tokio::time::timeout(st.cfg.upstream_timeout, st.upstream.manifest(r))
        .await
        .map_err(|_| UpstreamError::Unavailable("upstream timed out".into()))??;
    if bytes.len() > MAX_MANIFEST {
        return Err(UpstreamError::Unavailable("manifest too large".into()));
    }
    Ok((bytes, media))
}

fn upstream_error(e: &UpstreamError) -> Response {
    let (code, status) = e.code();
    error_response(status, code, e.to_string())
}

fn manifest_response(bytes: Bytes, media_type: &str) -> Response {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&Digest::of(&bytes).to_string()) {
        h.insert("docker-content-digest", v);
    }
    (StatusCode::OK, h, bytes).into_response()
}

async fn manifest_by_ref(State(st): State<Arc<St>>, RawQuery(q): RawQuery) -> Response {
    let Some(r) = query_param(q.as_deref(), "ref") else {
        return error_response(
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            "ref= is required",
        );
    };
    match upstream_manifest(&st, &r).await {
        Ok((bytes, media)) => {
            st.remember(bytes.clone(), media.clone());
            manifest_response(bytes, &media)
        }
        Err(e) => upstream_error(&e),
    }
}

async fn manifest_by_uor(State(st): State<Arc<St>>, UrlPath(u): UrlPath<String>) -> Response {
    let Ok(id) = UorId::parse(&u) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            "invalid UOR-ID",
        );
    };
    match st.known_manifest(&id) {
        Some((bytes, media)) => manifest_response(bytes, &media),
        None => error_response(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            format!("no manifest with UOR-ID {id} is known here (resolve it by reference first)"),
        ),
    }
}

/// `bytes=A-B` (one range) → (A, B inclusive).
fn parse_range(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.trim().strip_prefix("bytes=")?.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (b >= a).then_some((a, b))
}

async fn blob(
    State(st): State<Arc<St>>,
    UrlPath(d): UrlPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Ok(digest) = Digest::parse(&d) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            "invalid digest",
        );
    };
    let repo = query_param(q.as_deref(), "repository");
    if repo.as_deref().is_some_and(|r| !wire::is_repository(r)) {
        return error_response(
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            "invalid repository",
        );
    }
    let size = match st
        .cached_path(&digest)
        .and_then(|p| std::fs::metadata(p).ok())
    {
        Some(m) => m.len(),
        None => match tokio::time::timeout(
            st.cfg.upstream_timeout,
            st.upstream.size(repo.as_deref(), &digest),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return upstream_error(&e),
            Err(_) => {
                return upstream_error(&UpstreamError::Unavailable("upstream timed out".into()))
            }
        },
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v).ok_or(()));
    let (start, end, status) = match range {
        None => (0, size, StatusCode::OK),
        Some(Ok((a, b))) if a < size => (a, (b + 1).min(size), StatusCode::PARTIAL_CONTENT),
        Some(_) => {
            let mut r = error_response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                codes::OUT_OF_RANGE,
                "unsatisfiable range",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let taken = st.inflight.fetch_add(1, Ordering::Relaxed);
    let _slot = Slot(Arc::clone(&st));
    if taken >= st.cfg.fetch_slots {
        st.stats.fetches_busy.fetch_add(1, Ordering::Relaxed);
        return error_with_retry(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::BUSY,
            format!("all {} fetch slots are in use", st.cfg.fetch_slots),
            Some(Duration::from_millis(250)),
        );
    }
    if end - start > wire::MAX_FETCH_BYTES {
        return error_response(
            StatusCode::RANGE_NOT_SATISFIABLE,
            codes::OUT_OF_RANGE,
            format!("at most {} bytes per request", wire::MAX_FETCH_BYTES),
        );
    }
    let mut out = BytesMut::with_capacity((end - start) as usize);
    let mut off = start;
    while off < end {
        let n = READ_PIECE.min(end - off);
        match st.read(repo.as_deref(), &digest, off, n).await {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => return upstream_error(&e),
        }
        off += n;
    }
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    (status, h, out.freeze()).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ranges_and_queries() {
        assert_eq!(parse_range("bytes=0-9"), Some((0, 9)));
        assert_eq!(parse_range("bytes=9-0"), None);
        assert_eq!(parse_range("bytes=0-"), None);
        assert_eq!(
            query_param(Some("ref=e2e%2Fx%3A1&y=2"), "ref").as_deref(),
            Some("e2e/x:1")
        );
        assert_eq!(query_param(None, "ref"), None);
    }
}
