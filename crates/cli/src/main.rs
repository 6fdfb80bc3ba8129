//! `hologram`: the command-line tool. Today it reports its version and checks
//! that a snapshotter answers on its socket; `pull`, `convert`, `uor` and
//! `witness` arrive with the lazy-pulling and trust work (see docs/ROADMAP.md).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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
    /// Ask a running hologram-snapshotter how many snapshots it holds
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
        Command::Ping { address } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(ping(address))
        }
    }
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
