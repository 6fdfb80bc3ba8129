//! The CTP-96 client: one session per endpoint, renewed before its lease
//! ends and re-opened when it is gone; batched range reads whose frames
//! pass every check of [`crate::validate`]; energy hints obeyed.
//!
//! Every call is bounded: each HTTP exchange by `request_timeout` (also the
//! longest silence inside a response body), a whole read by
//! `fetch_timeout` (retries, re-opens and hint waits included). A response
//! that fails a check is dropped at the bad frame, counted by reason, and
//! the ranges it had not completed are asked for again, at most `retries`
//! more times.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hologram_oci::Digest;
use hologram_source::{check_ranges, BlobSource, SourceError, SourceKind};
use hologram_trust::UorId;
use rand_core::RngCore as _;
use reqwest::{StatusCode, Url};

use crate::frame::{FrameDecoder, FrameError};
use crate::lease::renew_at;
use crate::validate::{Event, NonceWindow, ResponseCheck, NONCE_WINDOW};
use crate::wire::{
    self, codes, EnergyHints, ErrorBody, FetchRequest, RangeSpec, SessionInfo, MAX_RANGES,
};

/// The operations the client counts (`op` label) and their results.
pub const CLIENT_OPS: &[(&str, &[&str])] = &[
    ("session_open", &["ok", "error", "limit"]),
    ("session_renew", &["ok", "error", "gone"]),
    ("session_close", &["ok", "error"]),
    ("fetch", &["ok", "error", "retry"]),
    ("frame_rejected", crate::frame::REJECT_REASONS),
];

/// Hears what the client does (the daemon's metrics).
pub trait ClientObserver: Send + Sync + std::fmt::Debug {
    /// One operation and its result (see [`CLIENT_OPS`]).
    fn op(&self, _op: &'static str, _result: &'static str) {}
    /// Hints received (already clamped).
    fn hints(&self, _hints: &EnergyHints) {}
    /// A lease granted or renewed, of this many seconds.
    fn lease(&self, _seconds: f64) {}
    /// Bytes received in DATA frames that passed every check.
    fn bytes(&self, _n: u64) {}
}

/// Observes nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl ClientObserver for NoObserver {}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, `http://host:port` (a path prefix is kept).
    pub endpoint: String,
    /// Bound on each HTTP exchange, and on silence inside a response.
    pub request_timeout: Duration,
    /// Bound on a whole read (retries included).
    pub fetch_timeout: Duration,
    /// Extra attempts after a response that failed or was rejected.
    pub retries: u32,
    /// Sent as `client` when a session opens.
    pub client_name: String,
}

impl ClientConfig {
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientConfig {
            endpoint: endpoint.into(),
            request_timeout: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(30),
            retries: 3,
            client_name: concat!("hologram-ctp96/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// What the client has done since it was made.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub sessions_opened: AtomicU64,
    pub renewals: AtomicU64,
    pub fetches: AtomicU64,
    pub frames_rejected: AtomicU64,
    pub bytes: AtomicU64,
}

/// A client of one CTP-96 endpoint. Cheap to clone; clones share the
/// session, the hints and the connection pool.
#[derive(Clone)]
pub struct Ctp96Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ctp96Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctp96Client")
            .field("endpoint", &self.inner.cfg.endpoint)
            .finish_non_exhaustive()
    }
}

struct Session {
    id: u64,
    id_text: String,
    lease_id: String,
    lease: Duration,
    /// When the lease was last granted (our clock).
    granted: Mutex<Instant>,
    nonces: Mutex<NonceWindow>,
}

impl Session {
    fn expires(&self) -> Instant {
        *lock(&self.granted) + self.lease
    }
}

struct Inner {
    cfg: ClientConfig,
    base: Url,
    http: reqwest::Client,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    hints: Mutex<EnergyHints>,
    gate: Gate,
    /// No request before this (a hint's or an answer's `retry_after_ms`).
    wait_until: Mutex<Option<Instant>>,
    /// No session open attempt before this (the server's session limit).
    limit_until: Mutex<Option<(Instant, String)>>,
    observer: Arc<dyn ClientObserver>,
    stats: ClientStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why one attempt did not complete.
enum Attempt {
    /// The session is gone: open a new one and try again.
    Reopen,
    /// Worth another attempt (transport error, busy, a rejected response).
    Retry(SourceError),
    /// Not worth another attempt.
    Fatal(SourceError),
}

/// At most `limit` holders at once; the limit follows the hints.
struct Gate {
    state: Mutex<(usize, usize)>,
    notify: tokio::sync::Notify,
}

struct GateGuard<'a>(&'a Gate);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).0 -= 1;
        self.0.notify.notify_waiters();
    }
}

