//! Witnesses attached to the image in the registry (OCI referrers, tag
//! schema): `hologram witness sign --attach` stores the envelope as an
//! artifact of the manifest; a daemon in enforce mode with only a trusted key
//! (no endpoint, no directory) finds it there and runs the image, and still
//! refuses an image with nothing attached.

use anyhow::Result;
use hologram_e2e::image::content::DEFAULT_CMD_OUTPUT;
use hologram_e2e::lazy::{hologram_ok, CLI_TIMEOUT};
use hologram_e2e::trust::{keygen, TrustDaemon, TrustSettings, TrustWorld};

#[test]
fn trust_enforce_finds_witnesses_attached_in_the_registry() -> Result<()> {
    let world = TrustWorld::start()?;
    let signed = world.variant("attached")?;
    let unsigned = world.variant("attached-none")?;
    let kp = keygen(&world.dir().join("attach-key"))?;
    let key = kp.private.display().to_string();
    hologram_ok(
        &[
            "witness",
            "sign",
            "--key",
            &key,
            "--plain-http",
            "--attach",
            &signed.reference,
        ],
        CLI_TIMEOUT,
    )?;

    let d = TrustDaemon::start(&TrustSettings {
        enforce: true,
        keys: vec![kp.public.clone()],
        ..TrustSettings::default()
    })?;
    let refused = d.pull_refused(&unsigned.reference)?;
    assert!(
        refused.contains("is not verified: no witness found"),
        "{refused}\n{}",
        d.diagnostics()
    );
    let sum = d.pull(&signed.reference)?;
    assert_eq!(
        sum.lazy,
        signed.layers.len(),
        "{}\n{}",
        sum.text,
        d.diagnostics()
    );
    assert_eq!(
        d.run(&signed.reference, "attached")?,
        DEFAULT_CMD_OUTPUT,
        "{}",
        d.diagnostics()
    );
    Ok(())
}
