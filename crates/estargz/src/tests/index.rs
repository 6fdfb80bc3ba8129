use std::ffi::{OsStr, OsString};

use super::{build, chunk, dir, expect_err, link, path, reg, toc, BLOB, D};
use crate::{Error, Index, NodeKind, TocEntry, FOOTER_SIZE, MAX_FILE_SIZE};

// ---------------------------------------------------------------- names

#[test]
fn rejects_escaping_names() {
    for name in [
        "../x",
        "a/../../x",
        "a/../b",
        "..",
        "/..",
        "./../x",
        "a/b/..",
    ] {
        let msg = expect_err(vec![reg(name, 0, 0)], "\"..\" component");
        assert!(
            msg.contains(&format!("{name:?}")),
            "error does not name the entry: {msg}"
        );
    }
    // Also as a hardlink target.
    expect_err(
        vec![reg("f", 0, 0), link("hardlink", "g", "../f")],
        "\"..\" component",
    );
}

#[test]
fn absolute_and_dot_names_are_made_relative() {
    let idx = build(vec![
        reg("/etc/x", 0, 0),
        reg("./etc/y", 0, 0),
        reg("etc//z", 0, 0),
        reg("./etc/./w", 0, 0),
    ])
    .unwrap();
    for p in ["etc/x", "etc/y", "etc/z", "etc/w"] {
        assert!(path(&idx, p).is_some(), "{p} missing");
    }
    let names: Vec<_> = idx
        .children(path(&idx, "etc").unwrap())
        .map(|(n, _)| n.to_owned())
        .collect();
    assert_eq!(names, ["w", "x", "y", "z"]);
    // "/etc/x" and "etc/x" are the same file.
    expect_err(
        vec![reg("/etc/x", 0, 0), reg("etc/x", 0, 0)],
        "duplicate entry",
    );
}

#[test]
fn rejects_empty_and_nul_names() {
    expect_err(vec![reg("", 0, 0)], "empty name");
    expect_err(vec![reg("a\0b", 0, 0)], "NUL");
    expect_err(vec![reg(&"x".repeat(256), 0, 0)], "longer than 255");
    let long = vec!["d"; 2100].join("/");
    expect_err(vec![reg(&long, 0, 0)], "longer than 4096");
}

#[test]
fn rejects_duplicates() {
    let msg = expect_err(
        vec![dir("a/"), reg("a/f", 0, 0), reg("a/f", 0, 0)],
        "duplicate entry",
    );
    assert!(msg.contains("#2") && msg.contains("#1"), "{msg}");
    expect_err(vec![dir("a"), dir("a/")], "duplicate entry");
    expect_err(vec![dir("./"), dir("/")], "duplicate entry");
    expect_err(
        vec![reg("a/.wh.x", 0, 0), reg("a/.wh.x", 0, 0)],
        "duplicate entry",
    );
}

#[test]
fn rejects_entries_below_non_directories() {
    expect_err(
        vec![reg("a", 0, 0), reg("a/b", 0, 0)],
        "parent \"a\" is not a directory",
    );
    expect_err(
        vec![reg("a/b", 0, 0), reg("a", 0, 0)],
        "other entries lie below it",
    );
    expect_err(
        vec![link("symlink", "l", "x"), dir("l/d")],
        "not a directory",
    );
    expect_err(
        vec![reg("f", 0, 0), link("hardlink", "h", "f"), reg("h/x", 0, 0)],
        "already exists",
    );
    expect_err(vec![reg(".wh.a/b", 0, 0)], "whiteout name");
    expect_err(vec![reg("x", 0, 0), reg("", 0, 0)], "empty name");
    expect_err(vec![reg("./", 0, 0)], "root entry must be a directory");
}

// ---------------------------------------------------------------- types, version, counts

