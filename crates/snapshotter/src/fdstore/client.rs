//! The daemon's side: finds (or starts) the holder, takes back what an
//! earlier daemon left, hands over what this one creates, and hands it all
//! over again should the holder itself restart.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{recv, send, seqpacket, Entry, Key, Meta, Reply, Request, PROTOCOL};

/// How long a newly started holder gets to accept connections.
const HOLDER_START: Duration = Duration::from_secs(10);
/// Pause between attempts to bring a vanished holder back.
const RETRY: Duration = Duration::from_secs(1);

/// Where the holder lives and how it is started.
#[derive(Debug, Clone)]
pub struct HandoverConfig {
    /// The holder's socket (under the daemon's root).
    pub socket: PathBuf,
    /// The holder's executable.
    pub binary: PathBuf,
    /// `--grace-secs` for a holder this daemon starts.
    pub grace: Duration,
    /// Where a holder this daemon starts writes its log.
    pub log: PathBuf,
    /// Where a holder this daemon starts writes its pid.
    pub pid_file: PathBuf,
}

impl HandoverConfig {
    /// The holder of the daemon whose root is `root`: socket, log and pid
    /// file in the root (one holder per daemon instance).
    pub fn for_root(root: &Path, binary: PathBuf, grace: Duration) -> Self {
        HandoverConfig {
            socket: root.join("fdstore.sock"),
            binary,
            grace,
            log: root.join("fdstore.log"),
            pid_file: root.join("fdstore.pid"),
        }
    }
}

/// What an earlier daemon left: an fd and its description.
#[derive(Debug)]
pub struct Inherited {
    pub meta: Meta,
    pub fd: OwnedFd,
}

/// The daemon's link to the holder.
#[derive(Debug)]
pub struct Handover {
    cfg: HandoverConfig,
    conn: Mutex<Option<OwnedFd>>,
    /// Duplicates of everything this daemon handed over, to hand over again
    /// to a new holder.
    mine: Mutex<BTreeMap<Key, (Meta, OwnedFd)>>,
    /// The watcher's connection (shut down by [`Handover::close`]).
    watching: Mutex<Option<OwnedFd>>,
    closing: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Handover {
    /// Whether a holder answers on `cfg`'s socket now.
    pub fn holder_running(cfg: &HandoverConfig) -> bool {
        connect(&cfg.socket).is_ok()
    }

    /// Connects to the holder, starting one when none answers, and keeps
    /// watching it (a holder that goes away is started again and given
    /// everything again).
    pub fn start(cfg: HandoverConfig) -> anyhow::Result<Arc<Handover>> {
        let conn = connect_or_start(&cfg)?;
        let h = Arc::new(Handover {
            cfg,
            conn: Mutex::new(Some(conn)),
            mine: Mutex::new(BTreeMap::new()),
            watching: Mutex::new(None),
            closing: AtomicBool::new(false),
        });
        let watcher = Arc::downgrade(&h);
        std::thread::Builder::new()
            .name("fdstore-watch".into())
            .spawn(move || watch(&watcher))
            .context("cannot start the holder watcher")?;
        Ok(h)
    }

    /// Takes back everything kept (the holder keeps its copies until told
    /// otherwise).
    pub fn take(&self) -> anyhow::Result<BTreeMap<Key, Inherited>> {
        let entries = match self.request(&Request::List, None)? {
            (Reply::Entries { entries }, _) => entries,
            (other, _) => anyhow::bail!("holder answered a list with {other:?}"),
        };
        let mut out = BTreeMap::new();
        for e in entries {
            match self.request(&Request::Get { key: e.key }, None)? {
                (Reply::Entry { entry }, Some(fd)) if entry.key == e.key => {
                    out.insert(
                        entry.key,
                        Inherited {
                            meta: entry.meta,
                            fd,
                        },
                    );
                }
                (other, _) => {
                    tracing::warn!(key = %e.key, reply = ?other, "holder did not hand an entry back");
                }
            }
        }
        Ok(out)
    }

    /// Hands a duplicate of `fd` over under `key`.
    pub fn put(&self, key: Key, meta: Meta, fd: BorrowedFd<'_>) -> anyhow::Result<()> {
        let dup = fd.try_clone_to_owned().context("cannot duplicate the fd")?;
        let entry = Entry {
            key,
            meta: meta.clone(),
        };
        let r = self.request(&Request::Put { entry }, Some(dup.as_fd()));
        // Kept either way: a holder started later gets it.
        lock(&self.mine).insert(key, (meta, dup));
        match r? {
            (Reply::Ok, _) => Ok(()),
            (other, _) => anyhow::bail!("holder refused {key}: {other:?}"),
        }
    }

    /// Tells the holder to close what it keeps under `key`.
    pub fn remove(&self, key: Key) {
        lock(&self.mine).remove(&key);
        if let Err(e) = self.request(&Request::Remove { key }, None) {
            tracing::warn!(%key, error = %format!("{e:#}"), "cannot release an fd held for handover");
        }
    }

    /// Whether the holder answers now (checked before leaving mounts to it).
    pub fn holder_alive(&self) -> bool {
        matches!(
            self.request(&Request::List, None),
            Ok((Reply::Entries { .. }, _))
        )
    }

    /// Stops watching the holder and closes the connections to it, as the
    /// exit of the daemon would (the holder then counts its grace period).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        if let Some(w) = lock(&self.watching).take() {
            let _ = rustix::net::shutdown(&w, rustix::net::Shutdown::Both);
        }
        lock(&self.conn).take();
    }

    /// One request and its reply, on the shared connection (reconnecting,
    /// and starting a holder, once when the connection broke).
    fn request(
        &self,
        req: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> anyhow::Result<(Reply, Option<OwnedFd>)> {
        let mut conn = lock(&self.conn);
        for attempt in 0..2 {
            if conn.is_none() {
                *conn = Some(connect_or_start(&self.cfg)?);
            }
            let Some(c) = conn.as_ref() else { continue };
            match exchange(c.as_fd(), req, fd) {
                Ok(r) => return Ok(r),
                Err(e) if attempt == 0 => {
                    tracing::info!(error = %e, "holder connection lost; reconnecting");
                    *conn = None;
                }
                Err(e) => return Err(e).context("holder does not answer"),
            }
        }
        anyhow::bail!("holder does not answer")
    }
}

