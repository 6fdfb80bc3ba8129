//! `make docker-build` and `make docker-run`, run by `make test`: the
//! daemon's container image is built from deploy/Containerfile with umoci
//! (scripts/docker-build.sh, here from the binaries the suite tests), then
//! scripts/docker-run.sh imports it into a private containerd, runs it
//! privileged with the DaemonSet's host mounts, and has that containerd use
//! the containerized daemon as its proxy snapshotter for a lazy pull and run
//! of a test image (a 16 MiB file read 64 KiB deep). The scripts check their own steps with timeouts; this
//! test checks what they report and that nothing they started or mounted is
//! left behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hologram_e2e::process::{send_signal, wait_timeout};
use hologram_e2e::snapshotter;
use hologram_e2e::util::{require_tools, short_tempdir, workspace_root};

/// Runs a script; past `timeout` it gets SIGTERM (its EXIT trap stops what
/// it started and unmounts) and 60 s more before SIGKILL.
fn run_script(script: &str, env: &[(&str, &Path)], timeout: Duration) -> Result<String> {
    let dir = short_tempdir("hgdi-out")?;
    let out_path = dir.path().join("out");
    let out = fs::File::create(&out_path).context("creating the script's output file")?;
    let err = out.try_clone().context("dup output file")?;
    let path = workspace_root().join("scripts").join(script);
    let mut cmd = Command::new("bash");
    cmd.arg(&path).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let status = match wait_timeout(&mut child, timeout)? {
        Some(s) => s,
        None => {
            send_signal(child.id(), libc::SIGTERM)?;
            let s = match wait_timeout(&mut child, Duration::from_secs(60))? {
                Some(s) => s,
                None => {
                    child.kill().context("killing the script")?;
                    child.wait().context("reaping the script")?
                }
            };
            let text = fs::read_to_string(&out_path).unwrap_or_default();
            bail!("{script} timed out after {timeout:?} (then {s}):\n{text}");
        }
    };
    let text = fs::read_to_string(&out_path).context("reading the script's output")?;
    eprintln!("--- {script} ---\n{text}");
    if !status.success() {
        bail!("{script} failed ({status}):\n{text}");
    }
    Ok(text)
}

fn line_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(prefix))
}

#[test]
fn docker_build_then_docker_run_serves_a_lazy_pull_from_the_container() -> Result<()> {
    require_tools(&[
        "umoci",
        "skopeo",
        "objcopy",
        "ctr",
        "containerd",
        "runc",
        "docker-registry",
        "curl",
    ])?;
    // The binaries the suite tests (target/debug with `make test`).
    let daemon = snapshotter::binary()?;
    let bin_dir: PathBuf = daemon
        .parent()
        .context("the daemon binary has no directory")?
        .to_path_buf();
    let out = short_tempdir("hgdi-img")?;

    let built = run_script(
        "docker-build.sh",
        &[("HOLOGRAM_BIN_DIR", &bin_dir), ("IMAGE_OUT", out.path())],
        Duration::from_secs(300),
    )?;
    let archive = out.path().join("hologram-snapshotter.tar");
    assert!(archive.is_file(), "no archive:\n{built}");
    let index = fs::read_to_string(out.path().join("oci").join("index.json"))?;
    assert!(
        index.contains("\"dev\""),
        "OCI layout not tagged dev: {index}"
    );
    assert!(built.contains("libc.so.6"), "{built}");

    let ran = run_script(
        "docker-run.sh",
        &[("HOLOGRAM_BIN_DIR", &bin_dir), ("IMAGE_ARCHIVE", &archive)],
        Duration::from_secs(300),
    )?;
    for want in [
        "/healthz ok",
        "4 layers: 4 mounted lazily, 0 unpacked, 0 already present",
        "host-visible lazy layers: 4",
        "hello from a lazily pulled image",
        "/replaced: now a file",
        "/data/big.bin: 16777216 bytes; read its first 65536",
        "docker-run OK",
        "stopped on SIGTERM",
        "shutting down signal=\"SIGTERM\"",
    ] {
        assert!(
            ran.contains(want),
            "docker-run output lacks {want:?}:\n{ran}"
        );
    }
    // Lazy: the 16 MiB file was read 64 KiB deep, so most of it never left
    // the registry (one 4 MiB chunk and the small layers did).
    let served: u64 = line_after(&ran, "registry bytes served since the push: ")
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("docker-run did not report the registry's bytes")?;
    assert!(
        served < 10 << 20,
        "the registry served {served} bytes for a 64 KiB read of a 16 MiB file:\n{ran}"
    );
    // Everything it made is gone: its work dir, every mount below it, and
    // every process whose command line names it.
    let work = line_after(&ran, "== registry ")
        .and_then(|l| l.split("containerd under ").nth(1))
        .map(str::trim)
        .context("docker-run did not name its work dir")?;
    assert!(work.starts_with("/tmp/hologram-docker-run."), "{work}");
    assert!(!Path::new(work).exists(), "{work} left behind");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    assert!(
        !mountinfo.contains(work),
        "mounts left under {work}:\n{mountinfo}"
    );
    for entry in fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !cmdline.contains(work),
            "process {} left running: {cmdline}",
            entry.file_name().to_string_lossy()
        );
    }
    Ok(())
}
