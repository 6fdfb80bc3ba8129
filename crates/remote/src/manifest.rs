//! Manifests as fetched: exact bytes, media type, verified digest.

use bytes::Bytes;
use hologram_oci::{media_types, Digest, ImageManifest};
use serde::Deserialize;

use crate::Error;

/// Fails with [`Error::DigestMismatch`] unless `data` hashes to `expected`.
pub fn verify(expected: &Digest, data: &[u8]) -> Result<(), Error> {
    let actual = Digest::of(data);
    if actual != *expected {
        return Err(Error::DigestMismatch {
            expected: *expected,
            actual,
        });
    }
    Ok(())
}

/// A manifest or index exactly as the registry served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The exact bytes (already verified against `digest`).
    pub bytes: Bytes,
    /// Its media type (Content-Type, else the JSON `mediaType` field, else
    /// inferred from the shape of the JSON).
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
}

impl Manifest {
    /// True for an OCI index or a Docker manifest list.
    pub fn is_index(&self) -> bool {
        media_types::is_index(&self.media_type)
    }

    /// The bytes as a typed image manifest (every digest strict).
    pub fn image(&self) -> Result<ImageManifest, Error> {
        ImageManifest::parse(&self.bytes)
            .map_err(|e| Error::InvalidResponse(format!("manifest {}: {e}", self.digest)))
    }
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
        if media_types::is_index(ct) || media_types::is_manifest(ct) {
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
            return media_types::OCI_INDEX.to_string();
        }
        if p.config.is_some() {
            return media_types::OCI_MANIFEST.to_string();
        }
    }
    ct.unwrap_or_else(|| "application/octet-stream".to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use media_types::*;

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
