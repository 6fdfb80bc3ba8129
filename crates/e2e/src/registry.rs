//! A private `docker-registry` (distribution 2.x) on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::process::Daemon;
use crate::util::{free_port, short_tempdir, wait_until};

/// A plain-HTTP registry with filesystem storage in its own temp dir.
/// Dropping it stops the registry and removes its storage.
pub struct Registry {
    daemon: Daemon,
    addr: String,
    storage: PathBuf,
    // Dropped last: the registry must be stopped before its files go.
    dir: TempDir,
}

/// Status code, headers (lower-cased names) and body of an HTTP response.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.0 GET (the registry closes the connection after the
/// response, so reading to EOF gives the whole body).
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .context("set_read_timeout")?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .context("sending HTTP request")?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .context("reading HTTP response")?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP response without header terminator")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status_line = lines.next().context("empty HTTP response")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

impl Registry {
    /// Starts a registry on a free port and waits until `GET /v2/` answers
    /// 200. Retries with another port if the chosen one was taken meanwhile.
    pub fn start() -> Result<Self> {
        let mut last_err = None;
        for _attempt in 0..3 {
            match Self::start_once() {
                Ok(reg) => return Ok(reg),
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(e.context("starting docker-registry (3 attempts)")),
            None => bail!("starting docker-registry"),
        }
    }

    fn start_once() -> Result<Self> {
        let dir = short_tempdir("hg-reg-")?;
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).context("creating registry storage dir")?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let yaml = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            storage.display()
        );
        std::fs::write(&config, yaml).context("writing registry config")?;
        let log = dir.path().join("registry.log");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&config);
        let mut daemon = Daemon::spawn("docker-registry", cmd, &log)?;
        let started = Instant::now();
        let ready = wait_until(
            "docker-registry to answer GET /v2/",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                if let Some(status) = daemon.try_exited()? {
                    bail!("docker-registry exited early ({status})");
                }
                Ok(http_get(&addr, "/v2/", &[])
                    .map(|r| r.status == 200)
                    .unwrap_or(false))
            },
        );
        if let Err(e) = ready {
            let tail = daemon.log_tail(30);
            bail!(
                "{e:#} after {:?}\n--- registry log ---\n{tail}",
                started.elapsed()
            );
        }
        Ok(Self {
            daemon,
            addr,
            storage,
            dir,
        })
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The filesystem storage root of the registry.
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// The registry's log file.
    pub fn log(&self) -> &Path {
        self.daemon.log()
    }

    /// The temp dir holding config, log and storage.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
