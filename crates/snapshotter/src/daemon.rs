//! Serving: claim the unix socket, run the gRPC server, stop on SIGTERM/SIGINT.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context as _;
use hologram_api::snapshots::snapshots_server::SnapshotsServer;
use hologram_telemetry::Metrics;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::fdstore::client::{Handover, Inherited};
use crate::fdstore::{Key, Meta};
use crate::service::{SnapshotsService, SHUTDOWN_GRACE};
use crate::snapshotter::Snapshotter;

/// Largest gRPC message accepted (tonic's default, stated explicitly): a
/// request over it fails with ResourceExhausted before any work is done.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Makes `path` free to bind: refuses when a live process answers on it,
/// removes a stale socket, refuses to touch anything that is not a socket.
pub fn claim_socket(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                anyhow::bail!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                );
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => anyhow::bail!(
                    "another process is already serving {}; stop it first (is hologram-snapshotter running?)",
                    path.display()
                ),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(socket = %path.display(), "removing stale socket");
                    std::fs::remove_file(path)
                        .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
                }
                Err(e) => return Err(e).with_context(|| format!("cannot probe socket {}", path.display())),
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)
            .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    }
    Ok(())
}

/// What `/healthz` reports: whether the gRPC socket is served and the store
/// is open and answers.
#[derive(Debug, Default)]
pub struct Health {
    serving: AtomicBool,
    store_error: Mutex<Option<String>>,
    snapshotter: OnceLock<Arc<Snapshotter>>,
}

impl Health {
    /// The store could not be opened (yet): why.
    pub fn set_store_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.store_error.lock() {
            *g = e;
        }
    }

    pub fn set_snapshotter(&self, sn: Arc<Snapshotter>) {
        let _ = self.snapshotter.set(sn);
    }

    /// `Ok` when healthy, else the reason.
    pub fn check(&self) -> Result<(), String> {
        if let Some(e) = self.store_error.lock().ok().and_then(|g| g.clone()) {
            return Err(format!("metadata store cannot be opened: {e}"));
        }
        let Some(sn) = self.snapshotter.get() else {
            return Err("metadata store not open yet".into());
        };
        sn.check_store()
            .map_err(|e| format!("metadata store does not answer: {e}"))?;
        if !self.serving.load(Ordering::Relaxed) {
            return Err("gRPC socket not served".into());
        }
        Ok(())
    }
}

/// Where the gRPC server listens.
#[derive(Debug)]
pub struct Listen {
    /// The socket path containerd connects to.
    pub address: PathBuf,
    /// The listening socket an earlier daemon left with the fd holder.
    pub inherited: Option<Inherited>,
    /// The fd holder, to hand the listening socket to.
    pub handover: Option<Arc<Handover>>,
}

/// The inherited listening socket, when it is a listening unix socket bound
/// at `address` and the file there is still a socket.
fn reuse_listener(
    inherited: Inherited,
    address: &Path,
) -> Option<std::os::unix::net::UnixListener> {
    let Meta::Grpc { path } = &inherited.meta else {
        return None;
    };
    let l = std::os::unix::net::UnixListener::from(inherited.fd);
    let bound = l.local_addr().ok()?.as_pathname().map(Path::to_path_buf);
    let is_socket = std::fs::symlink_metadata(address).is_ok_and(|m| m.file_type().is_socket());
    if path != address || bound.as_deref() != Some(address) || !is_socket {
        tracing::info!(held_for = %path.display(), bound = ?bound, "the listening socket left by the previous daemon is not this one's; binding anew");
        return None;
    }
    Some(l)
}

/// The listening socket: the inherited one, or a new one (handed to the fd
/// holder so the next daemon keeps it).
fn listen(listen: &Listen) -> anyhow::Result<UnixListener> {
    let address = listen.address.as_path();
    if let Some(l) = listen
        .inherited
        .as_ref()
        .and_then(|i| {
            i.fd.try_clone().ok().map(|fd| Inherited {
                meta: i.meta.clone(),
                fd,
            })
        })
        .and_then(|i| reuse_listener(i, address))
    {
        l.set_nonblocking(true)
            .context("cannot make the inherited socket non-blocking")?;
        tracing::info!(socket = %address.display(), "took over the listening socket left by the previous daemon (no connection was refused)");
        // Handed over again: a holder started later must get it too.
        hand_over(listen, l.as_fd());
        return UnixListener::from_std(l).context("cannot serve the inherited socket");
    }
    claim_socket(address)?;
    let listener = UnixListener::bind(address)
        .with_context(|| format!("cannot listen on {}", address.display()))?;
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set permissions of {}", address.display()))?;
    hand_over(listen, listener.as_fd());
    Ok(listener)
}

