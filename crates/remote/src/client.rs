//! The registry client: endpoint selection (hosts.toml), retries, auth,
//! redirects, and the distribution API operations.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use crate::auth::{self, AuthCache, Challenge, Credential, CredentialStore, TokenResponse};
use crate::creds::{scope_repository, Credentials, SessionCredentials};
use hologram_oci::{media_types, Digest, ImageIndex, Platform, MAX_MANIFEST_SIZE};

use crate::error::{error_chain, redact_queries};
use crate::hosts::{self, Capability, Caps, HostSpec, TlsSettings};
use crate::manifest::{detect_media_type, verify, Manifest};
use crate::{Error, Reference};

/// The most a range read may buffer: both the largest `len` accepted and the
/// largest full body accepted from a server that ignores `Range`.
pub const MAX_RANGE_BODY: u64 = 64 << 20;

const USER_AGENT: &str = concat!("hologram-remote/", env!("CARGO_PKG_VERSION"));
const MAX_REDIRECTS: usize = 10;
/// How long a host that failed to connect is tried after the others.
const DOWN_PENALTY: Duration = Duration::from_secs(30);
/// Time allowed per byte for whole-blob transfers on top of the timeouts:
/// 1 MiB/s.
const MIN_BYTES_PER_SEC: u64 = 1 << 20;
const MAX_BUDGET: Duration = Duration::from_secs(24 * 3600);

/// Client configuration. `Default` gives: no hosts dir, the default docker
/// config location, https (http for loopback registries with a port other
/// than 443), 10 s per attempt, 30 s per operation, 3 retries.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// containerd certs.d layout: `<dir>/<host[:port]>/hosts.toml` (also
    /// `<host>_<port>_` and `_default`).
    pub hosts_dir: Option<PathBuf>,
    /// docker config.json with `auths`; `None` means
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. A missing
    /// file means anonymous access.
    pub docker_config: Option<PathBuf>,
    /// Use http:// for every registry that hosts.toml does not configure
    /// (Docker Hub excepted).
    pub plain_http: bool,
    /// Per attempt: connect + response headers, and the longest silence
    /// while a body streams.
    pub request_timeout: Duration,
    /// Per operation including retries and mirror fallback. Whole-blob
    /// transfers (`fetch_blob`, `push_blob`) get 1 s per MiB on top.
    pub total_timeout: Duration,
    /// Extra attempts after the first (exponential backoff with jitter), for
    /// connect errors, timeouts, 5xx, 408 and 429 only.
    pub retries: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            hosts_dir: None,
            docker_config: None,
            plain_http: false,
            request_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30),
            retries: 3,
        }
    }
}

/// A distribution-API client. Cheap to clone; clones share connection
/// pools, the token cache and the parsed hosts configuration.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RegistryConfig,
    creds: Credentials,
    auth: AuthCache,
    clients: Mutex<HashMap<TlsSettings, reqwest::Client>>,
    endpoints: Mutex<HashMap<String, Arc<Vec<Arc<Endpoint>>>>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.inner.cfg)
            .field("credentials", &self.inner.creds)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One host to send requests to (a mirror or the server).
struct Endpoint {
    /// `host[:port]` (for credentials and the token cache).
    host: String,
    /// `scheme://host[:port]/api-root`, no trailing slash.
    base: String,
    origin: Origin,
    caps: Caps,
    /// hosts.toml `header`s.
    headers: HeaderMap,
    client: reqwest::Client,
    /// `ns=<registry>` query parameter for mirrors (as containerd sends).
    ns: Option<String>,
    down_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    fn url(&self, suffix: &str) -> Result<Url, Error> {
        let mut u = Url::parse(&format!("{}{}", self.base, suffix))
            .map_err(|e| Error::Config(format!("bad URL {}{}: {e}", self.base, suffix)))?;
        if let Some(ns) = &self.ns {
            u.query_pairs_mut().append_pair("ns", ns);
        }
        Ok(u)
    }

    fn is_down(&self, now: Instant) -> bool {
        lock(&self.down_until).is_some_and(|t| now < t)
    }

