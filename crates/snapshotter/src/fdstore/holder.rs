//! The holder process (`hologram-fdstore`): keeps what the daemon hands it
//! and gives it back to the next daemon. Small on purpose; it has no reason
//! to be upgraded often, and a restart of it loses nothing while the daemon
//! runs (the daemon hands everything over again to a new holder).
//!
//! Bounded waiting: when no daemon has been connected for `grace`, the
//! holder aborts the FUSE connections it keeps (readers blocked in them get
//! ENOTCONN instead of waiting for ever), closes everything and exits.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{peer_is_us, recv, send, seqpacket, Entry, Key, Meta, Reply, Request, PROTOCOL};

/// How the holder runs.
#[derive(Debug, Clone)]
pub struct HolderOptions {
    /// The socket to serve on.
    pub socket: PathBuf,
    /// How long to wait for a daemon to (re)connect.
    pub grace: Duration,
    /// A file to write the holder's pid to (removed at exit).
    pub pid_file: Option<PathBuf>,
}

#[derive(Debug)]
struct State {
    kept: BTreeMap<Key, (Meta, OwnedFd)>,
    /// Connections open now.
    attached: usize,
    /// When the last connection closed (or the holder started).
    alone_since: Instant,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs the holder until it has been alone for `grace` (or cannot serve).
/// Returns at once, successfully, when another holder already serves the
/// socket.
pub fn run(opts: &HolderOptions) -> anyhow::Result<()> {
    let listener = match bind(&opts.socket)? {
        Some(l) => l,
        None => {
            tracing::info!(socket = %opts.socket.display(), "another holder serves this socket");
            return Ok(());
        }
    };
    if let Some(p) = &opts.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    tracing::info!(socket = %opts.socket.display(), grace_secs = opts.grace.as_secs(), pid = std::process::id(), "holding fds for hologram-snapshotter");
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            kept: BTreeMap::new(),
            attached: 0,
            alone_since: Instant::now(),
        }),
        changed: Condvar::new(),
    });
    {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept_loop(&listener, &shared))
            .context("cannot start the accept thread")?;
    }
    // Wait until alone for `grace`.
    let mut st = shared.lock();
    loop {
        if st.attached == 0 {
            let alone = st.alone_since.elapsed();
            if alone >= opts.grace {
                break;
            }
            st = shared
                .changed
                .wait_timeout(st, opts.grace - alone)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        } else {
            st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
    let kept = std::mem::take(&mut st.kept);
    drop(st);
    if !kept.is_empty() {
        tracing::warn!(
            entries = kept.len(),
            "no daemon came back within the grace period; aborting the FUSE connections held (their readers get ENOTCONN)"
        );
    }
    for (key, (meta, fd)) in kept {
        if let Meta::Fuse {
            conn, mountpoint, ..
        } = &meta
        {
            abort_connection(*conn, mountpoint);
        }
        tracing::info!(%key, "closed");
        drop(fd);
    }
    if let Err(e) = std::fs::remove_file(&opts.socket) {
        tracing::warn!(socket = %opts.socket.display(), error = %e, "cannot remove socket");
    }
    if let Some(p) = &opts.pid_file {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("exiting");
    Ok(())
}

/// Binds the socket: `None` when a live holder answers on it. A stale
/// socket is replaced; anything else at the path is an error.
fn bind(path: &Path) -> anyhow::Result<Option<OwnedFd>> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
        Ok(m) if !m.file_type().is_socket() => {
            anyhow::bail!("{} exists and is not a socket", path.display())
        }
        Ok(_) => {
            let probe = seqpacket()?;
            let addr = rustix::net::SocketAddrUnix::new(path)?;
            match rustix::net::connect(&probe, &addr) {
                Ok(()) => return Ok(None),
                Err(rustix::io::Errno::CONNREFUSED) => std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove stale socket {}", path.display()))?,
                Err(e) => {
                    return Err(io::Error::from(e))
                        .with_context(|| format!("cannot probe {}", path.display()))
                }
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let sock = seqpacket()?;
    let addr = rustix::net::SocketAddrUnix::new(path)?;
    rustix::net::bind(&sock, &addr).with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    rustix::net::listen(&sock, 16)?;
    Ok(Some(sock))
}

fn accept_loop(listener: &OwnedFd, shared: &Arc<Shared>) {
    loop {
        let conn = match rustix::net::accept_with(listener, rustix::net::SocketFlags::CLOEXEC) {
            Ok(c) => c,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
            Err(e) => {
                tracing::error!(error = %e, "accept failed; no new connections");
                return;
            }
        };
        match peer_is_us(&conn) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("refused a connection from another user");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "no peer credentials; connection refused");
                continue;
            }
        }
        {
            let mut st = shared.lock();
            st.attached += 1;
        }
        shared.changed.notify_all();
        let s = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                if let Err(e) = serve(&conn, &s) {
                    tracing::warn!(error = %e, "connection ended with an error");
                }
                let mut st = s.lock();
                st.attached -= 1;
                st.alone_since = Instant::now();
                drop(st);
                s.changed.notify_all();
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a connection thread");
            let mut st = shared.lock();
            st.attached -= 1;
            st.alone_since = Instant::now();
        }
    }
}

