//! Checks of the harness itself that do not need hologram-snapshotter: the
//! registry serves the pushed test image, and containerd's built-in
//! overlayfs snapshotter unpacks it to exactly the root filesystem the
//! hologram tests expect (so a failure there is the daemon's, not the
//! image's).

use anyhow::{ensure, Context, Result};
use hologram_e2e::registry::http_get;
use hologram_e2e::util::{require_tools, short_tempdir};
use hologram_e2e::{
    build_and_push, expected_rootfs_report, parse_snapshot_ls, Containerd, Registry,
    ROOTFS_CHECK_SCRIPT,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn registry_serves_pushed_deterministic_image() -> Result<()> {
    require_tools(&["docker-registry", "skopeo", "python3"])?;
    let registry = Registry::start()?;
    let work = short_tempdir("hg-img-")?;
    let image = build_and_push(&registry, work.path())?;
    assert_eq!(image.reference, format!("{}/e2e/layers:1", registry.addr()));
    assert_eq!(image.layers.len(), 3);
    assert_eq!(image.diff_ids.len(), 3);
    assert_eq!(image.chain_ids.len(), 3);
    assert_eq!(image.chain_ids[0], image.diff_ids[0]);

    let resp = http_get(
        registry.addr(),
        "/v2/e2e/layers/manifests/1",
        &[("Accept", OCI_MANIFEST)],
    )?;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(image.manifest_digest.as_str())
    );
    let manifest: serde_json::Value = serde_json::from_slice(&resp.body)?;
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
    let layers = manifest["layers"].as_array().context("layers")?;
    let digests: Vec<&str> = layers.iter().filter_map(|l| l["digest"].as_str()).collect();
    assert_eq!(
        digests,
        image.layers.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for l in layers {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }
    ensure!(
        registry
            .storage_dir()
            .join("docker/registry/v2/repositories/e2e/layers")
            .is_dir(),
        "registry storage lacks the repository"
    );

    // The builder is deterministic: a second build gives the same digests.
    let again = hologram_e2e::image::build_layout(&work.path().join("layout2"))?;
    assert_eq!(again["manifest_digest"], image.manifest_digest.as_str());
    Ok(())
}

#[test]
fn reference_image_unpacks_correctly_with_overlayfs() -> Result<()> {
    require_tools(hologram_e2e::env::REQUIRED_TOOLS)?;
    let registry = Registry::start()?;
    let work = short_tempdir("hg-img-")?;
    let image = build_and_push(&registry, work.path())?;
    let containerd = Containerd::start_without_proxy()?;
    containerd.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "overlayfs",
        &image.reference,
    ])?;

    let rows =
        parse_snapshot_ls(&containerd.ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"])?)?;
    let mut keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    keys.sort_unstable();
    let mut want: Vec<&str> = image.chain_ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(keys, want, "mkimage.py chain_ids must match containerd's");

    let report = containerd.run_logged(
        None,
        &[
            "--rm",
            "--snapshotter",
            "overlayfs",
            &image.reference,
            "check",
            "/bin/sh",
            "-c",
            ROOTFS_CHECK_SCRIPT,
        ],
    )?;
    assert_eq!(
        report,
        expected_rootfs_report(),
        "{}",
        containerd.diagnostics()
    );

    let hello = containerd.run_logged(
        None,
        &[
            "--rm",
            "--snapshotter",
            "overlayfs",
            &image.reference,
            "default-cmd",
        ],
    )?;
    assert_eq!(hello, hologram_e2e::image::content::DEFAULT_CMD_OUTPUT);
    Ok(())
}

/// Tear-down of a containerd that still runs a container: the container,
/// its shim and its rootfs mount are all gone afterwards.
#[test]
fn teardown_removes_running_containers_shims_and_mounts() -> Result<()> {
    require_tools(hologram_e2e::env::REQUIRED_TOOLS)?;
    let registry = Registry::start()?;
    let work = short_tempdir("hg-img-")?;
    let image = build_and_push(&registry, work.path())?;
    let containerd = Containerd::start_without_proxy()?;
    containerd.ctr(&["images", "pull", "--plain-http", &image.reference])?;
    containerd.ctr(&[
        "run",
        "-d",
        &image.reference,
        "sleeper",
        "/bin/sleep",
        "1000",
    ])?;
    let tasks = containerd.ctr(&["tasks", "ls"])?;
    let pid: u32 = tasks
        .lines()
        .find(|l| l.starts_with("sleeper"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no sleeper task in {tasks}"))?;
    let dir = containerd
        .root()
        .parent()
        .context("containerd dir")?
        .to_path_buf();
    let address = containerd.address().display().to_string();
    ensure!(
        !hologram_e2e::mounts::mounts_under(&dir)?.is_empty(),
        "no rootfs mount seen"
    );
    ensure!(hologram_e2e::process::pid_exists(pid));

    drop(containerd);

    ensure!(
        !hologram_e2e::process::pid_exists(pid),
        "container process {pid} survived"
    );
    ensure!(!dir.exists(), "{} not removed", dir.display());
    let mounts = hologram_e2e::mounts::mounts_under(&dir)?;
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            ensure!(
                !String::from_utf8_lossy(&cmdline).contains(&address),
                "process {:?} still refers to {address}",
                entry.file_name()
            );
        }
    }
    Ok(())
}