#[test]
fn rejects_unknown_types_and_versions() {
    let mut e = reg("s", 0, 0);
    e.kind = "socket".into();
    expect_err(vec![e], "unknown entry type \"socket\"");
    let mut e = reg("s", 0, 0);
    e.kind = String::new();
    expect_err(vec![e], "unknown entry type");

    let mut t = toc(vec![dir("a")]);
    t.version = 2;
    let e = Index::build(&t, BLOB).unwrap_err();
    assert!(e.to_string().contains("version 2"), "{e}");
    t.version = 0;
    assert!(Index::build(&t, BLOB).is_err());
}

#[test]
fn rejects_too_many_entries() {
    let t = toc(vec![dir("a"), dir("b"), dir("c"), dir("d")]);
    assert!(Index::build_limited(&t, BLOB, BLOB - FOOTER_SIZE, 4).is_ok());
    let e = Index::build_limited(&t, BLOB, BLOB - FOOTER_SIZE, 3).unwrap_err();
    assert!(matches!(e, Error::InvalidToc(_)), "{e}");
    assert!(
        e.to_string().contains("more than 3 entries (the limit)"),
        "{e}"
    );
    assert_eq!(crate::MAX_ENTRIES, 4_000_000);
}

#[test]
fn rejects_bad_metadata() {
    let mut e = reg("f", 0, 0);
    e.uid = -1;
    expect_err(vec![e], "uid -1 is out of range");
    let mut e = reg("f", 0, 0);
    e.gid = 1 << 32;
    expect_err(vec![e], "gid 4294967296 is out of range");
    let mut e = reg("f", 0, 0);
    e.mode = -1;
    expect_err(vec![e], "mode -1");
    let mut e = reg("f", 0, 0);
    e.mod_time = "last tuesday".into();
    expect_err(vec![e], "RFC 3339");
    let mut e = link("char", "c", "");
    e.dev_major = -3;
    expect_err(vec![e], "devMajor -3");
    let mut e = reg("f", 0, 0);
    e.xattrs.insert("bad\0name".into(), vec![]);
    expect_err(vec![e], "invalid xattr name");
    let mut e = reg("f", 0, 0);
    e.xattrs.insert("user.big".into(), vec![0; 65537]);
    expect_err(vec![e], "user.big");
    expect_err(vec![link("symlink", "s", "")], "symlink target is empty");
}

// ---------------------------------------------------------------- sizes and chunks

#[test]
fn rejects_absurd_sizes() {
    // Over 1024 x blob size.
    let msg = expect_err(vec![reg("f", (BLOB * 1024 + 1) as i64, 100)], "absurd");
    assert!(msg.contains("\"f\""), "{msg}");
    assert!(build(vec![reg("f", (BLOB * 1024) as i64, 100)]).is_ok());
    // Over 1 TiB even for a huge blob.
    let t = toc(vec![reg("f", MAX_FILE_SIZE as i64 + 1, 100)]);
    let e = Index::build(&t, 1 << 50).unwrap_err();
    assert!(e.to_string().contains("absurd"), "{e}");
    expect_err(vec![reg("f", -5, 100)], "size -5 is negative");
    expect_err(vec![reg("f", i64::MAX, 100)], "absurd");
}

#[test]
fn rejects_offsets_past_the_blob() {
    let end = (BLOB - FOOTER_SIZE) as i64;
    assert!(build(vec![reg("f", 10, end - 1)]).is_ok());
    expect_err(vec![reg("f", 10, end)], "beyond the blob's payload area");
    expect_err(vec![reg("f", 10, i64::MAX)], "beyond");
    expect_err(vec![reg("f", 10, -1)], "offset -1 is negative");
    expect_err(
        vec![
            reg_chunked("f", 200, 100, 10),
            chunk("f", BLOB as i64, 100, 0),
        ],
        "beyond",
    );
    // The TOC offset bounds payloads more tightly.
    let t = toc(vec![reg("f", 10, 500)]);
    assert!(Index::build_with_toc_offset(&t, BLOB, 501).is_ok());
    let e = Index::build_with_toc_offset(&t, BLOB, 500).unwrap_err();
    assert!(e.to_string().contains("beyond"), "{e}");
    assert!(Index::build_with_toc_offset(&t, BLOB, BLOB - FOOTER_SIZE + 1).is_err());
    assert!(Index::build(&t, FOOTER_SIZE - 1).is_err());
}

