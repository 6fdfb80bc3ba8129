//! The README's three-command flow, command for command (temp paths for
//! `/etc/hologram-snapshotter/…`, and `--plain-http` for the test
//! registry): make a key pair, sign the image into a witness directory, run
//! the daemon with `HOLOGRAM_ENFORCE=1`, that directory and the public key,
//! then `hologram pull` and `ctr run`. A second, unsigned image is refused
//! by the same daemon first, so the flow really runs in enforce mode.

use anyhow::{Context, Result};
use hologram_e2e::image::content::DEFAULT_CMD_OUTPUT;
use hologram_e2e::lazy::{hologram_ok, CLI_TIMEOUT};
use hologram_e2e::trust::{TrustDaemon, TrustSettings, TrustWorld};

#[test]
fn trust_readme_keygen_sign_run_in_enforce_mode() -> Result<()> {
    let world = TrustWorld::start()?;
    let img = world.variant("readme")?;
    let unsigned = world.variant("readme-unsigned")?;
    let etc = world.dir().join("etc-hologram-snapshotter");
    let wdir = etc.join("witnesses");
    std::fs::create_dir_all(&wdir).context("mkdir witness dir")?;
    let prefix = etc.join("witness");
    let prefix_s = prefix.display().to_string();
    let key = format!("{prefix_s}.key");
    let public = format!("{prefix_s}.pub");
    let witness = wdir.join("w.json").display().to_string();

    // 1. hologram witness keygen --out /etc/hologram-snapshotter/witness
    hologram_ok(&["witness", "keygen", "--out", &prefix_s], CLI_TIMEOUT)?;
    // 2. hologram witness sign --key witness.key --out DIR/w.json REF
    hologram_ok(
        &[
            "witness",
            "sign",
            "--key",
            &key,
            "--plain-http",
            "--out",
            &witness,
            &img.reference,
        ],
        CLI_TIMEOUT,
    )?;
    // 3. HOLOGRAM_ENFORCE=1 daemon with witness_dir + trusted_keys, then pull + run.
    let d = TrustDaemon::start(&TrustSettings {
        enforce: false,
        dir: Some(wdir.clone()),
        keys: vec![public.into()],
        env: vec![("HOLOGRAM_ENFORCE".into(), "1".into())],
        ..TrustSettings::default()
    })?;
    // (First, the unsigned twin: same layers, so it must be tried before the
    // signed image's layers are present, or there is nothing left to Prepare.)
    let refused = d.pull_refused(&unsigned.reference)?;
    assert!(
        refused.contains(&format!("image {} (UOR-ID ", unsigned.reference))
            && refused.contains("is not verified: no witness found"),
        "HOLOGRAM_ENFORCE=1 must refuse an unsigned image:\n{refused}\n{}",
        d.diagnostics()
    );
    let sum = d.pull(&img.reference)?;
    assert_eq!(sum.lazy, img.layers.len(), "{}", sum.text);
    let out = d.run(&img.reference, "readme")?;
    assert_eq!(out, DEFAULT_CMD_OUTPUT, "{}", d.diagnostics());

    Ok(())
}
