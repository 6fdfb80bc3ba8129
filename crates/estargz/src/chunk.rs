//! Decompression and verification of one chunk.

use std::io::Read;

use hologram_oci::Digest;

use crate::{Chunk, Error};

/// Largest up-front allocation for a chunk's bytes; bigger chunks grow as
/// data actually decompresses.
const MAX_PREALLOC: u64 = 16 << 20;

/// Decompresses one chunk from the bytes of its gzip member
/// (`blob[blob_offset .. blob_offset + blob_len]`; bytes past the end of the
/// member are ignored), skips `inner_offset` bytes, takes `size` bytes and
/// checks them against the chunk's digest. Never returns unverified bytes.
///
/// The member usually continues past the chunk (tar padding and the headers
/// of following entries); only the chunk's own bytes are decompressed.
pub fn decompress_chunk(chunk: &Chunk, compressed: &[u8]) -> Result<Vec<u8>, Error> {
    let err = |reason: String| Error::Chunk {
        blob_offset: chunk.blob_offset,
        file_offset: chunk.file_offset,
        reason,
    };
    let mut gz = flate2::read::GzDecoder::new(compressed);
    if chunk.inner_offset > 0 {
        let skipped = std::io::copy(
            &mut (&mut gz).take(chunk.inner_offset),
            &mut std::io::sink(),
        )
        .map_err(|e| err(format!("decompressing: {e}")))?;
        if skipped != chunk.inner_offset {
            return Err(err(format!(
                "gzip member ends after {skipped} bytes, before the chunk's inner offset {}",
                chunk.inner_offset
            )));
        }
    }
    let mut out = Vec::with_capacity(chunk.size.min(MAX_PREALLOC) as usize);
    (&mut gz)
        .take(chunk.size)
        .read_to_end(&mut out)
        .map_err(|e| err(format!("decompressing: {e}")))?;
    if out.len() as u64 != chunk.size {
        return Err(err(format!(
            "gzip member holds only {} of the chunk's {} bytes",
            out.len(),
            chunk.size
        )));
    }
    let actual = Digest::of(&out);
    if actual != chunk.digest {
        return Err(Error::ChunkDigestMismatch {
            blob_offset: chunk.blob_offset,
            file_offset: chunk.file_offset,
            expected: chunk.digest,
            actual,
        });
    }
    Ok(out)
}
