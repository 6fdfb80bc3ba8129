//! Blobs produced by ctr-remote (stargz-snapshotter 0.12) from
//! testdata/allkinds.tar.gz; see testdata/gen-fixtures.sh.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;

use super::{open_blob, path, read_file, sha, testdata};
use crate::{
    convert, ConvertOptions, Index, NodeKind, Toc, TocEntry, TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
};

struct Fixture {
    blob: Vec<u8>,
    meta: serde_json::Value,
}

fn fixture(name: &str) -> Fixture {
    let all: serde_json::Value =
        serde_json::from_slice(&std::fs::read(testdata("fixtures.json")).unwrap()).unwrap();
    Fixture {
        blob: std::fs::read(testdata(name)).unwrap(),
        meta: all[name].clone(),
    }
}

impl Fixture {
    fn annotation(&self, key: &str) -> String {
        self.meta["annotations"][key].as_str().unwrap().to_owned()
    }
}

/// Regular files of the source layer: path -> contents.
fn source_files() -> (Vec<u8>, BTreeMap<String, Vec<u8>>) {
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&std::fs::read(testdata("allkinds.tar.gz")).unwrap()[..])
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() == tar::EntryType::Regular {
            let p = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            files.insert(p, data);
        }
    }
    (tar_bytes, files)
}

