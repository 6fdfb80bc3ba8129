//! Remote snapshots: deciding, from the labels containerd passes to Prepare,
//! whether a layer can be served lazily, and mounting it.
//!
//! containerd's handshake (see `../shared/FIELD-NOTES.md` §1): during unpack,
//! Prepare carries `containerd.io/snapshot.ref = <chainID>` plus layer labels.
//! If we can serve the layer remotely we mount it, commit it under the chainID
//! and answer AlreadyExists; containerd then skips download and unpack.
//! Otherwise the snapshot stays a plain active one and containerd unpacks into
//! it — and we say so, loudly (a warning naming the layer and the reason, and
//! a counted fallback), because silent fallbacks are what users of other lazy
//! snapshotters complain about most.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use hologram_fs::cache::ChunkCache;
use hologram_fs::fuse::MountedLayer;
use hologram_fs::layer::{Layer, LayerConfig};
use hologram_fs::observer::{NoObserver, Observer};
use hologram_remote::{BlobSource, Reference, RegistryBlob, RegistryClient, RegistryConfig};
use hologram_telemetry::Metrics;

use crate::metrics::FsMetrics;

/// The label containerd's unpacker sets to the layer's chain ID.
pub const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// CRI-style layer labels (containerd's `snapshotters.AppendInfoHandlerWrapper`).
pub const LABEL_CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const LABEL_CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
pub const LABEL_CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
pub const LABEL_CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
/// stargz-snapshotter's own labels (`ctr-remote image rpull`).
pub const LABEL_STARGZ_REFERENCE: &str = "containerd.io/snapshot/remote/stargz.reference";
pub const LABEL_STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
pub const LABEL_STARGZ_LAYERS: &str = "containerd.io/snapshot/remote/stargz.layers";
/// The layer annotation that carries the TOC digest; containerd forwards it
/// as a label because of its `containerd.io/snapshot/` prefix.
pub const LABEL_TOC_DIGEST: &str = hologram_estargz::TOC_DIGEST_ANNOTATION;
/// Set on committed remote snapshots (the value stargz uses too).
pub const LABEL_REMOTE: &str = "containerd.io/snapshot/remote";
pub const REMOTE_VALUE: &str = "remote snapshot";
/// Provenance we record on a remote snapshot: where its bytes come from.
pub const LABEL_SOURCE: &str = "containerd.io/snapshot/hologram.source";
pub const LABEL_SIZE: &str = "containerd.io/snapshot/hologram.blob-size";

/// What the labels say about one layer that could be served remotely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    pub chain_id: String,
    pub image: String,
    pub layer_digest: String,
    pub toc_digest: Option<String>,
    pub manifest_digest: Option<String>,
    /// Blob size, when recorded on an earlier mount (restart needs no HEAD).
    pub size: Option<u64>,
}

/// Reads the remote-snapshot labels. `None`: not an unpack of an image layer
/// (no `snapshot.ref`), so nothing to decide. `Some(Err(reason))`: an image
/// layer we cannot serve lazily, with the reason.
pub fn layer_ref(labels: &BTreeMap<String, String>) -> Option<Result<LayerRef, String>> {
    let chain_id = labels.get(LABEL_SNAPSHOT_REF)?.clone();
    let image = labels
        .get(LABEL_CRI_IMAGE_REF)
        .or_else(|| labels.get(LABEL_STARGZ_REFERENCE));
    let digest = labels
        .get(LABEL_CRI_LAYER_DIGEST)
        .or_else(|| labels.get(LABEL_STARGZ_DIGEST));
    let (Some(image), Some(layer_digest)) = (image, digest) else {
        return Some(Err(
            "no layer labels (the client pulled without remote-snapshot labels, e.g. plain `ctr pull`; use `hologram pull` or CRI)"
                .into(),
        ));
    };
    Some(Ok(LayerRef {
        chain_id,
        image: image.clone(),
        layer_digest: layer_digest.clone(),
        toc_digest: labels.get(LABEL_TOC_DIGEST).cloned(),
        manifest_digest: labels.get(LABEL_CRI_MANIFEST_DIGEST).cloned(),
        size: labels.get(LABEL_SIZE).and_then(|s| s.parse().ok()),
    }))
}

