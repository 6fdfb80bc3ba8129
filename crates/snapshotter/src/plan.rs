//! The plan of one image-layer Prepare, made once: where untrusted labels
//! become validated, typed values.
//!
//! 1. [`LayerRequest::parse`] reads the labels containerd passes (the chain
//!    ID containerd computed, and the image reference, layer digest and
//!    manifest digest a client set or an image's annotations claim). Every
//!    value is parsed into a typed value or the request is marked unusable;
//!    nothing here ever becomes a path.
//! 2. [`Images::facts`] fetches the image's manifest by digest (bytes checked
//!    against the digest) and its config (checked too), and derives the
//!    layers' chain IDs from the config's diff IDs. Cached per manifest
//!    digest: a pull fetches them once, not once per layer.
//! 3. [`LayerPlan::new`] finds the layer in that manifest and checks that
//!    the chain ID containerd is unpacking is the one this image's config
//!    gives for it. Everything a lazy mount uses (layer digest, size, TOC
//!    digest, diff ID) comes from the verified manifest and config, never
//!    from a label: labels can name an image, they cannot redirect a layer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hologram_oci::{labels, Descriptor, Digest, ImageConfig, ImageManifest, Reference};
use hologram_remote::RegistryClient;
use hologram_trust::UorId;

/// Largest image config accepted.
const MAX_CONFIG: u64 = 4 << 20;
/// How long fetched image facts are reused (a pull's layers arrive within it).
const FACTS_TTL: Duration = Duration::from_secs(600);
/// Most images whose facts are kept.
const FACTS_MAX: usize = 256;

/// Why an unpack without image labels cannot be served lazily (or verified).
const NO_LABELS: &str = "the client passed no image or layer labels, as plain `ctr pull` does; pull with `hologram pull` or through CRI";

/// What the labels of one Prepare say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerRequest {
    /// Not an unpack of an image layer: a plain snapshot.
    NotALayer,
    /// An image-layer unpack that names no image (plain `ctr pull`, or
    /// labels that do not parse): it can only be unpacked, never shared.
    Unlabelled {
        /// The chain ID, when known.
        chain_id: Option<Digest>,
        /// Why it is not served lazily.
        why: String,
    },
    /// An unpack naming its image and layer.
    Labelled(LayerLabels),
}

/// The typed labels of an image-layer unpack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerLabels {
    /// `containerd.io/snapshot.ref`: set by containerd's unpacker.
    pub chain_id: Digest,
    /// The image reference (CRI `image-ref`, else stargz's `reference`).
    pub image: Reference,
    /// The layer's digest (CRI `layer-digest`, else stargz's `digest`).
    pub layer: Digest,
    /// The manifest's digest (CRI `manifest-digest`), when given.
    pub manifest: Option<Digest>,
}

impl LayerRequest {
    /// Reads the labels of a Prepare of `key`.
    pub fn parse(key: &str, l: &BTreeMap<String, String>) -> LayerRequest {
        let Some(chain) = l.get(labels::SNAPSHOT_REF) else {
            // containerd 1.6's `ctr image pull` unpacks through
            // rootfs.ApplyLayer, which sends no labels at all: its key still
            // says this is an image layer.
            return match unpack_chain_id(key) {
                Some(chain_id) => LayerRequest::Unlabelled {
                    chain_id: Some(chain_id),
                    why: NO_LABELS.into(),
                },
                None => LayerRequest::NotALayer,
            };
        };
        let chain_id = match Digest::parse(chain) {
            Ok(d) => d,
            Err(e) => {
                return LayerRequest::Unlabelled {
                    chain_id: None,
                    why: format!("label {}: {e}", labels::SNAPSHOT_REF),
                }
            }
        };
        let unlabelled = |why: String| LayerRequest::Unlabelled {
            chain_id: Some(chain_id),
            why,
        };
        let pick = |cri: &'static str, stargz: &'static str| {
            l.get(cri)
                .map(|v| (cri, v))
                .or_else(|| l.get(stargz).map(|v| (stargz, v)))
        };
        let (Some((image_key, image)), Some((layer_key, layer))) = (
            pick(labels::CRI_IMAGE_REF, labels::STARGZ_REFERENCE),
            pick(labels::CRI_LAYER_DIGEST, labels::STARGZ_DIGEST),
        ) else {
            return unlabelled(NO_LABELS.into());
        };
        let image = match Reference::parse(image) {
            Ok(r) => r,
            Err(e) => return unlabelled(format!("label {image_key}: {e}")),
        };
        let layer = match Digest::parse(layer) {
            Ok(d) => d,
            Err(e) => return unlabelled(format!("label {layer_key}: {e}")),
        };
        let manifest = match l.get(labels::CRI_MANIFEST_DIGEST).map(|m| Digest::parse(m)) {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                return unlabelled(format!("label {}: {e}", labels::CRI_MANIFEST_DIGEST))
            }
        };
        LayerRequest::Labelled(LayerLabels {
            chain_id,
            image,
            layer,
            manifest,
        })
    }

    /// The chain ID, when the request names one.
    pub fn chain_id(&self) -> Option<&Digest> {
        match self {
            LayerRequest::NotALayer => None,
            LayerRequest::Unlabelled { chain_id, .. } => chain_id.as_ref(),
            LayerRequest::Labelled(l) => Some(&l.chain_id),
        }
    }
}