/// A "reg" entry that is the first of several chunks.
fn reg_chunked(name: &str, size: i64, chunk_size: i64, offset: i64) -> TocEntry {
    TocEntry {
        chunk_size,
        ..reg(name, size, offset)
    }
}

#[test]
fn accepts_well_formed_chunks() {
    let idx = build(vec![
        reg_chunked("f", 250, 100, 10),
        chunk("f", 20, 100, 100),
        chunk("f", 30, 200, 0),
        reg("g", 5, 40),
    ])
    .unwrap();
    let f = idx.node(path(&idx, "f").unwrap()).unwrap();
    let got: Vec<_> = idx
        .chunks(f)
        .iter()
        .map(|c| (c.file_offset, c.size, c.blob_offset, c.blob_len))
        .collect();
    assert_eq!(
        got,
        [(0, 100, 10, 10), (100, 100, 20, 10), (200, 50, 30, 10)]
    );
    let g = idx.node(path(&idx, "g").unwrap()).unwrap();
    assert_eq!(idx.chunks(g)[0].blob_len, BLOB - FOOTER_SIZE - 40);
}

#[test]
fn rejects_overlapping_chunks() {
    let msg = expect_err(
        vec![
            reg_chunked("f", 300, 100, 10),
            chunk("f", 20, 50, 100),
            chunk("f", 30, 150, 0),
        ],
        "overlaps the previous chunk",
    );
    assert!(msg.contains("#1") && msg.contains("\"f\""), "{msg}");
    // chunkSize 0 ("to the end") on a chunk that is not the last.
    expect_err(vec![reg("f", 300, 10), chunk("f", 20, 100, 0)], "overlaps");
}

#[test]
fn rejects_gaps_and_bad_coverage() {
    expect_err(
        vec![reg_chunked("f", 300, 100, 10), chunk("f", 20, 150, 0)],
        "gap in the file data",
    );
    let mut first = reg("f", 300, 10);
    first.chunk_offset = 10;
    expect_err(vec![first], "first chunk starts at file offset 10, not 0");
    expect_err(
        vec![reg_chunked("f", 300, 100, 10), chunk("f", 20, 100, 100)],
        "chunks cover only 200 of the file's 300 bytes",
    );
    expect_err(
        vec![reg_chunked("f", 300, 400, 10)],
        "extends past the file size",
    );
    expect_err(
        vec![
            reg_chunked("f", 300, 100, 10),
            chunk("f", 20, 100, 100),
            chunk("f", 30, 200, 100),
            chunk("f", 40, 300, 0),
        ],
        "not below the file size",
    );
    expect_err(
        vec![reg("f", 0, 0), chunk("f", 20, 0, 0)],
        "chunk entry for an empty file",
    );
    expect_err(
        vec![dir("d"), chunk("d", 20, 0, 10)],
        "does not follow a \"reg\" entry",
    );
    expect_err(vec![chunk("f", 20, 0, 10)], "does not follow");
    expect_err(
        vec![reg_chunked("f", 200, 100, 10), chunk("g", 20, 100, 0)],
        "does not belong to the preceding file",
    );
    let mut c = chunk("f", 20, 100, 0);
    c.chunk_size = -1;
    expect_err(vec![reg_chunked("f", 200, 100, 10), c], "chunkSize -1");
}

