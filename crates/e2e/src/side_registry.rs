//! A second `docker-registry` serving the storage of another one (images
//! pushed there once), optionally behind htpasswd basic auth, with its
//! access log on so a test can see which requests it got (a private
//! registry; an origin that a mirror must spare).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::process::{run_with_timeout, Daemon};
use crate::registry::http_get;
use crate::util::{free_port, short_tempdir, tail, wait_until};

/// A read-mostly registry over existing storage. Dropping it stops it.
pub struct SideRegistry {
    daemon: Option<Daemon>,
    addr: String,
    log: PathBuf,
    auth: Option<(String, String)>,
    _dir: TempDir,
}

impl std::fmt::Debug for SideRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SideRegistry({})", self.addr)
    }
}

impl SideRegistry {
    /// Serves `storage` (a registry's filesystem root) anonymously.
    pub fn start(storage: &Path) -> Result<Self> {
        Self::start_with(storage, None)
    }

    /// Serves `storage` to `user`/`password` only (htpasswd, bcrypt, from
    /// apache2-utils' `htpasswd`).
    pub fn start_with_auth(storage: &Path, user: &str, password: &str) -> Result<Self> {
        Self::start_with(storage, Some((user.to_owned(), password.to_owned())))
    }

    fn start_with(storage: &Path, auth: Option<(String, String)>) -> Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(storage, auth.clone()) {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
            .context("starting a side docker-registry (3 attempts)")
    }

    fn start_once(storage: &Path, auth: Option<(String, String)>) -> Result<Self> {
        let dir = short_tempdir("hg-side-")?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut auth_yaml = String::new();
        if let Some((user, password)) = &auth {
            let out = run_with_timeout(
                Command::new("htpasswd").args(["-nbB", user, password]),
                Duration::from_secs(30),
            )
            .context("running htpasswd (apache2-utils; make dev-setup)")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, &out.stdout).context("writing htpasswd")?;
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: hologram-e2e\n    path: {}\n",
                htpasswd.display()
            );
        }
        let config = dir.path().join("config.yml");
        let yaml = format!(
            "version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n{auth_yaml}",
            storage.display()
        );
        std::fs::write(&config, yaml).context("writing registry config")?;
        let log = dir.path().join("registry.log");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&config);
        let mut daemon = Daemon::spawn("docker-registry", cmd, &log)?;
        let expect = if auth.is_some() { 401 } else { 200 };
        let ready = wait_until(
            "side docker-registry to answer GET /v2/",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                if let Some(status) = daemon.try_exited()? {
                    bail!("docker-registry exited early ({status})");
                }
                Ok(http_get(&addr, "/v2/", &[])
                    .map(|r| r.status == expect)
                    .unwrap_or(false))
            },
        );
        if let Err(e) = ready {
            bail!("{e:#}\n--- registry log ---\n{}", tail(&log, 30));
        }
        Ok(Self {
            daemon: Some(daemon),
            addr,
            log,
            auth,
            _dir: dir,
        })
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// (user, password) when it requires them.
    pub fn auth(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The request lines of its access log (`GET /v2/... HTTP/1.1` and
    /// the status that follows), oldest first.
    pub fn requests(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let start = l.find("\"GET ").or_else(|| l.find("\"HEAD "))?;
                let rest = &l[start + 1..];
                let end = rest.find('"')?;
                let status = rest[end + 1..].split_whitespace().next().unwrap_or("");
                Some(format!("{} {status}", &rest[..end]))
            })
            .collect()
    }

    /// Requests for blobs (`/v2/<name>/blobs/<digest>`).
    pub fn blob_requests(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.contains("/blobs/"))
            .collect()
    }
}

impl Drop for SideRegistry {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            if let Err(e) = d.terminate(Duration::from_secs(10)) {
                eprintln!("e2e: {e:#}");
            }
        }
    }
}
