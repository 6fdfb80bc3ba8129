//! OCI image manifests, indexes, descriptors and configs (and their Docker
//! v2 schema 2 equivalents, which have the same shape), typed.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::Digest;

/// Media types the project reads and writes.
pub mod media_types {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI empty JSON descriptor (`{}`), the config of artifacts.
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    /// Docker image manifest v2 schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// The `Accept` header sent for manifest requests (indexes first).
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.v2+json";

    /// An OCI index or a Docker manifest list.
    pub fn is_index(mt: &str) -> bool {
        mt == OCI_INDEX || mt == DOCKER_MANIFEST_LIST
    }

    /// An OCI image manifest or a Docker v2 schema 2 manifest.
    pub fn is_manifest(mt: &str) -> bool {
        mt == OCI_MANIFEST || mt == DOCKER_MANIFEST
    }
}

/// Manifests larger than this are refused (containerd uses the same limit).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// More layers than this in one image are refused (overlayfs could not stack them anyway).
const MAX_LAYERS: usize = 1024;

/// Why a document is not what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct DocumentError {
    /// Which document ("image manifest", "image index", "image config").
    pub what: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content ("" when a writer left it out).
    #[serde(default, deserialize_with = "null_as_default")]
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Annotations (for layers: `containerd.io/snapshot/stargz/toc.digest`, ...).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Index entries: the platform of the referenced manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Artifacts: the artifact type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Alternative locations (never followed by this project).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub urls: Vec<String>,
}

impl Descriptor {
    /// A descriptor of `media_type` content.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
            urls: Vec::new(),
        }
    }

    /// The annotation `key`, if present.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

/// An OS/architecture pair (and variant), as in an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// GOARCH spelling: `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `s390x`, `riscv64`.
    #[serde(default)]
    pub architecture: String,
    /// `linux`, ...
    #[serde(default)]
    pub os: String,
    /// `v7` etc.; only compared for `arm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on (linux/amd64 on x86-64).
    pub fn current() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7".to_owned())),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant,
        }
    }

    /// Whether an index entry's platform `p` runs here.
    pub fn matches(&self, p: &Platform) -> bool {
        if p.os != self.os || p.architecture != self.architecture {
            return false;
        }
        if self.architecture == "arm" {
            return p.variant.as_deref().unwrap_or("v7") == self.variant.as_deref().unwrap_or("v7");
        }
        true
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest (OCI, or Docker v2 schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default, deserialize_with = "null_as_default")]
    pub layers: Vec<Descriptor>,
    /// Artifacts: the manifest this one refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

fn check_schema(what: &'static str, v: u32) -> Result<(), DocumentError> {
    if v == 2 {
        Ok(())
    } else {
        Err(DocumentError {
            what,
            reason: format!("schemaVersion {v} (only 2 is supported)"),
        })
    }
}

impl ImageManifest {
    /// Parses and checks a manifest (every digest strict, schema 2, a
    /// bounded number of layers).
    pub fn parse(bytes: &[u8]) -> Result<ImageManifest, DocumentError> {
        const WHAT: &str = "image manifest";
        let m: ImageManifest = serde_json::from_slice(bytes).map_err(|e| DocumentError {
            what: WHAT,
            reason: e.to_string(),
        })?;
        check_schema(WHAT, m.schema_version)?;
        if m.layers.len() > MAX_LAYERS {
            return Err(DocumentError {
                what: WHAT,
                reason: format!("{} layers (at most {MAX_LAYERS})", m.layers.len()),
            });
        }
        Ok(m)
    }

    /// The position and descriptor of layer `digest`.
    pub fn layer(&self, digest: &Digest) -> Option<(usize, &Descriptor)> {
        self.layers
            .iter()
            .enumerate()
            .find(|(_, l)| l.digest == *digest)
    }

    /// Canonical JSON bytes (for manifests this project writes).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub manifests: Vec<Descriptor>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

impl ImageIndex {
    /// Parses and checks an index.
    pub fn parse(bytes: &[u8]) -> Result<ImageIndex, DocumentError> {
        const WHAT: &str = "image index";
        let ix: ImageIndex = serde_json::from_slice(bytes).map_err(|e| DocumentError {
            what: WHAT,
            reason: e.to_string(),
        })?;
        check_schema(WHAT, ix.schema_version)?;
        Ok(ix)
    }

