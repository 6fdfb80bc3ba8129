//! Lazy pulling of images converted by the reference tool, ctr-remote
//! (stargz-snapshotter): `image convert --estargz --oci` and `image optimize
//! --oci` (which runs the image to record the files it reads and puts
//! those first, before the prefetch landmark). `hologram pull` must mount
//! every layer lazily, and the root filesystem must match the original
//! image unpacked by containerd's overlayfs snapshotter file by file.

use std::time::Duration;

use anyhow::Result;
use hologram_e2e::equivalence::{assert_same_tree, ctr_remote};
use hologram_e2e::image::content::DEFAULT_CMD_OUTPUT;
use hologram_e2e::lazy::{image_facts, read_toc, toc_names, LazyEnv};
use hologram_e2e::util::require_tools;

const TOC_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";

/// `ctr-remote image <subcommand...> SRC DST`, push DST, `hologram pull`
/// it, run it, compare with overlayfs.
/// `prefetched`: whether the bottom layer must list bin/busybox before the
/// `.prefetch.landmark` (optimize) or start with `.no.prefetch.landmark`.
fn ctr_remote_image_is_lazy_and_equivalent(
    label: &str,
    subcommand: &[&str],
    prefetched: bool,
) -> Result<()> {
    require_tools(&["ctr-remote"])?;
    let env = LazyEnv::start()?;
    let original = env.push_mkimage(true, &format!("e2e/layers:{label}-src"))?;
    let orig = image_facts(&original.reference)?;
    // ctr-remote converts inside containerd's content store.
    env.ctr(&["images", "pull", "--plain-http", &original.reference])?;
    let target = format!("{}/e2e/layers:{label}", env.registry.addr());
    let mut args = vec!["image"];
    args.extend_from_slice(subcommand);
    args.push(&original.reference);
    args.push(&target);
    let out = ctr_remote(&env, &args, Duration::from_secs(300))?;
    eprintln!("ctr-remote {}:\n{out}", args.join(" "));
    env.ctr(&["images", "push", "--plain-http", &target])?;

    let conv = image_facts(&target)?;
    assert_eq!(conv.layers.len(), orig.layers.len(), "{:#}", conv.manifest);
    for l in &conv.layers {
        assert!(
            l.annotations.contains_key(TOC_ANNOTATION),
            "ctr-remote wrote a layer without TOC digest: {l:?}"
        );
    }
    assert_ne!(conv.diff_ids, orig.diff_ids, "ctr-remote converted nothing");

    let sum = env.hologram_pull(&target)?;
    let n = conv.layers.len();
    assert_eq!(
        (sum.layers, sum.lazy, sum.unpacked, sum.present),
        (n, n, 0, 0),
        "{}\n{}",
        sum.text,
        env.diagnostics()
    );
    assert!(sum.not_lazy.is_empty(), "{}", sum.text);
    env.check_layers_fuse_mounted(&conv)?;
    // The daemon kept a copy of each TOC (restarts need no registry); the
    // bottom layer's shows what ctr-remote decided to prefetch.
    for l in &conv.layers {
        let copy = env.toc_copy(&l.annotations[TOC_ANNOTATION])?;
        assert!(copy.is_file(), "no TOC copy {}", copy.display());
    }
    let bottom = read_toc(
        &env.toc_copy(&conv.layers[0].annotations[TOC_ANNOTATION])?,
        true,
    )?;
    let names = toc_names(&bottom);
    let pos = |n: &str| names.iter().position(|x| x == n);
    if prefetched {
        let (Some(busybox), Some(landmark)) = (pos("bin/busybox"), pos(".prefetch.landmark"))
        else {
            panic!("optimized bottom layer lacks bin/busybox or .prefetch.landmark: {names:?}");
        };
        assert!(busybox < landmark, "busybox not prefetched: {names:?}");
    } else {
        assert_eq!(pos(".no.prefetch.landmark"), Some(0), "{names:?}");
    }

    let hello = env.run(&target, &format!("{label}-hello"), &[])?;
    assert_eq!(hello, DEFAULT_CMD_OUTPUT, "{}", env.diagnostics());

    let compared = assert_same_tree(&env, &conv, &orig, label)?;
    assert_eq!(
        compared
            .lazy
            .xattr("xattr/cap-file", "user.hologram")
            .as_deref(),
        Some(&b"test"[..])
    );
    assert!(compared
        .lazy
        .xattr("xattr/cap-file", "security.capability")
        .is_some());
    eprintln!(
        "{label}: {} paths identical in the lazily mounted and the overlayfs tree",
        compared.lazy.paths.len()
    );
    Ok(())
}

#[test]
fn ctr_remote_estargz_image_is_lazy_and_matches_overlayfs() -> Result<()> {
    ctr_remote_image_is_lazy_and_equivalent(
        "ctr-remote-esgz",
        &["convert", "--estargz", "--oci"],
        false,
    )
}

#[test]
fn ctr_remote_optimized_image_is_lazy_and_matches_overlayfs() -> Result<()> {
    // --period: how long the profiling run is watched (the default command
    // exits at once).
    ctr_remote_image_is_lazy_and_equivalent(
        "ctr-remote-opt",
        &["optimize", "--oci", "--period", "3"],
        true,
    )
}
