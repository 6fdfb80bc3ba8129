//! Lazily fetched, verified, read-only layer filesystems.
//!
//! * [`layer`] — the read path: chunks, single-flight fetches, verification,
//!   prefetch and background fetch;
//! * [`cache`] — the on-disk chunk cache shared by all layers;
//! * [`profile`] — prefetch profiles learned on the node;
//! * [`demand`] — on-demand reads first: prefetch and background fetch
//!   yield to them;
//! * [`fuse`] — the FUSE edge (`LayerFs`; read(2) lands in `LayerFs::read`)
//!   and `mount`.
//!
//! Nothing here knows about containerd; the snapshotter decides what to mount.

#![forbid(unsafe_code)]

pub mod cache;
pub mod demand;
pub mod fuse;
pub mod layer;
pub mod observer;
pub mod profile;
pub mod spool;

use hologram_estargz::{parse_footer, read_toc_json, Index, IndexLimits, FOOTER_SIZE};
use hologram_oci::Digest;
use hologram_source::{BlobSource, SourceError};

/// Largest compressed TOC region we fetch.
pub const MAX_TOC_REGION: u64 = 64 * 1024 * 1024;

/// Why a layer could not be opened for lazy serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("layer {digest} is {size} bytes, too small to be eStargz")]
    TooSmall { digest: Digest, size: u64 },
    #[error("fetching {what} of layer {digest}: {source}")]
    Fetch {
        digest: Digest,
        what: &'static str,
        source: SourceError,
    },
    #[error("layer {digest} is not a valid eStargz blob: {source}")]
    Format {
        digest: Digest,
        source: hologram_estargz::Error,
    },
    #[error("layer {digest}: TOC region of {len} bytes at offset {offset} is out of bounds or over {MAX_TOC_REGION} bytes")]
    TocBounds {
        digest: Digest,
        offset: u64,
        len: u64,
    },
}

/// Fetches footer and TOC of an eStargz blob by range, checks the TOC
/// against `toc_digest` (from the verified manifest's layer annotation) and
/// builds the validated index within `limits`. Two range requests. Also
/// returns the compressed TOC region, which the caller may keep so a
/// restart needs no network.
pub async fn load_index(
    source: &dyn BlobSource,
    toc_digest: &Digest,
    limits: IndexLimits,
) -> Result<(Index, Vec<u8>), LoadError> {
    let digest = *source.digest();
    let size = source.size();
    if size < FOOTER_SIZE {
        return Err(LoadError::TooSmall { digest, size });
    }
    let footer = source
        .read_at(size - FOOTER_SIZE, FOOTER_SIZE)
        .await
        .map_err(|e| LoadError::Fetch {
            digest,
            what: "footer",
            source: e,
        })?;
    let toc_offset = parse_footer(&footer).map_err(|e| LoadError::Format { digest, source: e })?;
    let end = size - FOOTER_SIZE;
    let len = end.saturating_sub(toc_offset);
    if toc_offset >= end || len > MAX_TOC_REGION {
        return Err(LoadError::TocBounds {
            digest,
            offset: toc_offset,
            len,
        });
    }
    let region = source
        .read_at(toc_offset, len)
        .await
        .map_err(|e| LoadError::Fetch {
            digest,
            what: "TOC",
            source: e,
        })?;
    let index = index_from_region(&region, toc_digest, size, limits)
        .map_err(|e| LoadError::Format { digest, source: e })?;
    Ok((index, region.to_vec()))
}

/// Decodes a TOC region (the bytes from the TOC member to the footer),
/// checks it against `toc_digest` and builds the index within `limits`.
pub fn index_from_region(
    region: &[u8],
    toc_digest: &Digest,
    blob_size: u64,
    limits: IndexLimits,
) -> Result<Index, hologram_estargz::Error> {
    let (json, _) = read_toc_json(region, Some(toc_digest))?;
    let toc_offset = blob_size
        .saturating_sub(FOOTER_SIZE)
        .saturating_sub(region.len() as u64);
    Index::from_json(&json, blob_size, toc_offset, limits)
}
