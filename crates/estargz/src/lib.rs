//! The eStargz layer format: footer, TOC, a validated file index, chunk
//! verification and a converter from plain tar.
//!
//! An eStargz blob is a concatenation of gzip members that together form one
//! valid `tar.gz`:
//!
//! ```text
//! member 0       tar header(s) of the first entries …
//! member k       payload of one regular-file chunk, followed (in the same
//!                member) by the tar padding of that file and the tar headers
//!                of all following entries up to the next regular-file payload
//! …
//! TOC member     tar header "stargz.index.json" + TOC JSON + padding + the
//!                two zero blocks that end the tar archive
//! footer         51-byte empty gzip member whose Extra field holds the
//!                TOC member's offset as "%016xSTARGZ"
//! ```
//!
//! A TOC entry's `offset` is the blob offset of the gzip header of the member
//! whose *decompressed* bytes start with that chunk's payload (plus
//! `innerOffset` bytes to skip, when a writer packs several small payloads
//! into one member). The member's compressed extent ends where the next
//! member starts, i.e. at the next distinct chunk offset in blob order, or at
//! the TOC member for the last chunk.
//!
//! This crate is pure logic: it reads from the byte slices and readers it is
//! given and writes to the writers it is given (the converter spools its input
//! through [`tempfile::SpooledTempFile`], which stays in memory for inputs up to
//! 64 MiB).

#![forbid(unsafe_code)]

mod chunk;
mod convert;
mod footer;
mod index;
mod toc;

pub use chunk::decompress_chunk;
pub use convert::{convert, ConvertOptions, Converted};
pub use footer::{footer_bytes, parse_footer};
pub use index::{Children, Chunk, Index, IndexLimits, Node, NodeKind};
pub use toc::{decode_toc, encode_toc_json, read_toc_json, Toc, TocEntry};

/// Size of the eStargz footer.
pub const FOOTER_SIZE: u64 = 51;
/// Size of the legacy (CRFS) stargz footer, which is recognised only to be
/// rejected with a clear error.
pub const LEGACY_FOOTER_SIZE: u64 = 47;
/// Name of the tar entry that holds the TOC JSON.
pub const TOC_JSON_NAME: &str = "stargz.index.json";
/// Layer descriptor annotation carrying the digest of the TOC JSON.
pub const TOC_DIGEST_ANNOTATION: &str = hologram_oci::labels::TOC_DIGEST;
/// Layer descriptor annotation carrying the uncompressed size of the blob.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = hologram_oci::labels::UNCOMPRESSED_SIZE;
/// Landmark entry marking the end of the prioritized (prefetched) files.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// Landmark entry meaning "do not prefetch this layer".
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// Largest TOC JSON [`decode_toc`] accepts (uncompressed).
pub const MAX_TOC_JSON_SIZE: u64 = 64 << 20;
/// Most TOC entries [`Index::build`] accepts (the format's sanity limit;
/// daemons set a smaller budget through [`IndexLimits`]).
pub const MAX_ENTRIES: usize = 4_000_000;
/// Largest regular file [`Index::build`] accepts (1 TiB).
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Overlay xattr set on directories that hold an opaque marker.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Default chunk size of the converter (4 MiB, as ctr-remote).
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;

