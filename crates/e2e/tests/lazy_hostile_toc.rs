//! Hand-made hostile eStargz layers (scripts/estargz.py, pushed with
//! correct TOC-digest annotations, so only the daemon's own checks stand in
//! the way):
//!
//! * a TOC naming `../etc/evil` must never be mounted lazily: `hologram
//!   pull` reports the layer as not lazy, the daemon logs why and counts a
//!   `not_estargz` fallback, and containerd's ordinary unpack keeps the file
//!   inside the root filesystem;
//! * a valid TOC whose chunkDigest does not match the data mounts lazily,
//!   but reading that file gives EIO (the other file of the layer reads).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use hologram_e2e::lazy::{image_facts, json_strings, LazyEnv, LazyOptions};
use hologram_e2e::prom::scrape;
use hologram_e2e::util::free_port;

const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

fn env_with_metrics() -> Result<(LazyEnv, String)> {
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let env = LazyEnv::start_with(LazyOptions {
        metrics_address: Some(metrics.clone()),
        ..LazyOptions::default()
    })?;
    Ok((env, metrics))
}

/// Every file named `name` below `dir` (symlinks not followed).
fn find_named(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name() == name {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            find_named(&p, name, out);
        }
    }
}

#[test]
fn escaping_toc_name_is_never_mounted_lazily() -> Result<()> {
    let host_evil = Path::new("/etc/evil");
    let host_evil_before = host_evil.exists();
    let (env, metrics) = env_with_metrics()?;
    let image = env.push_hostile("escape", "e2e/hostile:escape")?;
    let layers = json_strings(&image.summary, "layers")?;
    let facts = image_facts(&image.reference)?;
    assert_eq!(
        facts.manifest_digest,
        image.summary["manifest_digest"]
            .as_str()
            .unwrap_or_default()
    );
    let hostile = &layers[1];

    let out = env.hologram_pull_raw(&image.reference)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "hologram pull: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );

    // The daemon refused to serve it, said why, and counted it.
    let refusals: Vec<String> = env
        .log_lines("cannot be served lazily")
        .into_iter()
        .filter(|l| l.contains(hostile.as_str()))
        .collect();
    assert_eq!(
        refusals.len(),
        1,
        "expected one refusal of {hostile} in the daemon log:\n{}",
        env.snapshotter.log_tail(40)
    );
    assert!(
        refusals[0].contains("not a valid eStargz") && refusals[0].contains("escape"),
        "the refusal does not name the reason: {}",
        refusals[0]
    );
    let m = scrape(&metrics)?;
    assert_eq!(
        m.sum(
            "hologram_remote_fallbacks_total",
            &[("reason", "not_estargz")]
        ),
        1.0
    );
    // The hostile layer is not a FUSE mount; the valid one is.
    let sources: Vec<String> = env.fuse_mounts()?.into_iter().map(|f| f.source).collect();
    assert!(
        !sources.contains(&format!("hologram:{hostile}")),
        "{sources:?}"
    );
    assert!(
        sources.contains(&format!("hologram:{}", layers[0])),
        "{sources:?}"
    );

    if out.status.success() {
        let sum = hologram_e2e::lazy::parse_pull_summary(&stdout)?;
        assert_eq!((sum.layers, sum.lazy, sum.unpacked), (2, 1, 1), "{stdout}");
        assert_eq!(sum.not_lazy.len(), 1, "{stdout}");
        assert_eq!(&sum.not_lazy[0].0, hostile, "{stdout}");
        // containerd applied the tar itself: the entry lands inside the
        // root filesystem, at /etc/evil.
        let seen = env.run(
            &image.reference,
            "escape-check",
            &["/bin/cat", "/etc/evil", "/good.txt"],
        )?;
        assert_eq!(
            seen,
            "escaped the layer root\ngood file of the hostile layer\n"
        );
    } else {
        // Refusing the whole pull is fine too, as long as it says why.
        assert!(
            stderr.contains(hostile.as_str()) || stderr.contains("evil"),
            "the failed pull does not say why: {stderr}"
        );
    }
    // Nothing outside a root filesystem: every "evil" file is <rootfs>/etc/evil.
    let mut found = Vec::new();
    find_named(env.dir(), "evil", &mut found);
    find_named(env.containerd.root(), "evil", &mut found);
    for p in &found {
        assert!(
            p.ends_with("fs/etc/evil"),
            "file written outside a root filesystem: {}",
            p.display()
        );
    }
    assert_eq!(
        host_evil.exists(),
        host_evil_before,
        "/etc/evil on the host"
    );
    Ok(())
}

#[test]
fn wrong_chunk_digest_mounts_lazily_but_reads_give_eio() -> Result<()> {
    let (env, metrics) = env_with_metrics()?;
    let image = env.push_hostile("bad-digest", "e2e/hostile:bad-digest")?;
    let layers = json_strings(&image.summary, "layers")?;
    let sum = env.hologram_pull(&image.reference)?;
    assert_eq!(
        (sum.layers, sum.lazy, sum.unpacked),
        (2, 2, 0),
        "{}\n{}",
        sum.text,
        env.snapshotter.log_tail(30)
    );
    let sources: Vec<String> = env.fuse_mounts()?.into_iter().map(|f| f.source).collect();
    for l in &layers {
        assert!(sources.contains(&format!("hologram:{l}")), "{sources:?}");
    }
    env.start_sleeper(&image.reference, "c")?;
    let (good, _) = env.exec("c", &["cat", "/good.txt"], EXEC_TIMEOUT)?;
    assert_eq!(
        String::from_utf8_lossy(&good.stdout),
        "good file of the hostile layer\n"
    );
    let (bad, _) = env.exec("c", &["cat", "/bad.txt"], EXEC_TIMEOUT)?;
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success(),
        "read of a chunk with a wrong digest succeeded: {:?}",
        String::from_utf8_lossy(&bad.stdout)
    );
    assert!(stderr.contains("Input/output error"), "{stderr}");
    assert!(
        bad.stdout.is_empty(),
        "unverified bytes were served: {:?}",
        String::from_utf8_lossy(&bad.stdout)
    );
    let m = scrape(&metrics)?;
    assert!(m.sum("hologram_chunk_verification_failures_total", &[]) >= 1.0);
    assert_eq!(m.sum("hologram_remote_fallbacks_total", &[]), 0.0);
    assert!(
        env.log_lines("chunk failed verification; not cached")
            .iter()
            .any(|l| l.contains(layers[1].as_str())),
        "{}",
        env.snapshotter.log_tail(20)
    );
    // Metadata is still served: the size comes from the TOC.
    let (st, _) = env.exec("c", &["stat", "-c", "%s", "/bad.txt"], EXEC_TIMEOUT)?;
    assert_eq!(String::from_utf8_lossy(&st.stdout), "37\n");
    Ok(())
}
