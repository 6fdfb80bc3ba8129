//! `toc-memory N`: what an eStargz layer with N files costs the daemon's
//! index, built the way the daemon builds it (streaming the TOC JSON):
//! bytes per TOC entry held while mounted (`Index::heap_bytes`) and the
//! process's peak resident memory while building (VmHWM), with the JSON's
//! own size for comparison. Run with jemalloc and background purging, as
//! the daemon runs.

#![forbid(unsafe_code)]

use anyhow::Context as _;
use hologram_bench::toc_json;
use hologram_estargz::{Index, IndexLimits, FOOTER_SIZE};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn status_kib(field: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, path, n] = args.as_slice() {
        if flag == "--measure" {
            return measure(std::path::Path::new(path), n.parse()?);
        }
    }
    let n: usize = args
        .get(1)
        .map(|a| a.parse())
        .transpose()
        .context("N must be a number")?
        .unwrap_or(100_000);
    // The JSON is made here and measured in a fresh process, so memory the
    // making left behind does not hide what the build takes.
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), toc_json(n))?;
    let me = std::env::current_exe()?;
    let status = std::process::Command::new(me)
        .arg("--measure")
        .arg(file.path())
        .arg(n.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "measuring failed: {status}");
    Ok(())
}

fn measure(path: &std::path::Path, n: usize) -> anyhow::Result<()> {
    enable_purging();
    let json = std::fs::read(path)?;
    // Reset the peak (VmHWM) to the current RSS, so the peak below is the
    // build's own.
    std::fs::write("/proc/self/clear_refs", "5").context("resetting VmHWM")?;
    let base = status_kib("VmRSS:")?;
    let blob = 1u64 << 40;
    let idx = Index::from_json(
        &json,
        blob,
        blob - FOOTER_SIZE,
        IndexLimits {
            max_entries: n + 1000,
        },
    )?;
    let peak = status_kib("VmHWM:")?;
    let held = status_kib("VmRSS:")?;
    let entries = (n + 100) as u64;
    println!(
        "{entries} TOC entries ({} KiB of JSON): index {} bytes/entry ({} KiB); resident +{} KiB while mounted ({} bytes/entry); peak +{} KiB while building ({} bytes/entry)",
        json.len() / 1024,
        idx.heap_bytes() / entries,
        idx.heap_bytes() / 1024,
        held.saturating_sub(base),
        held.saturating_sub(base) * 1024 / entries,
        peak.saturating_sub(base),
        peak.saturating_sub(base) * 1024 / entries
    );
    drop(idx);
    drop(json);
    // jemalloc's background threads give freed pages back within seconds.
    let t = std::time::Instant::now();
    let mut after = status_kib("VmRSS:")?;
    while after > base + 4096 && t.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        after = status_kib("VmRSS:")?;
    }
    println!(
        "after unmounting (index and JSON dropped): resident {:+} KiB from before the build, {:.1} s later",
        after as i64 - base as i64,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The daemon's setting (see `hologram_snapshotter::alloc`).
fn enable_purging() {
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
}