#[test]
fn rejects_missing_or_bad_digests() {
    let mut e = reg("f", 10, 10);
    e.chunk_digest.clear();
    expect_err(vec![e.clone()], "no chunkDigest");
    // A single-chunk file may give only "digest".
    e.digest = D.into();
    let idx = build(vec![e]).unwrap();
    assert_eq!(idx.chunks(idx.node(2).unwrap())[0].digest.to_string(), D);
    // ... but every chunk of a chunked file needs its own.
    let mut c = chunk("f", 20, 100, 0);
    c.chunk_digest.clear();
    let mut first = reg_chunked("f", 200, 100, 10);
    first.digest = D.into();
    expect_err(vec![first, c], "no chunkDigest");
    let mut e = reg("f", 10, 10);
    e.chunk_digest = "sha256:xyz".into();
    expect_err(vec![e], "invalid digest \"sha256:xyz\"");
    let mut e = reg("f", 10, 10);
    e.chunk_digest = format!("sha512:{}", "0".repeat(128));
    expect_err(vec![e], "only sha256");
}

#[test]
fn rejects_payload_claimed_twice() {
    expect_err(
        vec![reg("f", 10, 100), reg("g", 10, 100)],
        "also claimed by entry #0",
    );
    // Same member, different inner offsets: fine (minimum chunk size mode).
    let mut g = reg("g", 10, 100);
    g.inner_offset = 10;
    let idx = build(vec![reg("f", 10, 100), g, reg("h", 1, 300)]).unwrap();
    let g = idx.node(path(&idx, "g").unwrap()).unwrap();
    assert_eq!(
        (
            idx.chunks(g)[0].blob_offset,
            idx.chunks(g)[0].blob_len,
            idx.chunks(g)[0].inner_offset
        ),
        (100, 200, 10)
    );
}

// ---------------------------------------------------------------- hardlinks

#[test]
fn hardlinks_share_the_inode() {
    let idx = build(vec![
        reg("f", 3, 100),
        link("hardlink", "g", "f"),
        link("hardlink", "d/h", "/f"),
        link("hardlink", "chain", "d/h"),
        reg("other", 0, 0),
    ])
    .unwrap();
    let f = path(&idx, "f").unwrap();
    for p in ["g", "d/h", "chain"] {
        assert_eq!(path(&idx, p), Some(f), "{p}");
    }
    let node = idx.node(f).unwrap();
    assert_eq!(node.nlink, 4);
    assert_eq!(node.parent, Index::ROOT);
    assert_eq!(idx.node(path(&idx, "other").unwrap()).unwrap().nlink, 1);
    // One node for four names; "d" is implied.
    assert_eq!(idx.len(), 4);
    assert_eq!(idx.all_chunks().count(), 1);
}

#[test]
fn rejects_bad_hardlinks() {
    expect_err(vec![link("hardlink", "g", "missing")], "does not exist");
    expect_err(vec![link("hardlink", "g", "")], "empty name");
    expect_err(
        vec![dir("d"), link("hardlink", "g", "d")],
        "is not a regular file",
    );
    expect_err(
        vec![link("symlink", "s", "x"), link("hardlink", "g", "s")],
        "is not a regular file",
    );
    expect_err(
        vec![link("char", "c", ""), link("hardlink", "g", "c")],
        "is not a regular file",
    );
    expect_err(
        vec![dir("x/y"), link("hardlink", "g", "x")],
        "is not a regular file",
    );
    expect_err(
        vec![link("hardlink", "a", "b"), link("hardlink", "b", "a")],
        "hardlink cycle",
    );
    expect_err(
        vec![reg(".wh.f", 0, 0), link("hardlink", "g", ".wh.f")],
        "does not exist",
    );
}

// ---------------------------------------------------------------- overlay presentation

#[test]
fn whiteouts_become_char_devices() {
    let mut wh = reg("a/.wh.gone", 0, 0);
    wh.uid = 7;
    wh.gid = 8;
    wh.mode = 0o644;
    wh.mod_time = "2023-11-14T22:13:20Z".into();
    let idx = build(vec![dir("a/"), wh, reg(".wh.top", 0, 0)]).unwrap();
    let a = path(&idx, "a").unwrap();
    let names: Vec<OsString> = idx.children(a).map(|(n, _)| n.to_owned()).collect();
    assert_eq!(names, [OsString::from("gone")]);
    let n = idx.node(path(&idx, "a/gone").unwrap()).unwrap();
    assert_eq!(n.kind, NodeKind::Char);
    assert_eq!((n.rdev_major, n.rdev_minor, n.mode, n.size), (0, 0, 0, 0));
    assert_eq!(
        (n.uid, n.gid, n.mtime_secs, n.nlink),
        (7, 8, 1_700_000_000, 1)
    );
    assert_eq!(n.parent, a);
    assert!(idx.lookup(a, OsStr::new(".wh.gone")).is_none());
    assert_eq!(
        idx.node(path(&idx, "top").unwrap()).unwrap().kind,
        NodeKind::Char
    );
}

