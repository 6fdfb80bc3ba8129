//! `toc-memory N`: what an eStargz layer with N files costs the daemon's
//! index, built the way the daemon builds it (streaming the TOC JSON):
//! bytes per TOC entry held while mounted (`Index::heap_bytes`) and the
//! process's peak resident memory while building (VmHWM), with the JSON's
//! own size for comparison. Run with mimalloc, the daemon's allocator.

use anyhow::Context as _;
use hologram_estargz::{Index, IndexLimits, FOOTER_SIZE};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn status_kib(field: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}

/// A TOC like a real layer's: files of one chunk in 100 directories.
fn toc_json(n: usize) -> Vec<u8> {
    let d = format!("sha256:{}", "0".repeat(64));
    let mut out = String::from("{\"version\":1,\"entries\":[");
    for i in 0..100 {
        out.push_str(&format!("{{\"name\":\"usr/share/d{i}/\",\"type\":\"dir\",\"mode\":493}},"));
    }
    for i in 0..n {
        out.push_str(&format!(
            "{{\"name\":\"usr/share/d{}/file-{i}.txt\",\"type\":\"reg\",\"size\":100,\"modtime\":\"2024-01-01T00:00:00Z\",\"mode\":420,\"offset\":{},\"digest\":\"{d}\",\"chunkDigest\":\"{d}\"}},",
            i % 100,
            1000 + i * 64
        ));
    }
    out.pop();
    out.push_str("]}");
    out.into_bytes()
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("N must be a number")?
        .unwrap_or(100_000);
    let json = toc_json(n);
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
    let entries = (n + 100) as u64;
    println!(
        "entries {entries}: TOC JSON {} KiB; index {} KiB = {} bytes per entry; peak RSS while building {} KiB above the JSON ({} bytes per entry)",
        json.len() / 1024,
        idx.heap_bytes() / 1024,
        idx.heap_bytes() / entries,
        peak.saturating_sub(base),
        peak.saturating_sub(base) * 1024 / entries
    );
    drop(idx);
    let after = status_kib("VmRSS:")?;
    println!(
        "resident after dropping the index: {} KiB above the JSON",
        after.saturating_sub(base)
    );
    Ok(())
}
