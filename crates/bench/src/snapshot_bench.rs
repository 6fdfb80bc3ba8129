//! Prepare+Commit latency of a snapshotter, measured through containerd's own
//! snapshots service (so containerd's metadata layer is in the path for every
//! snapshotter alike) or straight at a snapshotter's socket.
//!
//! Each iteration: Prepare(key, parent) → write one small file into the mount
//! when it is a bind mount of a directory → Commit(name, key). Removal happens
//! afterwards and is not timed. Several snapshotters given with `--snapshotter`
//! are measured in interleaved rounds, so drift on the machine hits all alike.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use hologram_api::snapshots as pb;
use hologram_api::snapshots::snapshots_client::SnapshotsClient;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
struct Args {
    /// containerd's socket, or a snapshotter's own socket with --direct
    #[arg(long)]
    address: PathBuf,
    /// Snapshotter names to compare (e.g. overlayfs hologram)
    #[arg(long, num_args = 1.., default_values_t = vec!["overlayfs".to_string(), "hologram".to_string()])]
    snapshotter: Vec<String>,
    /// containerd namespace
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Iterations per round
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Rounds (snapshotters interleaved per round)
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// containerd garbage-collects snapshots nothing references; a gc.root label
/// keeps the benchmark's alive until it removes them itself.
fn gc_root() -> HashMap<String, String> {
    HashMap::from([("containerd.io/gc.root".to_owned(), "bench".to_owned())])
}

fn req<T>(ns: &str, msg: T) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", ns.parse().context("namespace")?);
    Ok(r)
}

async fn one_round(
    c: &mut SnapshotsClient<Channel>,
    a: &Args,
    sn: &str,
    round: usize,
    out: &mut Vec<Duration>,
) -> anyhow::Result<()> {
    let base = format!("bench-{sn}-{round}-base");
    let mut committed = Vec::new();
    let mut parent = String::new();
    for i in 0..a.iterations {
        let key = format!("bench-{sn}-{round}-{i}-active");
        let name = if i == 0 {
            base.clone()
        } else {
            format!("bench-{sn}-{round}-{i}")
        };
        let t = Instant::now();
        let mounts = c
            .prepare(req(
                &a.namespace,
                pb::PrepareSnapshotRequest {
                    snapshotter: sn.to_owned(),
                    key: key.clone(),
                    parent: parent.clone(),
                    labels: gc_root(),
                },
            )?)
            .await
            .with_context(|| format!("{sn}: prepare {key}"))?
            .into_inner()
            .mounts;
        if let Some(m) = mounts.first().filter(|m| m.r#type == "bind") {
            std::fs::write(PathBuf::from(&m.source).join("f"), b"x")
                .context("write into snapshot")?;
        }
        c.commit(req(
            &a.namespace,
            pb::CommitSnapshotRequest {
                snapshotter: sn.to_owned(),
                name: name.clone(),
                key: key.clone(),
                labels: gc_root(),
            },
        )?)
        .await
        .with_context(|| format!("{sn}: commit {key}"))?;
        out.push(t.elapsed());
        committed.push(name.clone());
        // Alternate: half the layers stack on the previous one, half on the base.
        parent = if i % 2 == 0 { name } else { base.clone() };
    }
    // Remove leaves first: reverse creation order respects parent links.
    for name in committed.iter().rev() {
        c.remove(req(
            &a.namespace,
            pb::RemoveSnapshotRequest {
                snapshotter: sn.to_owned(),
                key: name.clone(),
            },
        )?)
        .await
        .with_context(|| format!("{sn}: remove {name}"))?;
    }
    Ok(())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let channel = hologram_api::connect_unix(&a.address)
        .await
        .with_context(|| format!("cannot connect to {}", a.address.display()))?;
    let mut c = SnapshotsClient::new(channel);
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); a.snapshotter.len()];
    for round in 0..a.rounds {
        for (i, sn) in a.snapshotter.iter().enumerate() {
            one_round(&mut c, &a, sn, round, &mut samples[i]).await?;
        }
    }
    println!(
        "Prepare+Commit latency, {} rounds x {} iterations, via {}",
        a.rounds,
        a.iterations,
        a.address.display()
    );
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>9}",
        "snapshotter", "p50 ms", "p95 ms", "p99 ms", "mean ms"
    );
    let mut p50s = Vec::new();
    for (sn, s) in a.snapshotter.iter().zip(samples.iter_mut()) {
        s.sort();
        let mean = s.iter().map(Duration::as_secs_f64).sum::<f64>() / s.len().max(1) as f64 * 1e3;
        println!(
            "{:<12} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            sn,
            pct(s, 0.5),
            pct(s, 0.95),
            pct(s, 0.99),
            mean
        );
        p50s.push(pct(s, 0.5));
    }
    if p50s.len() > 1 && p50s[0] > 0.0 {
        for (sn, p) in a.snapshotter.iter().zip(&p50s).skip(1) {
            println!("ratio p50 {sn}/{}: {:.2}", a.snapshotter[0], p / p50s[0]);
        }
    }
    Ok(())
}