    fn mark(&self, up: bool) {
        *lock(&self.down_until) = if up {
            None
        } else {
            Some(Instant::now() + DOWN_PENALTY)
        };
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn of(u: &Url) -> Origin {
        Origin {
            scheme: u.scheme().to_string(),
            host: u.host_str().unwrap_or("").to_ascii_lowercase(),
            port: u.port_or_known_default(),
        }
    }
}

/// A URL for messages: no query (may hold signatures), no userinfo.
fn show_url(u: &Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

#[derive(Clone, Copy)]
struct Budget {
    attempt: Duration,
    total: Duration,
}

struct Req {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
    /// Token scope, e.g. `repository:foo/bar:pull`.
    scope: String,
    /// Time allowed until the response headers arrive.
    send_timeout: Duration,
}

fn pull_scope(r: &Reference) -> String {
    format!("repository:{}:pull", r.repository)
}

fn push_scope(r: &Reference) -> String {
    format!("repository:{}:pull,push", r.repository)
}

fn header_str(h: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    header_str(h, header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok())
}

/// Parses `bytes START-END/TOTAL` (TOTAL may be `*`).
pub(crate) fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (s, e) = range.split_once('-')?;
    let (s, e): (u64, u64) = (s.trim().parse().ok()?, e.trim().parse().ok()?);
    if e < s {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((s, e, total))
}

fn jitter_below(max_ms: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() % max_ms.max(1)
}

/// Exponential backoff with jitter: pass 1 → 100–200 ms, doubling, capped at
/// 2.5–5 s.
fn backoff(pass: u32) -> Duration {
    let base_ms = 200u64
        .saturating_mul(1u64 << pass.saturating_sub(1).min(5))
        .min(5000);
    Duration::from_millis(base_ms / 2 + jitter_below(base_ms / 2))
}

impl RegistryClient {
    /// Builds a client: loads the docker config (a missing file is fine; a
    /// malformed one is an [`Error::Config`]). hosts.toml files are read on
    /// first use of each registry.
    pub fn new(cfg: RegistryConfig) -> Result<Self, Error> {
        Self::with_session_credentials(cfg, None)
    }

    /// Like [`RegistryClient::new`], and `session`'s credentials (given at
    /// run time, e.g. by the CRI proxy) go first for the (host,
    /// repository) pairs they name.
    pub fn with_session_credentials(
        cfg: RegistryConfig,
        session: Option<Arc<SessionCredentials>>,
    ) -> Result<Self, Error> {
        if cfg.request_timeout.is_zero() || cfg.total_timeout.is_zero() {
            return Err(Error::Config(
                "request_timeout and total_timeout must be non-zero".into(),
            ));
        }
        let creds = match cfg
            .docker_config
            .clone()
            .or_else(auth::default_docker_config_path)
        {
            Some(p) => CredentialStore::load(&p)?,
            None => CredentialStore::default(),
        };
        let client = RegistryClient {
            inner: Arc::new(Inner {
                cfg,
                creds: Credentials::new(creds, session),
                auth: AuthCache::default(),
                clients: Mutex::new(HashMap::new()),
                endpoints: Mutex::new(HashMap::new()),
            }),
        };
        // Build the default client now so TLS setup problems surface early.
        client.http_client(&TlsSettings::default())?;
        Ok(client)
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.cfg
    }

    fn cfg(&self) -> &RegistryConfig {
        &self.inner.cfg
    }

    fn small_budget(&self) -> Budget {
        Budget {
            attempt: self.cfg().request_timeout,
            total: self.cfg().total_timeout,
        }
    }

    fn sized_budget(&self, bytes: u64) -> Budget {
        let extra = Duration::from_secs(bytes / MIN_BYTES_PER_SEC).min(MAX_BUDGET);
        Budget {
            attempt: (self.cfg().request_timeout + extra).min(MAX_BUDGET),
            total: (self.cfg().total_timeout + extra).min(MAX_BUDGET),
        }
    }

    fn http_client(&self, tls: &TlsSettings) -> Result<reqwest::Client, Error> {
        let mut clients = lock(&self.inner.clients);
        if let Some(c) = clients.get(tls) {
            return Ok(c.clone());
        }
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(tls.dial_timeout.unwrap_or(self.cfg().request_timeout))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(USER_AGENT)
            .danger_accept_invalid_certs(tls.skip_verify);
        for ca in &tls.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| Error::Config(format!("reading CA {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Config(format!("CA {}: {}", ca.display(), error_chain(&e))))?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "CA {}: no certificate found",
                    ca.display()
                )));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some((cert, key)) = &tls.client {
            let mut pem = std::fs::read(cert)
                .map_err(|e| Error::Config(format!("reading {}: {e}", cert.display())))?;
            if let Some(key) = key {
                pem.push(b'\n');
                pem.extend(
                    std::fs::read(key)
                        .map_err(|e| Error::Config(format!("reading {}: {e}", key.display())))?,
                );
            }
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::Config(format!(
                    "client certificate {}: {}",
                    cert.display(),
                    error_chain(&e)
                ))
            })?;
            b = b.identity(id);
        }
        let c = b
            .build()
            .map_err(|e| Error::Config(format!("building HTTP client: {}", error_chain(&e))))?;
        clients.insert(tls.clone(), c.clone());
        Ok(c)
    }

    fn endpoints(&self, registry: &str) -> Result<Arc<Vec<Arc<Endpoint>>>, Error> {
        if let Some(e) = lock(&self.inner.endpoints).get(registry) {
            return Ok(e.clone());
        }
        let specs = hosts::host_specs(
            self.cfg().hosts_dir.as_deref(),
            registry,
            self.cfg().plain_http,
        )?;
        let eps = specs
            .into_iter()
            .map(|s| self.build_endpoint(registry, s).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let eps = Arc::new(eps);
        lock(&self.inner.endpoints).insert(registry.to_string(), eps.clone());
        Ok(eps)
    }

    fn build_endpoint(&self, registry: &str, s: HostSpec) -> Result<Endpoint, Error> {
        let base = format!("{}://{}{}", s.scheme, s.host, s.path);
        let base_url = Url::parse(&format!("{base}/"))
            .map_err(|e| Error::Config(format!("bad registry URL {base}: {e}")))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &s.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| Error::Config(format!("invalid header name {k:?} for {}", s.host)))?;
            let value = HeaderValue::from_str(v).map_err(|_| {
                Error::Config(format!("invalid value for header {k:?} for {}", s.host))
            })?;
            headers.append(name, value);
        }
        let ns = (!s.is_server && s.host != registry).then(|| registry.to_string());
        Ok(Endpoint {
            client: self.http_client(&s.tls)?,
            origin: Origin::of(&base_url),
            host: s.host,
            base,
            caps: s.caps,
            headers,
            ns,
            down_until: Mutex::new(None),
        })
    }

    // ---------------------------------------------------------------- retry loop

    /// Runs `op` against the hosts that have `cap`: each pass tries them in
    /// order (hosts that recently failed to connect last); the server's (or
    /// last host's) non-retryable error ends it, otherwise passes repeat with
    /// backoff up to `retries` times, all within `budget.total`.
    async fn run<T, F, Fut>(
        &self,
        registry: &str,
        cap: Capability,
        budget: Budget,
        what: &str,
        op: F,
    ) -> Result<T, Error>
    where
        F: Fn(Arc<Endpoint>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        // Belt and braces: the loop below already honours the budget.
        let hard = budget.total + Duration::from_millis(250);
        match tokio::time::timeout(hard, self.run_inner(registry, cap, budget, what, op)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(format!(
                "{what}: no result within {:?}",
                budget.total
            ))),
        }
    }

    async fn run_inner<T, F, Fut>(
        &self,
        registry: &str,
        cap: Capability,
        budget: Budget,
        what: &str,
        op: F,
    ) -> Result<T, Error>
    where
        F: Fn(Arc<Endpoint>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let eps = self.endpoints(registry)?;
        let candidates: Vec<Arc<Endpoint>> =
            eps.iter().filter(|e| e.caps.allows(cap)).cloned().collect();
        let Some(authoritative) = candidates.last().cloned() else {
            return Err(Error::Config(format!(
                "no configured host for {registry} has the {cap:?} capability"
            )));
        };
        let start = Instant::now();
        let deadline = start + budget.total;
        let mut final_err: Option<Error> = None;
        let mut other_err: Option<Error> = None;
        let mut attempts = 0u32;
        'passes: for pass in 0..=self.cfg().retries {
            if pass > 0 {
                let delay = backoff(pass);
                if Instant::now() + delay >= deadline {
                    break;
                }
                tracing::debug!(what, pass, ?delay, "retrying after backoff");
                tokio::time::sleep(delay).await;
            }
            let now = Instant::now();
            let mut ordered: Vec<&Arc<Endpoint>> =
                candidates.iter().filter(|e| !e.is_down(now)).collect();
            ordered.extend(candidates.iter().filter(|e| e.is_down(now)));
            for ep in ordered {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break 'passes;
                }
                let attempt = budget.attempt.min(remaining);
                attempts += 1;
                let res = match tokio::time::timeout(attempt, op(ep.clone())).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout(format!(
                        "{what} via {}: no answer within {attempt:?}",
                        ep.host
                    ))),
                };
                match res {
                    Ok(v) => {
                        ep.mark(true);
                        return Ok(v);
                    }
                    Err(e) => {
                        if e.is_unreachable() {
                            ep.mark(false);
                        }
                        let is_final = Arc::ptr_eq(ep, &authoritative);
                        tracing::debug!(what, host = %ep.host, attempt = attempts, error = %e, "attempt failed");
                        if is_final {
                            if !e.is_retryable() {
                                return Err(e);
                            }
                            final_err = Some(e);
                        } else {
                            tracing::info!(what, mirror = %ep.host, error = %e, "mirror failed, trying next host");
                            other_err = Some(e);
                        }
                    }
                }
            }
        }
        let last = final_err.or(other_err);
        if Instant::now() >= deadline || last.is_none() {
            let tail = last
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default();
            return Err(Error::Timeout(format!(
                "{what}: gave up after {attempts} attempt(s) in {:?}{tail}",
                start.elapsed()
            )));
        }
        Err(last.unwrap_or_else(|| Error::Timeout(what.to_string())))
    }

    // ---------------------------------------------------------------- HTTP core

    /// Sends `req` to `ep` with authentication: the cached challenge's
    /// credentials go along proactively; a 401 from the registry's own origin
    /// triggers one re-authentication and resend. Redirects are followed.
    async fn execute(&self, ep: &Endpoint, req: &Req) -> Result<reqwest::Response, Error> {
        let mut auth = self.proactive_auth(ep, &req.scope).await?;
        let mut reauthed = false;
        loop {
            let (resp, same_origin) = self
                .send_following(ep, req, auth.as_ref().map(|a| a.0.as_str()))
                .await?;
            if resp.status() != StatusCode::UNAUTHORIZED || !same_origin || reauthed {
                return Ok(resp);
            }
            let challenges = auth::parse_challenges(
                resp.headers()
                    .get_all(header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            let Some(ch) = challenges.into_iter().next() else {
                return Err(Error::Unauthorized(format!(
                    "{} answered 401 without a usable WWW-Authenticate challenge",
                    show_url(resp.url())
                )));
            };
            let stale = auth.and_then(|a| a.1);
            auth = Some(self.reactive_auth(ep, &req.scope, ch, stale).await?);
            reauthed = true;
        }
    }

    /// (Authorization header value, bearer token if any) from what we
    /// already know about `ep`.
    async fn proactive_auth(
        &self,
        ep: &Endpoint,
        scope: &str,
    ) -> Result<Option<(String, Option<String>)>, Error> {
        match self.inner.auth.challenge(&ep.host) {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self
                .inner
                .creds
                .lookup(&ep.host, scope_repository(scope))
                .await
                .and_then(|c| c.basic_header())
                .map(|h| (h, None))),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let t = self
                    .token(
                        ep,
                        &realm,
                        service.as_deref(),
                        scope,
                        &[scope.to_string()],
                        None,
                    )
                    .await?;
                Ok(Some((format!("Bearer {t}"), Some(t))))
            }
        }
    }

    async fn reactive_auth(
        &self,
        ep: &Endpoint,
        scope: &str,
        ch: Challenge,
        stale: Option<String>,
    ) -> Result<(String, Option<String>), Error> {
        self.inner.auth.set_challenge(&ep.host, ch.clone());
        match ch {
            Challenge::Basic => match self
                .inner
                .creds
                .lookup(&ep.host, scope_repository(scope))
                .await
                .and_then(|c| c.basic_header())
            {
                Some(h) => Ok((h, None)),
                None => Err(Error::Unauthorized(format!(
                    "{} requires basic authentication and no username/password is configured for it",
                    ep.host
                ))),
            },
            Challenge::Bearer { realm, service, scope: ch_scope } => {
                let mut scopes = vec![scope.to_string()];
                if let Some(s) = ch_scope.filter(|s| !s.is_empty() && s != scope) {
                    scopes.push(s);
                }
                let t = self.token(ep, &realm, service.as_deref(), scope, &scopes, stale.as_deref()).await?;
                Ok((format!("Bearer {t}"), Some(t)))
            }
        }
    }

    /// A bearer token for (ep.host, scope): the cached one unless it expired
    /// or is `stale` (just refused); concurrent callers share one fetch.
    async fn token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        scopes: &[String],
        stale: Option<&str>,
    ) -> Result<String, Error> {
        let slot = self.inner.auth.slot(&ep.host, scope);
        let mut guard = slot.lock().await;
        if let Some(t) = guard.as_ref() {
            if stale != Some(t.value.as_str()) && Instant::now() < t.refresh_at {
                return Ok(t.value.clone());
            }
        }
        let t = self.fetch_token(ep, realm, service, scopes).await?;
        let v = t.value.clone();
        *guard = Some(t);
        Ok(v)
    }

    async fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<crate::auth::Token, Error> {
        let mut url = Url::parse(realm).map_err(|e| {
            Error::InvalidResponse(format!(
                "{} sent an invalid token realm {realm:?}: {e}",
                ep.host
            ))
        })?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(Error::InvalidResponse(format!(
                "token realm {realm:?} is not http(s)"
            )));
        }
        let repository = scopes.first().map_or("", |s| scope_repository(s));
        let cred = self.inner.creds.lookup(&ep.host, repository).await;
        let cred = cred.as_ref();
        // Credentials go to an https realm, or to the registry's own host.
        let realm_origin = Origin::of(&url);
        let may_send_creds = url.scheme() == "https" || realm_origin.host == ep.origin.host;
        let mut headers = HeaderMap::new();
        let (method, body) = match cred {
            Some(Credential::IdentityToken { token }) if may_send_creds => {
                let mut form =
                    Url::parse("http://form.invalid/").map_err(|e| Error::Config(e.to_string()))?;
                {
                    let mut q = form.query_pairs_mut();
                    q.append_pair("grant_type", "refresh_token");
                    q.append_pair("refresh_token", token);
                    q.append_pair("client_id", "hologram");
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", &scopes.join(" "));
                }
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
                (
                    Method::POST,
                    Some(Bytes::from(form.query().unwrap_or("").to_string())),
                )
            }
            _ => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for s in scopes {
                        q.append_pair("scope", s);
                    }
                    if let Some(Credential::Basic { username, .. }) = cred {
                        if may_send_creds {
                            q.append_pair("account", username);
                        }
                    }
                }
                (Method::GET, None)
            }
        };
        let mut auth_headers = HeaderMap::new();
        if may_send_creds {
            if let Some(h) = cred.and_then(Credential::basic_header) {
                if let Ok(v) = HeaderValue::from_str(&h) {
                    auth_headers.insert(header::AUTHORIZATION, v);
                }
            }
        }
        let (mut resp, _) = self
            .follow(
                &ep.client,
                method,
                url.clone(),
                &headers,
                body,
                &auth_headers,
                &realm_origin,
                self.cfg().request_timeout,
            )
            .await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let excerpt = body_excerpt(&mut resp).await;
            return Err(Error::Unauthorized(format!(
                "token endpoint {} refused{}: {status} {excerpt}",
                show_url(&url),
                if cred.is_some() {
                    " the configured credentials"
                } else {
                    " anonymous access"
                }
            )));
        }
        if !status.is_success() {
            return Err(status_error(resp, "token request").await);
        }
        let received = Instant::now();
        let body = read_body(&mut resp, 1 << 20, None, self.cfg().request_timeout).await?;
        let tr: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            Error::InvalidResponse(format!(
                "token endpoint {}: invalid JSON: {e}",
                show_url(&url)
            ))
        })?;
        tr.into_token(received)
    }

    /// One request to `ep` with its headers and `auth`, following redirects.
    /// Returns the response and whether it came from the endpoint's origin.
    async fn send_following(
        &self,
        ep: &Endpoint,
        req: &Req,
        auth: Option<&str>,
    ) -> Result<(reqwest::Response, bool), Error> {
        let mut origin_headers = ep.headers.clone();
        if let Some(a) = auth {
            let v = HeaderValue::from_str(a).map_err(|_| {
                Error::InvalidResponse("credentials do not form a valid header".into())
            })?;
            origin_headers.insert(header::AUTHORIZATION, v);
        }
        self.follow(
            &ep.client,
            req.method.clone(),
            req.url.clone(),
            &req.headers,
            req.body.clone(),
            &origin_headers,
            &ep.origin,
            req.send_timeout,
        )
        .await
    }

    /// Sends a request and follows up to 10 redirects by hand: `headers`
    /// (Range, Accept, ...) go everywhere; `origin_headers` (Authorization,
    /// hosts.toml headers) only to `origin`. 303 turns into a GET.
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        client: &reqwest::Client,
        mut method: Method,
        mut url: Url,
        headers: &HeaderMap,
        mut body: Option<Bytes>,
        origin_headers: &HeaderMap,
        origin: &Origin,
        send_timeout: Duration,
    ) -> Result<(reqwest::Response, bool), Error> {
        for _ in 0..=MAX_REDIRECTS {
            let same_origin = Origin::of(&url) == *origin;
            let mut rb = client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if same_origin {
                for (k, v) in origin_headers.iter() {
                    rb = rb.header(k, v);
                }
            }
            if let Some(b) = &body {
                rb = rb.body(b.clone());
            }
            let resp = match tokio::time::timeout(send_timeout, rb.send()).await {
                Ok(r) => r.map_err(Error::from_reqwest)?,
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "{method} {}: no response within {send_timeout:?}",
                        show_url(&url)
                    )))
                }
            };
            let status = resp.status();
            if !status.is_redirection() || status == StatusCode::NOT_MODIFIED {
                return Ok((resp, same_origin));
            }
            let Some(loc) = header_str(resp.headers(), header::LOCATION) else {
                return Ok((resp, same_origin));
            };
            let next = url.join(loc).map_err(|e| {
                Error::InvalidResponse(format!("bad redirect Location {loc:?}: {e}"))
            })?;
            if next.scheme() != "http" && next.scheme() != "https" {
                return Err(Error::InvalidResponse(format!(
                    "redirect to non-HTTP URL {}",
                    show_url(&next)
                )));
            }
            tracing::trace!(from = %show_url(&url), to = %show_url(&next), %status, "following redirect");
            if status == StatusCode::SEE_OTHER && method != Method::HEAD {
                method = Method::GET;
                body = None;
            }
            url = next;
        }
        Err(Error::InvalidResponse(format!(
            "more than {MAX_REDIRECTS} redirects from {}",
            show_url(&url)
        )))
    }

    // ---------------------------------------------------------------- operations

    /// GETs a manifest or index by tag (needs a host with the `resolve`
    /// capability) or digest (`pull`). The bytes are verified against the
    /// reference's digest if it has one, and against `Docker-Content-Digest`
    /// whenever the registry sends it; at most 4 MiB are accepted.
    pub async fn fetch_manifest(&self, r: &Reference) -> Result<Manifest, Error> {
        let (cap, mref) = match &r.digest {
            Some(d) => (Capability::Pull, d.to_string()),
            None => (
                Capability::Resolve,
                r.tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        };
        let scope = pull_scope(r);
        let what = format!("fetch manifest {r}");
        let scope = &scope;
        let mref = &mref;
        self.run(&r.registry, cap, self.small_budget(), &what, |ep| async move {
            let url = ep.url(&format!("/{}/manifests/{}", r.repository, mref))?;
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static(media_types::MANIFEST_ACCEPT));
            let req = Req {
                method: Method::GET,
                url,
                headers,
                body: None,
                scope: scope.clone(),
                send_timeout: self.cfg().request_timeout,
            };
            let mut resp = self.execute(&ep, &req).await?;
            if !resp.status().is_success() {
                return Err(status_error(resp, &format!("manifest {r}")).await);
            }
            if let Some(n) = content_length(resp.headers()).filter(|n| *n > MAX_MANIFEST_SIZE) {
                return Err(Error::TooLarge(format!("manifest {r} is {n} bytes (limit {MAX_MANIFEST_SIZE})")));
            }
            let ct = header_str(resp.headers(), header::CONTENT_TYPE).map(str::to_string);
            let announced = header_str(resp.headers(), "docker-content-digest").map(|s| s.trim().to_string());
            let body = read_body(&mut resp, MAX_MANIFEST_SIZE, None, self.cfg().request_timeout).await?.freeze();
            if let Some(d) = &r.digest {
                verify(d, &body)?;
            }
            if let Some(h) = announced.filter(|h| !h.is_empty()) {
                match Digest::parse(&h) {
                    Ok(d) => verify(&d, &body)?,
                    Err(e) => tracing::debug!(header = %h, error = %e, "ignoring unverifiable Docker-Content-Digest"),
                }
            }
            let digest = match &r.digest {
                Some(d) => *d,
                None => Digest::of(&body),
            };
            Ok(Manifest { media_type: detect_media_type(ct.as_deref(), &body), bytes: body, digest })
        })
        .await
    }

    /// Fetches `r`; if it is an index, picks this machine's linux platform
    /// (variant only compared for arm) and fetches that manifest by digest.
    /// Returns (the index if there was one, the image manifest).
    pub async fn resolve_platform(
        &self,
        r: &Reference,
    ) -> Result<(Option<Manifest>, Manifest), Error> {
        self.resolve_platform_for(r, &Platform::current()).await
    }

    /// [`Self::resolve_platform`] for an explicit platform.
    pub async fn resolve_platform_for(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<(Option<Manifest>, Manifest), Error> {
        let top = self.fetch_manifest(r).await?;
        if !top.is_index() {
            return Ok((None, top));
        }
        let index =
            ImageIndex::parse(&top.bytes).map_err(|e| Error::InvalidResponse(e.to_string()))?;
        let desc = index
            .select(platform)
            .map_err(|e| Error::NotFound(e.to_string()))?;
        let child = self.fetch_manifest(&r.with_digest(&desc.digest)).await?;
        if child.bytes.len() as u64 != desc.size {
            return Err(Error::InvalidResponse(format!(
                "manifest {} is {} bytes but the index says {}",
                desc.digest,
                child.bytes.len(),
                desc.size
            )));
        }
        if child.is_index() {
            return Err(Error::InvalidResponse(format!(
                "index entry {} is itself an index",
                desc.digest
            )));
        }
        Ok((Some(top), child))
    }

    /// GETs a whole blob, refusing more than `max_size` bytes, and verifies
    /// it against `digest`. Time budget: the configured timeouts plus 1 s per
    /// MiB of `max_size`.
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        max_size: u64,
    ) -> Result<Bytes, Error> {
        let scope = pull_scope(r);
        let what = format!("fetch blob {digest} of {r}");
        let scope = &scope;
        self.run(
            &r.registry,
            Capability::Pull,
            self.sized_budget(max_size),
            &what,
            |ep| async move {
                let url = ep.url(&format!("/{}/blobs/{}", r.repository, digest))?;
                let req = Req {
                    method: Method::GET,
                    url,
                    headers: HeaderMap::new(),
                    body: None,
                    scope: scope.clone(),
                    send_timeout: self.cfg().request_timeout,
                };
                let mut resp = self.execute(&ep, &req).await?;
                if !resp.status().is_success() {
                    return Err(status_error(resp, &format!("blob {digest}")).await);
                }
                if let Some(n) = content_length(resp.headers()).filter(|n| *n > max_size) {
                    return Err(Error::TooLarge(format!(
                        "blob {digest} is {n} bytes (limit {max_size})"
                    )));
                }
                let body = read_body(&mut resp, max_size, None, self.cfg().request_timeout)
                    .await
                    .map_err(|e| match e {
                        Error::TooLarge(_) => {
                            Error::TooLarge(format!("blob {digest} exceeds {max_size} bytes"))
                        }
                        e => e,
                    })?
                    .freeze();
                verify(digest, &body)?;
                Ok(body)
            },
        )
        .await
    }

    /// The size of a blob from a HEAD request (redirects followed). If the
    /// HEAD is refused after a redirect (storage URLs signed for GET only),
    /// a one-byte range GET gives the size instead.
    pub async fn blob_size(&self, r: &Reference, digest: &Digest) -> Result<u64, Error> {
        let scope = pull_scope(r);
        let what = format!("size of blob {digest} of {r}");
        let scope = &scope;
        self.run(
            &r.registry,
            Capability::Pull,
            self.small_budget(),
            &what,
            |ep| async move {
                let url = ep.url(&format!("/{}/blobs/{}", r.repository, digest))?;
                let mut req = Req {
                    method: Method::HEAD,
                    url,
                    headers: HeaderMap::new(),
                    body: None,
                    scope: scope.clone(),
                    send_timeout: self.cfg().request_timeout,
                };
                let resp = self.execute(&ep, &req).await?;
                let status = resp.status();
                if status.is_success() {
                    if let Some(h) = header_str(resp.headers(), "docker-content-digest") {
                        if let Some(other) = Digest::parse(h.trim()).ok().filter(|h| h != digest) {
                            return Err(Error::DigestMismatch {
                                expected: *digest,
                                actual: other,
                            });
                        }
                    }
                    if let Some(n) = content_length(resp.headers()) {
                        return Ok(n);
                    }
                } else if status == StatusCode::NOT_FOUND
                    || status == StatusCode::UNAUTHORIZED
                    || status.is_server_error()
                {
                    return Err(status_error(resp, &format!("blob {digest}")).await);
                }
                // Fallback: GET bytes=0-0.
                req.method = Method::GET;
                req.headers
                    .insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
                let resp = self.execute(&ep, &req).await?;
                let status = resp.status();
                if status == StatusCode::PARTIAL_CONTENT {
                    if let Some((_, _, Some(total))) =
                        header_str(resp.headers(), header::CONTENT_RANGE)
                            .and_then(parse_content_range)
                    {
                        return Ok(total);
                    }
                } else if status.is_success() {
                    if let Some(n) = content_length(resp.headers()) {
                        return Ok(n);
                    }
                } else {
                    return Err(status_error(resp, &format!("blob {digest}")).await);
                }
                Err(Error::InvalidResponse(format!(
                    "no size for blob {digest} (no Content-Length / Content-Range)"
                )))
            },
        )
        .await
    }

    /// Bytes `[offset, offset+len)` of a blob via an HTTP Range request.
    /// Redirects keep the Range header; the registry's Authorization is not
    /// sent to other hosts. A 206 must carry the matching Content-Range and
    /// exactly `len` bytes; a 200 (Range ignored) is sliced, unless the body
    /// would exceed 64 MiB. `len` may not exceed 64 MiB either.
    pub async fn read_range(
        &self,
        r: &Reference,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, Error> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        if len > MAX_RANGE_BODY {
            return Err(Error::TooLarge(format!(
                "range read of {len} bytes (limit {MAX_RANGE_BODY})"
            )));
        }
        let end = offset.checked_add(len - 1).ok_or_else(|| {
            Error::OutOfRange(format!("offset {offset} + length {len} overflows"))
        })?;
        let scope = pull_scope(r);
        let what = format!("read {digest}[{offset}..{}] of {r}", end + 1);
        let scope = &scope;
        let range = HeaderValue::from_str(&format!("bytes={offset}-{end}"))
            .map_err(|_| Error::OutOfRange("unrepresentable range".into()))?;
        let range = &range;
        self.run(&r.registry, Capability::Pull, self.small_budget(), &what, |ep| async move {
            let url = ep.url(&format!("/{}/blobs/{}", r.repository, digest))?;
            let mut headers = HeaderMap::new();
            headers.insert(header::RANGE, range.clone());
            let req = Req {
                method: Method::GET,
                url,
                headers,
                body: None,
                scope: scope.clone(),
                send_timeout: self.cfg().request_timeout,
            };
            let mut resp = self.execute(&ep, &req).await?;
            let idle = self.cfg().request_timeout;
            match resp.status() {
                StatusCode::PARTIAL_CONTENT => {
                    let cr = header_str(resp.headers(), header::CONTENT_RANGE).map(str::to_string);
                    let Some((s, e, _total)) = cr.as_deref().and_then(parse_content_range) else {
                        return Err(Error::InvalidResponse(format!(
                            "206 for {digest} without a valid Content-Range ({cr:?})"
                        )));
                    };
                    if s != offset || e != end {
                        if s == offset && e < end {
                            return Err(Error::OutOfRange(format!(
                                "short read of {digest}: asked for bytes {offset}-{end}, got {s}-{e}"
                            )));
                        }
                        return Err(Error::InvalidResponse(format!(
                            "Content-Range {s}-{e} does not match the requested {offset}-{end} for {digest}"
                        )));
                    }
                    let body = read_body(&mut resp, len, None, idle).await.map_err(|err| match err {
                        Error::TooLarge(_) => Error::InvalidResponse(format!("206 body for {digest} longer than {len}")),
                        err => err,
                    })?;
                    if body.len() as u64 != len {
                        return Err(Error::InvalidResponse(format!(
                            "short read of {digest}: got {} of {len} bytes",
                            body.len()
                        )));
                    }
                    Ok(body.freeze())
                }
                StatusCode::OK => {
                    // The server ignored Range and sends the whole blob.
                    let need = end + 1;
                    if let Some(n) = content_length(resp.headers()) {
                        if n > MAX_RANGE_BODY {
                            return Err(Error::TooLarge(format!(
                                "server ignored Range and sends all {n} bytes of {digest} (limit {MAX_RANGE_BODY})"
                            )));
                        }
                        if n < need {
                            return Err(Error::OutOfRange(format!("{digest} has {n} bytes, asked for up to {need}")));
                        }
                    }
                    if need > MAX_RANGE_BODY {
                        return Err(Error::TooLarge(format!(
                            "server ignored Range; reading {need} bytes of {digest} exceeds {MAX_RANGE_BODY}"
                        )));
                    }
                    let body = read_body(&mut resp, MAX_RANGE_BODY, Some(need), idle).await?;
                    if (body.len() as u64) < need {
                        return Err(Error::OutOfRange(format!(
                            "short read of {digest}: body has {} bytes, asked for up to {need}",
                            body.len()
                        )));
                    }
                    let mut body = body.freeze();
                    body.truncate(need as usize);
                    Ok(body.slice(offset as usize..))
                }
                StatusCode::RANGE_NOT_SATISFIABLE => Err(Error::OutOfRange(format!(
                    "bytes {offset}-{end} of {digest}: 416 Range Not Satisfiable"
                ))),
                _ => Err(status_error(resp, &format!("blob {digest}")).await),
            }
        })
        .await
    }

    /// Uploads a blob unless a HEAD shows it exists: monolithic POST then
    /// PUT `?digest=`. The data is checked against `digest` first.
    pub async fn push_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        data: Bytes,
    ) -> Result<(), Error> {
        verify(digest, &data)?;
        let scope = push_scope(r);
        let what = format!("push blob {digest} to {r}");
        let scope = &scope;
        let data = &data;
        let budget = self.sized_budget(data.len() as u64);
        self.run(
            &r.registry,
            Capability::Push,
            budget,
            &what,
            |ep| async move {
                let blob_url = ep.url(&format!("/{}/blobs/{}", r.repository, digest))?;
                let mut req = Req {
                    method: Method::HEAD,
                    url: blob_url,
                    headers: HeaderMap::new(),
                    body: None,
                    scope: scope.clone(),
                    send_timeout: self.cfg().request_timeout,
                };
                let resp = self.execute(&ep, &req).await?;
                if resp.status().is_success() {
                    tracing::debug!(%digest, "blob already present, skipping upload");
                    return Ok(());
                }
                if resp.status() != StatusCode::NOT_FOUND {
                    return Err(status_error(resp, &format!("HEAD blob {digest}")).await);
                }
                req.method = Method::POST;
                req.url = ep.url(&format!("/{}/blobs/uploads/", r.repository))?;
                req.body = Some(Bytes::new());
                let resp = self.execute(&ep, &req).await?;
                if !resp.status().is_success() {
                    return Err(status_error(resp, "start upload").await);
                }
                let loc = header_str(resp.headers(), header::LOCATION).ok_or_else(|| {
                    Error::InvalidResponse("upload started without a Location header".into())
                })?;
                let mut put_url = resp.url().join(loc).map_err(|e| {
                    Error::InvalidResponse(format!("bad upload Location {loc:?}: {e}"))
                })?;
                put_url
                    .query_pairs_mut()
                    .append_pair("digest", &digest.to_string());
                req.method = Method::PUT;
                req.url = put_url;
                req.body = Some(data.clone());
                req.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                req.send_timeout = budget.attempt;
                let resp = self.execute(&ep, &req).await?;
                if !resp.status().is_success() {
                    return Err(status_error(resp, &format!("upload of {digest}")).await);
                }
                Ok(())
            },
        )
        .await
    }

    /// PUTs a manifest (by the reference's tag, else its digest) with
    /// `media_type` as Content-Type. Returns its digest (the reference's if
    /// it has one, which must match the bytes; else sha256).
    pub async fn push_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest, Error> {
        let digest = match &r.digest {
            Some(d) => {
                verify(d, &bytes)?;
                *d
            }
            None => Digest::of(&bytes),
        };
        let ct = HeaderValue::from_str(media_type)
            .map_err(|_| Error::Config(format!("invalid media type {media_type:?}")))?;
        let mref = r.tag.clone().unwrap_or_else(|| digest.to_string());
        let scope = push_scope(r);
        let what = format!("push manifest {digest} to {r}");
        let (scope, mref, ct, bytes_ref, digest_ref) = (&scope, &mref, &ct, &bytes, &digest);
        self.run(
            &r.registry,
            Capability::Push,
            self.sized_budget(bytes.len() as u64),
            &what,
            |ep| async move {
                let mut headers = HeaderMap::new();
                headers.insert(header::CONTENT_TYPE, ct.clone());
                let req = Req {
                    method: Method::PUT,
                    url: ep.url(&format!("/{}/manifests/{}", r.repository, mref))?,
                    headers,
                    body: Some(bytes_ref.clone()),
                    scope: scope.clone(),
                    send_timeout: self.cfg().request_timeout,
                };
                let resp = self.execute(&ep, &req).await?;
                if !resp.status().is_success() {
                    return Err(status_error(resp, &format!("manifest {mref}")).await);
                }
                if let Some(h) = header_str(resp.headers(), "docker-content-digest").map(str::trim)
                {
                    if let Ok(theirs) = Digest::parse(h) {
                        if theirs != *digest_ref {
                            return Err(Error::DigestMismatch {
                                expected: *digest_ref,
                                actual: theirs,
                            });
                        }
                    }
                }
                let _ = bytes_ref;
                Ok(*digest_ref)
            },
        )
        .await?;
        Ok(digest)
    }
}

