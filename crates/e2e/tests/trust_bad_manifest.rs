//! A registry that serves a manifest whose bytes do not match its digest
//! (a proxy flips one byte of every manifest fetched by digest) is refused
//! by the daemon in both trust modes — no policy makes such bytes
//! trustworthy — even when a valid witness for the true manifest exists.
//!
//! The image Prepare is driven two ways: straight at the daemon's socket
//! with the CRI labels (as CRI would send them), and by `hologram pull`
//! through the proxy (which resolves the tag, unchanged, and leaves the
//! by-digest fetch to the daemon). With the proxy passing bytes unchanged,
//! the same requests are accepted: the refusal is the flipped byte's doing.

use anyhow::Result;
use hologram_e2e::trust::{
    ManifestCorruptingProxy, TrustDaemon, TrustSettings, TrustWorld, LABEL_CRI_IMAGE_REF,
    LABEL_CRI_LAYER_DIGEST, LABEL_CRI_MANIFEST_DIGEST, LABEL_SNAPSHOT_REF,
};
use tonic::Code;

fn bad_manifest_refused(enforce: bool) -> Result<()> {
    let world = TrustWorld::start()?;
    let img = world.variant(if enforce { "bad-enforce" } else { "bad-warn" })?;
    // A valid witness for the true manifest: the mismatch alone must refuse.
    world.sign_into_dir(&world.trusted.private, &img.reference, None, "true.json")?;
    let proxy = ManifestCorruptingProxy::start(world.registry.addr())?;
    let tag = img
        .reference
        .rsplit_once(':')
        .map(|(_, t)| t.to_owned())
        .unwrap_or_default();
    let via_proxy = format!("{}/{}:{tag}", proxy.addr(), hologram_e2e::trust::REPOSITORY);
    let settings = TrustSettings {
        enforce,
        verbose: true,
        dir: Some(world.witness_dir.clone()),
        keys: vec![world.trusted.public.clone()],
        ..TrustSettings::default()
    };
    let chain = img.chain_ids[0].clone();
    let layer = img.layers[0].digest.clone();
    let labels = [
        (LABEL_SNAPSHOT_REF, chain.as_str()),
        (LABEL_CRI_IMAGE_REF, via_proxy.as_str()),
        (LABEL_CRI_LAYER_DIGEST, layer.as_str()),
        (LABEL_CRI_MANIFEST_DIGEST, img.manifest_digest.as_str()),
    ];
    let mismatch = format!(
        "image {via_proxy}: manifest served with bytes that do not match its digest (expected {}",
        img.manifest_digest
    );

    // Corrupting: refused, directly and through `hologram pull`.
    let d = TrustDaemon::start(&settings)?;
    let res = d.prepare_direct(&format!("extract-direct {chain}"), "", &labels)?;
    let status = match res {
        Ok(()) => panic!(
            "enforce={enforce}: Prepare with a corrupted manifest was accepted\n{}",
            d.diagnostics()
        ),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "enforce={enforce}: {status:?}\n{}",
        d.diagnostics()
    );
    assert!(
        status.message().contains(&mismatch),
        "enforce={enforce}: expected {mismatch:?} in {:?}\n{}",
        status.message(),
        d.diagnostics()
    );
    assert!(proxy.corrupted() >= 1, "the proxy corrupted nothing");
    eprintln!("enforce={enforce}: Prepare refused: {}", status.message());
    let text = d.pull_refused(&via_proxy)?;
    assert!(
        text.contains(&mismatch),
        "enforce={enforce}: expected {mismatch:?} in the output of `hologram pull`:\n{text}\n{}",
        d.diagnostics()
    );
    eprintln!("enforce={enforce}: `hologram pull` refused:\n{text}");
    assert!(
        !d.has_snapshot(&chain)?,
        "enforce={enforce}: {chain} exists after the refusal"
    );
    drop(d);

    // Passing bytes unchanged: the same requests are accepted.
    proxy.set_corrupting(false);
    let before = proxy.corrupted();
    let d = TrustDaemon::start(&settings)?;
    match d.prepare_direct(&format!("extract-direct {chain}"), "", &labels)? {
        Ok(()) => {}
        Err(s) if s.code() == Code::AlreadyExists => {}
        Err(s) => panic!(
            "enforce={enforce}: Prepare with the intact manifest failed: {s:?}\n{}",
            d.diagnostics()
        ),
    }
    drop(d);
    let d = TrustDaemon::start(&settings)?;
    let sum = d.pull(&via_proxy)?;
    assert_eq!(sum.lazy, img.layers.len(), "{}", sum.text);
    assert_eq!(proxy.corrupted(), before);
    Ok(())
}

#[test]
fn trust_bad_manifest_refused_in_enforce_mode() -> Result<()> {
    bad_manifest_refused(true)
}

#[test]
fn trust_bad_manifest_refused_in_warn_mode() -> Result<()> {
    bad_manifest_refused(false)
}
