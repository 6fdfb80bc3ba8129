//! Which transport a layer's bytes come over (`HOLOGRAM_NET`, `[ctp96]`):
//! the registry, a CTP-96 endpoint, or (`auto`) CTP-96 with the registry
//! behind it. The CTP-96 client, its metrics, and the fallback live here;
//! `RemoteLayers::mount_served` only asks [`Sources::source`] for a layer's
//! source.
//!
//! In `auto`, a read the endpoint cannot serve (unreachable, timed out,
//! refused, not found, or answered with frames that kept failing their
//! checks) is read from the registry instead, with a warning and a
//! `hologram_ctp96_operations_total{op="fallback"}` count; an unreachable
//! endpoint is then skipped for `fallback_secs` (reads go straight to the
//! registry) before it is tried again. In `ctp96` there is no fallback: a
//! read the endpoint does not serve fails (EIO) within `fetch_timeout_secs`.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hologram_ctp96::client::{ClientConfig, ClientObserver, Ctp96Blob, Ctp96Client, CLIENT_OPS};
use hologram_ctp96::wire::EnergyHints;
use hologram_oci::Digest;
use hologram_remote::RegistryBlob;
use hologram_source::{BlobSource, SourceError, SourceKind};
use hologram_telemetry::Metrics;

/// `HOLOGRAM_NET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Net {
    /// CTP-96 when an endpoint is configured (the registry behind it),
    /// else the registry.
    #[default]
    Auto,
    /// CTP-96 only: a configured endpoint is required.
    Ctp96,
    /// The registry only.
    Registry,
}

impl Net {
    pub fn parse(s: &str) -> Result<Net, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Net::Auto),
            "ctp96" => Ok(Net::Ctp96),
            "registry" => Ok(Net::Registry),
            other => Err(format!(
                "HOLOGRAM_NET={other:?}: expected auto, ctp96 or registry"
            )),
        }
    }
}

/// The settings the daemon runs the transport with.
#[derive(Debug, Clone)]
pub struct Ctp96Config {
    pub net: Net,
    pub endpoint: Option<String>,
    pub request_timeout: Duration,
    /// The read path's bound (`fetch_timeout_secs`).
    pub fetch_timeout: Duration,
    pub retries: u32,
    /// How long an unreachable endpoint is skipped in `auto`.
    pub fallback_for: Duration,
}

impl Default for Ctp96Config {
    fn default() -> Self {
        Ctp96Config {
            net: Net::Auto,
            endpoint: None,
            request_timeout: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(30),
            retries: 3,
            fallback_for: Duration::from_secs(30),
        }
    }
}

/// Why `auto` read from the registry (`result` of the `fallback` op).
pub const FALLBACK_RESULTS: &[&str] = &["unreachable", "not_found", "rejected"];

/// The client's events as metrics.
#[derive(Debug)]
struct MetricsObserver(Arc<Metrics>);

impl ClientObserver for MetricsObserver {
    fn op(&self, op: &'static str, result: &'static str) {
        self.0.ctp96_op(op, result);
    }
    fn hints(&self, h: &EnergyHints) {
        self.0.set_energy_hint("load", h.load);
        self.0
            .set_energy_hint("concurrency", f64::from(h.concurrency));
        self.0.set_energy_hint("chunk_size", h.chunk_size as f64);
        self.0
            .set_energy_hint("retry_after_ms", h.retry_after_ms as f64);
    }
    fn lease(&self, seconds: f64) {
        self.0.set_lease_duration(seconds);
    }
}

/// Where layers' bytes come from; one per daemon.
#[derive(Debug)]
pub struct Sources {
    net: Net,
    client: Option<Ctp96Client>,
    fallback: Arc<Fallback>,
}

/// `auto`'s memory of an unreachable endpoint, shared by every layer.
#[derive(Debug)]
struct Fallback {
    down_until: Mutex<Option<Instant>>,
    period: Duration,
    metrics: Option<Arc<Metrics>>,
    count: AtomicU64,
}

impl Fallback {
    fn is_down(&self) -> bool {
        self.down_until
            .lock()
            .map(|d| d.is_some_and(|t| Instant::now() < t))
            .unwrap_or(false)
    }

    fn note(&self, why: &'static str, endpoint: &str, e: &SourceError, digest: &Digest) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.ctp96_op("fallback", why);
        }
        if why == "unreachable" {
            let first = self
                .down_until
                .lock()
                .map(|mut d| {
                    let was_up = d.is_none_or(|t| Instant::now() >= t);
                    *d = Some(Instant::now() + self.period);
                    was_up
                })
                .unwrap_or(true);
            if first {
                tracing::warn!(endpoint, error = %e, skip_for = ?self.period, "CTP-96 endpoint unreachable: reading from the registry instead (HOLOGRAM_NET=auto)");
            }
        } else {
            tracing::warn!(endpoint, layer = %digest, reason = why, error = %e, "CTP-96 endpoint did not serve this read: reading it from the registry instead (HOLOGRAM_NET=auto)");
        }
    }
}

