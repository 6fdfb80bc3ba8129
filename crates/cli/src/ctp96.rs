//! `hologram ctp96 serve`: a CTP-96 server (`hologram_ctp96::server`) over
//! a registry (the daemon's registry client: hosts.toml, docker config
//! credentials, token auth) or a local OCI image layout.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hologram_ctp96::server::{Server, ServerConfig, Upstream, UpstreamError};
use hologram_oci::{Digest, ImageIndex, Reference};
use hologram_remote::{RegistryClient, RegistryConfig};

#[derive(clap::Subcommand, Debug)]
pub(crate) enum Ctp96Command {
    /// Serve blobs and manifests of a registry or an OCI layout over CTP-96
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on (port 0: any free port; the first line printed
    /// says which)
    #[arg(long, default_value = "127.0.0.1:8096")]
    listen: SocketAddr,
    /// The registry to serve, e.g. `https://registry-1.docker.io` or
    /// `http://127.0.0.1:5000`
    #[arg(
        long,
        value_name = "REGISTRY_URL",
        conflicts_with = "oci_layout",
        required_unless_present = "oci_layout"
    )]
    upstream: Option<String>,
    /// An OCI image layout directory to serve instead of a registry
    #[arg(long, value_name = "DIR")]
    oci_layout: Option<PathBuf>,
    /// Keep whole upstream blobs here (digest-checked) and the manifests
    /// resolved, by UOR-ID
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Most sessions at once; more are refused with a retry-after
    #[arg(long, default_value_t = 256)]
    max_sessions: usize,
    /// Lease length of a session: `300`, `90s`, `5m`, `1h`
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    lease: Duration,
    /// Fetch streams served at once; more are answered `503 busy`
    #[arg(long, default_value_t = 64)]
    fetch_slots: usize,
    /// containerd hosts.toml directory for the upstream (mirrors, CAs), as
    /// the daemon reads it
    #[arg(long, value_name = "DIR", default_value = hologram_remote::DEFAULT_HOSTS_DIR)]
    hosts_dir: PathBuf,
    /// Docker config.json with the upstream's credentials (default:
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`)
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
}

/// `300`, `300s`, `5m`, `1h` → a duration (at least 1 s).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last() {
        Some(b's') => (&s[..s.len() - 1], 1),
        Some(b'm') => (&s[..s.len() - 1], 60),
        Some(b'h') => (&s[..s.len() - 1], 3600),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 300, 90s, 5m, 1h)"))?;
    let secs = n
        .checked_mul(mult)
        .filter(|v| *v >= 1)
        .ok_or_else(|| format!("{s:?}: out of range"))?;
    Ok(Duration::from_secs(secs))
}

pub(crate) async fn run(cmd: Ctp96Command) -> anyhow::Result<()> {
    match cmd {
        Ctp96Command::Serve(a) => serve(a).await,
    }
}

/// The registry host (`host[:port]`) and whether to use plain HTTP, from
/// `--upstream`.
fn upstream_host(url: &str) -> anyhow::Result<(String, bool)> {
    let u = reqwest::Url::parse(url).with_context(|| format!("--upstream {url:?}"))?;
    let plain = match u.scheme() {
        "http" => true,
        "https" => false,
        other => anyhow::bail!("--upstream {url:?}: scheme {other} (http or https)"),
    };
    if !matches!(u.path(), "" | "/" | "/v2" | "/v2/") || u.query().is_some() {
        anyhow::bail!("--upstream {url:?}: give the registry's base URL, without a path");
    }
    let host = u.host_str().context("--upstream has no host")?;
    let host = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    // Docker Hub's API host serves the docker.io namespace.
    let host = if host == hologram_remote::DOCKER_HUB_API_HOST {
        hologram_remote::DOCKER_HUB.to_owned()
    } else {
        host
    };
    Ok((host, plain))
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let cfg = ServerConfig {
        max_sessions: a.max_sessions,
        lease: a.lease,
        fetch_slots: a.fetch_slots,
        cache_dir: a.cache.clone(),
        ..ServerConfig::default()
    };
    let (upstream, what): (Arc<dyn Upstream>, String) = match (&a.upstream, &a.oci_layout) {
        (Some(url), _) => {
            let (host, plain_http) = upstream_host(url)?;
            let client = RegistryClient::new(RegistryConfig {
                hosts_dir: Some(a.hosts_dir.clone()),
                docker_config: a.docker_config.clone(),
                plain_http,
                ..RegistryConfig::default()
            })
            .context("cannot set up the registry client")?;
            (
                Arc::new(RegistryUpstream {
                    client,
                    host: host.clone(),
                }),
                format!("registry {host}"),
            )
        }
        (None, Some(dir)) => (
            Arc::new(OciLayout::open(dir)?),
            format!("OCI layout {}", dir.display()),
        ),
        (None, None) => anyhow::bail!("give --upstream REGISTRY_URL or --oci-layout DIR"),
    };
    let server = Server::new(cfg, Arc::clone(&upstream)).context("cannot set up the cache")?;
    if let Some(dir) = &a.oci_layout {
        for (bytes, media) in OciLayout::open(dir)?.manifests()? {
            let id = server.remember_manifest(bytes, media);
            tracing::info!(uor_id = %id, "serving a manifest of the layout");
        }
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr().context("local address")?;
    println!("listening on http://{addr} ({what})");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    server
        .serve(listener, async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await
        .context("serving")
}

/// A registry as upstream, through the daemon's registry client.
#[derive(Debug)]
struct RegistryUpstream {
    client: RegistryClient,
    host: String,
}

fn classify(e: hologram_remote::Error) -> UpstreamError {
    use hologram_remote::Error as E;
    let msg = e.to_string();
    match e {
        E::NotFound(_) => UpstreamError::NotFound(msg),
        E::OutOfRange(_) => UpstreamError::OutOfRange(msg),
        E::InvalidReference(_) | E::InvalidDigest(_) => UpstreamError::BadRequest(msg),
        _ => UpstreamError::Unavailable(msg),
    }
}

impl RegistryUpstream {
    fn reference(&self, repository: Option<&str>) -> Result<Reference, UpstreamError> {
        let repo = repository.ok_or_else(|| {
            UpstreamError::BadRequest(
                "this server reads a registry: the request must name the repository".into(),
            )
        })?;
        Reference::parse(&format!("{}/{repo}", self.host))
            .map_err(|e| UpstreamError::BadRequest(e.to_string()))
    }
}

#[async_trait::async_trait]
impl Upstream for RegistryUpstream {
    async fn manifest(&self, reference: &str) -> Result<(Bytes, String), UpstreamError> {
        let r = Reference::parse(&format!("{}/{reference}", self.host))
            .map_err(|e| UpstreamError::BadRequest(e.to_string()))?;
        let m = self.client.fetch_manifest(&r).await.map_err(classify)?;
        Ok((m.bytes, m.media_type))
    }

    async fn read(
        &self,
        repository: Option<&str>,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, UpstreamError> {
        let r = self.reference(repository)?.with_digest(digest);
        self.client
            .read_range(&r, digest, offset, len)
            .await
            .map_err(classify)
    }

    async fn size(&self, repository: Option<&str>, digest: &Digest) -> Result<u64, UpstreamError> {
        let r = self.reference(repository)?.with_digest(digest);
        self.client.blob_size(&r, digest).await.map_err(classify)
    }
}

/// An OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`).
#[derive(Debug)]
struct OciLayout {
    dir: PathBuf,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

impl OciLayout {
    fn open(dir: &Path) -> anyhow::Result<OciLayout> {
        let marker = std::fs::read_to_string(dir.join("oci-layout")).with_context(|| {
            format!(
                "{} is not an OCI layout (no oci-layout file)",
                dir.display()
            )
        })?;
        anyhow::ensure!(
            marker.contains("imageLayoutVersion"),
            "{}: oci-layout file without imageLayoutVersion",
            dir.display()
        );
        Ok(OciLayout {
            dir: dir.to_path_buf(),
        })
    }

