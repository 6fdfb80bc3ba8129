//! Private registries: credentials that reach the daemon's lazy reads long
//! after the pull returned, and registry mirrors that serve them.
//!
//! * a Kubernetes pull secret given only in CRI `PullImage`'s `AuthConfig`,
//!   through the daemon's CRI image-service proxy (the kubelet's
//!   `--image-service-endpoint`), against a registry with htpasswd basic
//!   auth; then a large file is read in full by a container;
//! * a docker credential helper (`docker-credential-test`, `credsStore`)
//!   serving the credentials of such a registry;
//! * a mirror in hosts.toml: the origin registry sees no blob request.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use hologram_e2e::cri::Auth;
use hologram_e2e::lazy::{image_facts, write_hosts_toml, LazyEnv, LazyOptions, LAZY_CONFIG};
use hologram_e2e::side_registry::SideRegistry;

const RUN_TIMEOUT: Duration = Duration::from_secs(180);
const BIG_MIB: &str = "24";

fn unique_password() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("pw-{}-{nanos}-secret", std::process::id())
}

/// The hex sha256 `mkimage.py --big-file` recorded for /data/big.bin.
fn big_sha(summary: &serde_json::Value) -> Result<String> {
    let d = summary["files"]["data/big.bin"]
        .as_str()
        .context("no data/big.bin in the mkimage summary")?;
    Ok(d.trim_start_matches("sha256:").to_owned())
}

/// Every file below `dir` that contains `needle` (credentials must never
/// reach the daemon's disk).
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() {
                // Mounted layers and container rootfs are not the daemon's files.
                if p.file_name().is_some_and(|n| n == "fs" || n == "rootfs") {
                    continue;
                }
                stack.push(p);
            } else if ft.is_file() {
                if let Ok(data) = std::fs::read(&p) {
                    if data.windows(needle.len()).any(|w| w == needle) {
                        hits.push(p.display().to_string());
                    }
                }
            }
        }
    }
    hits
}

#[test]
fn cri_pull_secret_reaches_lazy_reads_after_the_pull() -> Result<()> {
    // No docker config for the daemon: the only credential is the secret.
    let no_docker = tempfile::tempdir()?;
    let env = LazyEnv::start_with(LazyOptions {
        config: LAZY_CONFIG.to_owned(),
        cri: true,
        env: vec![(
            "DOCKER_CONFIG".to_owned(),
            no_docker.path().display().to_string(),
        )],
        ..LazyOptions::default()
    })?;
    let plain = env.push_mkimage_with(&["--big-file", BIG_MIB], "e2e/private:plain")?;
    let open = format!("{}/e2e/private:esgz", env.registry.addr());
    env.convert(&plain.reference, &open, &[])?;
    let facts = image_facts(&open)?;
    let big_layer = facts.layers.last().context("no layers")?.digest.clone();

    let password = unique_password();
    let private = SideRegistry::start_with_auth(env.registry.storage_dir(), "kube", &password)?;
    write_hosts_toml(env.hosts_dir(), private.addr(), &[])?;
    let image = format!("{}/e2e/private:esgz", private.addr());

    let cri = env.cri_proxied()?;
    // Anonymous pulls are refused by the registry (through the proxy).
    let anon = cri.pull_image(&image, None, None);
    let err = anon
        .err()
        .context("an anonymous pull of the private image succeeded")?;
    assert!(
        err.message().contains("401") || err.message().to_lowercase().contains("unauthorized"),
        "{err:?}"
    );

    let auth = Auth {
        username: "kube".to_owned(),
        password: password.clone(),
        // containerd 1.6 parses it as a URL: "host:port" alone fails.
        server_address: format!("http://{}", private.addr()),
    };
    let image_ref = cri.pull_image_ok(&image, Some(&auth))?;
    env.check_layers_fuse_mounted(&facts)
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", env.diagnostics()))?;
    let before = private
        .blob_requests()
        .iter()
        .filter(|r| r.contains(&big_layer))
        .count();

    // Long after the pull returned, a container reads the whole big file:
    // every chunk not yet fetched is fetched with the secret.
    let pod = cri.run_pod("private")?;
    let fin = cri.run_to_completion(
        &pod,
        "read-big",
        &image_ref,
        &["/bin/sha256sum", "/data/big.bin"],
        RUN_TIMEOUT,
    )?;
    assert_eq!(fin.exit_code, 0, "{fin:?}\n{}", env.diagnostics());
    assert!(
        fin.log.starts_with(&big_sha(&plain.summary)?),
        "{fin:?}\n{}",
        env.diagnostics()
    );
    let big_reads: Vec<String> = private
        .blob_requests()
        .into_iter()
        .filter(|r| r.contains(&big_layer))
        .collect();
    assert!(
        big_reads.len() > before && big_reads[before..].iter().all(|r| r.ends_with(" 206")),
        "the big file was not read lazily from the private registry after the pull: {big_reads:?}"
    );
    cri.remove_pod(&pod)?;

    // The secret is nowhere but in memory: not in the daemon's log, not in
    // its files, not in snapshot labels.
    assert!(
        env.log_lines(&password).is_empty(),
        "password in the daemon log"
    );
    let on_disk = files_containing(env.snapshotter.root(), password.as_bytes());
    assert!(on_disk.is_empty(), "password on disk: {on_disk:?}");
    let labels = env
        .containerd
        .ctr_ns("k8s.io", &["snapshots", "--snapshotter", "hologram", "ls"])
        .unwrap_or_default();
    assert!(!labels.contains(&password));
    Ok(())
}

