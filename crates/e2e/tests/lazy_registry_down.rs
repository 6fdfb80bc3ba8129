//! Registry outage under a running container: with `fetch_timeout_secs =
//! 5`, a read of data that was never fetched fails with EIO in bounded time
//! (no hang), cached data and metadata still serve, the container stays
//! usable, and once the registry is back on the same port and storage the
//! same read succeeds with the right bytes.

use std::time::{Duration, Instant};

use anyhow::Result;
use hologram_e2e::lazy::{json_str, LazyEnv};

/// Every in-container command is bounded by this (a hang fails the test).
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// The promise: EIO well within 3 × fetch_timeout_secs.
const EIO_BOUND: Duration = Duration::from_secs(15);

fn sha_of(out: &std::process::Output) -> String {
    let line = String::from_utf8_lossy(&out.stdout);
    format!(
        "sha256:{}",
        line.split_whitespace().next().unwrap_or_default()
    )
}

/// Drops the kernel's page cache (clean pages only), so that a read after
/// it goes to the FUSE daemon instead of being served by the kernel.
fn drop_page_cache() -> Result<()> {
    std::fs::write("/proc/sys/vm/drop_caches", "1\n")?;
    Ok(())
}

#[test]
fn registry_outage_gives_bounded_eio_and_recovers() -> Result<()> {
    let mut env = LazyEnv::start()?;
    let original = env.push_mkimage(true, "e2e/layers:src")?;
    let target = format!("{}/e2e/layers:esgz", env.registry.addr());
    env.convert(&original.reference, &target, &[])?;
    let sum = env.hologram_pull(&target)?;
    assert_eq!((sum.layers, sum.lazy), (4, 4), "{}", sum.text);
    env.start_sleeper(&target, "c")?;
    let want_b = json_str(&original.summary["files"], "data/rand-3.bin")?.to_owned();

    // A: read once, now in the chunk cache.
    let (a, _) = env.exec("c", &["cat", "/data/keep.txt"], EXEC_TIMEOUT)?;
    assert_eq!(String::from_utf8_lossy(&a.stdout), "keep v3 (layer 3)\n");

    env.registry.stop()?;
    let t = Instant::now();

    // B (never read, layer 4): EIO, in bounded time.
    let (b, took) = env.exec("c", &["cat", "/data/rand-3.bin"], EXEC_TIMEOUT)?;
    let stderr = String::from_utf8_lossy(&b.stderr);
    eprintln!(
        "registry down: reading an unfetched file failed after {took:?}: {}",
        stderr.trim()
    );
    assert!(
        !b.status.success(),
        "read of unfetched data succeeded with the registry down ({} bytes)",
        b.stdout.len()
    );
    assert!(
        stderr.contains("Input/output error"),
        "expected EIO, got {stderr:?}\n{}",
        env.diagnostics()
    );
    assert!(
        took < EIO_BOUND,
        "EIO took {took:?} (fetch_timeout_secs = 5, bound {EIO_BOUND:?})"
    );
    assert!(
        !env.log_lines("read failed: EIO").is_empty(),
        "the failed read is not logged"
    );

    // A still reads, from the chunk cache (not just the page cache).
    drop_page_cache()?;
    let (a, took_a) = env.exec("c", &["cat", "/data/keep.txt"], EXEC_TIMEOUT)?;
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(String::from_utf8_lossy(&a.stdout), "keep v3 (layer 3)\n");
    assert!(took_a < EIO_BOUND, "cached read took {took_a:?}");
    // Metadata comes from the TOC: listing and stat need no registry.
    let (ls, _) = env.exec("c", &["stat", "-c", "%s", "/data/rand-2.bin"], EXEC_TIMEOUT)?;
    assert_eq!(String::from_utf8_lossy(&ls.stdout), "65536\n");
    // The container is usable.
    let (echo, _) = env.exec("c", &["echo", "alive"], EXEC_TIMEOUT)?;
    assert_eq!(String::from_utf8_lossy(&echo.stdout), "alive\n");
    let tasks = env.ctr(&["tasks", "ls"])?;
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with("c ") && l.contains("RUNNING")),
        "{tasks}"
    );
    eprintln!("registry was down for {:?}", t.elapsed());

    // Back on the same port and storage: B reads, with the right bytes, as
    // soon as the daemon's brief memory of the failure (failure_memory_ms,
    // 2 s) has passed.
    env.registry.start_again()?;
    let back = Instant::now();
    let mut last = None;
    hologram_e2e::util::wait_until(
        "B to read again",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (b, _) = env.exec("c", &["sha256sum", "/data/rand-3.bin"], EXEC_TIMEOUT)?;
            let ok = b.status.success() && sha_of(&b) == want_b;
            last = Some(b);
            Ok(ok)
        },
    )
    .map_err(|e| {
        let stderr = last
            .as_ref()
            .map(|b| String::from_utf8_lossy(&b.stderr).into_owned())
            .unwrap_or_default();
        anyhow::anyhow!(
            "{e:#}: B still fails after the registry came back: {stderr}\n{}",
            env.diagnostics()
        )
    })?;
    let took = back.elapsed();
    eprintln!("registry back: B read in {took:?}");
    Ok(())
}