/// The chain ID in containerd's unpack key (`[<ns>/<n>/]extract-<id> <chain ID>`,
/// `snapshots.UnpackKeyFormat`), for unpacks that carry no labels.
pub fn unpack_chain_id(key: &str) -> Option<Digest> {
    let (head, chain) = key.rsplit_once(' ')?;
    let last = head.rsplit('/').next()?;
    if !last.starts_with("extract-") {
        return None;
    }
    Digest::parse(chain).ok()
}

/// An image's manifest and config, fetched and checked.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    /// The image as the labels name it (for messages).
    pub labelled: Reference,
    /// The repository, by manifest digest (what is fetched).
    pub reference: Reference,
    pub manifest_digest: Digest,
    /// The manifest's exact bytes (its UOR-ID is computed from them).
    pub manifest_bytes: Bytes,
    pub manifest: ImageManifest,
    /// Diff IDs and chain IDs, bottom layer first.
    pub diff_ids: Vec<Digest>,
    pub chain_ids: Vec<Digest>,
    pub uor_id: UorId,
}

impl ImageFacts {
    /// The image's name for messages, as the labels give it.
    pub fn name(&self) -> String {
        self.labelled.to_string()
    }
}

/// Why an image's facts could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    /// The registry could not be asked (network, auth, not found).
    #[error("cannot fetch the manifest of {image}: {reason}")]
    Unavailable { image: String, reason: String },
    /// The registry answered with something no policy can accept: bytes
    /// that do not match their digest, or a document that does not parse.
    #[error("image {image}: {reason}")]
    Invalid { image: String, reason: String },
}

/// Fetches and caches [`ImageFacts`].
pub struct Images {
    client: RegistryClient,
    rt: tokio::runtime::Handle,
    cache: Mutex<HashMap<Digest, (Instant, Arc<ImageFacts>)>>,
    /// Manifests (by digest) and configs over CTP-96 (`crate::ctp96`).
    ctp96: Option<crate::ctp96::ImagesOverCtp96>,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images").finish_non_exhaustive()
    }
}

impl Images {
    pub fn new(client: RegistryClient, rt: tokio::runtime::Handle) -> Images {
        Images {
            client,
            rt,
            cache: Mutex::new(HashMap::new()),
            ctp96: None,
        }
    }

    /// Reads manifests named by digest, and configs, over CTP-96 when
    /// layers come over it.
    pub fn with_ctp96(mut self, c: Option<crate::ctp96::ImagesOverCtp96>) -> Images {
        self.ctp96 = c;
        self
    }

    /// The facts of `image` (by `manifest` digest when given, else its tag
    /// resolved for this platform).
    pub fn facts(
        &self,
        image: &Reference,
        manifest: Option<&Digest>,
    ) -> Result<Arc<ImageFacts>, ImageError> {
        if let Some(d) = manifest {
            if let Some(f) = self.cached(d) {
                return Ok(f);
            }
        }
        let facts = Arc::new(self.rt.block_on(self.fetch(image, manifest))?);
        if let Ok(mut c) = self.cache.lock() {
            let now = Instant::now();
            c.retain(|_, (at, _)| now.duration_since(*at) < FACTS_TTL);
            if c.len() >= FACTS_MAX {
                c.clear();
            }
            c.insert(facts.manifest_digest, (now, Arc::clone(&facts)));
        }
        Ok(facts)
    }

    fn cached(&self, d: &Digest) -> Option<Arc<ImageFacts>> {
        let c = self.cache.lock().ok()?;
        let (at, f) = c.get(d)?;
        (at.elapsed() < FACTS_TTL).then(|| Arc::clone(f))
    }

