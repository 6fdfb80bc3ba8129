//! Lazy pulling: a world with a restartable registry, the daemon with a
//! `[remote]` config, containerd, and wrappers for the `hologram` CLI
//! (`convert`, `pull`, `status`), FUSE mounts, views and in-container reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::containerd::{Containerd, CriSettings, SNAPSHOTTER};
use crate::cri::CriClient;
use crate::env::{mount_printed, MountGuard, REQUIRED_TOOLS};
use crate::mounts::unmount_under;
use crate::process::run_with_timeout;
use crate::registry::http_get;
use crate::snapshotter::Snapshotter;
use crate::stoppable_registry::StoppableRegistry;
use crate::util::{require_tools, short_tempdir, tail, workspace_root};

/// The daemon config of the lazy tests: plain-HTTP registry, a 5 s bound
/// on fetches, no background fetch (so byte counts measure on-demand reads).
pub const LAZY_CONFIG: &str = "[remote]\n\
plain_http = true\n\
fetch_timeout_secs = 5\n\
background_fetch = false\n\
prefetch = true\n\
cache_size_mib = 1024\n";

/// How long one `hologram` CLI call may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(300);

/// Locates the `hologram` CLI: `$HOLOGRAM_BIN`, else
/// `<workspace>/target/debug/hologram`, else `<workspace>/build/hologram`.
/// (`target/debug` first: `cargo build --bins` refreshes it, a `build/` copy
/// is only refreshed by `make build`.)
pub fn hologram_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("HOLOGRAM_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("HOLOGRAM_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let ws = workspace_root();
    let candidates = [
        ws.join("target").join("debug").join("hologram"),
        ws.join("build").join("hologram"),
    ];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    bail!(
        "hologram CLI not found (looked at $HOLOGRAM_BIN, {}, {}); run `cargo build --bins` first",
        candidates[0].display(),
        candidates[1].display()
    )
}

/// Runs `hologram <args>` with a timeout; returns its output whatever the
/// exit status.
pub fn hologram(args: &[&str], timeout: Duration) -> Result<Output> {
    let mut cmd = Command::new(hologram_bin()?);
    cmd.args(args);
    run_with_timeout(&mut cmd, timeout)
}

/// Runs `hologram <args>`; stdout, or an error with stdout and stderr.
pub fn hologram_ok(args: &[&str], timeout: Duration) -> Result<String> {
    let out = hologram(args, timeout)?;
    if !out.status.success() {
        bail!(
            "`hologram {}` failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The summary `hologram pull` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSummary {
    pub image: String,
    pub manifest_digest: String,
    pub layers: usize,
    pub lazy: usize,
    pub unpacked: usize,
    pub present: usize,
    /// `(layer digest, reason)` of every `  not lazy:` line.
    pub not_lazy: Vec<(String, String)>,
    pub text: String,
}

fn number_before(s: &str, what: &str) -> Result<usize> {
    let i = s
        .find(what)
        .with_context(|| format!("no {what:?} in {s:?}"))?;
    let head = s[..i].trim_end();
    let num = head
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap_or_default();
    num.parse()
        .with_context(|| format!("no number before {what:?} in {s:?}"))
}

/// Parses `REF (sha256:…): N layers: L mounted lazily, U unpacked, P
/// already present; fetched …` and the `  not lazy: DIGEST: REASON` lines.
pub fn parse_pull_summary(out: &str) -> Result<PullSummary> {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().context("empty `hologram pull` output")?;
    let (image, rest) = first
        .split_once(" (")
        .with_context(|| format!("unexpected summary {first:?}"))?;
    let (digest, counts) = rest
        .split_once("): ")
        .with_context(|| format!("unexpected summary {first:?}"))?;
    let mut not_lazy = Vec::new();
    for l in lines {
        let Some(r) = l.trim_start().strip_prefix("not lazy: ") else {
            bail!("unexpected line in `hologram pull` output: {l:?}");
        };
        let (d, why) = r
            .split_once(": ")
            .with_context(|| format!("unexpected not-lazy line {l:?}"))?;
        not_lazy.push((d.to_owned(), why.to_owned()));
    }
    Ok(PullSummary {
        image: image.to_owned(),
        manifest_digest: digest.to_owned(),
        layers: number_before(counts, " layers:")?,
        lazy: number_before(counts, " mounted lazily")?,
        unpacked: number_before(counts, " unpacked")?,
        present: number_before(counts, " already present")?,
        not_lazy,
        text: out.to_owned(),
    })
}

/// One FUSE mount from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuseMount {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// FUSE mounts (fstype `fuse` or `fuse.*`) at or below `dir`.
pub fn fuse_mounts_under(dir: &Path) -> Result<Vec<FuseMount>> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let (Some(fstype), Some(source)) = (r.next(), r.next()) else {
            continue;
        };
        let mp = PathBuf::from(mp.replace("\\040", " "));
        if (fstype == "fuse" || fstype.starts_with("fuse.")) && mp.starts_with(&dir) {
            out.push(FuseMount {
                mountpoint: mp,
                fstype: fstype.to_owned(),
                source: source.to_owned(),
            });
        }
    }
    Ok(out)
}