impl Sources {
    /// From the configuration; `ctp96` without an endpoint is an error.
    pub fn new(cfg: &Ctp96Config, metrics: Option<Arc<Metrics>>) -> anyhow::Result<Sources> {
        let fallback = Arc::new(Fallback {
            down_until: Mutex::new(None),
            period: cfg.fallback_for,
            metrics: metrics.clone(),
            count: AtomicU64::new(0),
        });
        let endpoint = cfg
            .endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty());
        let client = match (cfg.net, endpoint) {
            (Net::Registry, _) | (Net::Auto, None) => None,
            (Net::Ctp96, None) => anyhow::bail!(
                "HOLOGRAM_NET=ctp96 needs an endpoint: set HOLOGRAM_CTP96_ENDPOINT or [ctp96] endpoint"
            ),
            (net, Some(ep)) => {
                // In auto a hung endpoint must leave time for the registry.
                let fetch_timeout = if net == Net::Auto {
                    (cfg.fetch_timeout / 3).max(Duration::from_secs(1))
                } else {
                    cfg.fetch_timeout
                };
                let c = ClientConfig {
                    endpoint: ep.to_owned(),
                    request_timeout: cfg.request_timeout.min(fetch_timeout),
                    fetch_timeout,
                    retries: cfg.retries,
                    client_name: concat!("hologram-snapshotter/", env!("CARGO_PKG_VERSION"))
                        .to_owned(),
                };
                let observer: Arc<dyn ClientObserver> = match &metrics {
                    Some(m) => {
                        for (op, results) in CLIENT_OPS {
                            for r in *results {
                                m.declare_ctp96_op(op, r);
                            }
                        }
                        if net == Net::Auto {
                            for r in FALLBACK_RESULTS {
                                m.declare_ctp96_op("fallback", r);
                            }
                        }
                        Arc::new(MetricsObserver(Arc::clone(m)))
                    }
                    None => Arc::new(hologram_ctp96::client::NoObserver),
                };
                let client = Ctp96Client::new(c, observer)
                    .map_err(|e| anyhow::anyhow!("[ctp96] endpoint: {e}"))?;
                tracing::info!(endpoint = ep, mode = ?net, "layer bytes come over CTP-96");
                Some(client)
            }
        };
        Ok(Sources {
            net: cfg.net,
            client,
            fallback,
        })
    }

    /// The transport in use: `registry`, `ctp96`, or `auto`.
    pub fn describe(&self) -> &'static str {
        match (self.net, &self.client) {
            (_, None) => "registry",
            (Net::Ctp96, Some(_)) => "ctp96",
            (_, Some(_)) => "auto",
        }
    }

    /// The CTP-96 client, when one is configured.
    pub fn client(&self) -> Option<&Ctp96Client> {
        self.client.as_ref()
    }

    /// The source of one layer blob: `registry` is how the registry serves
    /// it (the fallback in `auto`).
    pub fn source(&self, registry: RegistryBlob) -> Arc<dyn BlobSource> {
        let Some(client) = &self.client else {
            return Arc::new(registry);
        };
        let ctp96 = Ctp96Blob::new(
            client.clone(),
            Some(registry.reference().repository.clone()),
            *registry.digest(),
            registry.size(),
        );
        match self.net {
            Net::Ctp96 => Arc::new(ctp96),
            _ => Arc::new(AutoSource {
                ctp96,
                registry,
                fallback: Arc::clone(&self.fallback),
            }),
        }
    }
}

/// How the image planner reads over CTP-96 (`crate::plan::Images`).
#[derive(Debug, Clone)]
pub struct ImagesOverCtp96 {
    pub client: Ctp96Client,
    /// `auto`: read from the registry when CTP-96 does not serve.
    pub fallback: bool,
}

impl Sources {
    /// What the image planner needs to read manifests and configs over
    /// CTP-96, when layers come over it.
    pub fn for_images(&self) -> Option<ImagesOverCtp96> {
        self.client.as_ref().map(|c| ImagesOverCtp96 {
            client: c.clone(),
            fallback: self.net != Net::Ctp96,
        })
    }
}

