//! `hologram`: the command-line tool.
//!
//! * `pull` — remote-snapshot pull through containerd (see `pull.rs`);
//! * `convert` — rewrite an image into eStargz and push it (see `convert.rs`);
//! * `status` — a terminal summary of a daemon's /metrics (see `status.rs`);
//! * `uor` — UOR-IDs of files and images (see `uor.rs`);
//! * `witness` — keys, signing, verification, the witness endpoint (see `witness.rs`);
//! * `ping` — does a snapshotter answer on its socket;
//! * `version`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod convert;
mod pull;
mod status;
mod uor;
mod witness;

#[derive(Parser, Debug)]
#[command(
    name = "hologram",
    version,
    about = "hologram-snapshotter command-line tool"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the version
    Version,
    /// Pull an image through containerd so that a remote snapshotter can
    /// mount its layers lazily (like `ctr-remote image rpull`)
    Pull {
        /// containerd's socket
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        address: PathBuf,
        /// containerd namespace
        #[arg(
            long,
            short = 'n',
            default_value = "default",
            env = "CONTAINERD_NAMESPACE"
        )]
        namespace: String,
        /// Snapshotter to unpack with
        #[arg(long, default_value = "hologram")]
        snapshotter: String,
        /// Use plain HTTP for the registry
        #[arg(long)]
        plain_http: bool,
        /// containerd hosts.toml directory (mirrors, plain-HTTP hosts, CAs)
        #[arg(long)]
        hosts_dir: Option<PathBuf>,
        /// Image reference
        reference: String,
    },
    /// Ask a running hologram-snapshotter how many snapshots it holds
    /// Rewrite an image into eStargz (with TOC-digest annotations) and push it
    Convert {
        /// Use plain HTTP for the registries
        #[arg(long)]
        plain_http: bool,
        /// Chunk size in bytes for large files
        #[arg(long, default_value_t = 4 * 1024 * 1024)]
        chunk_size: usize,
        /// Files (paths in the image) to fetch first, at mount; repeatable
        #[arg(long = "prefetch")]
        prefetch: Vec<String>,
        /// Source image
        source: String,
        /// Target image
        target: String,
    },
    /// UOR-IDs of files and images
    Uor {
        #[command(subcommand)]
        cmd: uor::UorCommand,
    },
    /// Witnesses: keys, signing, verification, serving
    Witness {
        #[command(subcommand)]
        cmd: witness::WitnessCommand,
    },
    /// Summarise a running daemon from its /metrics endpoint
    Status(status::StatusArgs),
    Ping {
        /// The snapshotter's socket
        #[arg(long, default_value = "/run/hologram-snapshotter/hologram.sock")]
        address: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hologram: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Version => {
            println!("hologram {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Pull {
            address,
            namespace,
            snapshotter,
            plain_http,
            hosts_dir,
            reference,
        } => {
            let args = pull::PullArgs {
                address,
                namespace,
                snapshotter,
                plain_http,
                hosts_dir,
                reference,
            };
            let summary = runtime()?.block_on(pull::pull(&args))?;
            println!("{summary}");
            Ok(())
        }
        Command::Convert {
            plain_http,
            chunk_size,
            prefetch,
            source,
            target,
        } => {
            let args = convert::ConvertArgs {
                source,
                target: target.clone(),
                plain_http,
                chunk_size,
                prefetch,
            };
            let digest = runtime()?.block_on(convert::run(&args))?;
            println!("{target}@{digest}");
            Ok(())
        }
        Command::Uor { cmd } => runtime()?.block_on(uor::run(cmd)),
        Command::Witness { cmd } => runtime()?.block_on(witness::run(cmd)),
        Command::Status(args) => runtime()?.block_on(status::run(args)),
        Command::Ping { address } => runtime()?.block_on(ping(address)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn ping(address: PathBuf) -> anyhow::Result<()> {
    use hologram_api::snapshots::{snapshots_client::SnapshotsClient, ListSnapshotsRequest};
    let channel = hologram_api::connect_unix(&address)
        .await
        .with_context(|| format!("cannot connect to {}", address.display()))?;
    let mut client = SnapshotsClient::new(channel);
    let mut stream = client
        .list(ListSnapshotsRequest {
            snapshotter: String::new(),
            filters: vec![],
        })
        .await
        .context("List failed")?
        .into_inner();
    let mut n = 0usize;
    while let Some(batch) = stream.message().await.context("List stream failed")? {
        n += batch.info.len();
    }
    println!("{}: serving, {n} snapshots", address.display());
    Ok(())
}
