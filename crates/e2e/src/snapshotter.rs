//! The `hologram-snapshotter` daemon under test.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::mounts::unmount_under;
use crate::process::{run_with_timeout, Daemon};
use crate::util::{tail, wait_until, workspace_root};

/// How long the daemon gets to create its socket and accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// `--log-level` passed to the daemon unless `$HOLOGRAM_E2E_LOG_LEVEL` is
/// set: the daemon's own debug logs without the HTTP/2 frame noise.
pub const DEFAULT_LOG_FILTER: &str = "info,hologram_snapshotter=debug,hologram_store=debug";
/// How long the daemon gets to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Locates the daemon binary: `$HOLOGRAM_SNAPSHOTTER_BIN`, else
/// `<workspace>/build/hologram-snapshotter`, else
/// `<workspace>/target/debug/hologram-snapshotter`.
pub fn binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("HOLOGRAM_SNAPSHOTTER_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("HOLOGRAM_SNAPSHOTTER_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let ws = workspace_root();
    let candidates = [
        ws.join("build").join("hologram-snapshotter"),
        ws.join("target").join("debug").join("hologram-snapshotter"),
    ];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    bail!(
        "hologram-snapshotter binary not found (looked at $HOLOGRAM_SNAPSHOTTER_BIN, {}, {}); \
         run `cargo build -p hologram-snapshotter` first",
        candidates[0].display(),
        candidates[1].display()
    )
}

