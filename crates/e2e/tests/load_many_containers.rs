//! Issue 12: load without limits found the hard way. Three lazily pulled
//! images (two sharing three layers, one unrelated); then, all at once,
//! 20 containers started from them and 10 clients each preparing,
//! committing and removing snapshots through containerd. Everything must
//! finish with the right output, no snapshot lost or left over, no mount
//! left behind, and the daemon's open fds back where they were. The
//! daemon's memory and fds before and after are printed (`--nocapture`).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hologram_e2e::lazy::{json_str, LazyEnv};
use hologram_e2e::util::wait_until;
use hologram_e2e::{expected_rootfs_report, ROOTFS_CHECK_SCRIPT, SNAPSHOTTER};

const CONTAINERS: usize = 20;
const CLIENTS: usize = 10;
const ROUNDS: usize = 5;
/// fds the daemon may hold beyond its idle count after the load (pooled
/// registry connections, a scrape): a leak of one per container or
/// snapshot would be far more.
const FD_SLACK: usize = 16;

fn fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("/proc/{pid}/fd"))?
        .count())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

fn snapshot_names(env: &LazyEnv) -> Result<BTreeSet<String>> {
    Ok(env
        .ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"])?
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

#[test]
fn twenty_containers_and_parallel_snapshot_calls() -> Result<()> {
    let env = LazyEnv::start()?;
    let a_src = env.push_mkimage(false, "e2e/load:a-src")?;
    let b_src = env.push_mkimage(true, "e2e/load:b-src")?;
    let a = format!("{}/e2e/load:a-esgz", env.registry.addr());
    let b = format!("{}/e2e/load:b-esgz", env.registry.addr());
    env.convert(&a_src.reference, &a, &[])?;
    env.convert(&b_src.reference, &b, &[])?;
    let c = env.push_hostile("plain", "e2e/load:c")?.reference;
    for image in [&a, &b, &c] {
        let sum = env.hologram_pull(image)?;
        assert_eq!(sum.unpacked, 0, "{image}: {}", sum.text);
        assert_eq!(sum.lazy + sum.present, sum.layers, "{image}: {}", sum.text);
    }
    let want_b = format!(
        "keep v3 (layer 3)\n{}  /data/rand-1.bin\n",
        json_str(&b_src.summary["files"], "data/rand-1.bin")?.trim_start_matches("sha256:")
    );
    let mounts_before = env.fuse_mounts()?.len();
    let snapshots_before = snapshot_names(&env)?;
    let top_a = snapshots_before
        .iter()
        .next()
        .cloned()
        .context("no snapshot after the pulls")?;
    let pid = env.snapshotter.pid().context("daemon pid")?;
    let (fds_before, rss_before) = (fds(pid)?, rss_kib(pid)?);

    let started = std::time::Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let mut runs = Vec::new();
        for i in 0..CONTAINERS {
            let (env, a, b, c, want_b) = (&env, &a, &b, &c, &want_b);
            runs.push(s.spawn(move || -> Result<()> {
                let id = format!("load-{i}");
                let (image, cmd, want): (&str, &str, String) = match i % 3 {
                    0 => (a, ROOTFS_CHECK_SCRIPT, expected_rootfs_report()),
                    1 => (
                        b,
                        "cat /data/keep.txt; sha256sum /data/rand-1.bin",
                        want_b.clone(),
                    ),
                    _ => (
                        c,
                        "echo alive; cat /good.txt >/dev/null && echo good",
                        "alive\ngood\n".into(),
                    ),
                };
                let out = env.run(image, &id, &["/bin/sh", "-c", cmd])?;
                if out != want {
                    bail!("container {id} ({image}) said {out:?}, expected {want:?}");
                }
                Ok(())
            }));
        }
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let (env, top) = (&env, &top_a);
            clients.push(s.spawn(move || -> Result<()> {
                for r in 0..ROUNDS {
                    let key = format!("load-active-{i}-{r}");
                    let name = format!("load-committed-{i}-{r}");
                    env.ctr(&[
                        "snapshots",
                        "--snapshotter",
                        SNAPSHOTTER,
                        "prepare",
                        &key,
                        top,
                    ])?;
                    env.ctr(&[
                        "snapshots",
                        "--snapshotter",
                        SNAPSHOTTER,
                        "commit",
                        &name,
                        &key,
                    ])?;
                    env.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "rm", &name])?;
                }
                Ok(())
            }));
        }
        for h in runs.into_iter().chain(clients) {
            h.join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        }
        Ok(())
    })
    .with_context(|| env.diagnostics())?;
    let took = started.elapsed();

    // Nothing lost, nothing left over.
    assert_eq!(
        snapshot_names(&env)?,
        snapshots_before,
        "{}",
        env.diagnostics()
    );
    assert_eq!(env.fuse_mounts()?.len(), mounts_before, "FUSE mounts");
    let root = env.snapshotter.root().to_path_buf();
    wait_until(
        "container overlay mounts to go",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
            Ok(!mi
                .lines()
                .any(|l| l.contains(" - overlay ") && l.contains(&root.display().to_string())))
        },
    )?;
    // fds back (within slack) once the dust settles.
    let mut fds_after = 0;
    let settled = wait_until(
        "the daemon's fds to settle",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            fds_after = fds(pid)?;
            Ok(fds_after <= fds_before + FD_SLACK)
        },
    );
    let rss_after = rss_kib(pid)?;
    eprintln!(
        "{CONTAINERS} containers + {CLIENTS}x{ROUNDS} prepare/commit/remove in {:.1} s; daemon fds {fds_before} -> {fds_after}, RSS {:.1} -> {:.1} MiB",
        took.as_secs_f64(),
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    settled.with_context(|| format!("fd leak: {fds_before} -> {fds_after}"))?;
    assert!(
        env.log_lines("ERROR").is_empty(),
        "errors in the daemon log: {:?}",
        env.log_lines("ERROR")
    );
    Ok(())
}
