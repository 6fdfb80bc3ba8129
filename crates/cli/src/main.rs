//! `hologram`: the command-line tool.
//!
//! * `pull` — remote-snapshot pull through containerd (see `pull.rs`);
//! * `convert` — rewrite an image into eStargz and push it (see `convert.rs`);
//! * `status` — a terminal summary of a daemon's /metrics (see `status.rs`);
//! * `uor` — UOR-IDs of files and images (see `uor.rs`);
//! * `witness` — keys, signing, verification, the witness endpoint (see `witness.rs`);
//! * `ctp96 serve` — a CTP-96 server over a registry or an OCI layout (see `ctp96.rs`);
//! * `ping` — does a snapshotter answer on its socket;
//! * `version`.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod convert;
mod ctp96;
mod progress;
mod pull;
mod record;
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
    /// containerd's socket (as ctr's --address)
    #[arg(
        short = 'a',
        long,
        global = true,
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    address: PathBuf,
    /// containerd namespace (as ctr's --namespace)
    #[arg(
        short = 'n',
        long,
        global = true,
        env = "CONTAINERD_NAMESPACE",
        default_value = "default"
    )]
    namespace: String,
    /// More log output on standard error: -v info, -vv debug, -vvv trace
    #[arg(short = 'v', long = "verbose", global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log level or tracing filter (overrides -v), e.g. `debug` or
    /// `hologram_remote=trace`
    #[arg(long, global = true, env = "HOLOGRAM_LOG", value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Registry access shared by the commands that talk to registries.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct RegistryArgs {
    /// Use plain HTTP for registries that hosts.toml does not configure
    #[arg(long)]
    plain_http: bool,
    /// containerd hosts.toml directory (mirrors, plain-HTTP hosts, CAs); the
    /// daemon's default, so both resolve hosts alike
    #[arg(long, value_name = "DIR", default_value = hologram_remote::DEFAULT_HOSTS_DIR)]
    hosts_dir: PathBuf,
}

