//! "The lazily mounted image is the image": the root filesystem of a
//! lazily pulled (converted) image against the original image unpacked by
//! containerd's own overlayfs snapshotter, file by file.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::env::MountGuard;
use crate::lazy::{ImageFacts, LazyEnv};
use crate::process::run_with_timeout;
use crate::treedump::{compare, TreeDump};
use crate::SNAPSHOTTER;

/// The two trees that were compared.
pub struct Compared {
    /// What the lazily pulled image shows (hologram view of its top layer).
    pub lazy: TreeDump,
    /// What containerd's overlayfs snapshotter shows for the original.
    pub reference: TreeDump,
}

fn dump_view(env: &LazyEnv, snapshotter: &str, chain: &str, key: &str) -> Result<TreeDump> {
    let guard: MountGuard = env.view(snapshotter, chain, key)?;
    let dump = TreeDump::of(guard.path())?;
    drop(guard);
    env.ctr(&["snapshots", "--snapshotter", snapshotter, "rm", key])?;
    Ok(dump)
}

/// Pulls `original` with containerd's overlayfs snapshotter, mounts views of
/// the top layers of `original` (overlayfs) and `lazy` (hologram), dumps
/// both trees and fails with every difference: type, mode, owner, size,
/// link target, device numbers, hardlink groups, xattrs, content digest,
/// plus whiteouts or overlay xattrs visible in either tree and any file
/// that could not be read.
pub fn assert_same_tree(
    env: &LazyEnv,
    lazy: &ImageFacts,
    original: &ImageFacts,
    label: &str,
) -> Result<Compared> {
    env.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "overlayfs",
        &original.reference,
    ])?;
    let reference = dump_view(
        env,
        "overlayfs",
        original.top_chain_id()?,
        &format!("{label}-overlayfs"),
    )?;
    let lazy_dump = dump_view(
        env,
        SNAPSHOTTER,
        lazy.top_chain_id()?,
        &format!("{label}-lazy"),
    )?;

    let mut problems = Vec::new();
    for e in &reference.errors {
        problems.push(format!("overlayfs reference: {e}"));
    }
    for e in &lazy_dump.errors {
        problems.push(format!("hologram: {e}"));
    }
    for l in reference.leaks() {
        problems.push(format!("overlayfs reference: {l}"));
    }
    for l in lazy_dump.leaks() {
        problems.push(format!("hologram: {l}"));
    }
    problems.extend(compare(&lazy_dump, "hologram", &reference, "overlayfs"));
    if reference.paths.len() < 10 {
        problems.push(format!(
            "the reference tree has only {} paths",
            reference.paths.len()
        ));
    }
    if !problems.is_empty() {
        let shown: Vec<&String> = problems.iter().take(60).collect();
        bail!(
            "{label}: the lazily mounted tree ({} paths) differs from overlayfs' ({} paths) in {} ways:\n{}\n{}",
            lazy_dump.paths.len(),
            reference.paths.len(),
            problems.len(),
            shown
                .iter()
                .map(|s| format!("  {s}"))
                .collect::<Vec<_>>()
                .join("\n"),
            env.diagnostics()
        );
    }
    Ok(Compared {
        lazy: lazy_dump,
        reference,
    })
}

/// Runs `ctr-remote --address SOCK --namespace NS <args>`; stdout.
pub fn ctr_remote(env: &LazyEnv, args: &[&str], timeout: Duration) -> Result<String> {
    let mut cmd = std::process::Command::new("ctr-remote");
    cmd.arg("--address")
        .arg(env.containerd.address())
        .arg("--namespace")
        .arg(env.containerd.namespace())
        .args(args);
    let out = run_with_timeout(&mut cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "`ctr-remote {}` failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            env.diagnostics()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
