//! The transport-agnostic range reader used by the FUSE layer.

use bytes::Bytes;

use crate::{Error, Reference, RegistryClient};

/// Random access to one (layer) blob. Implementations bound the time of
/// each read (`total_timeout`) and retry transient failures themselves.
#[async_trait::async_trait]
pub trait BlobSource: Send + Sync + std::fmt::Debug {
    /// The blob's digest.
    fn digest(&self) -> &str;
    /// The blob's size in bytes.
    fn size(&self) -> u64;
    /// Reads `[offset, offset+len)`; the range must lie inside the blob
    /// ([`Error::OutOfRange`] otherwise). Exactly `len` bytes or an error.
    async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, Error>;
    /// A short label for metrics/logs: `"registry"`, later `"ctp96"`.
    fn source_kind(&self) -> &'static str;
}

/// A [`BlobSource`] reading a blob from a registry with HTTP Range requests.
#[derive(Debug, Clone)]
pub struct RegistryBlob {
    client: RegistryClient,
    reference: Reference,
    digest: String,
    size: u64,
}

impl RegistryBlob {
    /// `size` is the blob's size from the manifest descriptor (or
    /// [`RegistryClient::blob_size`]).
    pub fn new(client: RegistryClient, r: Reference, digest: String, size: u64) -> Self {
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

#[async_trait::async_trait]
impl BlobSource for RegistryBlob {
    fn digest(&self) -> &str {
        &self.digest
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => {}
            _ => {
                return Err(Error::OutOfRange(format!(
                    "read of {len} bytes at {offset} past the end of {} ({} bytes)",
                    self.digest, self.size
                )))
            }
        }
        self.client
            .read_range(&self.reference, &self.digest, offset, len)
            .await
    }

    fn source_kind(&self) -> &'static str {
        "registry"
    }
}
