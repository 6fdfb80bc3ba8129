//! Artifacts attached to a manifest (OCI 1.1 "referrers"), through the
//! referrers *tag schema*: an image index tagged `sha256-<subject hex>`
//! lists the artifact manifests whose `subject` is that manifest. The tag
//! schema works on every registry (distribution 2.8, which this machine
//! runs, has no referrers API); registries with the API also serve it when
//! the writer maintains it, as [`attach`] does.
//!
//! Used for witnesses: `hologram witness sign --attach` stores the DSSE
//! envelope as an artifact of the image's manifest, and the snapshotter's
//! trust gate finds it with [`fetch_attached`]. Nothing read here is trusted
//! by itself: the caller verifies the envelope's signature.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::{sha256_digest, Error, Reference, RegistryClient};

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Largest attached blob read back.
const MAX_ARTIFACT: u64 = 1024 * 1024;
/// Most artifacts considered per subject (a hostile index could list more).
const MAX_ARTIFACTS: usize = 64;

/// The tag schema's tag for a subject digest (`sha256:abc` → `sha256-abc`).
pub fn fallback_tag(subject_digest: &str) -> String {
    subject_digest.replacen(':', "-", 1)
}

/// Attaches `blob` (of media type `artifact_type`) to the manifest
/// `subject_digest` (`subject_media_type`, `subject_size`) in `r`'s
/// repository, and adds it to the tag-schema index. Returns the artifact
/// manifest's digest.
pub async fn attach(
    client: &RegistryClient,
    r: &Reference,
    subject_digest: &str,
    subject_media_type: &str,
    subject_size: u64,
    artifact_type: &str,
    blob: Bytes,
) -> Result<String, Error> {
    let empty = Bytes::from_static(b"{}");
    let empty_digest = sha256_digest(&empty);
    client.push_blob(r, &empty_digest, empty).await?;
    let blob_digest = sha256_digest(&blob);
    let blob_size = blob.len();
    client.push_blob(r, &blob_digest, blob).await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "artifactType": artifact_type,
        "config": { "mediaType": MT_EMPTY, "digest": empty_digest, "size": 2 },
        "layers": [ { "mediaType": artifact_type, "digest": blob_digest, "size": blob_size } ],
        "subject": { "mediaType": subject_media_type, "digest": subject_digest, "size": subject_size },
    });
    let mbytes =
        Bytes::from(serde_json::to_vec(&manifest).map_err(|e| Error::Config(e.to_string()))?);
    let mdigest = sha256_digest(&mbytes);
    let msize = mbytes.len();
    client
        .push_manifest(&r.with_digest(&mdigest), MT_MANIFEST, mbytes)
        .await?;

    // Add it to the tag-schema index (read, modify, write: a concurrent
    // writer may race; the last one wins, as with every tag-schema client).
    let tag_ref = r.with_tag(&fallback_tag(subject_digest));
    let mut index = match client.fetch_manifest(&tag_ref).await {
        Ok(m) => serde_json::from_slice::<Value>(&m.bytes).unwrap_or_else(|_| json!({})),
        Err(Error::NotFound(_)) => json!({}),
        Err(e) => return Err(e),
    };
    let mut entries = index["manifests"].as_array().cloned().unwrap_or_default();
    entries.retain(|m| m["digest"].as_str() != Some(mdigest.as_str()));
    entries.push(json!({ "mediaType": MT_MANIFEST, "digest": mdigest, "size": msize, "artifactType": artifact_type }));
    index = json!({ "schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries });
    let ibytes = Bytes::from(serde_json::to_vec(&index).map_err(|e| Error::Config(e.to_string()))?);
    client.push_manifest(&tag_ref, MT_INDEX, ibytes).await?;
    Ok(mdigest)
}

/// The blobs of artifacts of type `artifact_type` attached to
/// `subject_digest` (tag schema). No index: an empty list.
pub async fn fetch_attached(
    client: &RegistryClient,
    r: &Reference,
    subject_digest: &str,
    artifact_type: &str,
) -> Result<Vec<Bytes>, Error> {
    let index = match client
        .fetch_manifest(&r.with_tag(&fallback_tag(subject_digest)))
        .await
    {
        Ok(m) => m,
        Err(Error::NotFound(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let doc: Value = serde_json::from_slice(&index.bytes)
        .map_err(|e| Error::InvalidResponse(format!("referrers index is not JSON: {e}")))?;
    let mut out = Vec::new();
    let entries = doc["manifests"].as_array().cloned().unwrap_or_default();
    for m in entries
        .iter()
        .filter(|m| m["artifactType"].as_str() == Some(artifact_type))
        .take(MAX_ARTIFACTS)
    {
        let Some(d) = m["digest"].as_str() else {
            continue;
        };
        let art = client.fetch_manifest(&r.with_digest(d)).await?;
        let adoc: Value = serde_json::from_slice(&art.bytes)
            .map_err(|e| Error::InvalidResponse(format!("artifact {d} is not JSON: {e}")))?;
        // Only artifacts that really name this subject count.
        if adoc["subject"]["digest"].as_str() != Some(subject_digest) {
            continue;
        }
        for l in adoc["layers"].as_array().into_iter().flatten() {
            if l["mediaType"].as_str() == Some(artifact_type) {
                if let Some(bd) = l["digest"].as_str() {
                    out.push(client.fetch_blob(r, bd, MAX_ARTIFACT).await?);
                }
            }
        }
    }
    Ok(out)
}