    async fn fetch(
        &self,
        image: &Reference,
        manifest: Option<&Digest>,
    ) -> Result<ImageFacts, ImageError> {
        if let (Some(c), Some(d)) = (&self.ctp96, manifest) {
            match crate::ctp96::image_facts(&c.client, image, d, MAX_CONFIG).await {
                Ok(f) => return Ok(f),
                Err(e) if c.fallback => {
                    tracing::warn!(image = %image, error = %e, "CTP-96 did not serve the manifest and config: reading them from the registry (HOLOGRAM_NET=auto)");
                }
                Err(e) => return Err(e),
            }
        }
        let name = image.to_string();
        let classify = |e: hologram_remote::Error| {
            match e {
            hologram_remote::Error::DigestMismatch { expected, actual } => ImageError::Invalid {
                image: name.clone(),
                reason: format!(
                    "manifest served with bytes that do not match its digest (expected {expected}, got {actual})"
                ),
            },
            other => ImageError::Unavailable {
                image: name.clone(),
                reason: other.to_string(),
            },
        }
        };
        let fetched = match manifest {
            Some(d) => self.client.fetch_manifest(&image.with_digest(d)).await,
            None => self.client.resolve_platform(image).await.map(|(_, m)| m),
        }
        .map_err(classify)?;
        let invalid = |reason: String| ImageError::Invalid {
            image: name.clone(),
            reason,
        };
        let parsed = ImageManifest::parse(&fetched.bytes).map_err(|e| invalid(e.to_string()))?;
        let repo = image.with_digest(&fetched.digest);
        let config_bytes = self
            .client
            .fetch_blob(&repo, &parsed.config.digest, MAX_CONFIG)
            .await
            .map_err(|e| match e {
                hologram_remote::Error::DigestMismatch { .. } => invalid(format!("config: {e}")),
                other => ImageError::Unavailable {
                    image: name.clone(),
                    reason: format!("config: {other}"),
                },
            })?;
        let config =
            ImageConfig::parse_for(&config_bytes, &parsed).map_err(|e| invalid(e.to_string()))?;
        let diff_ids = config.rootfs.diff_ids;
        Ok(ImageFacts {
            chain_ids: hologram_oci::chain_ids(&diff_ids),
            diff_ids,
            uor_id: UorId::of(&fetched.bytes),
            labelled: image.clone(),
            reference: repo,
            manifest_digest: fetched.digest,
            manifest_bytes: fetched.bytes,
            manifest: parsed,
        })
    }
}

/// Why labels and image do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("layer {layer} is not part of the manifest {manifest} of image {image}")]
    NotInManifest {
        layer: Digest,
        manifest: Digest,
        image: String,
    },
    #[error("chain {chain} is not what the config of image {image} gives for layer {layer} (its chain there is {expected}): the labels name another image than the one being unpacked")]
    Chain {
        chain: Digest,
        expected: Digest,
        layer: Digest,
        image: String,
    },
}

/// Everything a lazy mount of one layer needs, from verified sources.
#[derive(Debug, Clone)]
pub struct LayerPlan {
    pub chain_id: Digest,
    pub image: Arc<ImageFacts>,
    /// Position of the layer in the manifest, bottom first.
    pub position: usize,
    /// The manifest's descriptor of the layer (digest, size, annotations).
    pub layer: Descriptor,
    pub diff_id: Digest,
    /// The TOC digest annotation, or why the layer is not eStargz.
    pub toc_digest: Result<Digest, String>,
}

impl LayerPlan {
    /// Binds the labels to the image: the layer must be in the manifest and
    /// the chain ID containerd unpacks must be the config's for that layer.
    pub fn new(labels: &LayerLabels, image: Arc<ImageFacts>) -> Result<LayerPlan, Mismatch> {
        let Some((position, layer)) = image.manifest.layer(&labels.layer) else {
            return Err(Mismatch::NotInManifest {
                layer: labels.layer,
                manifest: image.manifest_digest,
                image: image.name(),
            });
        };
        let expected = image.chain_ids.get(position).copied();
        if expected != Some(labels.chain_id) {
            return Err(Mismatch::Chain {
                chain: labels.chain_id,
                expected: expected.unwrap_or(labels.chain_id),
                layer: labels.layer,
                image: image.name(),
            });
        }
        let toc_digest = match layer.annotation(labels::TOC_DIGEST) {
            None => Err("not eStargz: the layer has no TOC digest annotation".to_owned()),
            Some(t) => {
                Digest::parse(t).map_err(|e| format!("not eStargz: TOC digest annotation: {e}"))
            }
        };
        let diff_id = image
            .diff_ids
            .get(position)
            .copied()
            .unwrap_or(labels.chain_id);
        Ok(LayerPlan {
            chain_id: labels.chain_id,
            position,
            layer: layer.clone(),
            diff_id,
            toc_digest,
            image,
        })
    }