/// Reads a body chunk by chunk: at most `limit` bytes (else TooLarge), at
/// most `idle` between chunks (else Timeout), stopping once `stop_at` bytes
/// are in.
async fn read_body(
    resp: &mut reqwest::Response,
    limit: u64,
    stop_at: Option<u64>,
    idle: Duration,
) -> Result<BytesMut, Error> {
    let cap = content_length(resp.headers())
        .unwrap_or(0)
        .min(limit)
        .min(stop_at.unwrap_or(u64::MAX));
    let mut buf = BytesMut::with_capacity(cap.min(MAX_RANGE_BODY) as usize);
    loop {
        let chunk = match tokio::time::timeout(idle, resp.chunk()).await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => return Ok(buf),
            Ok(Err(e)) => return Err(Error::from_reqwest(e)),
            Err(_) => {
                return Err(Error::Timeout(format!(
                    "body of {} stalled for {idle:?} after {} bytes",
                    show_url(resp.url()),
                    buf.len()
                )))
            }
        };
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(Error::TooLarge(format!(
                "body of {} exceeds {limit} bytes",
                show_url(resp.url())
            )));
        }
        buf.extend_from_slice(&chunk);
        if stop_at.is_some_and(|s| buf.len() as u64 >= s) {
            return Ok(buf);
        }
    }
}

