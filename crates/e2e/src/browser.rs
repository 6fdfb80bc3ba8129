//! A real browser for the tests of the node's page: Debian's `chromium`,
//! headless, driven through `chromedriver` with the W3C WebDriver protocol
//! (JSON over HTTP: new session, navigate, execute script, screenshot).
//!
//! The client is the few requests the tests need, over a plain TCP
//! connection, so the harness needs no WebDriver crate. [`Browser`] starts
//! its own chromedriver on a free port with a profile in a temp dir;
//! dropping it ends the session (chromedriver closes the browser) and stops
//! chromedriver by its PID.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::process::Daemon;
use crate::util::{free_port, short_tempdir, wait_until};

/// The browser and its driver (Debian: `chromium`, `chromium-driver`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One WebDriver request: `(HTTP status, JSON body)`.
fn request(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    // chromedriver keeps the connection open whatever the request says:
    // read the head, then exactly the body it announces.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s
            .read(&mut buf)
            .with_context(|| format!("{method} {path}: reading the answer"))?;
        if n == 0 {
            bail!("{method} {path}: connection closed before the HTTP head ended");
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {path}: bad status line"))?;
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    let chunked = head.contains("transfer-encoding: chunked");
    let mut payload = raw[split + 4..].to_vec();
    loop {
        let done = match length {
            Some(len) => payload.len() >= len,
            None if chunked => payload.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = s
            .read(&mut buf)
            .with_context(|| format!("{method} {path}: reading the body"))?;
        if n == 0 {
            break;
        }
        payload.extend_from_slice(&buf[..n]);
    }
    if let Some(len) = length {
        payload.truncate(len);
    }
    if chunked {
        payload = dechunk(&payload)?;
    }
    let v = if payload.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&payload).with_context(|| {
            format!(
                "{method} {path}: not JSON: {}",
                String::from_utf8_lossy(&payload)
            )
        })?
    };
    Ok((status, v))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// The `value` of a WebDriver answer, or its error.
fn value(what: &str, (status, v): (u16, Value)) -> Result<Value> {
    if status != 200 {
        bail!("WebDriver {what}: HTTP {status}: {v}");
    }
    Ok(v.get("value").cloned().unwrap_or(Value::Null))
}

/// A headless chromium session.
pub struct Browser {
    addr: String,
    session: Option<String>,
    // Field order is drop order: the driver, then its profile directory.
    driver: Daemon,
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and opens a session (a `width`×`height` window).
    pub fn start(width: u32, height: u32) -> Result<Browser> {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(tool).is_file() {
                bail!(
                    "{tool} is missing: apt-get install chromium chromium-driver (make dev-setup)"
                );
            }
        }
        let dir = short_tempdir("hg-browser-")?;
        let port = free_port()?;
        let log = dir.path().join("chromedriver.log");
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .env("HOME", dir.path());
        let mut driver = Daemon::spawn("chromedriver", cmd, &log)?;
        let addr = format!("127.0.0.1:{port}");
        wait_until(
            "chromedriver to be ready",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                if let Some(s) = driver.try_exited()? {
                    bail!("chromedriver exited ({s}): {}", driver.log_tail(20));
                }
                Ok(request(&addr, "GET", "/status", None)
                    .ok()
                    .is_some_and(|(_, v)| v["value"]["ready"] == Value::Bool(true)))
            },
        )?;
        let profile = dir.path().join("profile");
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--no-first-run",
                            "--disable-extensions",
                            "--disable-background-networking",
                            "--disable-component-update",
                            format!("--user-data-dir={}", profile.display()),
                            format!("--window-size={width},{height}"),
                        ]
                    }
                }
            }
        });
        let v = value(
            "new session",
            request(&addr, "POST", "/session", Some(&caps))?,
        )
        .with_context(|| driver.log_tail(30))?;
        let session = v["sessionId"].as_str().context("no sessionId")?.to_owned();
        Ok(Browser {
            addr,
            session: Some(session),
            driver,
            dir,
        })
    }

    fn path(&self, tail: &str) -> Result<String> {
        let s = self.session.as_deref().context("no session")?;
        Ok(format!("/session/{s}{tail}"))
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) -> Result<()> {
        value(
            "navigate",
            request(
                &self.addr,
                "POST",
                &self.path("/url")?,
                Some(&json!({ "url": url })),
            )?,
        )?;
        Ok(())
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page
    /// and returns what it returns.
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value> {
        value(
            "execute",
            request(
                &self.addr,
                "POST",
                &self.path("/execute/sync")?,
                Some(&json!({ "script": script, "args": args })),
            )?,
        )
    }

    /// The page's visible text.
    pub fn text(&self) -> Result<String> {
        Ok(self
            .execute("return document.body ? document.body.innerText : '';", &[])?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Waits until `script` returns `true` (checked every 200 ms).
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Result<()> {
        wait_until(what, timeout, Duration::from_millis(200), || {
            Ok(self.execute(script, &[])? == Value::Bool(true))
        })
        .with_context(|| format!("page text:\n{}", self.text().unwrap_or_default()))
    }

    /// A PNG of the window, written to `out`.
    pub fn screenshot(&self, out: &Path) -> Result<()> {
        let v = value(
            "screenshot",
            request(&self.addr, "GET", &self.path("/screenshot")?, None)?,
        )?;
        let png = crate::trust::base64_decode(v.as_str().context("screenshot is not a string")?)?;
        if png.get(..8) != Some(b"\x89PNG\r\n\x1a\n".as_slice()) {
            bail!("the screenshot is not a PNG");
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(out, png).with_context(|| format!("writing {}", out.display()))
    }

    /// The browser's console messages (warnings and errors: a CSP
    /// violation or a script error shows here).
    pub fn console(&self) -> Result<Vec<String>> {
        // The W3C protocol has no log endpoint; chromedriver keeps the
        // legacy one.
        let (status, v) = request(
            &self.addr,
            "POST",
            &self.path("/se/log")?,
            Some(&json!({ "type": "browser" })),
        )?;
        if status != 200 {
            return Ok(Vec::new());
        }
        Ok(v["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| format!("{} {}", e["level"], e["message"]))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The directory of the browser's profile and logs.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(p) = self.path("") {
            if let Err(e) = request(&self.addr, "DELETE", &p, None) {
                eprintln!("e2e cleanup: ending the browser session: {e:#}");
            }
        }
        self.session = None;
        if let Err(e) = self.driver.terminate(Duration::from_secs(10)) {
            eprintln!("e2e cleanup: {e:#}");
        }
    }
}
