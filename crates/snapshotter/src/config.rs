//! The daemon's configuration: `/etc/hologram-snapshotter/config.toml` (or
//! `--config FILE`), overridden by command-line flags.
//!
//! Unknown keys are an error, not a warning: a misspelt setting (say, a
//! future `enforce`) must never be silently ignored.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/hologram-snapshotter/config.toml";
/// containerd 1.6 reports image-filesystem use for
/// `<containerd root>/io.containerd.snapshotter.v1.<name>`; living there keeps
/// kubelet's image GC working without `exports.root` (containerd ≥ 1.6.32).
pub const DEFAULT_ROOT: &str = "/var/lib/containerd/io.containerd.snapshotter.v1.hologram";
/// The socket containerd's `proxy_plugins.hologram.address` points at.
pub const DEFAULT_ADDRESS: &str = "/run/hologram-snapshotter/hologram.sock";

/// The file's contents. Every field is optional.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Snapshotter root directory (the name the seed's config uses).
    pub root_path: Option<PathBuf>,
    /// Unix socket to serve containerd's snapshots API on.
    pub address: Option<PathBuf>,
    /// Log filter, e.g. `info` or `hologram_snapshotter=debug`.
    pub log_level: Option<String>,
    /// Prometheus `/metrics` and `/healthz`: `IP:PORT`, or `off`.
    pub metrics_address: Option<String>,
    /// Lazy pulling.
    #[serde(default)]
    pub remote: RemoteSection,
    /// Prefetch profiles learned on the node.
    #[serde(default)]
    pub profiles: ProfilesSection,
    /// Witness verification.
    #[serde(default)]
    pub trust: TrustSection,
    /// Restarts that running containers do not notice.
    #[serde(default)]
    pub restart: RestartSection,
    /// The CTP-96 transport.
    #[serde(default)]
    pub ctp96: Ctp96Section,
    /// The CRI image-service proxy (Kubernetes pull secrets).
    #[serde(default)]
    pub cri: CriSection,
}

/// containerd's default socket, where the CRI proxy forwards to.
pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";

/// `[cri]`: serve the CRI `ImageService` so that the kubelet's pull secrets
/// reach lazy reads (docs/kubernetes.md). Off unless `proxy_address` is set.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CriSection {
    /// Unix socket to serve `runtime.v1.ImageService` on; the kubelet's
    /// `--image-service-endpoint` points at it (e.g.
    /// `/run/hologram-snapshotter/cri.sock`).
    pub proxy_address: Option<PathBuf>,
    /// containerd's socket, where every call is forwarded.
    pub containerd_address: PathBuf,
}

impl Default for CriSection {
    fn default() -> Self {
        CriSection {
            proxy_address: None,
            containerd_address: PathBuf::from(DEFAULT_CONTAINERD_ADDRESS),
        }
    }
}

/// `[ctp96]`: layer bytes over a CTP-96 endpoint (docs/ctp96.md).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Ctp96Section {
    /// `auto` (CTP-96 when an endpoint is set, the registry behind it),
    /// `ctp96` (CTP-96 only) or `registry` (`HOLOGRAM_NET`).
    pub network: crate::ctp96::Net,
    /// Base URL, e.g. `http://127.0.0.1:8096` (`HOLOGRAM_CTP96_ENDPOINT`).
    pub endpoint: Option<String>,
    /// Bound on one HTTP exchange with the endpoint.
    pub request_timeout_secs: u64,
    /// Extra attempts after a response that failed or was rejected.
    pub retries: u32,
    /// In `auto`: how long an unreachable endpoint is skipped (reads go to
    /// the registry) before it is tried again.
    pub fallback_secs: u64,
}

impl Default for Ctp96Section {
    fn default() -> Self {
        Ctp96Section {
            network: crate::ctp96::Net::Auto,
            endpoint: None,
            request_timeout_secs: 10,
            retries: 3,
            fallback_secs: 30,
        }
    }
}

impl Ctp96Section {
    /// The environment's overrides (`HOLOGRAM_NET`, `HOLOGRAM_CTP96_ENDPOINT`);
    /// an unknown `HOLOGRAM_NET` is an error.
    pub fn with_env(mut self) -> anyhow::Result<Self> {
        if let Ok(v) = std::env::var("HOLOGRAM_NET") {
            self.network = crate::ctp96::Net::parse(&v).map_err(anyhow::Error::msg)?;
        }
        if let Ok(ep) = std::env::var("HOLOGRAM_CTP96_ENDPOINT") {
            if !ep.trim().is_empty() {
                self.endpoint = Some(ep.trim().to_owned());
            }
        }
        Ok(self)
    }
}

