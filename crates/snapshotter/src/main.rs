//! `hologram-snapshotter`: the daemon containerd talks to.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use std::time::Duration;

use hologram_fs::layer::LayerConfig;
use hologram_remote::{RegistryConfig, SessionCredentials};
use hologram_snapshotter::config::{Config, FileConfig, RemoteSection, DEFAULT_CONFIG};
use hologram_snapshotter::cri_proxy::CriImageProxy;
use hologram_snapshotter::remote::{RemoteConfig, RemoteLayers};
use std::net::SocketAddr;

use hologram_snapshotter::daemon::{self, Health};
use hologram_snapshotter::fdstore::client::{Handover, HandoverConfig, Inherited};
use hologram_snapshotter::fdstore::Key;
use hologram_snapshotter::metrics::install_collector;
use hologram_snapshotter::snapshotter::{RootInUse, RootLock, Snapshotter};
use hologram_snapshotter::trust::{TrustConfig, TrustGate};
use hologram_telemetry::{HealthCheck, Metrics};
use hologram_trust::{Mode, PublicKey};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// jemalloc, with its background purging switched on at start
/// ([`hologram_snapshotter::alloc::return_freed_memory`]): memory a layer's
/// index held goes back to the system within seconds of the unmount
/// (glibc's allocator keeps a large freed heap resident until
/// `malloc_trim`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A containerd snapshotter (proxy plugin) that serves containerd's
/// snapshots API on a unix socket.
#[derive(Parser, Debug)]
#[command(name = "hologram-snapshotter", version)]
struct Args {
    /// Root directory for snapshots and metadata [config: root_path]
    #[arg(long)]
    root: Option<PathBuf>,
    /// Unix socket to serve on [config: address]
    #[arg(long)]
    address: Option<PathBuf>,
    /// Configuration file
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Log level or filter (trace, debug, info, warn, error); RUST_LOG wins when set
    #[arg(long)]
    log_level: Option<String>,
    /// Prometheus /metrics and /healthz address, or "off" [config: metrics_address; default 127.0.0.1:8080]
    #[arg(long)]
    metrics_address: Option<String>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hologram-snapshotter: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    hologram_snapshotter::alloc::return_freed_memory();
    let explicit = args.config.as_os_str() != DEFAULT_CONFIG;
    let file = FileConfig::load(&args.config, explicit)?;
    let cfg = Config::resolve(
        file,
        args.root,
        args.address,
        args.log_level,
        args.metrics_address,
    );
    let verbose = cfg.trust.clone().with_env().verbose;
    let level = if verbose && cfg.log_level == "info" {
        "info,hologram_snapshotter=debug,hologram_fs=debug"
    } else {
        &cfg.log_level
    };
    init_logging(level)?;
    let metrics_addr =
        hologram_telemetry::parse_listen(&cfg.metrics_address).context("metrics_address")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hologram")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(cfg, metrics_addr))
}

