//! Enforce mode (`[trust] enforce = true`, one trusted key): an image with a
//! valid witness is pulled lazily and runs, with provenance labels; every
//! other image is refused at its first layer's Prepare with a message that
//! names the image, its UOR-ID and the specific reason, and nothing of it is
//! mounted or unpacked.
//!
//! Each case has its own registry world and a fresh daemon: the gate caches
//! verdicts per manifest digest, and a daemon that holds an image's layers
//! already is not asked to Prepare them again.

use anyhow::Result;
use hologram_e2e::image::content::DEFAULT_CMD_OUTPUT;
use hologram_e2e::lazy::fuse_mounts_under;
use hologram_e2e::trust::{
    uor_resolve, Case, TrustDaemon, TrustSettings, TrustWorld, LABEL_ENFORCE_MODE, LABEL_UOR_ID,
    LABEL_WITNESS_OK,
};

#[test]
fn trust_enforce_a_signed_image_is_lazy_runs_and_is_labelled() -> Result<()> {
    let world = TrustWorld::start()?;
    let img = world.variant("signed")?;
    world.sign_into_dir(&world.trusted.private, &img.reference, None, "signed.json")?;
    let server = world.start_witness_server()?;
    let d = world.daemon(&TrustSettings {
        enforce: true,
        verbose: true,
        endpoint: Some(server.url()),
        keys: vec![world.trusted.public.clone()],
        ..TrustSettings::default()
    })?;
    let sum = d.pull(&img.reference)?;
    let n = img.layers.len();
    assert_eq!(
        (sum.layers, sum.lazy, sum.unpacked, sum.present),
        (n, n, 0, 0),
        "every layer of a verified eStargz image is mounted lazily\n{}\n{}",
        sum.text,
        d.diagnostics()
    );
    let fuse = fuse_mounts_under(d.snapshotter.root())?;
    for l in &img.layers {
        let src = format!("hologram:{}", l.digest);
        assert!(
            fuse.iter().any(|m| m.source == src),
            "layer {} is not FUSE-mounted: {fuse:#?}",
            l.digest
        );
    }
    let out = d.run(&img.reference, "trust-a")?;
    assert_eq!(out, DEFAULT_CMD_OUTPUT, "{}", d.diagnostics());

    let uor = uor_resolve(&img.reference)?;
    assert!(uor.starts_with("uor:v1:r"), "{uor}");
    for chain in &img.chain_ids {
        let labels = d.snapshot_labels(chain)?;
        assert_eq!(labels[LABEL_UOR_ID], uor.as_str(), "{chain}: {labels:#}");
        assert_eq!(labels[LABEL_WITNESS_OK], "true", "{chain}: {labels:#}");
        assert_eq!(labels[LABEL_ENFORCE_MODE], "enforce", "{chain}: {labels:#}");
    }
    let verified = d.log_lines(&["witness verified", &uor]);
    assert_eq!(
        verified.len(),
        1,
        "one verification per pull (the verdict is cached for the other layers):\n{}",
        d.log()
    );
    drop(server);
    Ok(())
}

/// Sets up `case` in enforce mode, pulls, and checks the refusal.
fn refused(case: Case) -> Result<()> {
    let world = TrustWorld::start()?;
    let p = world.prepare_case(case, true)?;
    let d = TrustDaemon::start(&p.settings)?;
    let out = d.pull_case(&p)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !out.status.success(),
        "{case:?}: the pull of {} must be refused in enforce mode:\n{text}\n{}",
        p.reference(),
        d.diagnostics()
    );
    assert!(
        text.contains("FailedPrecondition") || text.contains("failed precondition"),
        "{case:?}: the refusal is a FailedPrecondition:\n{text}"
    );
    if case != Case::PlainCtrPull {
        let prefix = p.not_verified_prefix();
        assert!(
            text.contains(&format!("{prefix}{}", p.reason)),
            "{case:?}: expected {:?} in the refusal:\n{text}\n{}",
            format!("{prefix}{}", p.reason),
            d.diagnostics()
        );
    } else {
        assert!(
            text.contains(&p.reason) && text.contains("pull with `hologram pull` or through CRI"),
            "{case:?}: expected {:?} and the hint in ctr's output:\n{text}\n{}",
            p.reason,
            d.diagnostics()
        );
    }
    if case == Case::OtherImage {
        assert!(
            p.stub_requests() > 0,
            "the hostile endpoint was never asked"
        );
    }
    // Nothing of the image is mounted, committed or unpacked.
    let fuse = fuse_mounts_under(d.snapshotter.root())?;
    assert!(fuse.is_empty(), "{case:?}: FUSE mounts remain: {fuse:#?}");
    for chain in &p.image.chain_ids {
        assert!(
            !d.has_snapshot(chain)?,
            "{case:?}: snapshot {chain} exists after the refusal"
        );
    }
    let ls = d.ctr(&["snapshots", "--snapshotter", "hologram", "ls"])?;
    assert_eq!(
        ls.lines().skip(1).filter(|l| !l.trim().is_empty()).count(),
        0,
        "{case:?}: snapshots remain:\n{ls}"
    );
    // The daemon says why, too.
    let reason_in_log = d.log_lines(&[&p.reason]);
    assert!(
        !reason_in_log.is_empty(),
        "{case:?}: the daemon log does not contain {:?}:\n{}",
        p.reason,
        d.snapshotter.log_tail(40)
    );
    eprintln!("{case:?} refused:\n{text}");
    Ok(())
}

#[test]
fn trust_enforce_b_no_witness_is_refused() -> Result<()> {
    refused(Case::NoWitness)
}

#[test]
fn trust_enforce_c_untrusted_key_is_refused() -> Result<()> {
    refused(Case::UntrustedKey)
}

#[test]
fn trust_enforce_d_expired_witness_is_refused() -> Result<()> {
    refused(Case::Expired)
}

#[test]
fn trust_enforce_e_witness_of_another_image_is_refused() -> Result<()> {
    refused(Case::OtherImage)
}

#[test]
fn trust_enforce_f_tampered_envelope_is_refused() -> Result<()> {
    refused(Case::Tampered)
}

#[test]
fn trust_enforce_g_unreachable_endpoint_is_refused() -> Result<()> {
    refused(Case::EndpointDown)
}

#[test]
fn trust_enforce_h_plain_ctr_pull_is_refused() -> Result<()> {
    refused(Case::PlainCtrPull)
}