impl Gate {
    fn new(limit: usize) -> Self {
        Gate {
            state: Mutex::new((0, limit.max(1))),
            notify: tokio::sync::Notify::new(),
        }
    }

    fn set_limit(&self, limit: usize) {
        lock(&self.state).1 = limit.max(1);
        self.notify.notify_waiters();
    }

    async fn acquire(&self, deadline: Instant) -> Option<GateGuard<'_>> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = lock(&self.state);
                if s.0 < s.1 {
                    s.0 += 1;
                    return Some(GateGuard(self));
                }
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return None;
            }
        }
    }
}

fn json_post<T: serde::Serialize>(
    rb: reqwest::RequestBuilder,
    body: &T,
) -> reqwest::RequestBuilder {
    rb.header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(body).unwrap_or_default())
}

fn unavailable(msg: impl Into<String>) -> SourceError {
    SourceError::Unavailable(msg.into())
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}

/// Reads a non-2xx answer's body (bounded) as [`ErrorBody`].
async fn error_body(resp: reqwest::Response, timeout: Duration) -> ErrorBody {
    let status = resp.status();
    let body = tokio::time::timeout(timeout, read_limited(resp, 64 << 10)).await;
    match body {
        Ok(Ok(b)) => wire::parse_json::<ErrorBody>(&b).unwrap_or_else(|_| ErrorBody {
            error: String::new(),
            message: format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&b[..b.len().min(200)])
            ),
            retry_after_ms: None,
        }),
        _ => ErrorBody {
            error: String::new(),
            message: format!("HTTP {status}"),
            retry_after_ms: None,
        },
    }
}

async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Bytes, String> {
    let mut out = BytesMut::new();
    while let Some(c) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if out.len() + c.len() > limit {
            return Err(format!("body over {limit} bytes"));
        }
        out.extend_from_slice(&c);
    }
    Ok(out.freeze())
}

fn retry_after(e: &ErrorBody) -> Duration {
    Duration::from_millis(
        e.retry_after_ms
            .unwrap_or(250)
            .clamp(100, wire::MAX_HINT_WAIT_MS),
    )
}

/// The read's error for a range the server answered with ERROR.
fn range_error(e: &ErrorBody) -> Attempt {
    let msg = format!("CTP-96 server: {}: {}", e.error, e.message);
    match e.error.as_str() {
        codes::NOT_FOUND => Attempt::Fatal(SourceError::NotFound(msg)),
        codes::OUT_OF_RANGE => Attempt::Fatal(SourceError::OutOfRange(msg)),
        codes::BAD_REQUEST => Attempt::Fatal(SourceError::Other(msg)),
        _ => Attempt::Retry(unavailable(msg)),
    }
}