/// Start-up order: signals, metrics endpoint (so /healthz can say what is
/// wrong), remote layers, the store (retried while it cannot be opened),
/// then the gRPC socket.
async fn serve(cfg: Config, metrics_addr: Option<SocketAddr>) -> anyhow::Result<()> {
    let (sig_tx, sig_rx) = watch::channel(None::<&'static str>);
    let signals = daemon::shutdown_signal();
    tokio::spawn(async move {
        match signals.await {
            Ok(s) => {
                let _ = sig_tx.send(Some(s));
            }
            Err(e) => tracing::error!(error = %e, "no signal handling"),
        }
    });
    let health = Arc::new(Health::default());
    let metrics = metrics_addr.map(|_| Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut metrics_task = None;
    if let (Some(addr), Some(m)) = (metrics_addr, &metrics) {
        let listener = hologram_telemetry::bind(addr)
            .await
            .context("cannot serve metrics")?;
        let h = Arc::clone(&health);
        let check: HealthCheck = Arc::new(move || h.check());
        let mut stop = stop_rx.clone();
        metrics_task = Some(tokio::spawn(hologram_telemetry::serve_on(
            listener,
            Arc::clone(m),
            check,
            async move {
                let _ = stop.changed().await;
            },
        )));
        tracing::info!(address = %addr, "metrics on http://{addr}/metrics, health on /healthz");
    }

    // One daemon per root, checked before anything is started for it (the
    // fd holder in particular).
    let lock = {
        let root = cfg.root.clone();
        tokio::task::spawn_blocking(move || RootLock::acquire(&root)).await??
    };
    // Pull secrets the CRI proxy hands over: memory only, shared by the
    // lazy reads and the trust gate's manifest fetches.
    let credentials = SessionCredentials::new();
    let remote = {
        let (root, rc, handle, m) = (
            cfg.root.clone(),
            {
                let mut rc = remote_config(&cfg.remote.clone().with_env());
                rc.credentials = Some(Arc::clone(&credentials));
                rc.ctp96 = ctp96_config(&cfg)?;
                rc.profiles = hologram_snapshotter::profiles::ProfileConfig {
                    learn: cfg.profiles.learn,
                    apply: cfg.profiles.apply,
                    window: Duration::from_secs(cfg.profiles.learn_window_secs.max(1)),
                    shared_dirs: cfg.profiles.shared_dirs.clone(),
                };
                // Passthrough fixes inode I/O modes a successor could not
                // know (docs/RELIABILITY.md): not with handover.
                rc.layer.passthrough = !cfg.restart.handover;
                rc
            },
            tokio::runtime::Handle::current(),
            metrics.clone(),
        );
        Arc::new(
            tokio::task::spawn_blocking(move || {
                let observer: Arc<dyn hologram_fs::observer::Observer> = match &m {
                    Some(m) => Arc::new(hologram_snapshotter::metrics::FsMetrics::new(m)),
                    None => Arc::new(hologram_fs::observer::NoObserver),
                };
                RemoteLayers::new(&root, rc, handle, observer, m)
            })
            .await??,
        )
    };
    if let Some(m) = &metrics {
        install_collector(m, Arc::clone(&remote));
    }
    remote
        .start_profile_keeper()
        .context("cannot start the profile keeper")?;
    // What an earlier daemon left with the fd holder: its listening socket
    // and its FUSE connections, taken over below.
    let started = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || start_handover(&cfg)).await??
    };
    let (handover, listener) = match started {
        Some((h, mut inherited)) => {
            let listener = inherited.remove(&Key::Grpc);
            let fuse = inherited
                .into_iter()
                .filter_map(|(k, v)| match k {
                    Key::Fuse(id) => Some((id, v)),
                    Key::Grpc => None,
                })
                .collect();
            remote.set_handover(Arc::clone(&h), fuse);
            (Some(h), listener)
        }
        None => (None, None),
    };
    let trust = trust_gate(&cfg, &credentials, metrics.clone())?;

    let sn = loop {
        let (root, r, t) = (cfg.root.clone(), Arc::clone(&remote), trust.clone());
        let lock = lock.try_clone().context("cannot hold the root's lock")?;
        match tokio::task::spawn_blocking(move || Snapshotter::open_locked(&root, lock, Some(r), t))
            .await?
        {
            Ok(sn) => {
                health.set_store_error(None);
                break Arc::new(sn);
            }
            Err(e) if e.downcast_ref::<RootInUse>().is_some() => return Err(e),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot open the snapshotter root; retrying in 5 s (see /healthz)");
                health.set_store_error(Some(format!("{e:#}")));
                let mut sig = sig_rx.clone();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = sig.changed() => {
                        let _ = stop_tx.send(true);
                        return Err(e);
                    }
                }
            }
        }
    };
    health.set_snapshotter(Arc::clone(&sn));
    if let Some(m) = &metrics {
        let settings = hologram_snapshotter::node::NodeSettings {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            ctp96: ctp96_config(&cfg)?.endpoint.map(|e| {
                (
                    remote
                        .transport_labels()
                        .get(hologram_snapshotter::trust::LABEL_NETWORK)
                        .cloned()
                        .unwrap_or_default(),
                    hologram_snapshotter::node::strip_userinfo(&e),
                )
            }),
        };
        hologram_snapshotter::node::install_node_collector(
            m,
            Arc::clone(sn.book()),
            Arc::clone(&remote),
            trust.clone(),
            settings,
        );
    }
    let mut sig = sig_rx.clone();
    let socket = daemon::Listen {
        address: cfg.address.clone(),
        inherited: listener,
        handover: handover.clone(),
    };
    let cri_proxy = match &cfg.cri.proxy_address {
        Some(addr) => Some(
            daemon::serve_cri_proxy(
                addr,
                CriImageProxy::new(cfg.cri.containerd_address.clone(), Arc::clone(&credentials)),
                stop_rx.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let result = daemon::serve(sn, socket, metrics, health, async move {
        loop {
            if let Some(s) = *sig.borrow() {
                return s;
            }
            if sig.changed().await.is_err() {
                return "signal handler gone";
            }
        }
    })
    .await;
    let _ = stop_tx.send(true);
    if let Some(t) = cri_proxy {
        let _ = t.await;
    }
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let _ = tokio::task::spawn_blocking(move || remote.shutdown()).await;
    result
}

/// The link to the fd holder (started when none runs) and what an earlier
/// daemon left with it; `None` when handover is off or unavailable (the
/// daemon then runs as before: a restart re-mounts every layer).
#[allow(clippy::type_complexity)]
fn start_handover(
    cfg: &Config,
) -> anyhow::Result<Option<(Arc<Handover>, BTreeMap<Key, Inherited>)>> {
    if !cfg.restart.handover {
        return Ok(None);
    }
    let binary = match &cfg.restart.holder_binary {
        Some(b) => b.clone(),
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name("hologram-fdstore"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot locate the fd holder; restarts will re-mount layers");
                return Ok(None);
            }
        },
    };
    let hc = HandoverConfig::for_root(
        &cfg.root,
        binary,
        Duration::from_secs(cfg.restart.holder_grace_secs),
    );
    // A daemon that will not get the socket must not start a holder: check
    // the socket first (unless our holder keeps it: then it is ours).
    if !Handover::holder_running(&hc) {
        daemon::claim_socket(&cfg.address)?;
    }
    let result = Handover::start(hc).and_then(|h| {
        let inherited = h.take()?;
        Ok((h, inherited))
    });
    match result {
        Ok((h, inherited)) => {
            tracing::info!(
                inherited = inherited.len(),
                "fd holder ready: restarts keep mounts and the socket"
            );
            Ok(Some((h, inherited)))
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no fd holder; restarts will re-mount layers (running containers lose them)");
            Ok(None)
        }
    }
}

/// The trust gate, when `[trust]` (or the environment) asks for one.
fn trust_gate(
    cfg: &Config,
    credentials: &Arc<SessionCredentials>,
    metrics: Option<Arc<Metrics>>,
) -> anyhow::Result<Option<Arc<TrustGate>>> {
    let t = cfg.trust.clone().with_env();
    if !t.active() {
        return Ok(None);
    }
    let mut keys = Vec::new();
    for path in &t.trusted_keys {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("trusted key {}", path.display()))?;
        keys.push(
            PublicKey::from_pem(&pem).with_context(|| format!("trusted key {}", path.display()))?,
        );
    }
    let mode = if t.enforce { Mode::Enforce } else { Mode::Warn };
    if keys.is_empty() {
        tracing::warn!("trust: no trusted keys configured; no witness can verify");
    }
    tracing::info!(mode = ?mode, endpoint = ?t.witness_endpoint, dir = ?t.witness_dir, keys = keys.len(), "trust gate active");
    let registry = remote_config(&cfg.remote).registry;
    let gate = TrustGate::new(
        TrustConfig {
            mode,
            endpoint: t.witness_endpoint,
            dir: t.witness_dir,
            keys,
            verbose: t.verbose,
            referrers: t.referrers,
            registry,
            credentials: Some(Arc::clone(credentials)),
        },
        tokio::runtime::Handle::current(),
        metrics,
    )?;
    Ok(Some(Arc::new(gate)))
}