/// `[restart]`: keeping FUSE connections and the gRPC socket alive while the
/// daemon restarts (docs/RELIABILITY.md).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RestartSection {
    /// Hand the `/dev/fuse` connections and the listening socket to a holder
    /// process (`hologram-fdstore`) so a restarted daemon takes them over
    /// (`HOLOGRAM_HANDOVER=0` turns it off: a restart then re-mounts every
    /// layer, and running containers' reads fail with ENOTCONN).
    pub handover: bool,
    /// How long the holder waits for a daemon to come back before it aborts
    /// the connections it holds (readers then get ENOTCONN instead of
    /// waiting) and exits.
    pub holder_grace_secs: u64,
    /// The holder's executable (default: `hologram-fdstore` next to the
    /// daemon's own).
    pub holder_binary: Option<PathBuf>,
}

impl Default for RestartSection {
    fn default() -> Self {
        RestartSection {
            handover: true,
            holder_grace_secs: 60,
            holder_binary: None,
        }
    }
}

impl RestartSection {
    /// The environment's override (`HOLOGRAM_HANDOVER`).
    pub fn with_env(mut self) -> Self {
        if let Some(v) = env_flag("HOLOGRAM_HANDOVER") {
            self.handover = v;
        }
        self
    }
}

/// `[trust]`: verify image witnesses before layers are used.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TrustSection {
    /// Fail closed (`HOLOGRAM_ENFORCE=1`): refuse layers whose image has no
    /// verified witness, and layers with no provenance at all.
    pub enforce: bool,
    /// Witness endpoint base URL (`HOLOGRAM_WITNESS_ENDPOINT`).
    pub witness_endpoint: Option<String>,
    /// Directory of witness envelopes (any file names).
    pub witness_dir: Option<PathBuf>,
    /// PEM public keys (Ed25519 or ECDSA P-256) whose witnesses are trusted.
    pub trusted_keys: Vec<PathBuf>,
    /// Provenance labels on snapshots and debug logs (`HOLOGRAM_VERBOSE=1`).
    pub verbose: bool,
    /// Look for witnesses attached to the manifest in the registry (OCI
    /// referrers, tag schema), as `hologram witness sign --attach` stores them.
    pub referrers: bool,
}

impl Default for TrustSection {
    fn default() -> Self {
        TrustSection {
            enforce: false,
            witness_endpoint: None,
            witness_dir: None,
            trusted_keys: Vec::new(),
            verbose: false,
            referrers: true,
        }
    }
}

impl TrustSection {
    /// The environment's overrides (the seed's variables).
    pub fn with_env(mut self) -> Self {
        if let Some(v) = env_flag("HOLOGRAM_ENFORCE") {
            self.enforce = v;
        }
        if let Some(v) = env_flag("HOLOGRAM_VERBOSE") {
            self.verbose = v;
        }
        if let Ok(ep) = std::env::var("HOLOGRAM_WITNESS_ENDPOINT") {
            if !ep.trim().is_empty() {
                self.witness_endpoint = Some(ep.trim().to_owned());
            }
        }
        self
    }

    /// Whether any verification is asked for.
    pub fn active(&self) -> bool {
        self.enforce
            || self.witness_endpoint.is_some()
            || self.witness_dir.is_some()
            || !self.trusted_keys.is_empty()
    }
}