impl RegistryArgs {
    pub(crate) fn config(&self) -> hologram_remote::RegistryConfig {
        uor::registry_config(self.plain_http, Some(self.hosts_dir.clone()))
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the version
    Version,
    /// Pull an image through containerd so that a remote snapshotter can
    /// mount its layers lazily (like `ctr-remote image rpull`)
    Pull {
        /// Snapshotter to unpack with
        #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "hologram")]
        snapshotter: String,
        #[command(flatten)]
        registry: RegistryArgs,
        /// The hologram-snapshotter's socket: asked directly when a layer's
        /// chain is served by another image's bytes, to wait for their check
        #[arg(
            long,
            env = "HOLOGRAM_SNAPSHOTTER_ADDRESS",
            default_value = "/run/hologram-snapshotter/hologram.sock"
        )]
        snapshotter_socket: PathBuf,
        /// Seconds to wait for that check
        #[arg(long, default_value_t = 300)]
        check_timeout: u64,
        /// Image reference
        reference: String,
    },
    /// Rewrite an image into eStargz (with TOC-digest annotations) and push it
    Convert {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Chunk size in bytes for large files
        #[arg(long, default_value_t = 4 * 1024 * 1024)]
        chunk_size: usize,
        /// Files (paths in the image) to fetch first, at mount; repeatable
        #[arg(long = "prefetch")]
        prefetch: Vec<String>,
        /// Record a prefetch profile first (needs root): run COMMAND (with
        /// /bin/sh -c; empty, `--record=` or `--record` after SOURCE and
        /// TARGET: the image's own Entrypoint and Cmd) once on the
        /// converted image through hologram's FUSE filesystem, and put the
        /// files it opens, in that order, before the prefetch landmark
        #[arg(long, value_name = "COMMAND", num_args = 0..=1, default_missing_value = "")]
        record: Option<String>,
        /// Seconds the recorded workload may run before it is stopped
        #[arg(long, default_value_t = 300)]
        record_timeout: u64,
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
    /// CTP-96: serve a registry or an OCI layout with sessions, leases and
    /// batched, integrity-framed range reads
    Ctp96 {
        #[command(subcommand)]
        cmd: ctp96::Ctp96Command,
    },
    /// Check that a hologram-snapshotter answers on its socket, and count
    /// its snapshots
    Ping {
        /// The snapshotter's socket
        #[arg(long, default_value = "/run/hologram-snapshotter/hologram.sock")]
        socket: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_level.as_deref());
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hologram: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Warnings and errors of the libraries (registry client, trust) reach
/// standard error; `-v`/`--log-level` show more.
fn init_logging(verbose: u8, level: Option<&str>) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = level
        .and_then(|l| tracing_subscriber::EnvFilter::try_new(l).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Version => {
            println!("hologram {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Pull {
            snapshotter,
            registry,
            snapshotter_socket,
            check_timeout,
            reference,
        } => {
            let args = pull::PullArgs {
                address: cli.address,
                namespace: cli.namespace,
                snapshotter,
                registry: registry.config(),
                reference,
                snapshotter_socket,
                check_timeout: std::time::Duration::from_secs(check_timeout),
            };
            let summary = runtime()?.block_on(pull::pull(&args))?;
            println!("{summary}");
            Ok(())
        }
        Command::Convert {
            registry,
            chunk_size,
            prefetch,
            record,
            record_timeout,
            source,
            target,
        } => {
            let args = convert::ConvertArgs {
                source,
                target: target.clone(),
                registry: registry.config(),
                chunk_size,
                prefetch,
                record,
                record_timeout: std::time::Duration::from_secs(record_timeout),
            };
            let digest = runtime()?.block_on(convert::run(&args))?;
            println!("{target}@{digest}");
            Ok(())
        }
        Command::Uor { cmd } => runtime()?.block_on(uor::run(cmd)),
        Command::Witness { cmd } => runtime()?.block_on(witness::run(cmd)),
        Command::Status(args) => runtime()?.block_on(status::run(args)),
        Command::Ctp96 { cmd } => runtime()?.block_on(ctp96::run(cmd)),
        Command::Ping { socket } => runtime()?.block_on(ping(socket)),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("hologram").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn containerd_flags_go_before_or_after_the_command_as_with_ctr() {
        for args in [
            &["-n", "k8s.io", "-a", "/x.sock", "pull", "r/i:1"][..],
            &["pull", "-n", "k8s.io", "--address", "/x.sock", "r/i:1"][..],
            &["--namespace=k8s.io", "pull", "-a", "/x.sock", "r/i:1"][..],
        ] {
            let cli = parse(args);
            assert_eq!(cli.namespace, "k8s.io", "{args:?}");
            assert_eq!(cli.address, PathBuf::from("/x.sock"), "{args:?}");
            assert!(matches!(cli.command, Command::Pull { .. }));
        }
    }

    #[test]
    fn pull_resolves_hosts_like_the_daemon_by_default() {
        let Command::Pull { registry, .. } = parse(&["pull", "r/i:1"]).command else {
            panic!("not pull");
        };
        assert_eq!(
            registry.config().hosts_dir.as_deref(),
            Some(std::path::Path::new(hologram_remote::DEFAULT_HOSTS_DIR))
        );
        assert!(!registry.plain_http);
    }

    #[test]
    fn verbosity_counts() {
        assert_eq!(parse(&["-vv", "version"]).verbose, 2);
        assert_eq!(parse(&["version"]).verbose, 0);
        assert_eq!(
            parse(&["version", "--log-level", "debug"])
                .log_level
                .as_deref(),
            Some("debug")
        );
    }

    #[test]
    fn every_command_has_a_description() {
        use clap::CommandFactory as _;
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(!about.is_empty(), "`{}` has no description", sub.get_name());
        }
        let convert = cmd.find_subcommand("convert").unwrap();
        assert!(convert.get_about().unwrap().to_string().contains("eStargz"));
    }
}