/// The facts of `image` with manifest `digest`, over CTP-96: the manifest
/// by digest (checked against it) and the config (checked against its
/// digest, at most `max_config` bytes).
pub async fn image_facts(
    client: &Ctp96Client,
    image: &hologram_oci::Reference,
    digest: &Digest,
    max_config: u64,
) -> Result<crate::plan::ImageFacts, crate::plan::ImageError> {
    use crate::plan::ImageError;
    let name = image.to_string();
    let unavailable = |reason: String| ImageError::Unavailable {
        image: name.clone(),
        reason: format!("over CTP-96: {reason}"),
    };
    let invalid = |reason: String| ImageError::Invalid {
        image: name.clone(),
        reason,
    };
    let bytes = client
        .manifest_by_ref(&format!("{}@{digest}", image.repository))
        .await
        .map_err(|e| match e {
            SourceError::Integrity(m) => invalid(m),
            other => unavailable(other.to_string()),
        })?;
    let manifest =
        hologram_oci::ImageManifest::parse(&bytes).map_err(|e| invalid(e.to_string()))?;
    let cfg = &manifest.config;
    if cfg.size == 0 || cfg.size > max_config {
        return Err(invalid(format!(
            "config {} of {} bytes (limit {max_config})",
            cfg.digest, cfg.size
        )));
    }
    let config_bytes = client
        .read(Some(&image.repository), &[(cfg.digest, 0..cfg.size)])
        .await
        .map_err(|e| unavailable(format!("config: {e}")))?
        .pop()
        .unwrap_or_default();
    if !cfg.digest.matches(&config_bytes) {
        return Err(invalid(format!(
            "config {} served with bytes that do not match its digest",
            cfg.digest
        )));
    }
    let config = hologram_oci::ImageConfig::parse_for(&config_bytes, &manifest)
        .map_err(|e| invalid(e.to_string()))?;
    let diff_ids = config.rootfs.diff_ids;
    Ok(crate::plan::ImageFacts {
        chain_ids: hologram_oci::chain_ids(&diff_ids),
        diff_ids,
        uor_id: hologram_trust::UorId::of(&bytes),
        labelled: image.clone(),
        reference: image.with_digest(digest),
        manifest_digest: *digest,
        manifest_bytes: bytes,
        manifest,
    })
}

/// CTP-96 first, the registry when the endpoint does not serve a read.
#[derive(Debug)]
struct AutoSource {
    ctp96: Ctp96Blob,
    registry: RegistryBlob,
    fallback: Arc<Fallback>,
}

#[async_trait::async_trait]
impl BlobSource for AutoSource {
    fn digest(&self) -> &Digest {
        self.registry.digest()
    }

    fn size(&self) -> u64 {
        self.registry.size()
    }

    /// Where reads go now: the registry while the endpoint is skipped.
    fn kind(&self) -> SourceKind {
        if self.fallback.is_down() {
            SourceKind::Registry
        } else {
            SourceKind::Ctp96
        }
    }

    async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, SourceError> {
        let mut v = self
            .read_ranges(std::slice::from_ref(&(offset..offset.saturating_add(len))))
            .await?;
        v.pop()
            .ok_or_else(|| SourceError::Other("no answer for the range".into()))
    }

