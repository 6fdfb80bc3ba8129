//! `hologram-fdstore`: keeps hologram-snapshotter's FUSE connections and
//! listening socket alive while the daemon restarts. The daemon starts it
//! when none runs; see docs/RELIABILITY.md.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use hologram_snapshotter::fdstore::holder::{self, HolderOptions};

/// Holds file descriptors for hologram-snapshotter across its restarts.
#[derive(Parser, Debug)]
#[command(name = "hologram-fdstore", version)]
struct Args {
    /// Unix socket to serve on (the daemon uses `<root>/fdstore.sock`)
    #[arg(long)]
    socket: PathBuf,
    /// Seconds without any daemon connected after which the held FUSE
    /// connections are aborted and the holder exits
    #[arg(long, default_value_t = 60)]
    grace_secs: u64,
    /// File to write the holder's pid to
    #[arg(long)]
    pid_file: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOLOGRAM_FDSTORE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let opts = HolderOptions {
        socket: args.socket,
        grace: Duration::from_secs(args.grace_secs),
        pid_file: args.pid_file,
    };
    match holder::run(&opts) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hologram-fdstore: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
