//! `hologram-snapshotter`: the daemon containerd talks to.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use std::time::Duration;

use hologram_fs::layer::LayerConfig;
use hologram_remote::RegistryConfig;
use hologram_snapshotter::config::{Config, FileConfig, RemoteSection, DEFAULT_CONFIG};
use hologram_snapshotter::remote::{RemoteConfig, RemoteLayers};
use hologram_snapshotter::{daemon, snapshotter::Snapshotter};
use tracing_subscriber::EnvFilter;

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
    let explicit = args.config.as_os_str() != DEFAULT_CONFIG;
    let file = FileConfig::load(&args.config, explicit)?;
    let cfg = Config::resolve(file, args.root, args.address, args.log_level);
    init_logging(&cfg.log_level)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hologram")
        .build()
        .context("cannot start the async runtime")?;
    let remote = Arc::new(RemoteLayers::new(
        &cfg.root,
        remote_config(&cfg.remote.clone().with_env()),
        rt.handle().clone(),
    )?);
    let sn = Snapshotter::open(&cfg.root, Some(Arc::clone(&remote)))?;
    let result = rt.block_on(daemon::serve(Arc::new(sn), &cfg.address));
    remote.shutdown();
    result
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
    }
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v).context("invalid RUST_LOG")?,
        _ => EnvFilter::try_new(level).with_context(|| format!("invalid log level {level:?}"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    Ok(())
}
