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
use hologram_oci::{media_types, Descriptor, Digest, ImageIndex, ImageManifest};

use crate::{Error, Reference, RegistryClient};
/// Largest attached blob read back.
const MAX_ARTIFACT: u64 = 1024 * 1024;
/// Most artifacts considered per subject (a hostile index could list more).
const MAX_ARTIFACTS: usize = 64;

/// The tag schema's tag for a subject digest (`sha256:abc` → `sha256-abc`).
pub fn fallback_tag(subject_digest: &Digest) -> String {
    format!("sha256-{}", subject_digest.hex())
}

/// Attaches `blob` (of media type `artifact_type`) to the manifest
/// `subject_digest` (`subject_media_type`, `subject_size`) in `r`'s
/// repository, and adds it to the tag-schema index. Returns the artifact
/// manifest's digest.
pub async fn attach(
    client: &RegistryClient,
    r: &Reference,
    subject: &Descriptor,
    artifact_type: &str,
    blob: Bytes,
) -> Result<Digest, Error> {
    let empty = Bytes::from_static(b"{}");
    let empty_digest = Digest::of(&empty);
    client.push_blob(r, &empty_digest, empty).await?;
    let blob_digest = Digest::of(&blob);
    let blob_size = blob.len() as u64;
    client.push_blob(r, &blob_digest, blob).await?;
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(media_types::OCI_MANIFEST.to_owned()),
        artifact_type: Some(artifact_type.to_owned()),
        config: Descriptor::new(media_types::OCI_EMPTY, empty_digest, 2),
        layers: vec![Descriptor::new(artifact_type, blob_digest, blob_size)],
        subject: Some(Descriptor::new(
            &subject.media_type,
            subject.digest,
            subject.size,
        )),
        annotations: Default::default(),
    };
    let mbytes = Bytes::from(manifest.to_bytes());
    let mdigest = Digest::of(&mbytes);
    let msize = mbytes.len() as u64;
    client
        .push_manifest(&r.with_digest(&mdigest), media_types::OCI_MANIFEST, mbytes)
        .await?;

    // Add it to the tag-schema index (read, modify, write: a concurrent
    // writer may race; the last one wins, as with every tag-schema client).
    let tag_ref = r.with_tag(&fallback_tag(&subject.digest));
    let mut entries = match client.fetch_manifest(&tag_ref).await {
        // An unreadable index is replaced rather than kept.
        Ok(m) => ImageIndex::parse(&m.bytes)
            .map(|ix| ix.manifests)
            .unwrap_or_default(),
        Err(Error::NotFound(_)) => Vec::new(),
        Err(e) => return Err(e),
    };
    entries.retain(|m| m.digest != mdigest);
    let mut entry = Descriptor::new(media_types::OCI_MANIFEST, mdigest, msize);
    entry.artifact_type = Some(artifact_type.to_owned());
    entries.push(entry);
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(media_types::OCI_INDEX.to_owned()),
        manifests: entries,
        annotations: Default::default(),
    };
    let ibytes = Bytes::from(serde_json::to_vec(&index).map_err(|e| Error::Config(e.to_string()))?);
    client
        .push_manifest(&tag_ref, media_types::OCI_INDEX, ibytes)
        .await?;
    Ok(mdigest)
}

/// The blobs of artifacts of type `artifact_type` attached to
/// `subject_digest` (tag schema). No index: an empty list.
pub async fn fetch_attached(
    client: &RegistryClient,
    r: &Reference,
    subject_digest: &Digest,
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
    let index = ImageIndex::parse(&index.bytes)
        .map_err(|e| Error::InvalidResponse(format!("referrers index: {e}")))?;
    let mut out = Vec::new();
    for m in index
        .manifests
        .iter()
        .filter(|m| m.artifact_type.as_deref() == Some(artifact_type))
        .take(MAX_ARTIFACTS)
    {
        let art = client.fetch_manifest(&r.with_digest(&m.digest)).await?;
        let art = ImageManifest::parse(&art.bytes)
            .map_err(|e| Error::InvalidResponse(format!("artifact {}: {e}", m.digest)))?;
        // Only artifacts that really name this subject count.
        if art.subject.as_ref().map(|s| &s.digest) != Some(subject_digest) {
            continue;
        }
        for l in art.layers.iter().filter(|l| l.media_type == artifact_type) {
            out.push(client.fetch_blob(r, &l.digest, MAX_ARTIFACT).await?);
        }
    }
    Ok(out)
}