impl Ctp96Client {
    /// A client of `cfg.endpoint`. No request is made until the first read.
    pub fn new(cfg: ClientConfig, observer: Arc<dyn ClientObserver>) -> Result<Self, String> {
        let mut base = Url::parse(&cfg.endpoint)
            .map_err(|e| format!("CTP-96 endpoint {:?}: {e}", cfg.endpoint))?;
        if base.scheme() != "http" && base.scheme() != "https" {
            return Err(format!("CTP-96 endpoint {:?}: not http(s)", cfg.endpoint));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        if cfg.request_timeout.is_zero() || cfg.fetch_timeout.is_zero() {
            return Err("CTP-96 timeouts must be non-zero".into());
        }
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(cfg.client_name.clone())
            .build()
            .map_err(|e| format!("building the HTTP client: {}", error_chain(&e)))?;
        let hints = EnergyHints::default();
        Ok(Ctp96Client {
            inner: Arc::new(Inner {
                base,
                http,
                session: tokio::sync::Mutex::new(None),
                gate: Gate::new(hints.concurrency as usize),
                hints: Mutex::new(hints),
                wait_until: Mutex::new(None),
                limit_until: Mutex::new(None),
                observer,
                stats: ClientStats::default(),
                cfg,
            }),
        })
    }

    /// The endpoint's URL as configured.
    pub fn endpoint(&self) -> &str {
        &self.inner.cfg.endpoint
    }

    pub fn stats(&self) -> &ClientStats {
        &self.inner.stats
    }

    /// The hints in force.
    pub fn hints(&self) -> EnergyHints {
        *lock(&self.inner.hints)
    }

    /// The session in use now: (session id, lease id), if one is open.
    pub fn session(&self) -> Option<(String, String)> {
        let s = self.inner.session.try_lock().ok()?;
        s.as_ref().map(|s| (s.id_text.clone(), s.lease_id.clone()))
    }

    /// Revokes the session (`DELETE`), if one is open.
    pub async fn close(&self) {
        let s = self.inner.session.lock().await.take();
        let Some(s) = s else { return };
        let r = self
            .inner
            .send(
                self.inner
                    .http
                    .delete(self.inner.url(&format!("v1/sessions/{}", s.id_text))),
            )
            .await;
        let ok = matches!(&r, Ok(resp) if resp.status().is_success());
        self.inner
            .observer
            .op("session_close", if ok { "ok" } else { "error" });
    }

    /// Bytes of the ranges asked for, one entry per range, in order.
    pub async fn read(
        &self,
        repository: Option<&str>,
        ranges: &[(Digest, Range<u64>)],
    ) -> Result<Vec<Bytes>, SourceError> {
        if let Some(r) = repository {
            if !wire::is_repository(r) {
                return Err(SourceError::Other(format!("invalid repository {r:?}")));
            }
        }
        let deadline = Instant::now() + self.inner.cfg.fetch_timeout;
        let r = tokio::time::timeout_at(
            deadline.into(),
            self.inner.read(repository, ranges, deadline),
        )
        .await;
        match r {
            Ok(r) => r,
            Err(_) => Err(unavailable(format!(
                "CTP-96 {}: no answer within {:?}",
                self.inner.cfg.endpoint, self.inner.cfg.fetch_timeout
            ))),
        }
    }

    /// `GET /v1/resolve?ref=`: what the server says the reference names.
    pub async fn resolve(&self, reference: &str) -> Result<wire::Resolved, SourceError> {
        let mut url = self.inner.url("v1/resolve");
        url.query_pairs_mut().append_pair("ref", reference);
        let b = self.inner.get_bytes(url, 64 << 10).await?;
        wire::parse_json(&b).map_err(SourceError::Integrity)
    }

    /// `GET /v1/manifests?ref=`: the manifest `reference` (`repo:tag` or
    /// `repo@sha256:...`) names upstream. A digest reference is checked
    /// against the bytes.
    pub async fn manifest_by_ref(&self, reference: &str) -> Result<Bytes, SourceError> {
        let mut url = self.inner.url("v1/manifests");
        url.query_pairs_mut().append_pair("ref", reference);
        let b = self.inner.get_bytes(url, 4 << 20).await?;
        if let Some((_, d)) = reference.rsplit_once('@') {
            let d = Digest::parse(d).map_err(|e| SourceError::Other(e.to_string()))?;
            if !d.matches(&b) {
                return Err(SourceError::Integrity(format!(
                    "the manifest served for {reference} does not match its digest"
                )));
            }
        }
        Ok(b)
    }

    /// The manifest with UOR-ID `id`, checked by recomputing its UOR-ID.
    pub async fn manifest_by_uor(&self, id: &UorId) -> Result<Bytes, SourceError> {
        let url = self.inner.url(&format!("v1/manifests/{id}"));
        let b = self.inner.get_bytes(url, 4 << 20).await?;
        if UorId::of(&b) != *id {
            return Err(SourceError::Integrity(format!(
                "the manifest served for {id} has another UOR-ID"
            )));
        }
        Ok(b)
    }
}

impl Inner {
    fn url(&self, path: &str) -> Url {
        // `path` is ours (no user input but checked ids): joining cannot fail
        // for a valid base; fall back to the base to stay total.
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, SourceError> {
        let t = self.cfg.request_timeout;
        match tokio::time::timeout(t, rb.send()).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(unavailable(format!(
                "CTP-96 {}: {}",
                self.cfg.endpoint,
                error_chain(&e)
            ))),
            Err(_) => Err(unavailable(format!(
                "CTP-96 {}: no answer within {t:?}",
                self.cfg.endpoint
            ))),
        }
    }