fn check_fixture(name: &str) -> (Toc, Index, Vec<u8>) {
    let f = fixture(name);
    assert_eq!(
        sha(&f.blob).to_string(),
        f.meta["digest"].as_str().unwrap(),
        "{name}: blob digest"
    );
    assert_eq!(f.blob.len() as u64, f.meta["size"].as_u64().unwrap());

    // The TOC digest we compute is the one ctr-remote annotated.
    let want: hologram_oci::Digest = f.annotation(TOC_DIGEST_ANNOTATION).parse().unwrap();
    let (toc, digest, idx, _) = open_blob(&f.blob, Some(&want));
    assert_eq!(digest, want, "{name}");

    // The uncompressed stream matches the diff ID and size annotation.
    let mut unz = Vec::new();
    flate2::read::MultiGzDecoder::new(&f.blob[..])
        .read_to_end(&mut unz)
        .unwrap();
    assert_eq!(
        sha(&unz).to_string(),
        f.meta["diff_id"].as_str().unwrap(),
        "{name}"
    );
    assert_eq!(
        unz.len().to_string(),
        f.annotation(UNCOMPRESSED_SIZE_ANNOTATION)
    );

    // Every chunk decompresses and verifies; files match the source layer.
    for c in idx.all_chunks() {
        let bytes = &f.blob[c.blob_offset as usize..(c.blob_offset + c.blob_len) as usize];
        crate::decompress_chunk(c, bytes).unwrap();
    }
    let (_, files) = source_files();
    for (p, data) in &files {
        if p.contains(".wh.") {
            continue;
        }
        let ino = path(&idx, p).unwrap_or_else(|| panic!("{name}: {p} missing"));
        assert_eq!(&read_file(&idx, ino, &f.blob), data, "{name}: {p}");
    }

    // Presentation.
    let big = idx.node(path(&idx, "data/big.bin").unwrap()).unwrap();
    assert_eq!(
        (big.size, big.nlink, big.uid, big.gid, big.mode),
        (70000, 2, 1000, 1000, 0o644)
    );
    assert_eq!(path(&idx, "data/hard.bin"), Some(big.ino));
    let gone = idx.node(path(&idx, "old/removed").unwrap()).unwrap();
    assert_eq!(
        (gone.kind, gone.rdev_major, gone.rdev_minor),
        (NodeKind::Char, 0, 0)
    );
    assert!(idx
        .lookup(path(&idx, "old").unwrap(), OsStr::new(".wh.removed"))
        .is_none());
    let opq = idx.node(path(&idx, "opq").unwrap()).unwrap();
    assert_eq!(
        idx.xattrs(opq).unwrap()[OsStr::new("trusted.overlay.opaque")],
        b"y"
    );
    let names: Vec<_> = idx.children(opq.ino).map(|(n, _)| n.to_owned()).collect();
    assert_eq!(names, ["new.txt"]);
    for d in ["implied", "implied/a", "implied/a/b"] {
        let n = idx.node(path(&idx, d).unwrap()).unwrap();
        assert_eq!((n.kind, n.mode, n.uid), (NodeKind::Dir, 0o755, 0), "{d}");
    }
    let tool = idx.node(path(&idx, "bin/tool").unwrap()).unwrap();
    assert_eq!(
        idx.xattrs(tool).unwrap()[OsStr::new("security.capability")],
        [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        idx.node(path(&idx, "bin/suid").unwrap()).unwrap().mode,
        0o4755
    );
    assert_eq!(idx.node(path(&idx, "tmp").unwrap()).unwrap().mode, 0o1777);
    let data = idx.node(path(&idx, "data").unwrap()).unwrap();
    assert_eq!((data.mode, data.uid), (0o750, 1000));
    assert_eq!(
        idx.xattrs(data).unwrap()[OsStr::new("user.comment")],
        b"hello xattr"
    );
    let null = idx.node(path(&idx, "dev/null").unwrap()).unwrap();
    assert_eq!(
        (null.kind, null.rdev_major, null.rdev_minor, null.mode),
        (NodeKind::Char, 1, 3, 0o666)
    );
    let sda = idx.node(path(&idx, "dev/sda").unwrap()).unwrap();
    assert_eq!((sda.kind, sda.rdev_major, sda.gid), (NodeKind::Block, 8, 6));
    assert_eq!(
        idx.node(path(&idx, "dev/fifo").unwrap()).unwrap().kind,
        NodeKind::Fifo
    );
    let link = idx.node(path(&idx, "data/link-to-big").unwrap()).unwrap();
    assert_eq!(idx.link_target(link), Some(OsStr::new("big.bin")));
    assert_eq!(idx.node(Index::ROOT).unwrap().mtime_secs, 1_700_000_000);
    assert!(path(&idx, ".no.prefetch.landmark").is_none());
    assert!(path(&idx, ".prefetch.landmark").is_none());
    assert!(path(&idx, &format!("long/{}.txt", "x".repeat(120))).is_some());
    (toc, idx, f.blob)
}

#[test]
fn ctr_remote_chunked_blob() {
    let (toc, idx, _) = check_fixture("ctrremote-chunked.esgz");
    assert_eq!(idx.prefetch_end(), None);
    let big = idx.node(path(&idx, "data/big.bin").unwrap()).unwrap();
    let sizes: Vec<u64> = idx.chunks(big).iter().map(|c| c.size).collect();
    assert_eq!(sizes, [16384, 16384, 16384, 16384, 4464]);
    assert_eq!(toc.entries[0].name, ".no.prefetch.landmark");
}

#[test]
fn ctr_remote_prefetch_blob() {
    let (toc, idx, _) = check_fixture("ctrremote-prefetch.esgz");
    let end = idx.prefetch_end().unwrap();
    // Recorded files lie before the landmark, the rest after it.
    for p in ["etc/hostname", "data/big.bin", "bin/tool"] {
        let n = idx.node(path(&idx, p).unwrap()).unwrap();
        assert!(idx.chunks(n).iter().all(|c| c.blob_offset < end), "{p}");
    }
    for p in ["bin/suid", "opq/new.txt"] {
        let n = idx.node(path(&idx, p).unwrap()).unwrap();
        assert!(idx.chunks(n)[0].blob_offset > end, "{p}");
    }
    let big = idx.node(path(&idx, "data/big.bin").unwrap()).unwrap();
    assert_eq!(idx.chunks(big).len(), 1);
    let landmark = toc
        .entries
        .iter()
        .position(|e| e.name == ".prefetch.landmark")
        .unwrap();
    assert_eq!(toc.entries[landmark].offset as u64, end);
}

/// Our converter, fed the same layer, writes the same TOC as ctr-remote
/// except for gzip offsets (different deflate implementations) and the
/// landmark's mode.
fn compare_with_ctr_remote(fixture_name: &str, opts: &ConvertOptions) {
    let (tar_bytes, _) = source_files();
    let mut ours = Vec::new();
    let conv = convert(&tar_bytes[..], &mut ours, opts).unwrap();
    let (our_toc, _, _, _) = open_blob(&ours, Some(&conv.toc_digest));
    let f = fixture(fixture_name);
    let (their_toc, _, _, _) = open_blob(&f.blob, None);
    let strip = |e: &TocEntry| TocEntry {
        offset: 0,
        mode: if e.name.ends_with("prefetch.landmark") {
            0
        } else {
            e.mode
        },
        ..e.clone()
    };
    assert_eq!(our_toc.version, their_toc.version);
    assert_eq!(our_toc.entries.len(), their_toc.entries.len());
    for (a, b) in our_toc.entries.iter().zip(&their_toc.entries) {
        assert_eq!(strip(a), strip(b));
        assert_eq!(a.offset == 0, b.offset == 0, "{}", a.name);
    }
}

#[test]
fn our_toc_matches_ctr_remote_chunked() {
    compare_with_ctr_remote(
        "ctrremote-chunked.esgz",
        &ConvertOptions {
            chunk_size: 16384,
            ..ConvertOptions::default()
        },
    );
}

#[test]
fn our_toc_matches_ctr_remote_prefetch() {
    compare_with_ctr_remote(
        "ctrremote-prefetch.esgz",
        &ConvertOptions {
            prioritized_files: vec![
                "etc/hostname".into(),
                "data/big.bin".into(),
                "bin/tool".into(),
            ],
            ..ConvertOptions::default()
        },
    );
}

#[test]
fn tampered_fixture_fails_verification() {
    let f = fixture("ctrremote-chunked.esgz");
    let (_, _, idx, _) = open_blob(&f.blob, None);
    let c = idx.all_chunks().nth(3).unwrap();
    // Re-compress different bytes of the same size in place of the chunk.
    let fake = super::gzip(&vec![b'z'; c.size as usize]);
    assert!(matches!(
        crate::decompress_chunk(c, &fake),
        Err(crate::Error::ChunkDigestMismatch { .. })
    ));
    // A flipped bit inside the member: a gzip error or a digest mismatch.
    let mut blob = f.blob.clone();
    blob[(c.blob_offset + c.blob_len / 2) as usize] ^= 0x10;
    let bytes = &blob[c.blob_offset as usize..(c.blob_offset + c.blob_len) as usize];
    assert!(crate::decompress_chunk(c, bytes).is_err());
    // A wrong TOC digest.
    let footer_start = f.blob.len() - 51;
    let toc_offset = crate::parse_footer(&f.blob[footer_start..]).unwrap() as usize;
    let wrong = sha(b"not the toc");
    assert!(matches!(
        crate::decode_toc(&f.blob[toc_offset..footer_start], Some(&wrong)),
        Err(crate::Error::TocDigestMismatch { .. })
    ));
}
