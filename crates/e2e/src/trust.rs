//! The trust layer end to end: witness keys and envelopes made with the
//! `hologram witness` CLI, witness endpoints (`hologram witness serve`, and a
//! hostile stub of our own that answers every UOR-ID with one fixed
//! envelope), a registry proxy that corrupts manifests served by digest,
//! and a daemon (`[trust]` config) + containerd per case.
//!
//! One [`TrustWorld`] holds a registry with an eStargz image and any number
//! of *variants*: the same layers and config under another tag, with one
//! manifest annotation changed, so that every variant has its own manifest
//! digest and UOR-ID (and its own witness situation). Each case then gets a
//! fresh [`TrustDaemon`], since a daemon that already holds the image's
//! layers would not be asked to Prepare them again, and the gate caches
//! verdicts per manifest digest.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::containerd::{Containerd, SNAPSHOTTER};
use crate::env::REQUIRED_TOOLS;
use crate::image::build_layout;
use crate::lazy::{
    hologram, hologram_bin, hologram_ok, image_facts, parse_pull_summary, push_layout_to,
    sha256_digest, ImageFacts, PullSummary, CLI_TIMEOUT,
};
use crate::process::Daemon;
use crate::prom::{scrape, Exposition};
use crate::registry::{http_get, Registry};
use crate::snapshotter::Snapshotter;
use crate::util::{free_port, require_tools, short_tempdir, tail, wait_until};

/// Repository of the trust tests' images.
pub const REPOSITORY: &str = "e2e/trust";
/// Manifest annotation that tells the variants apart.
pub const VARIANT_ANNOTATION: &str = "org.hologram.e2e.variant";

/// The provenance labels the daemon sets with `verbose`.
pub const LABEL_UOR_ID: &str = "hologram.uor_id";
pub const LABEL_WITNESS_OK: &str = "hologram.witness_ok";
pub const LABEL_ENFORCE_MODE: &str = "hologram.enforce_mode";

/// The containerd remote-snapshot labels the gate reads.
pub const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
pub const LABEL_CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const LABEL_CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
pub const LABEL_CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";

// ---------------------------------------------------------------- base64 --

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard padded base64.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let idx = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for (i, x) in idx.iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(B64[*x as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard or URL-safe base64, padded or not.
pub fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut bits = 0u32;
    let mut nbits = 0u32;
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => bail!("invalid base64 character {:?}", char::from(c)),
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push(((bits >> nbits) & 0xff) as u8);
        }
    }
    Ok(out)
}

// ------------------------------------------------------------ CLI wrappers --

/// An Ed25519 key pair written by `hologram witness keygen`.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private: PathBuf,
    pub public: PathBuf,
}

/// `hologram witness keygen --out PREFIX`.
pub fn keygen(prefix: &Path) -> Result<KeyPair> {
    let p = prefix.display().to_string();
    hologram_ok(&["witness", "keygen", "--out", &p], CLI_TIMEOUT)?;
    let kp = KeyPair {
        private: PathBuf::from(format!("{p}.key")),
        public: PathBuf::from(format!("{p}.pub")),
    };
    for f in [&kp.private, &kp.public] {
        if !f.is_file() {
            bail!(
                "`hologram witness keygen --out {p}` did not write {}",
                f.display()
            );
        }
    }
    Ok(kp)
}

/// `hologram witness sign --key KEY --plain-http [--expires E] --out OUT REF`.
pub fn sign(key: &Path, reference: &str, expires: Option<&str>, out: &Path) -> Result<()> {
    let key = key.display().to_string();
    let out_s = out.display().to_string();
    let mut args = vec!["witness", "sign", "--key", &key, "--plain-http"];
    if let Some(e) = expires {
        args.push("--expires");
        args.push(e);
    }
    args.extend_from_slice(&["--out", &out_s, reference]);
    hologram_ok(&args, CLI_TIMEOUT)?;
    Ok(())
}

/// `hologram uor resolve --plain-http REF` (trimmed).
pub fn uor_resolve(reference: &str) -> Result<String> {
    Ok(
        hologram_ok(&["uor", "resolve", "--plain-http", reference], CLI_TIMEOUT)?
            .trim()
            .to_owned(),
    )
}