    async fn get_bytes(&self, url: Url, limit: usize) -> Result<Bytes, SourceError> {
        let resp = self.send(self.http.get(url)).await?;
        let status = resp.status();
        if !status.is_success() {
            let e = error_body(resp, self.cfg.request_timeout).await;
            let msg = format!("CTP-96 server: {} {}", e.error, e.message);
            return Err(match status {
                StatusCode::NOT_FOUND => SourceError::NotFound(msg),
                StatusCode::BAD_REQUEST => SourceError::Other(msg),
                _ => unavailable(msg),
            });
        }
        tokio::time::timeout(self.cfg.request_timeout, read_limited(resp, limit))
            .await
            .map_err(|_| unavailable("CTP-96 answer stalled"))?
            .map_err(SourceError::Integrity)
    }

    fn apply_hints(&self, h: EnergyHints) {
        let h = h.clamped();
        *lock(&self.hints) = h;
        self.gate.set_limit(h.concurrency as usize);
        if h.retry_after_ms > 0 {
            self.wait(Duration::from_millis(h.retry_after_ms));
        }
        self.observer.hints(&h);
    }

    fn wait(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut w = lock(&self.wait_until);
        if w.is_none_or(|t| t < until) {
            *w = Some(until);
        }
    }

    /// Sleeps until no hint or answer asks to wait any more (never past
    /// `deadline`: then it is an error).
    async fn obey_wait(&self, deadline: Instant) -> Result<(), SourceError> {
        let until = *lock(&self.wait_until);
        if let Some(t) = until.filter(|t| *t > Instant::now()) {
            if t >= deadline {
                return Err(unavailable(format!(
                    "CTP-96 {} asked to wait beyond this read's time bound",
                    self.cfg.endpoint
                )));
            }
            tokio::time::sleep_until(t.into()).await;
        }
        Ok(())
    }

    /// The open session, opening one if needed.
    async fn session(self: &Arc<Self>, deadline: Instant) -> Result<Arc<Session>, SourceError> {
        loop {
            let limited = lock(&self.limit_until).clone();
            if let Some((until, msg)) = limited.filter(|(t, _)| *t > Instant::now()) {
                if until >= deadline {
                    return Err(unavailable(msg));
                }
                tokio::time::sleep_until(until.into()).await;
                continue;
            }
            let mut slot = tokio::time::timeout_at(deadline.into(), self.session.lock())
                .await
                .map_err(|_| unavailable("CTP-96: timed out waiting for a session"))?;
            if let Some(s) = slot.as_ref() {
                if s.expires() > Instant::now() {
                    return Ok(Arc::clone(s));
                }
                tracing::info!(session = %s.id_text, "CTP-96 lease ran out; opening a new session");
                *slot = None;
            }
            match self.open().await {
                Ok(s) => {
                    *slot = Some(Arc::clone(&s));
                    drop(slot);
                    let weak = Arc::downgrade(self);
                    tokio::spawn(renew_loop(weak, Arc::clone(&s)));
                    return Ok(s);
                }
                Err(Some(e)) => return Err(e),
                Err(None) => continue, // session limit: wait (above) and retry
            }
        }
    }

