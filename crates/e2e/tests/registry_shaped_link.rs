//! Issue 12: a slowed registry, shaped as `../shared/scenarios/netreg.sh`
//! shapes the benchmarks' link: the registry in a network namespace behind
//! a veth pair with `tbf` on both ends and a delay line (20 ms each way
//! here; a request's round trip is measured to prove it). At 200 Mbit/s
//! the image is pulled and read lazily over the link; slowed to 16 kbit/s
//! (a 64 KiB chunk would take half a minute), a read of never-fetched data
//! fails with EIO within `fetch_timeout_secs` plus a margin, cached files
//! still read, and once the link is fast again the same read returns the
//! right bytes.

use std::time::{Duration, Instant};

use anyhow::Result;
use hologram_e2e::lazy::{json_str, LazyEnv, LazyOptions};
use hologram_e2e::netns::ShapedRegistry;
use hologram_e2e::util::wait_until;

const FETCH_TIMEOUT: Duration = Duration::from_secs(4);
/// What `ctr tasks exec` and the kernel's retries may add (under CPU load).
const MARGIN: Duration = Duration::from_secs(5);
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// The delay line's one-way delay (netreg.sh's default is 10 ms).
const DELAY: Duration = Duration::from_millis(20);

const CONFIG: &str = "[remote]\n\
plain_http = true\n\
fetch_timeout_secs = 4\n\
background_fetch = false\n\
prefetch = true\n\
readaround_kib = 0\n";

#[test]
fn a_slowed_link_gives_bounded_eio_then_recovers() -> Result<()> {
    let env = LazyEnv::start_with(LazyOptions {
        config: CONFIG.to_owned(),
        ..LazyOptions::default()
    })?;
    let original = env.push_mkimage(true, "e2e/layers:shaped-src")?;
    let converted = format!("{}/e2e/layers:shaped-esgz", env.registry.addr());
    env.convert(&original.reference, &converted, &[])?;
    let link = ShapedRegistry::start(env.registry.storage_dir(), "200mbit", DELAY)?;
    let target = format!("{}/e2e/layers:shaped-esgz", link.addr());
    // The latency is real: a request and its answer each cross the delay
    // line once (the registry itself answers /v2/ in well under 1 ms).
    let mut rtts = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let r = hologram_e2e::registry::http_get(link.addr(), "/v2/", &[])?;
        rtts.push(t.elapsed());
        assert_eq!(r.status, 200);
    }
    let fastest = rtts.iter().min().copied().unwrap_or_default();
    assert!(
        fastest >= 2 * DELAY,
        "GET /v2/ over the link took {rtts:?}, expected at least {:?}",
        2 * DELAY
    );

    let rx0 = link.rx_bytes()?;
    let sum = env.hologram_pull(&target)?;
    assert_eq!((sum.layers, sum.lazy), (4, 4), "{}", sum.text);
    env.start_sleeper(&target, "c")?;
    let (keep, _) = env.exec("c", &["cat", "/data/keep.txt"], EXEC_TIMEOUT)?;
    assert_eq!(String::from_utf8_lossy(&keep.stdout), "keep v3 (layer 3)\n");
    let rx1 = link.rx_bytes()?;
    assert!(
        rx1 > rx0 + 1024,
        "the pull did not go over the shaped link ({rx0} -> {rx1} bytes)"
    );

    link.set_rate("16kbit")?;
    std::fs::write("/proc/sys/vm/drop_caches", "1\n")?;
    let (out, took) = env.exec("c", &["cat", "/data/rand-1.bin"], EXEC_TIMEOUT)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Input/output error"),
        "a read over the slowed link: status {}, {} bytes, stderr {stderr:?}\n{}",
        out.status,
        out.stdout.len(),
        env.diagnostics()
    );
    assert!(
        took < FETCH_TIMEOUT + MARGIN,
        "EIO after {took:?} (fetch_timeout_secs = {}, margin {MARGIN:?})\n{}",
        FETCH_TIMEOUT.as_secs(),
        env.diagnostics()
    );
    // What is cached still reads (the page cache was dropped).
    let (keep, _) = env.exec("c", &["cat", "/data/keep.txt"], EXEC_TIMEOUT)?;
    assert_eq!(String::from_utf8_lossy(&keep.stdout), "keep v3 (layer 3)\n");

    link.set_rate("200mbit")?;
    let want = json_str(&original.summary["files"], "data/rand-1.bin")?.to_owned();
    wait_until(
        "rand-1.bin to read again over the fast link",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            Ok(env
                .exec_sha256("c", "/data/rand-1.bin", EXEC_TIMEOUT)?
                .as_deref()
                == Some(want.as_str()))
        },
    )?;
    eprintln!(
        "link: {DELAY:?} each way (GET /v2/ round trips {rtts:?}); slowed link: EIO after {:.2} s; {} bytes over the link",
        took.as_secs_f64(),
        link.rx_bytes()? - rx0
    );
    Ok(())
}