/// `[remote]`: lazily served layers.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteSection {
    /// Serve eStargz layers lazily (otherwise every layer is unpacked).
    pub enabled: bool,
    /// Bound on one fetch, retries included: a read of data the registry
    /// does not deliver fails with EIO after this long.
    pub fetch_timeout_secs: u64,
    /// Per-request timeout of the registry client.
    pub request_timeout_secs: u64,
    /// How long, ms, a failed fetch of a chunk is remembered: the kernel
    /// retries a failed read at once, and the retries fail at once too
    /// instead of each waiting `fetch_timeout_secs` again (0 = retry every
    /// time).
    pub failure_memory_ms: u64,
    /// A read that must fetch also fetches the adjacent chunks after it, up
    /// to this many KiB, in the same request (0: only what is read).
    pub readaround_kib: u64,
    /// A read that fetches also fetches the other files of the same
    /// directory lying next to it in the blob, up to this many KiB, in the
    /// same request (0: off).
    pub dir_readaround_kib: u64,
    /// A read that fetches in a file larger than the read-around also
    /// fetches up to this many KiB of the file after it, in the
    /// background, in parallel pieces (0: off).
    pub file_ahead_kib: u64,
    /// The first read that fetches in a directory also fetches that
    /// directory's other small files, up to this many KiB, in the
    /// background, in parallel pieces (0: off).
    pub dir_ahead_kib: u64,
    /// Fetch files before the eStargz prefetch landmark at mount
    /// (`HOLOGRAM_PREFETCH=0` turns it off).
    pub prefetch: bool,
    /// Fetch the rest of each layer in the background
    /// (`HOLOGRAM_BACKGROUND_FETCH=0` turns it off).
    pub background_fetch: bool,
    /// Background fetch starts, and resumes, only after on-demand reads
    /// have been quiet this long, ms (on-demand reads first).
    pub background_quiet_ms: u64,
    /// Background fetch rate limit per layer, MiB/s (0 = unlimited).
    pub background_fetch_mib_per_sec: u64,
    /// On-disk chunk cache size limit, MiB.
    pub cache_size_mib: u64,
    /// FUSE worker threads per layer.
    pub fuse_threads: usize,
    /// containerd's hosts.toml directory (mirrors, plain-HTTP hosts, CAs).
    pub hosts_dir: Option<PathBuf>,
    /// Docker config.json with registry credentials.
    pub docker_config: Option<PathBuf>,
    /// Talk plain HTTP to registries not configured in hosts_dir (test setups).
    pub plain_http: bool,
    /// Most TOC entries (files, directories, chunks) of one lazily served
    /// layer; a layer with more is unpacked instead (loudly).
    pub max_toc_entries: usize,
    /// Most memory, MiB, the indexes of all lazily served layers may take
    /// together (about 150 bytes per TOC entry); a layer that would go over
    /// is unpacked instead (loudly).
    pub index_memory_mib: u64,
}

impl Default for RemoteSection {
    fn default() -> Self {
        RemoteSection {
            enabled: true,
            fetch_timeout_secs: 30,
            request_timeout_secs: 10,
            failure_memory_ms: 2000,
            readaround_kib: 64,
            dir_readaround_kib: 0,
            file_ahead_kib: 0,
            dir_ahead_kib: 0,
            prefetch: true,
            background_fetch: true,
            background_fetch_mib_per_sec: 32,
            background_quiet_ms: 500,
            cache_size_mib: 10 * 1024,
            fuse_threads: 4,
            hosts_dir: Some(PathBuf::from(hologram_remote::DEFAULT_HOSTS_DIR)),
            docker_config: None,
            plain_http: false,
            max_toc_entries: 500_000,
            index_memory_mib: 512,
        }
    }
}

/// `[profiles]`: prefetch profiles learned on the node (docs/ARCHITECTURE.md
/// "Prefetch profiles").
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilesSection {
    /// The first run of a layer without a profile (and without a prefetch
    /// landmark) learns the order its chunks are read in and stores it
    /// under `<root>/profiles`.
    pub learn: bool,
    /// A mount of a layer with a profile prefetches in its order.
    pub apply: bool,
    /// How long after a layer's first read the learning lasts, seconds.
    pub learn_window_secs: u64,
    /// Read-only directories searched for `<layer digest hex>.json` after
    /// the node's own (profiles shared between nodes).
    pub shared_dirs: Vec<PathBuf>,
}

impl Default for ProfilesSection {
    fn default() -> Self {
        ProfilesSection {
            learn: true,
            apply: true,
            learn_window_secs: 30,
            shared_dirs: Vec::new(),
        }
    }
}

impl ProfilesSection {
    /// `HOLOGRAM_PROFILES=0` turns learning and applying off.
    pub fn with_env(mut self) -> Self {
        if env_flag("HOLOGRAM_PROFILES") == Some(false) {
            self.learn = false;
            self.apply = false;
        }
        self
    }
}

/// Reads `0`/`false`/`off`/`no` (and their opposites) from the environment.
fn env_flag(name: &str) -> Option<bool> {
    match std::env::var(name)
        .ok()?
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "0" | "false" | "off" | "no" => Some(false),
        "1" | "true" | "on" | "yes" => Some(true),
        _ => None,
    }
}

impl RemoteSection {
    /// The environment's overrides (`HOLOGRAM_PREFETCH`, `HOLOGRAM_BACKGROUND_FETCH`).
    pub fn with_env(mut self) -> Self {
        if let Some(v) = env_flag("HOLOGRAM_PREFETCH") {
            self.prefetch = v;
        }
        if let Some(v) = env_flag("HOLOGRAM_BACKGROUND_FETCH") {
            self.background_fetch = v;
        }
        self
    }
}

impl FileConfig {
    /// Reads `path`. A missing file is an empty config only when `required`
    /// is false (the default path); an explicit `--config` must exist.
    pub fn load(path: &Path, required: bool) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(FileConfig::default())
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read config {}", path.display()))
            }
        };
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
    }
}

