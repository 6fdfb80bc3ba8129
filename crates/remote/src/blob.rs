//! The registry's implementation of the lazy read path's fetch interface
//! ([`hologram_source::BlobSource`]).

use bytes::Bytes;
use hologram_oci::Digest;
use hologram_source::{check_range, check_ranges, BlobSource, SourceError, SourceKind};

use crate::{Error, Reference, RegistryClient};

/// One (layer) blob read from a registry with HTTP Range requests.
#[derive(Debug, Clone)]
pub struct RegistryBlob {
    client: RegistryClient,
    reference: Reference,
    digest: Digest,
    size: u64,
}

impl RegistryBlob {
    /// `size` is the blob's size from the manifest descriptor (or
    /// [`RegistryClient::blob_size`]).
    pub fn new(client: RegistryClient, r: Reference, digest: Digest, size: u64) -> Self {
        RegistryBlob {
            client,
            reference: r,
            digest,
            size,
        }
    }

    /// The image reference the blob is read through.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }
}

impl From<Error> for SourceError {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::OutOfRange(_) => SourceError::OutOfRange(msg),
            Error::DigestMismatch { .. } | Error::InvalidResponse(_) | Error::TooLarge(_) => {
                SourceError::Integrity(msg)
            }
            Error::Unauthorized(_) => SourceError::Denied(msg),
            Error::NotFound(_) => SourceError::NotFound(msg),
            Error::Timeout(_) | Error::Transport(_) => SourceError::Unavailable(msg),
            Error::Http { status, .. } if status >= 500 || status == 429 || status == 408 => {
                SourceError::Unavailable(msg)
            }
            _ => SourceError::Other(msg),
        }
    }
}

#[async_trait::async_trait]
impl BlobSource for RegistryBlob {
    fn digest(&self) -> &Digest {
        &self.digest
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn kind(&self) -> SourceKind {
        SourceKind::Registry
    }

    async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, SourceError> {
        check_range(&self.digest, self.size, offset, len)?;
        Ok(self
            .client
            .read_range(&self.reference, &self.digest, offset, len)
            .await?)
    }

    /// Several ranges at once, up to [`RANGES_IN_FLIGHT`] requests in
    /// parallel (each its own HTTP request: registries rarely answer
    /// multi-range requests): a read split by cached chunks, or a batch of
    /// a prefetch profile, costs about one round trip instead of one each.
    async fn read_ranges(
        &self,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<Bytes>, SourceError> {
        if ranges.len() <= 1 {
            let mut out = Vec::with_capacity(ranges.len());
            for r in ranges {
                out.push(self.read_at(r.start, r.end.saturating_sub(r.start)).await?);
            }
            return Ok(out);
        }
        check_ranges(&self.digest, self.size, ranges)?;
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(RANGES_IN_FLIGHT));
        let mut set = tokio::task::JoinSet::new();
        for (i, r) in ranges.iter().enumerate() {
            let this = self.clone();
            let limit = std::sync::Arc::clone(&limit);
            let (offset, len) = (r.start, r.end.saturating_sub(r.start));
            set.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (i, this.read_at(offset, len).await)
            });
        }
        let mut out: Vec<Option<Bytes>> = vec![None; ranges.len()];
        while let Some(joined) = set.join_next().await {
            let (i, res) =
                joined.map_err(|e| SourceError::Other(format!("range request task: {e}")))?;
            // The first error ends the call; dropping `set` aborts the rest.
            let bytes = res?;
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(bytes);
            }
        }
        out.into_iter()
            .map(|b| b.ok_or_else(|| SourceError::Other("a range got no answer".into())))
            .collect()
    }
}

/// Most range requests one [`RegistryBlob::read_ranges`] call has in
/// flight at once.
pub const RANGES_IN_FLIGHT: usize = 8;
