//! The registry's implementation of the lazy read path's fetch interface
//! ([`hologram_source::BlobSource`]).

use bytes::Bytes;
use hologram_oci::Digest;
use hologram_source::{check_range, BlobSource, SourceError, SourceKind};

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
}