#[test]
fn whiteout_yields_to_an_entry_of_the_same_layer() {
    let idx = build(vec![
        reg("a/.wh.x", 0, 0),
        reg("a/x", 0, 0),
        reg("a/y", 0, 0),
        reg("a/.wh.y", 0, 0),
        reg("a/.wh.sub", 0, 0),
        reg("a/sub/f", 0, 0),
        reg("a/.wh.hl", 0, 0),
        link("hardlink", "a/hl", "a/x"),
    ])
    .unwrap();
    let a = path(&idx, "a").unwrap();
    let kinds: Vec<_> = idx
        .children(a)
        .map(|(n, i)| (n.to_string_lossy().into_owned(), idx.node(i).unwrap().kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("hl".to_string(), NodeKind::Reg),
            ("sub".to_string(), NodeKind::Dir),
            ("x".to_string(), NodeKind::Reg),
            ("y".to_string(), NodeKind::Reg),
        ]
    );
}

#[test]
fn opaque_marker_sets_xattr_and_is_hidden() {
    let idx = build(vec![
        dir("o/"),
        reg("o/.wh..wh..opq", 0, 0),
        reg("o/new", 0, 0),
        reg("p/.wh..wh..opq", 0, 0),
        reg("q/.wh..wh.plnk", 0, 0),
    ])
    .unwrap();
    for (d, kids) in [("o", 1), ("p", 0), ("q", 0)] {
        let ino = path(&idx, d).unwrap();
        assert_eq!(idx.children(ino).len(), kids, "{d}");
        let x = idx.xattr(idx.node(ino).unwrap(), OsStr::new("trusted.overlay.opaque"));
        if d == "q" {
            assert!(x.is_none());
        } else {
            assert_eq!(x, Some(&b"y"[..]), "{d}");
        }
    }
    expect_err(vec![reg("a/.wh.", 0, 0)], "names no file");
    expect_err(vec![reg("a/.wh..", 0, 0)], "names no file");
}

#[test]
fn implied_directories_and_link_counts() {
    let idx = build(vec![
        reg("x/y/z.txt", 0, 0),
        dir("w/"),
        dir("w/v/"),
        reg("w/f", 0, 0),
    ])
    .unwrap();
    let root = idx.node(Index::ROOT).unwrap();
    assert_eq!(
        (root.kind, root.mode, root.nlink, root.parent),
        (NodeKind::Dir, 0o755, 4, Index::ROOT)
    );
    for (p, nlink) in [("x", 3), ("x/y", 2), ("w", 3), ("w/v", 2)] {
        let n = idx.node(path(&idx, p).unwrap()).unwrap();
        assert_eq!((n.kind, n.nlink), (NodeKind::Dir, nlink), "{p}");
        if p.starts_with('x') {
            assert_eq!(
                (n.mode, n.uid, n.gid, n.mtime_secs),
                (0o755, 0, 0, 0),
                "{p}"
            );
        }
    }
    // Inodes in TOC order: x (implied), x/y (implied), z.txt, w, w/v, w/f.
    assert_eq!(path(&idx, "x"), Some(2));
    assert_eq!(path(&idx, "x/y"), Some(3));
    assert_eq!(path(&idx, "x/y/z.txt"), Some(4));
    assert_eq!(path(&idx, "w"), Some(5));
    assert_eq!(path(&idx, "w/f"), Some(7));
    assert_eq!(idx.len(), 7);
    // Stable across builds.
    let again = build(vec![
        reg("x/y/z.txt", 0, 0),
        dir("w/"),
        dir("w/v/"),
        reg("w/f", 0, 0),
    ])
    .unwrap();
    for ino in 1..=7 {
        assert_eq!(idx.node(ino), again.node(ino));
    }
    // An explicit entry after the implied one gives it metadata.
    let mut d = dir("x/");
    d.mode = 0o700;
    d.uid = 5;
    let idx = build(vec![reg("x/f", 0, 0), d]).unwrap();
    let x = idx.node(path(&idx, "x").unwrap()).unwrap();
    assert_eq!((x.ino, x.mode, x.uid), (2, 0o700, 5));
}