fn remote_config(r: &RemoteSection) -> RemoteConfig {
    let mib = 1024 * 1024;
    RemoteConfig {
        enabled: r.enabled,
        layer: LayerConfig {
            fetch_timeout: Duration::from_secs(r.fetch_timeout_secs.max(1)),
            prefetch: r.prefetch,
            background_fetch: r.background_fetch,
            background_rate: r.background_fetch_mib_per_sec.saturating_mul(mib),
            failure_memory: Duration::from_millis(r.failure_memory_ms),
            readaround: r.readaround_kib.saturating_mul(1024),
            file_ahead: r.file_ahead_kib.saturating_mul(1024),
            dir_ahead: r.dir_ahead_kib.saturating_mul(1024),
            dir_readaround: r.dir_readaround_kib.saturating_mul(1024),
            background_quiet: Duration::from_millis(r.background_quiet_ms),
            ..LayerConfig::default()
        },
        cache_limit: r.cache_size_mib.saturating_mul(mib),
        registry: RegistryConfig {
            hosts_dir: r.hosts_dir.clone(),
            docker_config: r.docker_config.clone(),
            plain_http: r.plain_http,
            request_timeout: Duration::from_secs(r.request_timeout_secs.max(1)),
            total_timeout: Duration::from_secs(r.fetch_timeout_secs.max(1)),
            ..RegistryConfig::default()
        },
        fuse_threads: r.fuse_threads.max(1),
        max_toc_entries: r.max_toc_entries.max(1),
        index_budget: r.index_memory_mib.saturating_mul(mib),
        ctp96: Default::default(),
        credentials: None,
        profiles: Default::default(),
    }
}

/// `[ctp96]` with the environment's overrides.
fn ctp96_config(cfg: &Config) -> anyhow::Result<hologram_snapshotter::ctp96::Ctp96Config> {
    let c = cfg.ctp96.clone().with_env()?;
    Ok(hologram_snapshotter::ctp96::Ctp96Config {
        net: c.network,
        endpoint: c.endpoint,
        request_timeout: Duration::from_secs(c.request_timeout_secs.max(1)),
        fetch_timeout: Duration::from_secs(cfg.remote.fetch_timeout_secs.max(1)),
        retries: c.retries,
        fallback_for: Duration::from_secs(c.fallback_secs),
    })
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v).context("invalid RUST_LOG")?,
        _ => EnvFilter::try_new(level).with_context(|| format!("invalid log level {level:?}"))?,
    };
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        // The node's page lists the recent warnings.
        .with(hologram_snapshotter::node::RecentWarnings)
        .try_init()
        .context("cannot set up logging")?;
    Ok(())
}