    /// The first entry whose platform matches `platform`. Entries without a
    /// platform (and attestation manifests, `unknown/unknown`) never match.
    pub fn select(&self, platform: &Platform) -> Result<&Descriptor, DocumentError> {
        let mut seen = Vec::new();
        for m in &self.manifests {
            let Some(p) = &m.platform else { continue };
            if platform.matches(p) {
                return Ok(m);
            }
            seen.push(p.to_string());
        }
        Err(DocumentError {
            what: "image index",
            reason: format!(
                "no manifest for platform {platform} (has: {})",
                if seen.is_empty() {
                    "none".to_owned()
                } else {
                    seen.join(", ")
                }
            ),
        })
    }
}

/// The part of an image config this project reads: the layers' diff IDs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Digest of each layer's uncompressed tar stream, bottom first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    /// Parses a config and checks that it names one diff ID per layer of
    /// `manifest`.
    pub fn parse_for(bytes: &[u8], manifest: &ImageManifest) -> Result<ImageConfig, DocumentError> {
        const WHAT: &str = "image config";
        let c: ImageConfig = serde_json::from_slice(bytes).map_err(|e| DocumentError {
            what: WHAT,
            reason: e.to_string(),
        })?;
        if c.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(DocumentError {
                what: WHAT,
                reason: format!(
                    "{} diff IDs for {} layers",
                    c.rootfs.diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn d(n: u8) -> String {
        Digest::of(&[n]).to_string()
    }

    fn manifest_json(layer_digest: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":10}},
            "layers":[{{"mediaType":"{}","digest":"{layer_digest}","size":99,
            "annotations":{{"containerd.io/snapshot/stargz/toc.digest":"{}"}}}}],"annotations":null}}"#,
            media_types::OCI_MANIFEST,
            media_types::OCI_CONFIG,
            d(1),
            media_types::OCI_LAYER_GZIP,
            d(3)
        )
    }

    #[test]
    fn manifests_parse_typed() {
        let m = ImageManifest::parse(manifest_json(&d(2)).as_bytes()).unwrap();
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].size, 99);
        let (i, l) = m.layer(&Digest::of(&[2])).unwrap();
        assert_eq!(i, 0);
        assert_eq!(
            l.annotation("containerd.io/snapshot/stargz/toc.digest"),
            Some(d(3).as_str())
        );
        let again = ImageManifest::parse(&m.to_bytes()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn a_bad_digest_anywhere_refuses_the_manifest() {
        assert!(ImageManifest::parse(manifest_json("sha256:/etc/passwd").as_bytes()).is_err());
        assert!(ImageManifest::parse(manifest_json(&d(2).to_uppercase()).as_bytes()).is_err());
        let neg = manifest_json(&d(2)).replace("\"size\":99", "\"size\":-1");
        assert!(ImageManifest::parse(neg.as_bytes()).is_err());
        let v1 = manifest_json(&d(2)).replace("\"schemaVersion\":2", "\"schemaVersion\":1");
        assert!(ImageManifest::parse(v1.as_bytes()).is_err());
    }

    #[test]
    fn platforms_are_selected() {
        let ix = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"{m}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64"}}}},
            {{"mediaType":"{m}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{m}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v6"}}}}]}}"#,
            d(1),
            d(2),
            d(3),
            m = media_types::OCI_MANIFEST
        );
        let ix = ImageIndex::parse(ix.as_bytes()).unwrap();
        let amd64 = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        assert_eq!(ix.select(&amd64).unwrap().digest, Digest::of(&[2]));
        let armv7 = Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: Some("v7".into()),
        };
        let e = ix.select(&armv7).unwrap_err();
        assert!(e.reason.contains("linux/arm/v6"), "{e}");
        assert!(Platform::current().matches(&Platform::current()));
    }

    #[test]
    fn configs_must_match_their_manifest() {
        let m = ImageManifest::parse(manifest_json(&d(2)).as_bytes()).unwrap();
        let good = format!(
            r#"{{"rootfs":{{"type":"layers","diff_ids":["{}"]}},"os":"linux"}}"#,
            d(9)
        );
        let c = ImageConfig::parse_for(good.as_bytes(), &m).unwrap();
        assert_eq!(c.rootfs.diff_ids, vec![Digest::of(&[9])]);
        let two = format!(
            r#"{{"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
            d(9),
            d(8)
        );
        assert!(ImageConfig::parse_for(two.as_bytes(), &m).is_err());
        let bad = r#"{"rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#;
        assert!(ImageConfig::parse_for(bad.as_bytes(), &m).is_err());
    }
}