    /// The manifest's layer below this one, if any.
    pub fn layer_below(&self) -> Option<&Descriptor> {
        self.position
            .checked_sub(1)
            .and_then(|p| self.image.manifest.layers.get(p))
    }
}

/// Entry point of the fuzz target (`fuzz/`), also replayed on stable by
/// `tests/fuzz_corpus.rs`: the first line is the Prepare key, each further
/// line `label=value`. Must never panic, whatever the input.
#[doc(hidden)]
pub fn fuzz_labels(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let key = lines.next().unwrap_or_default();
    let labels: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match LayerRequest::parse(key, &labels) {
        LayerRequest::Labelled(l) => {
            // Every value that came through is the typed form of its label.
            assert_eq!(
                labels.get(labels::SNAPSHOT_REF).map(String::as_str),
                Some(l.chain_id.to_string().as_str())
            );
            assert!(Reference::parse(&l.image.to_string()).is_ok());
        }
        LayerRequest::Unlabelled { .. } | LayerRequest::NotALayer => {}
    }
    assert_eq!(remote_strip_check(&labels), 0);
}

fn remote_strip_check(l: &BTreeMap<String, String>) -> usize {
    crate::remote::strip_reserved(l.clone())
        .keys()
        .filter(|k| labels::is_reserved(k))
        .count()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unpack_keys_are_recognised() {
        let chain = d(0xab);
        let c = chain.to_string();
        assert_eq!(
            unpack_chain_id(&format!("default/12/extract-123-abc {c}")),
            Some(chain)
        );
        assert_eq!(unpack_chain_id(&format!("extract-9 {c}")), Some(chain));
        assert_eq!(
            unpack_chain_id(&format!("default/12/mycontainer {c}")),
            None
        );
        assert_eq!(unpack_chain_id("default/12/extract-1 sha256:short"), None);
        assert_eq!(unpack_chain_id("default/3/ctr-rootfs"), None);
        assert_eq!(
            LayerRequest::parse("default/3/ctr-rootfs", &BTreeMap::new()),
            LayerRequest::NotALayer
        );
    }

    #[test]
    fn cri_and_stargz_labels_become_typed_values() {
        let cri = LayerRequest::parse(
            "k",
            &labels(&[
                (labels::SNAPSHOT_REF, &d(1).to_string()),
                (labels::CRI_IMAGE_REF, "r.example/i:1"),
                (labels::CRI_LAYER_DIGEST, &d(2).to_string()),
                (labels::CRI_MANIFEST_DIGEST, &d(3).to_string()),
                (labels::TOC_DIGEST, "sha256:/etc/shadow"),
            ]),
        );
        assert_eq!(
            cri,
            LayerRequest::Labelled(LayerLabels {
                chain_id: d(1),
                image: Reference::parse("r.example/i:1").unwrap(),
                layer: d(2),
                manifest: Some(d(3)),
            }),
            "the TOC digest label is never read"
        );
        let sgz = LayerRequest::parse(
            "k",
            &labels(&[
                (labels::SNAPSHOT_REF, &d(1).to_string()),
                (labels::STARGZ_REFERENCE, "r.example/i:2"),
                (labels::STARGZ_DIGEST, &d(4).to_string()),
            ]),
        );
        let LayerRequest::Labelled(l) = sgz else {
            panic!("{sgz:?}")
        };
        assert_eq!((l.layer, l.manifest), (d(4), None));
    }

    #[test]
    fn hostile_labels_never_become_a_plan() {
        let chain = d(1).to_string();
        for (k, v) in [
            (labels::CRI_LAYER_DIGEST, "sha256:../../../../etc/passwd"),
            (labels::CRI_LAYER_DIGEST, "sha256:/dev/zero"),
            (labels::CRI_LAYER_DIGEST, "SHA256:AB"),
            (labels::CRI_IMAGE_REF, "../../x"),
            (labels::CRI_IMAGE_REF, "r.example/i:1 --evil"),
            (labels::CRI_MANIFEST_DIGEST, "sha256:zz"),
        ] {
            let mut l = labels(&[
                (labels::SNAPSHOT_REF, &chain),
                (labels::CRI_IMAGE_REF, "r.example/i:1"),
                (labels::CRI_LAYER_DIGEST, &d(2).to_string()),
            ]);
            l.insert(k.to_owned(), v.to_owned());
            match LayerRequest::parse("k", &l) {
                LayerRequest::Unlabelled { chain_id, why } => {
                    assert_eq!(chain_id, Some(d(1)));
                    assert!(why.contains(k), "{why}");
                }
                other => panic!("{k}={v:?} gave {other:?}"),
            }
        }
        let bad_ref = LayerRequest::parse("k", &labels(&[(labels::SNAPSHOT_REF, "x")]));
        assert!(matches!(
            bad_ref,
            LayerRequest::Unlabelled { chain_id: None, .. }
        ));
        let plain = LayerRequest::parse("k", &labels(&[(labels::SNAPSHOT_REF, &chain)]));
        match plain {
            LayerRequest::Unlabelled { why, .. } => {
                assert!(why.contains("pull with `hologram pull` or through CRI"))
            }
            other => panic!("{other:?}"),
        }
    }

    fn facts(layers: &[(Digest, Option<&str>)], diff_ids: &[Digest]) -> Arc<ImageFacts> {
        let mut m = ImageManifest {
            schema_version: 2,
            media_type: None,
            artifact_type: None,
            config: Descriptor::new("c", d(9), 1),
            layers: Vec::new(),
            subject: None,
            annotations: Default::default(),
        };
        for (dg, toc) in layers {
            let mut l = Descriptor::new("l", *dg, 1000);
            if let Some(t) = toc {
                l.annotations.insert(labels::TOC_DIGEST.into(), (*t).into());
            }
            m.layers.push(l);
        }
        let bytes = Bytes::from(m.to_bytes());
        Arc::new(ImageFacts {
            labelled: Reference::parse("r.example/i:1").unwrap(),
            reference: Reference::parse("r.example/i:1").unwrap(),
            manifest_digest: Digest::of(&bytes),
            uor_id: UorId::of(&bytes),
            manifest_bytes: bytes,
            manifest: m,
            diff_ids: diff_ids.to_vec(),
            chain_ids: hologram_oci::chain_ids(diff_ids),
        })
    }

    #[test]
    fn plans_bind_labels_to_the_verified_manifest_and_config() {
        let toc = d(7).to_string();
        let f = facts(&[(d(1), None), (d(2), Some(&toc))], &[d(11), d(12)]);
        let chains = hologram_oci::chain_ids(&[d(11), d(12)]);
        let l = LayerLabels {
            chain_id: chains[1],
            image: f.reference.clone(),
            layer: d(2),
            manifest: None,
        };
        let p = LayerPlan::new(&l, Arc::clone(&f)).unwrap();
        assert_eq!(
            (p.position, p.diff_id, p.toc_digest.clone()),
            (1, d(12), Ok(d(7)))
        );
        assert_eq!(p.layer_below().map(|l| l.digest), Some(d(1)));
        let base = LayerPlan::new(
            &LayerLabels {
                chain_id: chains[0],
                layer: d(1),
                ..l.clone()
            },
            Arc::clone(&f),
        )
        .unwrap();
        assert!(base.toc_digest.is_err(), "no annotation: not eStargz");
        // A layer of another image.
        let e = LayerPlan::new(
            &LayerLabels {
                layer: d(3),
                ..l.clone()
            },
            Arc::clone(&f),
        )
        .unwrap_err();
        assert!(matches!(e, Mismatch::NotInManifest { .. }));
        // The chain containerd unpacks is not this image's for that layer.
        let e = LayerPlan::new(
            &LayerLabels {
                chain_id: d(99),
                ..l
            },
            f,
        )
        .unwrap_err();
        assert!(matches!(e, Mismatch::Chain { .. }), "{e}");
    }

    #[test]
    fn a_malformed_toc_annotation_is_not_estargz() {
        let f = facts(&[(d(1), Some("sha256:/some/root/owned/file"))], &[d(11)]);
        let p = LayerPlan::new(
            &LayerLabels {
                chain_id: d(11),
                image: f.reference.clone(),
                layer: d(1),
                manifest: None,
            },
            f,
        )
        .unwrap();
        let why = p.toc_digest.unwrap_err();
        assert!(why.contains("64 hex digits"), "{why}");
    }
}
