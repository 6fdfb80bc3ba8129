//! Kubernetes' path, driven as the kubelet drives it: containerd 1.6's CRI
//! plugin with `snapshotter = "hologram"` and
//! `disable_snapshot_annotations = false`, a CRI client (`runtime.v1`) that
//! pulls, runs a host-network pod sandbox (pause image built here), creates
//! and starts a container, reads its log, stops and removes it. No
//! `hologram pull`: the layers must be mounted lazily from CRI's own pull.

use std::time::Duration;

use anyhow::Result;
use hologram_e2e::image::{expected_rootfs_report, ROOTFS_CHECK_SCRIPT};
use hologram_e2e::lazy::{image_facts, LazyEnv, LazyOptions, LAZY_CONFIG};
use hologram_e2e::trust::{keygen, sign};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn cri_env(config: &str) -> Result<LazyEnv> {
    LazyEnv::start_with(LazyOptions {
        config: config.to_owned(),
        cri: true,
        ..LazyOptions::default()
    })
}

#[test]
fn cri_pull_mounts_layers_lazily_and_the_pod_runs() -> Result<()> {
    let env = cri_env(LAZY_CONFIG)?;
    let plain = env.push_mkimage(false, "e2e/cri:plain")?;
    let esgz = format!("{}/e2e/cri:esgz", env.registry.addr());
    env.convert(&plain.reference, &esgz, &[])?;
    let facts = image_facts(&esgz)?;

    let cri = env.cri()?;
    let v = cri.version()?;
    assert_eq!(v.runtime_name, "containerd", "{v:?}");
    assert!(
        env.fuse_mounts()?.is_empty(),
        "nothing mounted before the pull"
    );

    let image_ref = cri.pull_image_ok(&esgz, None)?;
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    // Every layer of the eStargz image is a FUSE mount of the daemon: CRI's
    // pull passed the remote-snapshot labels and containerd skipped the
    // layer downloads.
    env.check_layers_fuse_mounted(&facts)
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", env.diagnostics()))?;
    assert!(
        env.log_lines("not served lazily").is_empty()
            || !env
                .log_lines("not served lazily")
                .iter()
                .any(|l| facts.layers.iter().any(|d| l.contains(&d.digest))),
        "a layer of the eStargz image fell back:\n{}",
        env.diagnostics()
    );

    let pod = cri.run_pod("lazy")?;
    let fin = cri.run_to_completion(
        &pod,
        "rootfs",
        &image_ref,
        &["/bin/sh", "-c", ROOTFS_CHECK_SCRIPT],
        RUN_TIMEOUT,
    )?;
    assert_eq!(fin.exit_code, 0, "{fin:?}\n{}", env.diagnostics());
    assert_eq!(fin.log, expected_rootfs_report(), "{}", env.diagnostics());
    cri.remove_pod(&pod)?;
    cri.remove_image(&image_ref)?;
    assert!(!cri.image_present(&esgz)?);
    Ok(())
}

#[test]
fn cri_enforce_refuses_an_unsigned_image_with_the_witness_error() -> Result<()> {
    let keys_dir = tempfile::tempdir()?;
    let key = keygen(&keys_dir.path().join("witness"))?;
    let witnesses = keys_dir.path().join("witnesses");
    std::fs::create_dir(&witnesses)?;
    let config = format!(
        "{LAZY_CONFIG}\n[trust]\nenforce = true\ntrusted_keys = [{:?}]\nwitness_dir = {:?}\n",
        key.public.display().to_string(),
        witnesses.display().to_string()
    );
    let env = cri_env(&config)?;
    // The snapshotter is node-wide in containerd 1.6: the pause image goes
    // through the trust gate too, so it is signed.
    sign(
        &key.private,
        &env.pause_image(),
        None,
        &witnesses.join("pause.json"),
    )?;
    let plain = env.push_mkimage(false, "e2e/cri:plain")?;
    let signed = format!("{}/e2e/cri:signed", env.registry.addr());
    let unsigned = format!("{}/e2e/cri:unsigned", env.registry.addr());
    env.convert(&plain.reference, &signed, &[])?;
    env.convert(&plain.reference, &unsigned, &["--chunk-size", "65536"])?;
    sign(&key.private, &signed, None, &witnesses.join("signed.json"))?;

    let cri = env.cri()?;
    // The signed image pulls and runs: enforce mode itself is not what fails.
    let signed_ref = cri.pull_image_ok(&signed, None)?;
    env.check_layers_fuse_mounted(&image_facts(&signed)?)?;
    let pod = cri.run_pod("enforce")?;
    let fin = cri.run_to_completion(
        &pod,
        "signed",
        &signed_ref,
        &["/bin/cat", "/data/keep.txt"],
        RUN_TIMEOUT,
    )?;
    assert_eq!(
        (fin.exit_code, fin.log.as_str()),
        (0, "keep v3 (layer 3)\n"),
        "{fin:?}"
    );

    // The unsigned one never starts: the kubelet's PullImage gets the
    // witness error (image, UOR-ID, reason) from containerd.
    let err = match cri.pull_image(&unsigned, None, Some(&pod.config)) {
        Ok(r) => panic!(
            "unsigned image pulled under enforce: {r}\n{}",
            env.diagnostics()
        ),
        Err(status) => status,
    };
    let msg = err.message();
    assert!(msg.contains("uor:v1:"), "no UOR-ID in {msg:?}");
    assert!(msg.contains("witness"), "no witness reason in {msg:?}");
    assert!(msg.contains("e2e/cri"), "the image is not named in {msg:?}");
    assert!(!cri.image_present(&unsigned)?);
    // Nor can a container be created from it.
    let create = cri.create_container(&pod, "unsigned", &unsigned, &["/bin/true"]);
    assert!(create.is_err(), "{create:?}");
    cri.remove_pod(&pod)?;
    Ok(())
}