    /// `POST /v1/sessions`. `Err(None)`: at the session limit (recorded).
    async fn open(&self) -> Result<Arc<Session>, Option<SourceError>> {
        let mut n = [0u8; 12];
        rand_core::OsRng.fill_bytes(&mut n);
        let nonce = hex::encode(n);
        let body = wire::OpenSession {
            uor_id: None,
            nonce: nonce.clone(),
            client: self.cfg.client_name.clone(),
        };
        let rb = json_post(self.http.post(self.url("v1/sessions")), &body);
        let resp = match self.send(rb).await {
            Ok(r) => r,
            Err(e) => {
                self.observer.op("session_open", "error");
                return Err(Some(e));
            }
        };
        let status = resp.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let e = error_body(resp, self.cfg.request_timeout).await;
            if e.error == codes::SESSION_LIMIT {
                let wait = retry_after(&e);
                let msg = format!(
                    "CTP-96 server {} is at its session limit ({}); trying again after {} ms",
                    self.cfg.endpoint,
                    e.message,
                    wait.as_millis()
                );
                tracing::warn!("{msg}");
                *lock(&self.limit_until) = Some((Instant::now() + wait, msg));
                self.observer.op("session_open", "limit");
                return Err(None);
            }
            self.observer.op("session_open", "error");
            return Err(Some(unavailable(format!(
                "CTP-96 server: {} {}",
                e.error, e.message
            ))));
        }
        if status != StatusCode::CREATED {
            let e = error_body(resp, self.cfg.request_timeout).await;
            self.observer.op("session_open", "error");
            return Err(Some(unavailable(format!(
                "CTP-96 session open: HTTP {status}: {} {}",
                e.error, e.message
            ))));
        }
        let info = tokio::time::timeout(self.cfg.request_timeout, read_limited(resp, 64 << 10))
            .await
            .map_err(|_| Some(unavailable("CTP-96 session answer stalled")))?
            .map_err(|e| Some(unavailable(e)))
            .and_then(|b| {
                wire::parse_json::<SessionInfo>(&b).map_err(|e| Some(SourceError::Integrity(e)))
            });
        let info = match info {
            Ok(i) => i,
            Err(e) => {
                self.observer.op("session_open", "error");
                return Err(e);
            }
        };
        let Some(id) = wire::parse_session_id(&info.session_id) else {
            self.observer.op("session_open", "error");
            return Err(Some(SourceError::Integrity(format!(
                "CTP-96 server sent session id {:?}",
                info.session_id
            ))));
        };
        if info.nonce != nonce {
            self.observer.op("session_open", "error");
            return Err(Some(SourceError::Integrity(
                "CTP-96 session answer does not echo our nonce".into(),
            )));
        }
        let lease = Duration::from_secs(info.lease_seconds.clamp(1, 24 * 3600));
        self.stats.sessions_opened.fetch_add(1, Ordering::Relaxed);
        self.observer.op("session_open", "ok");
        self.observer.lease(lease.as_secs_f64());
        self.apply_hints(info.energy_hints);
        *lock(&self.limit_until) = None;
        tracing::info!(endpoint = %self.cfg.endpoint, session = %info.session_id, lease = ?lease, "CTP-96 session opened");
        Ok(Arc::new(Session {
            id,
            id_text: info.session_id,
            lease_id: info.lease_id,
            lease,
            granted: Mutex::new(Instant::now()),
            nonces: Mutex::new(NonceWindow::new(NONCE_WINDOW)),
        }))
    }

