//! The fetch interface of the lazy read path.
//!
//! The consumer owns the interface: `hologram-fs` reads layer bytes through
//! [`BlobSource`] and knows nothing of registries, HTTP or credentials; the
//! registry client (`hologram-remote`) and the CTP-96 client implement it.
//! Every byte a source returns is still checked by the reader (chunk digests
//! from the TOC): a source moves bytes, it is not trusted with them.

#![forbid(unsafe_code)]

use std::ops::Range;

use bytes::Bytes;
use hologram_oci::Digest;

/// Which transport a source uses (a metric label, a provenance label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// OCI distribution API, HTTP Range requests.
    Registry,
    /// The Hologram CTP-96 transport (batched, framed range reads).
    Ctp96,
    /// A file on this machine ([`FileBlob`]).
    Local,
}

impl SourceKind {
    /// `"registry"`, `"ctp96"`, `"local"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Registry => "registry",
            SourceKind::Ctp96 => "ctp96",
            SourceKind::Local => "local",
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a read failed, by what the reader can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The range lies outside the blob (a bug or a lying index).
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// The source answered with bytes that fail its own checks (short body,
    /// wrong Content-Range, a frame with a bad digest, ...).
    #[error("integrity: {0}")]
    Integrity(String),
    /// Refused: credentials missing or wrong, or not allowed.
    #[error("denied: {0}")]
    Denied(String),
    /// The blob (or repository) does not exist there.
    #[error("not found: {0}")]
    NotFound(String),
    /// Could not be reached or did not answer in time (worth trying again later).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Random access to one layer blob. Implementations bound the time of
/// every call (their own timeouts and retries) and return exactly the
/// bytes asked for, or an error.
#[async_trait::async_trait]
pub trait BlobSource: Send + Sync + std::fmt::Debug {
    /// The blob's digest.
    fn digest(&self) -> &Digest;
    /// The blob's size in bytes.
    fn size(&self) -> u64;
    /// The transport.
    fn kind(&self) -> SourceKind;
    /// Reads `[offset, offset+len)`; the range must lie inside the blob
    /// ([`SourceError::OutOfRange`] otherwise). Exactly `len` bytes.
    async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, SourceError>;
    /// Reads several ranges; the answer has one entry per range, in order.
    /// Transports that batch (CTP-96) answer in one round trip; the default
    /// reads the ranges one after another.
    async fn read_ranges(&self, ranges: &[Range<u64>]) -> Result<Vec<Bytes>, SourceError> {
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            out.push(self.read_at(r.start, r.end.saturating_sub(r.start)).await?);
        }
        Ok(out)
    }
}

/// Checks that `[offset, offset+len)` lies inside a blob of `size` bytes.
pub fn check_range(digest: &Digest, size: u64, offset: u64, len: u64) -> Result<(), SourceError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(SourceError::OutOfRange(format!(
            "read of {len} bytes at {offset} past the end of {digest} ({size} bytes)"
        ))),
    }
}

/// Checks every range of `ranges` as [`check_range`] does.
pub fn check_ranges(digest: &Digest, size: u64, ranges: &[Range<u64>]) -> Result<(), SourceError> {
    ranges
        .iter()
        .try_for_each(|r| check_range(digest, size, r.start, r.end.saturating_sub(r.start)))
}

/// A blob in a local file (a layer converted on this machine, a test
/// fixture): the same interface as a remote source.
#[derive(Debug)]
pub struct FileBlob {
    file: std::fs::File,
    digest: Digest,
    size: u64,
}

impl FileBlob {
    /// Opens `path`, which must hold the blob of digest `digest` (not
    /// checked here: the reader checks every chunk, and a whole-layer check
    /// compares the digest).
    pub fn open(path: &std::path::Path, digest: Digest) -> std::io::Result<FileBlob> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        Ok(FileBlob { file, digest, size })
    }
}

#[async_trait::async_trait]
impl BlobSource for FileBlob {
    fn digest(&self) -> &Digest {
        &self.digest
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn kind(&self) -> SourceKind {
        SourceKind::Local
    }
    async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, SourceError> {
        use std::os::unix::fs::FileExt as _;
        check_range(&self.digest, self.size, offset, len)?;
        let n =
            usize::try_from(len).map_err(|_| SourceError::OutOfRange(format!("{len} bytes")))?;
        let mut buf = vec![0u8; n];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| SourceError::Other(format!("reading {}: {e}", self.digest)))?;
        Ok(Bytes::from(buf))
    }
}