/// Everything that can go wrong reading or writing eStargz.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The footer is malformed.
    #[error("eStargz footer: {0}")]
    Footer(String),
    /// The blob ends with a legacy 47-byte stargz footer.
    #[error(
        "legacy stargz footer (47 bytes, Extra field without the 'SG' subfield id) is not supported; \
         only eStargz (51-byte footer) layers can be mounted"
    )]
    LegacyFooter,
    /// The TOC gzip member or its tar framing is malformed.
    #[error("eStargz TOC: {0}")]
    Toc(String),
    /// The TOC JSON is larger than [`MAX_TOC_JSON_SIZE`].
    #[error("eStargz TOC: {TOC_JSON_NAME} is {size} bytes, over the limit of {limit} bytes")]
    TocTooLarge {
        /// Size claimed by the tar header.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The TOC JSON does not parse.
    #[error("eStargz TOC: {TOC_JSON_NAME} is not a valid TOC: {0}")]
    TocJson(#[source] serde_json::Error),
    /// The TOC JSON does not have the expected digest.
    #[error("eStargz TOC digest mismatch: expected {expected}, computed {actual}")]
    TocDigestMismatch {
        /// The digest that was asked for.
        expected: hologram_oci::Digest,
        /// The digest of the TOC JSON found in the blob.
        actual: hologram_oci::Digest,
    },
    /// The TOC as a whole is unacceptable (version, entry count, blob size).
    #[error("eStargz TOC: {0}")]
    InvalidToc(String),
    /// One TOC entry is unacceptable.
    #[error("eStargz TOC entry #{index} {name:?}: {reason}")]
    Entry {
        /// Position of the entry in the TOC's `entries` array.
        index: usize,
        /// The entry's name as written in the TOC.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A chunk's compressed bytes do not decompress to the expected size.
    #[error("eStargz chunk at blob offset {blob_offset} (file offset {file_offset}): {reason}")]
    Chunk {
        /// Blob offset of the chunk's gzip member.
        blob_offset: u64,
        /// Offset of the chunk in its file.
        file_offset: u64,
        /// What went wrong.
        reason: String,
    },
    /// A chunk's decompressed bytes do not have the digest the TOC records.
    #[error(
        "eStargz chunk at blob offset {blob_offset} (file offset {file_offset}): digest mismatch: \
         expected {expected}, computed {actual}"
    )]
    ChunkDigestMismatch {
        /// Blob offset of the chunk's gzip member.
        blob_offset: u64,
        /// Offset of the chunk in its file.
        file_offset: u64,
        /// The TOC's digest.
        expected: hologram_oci::Digest,
        /// The digest of the decompressed bytes.
        actual: hologram_oci::Digest,
    },
    /// The converter's input is not a tar it can convert.
    #[error("converting to eStargz: input tar: {0}")]
    InputTar(String),
    /// Bad converter options.
    #[error("converting to eStargz: {0}")]
    Options(String),
    /// Reading the input or writing the output failed.
    #[error("eStargz I/O: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests;

/// Entry points of the fuzz targets (`fuzz/`), also replayed on stable by
/// `tests/fuzz_corpus.rs`. Each must never panic, whatever the input.
#[doc(hidden)]
pub mod fuzzing {
    use crate::{parse_footer, read_toc_json, Index, IndexLimits, Toc, FOOTER_SIZE};

    const LIMITS: IndexLimits = IndexLimits {
        max_entries: 100_000,
    };

    /// A TOC region (or a whole small blob): footer, TOC member, index.
    pub fn toc_region(data: &[u8]) {
        if let Some(f) = data.get(data.len().saturating_sub(FOOTER_SIZE as usize)..) {
            let _ = parse_footer(f);
        }
        let toc_offset = 1024u64;
        let blob_size = toc_offset + data.len() as u64 + FOOTER_SIZE;
        if let Ok((json, digest)) = read_toc_json(data, None) {
            assert!(digest.matches(&json));
            if let Ok(idx) = Index::from_json(&json, blob_size, toc_offset, LIMITS) {
                walk(&idx);
            }
        }
    }

    /// TOC JSON: the streaming builder, walked, and compared with the
    /// builder fed from the parsed TOC (both must agree).
    pub fn index_json(data: &[u8]) {
        let blob_size = 1u64 << 30;
        let toc_offset = blob_size - FOOTER_SIZE;
        let streamed = Index::from_json(data, blob_size, toc_offset, LIMITS);
        if let Ok(idx) = &streamed {
            walk(idx);
        }
        if let Ok(toc) = serde_json::from_slice::<Toc>(data) {
            let parsed = Index::build_limited(&toc, blob_size, toc_offset, LIMITS.max_entries);
            if let (Ok(a), Ok(b)) = (&streamed, &parsed) {
                assert_eq!(a.len(), b.len(), "streamed and parsed indexes differ");
                assert_eq!(a.blob_order().len(), b.blob_order().len());
            }
        }
    }

    /// Every accessor on every inode, as the FUSE layer uses them.
    fn walk(idx: &Index) {
        for ino in 1..=idx.len() as u64 {
            let Some(n) = idx.node(ino) else { continue };
            let mut covered = 0;
            for c in idx.chunks(n) {
                assert_eq!(c.file_offset, covered, "chunks not contiguous");
                covered += c.size;
                assert!(c.blob_offset + c.blob_len <= 1 << 40);
            }
            assert!(idx.chunks(n).is_empty() || covered == n.size);
            let _ = (idx.link_target(n), idx.xattrs(n));
            for (name, child) in idx.children(ino) {
                assert_eq!(idx.lookup(ino, name), Some(child), "lookup disagrees");
                assert!(idx.node(child).is_some());
            }
        }
        let _ = idx.all_chunks().count();
        let _ = idx.heap_bytes();
    }
}
