//! The 3-layer test image: built by `scripts/mkimage.py`, pushed with skopeo.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::run_with_timeout;
use crate::registry::Registry;
use crate::util::workspace_root;

/// Repository and tag of the test image in the registry.
pub const REPOSITORY: &str = "e2e/layers";
pub const TAG: &str = "1";

/// Content the image's layers put in place (mirrors scripts/mkimage.py).
pub mod content {
    pub const KEEP_V3: &str = "keep v3 (layer 3)";
    pub const LAYER2: &str = "added in layer 2";
    pub const NOW_A_FILE: &str = "now a file";
    pub const DEFAULT_CMD_OUTPUT: &str = "hello-from-hologram\n";
}

/// Shell script run inside a container of the test image; prints one
/// `key=value` line per property of the merged root filesystem.
pub const ROOTFS_CHECK_SCRIPT: &str = r#"
echo "gone=$(test -e /data/gone.txt && echo present || echo absent)"
echo "keep=$(cat /data/keep.txt)"
echo "data=$(ls -A /data | xargs)"
echo "opaque=$(find /opaque | sort | xargs)"
echo "replaced=$(stat -c %F /replaced):$(cat /replaced)"
echo "secret=$(stat -c %a:%u:%g /data/secret.txt)"
echo "link=$(readlink /data/link-to-keep):$(cat /data/link-to-keep)"
if [ "$(stat -c %i /data/layer2.txt)" = "$(stat -c %i /data/hard.txt)" ]; then same=same-inode; else same=different-inode; fi
echo "hard=$(stat -c %h /data/layer2.txt):$(stat -c %h /data/hard.txt):$same"
echo "layer2=$(cat /data/hard.txt)"
echo "tmp=$(stat -c %a:%u:%g /tmp)"
echo "rootdir=$(stat -c %a /root)"
echo "passwd=$(cat /etc/passwd)"
echo "id=$(id -u):$(id -g)"
"#;

/// What `ROOTFS_CHECK_SCRIPT` must print for a correctly unpacked image.
pub fn expected_rootfs_report() -> String {
    [
        "gone=absent",
        "keep=keep v3 (layer 3)",
        "data=hard.txt keep.txt layer2.txt link-to-keep secret.txt",
        "opaque=/opaque /opaque/new.txt",
        "replaced=regular file:now a file",
        "secret=640:1000:1000",
        "link=keep.txt:keep v3 (layer 3)",
        "hard=2:2:same-inode",
        "layer2=added in layer 2",
        "tmp=1777:0:0",
        "rootdir=700",
        "passwd=root:x:0:0:root:/root:/bin/sh",
        "id=0:0",
        "",
    ]
    .join("\n")
}

/// The pushed image and the digests that containerd derives from it.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// "127.0.0.1:PORT/e2e/layers:1"
    pub reference: String,
    /// The OCI layout it was built in.
    pub layout: PathBuf,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Compressed layer blob digests, bottom first.
    pub layers: Vec<String>,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<String>,
    /// Chain IDs, bottom first: the names of the committed snapshots.
    pub chain_ids: Vec<String>,
}

fn string_list(v: &serde_json::Value, key: &str) -> Result<Vec<String>> {
    v.get(key)
        .and_then(|x| x.as_array())
        .with_context(|| format!("mkimage summary lacks array {key}"))?
        .iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .with_context(|| format!("non-string in {key}"))
        })
        .collect()
}

fn string_field(v: &serde_json::Value, key: &str) -> Result<String> {
    v.get(key)
        .and_then(|x| x.as_str())
        .map(str::to_string)
        .with_context(|| format!("mkimage summary lacks {key}"))
}

/// Builds the OCI layout in `layout` with `scripts/mkimage.py`.
pub fn build_layout(layout: &Path) -> Result<serde_json::Value> {
    let script = workspace_root().join("scripts").join("mkimage.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(layout).arg(TAG);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing mkimage.py summary")
}

/// Builds the test image in `workdir/layout` and pushes it to `registry`
/// as `<addr>/e2e/layers:1`.
pub fn build_and_push(registry: &Registry, workdir: &Path) -> Result<TestImage> {
    let layout = workdir.join("layout");
    let summary = build_layout(&layout)?;
    let reference = format!("{}/{REPOSITORY}:{TAG}", registry.addr());
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy")
        .arg("copy")
        .arg("--dest-tls-verify=false")
        .arg(format!("oci:{}:{TAG}", layout.display()))
        .arg(format!("docker://{reference}"));
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        bail!(
            "skopeo copy to {reference} failed ({}):\n{}\n{}\n--- registry log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            crate::util::tail(registry.log(), 20)
        );
    }
    Ok(TestImage {
        reference,
        layout,
        manifest_digest: string_field(&summary, "manifest_digest")?,
        config_digest: string_field(&summary, "config_digest")?,
        layers: string_list(&summary, "layers")?,
        diff_ids: string_list(&summary, "diff_ids")?,
        chain_ids: string_list(&summary, "chain_ids")?,
    })
}