    /// Forgets `s` if it is still the current session.
    async fn drop_session(&self, s: &Session) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|c| c.id == s.id) {
            *slot = None;
        }
    }

    /// `POST .../renew`: Ok(true) renewed, Ok(false) gone.
    async fn renew(&self, s: &Session) -> Result<bool, SourceError> {
        let url = self.url(&format!("v1/sessions/{}/renew", s.id_text));
        let resp = self.send(self.http.post(url)).await?;
        match resp.status() {
            StatusCode::OK => {
                let b =
                    tokio::time::timeout(self.cfg.request_timeout, read_limited(resp, 64 << 10))
                        .await
                        .map_err(|_| unavailable("renewal answer stalled"))?
                        .map_err(unavailable)?;
                let info: SessionInfo = wire::parse_json(&b).map_err(SourceError::Integrity)?;
                if info.session_id != s.id_text {
                    return Err(SourceError::Integrity("renewal of another session".into()));
                }
                *lock(&s.granted) = Instant::now();
                self.observer.lease(s.lease.as_secs_f64());
                self.apply_hints(info.energy_hints);
                Ok(true)
            }
            StatusCode::NOT_FOUND => Ok(false),
            other => Err(unavailable(format!("renewal: HTTP {other}"))),
        }
    }

    async fn read(
        self: &Arc<Self>,
        repository: Option<&str>,
        ranges: &[(Digest, Range<u64>)],
        deadline: Instant,
    ) -> Result<Vec<Bytes>, SourceError> {
        let mut results: Vec<Option<Bytes>> = vec![None; ranges.len()];
        for (i, (_, r)) in ranges.iter().enumerate() {
            if r.is_empty() {
                results[i] = Some(Bytes::new());
            }
            if r.end - r.start.min(r.end) > wire::MAX_FETCH_BYTES {
                return Err(SourceError::Other(format!(
                    "a range of {} bytes is over the {} byte limit of one request",
                    r.end - r.start,
                    wire::MAX_FETCH_BYTES
                )));
            }
        }
        let mut failures = 0u32;
        let mut last: Option<SourceError> = None;
        loop {
            let pending: Vec<usize> = (0..ranges.len())
                .filter(|i| results[*i].is_none())
                .collect();
            if pending.is_empty() {
                break;
            }
            if failures > self.cfg.retries {
                self.observer.op("fetch", "error");
                return Err(last.unwrap_or_else(|| unavailable("CTP-96 read failed")));
            }
            if failures > 0 {
                let pause = Duration::from_millis(50u64 << (failures - 1).min(4));
                if Instant::now() + pause >= deadline {
                    self.observer.op("fetch", "error");
                    return Err(last.unwrap_or_else(|| unavailable("CTP-96 read timed out")));
                }
                tokio::time::sleep(pause).await;
            }
            self.obey_wait(deadline).await?;
            let chunk = lock(&self.hints).chunk_size;
            let batches = batches(&pending, ranges, chunk);
            let mut failed = false;
            for batch in batches {
                match self
                    .attempt(repository, ranges, &batch, &mut results, deadline)
                    .await
                {
                    Ok(()) => {}
                    Err(Attempt::Reopen) => {
                        failed = true;
                        last = Some(unavailable("CTP-96 session was gone"));
                        break;
                    }
                    Err(Attempt::Retry(e)) => {
                        self.observer.op("fetch", "retry");
                        tracing::debug!(error = %e, "CTP-96 attempt failed; retrying");
                        last = Some(e);
                        failed = true;
                        break;
                    }
                    Err(Attempt::Fatal(e)) => {
                        self.observer.op("fetch", "error");
                        return Err(e);
                    }
                }
            }
            if failed {
                failures += 1;
            }
        }
        self.observer.op("fetch", "ok");
        Ok(results.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// One fetch request for `batch` (indexes into `ranges`); fills
    /// `results` with every range that completed, even when a later frame
    /// fails.
    async fn attempt(
        self: &Arc<Self>,
        repository: Option<&str>,
        ranges: &[(Digest, Range<u64>)],
        batch: &[usize],
        results: &mut [Option<Bytes>],
        deadline: Instant,
    ) -> Result<(), Attempt> {
        let session = self.session(deadline).await.map_err(Attempt::Retry)?;
        let Some(_permit) = self.gate.acquire(deadline).await else {
            return Err(Attempt::Fatal(unavailable(
                "CTP-96: no fetch slot within the read's time bound (server's concurrency hint)",
            )));
        };
        let req = FetchRequest {
            repository: repository.map(str::to_owned),
            ranges: batch
                .iter()
                .map(|&i| RangeSpec {
                    digest: ranges[i].0,
                    offset: ranges[i].1.start,
                    length: ranges[i].1.end - ranges[i].1.start,
                })
                .collect(),
        };
        let url = self.url(&format!("v1/sessions/{}/fetch", session.id_text));
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        let resp = self
            .send(json_post(self.http.post(url), &req))
            .await
            .map_err(Attempt::Retry)?;
        let status = resp.status();
        if status != StatusCode::OK {
            let e = error_body(resp, self.cfg.request_timeout).await;
            return Err(match (status, e.error.as_str()) {
                (StatusCode::NOT_FOUND, codes::UNKNOWN_SESSION) => {
                    tracing::info!(session = %session.id_text, "CTP-96 session is gone (expired, revoked or the server restarted); opening a new one");
                    self.drop_session(&session).await;
                    Attempt::Reopen
                }
                (StatusCode::SERVICE_UNAVAILABLE, _) => {
                    self.wait(retry_after(&e));
                    Attempt::Retry(unavailable(format!("CTP-96 server busy: {}", e.message)))
                }
                (StatusCode::BAD_REQUEST, _) => Attempt::Fatal(SourceError::Other(format!(
                    "CTP-96 server refused the request: {}",
                    e.message
                ))),
                _ => Attempt::Retry(unavailable(format!(
                    "CTP-96 fetch: HTTP {status}: {} {}",
                    e.error, e.message
                ))),
            });
        }
        let expected: Vec<(u64, u64)> = batch
            .iter()
            .map(|&i| (ranges[i].1.start, ranges[i].1.end - ranges[i].1.start))
            .collect();
        let mut check = ResponseCheck::new(session.id, expected.clone());
        let mut decoder = FrameDecoder::new();
        let mut bufs: Vec<BytesMut> = vec![BytesMut::new(); batch.len()];
        let mut range_failure: Option<Attempt> = None;
        let mut resp = resp;
        let outcome: Result<(), FrameError> = loop {
            let idle = self
                .cfg
                .request_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let chunk = match tokio::time::timeout(idle, resp.chunk()).await {
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) => break decoder.finish().and_then(|()| check.finish()),
                Ok(Err(e)) => {
                    return Err(Attempt::Retry(unavailable(format!(
                        "CTP-96 response broke off: {}",
                        error_chain(&e)
                    ))))
                }
                Err(_) => {
                    return Err(Attempt::Retry(unavailable(format!(
                        "CTP-96 response stalled for {idle:?}"
                    ))))
                }
            };
            decoder.push(&chunk);
            let step: Result<(), FrameError> = (|| {
                while let Some(frame) = decoder.next_frame()? {
                    let event = {
                        let mut nonces = lock(&session.nonces);
                        check.accept(frame, &mut nonces)?
                    };
                    match event {
                        Event::Data { index, payload, .. } => {
                            let buf = &mut bufs[index];
                            if buf.is_empty() {
                                buf.reserve(expected[index].1 as usize);
                            }
                            buf.extend_from_slice(&payload);
                            if buf.len() as u64 == expected[index].1 {
                                let n = buf.len() as u64;
                                results[batch[index]] = Some(std::mem::take(buf).freeze());
                                self.stats.bytes.fetch_add(n, Ordering::Relaxed);
                                self.observer.bytes(n);
                            }
                        }
                        Event::RangeError { index, body } => {
                            bufs[index].clear();
                            tracing::debug!(range = index, error = %body.error, message = %body.message, "CTP-96 range failed on the server");
                            if range_failure.is_none() {
                                range_failure = Some(range_error(&body));
                            }
                        }
                        Event::Hint(h) => self.apply_hints(h),
                        Event::End => {}
                    }
                }
                Ok(())
            })();
            if let Err(e) = step {
                break Err(e);
            }
        };
        if let Err(e) = outcome {
            let reason = e.reason();
            self.stats.frames_rejected.fetch_add(1, Ordering::Relaxed);
            self.observer.op("frame_rejected", reason);
            tracing::warn!(endpoint = %self.cfg.endpoint, session = %session.id_text, reason, error = %e, "CTP-96 response rejected; asking again for the ranges it did not complete");
            return Err(Attempt::Retry(SourceError::Integrity(format!(
                "CTP-96 response rejected ({reason}): {e}"
            ))));
        }
        match range_failure {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

/// Splits `pending` (indexes into `ranges`) into requests of at most
/// `chunk` bytes (a larger single range goes alone) and [`MAX_RANGES`]
/// ranges.
fn batches(pending: &[usize], ranges: &[(Digest, Range<u64>)], chunk: u64) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut bytes = 0u64;
    for &i in pending {
        let len = ranges[i].1.end - ranges[i].1.start;
        if !cur.is_empty()
            && (bytes.saturating_add(len) > chunk.min(wire::MAX_FETCH_BYTES)
                || cur.len() >= MAX_RANGES)
        {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        cur.push(i);
        bytes = bytes.saturating_add(len);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Renews `s` before its lease ends, while the client lives and `s` is
/// its session; retries a failed renewal every 2 s while the lease lasts.
async fn renew_loop(weak: Weak<Inner>, s: Arc<Session>) {
    let mut at = renew_at(*lock(&s.granted), s.lease);
    loop {
        tokio::time::sleep_until(at.into()).await;
        let Some(inner) = weak.upgrade() else { return };
        {
            let current = inner.session.lock().await;
            if current.as_ref().is_none_or(|c| c.id != s.id) {
                return;
            }
        }
        match inner.renew(&s).await {
            Ok(true) => {
                inner.stats.renewals.fetch_add(1, Ordering::Relaxed);
                inner.observer.op("session_renew", "ok");
                tracing::debug!(session = %s.id_text, "CTP-96 lease renewed");
                at = renew_at(*lock(&s.granted), s.lease);
            }
            Ok(false) => {
                inner.observer.op("session_renew", "gone");
                tracing::info!(session = %s.id_text, "CTP-96 session gone at renewal; the next read opens a new one");
                inner.drop_session(&s).await;
                return;
            }
            Err(e) => {
                inner.observer.op("session_renew", "error");
                tracing::warn!(session = %s.id_text, error = %e, "CTP-96 lease renewal failed; trying again in 2 s");
                let next = Instant::now() + Duration::from_secs(2);
                if next >= s.expires() {
                    inner.drop_session(&s).await;
                    return;
                }
                at = next;
            }
        }
    }
}

/// One blob read through a CTP-96 endpoint: the lazy read path's source.
#[derive(Debug, Clone)]
pub struct Ctp96Blob {
    client: Ctp96Client,
    repository: Option<String>,
    digest: Digest,
    size: u64,
}

impl Ctp96Blob {
    /// `repository` is where the server finds the blob upstream
    /// (`library/python`); `size` comes from the manifest.
    pub fn new(client: Ctp96Client, repository: Option<String>, digest: Digest, size: u64) -> Self {
        Ctp96Blob {
            client,
            repository,
            digest,
            size,
        }
    }

    pub fn client(&self) -> &Ctp96Client {
        &self.client
    }
}

#[async_trait::async_trait]
impl BlobSource for Ctp96Blob {
    fn digest(&self) -> &Digest {
        &self.digest
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn kind(&self) -> SourceKind {
        SourceKind::Ctp96
    }

    async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, SourceError> {
        let mut v = self
            .read_ranges(std::slice::from_ref(&(offset..offset.saturating_add(len))))
            .await?;
        v.pop()
            .ok_or_else(|| SourceError::Other("CTP-96: no answer for the range".into()))
    }

    async fn read_ranges(&self, ranges: &[Range<u64>]) -> Result<Vec<Bytes>, SourceError> {
        check_ranges(&self.digest, self.size, ranges)?;
        let asked: Vec<(Digest, Range<u64>)> =
            ranges.iter().map(|r| (self.digest, r.clone())).collect();
        self.client.read(self.repository.as_deref(), &asked).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn batches_follow_the_chunk_size() {
        let d = Digest::of(b"x");
        let ranges: Vec<(Digest, Range<u64>)> =
            vec![(d, 0..100), (d, 200..300), (d, 400..1400), (d, 2000..2050)];
        let all: Vec<usize> = (0..4).collect();
        assert_eq!(batches(&all, &ranges, 1 << 20), vec![vec![0, 1, 2, 3]]);
        assert_eq!(
            batches(&all, &ranges, 250),
            vec![vec![0, 1], vec![2], vec![3]]
        );
        assert_eq!(batches(&[1, 3], &ranges, 1), vec![vec![1], vec![3]]);
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(Ctp96Client::new(ClientConfig::new("ftp://x"), Arc::new(NoObserver)).is_err());
        assert!(Ctp96Client::new(ClientConfig::new("not a url"), Arc::new(NoObserver)).is_err());
        let c = Ctp96Client::new(
            ClientConfig::new("http://127.0.0.1:1/prefix"),
            Arc::new(NoObserver),
        )
        .unwrap();
        assert_eq!(
            c.inner.url("v1/sessions").as_str(),
            "http://127.0.0.1:1/prefix/v1/sessions"
        );
    }
}