fn hand_over(listen: &Listen, fd: std::os::fd::BorrowedFd<'_>) {
    if let Some(h) = &listen.handover {
        let meta = Meta::Grpc {
            path: listen.address.clone(),
        };
        if let Err(e) = h.put(Key::Grpc, meta, fd) {
            tracing::warn!(error = %format!("{e:#}"), "cannot hand the listening socket over; containerd will see refused connections during a restart");
        }
    }
}

/// Serves `sn` until `shutdown` completes. The socket file is removed then,
/// unless the fd holder keeps the socket for the next daemon.
pub async fn serve(
    sn: Arc<Snapshotter>,
    socket: Listen,
    metrics: Option<Arc<Metrics>>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = &'static str>,
) -> anyhow::Result<()> {
    let address = socket.address.as_path();
    let listener = listen(&socket)?;
    tracing::info!(socket = %address.display(), root = %sn.root().display(), "serving containerd snapshots API");

    let svc = SnapshotsServer::new(SnapshotsService::new(sn, metrics))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = stop_rx.await;
            }),
    );
    health.serving.store(true, Ordering::Relaxed);
    notify_ready();
    let signal = shutdown.await;
    health.serving.store(false, Ordering::Relaxed);
    tracing::info!(signal, "shutting down");
    let _ = stop_tx.send(());
    let result = match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(joined) => joined
            .context("server task failed")?
            .context("gRPC server failed"),
        Err(_) => {
            tracing::warn!(
                "in-flight calls did not finish within the grace period; exiting anyway"
            );
            Ok(())
        }
    };
    let kept = match &socket.handover {
        Some(h) => h.holder_alive(),
        None => false,
    };
    if kept {
        tracing::info!(socket = %address.display(), "the fd holder keeps the socket: connections wait for the next daemon");
    } else if let Err(e) = std::fs::remove_file(address) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(socket = %address.display(), error = %e, "cannot remove socket");
        }
    }
    result
}

/// Serves the CRI image-service proxy on `address` (mode 0660) until
/// `stop` turns true; the socket file is removed then. Binding errors are
/// returned before anything is served.
pub async fn serve_cri_proxy(
    address: &Path,
    proxy: crate::cri_proxy::CriImageProxy,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use hologram_api::cri::image_service_server::ImageServiceServer;
    claim_socket(address)?;
    let listener = UnixListener::bind(address)
        .with_context(|| format!("cannot listen on {}", address.display()))?;
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set permissions of {}", address.display()))?;
    tracing::info!(socket = %address.display(), "serving the CRI image service (credentials proxy to containerd)");
    let svc = ImageServiceServer::new(proxy)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let address = address.to_path_buf();
    Ok(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                while !*stop.borrow() {
                    if stop.changed().await.is_err() {
                        break;
                    }
                }
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "CRI proxy server failed");
        }
        if let Err(e) = std::fs::remove_file(&address) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(socket = %address.display(), error = %e, "cannot remove socket");
            }
        }
    }))
}

/// Tells systemd (`Type=notify`) that the socket is served: `READY=1` to
/// `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). Without
/// the variable nothing happens; a failure is logged, never fatal.
pub fn notify_ready() {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = sd_notify(&target, b"READY=1\nSTATUS=serving the snapshots API") {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
}

fn sd_notify(target: &std::ffi::OsStr, msg: &[u8]) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = target.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(Path::new(target))?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(msg, &addr)?;
    Ok(())
}

/// Resolves at SIGTERM or SIGINT, naming it.
pub async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn notifies_systemd() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&p).unwrap();
        sd_notify(p.as_os_str(), b"READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let name = format!("@hologram-test-{}", std::process::id());
        let arx = {
            use std::os::linux::net::SocketAddrExt as _;
            let a =
                std::os::unix::net::SocketAddr::from_abstract_name(&name.as_bytes()[1..]).unwrap();
            std::os::unix::net::UnixDatagram::bind_addr(&a).unwrap()
        };
        sd_notify(std::ffi::OsStr::new(&name), b"READY=1").unwrap();
        let n = arx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn stale_socket_is_removed_live_one_refused_file_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.sock");
        claim_socket(&p).unwrap(); // nothing there

        let live = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let e = claim_socket(&p).unwrap_err().to_string();
        assert!(e.contains("already serving"), "{e}");
        drop(live); // the file stays, nobody listens: stale
        assert!(p.exists());
        claim_socket(&p).unwrap();
        assert!(!p.exists());

        std::fs::write(&p, b"not a socket").unwrap();
        let e = claim_socket(&p).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
        assert!(p.exists());
    }
}
