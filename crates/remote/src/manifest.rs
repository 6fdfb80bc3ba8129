//! Manifests, indexes and platform selection.

use bytes::Bytes;
use serde::Deserialize;

use crate::Error;

/// Media types of the manifest formats this crate fetches.
pub mod media_types {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
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
}

use media_types::*;

/// Manifests larger than this are refused (containerd uses the same limit).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// A manifest or index exactly as the registry served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The exact bytes (already verified against `digest`).
    pub bytes: Bytes,
    /// Its media type (Content-Type, else the JSON `mediaType` field, else
    /// inferred from the shape of the JSON).
    pub media_type: String,
    /// Its digest (`sha256:` unless the reference named another algorithm).
    pub digest: String,
}

impl Manifest {
    /// True for an OCI index or a Docker manifest list.
    pub fn is_index(&self) -> bool {
        is_index_type(&self.media_type)
    }
}

pub(crate) fn is_index_type(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_MANIFEST_LIST
}

pub(crate) fn is_manifest_type(mt: &str) -> bool {
    mt == OCI_MANIFEST || mt == DOCKER_MANIFEST
}

/// An OS/architecture pair (and variant), as in an index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, ...
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `s390x`, `riscv64`.
    pub architecture: String,
    /// `v7` etc.; only compared for `arm`.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on (linux/amd64 on x86-64).
    pub fn current() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7".to_string())),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant,
        }
    }

    fn matches(&self, p: &IndexPlatform) -> bool {
        if p.os != self.os || p.architecture != self.architecture {
            return false;
        }
        if self.architecture == "arm" {
            return p.variant.as_deref().unwrap_or("v7") == self.variant.as_deref().unwrap_or("v7");
        }
        true
    }
}

/// One entry of an index: what to fetch next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type of the referenced manifest.
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

#[derive(Deserialize)]
struct IndexJson {
    #[serde(default)]
    manifests: Vec<IndexEntryJson>,
}

#[derive(Deserialize)]
struct IndexEntryJson {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    platform: Option<IndexPlatform>,
}

#[derive(Deserialize)]
struct IndexPlatform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    variant: Option<String>,
}

/// Picks the first entry of an index (OCI index or Docker manifest list)
/// whose platform matches `platform`. Entries without a platform (and
/// attestation manifests, whose platform is `unknown/unknown`) never match.
pub fn select_platform(index: &[u8], platform: &Platform) -> Result<Descriptor, Error> {
    let idx: IndexJson = serde_json::from_slice(index)
        .map_err(|e| Error::InvalidResponse(format!("index is not valid JSON: {e}")))?;
    let mut seen = Vec::new();
    for m in idx.manifests {
        let Some(p) = &m.platform else { continue };
        if platform.matches(p) {
            return Ok(Descriptor {
                media_type: m.media_type,
                digest: m.digest,
                size: m.size,
            });
        }
        seen.push(match &p.variant {
            Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
            None => format!("{}/{}", p.os, p.architecture),
        });
    }
    Err(Error::NotFound(format!(
        "no manifest for platform {}/{} in index (has: {})",
        platform.os,
        platform.architecture,
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    )))
}

/// Determines a manifest's media type from the Content-Type header and the
/// JSON body.
pub(crate) fn detect_media_type(content_type: Option<&str>, body: &[u8]) -> String {
    let ct = content_type.map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    if let Some(ct) = &ct {
        if is_index_type(ct) || is_manifest_type(ct) {
            return ct.clone();
        }
    }
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    if let Ok(p) = serde_json::from_slice::<Probe>(body) {
        if let Some(mt) = p.media_type.filter(|m| !m.is_empty()) {
            return mt;
        }
        if p.manifests.is_some() {
            return OCI_INDEX.to_string();
        }
        if p.config.is_some() {
            return OCI_MANIFEST.to_string();
        }
    }
    ct.unwrap_or_else(|| "application/octet-stream".to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn linux(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    const INDEX: &str = r#"{"schemaVersion":2,"manifests":[
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"architecture":"arm","os":"linux","variant":"v6"}},
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":2,"platform":{"architecture":"arm","os":"linux","variant":"v7"}},
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:cc","size":3,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:dd","size":4,"platform":{"architecture":"unknown","os":"unknown"}},
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:ee","size":5,"platform":{"architecture":"amd64","os":"linux"}},
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:ff","size":6,"platform":{"architecture":"amd64","os":"windows"}}
    ]}"#;

    #[test]
    fn selects_platforms() {
        let pick = |p: Platform| {
            select_platform(INDEX.as_bytes(), &p)
                .map(|d| d.digest)
                .unwrap_or_default()
        };
        assert_eq!(pick(linux("amd64", None)), "sha256:ee");
        assert_eq!(pick(linux("arm64", None)), "sha256:cc");
        assert_eq!(pick(linux("arm", Some("v7"))), "sha256:bb");
        assert_eq!(pick(linux("arm", Some("v6"))), "sha256:aa");
        assert!(matches!(
            select_platform(INDEX.as_bytes(), &linux("s390x", None)),
            Err(Error::NotFound(_))
        ));
        assert!(select_platform(b"not json", &linux("amd64", None)).is_err());
    }

    #[test]
    fn current_platform_is_sane() {
        let p = Platform::current();
        assert_eq!(p.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(p.architecture, "amd64");
        }
    }

    #[test]
    fn media_type_detection() {
        assert_eq!(
            detect_media_type(
                Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
                b"{}"
            ),
            OCI_MANIFEST
        );
        assert_eq!(
            detect_media_type(
                Some("application/json"),
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            ),
            DOCKER_MANIFEST
        );
        assert_eq!(detect_media_type(None, br#"{"manifests":[]}"#), OCI_INDEX);
        assert_eq!(
            detect_media_type(None, br#"{"config":{},"layers":[]}"#),
            OCI_MANIFEST
        );
    }
}