#[test]
fn root_entry_and_metadata() {
    let mut r = dir("./");
    r.mode = 0o40700;
    r.uid = 3;
    r.xattrs.insert("user.root".into(), b"1".to_vec());
    let mut f = reg("bin/su", 0, 0);
    f.mode = 0o104755;
    f.uid = 0;
    f.gid = 4;
    f.mod_time = "2020-01-02T03:04:05.25+01:00".into();
    let mut s = link("symlink", "bin/sh", "/usr/bin/dash");
    s.mode = 0o120777;
    let mut c = link("char", "dev/null", "");
    c.dev_major = 1;
    c.dev_minor = 3;
    c.mode = 0o666;
    let mut b = link("block", "dev/sda", "");
    b.dev_major = 8;
    let mut t = dir("tmp");
    t.mode = 0o1777;
    let idx = build(vec![r, f, s, c, b, link("fifo", "p", ""), t]).unwrap();
    let root = idx.node(Index::ROOT).unwrap();
    assert_eq!((root.mode, root.uid), (0o700, 3));
    assert_eq!(idx.xattrs(root).unwrap()[OsStr::new("user.root")], b"1");
    let su = idx.node(path(&idx, "bin/su").unwrap()).unwrap();
    assert_eq!(
        (su.mode, su.gid, su.mtime_secs, su.mtime_nsecs),
        (0o4755, 4, 1577930645, 250_000_000)
    );
    let sh = idx.node(path(&idx, "bin/sh").unwrap()).unwrap();
    assert_eq!((sh.kind, sh.mode, sh.size), (NodeKind::Symlink, 0o777, 13));
    assert_eq!(idx.link_target(sh), Some(OsStr::new("/usr/bin/dash")));
    let null = idx.node(path(&idx, "dev/null").unwrap()).unwrap();
    assert_eq!(
        (null.kind, null.rdev_major, null.rdev_minor),
        (NodeKind::Char, 1, 3)
    );
    let sda = idx.node(path(&idx, "dev/sda").unwrap()).unwrap();
    assert_eq!((sda.kind, sda.rdev_major), (NodeKind::Block, 8));
    assert_eq!(
        idx.node(path(&idx, "p").unwrap()).unwrap().kind,
        NodeKind::Fifo
    );
    assert_eq!(idx.node(path(&idx, "tmp").unwrap()).unwrap().mode, 0o1777);
    // Non-directories have no children; lookups in them fail.
    assert_eq!(idx.children(path(&idx, "p").unwrap()).len(), 0);
    assert!(idx
        .lookup(path(&idx, "p").unwrap(), OsStr::new("x"))
        .is_none());
    assert!(idx.children(0).len() == 0 && idx.children(999).len() == 0);
    assert!(idx.node(0).is_none() && idx.node(999).is_none());
    assert!(idx.lookup(0, OsStr::new("bin")).is_none());
    assert!(!idx.is_empty());
    // Paths back from inodes.
    for p in ["dev/sda", "p", "tmp"] {
        let ino = path(&idx, p).unwrap();
        assert_eq!(idx.path_of(ino), Some(std::path::PathBuf::from(p)), "{p}");
    }
    assert_eq!(idx.path_of(Index::ROOT), Some(std::path::PathBuf::new()));
    assert_eq!(idx.path_of(999), None);
}

