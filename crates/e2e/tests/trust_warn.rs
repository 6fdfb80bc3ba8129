//! Warn mode (trust configured, `enforce = false`): the cases enforce mode
//! refuses are let through — the pull succeeds and the image runs — but each
//! is counted (`hologram_witness_operations_total{op="verify",
//! result="error"}`, or `{op="no_provenance"}` for a plain `ctr` pull),
//! logged as a warning with the specific reason, and (verbose) labelled
//! `hologram.witness_ok=false`.

use anyhow::Result;
use hologram_e2e::image::content::DEFAULT_CMD_OUTPUT;
use hologram_e2e::trust::{
    unique, Case, TrustDaemon, TrustWorld, LABEL_ENFORCE_MODE, LABEL_UOR_ID, LABEL_WITNESS_OK,
};

const WITNESS_OPS: &str = "hologram_witness_operations_total";

fn allowed_with_warning(case: Case) -> Result<()> {
    let world = TrustWorld::start()?;
    let p = world.prepare_case(case, false)?;
    let d = TrustDaemon::start(&p.settings)?;
    let before = d.metrics()?;
    let out = d.pull_case(&p)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.status.success(),
        "{case:?}: warn mode must let the pull of {} through:\n{text}\n{}",
        p.reference(),
        d.diagnostics()
    );
    let hello = d.run(p.reference(), &unique("trust-warn"))?;
    assert_eq!(hello, DEFAULT_CMD_OUTPUT, "{case:?}\n{}", d.diagnostics());

    let after = d.metrics()?;
    let count = |e: &hologram_e2e::prom::Exposition, op: &str, result: &str| {
        e.sum(WITNESS_OPS, &[("op", op), ("result", result)])
    };
    if case == Case::PlainCtrPull {
        let (b, a) = (
            count(&before, "no_provenance", "error"),
            count(&after, "no_provenance", "error"),
        );
        assert!(
            a > b,
            "{case:?}: {WITNESS_OPS}{{op=\"no_provenance\",result=\"error\"}} went {b} -> {a}\n{}\n{}",
            after.text,
            d.diagnostics()
        );
        let warned = d.log_lines(&[
            "WARN",
            "unverified layer allowed because trust mode is warn",
            &p.reason.replace("enforce mode: ", ""),
        ]);
        assert!(
            !warned.is_empty(),
            "{case:?}: no warning in the daemon log:\n{}",
            d.snapshotter.log_tail(40)
        );
    } else {
        let (b, a) = (
            count(&before, "verify", "error"),
            count(&after, "verify", "error"),
        );
        assert!(
            a > b,
            "{case:?}: {WITNESS_OPS}{{op=\"verify\",result=\"error\"}} went {b} -> {a}\n{}",
            after.text
        );
        assert_eq!(
            count(&after, "verify", "ok"),
            0.0,
            "{case:?}: nothing verified\n{}",
            after.text
        );
        let warned = d.log_lines(&[
            "WARN",
            "image not verified; allowed because trust mode is warn",
            &format!("{}{}", p.not_verified_prefix(), p.reason),
        ]);
        assert!(
            !warned.is_empty(),
            "{case:?}: no warning with {:?} in the daemon log:\n{}",
            p.reason,
            d.snapshotter.log_tail(40)
        );
        // Lazily mounted all the same, and labelled as unverified.
        let sum = hologram_e2e::lazy::parse_pull_summary(&String::from_utf8_lossy(&out.stdout))?;
        assert_eq!(sum.lazy, p.image.layers.len(), "{}", sum.text);
        for chain in &p.image.chain_ids {
            let labels = d.snapshot_labels(chain)?;
            assert_eq!(labels[LABEL_WITNESS_OK], "false", "{chain}: {labels:#}");
            assert_eq!(labels[LABEL_ENFORCE_MODE], "warn", "{chain}: {labels:#}");
            assert_eq!(
                labels[LABEL_UOR_ID],
                p.uor_id.as_str(),
                "{chain}: {labels:#}"
            );
        }
    }
    if case == Case::OtherImage {
        assert!(
            p.stub_requests() > 0,
            "the hostile endpoint was never asked"
        );
    }
    Ok(())
}

#[test]
fn trust_warn_b_no_witness_is_allowed_and_counted() -> Result<()> {
    allowed_with_warning(Case::NoWitness)
}

#[test]
fn trust_warn_c_untrusted_key_is_allowed_and_counted() -> Result<()> {
    allowed_with_warning(Case::UntrustedKey)
}

#[test]
fn trust_warn_d_expired_witness_is_allowed_and_counted() -> Result<()> {
    allowed_with_warning(Case::Expired)
}

#[test]
fn trust_warn_e_witness_of_another_image_is_allowed_and_counted() -> Result<()> {
    allowed_with_warning(Case::OtherImage)
}

#[test]
fn trust_warn_f_tampered_envelope_is_allowed_and_counted() -> Result<()> {
    allowed_with_warning(Case::Tampered)
}

#[test]
fn trust_warn_g_unreachable_endpoint_is_allowed_and_counted() -> Result<()> {
    allowed_with_warning(Case::EndpointDown)
}

#[test]
fn trust_warn_h_plain_ctr_pull_is_allowed_and_counted() -> Result<()> {
    allowed_with_warning(Case::PlainCtrPull)
}