/// Prepare sent straight to the daemon's socket at `socket` (as
/// containerd's metadata layer would forward it), bounded by `timeout`: the
/// number of mounts, or the refusal.
pub fn prepare_direct(
    socket: &Path,
    key: &str,
    parent: &str,
    labels: &[(&str, &str)],
    timeout: Duration,
) -> Result<std::result::Result<usize, tonic::Status>> {
    use hologram_api::snapshots::snapshots_client::SnapshotsClient;
    use hologram_api::snapshots::PrepareSnapshotRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let socket = socket.to_path_buf();
    let req = PrepareSnapshotRequest {
        snapshotter: crate::SNAPSHOTTER.into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    rt.block_on(async move {
        let channel = hologram_api::connect_unix(&socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let mut client = SnapshotsClient::new(channel);
        let res = tokio::time::timeout(timeout, client.prepare(req))
            .await
            .context("Prepare timed out")?;
        Ok(res.map(|r| r.into_inner().mounts.len()))
    })
}

/// Whether something accepts connections on the unix socket at `path`.
pub fn socket_accepts(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => UnixStream::connect(path).is_ok(),
        _ => false,
    }
}

/// A running (or stopped, restartable) daemon on a fixed root and socket.
///
/// Its log is `<root>.log` and its (empty) config file `<root>.toml`, both
/// next to the root so that restarts append to the same log. Dropping it
/// stops the daemon and lazily unmounts whatever is left mounted below the
/// root.
pub struct Snapshotter {
    bin: PathBuf,
    root: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    log_level: String,
    metrics_address: String,
    env: Vec<(String, String)>,
    daemon: Option<Daemon>,
}

impl Snapshotter {
    /// Starts the daemon and waits until its socket accepts connections.
    pub fn start(root: &Path, socket: &Path) -> Result<Self> {
        let mut s = Self::new(root, socket)?;
        s.start_again()?;
        Ok(s)
    }

    /// Prepares paths (and the empty config file) without starting anything.
    pub fn new(root: &Path, socket: &Path) -> Result<Self> {
        let bin = binary()?;
        let config = root.with_extension("toml");
        let log = root.with_extension("log");
        if !config.exists() {
            std::fs::write(&config, "").with_context(|| format!("writing {}", config.display()))?;
        }
        Ok(Self {
            bin,
            root: root.to_path_buf(),
            socket: socket.to_path_buf(),
            config,
            log,
            log_level: std::env::var("HOLOGRAM_E2E_LOG_LEVEL")
                .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
            metrics_address: "off".into(),
            env: Vec::new(),
            daemon: None,
        })
    }

    /// Replaces the daemon's config file (takes effect at the next start).
    pub fn write_config(&self, toml: &str) -> Result<()> {
        std::fs::write(&self.config, toml)
            .with_context(|| format!("writing {}", self.config.display()))
    }

    /// `--metrics-address` for the next start ("off" by default, so tests
    /// running side by side never fight over a port).
    pub fn set_metrics_address(&mut self, addr: &str) {
        self.metrics_address = addr.to_owned();
    }

    /// The daemon executable for the next start (an upgrade: another binary).
    pub fn set_binary(&mut self, bin: PathBuf) {
        self.bin = bin;
    }

    /// The daemon executable of the next start.
    pub fn binary(&self) -> &Path {
        &self.bin
    }

    /// An environment variable for the daemon's next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// The command line of the daemon for `root` and `socket`.
    pub fn command(&self, root: &Path, socket: &Path) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root")
            .arg(root)
            .arg("--address")
            .arg(socket)
            .arg("--config")
            .arg(&self.config)
            .arg("--log-level")
            .arg(&self.log_level)
            .arg("--metrics-address")
            .arg(&self.metrics_address);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the daemon (after `stop` or `kill9`) and waits for its socket.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running()? {
            bail!("snapshotter is already running");
        }
        let cmd = self.command(&self.root, &self.socket);
        // The fd holder may keep the socket accepting while no daemon runs:
        // ready means this daemon said it serves, and the socket accepts.
        let served_before = self.serving_lines();
        let mut daemon = Daemon::spawn("hologram-snapshotter", cmd, &self.log)?;
        let socket = self.socket.clone();
        let ready = wait_until(
            "hologram-snapshotter to accept connections",
            START_TIMEOUT,
            Duration::from_millis(20),
            || {
                if let Some(status) = daemon.try_exited()? {
                    bail!("hologram-snapshotter exited during start-up ({status})");
                }
                Ok(self.serving_lines() > served_before && socket_accepts(&socket))
            },
        );
        if let Err(e) = ready {
            drop(daemon);
            bail!(
                "{e:#}\nsocket: {}\n--- snapshotter log ({}) ---\n{}",
                self.socket.display(),
                self.log.display(),
                tail(&self.log, 60)
            );
        }
        self.daemon = Some(daemon);
        Ok(())
    }

    /// How many times the daemon's log says it serves the snapshots API.
    fn serving_lines(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|t| t.matches("serving containerd snapshots API").count())
            .unwrap_or(0)
    }

    /// The pid of the fd holder the daemon started for this root, if one
    /// runs (`<root>/fdstore.pid`, checked against /proc).
    pub fn holder_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.root.join("fdstore.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains("hologram-fdstore")
            .then_some(pid)
    }

    /// Kills the fd holder (SIGKILL) and waits until it is gone: what it
    /// held is closed (FUSE connections no daemon serves end).
    pub fn kill_holder(&self) -> Result<()> {
        let Some(pid) = self.holder_pid() else {
            return Ok(());
        };
        crate::process::send_signal(pid.unsigned_abs(), libc::SIGKILL)?;
        wait_until(
            "the fd holder to exit",
            STOP_TIMEOUT,
            Duration::from_millis(20),
            || {
                Ok(std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| {
                        s.rsplit(')')
                            .next()
                            .unwrap_or("")
                            .trim_start()
                            .starts_with('Z')
                    })
                    .unwrap_or(true))
            },
        )
    }

    /// SIGTERM and wait; fails if the daemon needs SIGKILL or exits non-zero.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut daemon = self.daemon.take().context("snapshotter is not running")?;
        let status = daemon.terminate(STOP_TIMEOUT)?;
        if !status.success() {
            bail!(
                "hologram-snapshotter exited with {status} after SIGTERM (expected 0)\n--- log ---\n{}",
                self.log_tail(40)
            );
        }
        Ok(status)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        let mut daemon = self.daemon.take().context("snapshotter is not running")?;
        daemon.kill9()
    }

    /// `stop` (if running) then `start_again`, on the same root and socket.
    pub fn restart(&mut self) -> Result<()> {
        if self.daemon.is_some() {
            self.stop()?;
        }
        self.start_again()
    }

    /// Runs a second daemon on `other_root` and this socket as a one-shot
    /// command (it is expected to exit by itself), with a timeout.
    pub fn run_competitor(&self, other_root: &Path, timeout: Duration) -> Result<Output> {
        run_with_timeout(&mut self.command(other_root, &self.socket), timeout)
    }

    /// Whether the daemon process is alive (not exited).
    pub fn is_running(&mut self) -> Result<bool> {
        match self.daemon.as_mut() {
            None => Ok(false),
            Some(d) => {
                if d.try_exited()?.is_some() {
                    self.daemon = None;
                    Ok(false)
                } else {
                    Ok(true)
                }
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Daemon::pid)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// `<root>/snapshots/*` entries that are directories, sorted by name.
    pub fn snapshot_dirs(&self) -> Result<Vec<String>> {
        let dir = self.root.join("snapshots");
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry.context("reading dir entry")?;
            if entry.file_type().context("file type")?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            if let Err(e) = daemon.terminate(STOP_TIMEOUT) {
                eprintln!("e2e cleanup: {e:#}");
            }
        }
        if let Err(e) = self.kill_holder() {
            eprintln!("e2e cleanup: {e:#}");
        }
        if let Err(e) = unmount_under(&self.root) {
            eprintln!(
                "e2e cleanup: unmounting below {}: {e:#}",
                self.root.display()
            );
        }
    }
}