#[test]
fn landmarks_are_hidden_and_give_prefetch_end() {
    let idx = build(vec![
        reg("a", 5, 10),
        reg(".prefetch.landmark", 1, 77),
        reg("b", 5, 90),
    ])
    .unwrap();
    assert_eq!(idx.prefetch_end(), Some(77));
    assert!(path(&idx, ".prefetch.landmark").is_none());
    assert_eq!(idx.children(Index::ROOT).len(), 2);
    // The landmark's member still bounds the previous chunk.
    let a = idx.node(path(&idx, "a").unwrap()).unwrap();
    assert_eq!(idx.chunks(a)[0].blob_len, 67);
    // Not prefetched.
    let idx = build(vec![reg(".no.prefetch.landmark", 1, 10), reg("a", 5, 90)]).unwrap();
    assert_eq!(idx.prefetch_end(), None);
    assert_eq!(idx.children(Index::ROOT).len(), 1);
    let idx = build(vec![reg("a", 5, 90)]).unwrap();
    assert_eq!(idx.prefetch_end(), None);
    // In a subdirectory it is an ordinary file.
    let idx = build(vec![reg("d/.prefetch.landmark", 1, 10)]).unwrap();
    assert!(path(&idx, "d/.prefetch.landmark").is_some());
    assert_eq!(idx.prefetch_end(), None);
}

#[test]
fn all_chunks_in_blob_order() {
    let idx = build(vec![
        reg("late", 5, 500),
        reg_chunked("big", 30, 10, 100),
        chunk("big", 700, 10, 10),
        chunk("big", 200, 20, 0),
        link("hardlink", "big2", "big"),
        reg("empty", 0, 0),
    ])
    .unwrap();
    let big = path(&idx, "big").unwrap();
    let late = path(&idx, "late").unwrap();
    let owner = |id: u32| {
        [big, late]
            .into_iter()
            .find(|&i| idx.chunk_ids(idx.node(i).unwrap()).contains(&id))
            .unwrap()
    };
    let got: Vec<_> = idx
        .blob_order()
        .iter()
        .map(|&id| {
            let c = idx.chunk(id).unwrap();
            (owner(id), c.blob_offset, c.blob_len)
        })
        .collect();
    assert_eq!(
        got,
        [
            (big, 100, 100),
            (big, 200, 300),
            (late, 500, 200),
            (big, 700, BLOB - FOOTER_SIZE - 700)
        ]
    );
}

#[test]
fn interleaved_directories() {
    let idx = build(vec![
        reg("a/x", 0, 0),
        reg("b/y", 0, 0),
        reg("a/z", 0, 0),
        reg("a/b/c", 0, 0),
        reg("b/y2", 0, 0),
    ])
    .unwrap();
    for p in ["a/x", "b/y", "a/z", "a/b/c", "b/y2"] {
        assert!(path(&idx, p).is_some(), "{p}");
    }
    assert_eq!(idx.children(path(&idx, "a").unwrap()).len(), 3);
    assert_eq!(idx.children(path(&idx, "b").unwrap()).len(), 2);
    expect_err(
        vec![reg("a/b/c", 0, 0), reg("a/b/d", 0, 0), reg("a/b", 0, 0)],
        "other entries lie below it",
    );
}

// ---------------------------------------------------------------- streaming, memory

/// Everything a reader can see of an index, in a comparable form.
fn dump(idx: &Index) -> Vec<String> {
    let mut out = Vec::new();
    for ino in 1..=idx.len() as u64 {
        let n = idx.node(ino).unwrap();
        out.push(format!(
            "{n:?} link={:?} xattrs={:?} chunks={:?} kids={:?}",
            idx.link_target(n),
            idx.xattrs(n),
            idx.chunks(n),
            idx.children(ino).collect::<Vec<_>>()
        ));
    }
    out.push(format!("prefetch_end={:?}", idx.prefetch_end()));
    out.push(format!("{:?}", idx.all_chunks().collect::<Vec<_>>()));
    out
}