async fn body_excerpt(resp: &mut reqwest::Response) -> String {
    let mut out = Vec::new();
    let deadline = Duration::from_secs(2);
    while out.len() < 512 {
        match tokio::time::timeout(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => out.extend_from_slice(&c[..c.len().min(512 - out.len())]),
            _ => break,
        }
    }
    let s = String::from_utf8_lossy(&out);
    redact_queries(s.trim())
}

/// Maps a non-success response: 404 → NotFound, 401/403 → Unauthorized,
/// else Http with a body excerpt.
async fn status_error(mut resp: reqwest::Response, what: &str) -> Error {
    let status = resp.status();
    let url = show_url(resp.url());
    let excerpt = body_excerpt(&mut resp).await;
    match status {
        StatusCode::NOT_FOUND => Error::NotFound(format!("{what}: {url}: {excerpt}")),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Error::Unauthorized(format!("{what}: {url}: {status}: {excerpt}"))
        }
        _ => Error::Http {
            status: status.as_u16(),
            url,
            body_excerpt: excerpt,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((0, 9, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(
            parse_content_range(" bytes  10-19/20 "),
            Some((10, 19, Some(20)))
        );
        assert_eq!(parse_content_range("bytes 9-1/100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for pass in 1..20 {
            let d = backoff(pass);
            assert!(
                d >= Duration::from_millis(100) && d <= Duration::from_secs(5),
                "{pass}: {d:?}"
            );
        }
        assert!(backoff(1) <= Duration::from_millis(200));
        assert!(backoff(4) >= Duration::from_millis(800));
    }

    #[test]
    fn urls_are_shown_without_secrets() {
        let u = Url::parse("https://user:pw@s3.example/bucket/x?X-Amz-Signature=abc").unwrap();
        assert_eq!(show_url(&u), "https://s3.example/bucket/x");
    }
}