/// Reads a witness file (a DSSE envelope) as JSON.
pub fn read_envelope(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// The in-toto statement inside an envelope (not verified).
pub fn envelope_statement(env: &serde_json::Value) -> Result<serde_json::Value> {
    let payload = env["payload"]
        .as_str()
        .context("envelope without payload")?;
    serde_json::from_slice(&base64_decode(payload)?).context("payload is not JSON")
}

/// The envelope with its statement changed by `edit` and re-encoded, the
/// signatures kept as they are: what an attacker without the key can do.
pub fn tamper_statement(
    env: &serde_json::Value,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<serde_json::Value> {
    let mut st = envelope_statement(env)?;
    edit(&mut st);
    let mut out = env.clone();
    out["payload"] = serde_json::Value::String(base64_encode(
        &serde_json::to_vec(&st).context("encoding the statement")?,
    ));
    Ok(out)
}

// ------------------------------------------------------------ HTTP stubs --

/// One parsed HTTP request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// One response to write.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: &serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: v.to_string().into_bytes(),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn read_request(stream: &mut TcpStream) -> Result<Request> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .context("set_read_timeout")?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&raw, b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf).context("reading request")?;
        if n == 0 {
            bail!("connection closed before the request head ended");
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.lines();
    let first = lines.next().context("empty request")?;
    let mut parts = first.split_whitespace();
    let method = parts.next().context("no method")?.to_owned();
    let path = parts.next().context("no path")?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut buf).context("reading request body")?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Ok(Request {
        method,
        path,
        headers,
        body,
    })
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Status",
    }
}