#[test]
fn a_docker_credential_helper_serves_a_private_registry() -> Result<()> {
    let helper_dir = tempfile::tempdir()?;
    let creds_dir = helper_dir.path().join("creds");
    std::fs::create_dir(&creds_dir)?;
    let calls = helper_dir.path().join("calls.log");
    let script = helper_dir.path().join("docker-credential-test");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             # docker credential helper protocol: `get`, server URL on stdin, JSON on stdout\n\
             [ \"$1\" = get ] || exit 1\n\
             read -r url\n\
             echo \"$url\" >> {calls:?}\n\
             f={creds:?}/$(printf %s \"$url\" | tr ':/' '__')\n\
             if [ -f \"$f\" ]; then cat \"$f\"; else echo 'credentials not found in native keychain'; exit 1; fi\n",
            calls = calls.display().to_string(),
            creds = creds_dir.display().to_string(),
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let docker_config = tempfile::tempdir()?;
    std::fs::write(
        docker_config.path().join("config.json"),
        r#"{"auths":{},"credsStore":"test"}"#,
    )?;
    let path = format!(
        "{}:{}",
        helper_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let docker_config_s = docker_config.path().display().to_string();
    let env = LazyEnv::start_with(LazyOptions {
        config: LAZY_CONFIG.to_owned(),
        env: vec![
            ("DOCKER_CONFIG".to_owned(), docker_config_s.clone()),
            ("PATH".to_owned(), path.clone()),
        ],
        ..LazyOptions::default()
    })?;
    let plain = env.push_mkimage_with(&["--big-file", "8"], "e2e/helper:plain")?;
    let open = format!("{}/e2e/helper:esgz", env.registry.addr());
    env.convert(&plain.reference, &open, &[])?;
    let facts = image_facts(&open)?;

    let password = unique_password();
    let private = SideRegistry::start_with_auth(env.registry.storage_dir(), "helper", &password)?;
    std::fs::write(
        creds_dir.join(private.addr().replace([':', '/'], "_")),
        format!(
            "{{\"ServerURL\":\"{}\",\"Username\":\"helper\",\"Secret\":\"{password}\"}}\n",
            private.addr()
        ),
    )?;
    let image = format!("{}/e2e/helper:esgz", private.addr());
    let out = env.hologram_pull_env(
        &image,
        &[("DOCKER_CONFIG", &docker_config_s), ("PATH", &path)],
    )?;
    assert!(
        out.status.success(),
        "hologram pull failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        env.diagnostics()
    );
    env.check_layers_fuse_mounted(&facts)?;
    let sum = env.run(&image, "helper-read", &["/bin/sha256sum", "/data/big.bin"])?;
    assert!(sum.starts_with(&big_sha(&plain.summary)?), "{sum}");
    let asked = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        asked.lines().any(|l| l == private.addr()),
        "the helper was never asked about {}: {asked:?}",
        private.addr()
    );
    assert!(
        env.log_lines(&password).is_empty(),
        "password in the daemon log"
    );
    Ok(())
}

#[test]
fn a_hosts_toml_mirror_serves_the_lazy_reads() -> Result<()> {
    let env = LazyEnv::start_with(LazyOptions {
        config: LAZY_CONFIG.to_owned(),
        cri: true,
        ..LazyOptions::default()
    })?;
    let plain = env.push_mkimage_with(&["--big-file", "8"], "e2e/mirrored:plain")?;
    let open = format!("{}/e2e/mirrored:esgz", env.registry.addr());
    env.convert(&plain.reference, &open, &[])?;
    let facts = image_facts(&open)?;
    // The origin serves the same storage as the mirror (env.registry) and
    // logs every request.
    let origin = SideRegistry::start(env.registry.storage_dir())?;
    write_hosts_toml(env.hosts_dir(), origin.addr(), &[env.registry.addr()])?;
    let image = format!("{}/e2e/mirrored:esgz", origin.addr());

    let cri = env.cri()?;
    let image_ref = cri.pull_image_ok(&image, None)?;
    env.check_layers_fuse_mounted(&facts)
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", env.diagnostics()))?;
    let pod = cri.run_pod("mirrored")?;
    let fin = cri.run_to_completion(
        &pod,
        "read-big",
        &image_ref,
        &["/bin/sha256sum", "/data/big.bin"],
        RUN_TIMEOUT,
    )?;
    assert_eq!(fin.exit_code, 0, "{fin:?}\n{}", env.diagnostics());
    assert!(fin.log.starts_with(&big_sha(&plain.summary)?), "{fin:?}");
    cri.remove_pod(&pod)?;
    let blobs = origin.blob_requests();
    assert!(
        blobs.is_empty(),
        "the origin served blobs although the mirror has them: {blobs:?}"
    );
    Ok(())
}
