//! `hologram-snapshotter`: the daemon containerd talks to.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use hologram_snapshotter::config::{Config, FileConfig, DEFAULT_CONFIG};
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
    let sn = Snapshotter::open(&cfg.root)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hologram")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(daemon::serve(Arc::new(sn), &cfg.address))
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