fn write_response(stream: &mut TcpStream, method: &str, resp: &Response) -> Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        resp.status,
        reason_phrase(resp.status)
    );
    let mut has_len = false;
    for (k, v) in &resp.headers {
        if k.eq_ignore_ascii_case("connection") || k.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        if k.eq_ignore_ascii_case("content-length") {
            has_len = true;
            if method != "HEAD" {
                continue; // rewritten below from the (possibly edited) body
            }
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "HEAD" || !has_len {
        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .context("writing response head")?;
    if method != "HEAD" {
        stream
            .write_all(&resp.body)
            .context("writing response body")?;
    }
    stream.flush().context("flushing response")?;
    Ok(())
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync + 'static;

/// A tiny HTTP/1.1 server on 127.0.0.1 (one request per connection,
/// `Connection: close`), answering with `handler`. Stopped on drop.
pub struct HttpStub {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    accept: Option<JoinHandle<()>>,
}

impl HttpStub {
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the HTTP stub")?;
        let addr = listener.local_addr().context("stub local_addr")?;
        listener
            .set_nonblocking(true)
            .context("stub listener nonblocking")?;
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (st, rq) = (Arc::clone(&stop), Arc::clone(&requests));
        let accept = std::thread::Builder::new()
            .name("e2e-http-stub".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    let mut stream = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    let _ = stream.set_nonblocking(false);
                    rq.fetch_add(1, Ordering::Relaxed);
                    let h = Arc::clone(&handler);
                    let _ = std::thread::Builder::new()
                        .name("e2e-http-stub-conn".into())
                        .spawn(move || {
                            if let Ok(req) = read_request(&mut stream) {
                                let resp = h(&req);
                                let _ = write_response(&mut stream, &req.method, &resp);
                            }
                            let _ = stream.shutdown(Shutdown::Both);
                        });
                }
            })
            .context("spawning the HTTP stub")?;
        Ok(Self {
            addr,
            stop,
            requests,
            accept: Some(accept),
        })
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// "http://127.0.0.1:PORT".
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A hostile witness endpoint: `GET /v1/witness/{any UOR-ID}` answers 200
/// with `envelope` (and, to look convincing, `valid: true` and the asked
/// UOR-ID in the flat fields).
pub fn fixed_witness_server(envelope: serde_json::Value) -> Result<HttpStub> {
    let st = envelope_statement(&envelope)?;
    let pred = st["predicate"].clone();
    HttpStub::start(move |req| {
        let Some(uor) = req.path.strip_prefix("/v1/witness/") else {
            return Response::json(404, &serde_json::json!({"error": "no such endpoint"}));
        };
        Response::json(
            200,
            &serde_json::json!({
                "uor_id": uor,
                "valid": true,
                "timestamp": pred["issued_at"],
                "witness_type": pred["witness_type"],
                "metadata": pred["metadata"],
                "signature": envelope["signatures"][0]["sig"],
                "expires_at": pred["expires_at"],
                "envelope": envelope,
            }),
        )
    })
}

/// Forwards one request to `upstream` (HTTP/1.0, read to EOF).
fn forward(upstream: &str, req: &Request) -> Result<Response> {
    let mut s = TcpStream::connect(upstream).with_context(|| format!("connecting {upstream}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .context("set_read_timeout")?;
    let mut head = format!(
        "{} {} HTTP/1.0\r\nHost: {upstream}\r\n",
        req.method, req.path
    );
    for (k, v) in &req.headers {
        let k_l = k.to_ascii_lowercase();
        if matches!(
            k_l.as_str(),
            "host" | "connection" | "keep-alive" | "content-length"
        ) {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !req.body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).context("forwarding request")?;
    s.write_all(&req.body).context("forwarding body")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .context("reading upstream response")?;
    let split = find(&raw, b"\r\n\r\n").context("upstream response without head")?;
    let text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("bad upstream status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// Changes one byte of a manifest: the first hex digit after the first
/// `sha256:` (the config digest), so the JSON stays valid and only the
/// digest check can notice.
pub fn corrupt_manifest(body: &mut [u8]) -> bool {
    let Some(i) = find(body, b"sha256:") else {
        return false;
    };
    let at = i + 7;
    match body.get_mut(at) {
        Some(b) => {
            *b = if *b == b'0' { b'1' } else { b'0' };
            true
        }
        None => false,
    }
}

/// A registry proxy that corrupts one byte of every manifest it serves by
/// digest (`GET /v2/…/manifests/sha256:…`) while `corrupting()`; every other
/// request passes through unchanged.
pub struct ManifestCorruptingProxy {
    stub: HttpStub,
    corrupt: Arc<AtomicBool>,
    corrupted: Arc<AtomicU64>,
}

impl ManifestCorruptingProxy {
    pub fn start(upstream: &str) -> Result<Self> {
        let corrupt = Arc::new(AtomicBool::new(true));
        let corrupted = Arc::new(AtomicU64::new(0));
        let (c, n, up) = (
            Arc::clone(&corrupt),
            Arc::clone(&corrupted),
            upstream.to_owned(),
        );
        let stub = HttpStub::start(move |req| {
            let mut resp = match forward(&up, req) {
                Ok(r) => r,
                Err(e) => {
                    return Response {
                        status: 502,
                        headers: Vec::new(),
                        body: format!("{e:#}").into_bytes(),
                    }
                }
            };
            let by_digest = req.method == "GET"
                && req.path.starts_with("/v2/")
                && req.path.contains("/manifests/sha256:");
            if by_digest
                && resp.status == 200
                && c.load(Ordering::Relaxed)
                && corrupt_manifest(&mut resp.body)
            {
                n.fetch_add(1, Ordering::Relaxed);
            }
            resp
        })?;
        Ok(Self {
            stub,
            corrupt,
            corrupted,
        })
    }

    pub fn addr(&self) -> String {
        self.stub.addr()
    }

    pub fn set_corrupting(&self, on: bool) {
        self.corrupt.store(on, Ordering::Relaxed);
    }

    /// Manifests corrupted so far.
    pub fn corrupted(&self) -> u64 {
        self.corrupted.load(Ordering::Relaxed)
    }
}

/// `hologram witness serve --listen 127.0.0.1:PORT --dir DIR`.
pub struct WitnessServer {
    // Stopped (SIGTERM, then SIGKILL) on drop.
    _daemon: Daemon,
    addr: String,
}

impl WitnessServer {
    pub fn start(dir: &Path, log: &Path) -> Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(dir, log) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
            .context("starting `hologram witness serve` (3 attempts)")
    }

    fn start_once(dir: &Path, log: &Path) -> Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(hologram_bin()?);
        cmd.args(["witness", "serve", "--listen", &addr, "--dir"])
            .arg(dir);
        let mut daemon = Daemon::spawn("hologram witness serve", cmd, log)?;
        let probe = format!("/v1/witness/uor:v1:r0:{}", "0".repeat(64));
        let res = wait_until(
            "the witness server to answer",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                if let Some(status) = daemon.try_exited()? {
                    bail!("witness server exited ({status}): {}", tail(log, 20));
                }
                Ok(http_get(&addr, &probe, &[]).is_ok_and(|r| r.status == 404))
            },
        );
        res?;
        Ok(Self {
            _daemon: daemon,
            addr,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

// ---------------------------------------------------------------- world --

/// Registry + the eStargz test image + keys + a witness directory.
pub struct TrustWorld {
    pub registry: Registry,
    /// The eStargz image every variant is made of.
    pub base: ImageFacts,
    /// A key pair whose public key the daemons trust.
    pub trusted: KeyPair,
    /// A key pair nobody trusts.
    pub untrusted: KeyPair,
    /// Served by [`TrustWorld::start_witness_server`].
    pub witness_dir: PathBuf,
    dir: TempDir,
}

impl TrustWorld {
    /// Starts a registry, builds the 3-layer test image, converts it to
    /// eStargz with `hologram convert` and makes two key pairs.
    pub fn start() -> Result<Self> {
        require_tools(REQUIRED_TOOLS)?;
        hologram_bin()?;
        let dir = short_tempdir("hg-trust-")?;
        let registry = Registry::start()?;
        let layout = dir.path().join("layout");
        build_layout(&layout)?;
        let src = push_layout_to(
            registry.addr(),
            &layout,
            crate::image::TAG,
            &format!("{REPOSITORY}:src"),
        )?;
        let esgz = format!("{}/{REPOSITORY}:esgz", registry.addr());
        hologram_ok(&["convert", "--plain-http", &src, &esgz], CLI_TIMEOUT)?;
        let base = image_facts(&esgz)?;
        if base.layers.iter().any(|l| {
            !l.annotations
                .contains_key("containerd.io/snapshot/stargz/toc.digest")
        }) {
            bail!(
                "hologram convert left a layer without TOC digest: {:#}",
                base.manifest
            );
        }
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).context("mkdir keys")?;
        let trusted = keygen(&keys.join("trusted"))?;
        let untrusted = keygen(&keys.join("untrusted"))?;
        let witness_dir = dir.path().join("witnesses");
        std::fs::create_dir(&witness_dir).context("mkdir witnesses")?;
        Ok(Self {
            registry,
            base,
            trusted,
            untrusted,
            witness_dir,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Pushes the base image's manifest with annotation
    /// `VARIANT_ANNOTATION = name` as `<registry>/e2e/trust:<name>`: same
    /// layers and config, another manifest digest and UOR-ID.
    pub fn variant(&self, name: &str) -> Result<ImageFacts> {
        let mut manifest = self.base.manifest.clone();
        let obj = manifest
            .as_object_mut()
            .context("manifest is not an object")?;
        let ann = obj
            .entry("annotations")
            .or_insert_with(|| serde_json::json!({}));
        ann[VARIANT_ANNOTATION] = serde_json::Value::String(name.to_owned());
        let media_type = manifest["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_owned();
        let body = serde_json::to_vec(&manifest).context("encoding the manifest")?;
        let path = format!("/v2/{REPOSITORY}/manifests/{name}");
        let resp = http_put(self.registry.addr(), &path, &media_type, &body)?;
        if resp.status != 201 {
            bail!(
                "PUT {path}: {} {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
        let reference = format!("{}/{REPOSITORY}:{name}", self.registry.addr());
        let facts = image_facts(&reference)?;
        if facts.manifest_digest != sha256_digest(&body) {
            bail!(
                "the registry serves {reference} as {}, pushed {}",
                facts.manifest_digest,
                sha256_digest(&body)
            );
        }
        Ok(facts)
    }

    /// Signs `reference` with `key` into the witness directory (file `name`).
    pub fn sign_into_dir(
        &self,
        key: &Path,
        reference: &str,
        expires: Option<&str>,
        name: &str,
    ) -> Result<PathBuf> {
        let out = self.witness_dir.join(name);
        sign(key, reference, expires, &out)?;
        Ok(out)
    }

    /// Signs `reference` with `key` into a scratch file (not served).
    pub fn sign_aside(&self, key: &Path, reference: &str, name: &str) -> Result<PathBuf> {
        let aside = self.dir().join("aside");
        std::fs::create_dir_all(&aside).context("mkdir aside")?;
        let out = aside.join(name);
        sign(key, reference, None, &out)?;
        Ok(out)
    }

    /// `hologram witness serve` on the witness directory.
    pub fn start_witness_server(&self) -> Result<WitnessServer> {
        WitnessServer::start(&self.witness_dir, &self.dir().join("witness-serve.log"))
    }

    /// A fresh daemon + containerd with `settings`.
    pub fn daemon(&self, settings: &TrustSettings) -> Result<TrustDaemon> {
        TrustDaemon::start(settings)
    }
}

/// `PUT` with a body (HTTP/1.0, read to EOF).
pub fn http_put(
    addr: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<crate::registry::HttpResponse> {
    let req = Request {
        method: "PUT".into(),
        path: path.into(),
        headers: vec![("Content-Type".into(), content_type.into())],
        body: body.to_vec(),
    };
    let r = forward(addr, &req)?;
    Ok(crate::registry::HttpResponse {
        status: r.status,
        headers: r
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect(),
        body: r.body,
    })
}

// --------------------------------------------------------------- daemon --

/// The daemon's `[trust]` settings (and how it is started).
#[derive(Debug, Clone, Default)]
pub struct TrustSettings {
    pub enforce: bool,
    pub verbose: bool,
    pub endpoint: Option<String>,
    pub dir: Option<PathBuf>,
    pub keys: Vec<PathBuf>,
    /// Extra environment of the daemon (e.g. `HOLOGRAM_ENFORCE=1`).
    pub env: Vec<(String, String)>,
    /// Serve `/metrics` on a free 127.0.0.1 port.
    pub metrics: bool,
}

impl TrustSettings {
    /// The daemon config: plain-HTTP registries, no background fetch, and
    /// the `[trust]` section.
    pub fn toml(&self) -> String {
        let mut s = String::from(
            "[remote]\nplain_http = true\nfetch_timeout_secs = 10\nbackground_fetch = false\n\n[trust]\n",
        );
        s.push_str(&format!("enforce = {}\n", self.enforce));
        s.push_str(&format!("verbose = {}\n", self.verbose));
        if let Some(ep) = &self.endpoint {
            s.push_str(&format!("witness_endpoint = {:?}\n", ep));
        }
        if let Some(d) = &self.dir {
            s.push_str(&format!("witness_dir = {:?}\n", d.display().to_string()));
        }
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("{:?}", k.display().to_string()))
            .collect();
        s.push_str(&format!("trusted_keys = [{}]\n", keys.join(", ")));
        s
    }
}

/// A hologram-snapshotter with a `[trust]` config and a containerd using it.
/// Field order is drop order.
pub struct TrustDaemon {
    pub containerd: Containerd,
    pub snapshotter: Snapshotter,
    pub metrics_addr: Option<String>,
    dir: TempDir,
}

impl TrustDaemon {
    pub fn start(settings: &TrustSettings) -> Result<Self> {
        let mut last = None;
        // A metrics port taken meanwhile makes the daemon fail to start.
        for _ in 0..3 {
            match Self::start_once(settings) {
                Ok(d) => return Ok(d),
                Err(e) => last = Some(e),
            }
            if !settings.metrics {
                break;
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
    }

    fn start_once(settings: &TrustSettings) -> Result<Self> {
        let dir = short_tempdir("hg-trd-")?;
        let root = dir.path().join("sn");
        let socket = dir.path().join("sn.sock");
        let mut snapshotter = Snapshotter::new(&root, &socket)?;
        snapshotter.write_config(&settings.toml())?;
        let metrics_addr = if settings.metrics {
            let a = format!("127.0.0.1:{}", free_port()?);
            snapshotter.set_metrics_address(&a);
            Some(a)
        } else {
            None
        };
        for (k, v) in &settings.env {
            snapshotter.set_env(k, v);
        }
        // Whatever the test process has in its environment must not leak in.
        for k in [
            "HOLOGRAM_ENFORCE",
            "HOLOGRAM_VERBOSE",
            "HOLOGRAM_WITNESS_ENDPOINT",
        ] {
            if !settings.env.iter().any(|(e, _)| e == k) {
                snapshotter.set_env(k, "");
            }
        }
        snapshotter.start_again()?;
        let mut containerd = Containerd::start(&socket)?;
        containerd.attach_log("hologram-snapshotter", snapshotter.log());
        Ok(Self {
            containerd,
            snapshotter,
            metrics_addr,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ctr <args>` in the test namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        self.containerd.ctr(args)
    }

    /// `hologram pull --address … -n … --plain-http --snapshotter hologram
    /// REF`, whatever the outcome, and how long it took.
    pub fn pull_raw(&self, reference: &str) -> Result<(Output, Duration)> {
        let address = self.containerd.address().display().to_string();
        let started = Instant::now();
        let out = hologram(
            &[
                "pull",
                "--address",
                &address,
                "-n",
                self.containerd.namespace(),
                "--plain-http",
                "--snapshotter",
                SNAPSHOTTER,
                reference,
            ],
            CLI_TIMEOUT,
        )?;
        Ok((out, started.elapsed()))
    }

    /// `hologram pull` that must succeed; its summary.
    pub fn pull(&self, reference: &str) -> Result<PullSummary> {
        let (out, _) = self.pull_raw(reference)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "`hologram pull {reference}` failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics()
            );
        }
        parse_pull_summary(&stdout)
    }

    /// `hologram pull` that must fail; its stderr (with stdout appended).
    pub fn pull_refused(&self, reference: &str) -> Result<String> {
        let (out, _) = self.pull_raw(reference)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        if out.status.success() {
            bail!(
                "`hologram pull {reference}` succeeded but must be refused:\n{text}\n{}",
                self.diagnostics()
            );
        }
        Ok(text)
    }

    /// `ctr run --rm --snapshotter hologram REF ID`; the container's
    /// output (see [`crate::containerd::Containerd::run_logged`]).
    pub fn run(&self, reference: &str, id: &str) -> Result<String> {
        self.containerd
            .run_logged(None, &["--rm", "--snapshotter", SNAPSHOTTER, reference, id])
    }

    /// Labels of snapshot `key` (`ctr snapshots info`).
    pub fn snapshot_labels(&self, key: &str) -> Result<serde_json::Value> {
        let out = self.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "info", key])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("info JSON: {out}"))?;
        Ok(v["Labels"].clone())
    }

    /// Whether containerd knows snapshot `key` in the hologram snapshotter.
    pub fn has_snapshot(&self, key: &str) -> Result<bool> {
        let out =
            self.containerd
                .ctr_raw(&["snapshots", "--snapshotter", SNAPSHOTTER, "info", key])?;
        Ok(out.status.success())
    }

    /// The daemon's `/metrics`.
    pub fn metrics(&self) -> Result<Exposition> {
        scrape(self.metrics_addr.as_deref().context("metrics are off")?)
    }

    /// The daemon's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.snapshotter.log()).unwrap_or_default()
    }

    /// Log lines containing all of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    pub fn diagnostics(&self) -> String {
        self.containerd.diagnostics()
    }

    /// Calls the daemon's snapshots API directly (not through containerd):
    /// Prepare `key` on `parent` with `labels`.
    pub fn prepare_direct(
        &self,
        key: &str,
        parent: &str,
        labels: &[(&str, &str)],
    ) -> Result<std::result::Result<(), tonic::Status>> {
        Ok(crate::snapshotter::prepare_direct(
            self.snapshotter.socket(),
            key,
            parent,
            labels,
            Duration::from_secs(60),
        )?
        .map(drop))
    }
}

// ---------------------------------------------------------------- cases --

/// The ways an image can fail verification (cases b–h of the trust tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// No witness anywhere (the endpoint has none).
    NoWitness,
    /// A witness signed by a key the daemon does not trust.
    UntrustedKey,
    /// A witness that expired.
    Expired,
    /// A correctly signed witness of another image, served for every UOR-ID.
    OtherImage,
    /// A witness whose statement was changed after signing (expiry extended).
    Tampered,
    /// The witness endpoint is down (closed port) and there is no directory.
    EndpointDown,
    /// A signed image, but pulled with plain `ctr images pull`: no provenance.
    PlainCtrPull,
}

impl Case {
    pub const ALL: [Case; 7] = [
        Case::NoWitness,
        Case::UntrustedKey,
        Case::Expired,
        Case::OtherImage,
        Case::Tampered,
        Case::EndpointDown,
        Case::PlainCtrPull,
    ];

    /// Tag of the case's image variant.
    pub fn name(self) -> &'static str {
        match self {
            Case::NoWitness => "no-witness",
            Case::UntrustedKey => "untrusted-key",
            Case::Expired => "expired",
            Case::OtherImage => "other-image",
            Case::Tampered => "tampered",
            Case::EndpointDown => "endpoint-down",
            Case::PlainCtrPull => "plain-ctr-pull",
        }
    }
}

/// Anything a case keeps running while its daemon is used.
pub enum Server {
    Witness(WitnessServer),
    Stub(HttpStub),
    None,
}

/// A case, set up: the image to pull, the daemon settings and the reason
/// the gate must give.
pub struct Prepared {
    pub case: Case,
    pub image: ImageFacts,
    pub uor_id: String,
    pub settings: TrustSettings,
    /// Part of the refusal message specific to the case.
    pub reason: String,
    pub server: Server,
}

impl Prepared {
    pub fn reference(&self) -> &str {
        &self.image.reference
    }

    /// What the gate's message starts with for this image (all cases but
    /// [`Case::PlainCtrPull`]).
    pub fn not_verified_prefix(&self) -> String {
        format!(
            "image {} (UOR-ID {}) is not verified: ",
            self.image.reference, self.uor_id
        )
    }

    /// Whether the hostile stub (OtherImage) was asked.
    pub fn stub_requests(&self) -> u64 {
        match &self.server {
            Server::Stub(s) => s.requests(),
            _ => 0,
        }
    }
}

impl TrustWorld {
    /// Pushes the case's image variant, makes its witness situation, starts
    /// what serves it, and returns the daemon settings (`enforce` as given,
    /// `verbose` on, the trusted key).
    pub fn prepare_case(&self, case: Case, enforce: bool) -> Result<Prepared> {
        let image = self.variant(case.name())?;
        let reference = image.reference.clone();
        let uor_id = uor_resolve(&reference)?;
        let mut settings = TrustSettings {
            enforce,
            verbose: true,
            keys: vec![self.trusted.public.clone()],
            metrics: true,
            ..TrustSettings::default()
        };
        let file = format!("{}.json", case.name());
        let (server, reason) = match case {
            Case::NoWitness => {
                let s = self.start_witness_server()?;
                let reason = format!("no witness found (witness endpoint {} has none)", s.url());
                settings.endpoint = Some(s.url());
                (Server::Witness(s), reason)
            }
            Case::UntrustedKey => {
                self.sign_into_dir(&self.untrusted.private, &reference, None, &file)?;
                let s = self.start_witness_server()?;
                settings.endpoint = Some(s.url());
                (
                    Server::Witness(s),
                    "witness is not signed by a trusted key".to_owned(),
                )
            }
            Case::Expired => {
                self.sign_into_dir(&self.trusted.private, &reference, Some("1s"), &file)?;
                std::thread::sleep(Duration::from_secs(2));
                let s = self.start_witness_server()?;
                settings.endpoint = Some(s.url());
                (Server::Witness(s), "witness expired at ".to_owned())
            }
            Case::OtherImage => {
                let other = self.variant(&format!("{}-x", case.name()))?;
                let env_path =
                    self.sign_aside(&self.trusted.private, &other.reference, "other.json")?;
                let stub = fixed_witness_server(read_envelope(&env_path)?)?;
                settings.endpoint = Some(stub.url());
                let want = image
                    .manifest_digest
                    .strip_prefix("sha256:")
                    .unwrap_or(&image.manifest_digest)
                    .to_owned();
                (
                    Server::Stub(stub),
                    format!(
                        "witness is for another manifest: expected subject sha256:{want}, found {}",
                        other.manifest_digest
                    ),
                )
            }
            Case::Tampered => {
                let signed = self.sign_aside(&self.trusted.private, &reference, "tampered.json")?;
                let env = read_envelope(&signed)?;
                let tampered = tamper_statement(&env, |st| {
                    st["predicate"]["expires_at"] =
                        serde_json::Value::String("2099-12-31T23:59:59Z".into());
                })?;
                std::fs::write(self.witness_dir.join(&file), tampered.to_string())
                    .context("writing the tampered witness")?;
                let s = self.start_witness_server()?;
                settings.endpoint = Some(s.url());
                (
                    Server::Witness(s),
                    "witness signature does not verify".to_owned(),
                )
            }
            Case::EndpointDown => {
                // A valid witness exists, but only the (dead) endpoint is asked.
                self.sign_into_dir(&self.trusted.private, &reference, None, &file)?;
                let closed = format!("http://127.0.0.1:{}", free_port()?);
                let reason = format!("no witness found (witness endpoint {closed} unreachable");
                settings.endpoint = Some(closed);
                (Server::None, reason)
            }
            Case::PlainCtrPull => {
                self.sign_into_dir(&self.trusted.private, &reference, None, &file)?;
                let s = self.start_witness_server()?;
                settings.endpoint = Some(s.url());
                let chain = image.chain_ids.first().context("no layers")?;
                (
                    Server::Witness(s),
                    format!("enforce mode: layer {chain} has no provenance"),
                )
            }
        };
        Ok(Prepared {
            case,
            image,
            uor_id,
            settings,
            reason,
            server,
        })
    }
}

impl TrustDaemon {
    /// Pulls the case's image the case's way (`hologram pull`, or plain
    /// `ctr images pull` for [`Case::PlainCtrPull`]); the raw output.
    pub fn pull_case(&self, p: &Prepared) -> Result<Output> {
        match p.case {
            Case::PlainCtrPull => self.containerd.ctr_raw(&[
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                SNAPSHOTTER,
                p.reference(),
            ]),
            _ => Ok(self.pull_raw(p.reference())?.0),
        }
    }
}

// -------------------------------------------------------------- helpers --

/// A fresh name for containers and snapshots.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Median of some durations (upper median for even counts).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            let e = base64_encode(s.as_bytes());
            assert_eq!(base64_decode(&e).unwrap(), s.as_bytes(), "{e}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm8").unwrap(), b"fo");
        assert_eq!(base64_decode("-_8=").unwrap(), [0xfb, 0xff]);
        assert!(base64_decode("a b").is_err());
    }

    #[test]
    fn corrupts_one_hex_digit() {
        let mut m = br#"{"config":{"digest":"sha256:0abc"}}"#.to_vec();
        let before = m.clone();
        assert!(corrupt_manifest(&mut m));
        assert_eq!(m.iter().zip(&before).filter(|(a, b)| a != b).count(), 1);
        assert!(serde_json::from_slice::<serde_json::Value>(&m).is_ok());
        assert!(!corrupt_manifest(&mut b"{}".to_vec()));
    }

    #[test]
    fn settings_toml() {
        let s = TrustSettings {
            enforce: true,
            endpoint: Some("http://127.0.0.1:1".into()),
            keys: vec!["/k.pub".into()],
            ..TrustSettings::default()
        };
        let t = s.toml();
        assert!(t.contains("enforce = true\n"), "{t}");
        assert!(
            t.contains("witness_endpoint = \"http://127.0.0.1:1\"\n"),
            "{t}"
        );
        assert!(t.contains("trusted_keys = [\"/k.pub\"]\n"), "{t}");
        assert!(!t.contains("witness_dir"), "{t}");
    }
}