/// The settings the daemon runs with, after flags override the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub root: PathBuf,
    pub address: PathBuf,
    pub log_level: String,
    pub metrics_address: String,
    pub remote: RemoteSection,
    pub profiles: ProfilesSection,
    pub trust: TrustSection,
    pub restart: RestartSection,
    pub ctp96: Ctp96Section,
    pub cri: CriSection,
}

impl Config {
    /// Flags (`Some`) win over the file, the file over the defaults.
    pub fn resolve(
        file: FileConfig,
        root: Option<PathBuf>,
        address: Option<PathBuf>,
        log_level: Option<String>,
        metrics_address: Option<String>,
    ) -> Self {
        Config {
            root: root
                .or(file.root_path)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
            address: address
                .or(file.address)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ADDRESS)),
            log_level: log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_owned()),
            metrics_address: metrics_address
                .or(file.metrics_address)
                .unwrap_or_else(|| hologram_telemetry::DEFAULT_METRICS_ADDRESS.to_owned()),
            remote: file.remote,
            profiles: file.profiles.with_env(),
            trust: file.trust,
            restart: file.restart.with_env(),
            ctp96: file.ctp96,
            cri: file.cri,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The config the DaemonSet's ConfigMap ships is one this daemon takes.
    #[test]
    fn deploy_configmap_config_parses() {
        let yaml = include_str!("../../../deploy/configmap.yaml");
        let start = yaml.find("config.toml: |\n").unwrap() + "config.toml: |\n".len();
        let toml_text: String = yaml[start..]
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let file: FileConfig = toml::from_str(&toml_text).unwrap();
        let c = Config::resolve(file, None, None, None, None);
        assert_eq!(
            c.cri.proxy_address.as_deref(),
            Some(Path::new("/run/hologram-snapshotter/cri.sock"))
        );
        assert_eq!(c.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(c.metrics_address, "0.0.0.0:8080");
    }

    #[test]
    fn flags_win_over_file_over_defaults() {
        let file: FileConfig =
            toml::from_str("root_path = \"/from/file\"\nlog_level = \"debug\"").unwrap();
        let c = Config::resolve(file.clone(), None, None, None, None);
        assert_eq!(c.root, PathBuf::from("/from/file"));
        assert_eq!(c.address, PathBuf::from(DEFAULT_ADDRESS));
        assert_eq!(c.log_level, "debug");
        let c = Config::resolve(
            file,
            Some("/flag".into()),
            Some("/s.sock".into()),
            Some("warn".into()),
            None,
        );
        assert_eq!(
            (c.root, c.address, c.log_level),
            ("/flag".into(), "/s.sock".into(), "warn".to_owned())
        );
        let c = Config::resolve(FileConfig::default(), None, None, None, None);
        assert_eq!(c.root, PathBuf::from(DEFAULT_ROOT));
    }

    #[test]
    fn unknown_keys_and_bad_files_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(&p, "root_pth = \"/x\"\n").unwrap();
        let e = format!("{:#}", FileConfig::load(&p, true).unwrap_err());
        assert!(e.contains("root_pth"), "{e}");
        std::fs::write(&p, "root_path = [").unwrap();
        assert!(FileConfig::load(&p, true).is_err());
        std::fs::write(&p, "[remote]\nprefetch = false\ncache_size_mb = 3\n").unwrap();
        let e = format!("{:#}", FileConfig::load(&p, true).unwrap_err());
        assert!(e.contains("cache_size_mb"), "{e}");
        std::fs::write(
            &p,
            "[ctp96]\nnetwork = \"ctp96\"\nendpoint = \"http://127.0.0.1:8096\"\n",
        )
        .unwrap();
        let f = FileConfig::load(&p, true).unwrap();
        assert_eq!(f.ctp96.network, crate::ctp96::Net::Ctp96);
        assert_eq!(f.ctp96.endpoint.as_deref(), Some("http://127.0.0.1:8096"));
        assert_eq!(f.ctp96.retries, 3, "unset keys keep their defaults");
        std::fs::write(&p, "[ctp96]\nnetwork = \"p2p\"\n").unwrap();
        assert!(FileConfig::load(&p, true).is_err());
        std::fs::write(&p, "[remote]\nprefetch = false\n").unwrap();
        let f = FileConfig::load(&p, true).unwrap();
        assert!(!f.remote.prefetch);
        assert!(f.remote.background_fetch, "unset keys keep their defaults");
        let missing = d.path().join("none.toml");
        assert_eq!(
            FileConfig::load(&missing, false).unwrap(),
            FileConfig::default()
        );
        assert!(FileConfig::load(&missing, true).is_err());
    }
}
