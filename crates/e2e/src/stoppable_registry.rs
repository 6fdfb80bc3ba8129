//! A `docker-registry` that can be stopped and started again on the same
//! port and storage (registry outages in the lazy-pulling tests).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::process::Daemon;
use crate::registry::http_get;
use crate::util::{free_port, short_tempdir, tail, wait_until};

/// Like [`crate::Registry`], plus [`StoppableRegistry::stop`] and
/// [`StoppableRegistry::start_again`]. Dropping it stops the registry and
/// removes its storage.
pub struct StoppableRegistry {
    daemon: Option<Daemon>,
    addr: String,
    config: PathBuf,
    storage: PathBuf,
    log: PathBuf,
    // Dropped last.
    dir: TempDir,
}

impl StoppableRegistry {
    /// Starts a registry on a free port (retrying with another port if the
    /// chosen one was taken meanwhile).
    pub fn start() -> Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once() {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
            .context("starting docker-registry (3 attempts)")
    }

    fn start_once() -> Result<Self> {
        let dir = short_tempdir("hg-sreg-")?;
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).context("creating registry storage")?;
        let addr = format!("127.0.0.1:{}", free_port()?);
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
        let mut me = Self {
            daemon: None,
            addr,
            config,
            storage,
            log,
            dir,
        };
        me.start_again()?;
        Ok(me)
    }

    /// Starts the registry (again) on the same address and storage and
    /// waits until `GET /v2/` answers 200.
    pub fn start_again(&mut self) -> Result<()> {
        if self.daemon.is_some() {
            bail!("registry already running");
        }
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&self.config);
        let mut daemon = Daemon::spawn("docker-registry", cmd, &self.log)?;
        let addr = self.addr.clone();
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
            bail!("{e:#}\n--- registry log ---\n{}", tail(&self.log, 30));
        }
        self.daemon = Some(daemon);
        Ok(())
    }

    /// Stops the registry process (SIGTERM, then SIGKILL), keeping storage
    /// and address for [`StoppableRegistry::start_again`].
    pub fn stop(&mut self) -> Result<()> {
        let mut d = self.daemon.take().context("registry is not running")?;
        match d.terminate(Duration::from_secs(10)) {
            Ok(_) => Ok(()),
            // Needed SIGKILL: it is gone either way.
            Err(e) => {
                eprintln!("e2e: {e:#}");
                Ok(())
            }
        }
    }

    pub fn is_running(&self) -> bool {
        self.daemon.is_some()
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The filesystem storage root.
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// `<storage>/docker/registry/v2/blobs/sha256/<2>/<hex>/data` of a blob.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("not a sha256 digest: {digest}"))?;
        if hex.len() != 64 {
            bail!("not a sha256 digest: {digest}");
        }
        Ok(self
            .storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data"))
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
