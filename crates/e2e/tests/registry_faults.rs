//! Issue 12: outages bounded as documented. Under a running container, the
//! registry (behind a misbehaving proxy) hangs, answers 500, or trickles one
//! byte a second. Each time, a read of never-fetched data fails with EIO
//! within `fetch_timeout_secs` plus a margin for `ctr exec` itself — not 3×
//! the bound, as when every kernel retry of the failed page started a fresh
//! fetch — and the container stays usable. When the registry behaves again,
//! the same reads return the right bytes.

use std::time::Duration;

use anyhow::Result;
use hologram_e2e::faulty::{Fault, FaultyProxy};
use hologram_e2e::lazy::{json_str, LazyEnv, LazyOptions};
use hologram_e2e::util::wait_until;

const FETCH_TIMEOUT: Duration = Duration::from_secs(4);
/// What `ctr tasks exec` and the kernel's retries may add (under CPU load).
const MARGIN: Duration = Duration::from_secs(5);
/// Every in-container command is bounded by this (a hang fails the test).
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

const CONFIG: &str = "[remote]\n\
plain_http = true\n\
fetch_timeout_secs = 4\n\
background_fetch = false\n\
prefetch = true\n\
readaround_kib = 0\n\
cache_size_mib = 1024\n";

fn drop_page_cache() -> Result<()> {
    std::fs::write("/proc/sys/vm/drop_caches", "1\n")?;
    Ok(())
}

#[test]
fn hung_failing_and_slow_registries_give_bounded_eio_then_recover() -> Result<()> {
    let env = LazyEnv::start_with(LazyOptions {
        config: CONFIG.to_owned(),
        ..LazyOptions::default()
    })?;
    let original = env.push_mkimage(true, "e2e/layers:faults-src")?;
    let proxy = FaultyProxy::start(env.registry.addr())?;
    let target = format!("{}/e2e/layers:faults-esgz", proxy.addr());
    env.convert(&original.reference, &target, &[])?;
    let sum = env.hologram_pull(&target)?;
    assert_eq!((sum.layers, sum.lazy), (4, 4), "{}", sum.text);
    env.start_sleeper(&target, "c")?;
    // Read once: in the chunk cache from now on.
    let (keep, _) = env.exec("c", &["cat", "/data/keep.txt"], EXEC_TIMEOUT)?;
    assert_eq!(String::from_utf8_lossy(&keep.stdout), "keep v3 (layer 3)\n");

    let cases = [
        (Fault::Hang, "data/rand-1.bin"),
        (Fault::Error500, "data/rand-2.bin"),
        (Fault::Trickle(Duration::from_secs(1)), "data/rand-3.bin"),
    ];
    let mut report = Vec::new();
    for (fault, file) in cases {
        proxy.set(fault);
        drop_page_cache()?;
        let path = format!("/{file}");
        let (out, took) = env.exec("c", &["cat", &path], EXEC_TIMEOUT)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{fault:?}: read of unfetched data succeeded ({} bytes)",
            out.stdout.len()
        );
        assert!(
            stderr.contains("Input/output error"),
            "{fault:?}: expected EIO, got {stderr:?}\n{}",
            env.diagnostics()
        );
        assert!(
            took < FETCH_TIMEOUT + MARGIN,
            "{fault:?}: EIO after {took:?} (fetch_timeout_secs = {}, margin {MARGIN:?})\n{}",
            FETCH_TIMEOUT.as_secs(),
            env.diagnostics()
        );
        // The container is usable meanwhile; cached files read (from the
        // chunk cache: the page cache was dropped).
        let (echo, _) = env.exec("c", &["cat", "/data/keep.txt"], EXEC_TIMEOUT)?;
        assert_eq!(String::from_utf8_lossy(&echo.stdout), "keep v3 (layer 3)\n");
        report.push(format!("{fault:?}: EIO after {:.2} s", took.as_secs_f64()));
    }

    // Recovery: the registry behaves again; every file reads right (once
    // the brief memory of the failures has passed).
    proxy.set(Fault::Pass);
    for (_, file) in cases {
        let want = json_str(&original.summary["files"], file)?.to_owned();
        let path = format!("/{file}");
        wait_until(
            &format!("{file} to read again"),
            Duration::from_secs(60),
            Duration::from_millis(200),
            || Ok(env.exec_sha256("c", &path, EXEC_TIMEOUT)?.as_deref() == Some(want.as_str())),
        )?;
    }
    let tasks = env.ctr(&["tasks", "ls"])?;
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with("c ") && l.contains("RUNNING")),
        "{tasks}"
    );
    eprintln!("{}", report.join("\n"));
    Ok(())
}
