//! Issue 12: a full cache disk degrades instead of failing. The chunk cache
//! sits on a 64 KiB tmpfs that fills at once; a container of a lazily
//! pulled image still reads every file right (verified chunks the cache
//! cannot store are served from memory), and the daemon says so.

use anyhow::{Context, Result};
use hologram_e2e::lazy::{LazyEnv, LazyOptions};
use hologram_e2e::{expected_rootfs_report, ROOTFS_CHECK_SCRIPT};

fn sha256_hex(data: &[u8]) -> String {
    hologram_e2e::lazy::sha256_digest(data)
        .trim_start_matches("sha256:")
        .to_owned()
}

#[test]
fn reads_are_right_when_the_cache_disk_is_full() -> Result<()> {
    let env = LazyEnv::start_with(LazyOptions {
        cache_tmpfs: Some("64k".into()),
        ..LazyOptions::default()
    })?;
    let original = env.push_mkimage(false, "e2e/layers:full-src")?;
    let target = format!("{}/e2e/layers:full-esgz", env.registry.addr());
    env.convert(&original.reference, &target, &[])?;
    let sum = env.hologram_pull(&target)?;
    assert_eq!(sum.lazy, 3, "{}", sum.text);

    let report = env.run(&target, "check", &["/bin/sh", "-c", ROOTFS_CHECK_SCRIPT])?;
    assert_eq!(report, expected_rootfs_report(), "{}", env.diagnostics());
    // busybox (about 2 MiB, many chunks) byte for byte.
    let want = sha256_hex(&std::fs::read("/bin/busybox").context("reading /bin/busybox")?);
    let out = env.run(
        &target,
        "sum",
        &["/bin/busybox", "sha256sum", "/bin/busybox"],
    )?;
    assert_eq!(
        out.split_whitespace().next(),
        Some(want.as_str()),
        "{out}\n{}",
        env.diagnostics()
    );
    assert!(
        !env.log_lines("the chunk cache cannot store chunks; serving them from memory")
            .is_empty(),
        "the cache never filled: the test proves nothing\n{}",
        env.diagnostics()
    );
    assert!(
        env.log_lines("read failed: EIO").is_empty(),
        "{}",
        env.diagnostics()
    );
    Ok(())
}