fn varied_toc() -> crate::Toc {
    let mut sym = link("symlink", "bin/sh", "dash");
    sym.xattrs.insert("user.x".into(), b"1".to_vec());
    toc(vec![
        dir("./"),
        reg(".prefetch.landmark", 1, 10),
        reg_chunked("usr/lib/big", 30, 10, 100),
        chunk("usr/lib/big", 200, 10, 10),
        chunk("usr/lib/big", 300, 20, 0),
        sym,
        reg("etc/.wh.gone", 0, 0),
        reg("etc/.wh..wh..opq", 0, 0),
        link("hardlink", "usr/lib/big2", "usr/lib/big"),
        reg("etc/passwd", 7, 400),
    ])
}

#[test]
fn streaming_the_json_builds_the_same_index() {
    let t = varied_toc();
    let json = crate::encode_toc_json(&t).unwrap();
    let parsed = Index::build_with_toc_offset(&t, BLOB, BLOB - FOOTER_SIZE).unwrap();
    let streamed = Index::from_json(
        &json,
        BLOB,
        BLOB - FOOTER_SIZE,
        crate::IndexLimits::default(),
    )
    .unwrap();
    assert_eq!(dump(&parsed), dump(&streamed));
    // Key order does not matter; entries may come before the version.
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let reordered = format!(
        "{{\"entries\":{},\"version\":1}}",
        serde_json::to_string(&v["entries"]).unwrap()
    );
    let again = Index::from_json(
        reordered.as_bytes(),
        BLOB,
        BLOB - FOOTER_SIZE,
        crate::IndexLimits::default(),
    )
    .unwrap();
    assert_eq!(dump(&parsed), dump(&again));
}

#[test]
fn streaming_refuses_what_building_refuses() {
    let limits = crate::IndexLimits { max_entries: 3 };
    let t = toc(vec![dir("a"), dir("b"), dir("c"), dir("d")]);
    let json = crate::encode_toc_json(&t).unwrap();
    let e = Index::from_json(&json, BLOB, BLOB - FOOTER_SIZE, limits).unwrap_err();
    assert!(e.to_string().contains("more than 3 entries"), "{e}");
    let bad = crate::encode_toc_json(&toc(vec![reg("../x", 0, 0)])).unwrap();
    let e = Index::from_json(&bad, BLOB, BLOB - FOOTER_SIZE, Default::default()).unwrap_err();
    assert!(e.to_string().contains("\"..\" component"), "{e}");
    for garbage in [
        &b"{\"version\":1,\"entries\":[{\"name\":"[..],
        b"[]",
        b"{\"entries\":[]}",
        b"{\"version\":2,\"entries\":[]}",
        b"{\"version\":1,\"entries\":[]} trailing",
        b"{\"version\":1,\"entries\":[{\"name\":\"a\",\"type\":\"reg\",\"size\":\"x\"}]}",
    ] {
        assert!(
            Index::from_json(garbage, BLOB, BLOB - FOOTER_SIZE, Default::default()).is_err(),
            "{}",
            String::from_utf8_lossy(garbage)
        );
    }
    assert!(Index::from_json(
        b"{\"version\":1,\"entries\":null}",
        BLOB,
        BLOB - FOOTER_SIZE,
        Default::default()
    )
    .is_ok());
}

/// The index of a layer of many small files costs about 150 bytes per TOC
/// entry (the size is what the daemon holds per mounted layer).
#[test]
fn bytes_per_entry_stay_small() {
    let mut entries = vec![dir("usr/"), dir("usr/share/")];
    for i in 0..20_000 {
        entries.push(reg(
            &format!("usr/share/d{}/file-{i}.txt", i % 100),
            100,
            1000 + i * 64,
        ));
    }
    let idx = Index::build(&toc(entries), 1 << 30).unwrap();
    let per_entry = idx.heap_bytes() / 20_002;
    eprintln!(
        "index: {} bytes, {per_entry} bytes per TOC entry",
        idx.heap_bytes()
    );
    assert!(per_entry < 200, "{per_entry} bytes per entry");
}