/// sha256 of `data` as `sha256:<hex>`.
pub fn sha256_digest(data: &[u8]) -> String {
    let h = Sha256::digest(data);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in h {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// containerd's chain IDs of a list of diff IDs.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// `host:port`, repository and tag of `127.0.0.1:PORT/repo/name:tag`.
pub fn split_reference(reference: &str) -> Result<(String, String, String)> {
    let (host, rest) = reference
        .split_once('/')
        .with_context(|| format!("no host in {reference:?}"))?;
    let (repo, tag) = rest
        .rsplit_once(':')
        .with_context(|| format!("no tag in {reference:?}"))?;
    Ok((host.to_owned(), repo.to_owned(), tag.to_owned()))
}

/// One layer descriptor of a manifest.
#[derive(Debug, Clone)]
pub struct LayerDesc {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub annotations: BTreeMap<String, String>,
}

/// What the registry says about an image.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    pub reference: String,
    pub manifest_digest: String,
    pub manifest: serde_json::Value,
    pub config: serde_json::Value,
    pub layers: Vec<LayerDesc>,
    pub diff_ids: Vec<String>,
    pub chain_ids: Vec<String>,
}

impl ImageFacts {
    /// Sum of the compressed layer sizes.
    pub fn layer_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// The chain ID of the top layer.
    pub fn top_chain_id(&self) -> Result<&str> {
        self.chain_ids
            .last()
            .map(String::as_str)
            .context("image without layers")
    }
}

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifest (single-platform), config, layers and chain IDs of `reference`,
/// read from the registry over plain HTTP.
pub fn image_facts(reference: &str) -> Result<ImageFacts> {
    let (host, repo, tag) = split_reference(reference)?;
    let resp = http_get(
        &host,
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Accept", ACCEPT)],
    )?;
    if resp.status != 200 {
        bail!(
            "GET manifest of {reference}: {} {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        );
    }
    let manifest_digest = sha256_digest(&resp.body);
    let manifest: serde_json::Value =
        serde_json::from_slice(&resp.body).context("manifest JSON")?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .context("manifest without config digest")?;
    let cresp = http_get(&host, &format!("/v2/{repo}/blobs/{config_digest}"), &[])?;
    if cresp.status != 200 {
        bail!("GET config of {reference}: {}", cresp.status);
    }
    let config: serde_json::Value = serde_json::from_slice(&cresp.body).context("config JSON")?;
    let mut layers = Vec::new();
    for l in manifest["layers"].as_array().context("manifest layers")? {
        let annotations = l["annotations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        layers.push(LayerDesc {
            digest: l["digest"].as_str().context("layer digest")?.to_owned(),
            size: l["size"].as_u64().context("layer size")?,
            media_type: l["mediaType"].as_str().unwrap_or_default().to_owned(),
            annotations,
        });
    }
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .context("config rootfs.diff_ids")?
        .iter()
        .map(|d| d.as_str().map(str::to_owned).context("diff id"))
        .collect::<Result<_>>()?;
    Ok(ImageFacts {
        reference: reference.to_owned(),
        manifest_digest,
        manifest,
        config,
        chain_ids: chain_ids(&diff_ids),
        diff_ids,
        layers,
    })
}

/// Runs one of the python helper scripts in `scripts/`; stdout.
pub fn run_script(script: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let path = workspace_root().join("scripts").join(script);
    let mut cmd = Command::new("python3");
    cmd.arg(&path).args(args);
    let out = run_with_timeout(&mut cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            path.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Settings of a [`LazyEnv`].
#[derive(Debug, Clone)]
pub struct LazyOptions {
    /// The daemon's TOML config.
    pub config: String,
    /// `--metrics-address` (default "off").
    pub metrics_address: Option<String>,
    /// Extra environment of the daemon.
    pub env: Vec<(String, String)>,
    /// Put the chunk cache on a tmpfs of this size (`mount -o size=`), to
    /// run out of cache space (unmounted with the daemon's root).
    pub cache_tmpfs: Option<String>,
    /// Run containerd's CRI plugin as a Kubernetes node does (see
    /// [`Containerd::start_cri`]): a pause image (`scripts/mkimage.py
    /// --pause`) is pushed as `<registry>/e2e/pause:1`, and containerd and
    /// the daemon share a hosts.toml directory ([`LazyEnv::hosts_dir`],
    /// `hosts_dir` is added to the daemon's `[remote]` section).
    pub cri: bool,
}

impl Default for LazyOptions {
    fn default() -> Self {
        Self {
            config: LAZY_CONFIG.to_owned(),
            metrics_address: None,
            env: Vec::new(),
            cache_tmpfs: None,
            cri: false,
        }
    }
}

/// An image pushed to the test registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub reference: String,
    /// The builder's JSON summary.
    pub summary: serde_json::Value,
}

/// Registry + daemon (with `[remote]` config) + containerd. Field order is
/// drop order; our own view mounts (below `<dir>/mnt`) go first.
pub struct LazyEnv {
    pub containerd: Containerd,
    pub snapshotter: Snapshotter,
    pub registry: StoppableRegistry,
    hosts_dir: PathBuf,
    dir: TempDir,
}

/// The daemon's CRI proxy socket in a CRI env's directory.
const CRI_PROXY_SOCKET: &str = "cri.sock";
/// A link to containerd's socket in a CRI env's directory.
const CONTAINERD_LINK: &str = "ctd.sock";

/// Repository and tag of the CRI envs' pause image.
pub const PAUSE_REPO_TAG: &str = "e2e/pause:1";

/// Writes `<hosts_dir>/<host>_<port>_/hosts.toml` for the plain-HTTP
/// registry `addr` ("127.0.0.1:PORT"), with `mirrors` ("127.0.0.1:PORT",
/// plain HTTP, pull and resolve) tried first, as containerd's CRI and the
/// daemon both read it.
pub fn write_hosts_toml(hosts_dir: &Path, addr: &str, mirrors: &[&str]) -> Result<PathBuf> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("no port in {addr}"))?;
    let d = hosts_dir.join(format!("{host}_{port}_"));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let mut toml = format!("server = \"http://{addr}\"\n");
    for m in mirrors {
        toml.push_str(&format!(
            "\n[host.\"http://{m}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ));
    }
    toml.push_str(&format!(
        "\n[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n"
    ));
    let file = d.join("hosts.toml");
    std::fs::write(&file, toml).with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}

/// `config` (a daemon TOML config) with `key = "value"` set in its
/// `[remote]` section (added when missing).
pub fn with_remote_key(config: &str, key: &str, value: &str) -> String {
    let line = format!("{key} = {value:?}\n");
    if config.contains("[remote]\n") {
        config.replacen("[remote]\n", &format!("[remote]\n{line}"), 1)
    } else {
        format!("{config}\n[remote]\n{line}")
    }
}

impl LazyEnv {
    /// With [`LAZY_CONFIG`] and no metrics endpoint.
    pub fn start() -> Result<Self> {
        Self::start_with(LazyOptions::default())
    }

    pub fn start_with(opts: LazyOptions) -> Result<Self> {
        require_tools(REQUIRED_TOOLS)?;
        hologram_bin()?;
        let dir = short_tempdir("hg-lazy-")?;
        let registry = StoppableRegistry::start()?;
        let root = dir.path().join("sn");
        let socket = dir.path().join("sn.sock");
        let hosts_dir = dir.path().join("certs.d");
        let mut config = opts.config.clone();
        if opts.cri {
            write_hosts_toml(&hosts_dir, registry.addr(), &[])?;
            config = with_remote_key(&config, "hosts_dir", &hosts_dir.display().to_string());
            // The daemon's CRI credentials proxy, forwarding to containerd
            // through a link made once containerd runs.
            config.push_str(&format!(
                "\n[cri]\nproxy_address = {:?}\ncontainerd_address = {:?}\n",
                dir.path().join(CRI_PROXY_SOCKET).display().to_string(),
                dir.path().join(CONTAINERD_LINK).display().to_string(),
            ));
        }
        let mut snapshotter = Snapshotter::new(&root, &socket)?;
        snapshotter.write_config(&config)?;
        if let Some(m) = &opts.metrics_address {
            snapshotter.set_metrics_address(m);
        }
        for (k, v) in &opts.env {
            snapshotter.set_env(k, v);
        }
        if let Some(size) = &opts.cache_tmpfs {
            let chunks = root.join("cache/chunks");
            std::fs::create_dir_all(&chunks)
                .with_context(|| format!("creating {}", chunks.display()))?;
            let out = std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size}"),
                    "hologram-e2e-cache",
                ])
                .arg(&chunks)
                .output()
                .context("mount -t tmpfs")?;
            if !out.status.success() {
                bail!(
                    "mounting a tmpfs at {}: {}",
                    chunks.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        snapshotter.start_again()?;
        let mut containerd = if opts.cri {
            let layout = dir.path().join("pause-layout");
            let layout_s = layout.display().to_string();
            run_script(
                "mkimage.py",
                &[&layout_s, "pause", "--pause"],
                Duration::from_secs(60),
            )?;
            let sandbox_image = push_layout_to(registry.addr(), &layout, "pause", PAUSE_REPO_TAG)?;
            Containerd::start_cri(
                &socket,
                &CriSettings {
                    sandbox_image,
                    hosts_dir: hosts_dir.clone(),
                },
            )?
        } else {
            Containerd::start(&socket)?
        };
        containerd.attach_log("hologram-snapshotter", snapshotter.log());
        if opts.cri {
            let link = dir.path().join(CONTAINERD_LINK);
            std::os::unix::fs::symlink(containerd.address(), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        Ok(Self {
            containerd,
            snapshotter,
            registry,
            hosts_dir,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The containerd certs.d directory containerd's CRI and the daemon
    /// read (written only with [`LazyOptions::cri`]).
    pub fn hosts_dir(&self) -> &Path {
        &self.hosts_dir
    }

    /// The pause image of a CRI env.
    pub fn pause_image(&self) -> String {
        format!("{}/{PAUSE_REPO_TAG}", self.registry.addr())
    }

    /// A CRI client on this env's containerd (which must run its CRI
    /// plugin), as the kubelet connects with `--container-runtime-endpoint`.
    pub fn cri(&self) -> Result<CriClient> {
        CriClient::connect(self.containerd.address(), &self.dir().join("pods"))
    }

    /// A CRI client whose image service is `image_socket` (the daemon's
    /// CRI credentials proxy, as `--image-service-endpoint` points at it).
    pub fn cri_via(&self, image_socket: &Path) -> Result<CriClient> {
        CriClient::connect_split(
            self.containerd.address(),
            image_socket,
            &self.dir().join("pods"),
        )
    }

    /// The daemon's CRI image-service proxy (a CRI env's daemon serves it).
    pub fn cri_proxy_socket(&self) -> PathBuf {
        self.dir().join(CRI_PROXY_SOCKET)
    }

    /// A CRI client as a kubelet with `--image-service-endpoint` at the
    /// daemon's proxy: images through the proxy, the rest to containerd.
    pub fn cri_proxied(&self) -> Result<CriClient> {
        self.cri_via(&self.cri_proxy_socket())
    }

    /// `hologram pull` with extra environment variables (`DOCKER_CONFIG`,
    /// `PATH` for credential helpers), whatever the outcome.
    pub fn hologram_pull_env(&self, reference: &str, env: &[(&str, &str)]) -> Result<Output> {
        let address = self.containerd.address().display().to_string();
        let socket = self.snapshotter.socket().display().to_string();
        let mut cmd = Command::new(hologram_bin()?);
        cmd.args([
            "pull",
            "--address",
            &address,
            "-n",
            self.containerd.namespace(),
            "--plain-http",
            "--snapshotter",
            SNAPSHOTTER,
            "--snapshotter-socket",
            &socket,
            "--check-timeout",
            "120",
            reference,
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_with_timeout(&mut cmd, CLI_TIMEOUT)
    }

    /// Builds `scripts/mkimage.py` with `args` (e.g. `--big-file 16`) and
    /// pushes it.
    pub fn push_mkimage_with(&self, args: &[&str], repo_tag: &str) -> Result<Pushed> {
        static N: AtomicU32 = AtomicU32::new(0);
        let layout = self
            .dir()
            .join(format!("layout-x{}", N.fetch_add(1, Ordering::Relaxed)));
        let layout_s = layout.display().to_string();
        let mut full = vec![layout_s.as_str(), "img"];
        full.extend_from_slice(args);
        let out = run_script("mkimage.py", &full, Duration::from_secs(120))?;
        let summary: serde_json::Value =
            serde_json::from_str(&out).context("mkimage.py summary")?;
        let reference = self.push_layout(&layout, "img", repo_tag)?;
        Ok(Pushed { reference, summary })
    }

    /// `ctr <args>` in the test namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        self.containerd.ctr(args)
    }

    /// `skopeo copy oci:LAYOUT:TAG docker://<registry>/<repo_tag>`,
    /// keeping the manifest byte for byte; returns the reference.
    pub fn push_layout(&self, layout: &Path, layout_tag: &str, repo_tag: &str) -> Result<String> {
        push_layout_to(self.registry.addr(), layout, layout_tag, repo_tag)
    }

    /// Builds `scripts/mkimage.py` (with `--xattrs`: 4 layers) and pushes it.
    pub fn push_mkimage(&self, xattrs: bool, repo_tag: &str) -> Result<Pushed> {
        static N: AtomicU32 = AtomicU32::new(0);
        let layout = self
            .dir()
            .join(format!("layout{}", N.fetch_add(1, Ordering::Relaxed)));
        let layout_s = layout.display().to_string();
        let mut args = vec![layout_s.as_str(), "img"];
        if xattrs {
            args.push("--xattrs");
        }
        let out = run_script("mkimage.py", &args, Duration::from_secs(60))?;
        let summary: serde_json::Value =
            serde_json::from_str(&out).context("mkimage.py summary")?;
        let reference = self.push_layout(&layout, "img", repo_tag)?;
        Ok(Pushed { reference, summary })
    }

    /// Builds a hand-made hostile eStargz image (`scripts/estargz.py
    /// hostile --variant VARIANT`) and pushes it.
    pub fn push_hostile(&self, variant: &str, repo_tag: &str) -> Result<Pushed> {
        let layout = self.dir().join(format!("hostile-{variant}"));
        let layout_s = layout.display().to_string();
        let out = run_script(
            "estargz.py",
            &["hostile", &layout_s, "img", "--variant", variant],
            Duration::from_secs(60),
        )?;
        let summary: serde_json::Value =
            serde_json::from_str(&out).context("estargz.py summary")?;
        let reference = self.push_layout(&layout, "img", repo_tag)?;
        Ok(Pushed { reference, summary })
    }

    /// Builds an image with `scripts/estargz.py hostile ARGS...` (see its
    /// help: `--passwd`, `--claim-diff-id`, `--annotate`, ...) and pushes it.
    pub fn push_crafted(&self, repo_tag: &str, args: &[&str]) -> Result<Pushed> {
        static N: AtomicU32 = AtomicU32::new(0);
        let layout = self
            .dir()
            .join(format!("crafted{}", N.fetch_add(1, Ordering::Relaxed)));
        let layout_s = layout.display().to_string();
        let mut full = vec!["hostile", layout_s.as_str(), "img"];
        full.extend_from_slice(args);
        let out = run_script("estargz.py", &full, Duration::from_secs(120))?;
        let summary: serde_json::Value =
            serde_json::from_str(&out).context("estargz.py summary")?;
        let reference = self.push_layout(&layout, "img", repo_tag)?;
        Ok(Pushed { reference, summary })
    }

    /// Prepare sent straight to the daemon's socket (as containerd's
    /// metadata layer would forward it): the mounts, or the refusal.
    pub fn prepare_direct(
        &self,
        key: &str,
        parent: &str,
        labels: &[(&str, &str)],
    ) -> Result<std::result::Result<usize, tonic::Status>> {
        crate::snapshotter::prepare_direct(
            self.snapshotter.socket(),
            key,
            parent,
            labels,
            Duration::from_secs(300),
        )
    }

    /// `hologram convert --plain-http SRC DST` (`extra` goes before SRC).
    pub fn convert(&self, src: &str, dst: &str, extra: &[&str]) -> Result<String> {
        let mut args = vec!["convert", "--plain-http"];
        args.extend_from_slice(extra);
        args.push(src);
        args.push(dst);
        hologram_ok(&args, CLI_TIMEOUT).with_context(|| self.diagnostics())
    }

    /// `hologram pull` through our containerd, whatever the outcome.
    pub fn hologram_pull_raw(&self, reference: &str) -> Result<Output> {
        self.hologram_pull_in(self.containerd.namespace(), reference)
    }

    /// `hologram pull` into namespace `ns`, whatever the outcome.
    pub fn hologram_pull_in(&self, ns: &str, reference: &str) -> Result<Output> {
        let address = self.containerd.address().display().to_string();
        let socket = self.snapshotter.socket().display().to_string();
        hologram(
            &[
                "pull",
                "--address",
                &address,
                "-n",
                ns,
                "--plain-http",
                "--snapshotter",
                SNAPSHOTTER,
                "--snapshotter-socket",
                &socket,
                "--check-timeout",
                "120",
                reference,
            ],
            CLI_TIMEOUT,
        )
    }

    /// `hologram pull`, which must succeed; its parsed summary.
    pub fn hologram_pull(&self, reference: &str) -> Result<PullSummary> {
        let out = self.hologram_pull_raw(reference)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "`hologram pull {reference}` failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics()
            );
        }
        parse_pull_summary(&stdout)
    }

    /// FUSE mounts below the daemon's root.
    pub fn fuse_mounts(&self) -> Result<Vec<FuseMount>> {
        fuse_mounts_under(self.snapshotter.root())
    }

    /// Checks that every layer of `facts` is a FUSE mount of the daemon
    /// (mountinfo source `hologram:<layer digest>`, below
    /// `<root>/snapshots/<id>/fs`).
    pub fn check_layers_fuse_mounted(&self, facts: &ImageFacts) -> Result<()> {
        let mounts = self.fuse_mounts()?;
        let snapshots = self
            .snapshotter
            .root()
            .canonicalize()
            .unwrap_or_else(|_| self.snapshotter.root().to_path_buf())
            .join("snapshots");
        for l in &facts.layers {
            let want = format!("hologram:{}", l.digest);
            let Some(m) = mounts.iter().find(|m| m.source == want) else {
                bail!(
                    "layer {} is not FUSE-mounted; FUSE mounts below the root: {mounts:#?}",
                    l.digest
                );
            };
            if !(m.mountpoint.starts_with(&snapshots) && m.mountpoint.ends_with("fs")) {
                bail!("unexpected mount point for {}: {m:?}", l.digest);
            }
        }
        Ok(())
    }

    /// `ctr run --rm --snapshotter hologram REF ID [CMD...]`; the
    /// container's output (see [`Containerd::run_logged`]).
    pub fn run(&self, reference: &str, id: &str, command: &[&str]) -> Result<String> {
        let mut args = vec!["--rm", "--snapshotter", SNAPSHOTTER, reference, id];
        args.extend_from_slice(command);
        self.containerd.run_logged(None, &args)
    }

    /// Starts a detached container (`sleep` as its process) on the hologram
    /// snapshotter, for `exec`.
    pub fn start_sleeper(&self, reference: &str, id: &str) -> Result<()> {
        self.ctr(&[
            "run",
            "-d",
            "--snapshotter",
            SNAPSHOTTER,
            reference,
            id,
            "/bin/sleep",
            "100000",
        ])?;
        Ok(())
    }

    /// `sha256:<hex>` of `path` in running container `id` (its
    /// `sha256sum`), or `None` when the read fails.
    pub fn exec_sha256(&self, id: &str, path: &str, timeout: Duration) -> Result<Option<String>> {
        let (out, _) = self.exec(id, &["sha256sum", path], timeout)?;
        let line = String::from_utf8_lossy(&out.stdout);
        Ok(match line.split_whitespace().next() {
            Some(hex) if out.status.success() => Some(format!("sha256:{hex}")),
            _ => None,
        })
    }

    /// `ctr tasks exec` in container `id`, bounded by `timeout`; the output
    /// (whatever the exit status) and how long it took.
    pub fn exec(
        &self,
        id: &str,
        command: &[&str],
        timeout: Duration,
    ) -> Result<(Output, Duration)> {
        static N: AtomicU32 = AtomicU32::new(0);
        let exec_id = format!("x{}", N.fetch_add(1, Ordering::Relaxed));
        let mut args = vec!["tasks", "exec", "--exec-id", &exec_id, id];
        args.extend_from_slice(command);
        let started = Instant::now();
        let out = run_with_timeout(&mut self.containerd.ctr_command(&args), timeout)
            .with_context(|| format!("ctr {}\n{}", args.join(" "), self.diagnostics()))?;
        Ok((out, started.elapsed()))
    }

    /// A snapshot on top of `chain_id` in `snapshotter`, mounted below
    /// `<dir>/mnt`. It is an active snapshot (`ctr snapshots prepare`), not
    /// a view: ctr labels prepared snapshots as GC roots but not views, and
    /// containerd's garbage collector (which runs after every pull's lease
    /// goes away) would remove an unlabelled view under our feet.
    pub fn view(&self, snapshotter: &str, chain_id: &str, key: &str) -> Result<MountGuard> {
        let target = self.dir().join("mnt").join(key);
        let target_s = target.display().to_string();
        let lines = self.ctr(&[
            "snapshots",
            "--snapshotter",
            snapshotter,
            "prepare",
            "--target",
            &target_s,
            key,
            chain_id,
        ])?;
        mount_printed(&lines, &target)
            .with_context(|| format!("mounting snapshot {key} on {chain_id} ({snapshotter})"))
    }

    /// The daemon's local copy of a layer's TOC member,
    /// `<root>/cache/tocs/<hex>`.
    pub fn toc_copy(&self, toc_digest: &str) -> Result<PathBuf> {
        let hex = toc_digest
            .strip_prefix("sha256:")
            .with_context(|| format!("not a sha256 digest: {toc_digest}"))?;
        Ok(self.snapshotter.root().join("cache/tocs").join(hex))
    }

    /// Lines of the daemon log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(self.snapshotter.log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Tails of the containerd, daemon and registry logs.
    pub fn diagnostics(&self) -> String {
        format!(
            "{}--- registry log tail ---\n{}\n",
            self.containerd.diagnostics(),
            tail(self.registry.log(), 15)
        )
    }
}

impl Drop for LazyEnv {
    fn drop(&mut self) {
        if let Err(e) = unmount_under(&self.dir.path().join("mnt")) {
            eprintln!("e2e cleanup: {e:#}");
        }
    }
}

/// `skopeo copy --preserve-digests oci:LAYOUT:TAG docker://ADDR/REPO_TAG`.
pub fn push_layout_to(
    addr: &str,
    layout: &Path,
    layout_tag: &str,
    repo_tag: &str,
) -> Result<String> {
    let reference = format!("{addr}/{repo_tag}");
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy")
        .arg("copy")
        .arg("--preserve-digests")
        .arg("--dest-tls-verify=false")
        .arg(format!("oci:{}:{layout_tag}", layout.display()))
        .arg(format!("docker://{reference}"));
    let out = run_with_timeout(&mut cmd, Duration::from_secs(600))?;
    if !out.status.success() {
        bail!(
            "skopeo copy to {reference} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(reference)
}

/// `scripts/estargz.py toc`: `{"toc_offset", "blob_size", "toc"}` of an
/// eStargz blob file, or (`region`) of a file holding only the TOC member.
pub fn read_toc(file: &Path, region: bool) -> Result<serde_json::Value> {
    let file_s = file.display().to_string();
    let mut args = vec!["toc", file_s.as_str()];
    if region {
        args.push("--region");
    }
    let out = run_script("estargz.py", &args, Duration::from_secs(60))?;
    serde_json::from_str(&out).context("estargz.py toc output")
}

/// Names of the TOC entries, in TOC order.
pub fn toc_names(toc: &serde_json::Value) -> Vec<String> {
    toc["toc"]["entries"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| e["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// String field of a JSON summary.
pub fn json_str<'a>(v: &'a serde_json::Value, key: &str) -> Result<&'a str> {
    v[key]
        .as_str()
        .with_context(|| format!("no string {key:?} in {v}"))
}

/// String list field of a JSON summary.
pub fn json_strings(v: &serde_json::Value, key: &str) -> Result<Vec<String>> {
    v[key]
        .as_array()
        .with_context(|| format!("no array {key:?} in {v}"))?
        .iter()
        .map(|x| x.as_str().map(str::to_owned).context("non-string"))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parses_pull_summary() {
        let out = "127.0.0.1:5000/e2e/x:1 (sha256:abc): 3 layers: 2 mounted lazily, 1 unpacked, 0 already present; fetched 1.9 KiB of 1009.8 KiB layer bytes in 167ms\n  not lazy: sha256:def: the hologram snapshotter did not serve it remotely (see its log)\n";
        let s = parse_pull_summary(out).unwrap();
        assert_eq!(s.image, "127.0.0.1:5000/e2e/x:1");
        assert_eq!(s.manifest_digest, "sha256:abc");
        assert_eq!((s.layers, s.lazy, s.unpacked, s.present), (3, 2, 1, 0));
        assert_eq!(s.not_lazy.len(), 1);
        assert_eq!(s.not_lazy[0].0, "sha256:def");
        assert!(s.not_lazy[0].1.contains("did not serve"));
    }

    #[test]
    fn chain_ids_and_references() {
        let c = chain_ids(&["sha256:a".into(), "sha256:b".into()]);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], sha256_digest(b"sha256:a sha256:b"));
        let (h, r, t) = split_reference("127.0.0.1:5000/e2e/layers:1").unwrap();
        assert_eq!(
            (h.as_str(), r.as_str(), t.as_str()),
            ("127.0.0.1:5000", "e2e/layers", "1")
        );
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