fn exchange(
    c: BorrowedFd<'_>,
    req: &Request,
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<(Reply, Option<OwnedFd>)> {
    send(c, req, fd)?;
    match recv::<Reply>(c)? {
        Some((Reply::Error { message }, _)) => Err(io::Error::other(message)),
        Some(r) => Ok(r),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "holder closed the connection",
        )),
    }
}

/// Connects and says hello; starts a holder first when none answers.
fn connect_or_start(cfg: &HandoverConfig) -> anyhow::Result<OwnedFd> {
    match connect(&cfg.socket) {
        Ok(c) => return Ok(c),
        Err(e) => tracing::debug!(error = %format!("{e:#}"), "no holder answers; starting one"),
    }
    start_holder(cfg)?;
    let deadline = Instant::now() + HOLDER_START;
    loop {
        match connect(&cfg.socket) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| {
                    format!(
                        "the holder did not answer within {} s (log: {})",
                        HOLDER_START.as_secs(),
                        cfg.log.display()
                    )
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn connect(path: &Path) -> anyhow::Result<OwnedFd> {
    let c = seqpacket()?;
    let addr = rustix::net::SocketAddrUnix::new(path)?;
    rustix::net::connect(&c, &addr)
        .with_context(|| format!("cannot connect to {}", path.display()))?;
    match exchange(c.as_fd(), &Request::Hello { protocol: PROTOCOL }, None)? {
        (Reply::Hello { protocol, pid }, _) if protocol == PROTOCOL => {
            tracing::debug!(pid, "connected to the fd holder");
            Ok(c)
        }
        (other, _) => anyhow::bail!("holder speaks another protocol: {other:?}"),
    }
}

/// Starts a holder in its own process group (a signal to the daemon's group
/// does not reach it), with its own log, and reaps it when it exits.
fn start_holder(cfg: &HandoverConfig) -> anyhow::Result<()> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.log)
        .with_context(|| format!("cannot open {}", cfg.log.display()))?;
    let mut child = Command::new(&cfg.binary)
        .arg("--socket")
        .arg(&cfg.socket)
        .arg("--grace-secs")
        .arg(cfg.grace.as_secs().to_string())
        .arg("--pid-file")
        .arg(&cfg.pid_file)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start the fd holder {}", cfg.binary.display()))?;
    tracing::info!(pid = child.id(), binary = %cfg.binary.display(), "started the fd holder");
    std::thread::Builder::new()
        .name("fdstore-reap".into())
        .spawn(move || {
            let _ = child.wait();
        })
        .context("cannot start the holder reaper")?;
    Ok(())
}

/// Watches the holder through a connection of its own; when it goes away,
/// starts a new one and hands everything over again.
fn watch(handover: &std::sync::Weak<Handover>) {
    loop {
        let Some(h) = handover.upgrade() else { return };
        if h.closing.load(Ordering::Relaxed) {
            return;
        }
        let cfg = h.cfg.clone();
        drop(h);
        let conn = match connect_or_start(&cfg) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "fd holder unavailable; restarts will not keep mounts until it is back");
                std::thread::sleep(RETRY);
                continue;
            }
        };
        // Anything this daemon handed over goes to this holder again (a
        // no-op for a holder that already has it).
        {
            let Some(h) = handover.upgrade() else { return };
            if let Ok(dup) = conn.try_clone() {
                *lock(&h.watching) = Some(dup);
            }
            if h.closing.load(Ordering::Relaxed) {
                return;
            }
            let mine: Vec<(Key, Meta, OwnedFd)> = lock(&h.mine)
                .iter()
                .filter_map(|(k, (m, f))| f.try_clone().ok().map(|f| (*k, m.clone(), f)))
                .collect();
            drop(h);
            for (key, meta, fd) in mine {
                let entry = Entry { key, meta };
                if let Err(e) = exchange(conn.as_fd(), &Request::Put { entry }, Some(fd.as_fd())) {
                    tracing::warn!(%key, error = %e, "cannot hand an fd over to the holder");
                }
            }
        }
        // Block until the holder goes away (we never send on this one again).
        let gone = recv::<Reply>(conn.as_fd());
        if handover
            .upgrade()
            .is_none_or(|h| h.closing.load(Ordering::Relaxed))
        {
            return;
        }
        tracing::warn!(result = ?gone.map(|r| r.is_some()), "the fd holder went away; starting a new one");
        std::thread::sleep(Duration::from_millis(100));
    }
}