/// The chain ID in containerd's unpack key (`[<ns>/<n>/]extract-<id> <chain ID>`,
/// `snapshots.UnpackKeyFormat`), for unpacks that carry no labels.
pub fn unpack_chain_id(key: &str) -> Option<&str> {
    let (head, chain) = key.rsplit_once(' ')?;
    let hex = chain.strip_prefix("sha256:")?;
    let is_digest = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let last = head.rsplit('/').next()?;
    (is_digest && last.starts_with("extract-")).then_some(chain)
}

/// Settings of the remote path (from the config file and environment).
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    pub enabled: bool,
    pub layer: LayerConfig,
    pub cache_limit: u64,
    pub registry: RegistryConfig,
    pub fuse_threads: usize,
}

/// Why a layer is not served lazily: a short category (a metric label) and
/// the full reason (the log line, the operator's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub category: &'static str,
    pub reason: String,
}

impl Fallback {
    pub fn new(category: &'static str, reason: impl Into<String>) -> Self {
        Fallback {
            category,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The remote layers this daemon serves.
pub struct RemoteLayers {
    cfg: RemoteConfig,
    client: RegistryClient,
    cache: Arc<ChunkCache>,
    rt: tokio::runtime::Handle,
    toc_dir: std::path::PathBuf,
    mounts: Mutex<HashMap<u64, MountedLayer>>,
    observer: Arc<dyn Observer>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for RemoteLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLayers")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl RemoteLayers {
    pub fn new(
        root: &Path,
        cfg: RemoteConfig,
        rt: tokio::runtime::Handle,
        metrics: Option<Arc<Metrics>>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let cache = ChunkCache::open(&root.join("cache/chunks"), cfg.cache_limit)
            .with_context(|| format!("cannot open chunk cache under {}", root.display()))?;
        let toc_dir = root.join("cache/tocs");
        std::fs::create_dir_all(&toc_dir)
            .with_context(|| format!("cannot create {}", toc_dir.display()))?;
        let client = RegistryClient::new(cfg.registry.clone())
            .context("cannot set up the registry client")?;
        Ok(RemoteLayers {
            cfg,
            client,
            cache: Arc::new(cache),
            rt,
            toc_dir,
            mounts: Mutex::new(HashMap::new()),
            observer: match &metrics {
                Some(m) => Arc::new(FsMetrics::new(m)),
                None => Arc::new(NoObserver),
            },
            metrics,
        })
    }

    /// Counts a fallback (metric); the caller logs it.
    pub fn record_fallback(&self, f: &Fallback) {
        if let Some(m) = &self.metrics {
            m.fallback(f.category);
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// Mounts the layer at `mountpoint` and records it under snapshot `id`.
    /// Returns the provenance labels to store with the committed snapshot.
    pub fn mount(
        &self,
        id: u64,
        lr: &LayerRef,
        mountpoint: &Path,
    ) -> Result<BTreeMap<String, String>, Fallback> {
        if !self.cfg.enabled {
            return Err(Fallback::new(
                "disabled",
                "remote snapshots are disabled in the configuration",
            ));
        }
        let reference = Reference::parse(&lr.image)
            .map_err(|e| Fallback::new("other", format!("image reference {:?}: {e}", lr.image)))?;
        let (toc_digest, size) = self.layer_facts(&reference, lr)?;
        let source: Arc<dyn BlobSource> = Arc::new(RegistryBlob::new(
            self.client.clone(),
            reference,
            lr.layer_digest.clone(),
            size,
        ));
        let index = self.rt.block_on(self.index_for(&*source, &toc_digest))?;
        let layer = Arc::new(Layer::new(
            index,
            Arc::clone(&source),
            Arc::clone(&self.cache),
            self.rt.clone(),
            self.cfg.layer.clone(),
            Arc::clone(&self.observer),
        ));
        let mounted =
            hologram_fs::fuse::mount(layer, mountpoint, self.cfg.fuse_threads).map_err(|e| {
                Fallback::new(
                    "mount_error",
                    format!("FUSE mount at {}: {e}", mountpoint.display()),
                )
            })?;
        if let Ok(mut m) = self.mounts.lock() {
            m.insert(id, mounted);
        }
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_REMOTE.to_owned(), REMOTE_VALUE.to_owned());
        labels.insert(LABEL_SOURCE.to_owned(), source.source_kind().to_owned());
        labels.insert(LABEL_TOC_DIGEST.to_owned(), toc_digest);
        labels.insert(LABEL_SIZE.to_owned(), size.to_string());
        Ok(labels)
    }

    /// TOC digest (label, else the manifest's layer annotation) and blob size.
    fn layer_facts(&self, reference: &Reference, lr: &LayerRef) -> Result<(String, u64), Fallback> {
        let fetch_err = |what: &str, e: hologram_remote::Error| {
            Fallback::new("fetch_error", format!("{what}: {e}"))
        };
        let Some(toc) = lr.toc_digest.clone() else {
            let mut mref = reference.clone();
            if let Some(d) = &lr.manifest_digest {
                mref.digest = Some(d.clone());
            }
            let (_, manifest) = self
                .rt
                .block_on(self.client.resolve_platform(&mref))
                .map_err(|e| fetch_err(&format!("fetching the manifest of {}", lr.image), e))?;
            let doc: serde_json::Value = serde_json::from_slice(&manifest.bytes).map_err(|e| {
                Fallback::new(
                    "other",
                    format!("manifest of {} is not JSON: {e}", lr.image),
                )
            })?;
            let layer = doc["layers"]
                .as_array()
                .and_then(|ls| {
                    ls.iter()
                        .find(|l| l["digest"].as_str() == Some(lr.layer_digest.as_str()))
                })
                .ok_or_else(|| {
                    Fallback::new(
                        "other",
                        format!(
                            "layer {} is not in the manifest of {}",
                            lr.layer_digest, lr.image
                        ),
                    )
                })?;
            let toc = layer["annotations"][LABEL_TOC_DIGEST]
                .as_str()
                .ok_or_else(|| {
                    Fallback::new(
                        "not_estargz",
                        "not eStargz: the layer has no TOC digest annotation",
                    )
                })?;
            let size = layer["size"]
                .as_u64()
                .ok_or_else(|| Fallback::new("other", "manifest layer has no size"))?;
            return Ok((toc.to_owned(), size));
        };
        if let Some(size) = lr.size {
            return Ok((toc, size));
        }
        let size = self
            .rt
            .block_on(self.client.blob_size(reference, &lr.layer_digest))
            .map_err(|e| fetch_err(&format!("size of layer {}", lr.layer_digest), e))?;
        Ok((toc, size))
    }

    /// The layer's index: from the local TOC copy when we have one (no
    /// network, so restarts do not depend on the registry), else fetched.
    async fn index_for(
        &self,
        source: &dyn BlobSource,
        toc_digest: &str,
    ) -> Result<hologram_estargz::Index, Fallback> {
        let local = toc_digest
            .strip_prefix("sha256:")
            .map(|h| self.toc_dir.join(h));
        if let Some(path) = &local {
            if let Ok(region) = std::fs::read(path) {
                match hologram_fs::index_from_region(&region, toc_digest, source.size()) {
                    Ok(index) => return Ok(index),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "local TOC copy unusable; fetching again");
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
        }
        let (index, region) = hologram_fs::load_index(source, toc_digest)
            .await
            .map_err(|e| {
                let category = match e {
                    hologram_fs::LoadError::Fetch { .. } => "fetch_error",
                    _ => "not_estargz",
                };
                Fallback::new(category, e.to_string())
            })?;
        if let Some(path) = local {
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, &region)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .is_err()
            {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok(index)
    }

    /// Unmounts the layer of snapshot `id`, if it is one of ours.
    pub fn unmount(&self, id: u64) {
        let m = self.mounts.lock().ok().and_then(|mut m| m.remove(&id));
        drop(m);
    }

    /// Re-mounts a committed remote snapshot after a restart, from its labels
    /// and the local TOC copy.
    pub fn restore(
        &self,
        id: u64,
        labels: &BTreeMap<String, String>,
        mountpoint: &Path,
    ) -> Result<(), Fallback> {
        let lr = match layer_ref(labels) {
            Some(Ok(lr)) => lr,
            Some(Err(e)) => return Err(Fallback::new("no_labels", e)),
            None => return Err(Fallback::new("no_labels", "no snapshot.ref label")),
        };
        crate::mountinfo::unmount_below(mountpoint);
        self.mount(id, &lr, mountpoint).map(|_| ())
    }

    /// Stops everything (daemon shutdown): unmounts all layers.
    pub fn shutdown(&self) {
        let all: Vec<MountedLayer> = self
            .mounts
            .lock()
            .map(|mut m| m.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        drop(all);
    }

    /// Layers mounted now (for metrics).
    pub fn layers(&self) -> Vec<Arc<Layer>> {
        self.mounts
            .lock()
            .map(|m| m.values().map(|l| Arc::clone(l.layer())).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unpack_keys_are_recognised() {
        let chain = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            unpack_chain_id(&format!("default/12/extract-123-abc {chain}")),
            Some(chain.as_str())
        );
        assert_eq!(
            unpack_chain_id(&format!("extract-9 {chain}")),
            Some(chain.as_str())
        );
        assert_eq!(
            unpack_chain_id(&format!("default/12/mycontainer {chain}")),
            None
        );
        assert_eq!(unpack_chain_id("default/12/extract-1 sha256:short"), None);
        assert_eq!(unpack_chain_id("default/3/ctr-rootfs"), None);
    }

    #[test]
    fn no_snapshot_ref_means_no_decision() {
        assert!(layer_ref(&labels(&[(LABEL_CRI_LAYER_DIGEST, "sha256:a")])).is_none());
    }

    #[test]
    fn plain_ctr_pull_is_a_named_fallback() {
        let r = layer_ref(&labels(&[(LABEL_SNAPSHOT_REF, "sha256:c")])).unwrap();
        assert!(r.unwrap_err().contains("hologram pull"));
    }

    #[test]
    fn cri_and_stargz_labels_are_both_understood() {
        let cri = layer_ref(&labels(&[
            (LABEL_SNAPSHOT_REF, "sha256:c"),
            (LABEL_CRI_IMAGE_REF, "r/i:1"),
            (LABEL_CRI_LAYER_DIGEST, "sha256:l"),
            (LABEL_CRI_MANIFEST_DIGEST, "sha256:m"),
            (LABEL_TOC_DIGEST, "sha256:t"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            cri,
            LayerRef {
                chain_id: "sha256:c".into(),
                image: "r/i:1".into(),
                layer_digest: "sha256:l".into(),
                toc_digest: Some("sha256:t".into()),
                manifest_digest: Some("sha256:m".into()),
                size: None,
            }
        );
        let sgz = layer_ref(&labels(&[
            (LABEL_SNAPSHOT_REF, "sha256:c"),
            (LABEL_STARGZ_REFERENCE, "r/i:2"),
            (LABEL_STARGZ_DIGEST, "sha256:l2"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                sgz.image.as_str(),
                sgz.layer_digest.as_str(),
                sgz.toc_digest
            ),
            ("r/i:2", "sha256:l2", None)
        );
    }
}
