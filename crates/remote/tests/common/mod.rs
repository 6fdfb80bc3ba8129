//! Test helpers: a tiny hand-written HTTP/1.1 server, a docker-registry
//! launcher (stopped by PID on drop), and the mkimage.py + skopeo push.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hologram_remote::RegistryConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ------------------------------------------------------------------ mock HTTP

/// One request as the mock server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    pub fn query(&self, key: &str) -> Vec<String> {
        let Some((_, q)) = self.target.split_once('?') else {
            return vec![];
        };
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| percent_decode(v))
            .collect()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the handler wants sent back.
pub enum Reply {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Never answer (the connection stays open until the server is dropped).
    Hang,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply::Respond {
            status,
            headers: vec![],
            body: vec![],
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        if let Reply::Respond { headers, .. } = &mut self {
            headers.push((k.to_string(), v.to_string()));
        }
        self
    }
    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Reply {
        if let Reply::Respond { body, .. } = &mut self {
            *body = b.into();
        }
        self
    }
    pub fn json(status: u16, v: &serde_json::Value) -> Reply {
        Reply::status(status)
            .header("Content-Type", "application/json")
            .body(v.to_string())
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A hand-written HTTP/1.1 server on 127.0.0.1 (one request per
/// connection, `Connection: close`). Stops when dropped.
pub struct MockServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    pub async fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    break;
                };
                let (h, l) = (handler.clone(), log2.clone());
                conns.spawn(async move {
                    let _ = serve_conn(sock, h, l).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        MockServer { addr, log, task }
    }

    /// `127.0.0.1:port`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self, pred: impl Fn(&Request) -> bool) -> usize {
        self.log.lock().unwrap().iter().filter(|r| pred(r)).count()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_conn(
    mut sock: TcpStream,
    handler: Arc<Handler>,
    log: Arc<Mutex<Vec<Request>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    let req = Request {
        method,
        target,
        headers,
        body,
    };
    log.lock().unwrap().push(req.clone());
    match handler(&req) {
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
        Reply::Respond {
            status,
            headers,
            body,
        } => {
            let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
            let has_len = headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
            for (k, v) in &headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            if !has_len {
                out.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            out.push_str("Connection: close\r\n\r\n");
            sock.write_all(out.as_bytes()).await?;
            if req.method != "HEAD" {
                sock.write_all(&body).await?;
            }
            sock.flush().await?;
            let _ = sock.shutdown().await;
            Ok(())
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// Serves `data` honouring `Range: bytes=a-b` (206), else 200.
pub fn serve_range(req: &Request, data: &[u8]) -> Reply {
    if let Some(r) = req.header("range") {
        let spec = r.strip_prefix("bytes=").unwrap_or("");
        let (a, b) = spec.split_once('-').unwrap_or(("", ""));
        let a: usize = a.parse().unwrap_or(usize::MAX);
        let b: usize = b
            .parse()
            .unwrap_or(usize::MAX)
            .min(data.len().saturating_sub(1));
        if a >= data.len() || b < a {
            return Reply::status(416).header("Content-Range", &format!("bytes */{}", data.len()));
        }
        return Reply::status(206)
            .header("Content-Range", &format!("bytes {a}-{b}/{}", data.len()))
            .body(data[a..=b].to_vec());
    }
    Reply::status(200)
        .header("Content-Type", "application/octet-stream")
        .body(data.to_vec())
}

/// Deterministic pseudo-random bytes.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A port nothing listens on (bound then released).
pub fn dead_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A config for tests: no docker credentials (a path that does not exist
/// under `dir`), short timeouts.
pub fn test_config(dir: &Path) -> RegistryConfig {
    RegistryConfig {
        hosts_dir: None,
        docker_config: Some(dir.join("no-such-docker-config.json")),
        plain_http: true,
        request_timeout: Duration::from_secs(5),
        total_timeout: Duration::from_secs(15),
        retries: 3,
    }
}

/// Writes a docker config.json with `auth` for `host`.
pub fn write_docker_config(dir: &Path, host: &str, user: &str, pass: &str) -> PathBuf {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let p = dir.join("docker-config.json");
    std::fs::write(
        &p,
        serde_json::json!({"auths": {host: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    p
}

// ------------------------------------------------------------------ docker-registry

/// A `docker-registry` process on 127.0.0.1 with storage in a temp dir,
/// killed (by its PID) when dropped.
pub struct Registry {
    child: Child,
    pub host: String,
    pub dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with_tls(None)
    }

    /// `tls`: (certificate, key) PEM files.
    pub fn start_with_tls(tls: Option<(&Path, &Path)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        for attempt in 0..5 {
            let port = dead_port();
            let tls_cfg = match tls {
                Some((c, k)) => format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    c.display(),
                    k.display()
                ),
                None => String::new(),
            };
            let cfg = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_cfg}",
                dir.path().join("data").display()
            );
            let cfg_path = dir.path().join("config.yml");
            std::fs::write(&cfg_path, cfg).unwrap();
            let log =
                std::fs::File::create(dir.path().join(format!("registry-{attempt}.log"))).unwrap();
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve")
                .arg(&cfg_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            {
                use std::os::unix::process::CommandExt;
                // SAFETY: the closure runs in the forked child before exec and
                // only calls prctl, which is async-signal-safe. It makes the
                // kernel kill the registry if the test thread dies without
                // running Drop (e.g. the test binary is killed).
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
            }
            let mut child = cmd.spawn().expect("docker-registry must be installed");
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if StdStream::connect(("127.0.0.1", port)).is_ok() {
                    return Registry {
                        child,
                        host: format!("127.0.0.1:{port}"),
                        dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited (port taken meanwhile?): try another port
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("docker-registry did not come up on port {port}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let log = std::fs::read_to_string(dir.path().join(format!("registry-{attempt}.log")))
                .unwrap_or_default();
            eprintln!("docker-registry exited early on port {port}: {log}");
        }
        panic!("docker-registry failed to start 5 times");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// mkimage.py's summary.
#[derive(Debug, serde::Deserialize)]
pub struct ImageSummary {
    pub manifest_digest: hologram_remote::Digest,
    pub config_digest: hologram_remote::Digest,
    pub layers: Vec<hologram_remote::Digest>,
}

/// Builds the 3-layer test image and pushes it with skopeo to
/// `host/repo:tag`. Returns the summary and the layout dir.
pub fn push_test_image(host: &str, repo: &str, tag: &str, work: &Path) -> (ImageSummary, PathBuf) {
    let layout = work.join("layout");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mkimage.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&layout)
        .arg(tag)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkimage.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: ImageSummary = serde_json::from_slice(&out.stdout).unwrap();
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{host}/{repo}:{tag}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (summary, layout)
}

/// Reads a blob from an OCI layout.
pub fn layout_blob(layout: &Path, digest: &hologram_remote::Digest) -> Vec<u8> {
    std::fs::read(layout.join("blobs/sha256").join(digest.hex())).unwrap()
}
