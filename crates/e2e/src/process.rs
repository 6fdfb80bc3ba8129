//! Child-process helpers: long-running daemons whose output goes to a log
//! file, signals by PID, waiting with timeouts, and one-shot commands with a
//! timeout.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::tail;

/// Sends `signal` to `pid`. A process that is already gone is not an error.
pub fn send_signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let raw = libc::pid_t::try_from(pid).with_context(|| format!("pid {pid} out of range"))?;
    if raw <= 0 {
        bail!("refusing to signal pid {raw}");
    }
    // SAFETY: kill(2) takes two integers and touches no memory of ours. The
    // pid is strictly positive (never a process group or "all processes"),
    // and callers only pass processes they started themselves.
    let rc = unsafe { libc::kill(raw, signal) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(err).with_context(|| format!("kill({pid}, {signal})"));
    }
    Ok(())
}

/// Whether a process with this pid exists (zombies count as existing).
pub fn pid_exists(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for child process")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to completion with stdout/stderr captured, killing it (SIGKILL)
/// if it runs longer than `timeout`. A timeout is an error that includes
/// whatever the command printed so far.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let mut out = tempfile::tempfile().context("creating temp file for stdout")?;
    let mut err = tempfile::tempfile().context("creating temp file for stderr")?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().context("dup stdout file")?)
        .stderr(err.try_clone().context("dup stderr file")?);
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let status = wait_timeout(&mut child, timeout)?;
    let timed_out = status.is_none();
    let status = match status {
        Some(status) => status,
        None => {
            child.kill().context("killing timed-out command")?;
            child.wait().context("reaping timed-out command")?
        }
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    out.seek(SeekFrom::Start(0)).context("rewinding stdout")?;
    out.read_to_end(&mut stdout).context("reading stdout")?;
    err.seek(SeekFrom::Start(0)).context("rewinding stderr")?;
    err.read_to_end(&mut stderr).context("reading stderr")?;
    if timed_out {
        bail!(
            "command timed out after {timeout:?}: {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// A background process whose stdout and stderr are appended to a log file.
/// Dropping it stops the process (SIGTERM, then SIGKILL after a grace period)
/// and reaps it.
pub struct Daemon {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` with stdin from /dev/null and stdout+stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log file {}", log.display()))?;
        let file2 = file.try_clone().context("dup log file")?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(file2);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            status: None,
            log: log.to_path_buf(),
        })
    }

    /// The process id (of a process that may have exited).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file receiving the process's stdout and stderr.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// `Some(status)` once the process has exited (and been reaped).
    pub fn try_exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("polling {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit. If it
    /// does not, it is killed with SIGKILL and an error is returned (after
    /// reaping it), since a daemon that ignores SIGTERM is a bug. A process
    /// that already exited just reports its status.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_exited()? {
            return Ok(status);
        }
        send_signal(self.child.id(), libc::SIGTERM)?;
        if let Some(status) = wait_timeout(&mut self.child, grace)? {
            self.status = Some(status);
            return Ok(status);
        }
        let status = self.kill9()?;
        bail!(
            "{} did not exit within {grace:?} of SIGTERM; killed with SIGKILL ({status})\n--- log tail ---\n{}",
            self.name,
            tail(&self.log, 30)
        )
    }

    /// SIGKILL and reap (just the status if it already exited).
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_exited()? {
            return Ok(status);
        }
        self.child
            .kill()
            .with_context(|| format!("SIGKILL to {}", self.name))?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.name))?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // An error only means that SIGKILL was needed; it is reaped either way.
        if let Err(e) = self.terminate(Duration::from_secs(10)) {
            eprintln!("e2e cleanup: {e:#}");
        }
    }
}
