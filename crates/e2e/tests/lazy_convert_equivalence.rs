//! Lazy pulling of images converted by `hologram convert`: every layer is
//! mounted lazily (FUSE, no unpacking), the default command runs, and the
//! root filesystem is the same, file by file, as the original image
//! unpacked by containerd's overlayfs snapshotter — for the plain 3-layer
//! test image and for its `--xattrs` variant (4th layer with user.* and
//! security.capability xattrs).

use anyhow::{ensure, Context, Result};
use hologram_e2e::equivalence::assert_same_tree;
use hologram_e2e::image::content::DEFAULT_CMD_OUTPUT;
use hologram_e2e::lazy::{image_facts, json_str, LazyEnv};
use hologram_e2e::treedump::TreeDump;
use serde_json::json;

const TOC_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";

/// v2 `security.capability` granting cap_net_bind_service (as mkimage.py writes it).
fn cap_net_bind_service_v2() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    v.extend_from_slice(&(1u32 << 10).to_le_bytes());
    v.extend_from_slice(&[0u8; 12]);
    v
}

/// The properties of the test image's layers that a mere "both trees are
/// equal" would not catch if both were wrong the same way.
fn check_known_content(tree: &TreeDump, xattrs: bool) -> Result<()> {
    let get = |p: &str| tree.get(p).with_context(|| format!("{p} missing"));
    ensure!(tree.get("data/gone.txt").is_none(), "whiteout not applied");
    ensure!(
        tree.get("opaque/old1.txt").is_none() && tree.get("opaque/sub").is_none(),
        "opaque directory shows lower entries"
    );
    ensure!(get("opaque/new.txt")?["type"] == "reg");
    ensure!(get("replaced")?["type"] == "reg", "dir->file replacement");
    let secret = get("data/secret.txt")?;
    ensure!(
        (
            secret["mode"].clone(),
            secret["uid"].clone(),
            secret["gid"].clone()
        ) == (json!(0o640), json!(1000), json!(1000)),
        "secret.txt: {secret}"
    );
    ensure!(get("data/hard.txt")?["links"] == json!(["data/layer2.txt"]));
    ensure!(get("data/hard.txt")?["nlink"] == json!(2));
    ensure!(get("data/link-to-keep")?["target"] == "keep.txt");
    ensure!(get("tmp")?["mode"] == json!(0o1777));
    if xattrs {
        ensure!(
            tree.xattr("xattr/cap-file", "user.hologram").as_deref() == Some(&b"test"[..]),
            "user.hologram of cap-file: {}",
            get("xattr/cap-file")?
        );
        ensure!(
            tree.xattr("xattr/cap-file", "security.capability") == Some(cap_net_bind_service_v2()),
            "security.capability of cap-file: {}",
            get("xattr/cap-file")?
        );
        ensure!(
            tree.xattr("xattr", "user.hologram").as_deref() == Some(&b"dir"[..]),
            "user.hologram of /xattr: {}",
            get("xattr")?
        );
        ensure!(get("data/rand-2.bin")?["size"] == json!(65536));
    }
    Ok(())
}

#[test]
fn converted_plain_image_mounts_lazily_and_matches_overlayfs() -> Result<()> {
    converted_image_matches_overlayfs(false, "plain")
}

#[test]
fn converted_xattr_image_mounts_lazily_and_matches_overlayfs() -> Result<()> {
    converted_image_matches_overlayfs(true, "xattrs")
}

/// Its own registry, daemon and containerd per variant: with a shared
/// daemon the second image's first three layers would already be present.
fn converted_image_matches_overlayfs(xattrs: bool, tag: &str) -> Result<()> {
    let env = LazyEnv::start()?;
    {
        let original = env.push_mkimage(xattrs, &format!("e2e/layers:{tag}"))?;
        let orig = image_facts(&original.reference)?;
        assert_eq!(
            orig.manifest_digest,
            json_str(&original.summary, "manifest_digest")?,
            "skopeo changed the manifest"
        );
        let n = if xattrs { 4 } else { 3 };
        assert_eq!(orig.layers.len(), n);

        let target = format!("{}/e2e/layers:{tag}-esgz", env.registry.addr());
        env.convert(&original.reference, &target, &[])?;
        let conv = image_facts(&target)?;
        assert_eq!(conv.layers.len(), n, "{:#}", conv.manifest);
        for l in &conv.layers {
            assert!(
                l.annotations.contains_key(TOC_ANNOTATION),
                "converted layer without TOC digest: {l:?}"
            );
        }

        let sum = env.hologram_pull(&target)?;
        assert_eq!(
            (sum.layers, sum.lazy, sum.unpacked, sum.present),
            (n, n, 0, 0),
            "{}\n{}",
            sum.text,
            env.diagnostics()
        );
        assert!(sum.not_lazy.is_empty(), "{}", sum.text);
        assert_eq!(sum.manifest_digest, conv.manifest_digest);
        env.check_layers_fuse_mounted(&conv)?;
        // Nothing was unpacked: the snapshot dirs hold FUSE mount points only.
        for chain in &conv.chain_ids {
            let info = env.ctr(&["snapshots", "--snapshotter", "hologram", "info", chain])?;
            assert!(
                info.contains("containerd.io/snapshot/remote"),
                "snapshot {chain} is not a remote snapshot: {info}"
            );
        }

        let hello = env.run(&target, &format!("hello-{tag}"), &[])?;
        assert_eq!(hello, DEFAULT_CMD_OUTPUT, "{}", env.diagnostics());

        let compared = assert_same_tree(&env, &conv, &orig, tag)?;
        check_known_content(&compared.reference, xattrs)
            .context("overlayfs reference lacks a property of the test image")?;
        check_known_content(&compared.lazy, xattrs)
            .with_context(|| format!("hologram ({tag})\n{}", env.diagnostics()))?;
        eprintln!(
            "{tag}: {} paths identical in the lazily mounted and the overlayfs tree",
            compared.lazy.paths.len()
        );
    }
    Ok(())
}