    fn index(&self) -> Result<ImageIndex, UpstreamError> {
        let b = std::fs::read(self.dir.join("index.json"))
            .map_err(|e| UpstreamError::Unavailable(format!("index.json: {e}")))?;
        ImageIndex::parse(&b).map_err(|e| UpstreamError::Unavailable(e.to_string()))
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    /// A whole blob, checked against its digest.
    fn read_blob(&self, d: &Digest, max: u64) -> Result<Bytes, UpstreamError> {
        let p = self.blob_path(d);
        let meta = std::fs::metadata(&p).map_err(|_| UpstreamError::NotFound(d.to_string()))?;
        if meta.len() > max {
            return Err(UpstreamError::Unavailable(format!(
                "{d} is over {max} bytes"
            )));
        }
        let b = std::fs::read(&p).map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
        if !d.matches(&b) {
            return Err(UpstreamError::Unavailable(format!(
                "{} does not match its digest",
                p.display()
            )));
        }
        Ok(Bytes::from(b))
    }

    /// Every manifest the index names (with its media type).
    fn manifests(&self) -> anyhow::Result<Vec<(Bytes, String)>> {
        let ix = self.index().map_err(|e| anyhow::anyhow!("{e}"))?;
        ix.manifests
            .iter()
            .map(|d| {
                self.read_blob(&d.digest, 4 << 20)
                    .map(|b| (b, d.media_type.clone()))
                    .map_err(|e| anyhow::anyhow!("{e}"))
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Upstream for OciLayout {
    /// `reference`: a digest, a ref name of `index.json`, or `repo:tag` whose
    /// tag is a ref name.
    async fn manifest(&self, reference: &str) -> Result<(Bytes, String), UpstreamError> {
        let ix = self.index()?;
        let by_digest = reference.rsplit_once('@').map_or(reference, |(_, d)| d);
        let desc = if let Ok(d) = Digest::parse(by_digest) {
            ix.manifests.iter().find(|m| m.digest == d)
        } else {
            let tag = reference.rsplit_once(':').map(|(_, t)| t);
            ix.manifests.iter().find(|m| {
                m.annotations
                    .get(REF_NAME)
                    .is_some_and(|n| n == reference || Some(n.as_str()) == tag)
            })
        };
        let desc = desc.ok_or_else(|| UpstreamError::NotFound(reference.to_owned()))?;
        let b = self.read_blob(&desc.digest, 4 << 20)?;
        Ok((b, desc.media_type.clone()))
    }

    async fn read(
        &self,
        _repository: Option<&str>,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, UpstreamError> {
        let p = self.blob_path(digest);
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&p)
                .map_err(|_| UpstreamError::NotFound(p.display().to_string()))?;
            let size = f
                .metadata()
                .map_err(|e| UpstreamError::Unavailable(e.to_string()))?
                .len();
            if offset.checked_add(len).is_none_or(|e| e > size) {
                return Err(UpstreamError::OutOfRange(format!(
                    "{offset}+{len} of {size} bytes"
                )));
            }
            let n = usize::try_from(len).map_err(|_| UpstreamError::BadRequest("length".into()))?;
            let mut buf = vec![0u8; n];
            f.read_exact_at(&mut buf, offset)
                .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|e| UpstreamError::Unavailable(e.to_string()))?
    }

    async fn size(&self, _repository: Option<&str>, digest: &Digest) -> Result<u64, UpstreamError> {
        std::fs::metadata(self.blob_path(digest))
            .map(|m| m.len())
            .map_err(|_| UpstreamError::NotFound(digest.to_string()))
    }

    fn cacheable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "0", "m", "-1s", "5d", "99999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstream_urls() {
        assert_eq!(
            upstream_host("http://127.0.0.1:5000").unwrap(),
            ("127.0.0.1:5000".into(), true)
        );
        assert_eq!(
            upstream_host("https://ghcr.io/").unwrap(),
            ("ghcr.io".into(), false)
        );
        assert_eq!(
            upstream_host("https://registry-1.docker.io").unwrap(),
            ("docker.io".into(), false)
        );
        assert!(upstream_host("ftp://x").is_err());
        assert!(upstream_host("http://x/some/path").is_err());
    }

    /// An OCI layout served end to end: a manifest by ref name, by digest
    /// and by UOR-ID, and a batched read of its blob.
    #[tokio::test]
    async fn serves_an_oci_layout() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("blobs/sha256")).unwrap();
        std::fs::write(
            d.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let bd = Digest::of(&blob);
        std::fs::write(d.path().join("blobs/sha256").join(bd.hex()), &blob).unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{bd}","size":{}}},"layers":[]}}"#,
            blob.len()
        );
        let md = Digest::of(manifest.as_bytes());
        std::fs::write(d.path().join("blobs/sha256").join(md.hex()), &manifest).unwrap();
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{},"annotations":{{"{REF_NAME}":"v1"}}}}]}}"#,
            manifest.len()
        );
        std::fs::write(d.path().join("index.json"), index).unwrap();

        let layout = OciLayout::open(d.path()).unwrap();
        let (b, mt) = layout.manifest("e2e/x:v1").await.unwrap();
        assert_eq!(b, manifest.as_bytes());
        assert_eq!(mt, "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(layout.manifest(&md.to_string()).await.unwrap().0, b);
        assert!(matches!(
            layout.manifest("nope").await,
            Err(UpstreamError::NotFound(_))
        ));

        let server = Server::new(ServerConfig::default(), Arc::new(layout)).unwrap();
        let uor = server.remember_manifest(b.clone(), mt);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(server.serve(l, std::future::pending()));
        let client = hologram_ctp96::client::Ctp96Client::new(
            hologram_ctp96::client::ClientConfig::new(url),
            Arc::new(hologram_ctp96::client::NoObserver),
        )
        .unwrap();
        assert_eq!(client.manifest_by_uor(&uor).await.unwrap(), b);
        let got = client
            .read(None, &[(bd, 0..10), (bd, 99_990..100_000)])
            .await
            .unwrap();
        assert_eq!(got[0], blob[..10]);
        assert_eq!(got[1], blob[99_990..]);
    }
}
