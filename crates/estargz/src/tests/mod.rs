#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chunk;
mod convert;
mod fixtures;
mod footer;
mod index;
mod toc;

use std::ffi::OsStr;
use std::io::Write;

use crate::{Index, Toc, TocEntry};

/// A syntactically valid digest for TOCs whose data is never read.
pub(crate) const D: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";
/// Blob size used for TOCs that are only validated.
pub(crate) const BLOB: u64 = 1 << 20;

pub(crate) fn toc(entries: Vec<TocEntry>) -> Toc {
    Toc {
        version: 1,
        entries,
    }
}

pub(crate) fn dir(name: &str) -> TocEntry {
    TocEntry {
        name: name.into(),
        kind: "dir".into(),
        mode: 0o755,
        ..TocEntry::default()
    }
}

/// A regular file with one chunk at blob `offset`.
pub(crate) fn reg(name: &str, size: i64, offset: i64) -> TocEntry {
    TocEntry {
        name: name.into(),
        kind: "reg".into(),
        size,
        mode: 0o644,
        offset: if size > 0 { offset } else { 0 },
        chunk_digest: if size > 0 { D.into() } else { String::new() },
        ..TocEntry::default()
    }
}

pub(crate) fn chunk(name: &str, offset: i64, chunk_offset: i64, chunk_size: i64) -> TocEntry {
    TocEntry {
        name: name.into(),
        kind: "chunk".into(),
        offset,
        chunk_offset,
        chunk_size,
        chunk_digest: D.into(),
        ..TocEntry::default()
    }
}

pub(crate) fn link(kind: &str, name: &str, target: &str) -> TocEntry {
    TocEntry {
        name: name.into(),
        kind: kind.into(),
        link_name: target.into(),
        mode: 0o777,
        ..TocEntry::default()
    }
}

pub(crate) fn build(entries: Vec<TocEntry>) -> Result<Index, crate::Error> {
    Index::build(&toc(entries), BLOB)
}

#[track_caller]
pub(crate) fn expect_err(entries: Vec<TocEntry>, needle: &str) -> String {
    match build(entries) {
        Ok(_) => panic!("TOC accepted; expected an error containing {needle:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "error {msg:?} does not contain {needle:?}"
            );
            msg
        }
    }
}

/// Resolves a slash-separated path from the root.
pub(crate) fn path(idx: &Index, p: &str) -> Option<u64> {
    let mut cur = Index::ROOT;
    for c in p.split('/').filter(|c| !c.is_empty()) {
        cur = idx.lookup(cur, OsStr::new(c))?;
    }
    Some(cur)
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub(crate) fn sha(data: &[u8]) -> hologram_oci::Digest {
    hologram_oci::Digest::of(data)
}

pub(crate) fn testdata(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// Reads a whole regular file of an index out of its blob, verifying every
/// chunk.
pub(crate) fn read_file(idx: &Index, ino: u64, blob: &[u8]) -> Vec<u8> {
    let node = idx.node(ino).unwrap();
    let mut out = Vec::new();
    for c in idx.chunks(node) {
        assert_eq!(c.file_offset, out.len() as u64);
        let start = c.blob_offset as usize;
        let end = (c.blob_offset + c.blob_len) as usize;
        out.extend(crate::decompress_chunk(c, &blob[start..end]).unwrap());
    }
    assert_eq!(out.len() as u64, node.size);
    out
}

/// Footer, TOC and index of a whole blob.
pub(crate) fn open_blob(
    blob: &[u8],
    expected_toc_digest: Option<&hologram_oci::Digest>,
) -> (Toc, hologram_oci::Digest, Index, u64) {
    let footer_start = blob.len() - crate::FOOTER_SIZE as usize;
    let toc_offset = crate::parse_footer(&blob[footer_start..]).unwrap();
    let (toc, digest) = crate::decode_toc(
        &blob[toc_offset as usize..footer_start],
        expected_toc_digest,
    )
    .unwrap();
    let idx = Index::build_with_toc_offset(&toc, blob.len() as u64, toc_offset).unwrap();
    (toc, digest, idx, toc_offset)
}