    async fn read_ranges(&self, ranges: &[Range<u64>]) -> Result<Vec<Bytes>, SourceError> {
        if self.fallback.is_down() {
            return self.registry.read_ranges(ranges).await;
        }
        match self.ctp96.read_ranges(ranges).await {
            Ok(v) => Ok(v),
            Err(e @ SourceError::OutOfRange(_)) => Err(e),
            Err(e) => {
                let why = match &e {
                    SourceError::Unavailable(_) => "unreachable",
                    SourceError::NotFound(_) => "not_found",
                    _ => "rejected",
                };
                self.fallback
                    .note(why, self.ctp96.client().endpoint(), &e, self.digest());
                self.registry.read_ranges(ranges).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn net_values() {
        assert_eq!(Net::parse("auto").unwrap(), Net::Auto);
        assert_eq!(Net::parse(" CTP96 ").unwrap(), Net::Ctp96);
        assert_eq!(Net::parse("registry").unwrap(), Net::Registry);
        assert_eq!(Net::parse("").unwrap(), Net::Auto);
        assert!(Net::parse("p2p").is_err());
    }

    #[test]
    fn the_choice_of_source() {
        let cfg = |net, endpoint: Option<&str>| Ctp96Config {
            net,
            endpoint: endpoint.map(str::to_owned),
            ..Ctp96Config::default()
        };
        assert_eq!(
            Sources::new(&cfg(Net::Auto, None), None)
                .unwrap()
                .describe(),
            "registry"
        );
        assert_eq!(
            Sources::new(&cfg(Net::Auto, Some("http://127.0.0.1:8096")), None)
                .unwrap()
                .describe(),
            "auto"
        );
        assert_eq!(
            Sources::new(&cfg(Net::Registry, Some("http://127.0.0.1:8096")), None)
                .unwrap()
                .describe(),
            "registry"
        );
        assert_eq!(
            Sources::new(&cfg(Net::Ctp96, Some("http://127.0.0.1:8096")), None)
                .unwrap()
                .describe(),
            "ctp96"
        );
        let e = Sources::new(&cfg(Net::Ctp96, None), None).unwrap_err();
        assert!(e.to_string().contains("HOLOGRAM_CTP96_ENDPOINT"), "{e}");
        assert!(Sources::new(&cfg(Net::Ctp96, Some("ftp://x")), None).is_err());
    }

    /// `ctp96` with a dead endpoint: an error within the read's bound, and
    /// no registry behind it.
    #[test]
    fn ctp96_only_fails_within_its_bound_when_the_endpoint_is_down() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let sources = Sources::new(
            &Ctp96Config {
                net: Net::Ctp96,
                endpoint: Some(format!("http://{dead}")),
                fetch_timeout: Duration::from_secs(2),
                ..Ctp96Config::default()
            },
            None,
        )
        .unwrap();
        let client = hologram_remote::RegistryClient::new(hologram_remote::RegistryConfig {
            plain_http: true,
            ..Default::default()
        })
        .unwrap();
        // The registry named here does not exist either: it is never asked.
        let r = hologram_oci::Reference::parse("127.0.0.1:1/e2e/x:1").unwrap();
        let d = Digest::of(b"blob");
        let src = sources.source(RegistryBlob::new(client, r, d, 100));
        assert_eq!(src.kind(), SourceKind::Ctp96);
        let t = Instant::now();
        let e = rt.block_on(src.read_at(0, 10)).unwrap_err();
        assert!(matches!(e, SourceError::Unavailable(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    /// `auto` with a dead endpoint: the registry answers, the fallback is
    /// counted, and the endpoint is skipped afterwards.
    #[test]
    fn auto_falls_back_to_the_registry_when_the_endpoint_is_down() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        // A registry that serves one blob by Range, on loopback.
        let blob: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&blob);
        let served = Arc::new(AtomicU64::new(0));
        let (reg_addr, dead) = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let (b, n) = (blob.clone(), Arc::clone(&served));
            let app = axum::Router::new().route(
                "/v2/{*rest}",
                axum::routing::get(move |h: axum::http::HeaderMap| {
                    let (b, n) = (b.clone(), Arc::clone(&n));
                    async move {
                        n.fetch_add(1, Ordering::Relaxed);
                        let r = h.get("range").and_then(|v| v.to_str().ok()).unwrap_or("");
                        let (s, e) = r
                            .trim_start_matches("bytes=")
                            .split_once('-')
                            .map(|(s, e)| {
                                (s.parse::<usize>().unwrap(), e.parse::<usize>().unwrap())
                            })
                            .unwrap();
                        (
                            axum::http::StatusCode::PARTIAL_CONTENT,
                            [("content-range", format!("bytes {s}-{e}/{}", b.len()))],
                            b[s..=e].to_vec(),
                        )
                    }
                }),
            );
            tokio::spawn(async move { axum::serve(l, app).await });
            // a port nothing listens on
            let dead = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            (addr, dead)
        });
        let metrics = Metrics::new();
        let sources = Sources::new(
            &Ctp96Config {
                net: Net::Auto,
                endpoint: Some(format!("http://{dead}")),
                ..Ctp96Config::default()
            },
            Some(Arc::clone(&metrics)),
        )
        .unwrap();
        let client = hologram_remote::RegistryClient::new(hologram_remote::RegistryConfig {
            plain_http: true,
            ..Default::default()
        })
        .unwrap();
        let r = hologram_oci::Reference::parse(&format!("{reg_addr}/e2e/x:1")).unwrap();
        let src = sources.source(RegistryBlob::new(client, r, digest, blob.len() as u64));
        assert_eq!(src.kind(), SourceKind::Ctp96);
        let got = rt.block_on(src.read_ranges(&[0..10, 5000..5010])).unwrap();
        assert_eq!(got[0], blob[..10]);
        assert_eq!(got[1], blob[5000..5010]);
        assert_eq!(sources.fallback.count.load(Ordering::Relaxed), 1);
        assert_eq!(src.kind(), SourceKind::Registry, "skipped while down");
        let before = served.load(Ordering::Relaxed);
        rt.block_on(src.read_at(100, 10)).unwrap();
        assert_eq!(served.load(Ordering::Relaxed), before + 1);
        assert_eq!(
            sources.fallback.count.load(Ordering::Relaxed),
            1,
            "no new attempt"
        );
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"hologram_ctp96_operations_total{op="fallback",result="unreachable"} 1"#
            ),
            "{text}"
        );
    }
}
