//! A chunk corrupted in the registry's storage after a lazy pull: reading
//! that file in a container fails with EIO (never wrong bytes), the failure
//! is logged and counted, nothing bad is cached, and the other files of the
//! same layer still read correctly.

use std::time::Duration;

use anyhow::{Context, Result};
use hologram_e2e::lazy::{image_facts, json_str, read_toc, LazyEnv, LazyOptions};
use hologram_e2e::prom::scrape;
use hologram_e2e::util::free_port;

const FAILURES: &str = "hologram_chunk_verification_failures_total";
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// The blob range of the gzip member holding `name`'s payload:
/// `[offset, next member offset)`.
fn member_of(toc: &serde_json::Value, name: &str) -> Result<(u64, u64)> {
    let entries = toc["toc"]["entries"].as_array().context("TOC entries")?;
    let start = entries
        .iter()
        .find(|e| e["name"] == name && e["type"] == "reg")
        .and_then(|e| e["offset"].as_u64())
        .with_context(|| format!("{name} not in the TOC"))?;
    let end = entries
        .iter()
        .filter_map(|e| e["offset"].as_u64())
        .filter(|o| *o > start)
        .min()
        .or_else(|| toc["toc_offset"].as_u64())
        .context("no end of member")?;
    Ok((start, end))
}

#[test]
fn corrupted_chunk_gives_eio_is_counted_and_spares_other_files() -> Result<()> {
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let env = LazyEnv::start_with(LazyOptions {
        metrics_address: Some(metrics.clone()),
        ..LazyOptions::default()
    })?;
    let original = env.push_mkimage(true, "e2e/layers:src")?;
    let target = format!("{}/e2e/layers:esgz", env.registry.addr());
    env.convert(&original.reference, &target, &[])?;
    let facts = image_facts(&target)?;
    let sum = env.hologram_pull(&target)?;
    assert_eq!((sum.layers, sum.lazy), (4, 4), "{}", sum.text);
    env.start_sleeper(&target, "victim")?;
    assert_eq!(scrape(&metrics)?.sum(FAILURES, &[]), 0.0);

    // Flip 32 bytes in the middle of data/rand-2.bin's gzip member (64 KiB
    // of incompressible bytes: stored deflate blocks, so the framing stays
    // intact and only the content changes).
    let top = &facts.layers[3];
    let blob = env.registry.blob_path(&top.digest)?;
    let toc = read_toc(&blob, false)?;
    let (start, end) = member_of(&toc, "data/rand-2.bin")?;
    assert!(end - start > 60_000, "member {start}..{end} too small");
    let mut bytes = std::fs::read(&blob)?;
    let at = usize::try_from(start + (end - start) / 2)?;
    for b in &mut bytes[at..at + 32] {
        *b ^= 0xff;
    }
    std::fs::write(&blob, &bytes)?;

    let files = &original.summary["files"];
    for attempt in 1..=2 {
        let (out, took) = env.exec("victim", &["cat", "/data/rand-2.bin"], EXEC_TIMEOUT)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "reading the corrupted file succeeded (attempt {attempt}, {} bytes)\n{}",
            out.stdout.len(),
            env.diagnostics()
        );
        assert!(
            stderr.contains("Input/output error") || stderr.contains("I/O error"),
            "attempt {attempt}: expected EIO, got {stderr:?}"
        );
        assert!(
            out.stdout.len() < 65536,
            "the corrupted file was served in full"
        );
        eprintln!("attempt {attempt}: EIO after {took:?}: {}", stderr.trim());
    }
    let after = scrape(&metrics)?.sum(FAILURES, &[]);
    assert!(
        after >= 2.0,
        "{FAILURES} = {after} after two reads of a corrupted chunk"
    );
    let logged = env.log_lines("chunk failed verification; not cached");
    assert!(
        logged.iter().any(|l| l.contains(&top.digest)),
        "no verification failure logged for layer {}:\n{}",
        top.digest,
        env.snapshotter.log_tail(30)
    );

    // The file after it in the same layer reads, and is right.
    let (out, _) = env.exec("victim", &["sha256sum", "/data/rand-3.bin"], EXEC_TIMEOUT)?;
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        format!(
            "sha256:{}",
            line.split_whitespace().next().unwrap_or_default()
        ),
        json_str(files, "data/rand-3.bin")?
    );
    // Files of other layers are unaffected.
    let keep = env
        .exec("victim", &["cat", "/data/keep.txt"], EXEC_TIMEOUT)?
        .0;
    assert_eq!(String::from_utf8_lossy(&keep.stdout), "keep v3 (layer 3)\n");

    // The file just before it: its read-around window covers the corrupted
    // chunk, which must not turn this read into an error too — not even a
    // FUSE read that the kernel happens to retry page by page.
    let read_errors = |m: &hologram_e2e::prom::Exposition| {
        m.sum(
            "hologram_fuse_operations_total",
            &[("op", "read"), ("result", "error")],
        )
    };
    let errors_before = read_errors(&scrape(&metrics)?);
    let (out, _) = env.exec("victim", &["sha256sum", "/data/rand-1.bin"], EXEC_TIMEOUT)?;
    assert!(
        out.status.success(),
        "reading data/rand-1.bin (a good chunk whose read-around covers the corrupted one) failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.snapshotter.log_tail(20)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        format!(
            "sha256:{}",
            line.split_whitespace().next().unwrap_or_default()
        ),
        json_str(files, "data/rand-1.bin")?
    );
    let errors_after = read_errors(&scrape(&metrics)?);
    assert_eq!(
        errors_after,
        errors_before,
        "reading the good file data/rand-1.bin made {} FUSE reads fail (its read-around \
         fetched the corrupted chunk of data/rand-2.bin, and that error failed the read of \
         the good chunk):\n{}",
        errors_after - errors_before,
        env.log_lines("read failed: EIO").join("\n")
    );
    // Still EIO, never cached.
    let (out, _) = env.exec("victim", &["cat", "/data/rand-2.bin"], EXEC_TIMEOUT)?;
    assert!(!out.status.success());
    Ok(())
}