/// Answers one connection's requests until it closes.
fn serve(conn: &OwnedFd, shared: &Shared) -> io::Result<()> {
    let fd = conn.as_fd();
    let Some((first, _)) = recv::<Request>(fd)? else {
        return Ok(());
    };
    match first {
        Request::Hello { protocol } if protocol == PROTOCOL => {
            send(
                fd,
                &Reply::Hello {
                    protocol: PROTOCOL,
                    pid: std::process::id(),
                },
                None,
            )?;
        }
        other => {
            let message = format!("expected hello with protocol {PROTOCOL}, got {other:?}");
            send(
                fd,
                &Reply::Error {
                    message: message.clone(),
                },
                None,
            )?;
            return Err(io::Error::new(io::ErrorKind::InvalidData, message));
        }
    }
    while let Some((req, attached)) = recv::<Request>(fd)? {
        let reply = match req {
            Request::Put { entry } => match attached {
                Some(kept) => {
                    tracing::info!(key = %entry.key, "kept");
                    shared.lock().kept.insert(entry.key, (entry.meta, kept));
                    Reply::Ok
                }
                None => Reply::Error {
                    message: "put without an fd".into(),
                },
            },
            Request::Remove { key } => {
                if shared.lock().kept.remove(&key).is_some() {
                    tracing::info!(%key, "released");
                }
                Reply::Ok
            }
            Request::List => Reply::Entries {
                entries: shared
                    .lock()
                    .kept
                    .iter()
                    .map(|(k, (m, _))| Entry {
                        key: *k,
                        meta: m.clone(),
                    })
                    .collect(),
            },
            Request::Get { key } => {
                let found = shared
                    .lock()
                    .kept
                    .get(&key)
                    .map(|(m, f)| (m.clone(), f.try_clone()));
                match found {
                    Some((meta, Ok(dup))) => {
                        send(
                            fd,
                            &Reply::Entry {
                                entry: Entry { key, meta },
                            },
                            Some(dup.as_fd()),
                        )?;
                        continue;
                    }
                    Some((_, Err(e))) => Reply::Error {
                        message: format!("cannot duplicate {key}: {e}"),
                    },
                    None => Reply::Error {
                        message: format!("nothing kept under {key}"),
                    },
                }
            }
            Request::Hello { .. } => Reply::Error {
                message: "hello twice".into(),
            },
        };
        send(fd, &reply, None)?;
    }
    Ok(())
}

/// Aborts a FUSE connection: through fusectl when it is mounted, else by a
/// forced unmount attempt (the kernel aborts the connection before it checks
/// whether the mount is busy; a busy mount stays, dead, for the next daemon
/// to detach).
fn abort_connection(conn: u32, mountpoint: &Path) {
    let ctl = PathBuf::from(format!("/sys/fs/fuse/connections/{conn}/abort"));
    if ctl.exists() {
        match std::fs::write(&ctl, b"1") {
            Ok(()) => {
                tracing::info!(conn, mountpoint = %mountpoint.display(), "FUSE connection aborted");
                return;
            }
            Err(e) => tracing::warn!(conn, error = %e, "cannot abort through fusectl"),
        }
    }
    match nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_FORCE) {
        Ok(()) => tracing::info!(mountpoint = %mountpoint.display(), "FUSE mount force-unmounted"),
        Err(nix::errno::Errno::EBUSY) => {
            tracing::info!(mountpoint = %mountpoint.display(), "FUSE connection aborted (mount busy, left for the next daemon)")
        }
        Err(e) => {
            tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "cannot abort the FUSE connection")
        }
    }
}
