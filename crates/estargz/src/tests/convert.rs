use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{open_blob, path, read_file, sha};
use crate::{convert, ConvertOptions, Error, Index, NodeKind, Toc};

const MTIME: u64 = 1_700_000_000;
const CAP: [u8; 20] = [
    1, 0, 0, 2, 0xff, 0x04, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// One PAX record, "%d %s=%s\n" with the length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + body.to_string().len();
    if len.to_string().len() != body.to_string().len() {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    assert_eq!(r.len(), len);
    r
}

/// Expected metadata of one input entry.
#[derive(Debug, Clone)]
struct Want {
    path: &'static str,
    kind: NodeKind,
    mode: u32,
    uid: u32,
    gid: u32,
    data: Vec<u8>,
    link: Option<&'static str>,
    dev: (u32, u32),
    xattrs: BTreeMap<String, Vec<u8>>,
}

struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
    want: Vec<Want>,
}

impl TarBuilder {
    fn new() -> Self {
        TarBuilder {
            b: tar::Builder::new(Vec::new()),
            want: Vec::new(),
        }
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) {
        let mut data = Vec::new();
        for (k, v) in records {
            data.extend(pax_record(k, v));
        }
        let mut h = tar::Header::new_ustar();
        h.set_path("PaxHeaders/x").unwrap();
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_mode(0o644);
        h.set_cksum();
        self.b.append(&h, &data[..]).unwrap();
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        name: &'static str,
        kind: tar::EntryType,
        mode: u32,
        owner: (u32, u32),
        data: &[u8],
        link: Option<&'static str>,
        dev: (u32, u32),
        xattrs: &[(&str, &[u8])],
    ) {
        if !xattrs.is_empty() {
            let recs: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                .collect();
            let recs: Vec<(&str, &[u8])> = recs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            self.pax(&recs);
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(u64::from(owner.0));
        h.set_gid(u64::from(owner.1));
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(dev.0).unwrap();
            h.set_device_minor(dev.1).unwrap();
        }
        match link {
            Some(target) => self.b.append_link(&mut h, name, target).unwrap(),
            None => self.b.append_data(&mut h, name, data).unwrap(),
        }
        let nk = match kind {
            tar::EntryType::Directory => NodeKind::Dir,
            tar::EntryType::Symlink => NodeKind::Symlink,
            tar::EntryType::Char => NodeKind::Char,
            tar::EntryType::Block => NodeKind::Block,
            tar::EntryType::Fifo => NodeKind::Fifo,
            _ => NodeKind::Reg,
        };
        self.want.push(Want {
            path: name,
            kind: nk,
            mode,
            uid: owner.0,
            gid: owner.1,
            data: data.to_vec(),
            link,
            dev,
            xattrs: xattrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        });
    }

    fn finish(self) -> (Vec<u8>, Vec<Want>) {
        (self.b.into_inner().unwrap(), self.want)
    }
}

fn big_data(n: usize) -> Vec<u8> {
    let mut x: u32 = 99;
    (0..n)
        .map(|i| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            if i % 3 == 0 {
                (x >> 16) as u8
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect()
}

/// A layer with every entry type eStargz knows.
fn every_kind_tar() -> (Vec<u8>, Vec<Want>) {
    use tar::EntryType as T;
    let mut t = TarBuilder::new();
    let none: &[(&str, &[u8])] = &[];
    t.add("etc/", T::Directory, 0o755, (0, 0), b"", None, (0, 0), none);
    t.add(
        "etc/passwd",
        T::Regular,
        0o644,
        (0, 0),
        b"root:x:0:0::/root:/bin/sh\n",
        None,
        (0, 0),
        none,
    );
    t.add(
        "bin/",
        T::Directory,
        0o755,
        (0, 0),
        b"",
        None,
        (0, 0),
        &[("user.dir", b"on a directory")],
    );
    t.add(
        "bin/ping",
        T::Regular,
        0o4755,
        (0, 0),
        b"\x7fELF pretend\n",
        None,
        (0, 0),
        &[
            ("security.capability", &CAP),
            ("user.empty", b""),
            ("user.text", b"hello"),
        ],
    );
    t.add(
        "data/",
        T::Directory,
        0o2750,
        (1000, 1000),
        b"",
        None,
        (0, 0),
        none,
    );
    t.add(
        "data/big",
        T::Regular,
        0o640,
        (1000, 1000),
        &big_data(10_500),
        None,
        (0, 0),
        none,
    );
    t.add(
        "data/exact",
        T::Regular,
        0o644,
        (0, 0),
        &big_data(2000),
        None,
        (0, 0),
        none,
    );
    t.add(
        "data/empty",
        T::Regular,
        0o600,
        (0, 0),
        b"",
        None,
        (0, 0),
        none,
    );
    t.add(
        "data/sym",
        T::Symlink,
        0o777,
        (0, 0),
        b"",
        Some("../etc/passwd"),
        (0, 0),
        none,
    );
    t.add(
        "data/hard",
        T::Link,
        0o640,
        (1000, 1000),
        b"",
        Some("data/big"),
        (0, 0),
        none,
    );
    t.add("dev/", T::Directory, 0o755, (0, 0), b"", None, (0, 0), none);
    t.add("dev/null", T::Char, 0o666, (0, 0), b"", None, (1, 3), none);
    t.add(
        "dev/loop0",
        T::Block,
        0o660,
        (0, 6),
        b"",
        None,
        (7, 0),
        none,
    );
    t.add(
        "dev/initctl",
        T::Fifo,
        0o600,
        (0, 0),
        b"",
        None,
        (0, 0),
        none,
    );
    t.add(
        "tmp/",
        T::Directory,
        0o1777,
        (0, 0),
        b"",
        None,
        (0, 0),
        none,
    );
    t.add("wh/", T::Directory, 0o755, (0, 0), b"", None, (0, 0), none);
    t.add(
        "wh/.wh.gone",
        T::Regular,
        0o644,
        (0, 0),
        b"",
        None,
        (0, 0),
        none,
    );
    t.add("opq/", T::Directory, 0o755, (0, 0), b"", None, (0, 0), none);
    t.add(
        "opq/.wh..wh..opq",
        T::Regular,
        0o644,
        (0, 0),
        b"",
        None,
        (0, 0),
        none,
    );
    t.add(
        "opq/kept",
        T::Regular,
        0o644,
        (0, 0),
        b"kept\n",
        None,
        (0, 0),
        none,
    );
    t.add(
        "long/nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn.txt",
        T::Regular,
        0o644,
        (0, 0),
        b"long name\n",
        None,
        (0, 0),
        none,
    );
    t.add(
        "implied/a/b/file",
        T::Regular,
        0o644,
        (0, 0),
        b"deep\n",
        None,
        (0, 0),
        none,
    );
    t.add(
        "caf\u{e9}/\u{fc}ml\u{e4}ut",
        T::Regular,
        0o644,
        (0, 0),
        b"utf-8\n",
        None,
        (0, 0),
        none,
    );
    t.finish()
}

fn opts(chunk_size: usize) -> ConvertOptions {
    ConvertOptions {
        chunk_size,
        ..ConvertOptions::default()
    }
}

fn gunzip_all(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(blob)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn round_trip_every_entry_type() {
    let (input, want) = every_kind_tar();
    let mut blob = Vec::new();
    let conv = convert(&input[..], &mut blob, &opts(1000)).unwrap();

    // Digests and sizes.
    assert_eq!(conv.size, blob.len() as u64);
    assert_eq!(conv.digest, sha(&blob));
    let unz = gunzip_all(&blob);
    assert_eq!(conv.uncompressed_size, unz.len() as u64);
    assert_eq!(conv.diff_id, sha(&unz));
    assert!(conv.missed_prioritized_files.is_empty());

    // The uncompressed stream is the landmark entry, the input entries
    // byte for byte (headers copied verbatim), then the TOC entry.
    let body = &input[..input.len() - 1024];
    assert_eq!(&unz[1024..1024 + body.len()], body);
    assert_eq!(&unz[unz.len() - 1024..], &[0u8; 1024][..]);

    let (toc, digest, idx, toc_offset) = open_blob(&blob, Some(&conv.toc_digest));
    assert_eq!(digest, conv.toc_digest);
    assert_eq!(toc_offset, conv.toc_offset);
    assert_eq!(toc.entries[0].name, ".no.prefetch.landmark");
    assert_eq!(idx.prefetch_end(), None);

    for w in &want {
        if w.path.ends_with(".wh.gone") || w.path.ends_with(".wh..wh..opq") {
            continue;
        }
        let ino = path(&idx, w.path).unwrap_or_else(|| panic!("{} missing", w.path));
        let n = idx.node(ino).unwrap();
        if let Some(target) = w.link.filter(|_| w.kind == NodeKind::Reg) {
            // Hardlink.
            assert_eq!(Some(ino), path(&idx, target), "{}", w.path);
            continue;
        }
        assert_eq!(n.kind, w.kind, "{}", w.path);
        assert_eq!((n.mode, n.uid, n.gid), (w.mode, w.uid, w.gid), "{}", w.path);
        assert_eq!(n.mtime_secs, MTIME as i64, "{}", w.path);
        assert_eq!((n.rdev_major, n.rdev_minor), w.dev, "{}", w.path);
        let xattrs: BTreeMap<String, Vec<u8>> = idx
            .xattrs(n)
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "trusted.overlay.opaque")
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.clone()))
            .collect();
        assert_eq!(xattrs, w.xattrs, "{}", w.path);
        match w.kind {
            NodeKind::Reg => {
                assert_eq!(n.size, w.data.len() as u64, "{}", w.path);
                assert_eq!(read_file(&idx, ino, &blob), w.data, "{}", w.path);
            }
            NodeKind::Symlink => {
                assert_eq!(idx.link_target(n), w.link.map(OsStr::new), "{}", w.path);
            }
            _ => {}
        }
    }

    // Chunking: 10 500 bytes in 1000-byte chunks; exactly 2 chunks for 2000.
    let big = idx.node(path(&idx, "data/big").unwrap()).unwrap();
    assert_eq!(idx.chunks(big).len(), 11);
    assert_eq!(big.nlink, 2);
    assert_eq!(idx.chunks(big).last().unwrap().size, 500);
    let exact = idx.node(path(&idx, "data/exact").unwrap()).unwrap();
    assert_eq!(idx.chunks(exact).len(), 2);
    assert!(idx
        .chunks(idx.node(path(&idx, "data/empty").unwrap()).unwrap())
        .is_empty());
    let big_toc: Vec<_> = toc
        .entries
        .iter()
        .filter(|e| e.name == "data/big")
        .collect();
    assert_eq!(big_toc.len(), 11);
    assert_eq!(big_toc[0].kind, "reg");
    assert_eq!(big_toc[0].digest, sha(&big_data(10_500)).to_string());
    assert!(big_toc[1..].iter().all(|e| e.kind == "chunk"));
    assert_eq!(big_toc[10].chunk_size, 0);

    // Overlay presentation.
    let wh = idx.node(path(&idx, "wh/gone").unwrap()).unwrap();
    assert_eq!(
        (wh.kind, wh.rdev_major, wh.rdev_minor, wh.mode),
        (NodeKind::Char, 0, 0, 0)
    );
    let opq = idx.node(path(&idx, "opq").unwrap()).unwrap();
    assert_eq!(
        idx.xattrs(opq).unwrap()[OsStr::new("trusted.overlay.opaque")],
        b"y"
    );
    assert_eq!(idx.children(opq.ino).len(), 1);
    let implied = idx.node(path(&idx, "implied/a").unwrap()).unwrap();
    assert_eq!((implied.kind, implied.mode), (NodeKind::Dir, 0o755));
    assert!(path(&idx, ".no.prefetch.landmark").is_none());
    assert!(path(&idx, "stargz.index.json").is_none());

    // Every chunk verifies, in blob order, and members tile the payload area.
    let mut last_end = 0;
    for c in idx.all_chunks() {
        assert!(c.blob_offset >= last_end);
        last_end = c.blob_offset + c.blob_len;
        let bytes = &blob[c.blob_offset as usize..last_end as usize];
        assert_eq!(
            crate::decompress_chunk(c, bytes).unwrap().len() as u64,
            c.size
        );
    }
    assert_eq!(last_end, toc_offset);

    // Deterministic.
    let mut again = Vec::new();
    let conv2 = convert(&input[..], &mut again, &opts(1000)).unwrap();
    assert_eq!(conv2, conv);
    assert_eq!(again, blob);
}

#[test]
fn prioritized_files_come_first() {
    let (input, _) = every_kind_tar();
    let mut blob = Vec::new();
    let o = ConvertOptions {
        chunk_size: 4096,
        prioritized_files: vec![
            "/data/hard".into(),
            "./etc/passwd".into(),
            "not/in/this/layer".into(),
        ],
        gzip_level: 6,
    };
    let conv = convert(&input[..], &mut blob, &o).unwrap();
    assert_eq!(conv.missed_prioritized_files, ["not/in/this/layer"]);
    let (toc, _, idx, _) = open_blob(&blob, Some(&conv.toc_digest));
    let names: Vec<&str> = toc
        .entries
        .iter()
        .filter(|e| e.kind != "chunk")
        .take(6)
        .map(|e| e.name.as_str())
        .collect();
    // Parents first, hardlink targets before hardlinks.
    assert_eq!(
        names,
        [
            "data/",
            "data/big",
            "data/hard",
            "etc/",
            "etc/passwd",
            ".prefetch.landmark"
        ]
    );
    let end = idx.prefetch_end().unwrap();
    for p in ["data/big", "etc/passwd"] {
        let n = idx.node(path(&idx, p).unwrap()).unwrap();
        assert!(
            idx.chunks(n)
                .iter()
                .all(|c| c.blob_offset + c.blob_len <= end),
            "{p}"
        );
    }
    for p in ["bin/ping", "opq/kept"] {
        let n = idx.node(path(&idx, p).unwrap()).unwrap();
        assert!(idx.chunks(n)[0].blob_offset > end, "{p}");
    }
    // Still the same files.
    let big = path(&idx, "data/big").unwrap();
    assert_eq!(read_file(&idx, big, &blob), big_data(10_500));
}

#[test]
fn duplicates_toc_and_landmarks_in_the_input() {
    let mut b = tar::Builder::new(Vec::new());
    let mut put = |name: &str, data: &[u8]| {
        // Raw name: tar::Builder would normalize "./a" to "a".
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    put("a", b"first");
    put("stargz.index.json", b"{}");
    put(".prefetch.landmark", b"\x0f");
    put("./a", b"second");
    put("b", b"b");
    let input = b.into_inner().unwrap();
    let mut blob = Vec::new();
    let conv = convert(&input[..], &mut blob, &ConvertOptions::default()).unwrap();
    let (toc, _, idx, _) = open_blob(&blob, Some(&conv.toc_digest));
    let names: Vec<&str> = toc.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, [".no.prefetch.landmark", "./a", "b"]);
    assert_eq!(read_file(&idx, path(&idx, "a").unwrap(), &blob), b"second");
}

#[test]
fn rejects_what_could_not_be_mounted() {
    let conv = |input: Vec<u8>| convert(&input[..], Vec::new(), &ConvertOptions::default());
    let one = |kind: tar::EntryType, name: &str, link: Option<&str>| {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o777);
        match link {
            Some(l) => {
                // A symlink "s" to point the hardlink at.
                let mut s = tar::Header::new_gnu();
                s.set_entry_type(tar::EntryType::Symlink);
                s.set_size(0);
                b.append_link(&mut s, "s", "x").unwrap();
                b.append_link(&mut h, name, l).unwrap();
            }
            None => b.append_data(&mut h, name, &[][..]).unwrap(),
        }
        b.into_inner().unwrap()
    };
    let e = conv(one(tar::EntryType::Link, "h", Some("s"))).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let e = conv(one(tar::EntryType::Link, "h", Some("missing"))).unwrap_err();
    assert!(e.to_string().contains("not in this layer"), "{e}");
    let e = conv(one(tar::EntryType::XGlobalHeader, "g", None)).unwrap_err();
    assert!(matches!(e, Error::InputTar(_)), "{e}");
    // A raw header with a ".." name (tar::Builder refuses to write one).
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..7].copy_from_slice(b"../evil");
    h.set_size(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.extend_from_slice(&[0; 1024]);
    let e = conv(raw).unwrap_err();
    assert!(e.to_string().contains("\"..\""), "{e}");
    // Truncated input (inside the data of data/big).
    let (input, _) = every_kind_tar();
    let e = conv(input[..7000].to_vec()).unwrap_err();
    assert!(e.to_string().contains("data/big"), "{e}");
    // Options.
    let bad = ConvertOptions {
        chunk_size: 0,
        ..ConvertOptions::default()
    };
    assert!(matches!(
        convert(&input[..], Vec::new(), &bad),
        Err(Error::Options(_))
    ));
    let bad = ConvertOptions {
        gzip_level: 10,
        ..ConvertOptions::default()
    };
    assert!(matches!(
        convert(&input[..], Vec::new(), &bad),
        Err(Error::Options(_))
    ));
}

#[test]
fn empty_input_gives_a_valid_blob() {
    let mut blob = Vec::new();
    let conv = convert(&[0u8; 1024][..], &mut blob, &ConvertOptions::default()).unwrap();
    let (toc, _, idx, _) = open_blob(&blob, Some(&conv.toc_digest));
    assert_eq!(toc.entries.len(), 1);
    assert_eq!(idx.len(), 1);
    let mut blob2 = Vec::new();
    convert(&[][..], &mut blob2, &ConvertOptions::default()).unwrap();
    assert_eq!(blob, blob2);
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u")).trim() == "0"
}

/// Everything about a tree that `tar -x` reproduces, keyed by path.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for ent in std::fs::read_dir(&dir).unwrap() {
            let p = ent.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let what = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("symlink {}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
                let data = std::fs::read(&p).unwrap();
                format!(
                    "file {} {} first-name {first}",
                    data.len(),
                    hex::encode(Sha256::digest(&data))
                )
            } else if ft.is_char_device() || ft.is_block_device() {
                format!("dev {} {:x}", ft.is_char_device(), m.rdev())
            } else if ft.is_fifo() {
                "fifo".to_string()
            } else {
                "other".to_string()
            };
            let mode = m.mode() & 0o7777;
            let mtime = if ft.is_dir() { 0 } else { m.mtime() };
            out.insert(
                rel,
                format!(
                    "{what} mode {mode:o} owner {}:{} mtime {mtime}",
                    m.uid(),
                    m.gid()
                ),
            );
        }
    }
    out
}

#[test]
fn system_tar_extracts_the_same_files() {
    let (input, _) = every_kind_tar();
    let mut blob = Vec::new();
    convert(&input[..], &mut blob, &opts(1000)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(tmp.path().join("in.tar"), &input).unwrap();
    std::fs::write(tmp.path().join("out.tar.gz"), &blob).unwrap();
    let mut flags = vec!["--numeric-owner", "--same-permissions"];
    if !is_root() {
        // Device nodes and foreign owners need root.
        flags.extend(["--exclude=dev/null", "--exclude=dev/loop0"]);
    }
    run(Command::new("tar")
        .arg("-xf")
        .arg(tmp.path().join("in.tar"))
        .args(&flags)
        .arg("-C")
        .arg(&src));
    run(Command::new("tar")
        .arg("-xzf")
        .arg(tmp.path().join("out.tar.gz"))
        .args(&flags)
        .arg("-C")
        .arg(&dst));
    let mut got = snapshot(&dst);
    // eStargz adds exactly these two files.
    assert!(got.remove("stargz.index.json").is_some());
    assert!(got.remove(".no.prefetch.landmark").is_some());
    assert_eq!(got, snapshot(&src));

    // The listings agree too (same headers).
    let list = |file: &str, z: &str| {
        run(Command::new("tar")
            .arg(format!("-t{z}vf"))
            .arg(tmp.path().join(file))
            .arg("--numeric-owner")
            .arg("--full-time"))
    };
    let listed = list("out.tar.gz", "z");
    let listed: Vec<&str> = listed
        .lines()
        .filter(|l| !l.ends_with(" stargz.index.json") && !l.ends_with(" .no.prefetch.landmark"))
        .collect();
    let original = list("in.tar", "");
    assert_eq!(listed, original.lines().collect::<Vec<_>>());
}

#[test]
fn toc_json_is_parseable_by_serde_and_stable() {
    let (input, _) = every_kind_tar();
    let mut blob = Vec::new();
    let conv = convert(&input[..], &mut blob, &opts(4096)).unwrap();
    let (toc, _, _, _) = open_blob(&blob, None);
    let json = crate::encode_toc_json(&toc).unwrap();
    assert_eq!(sha(&json), conv.toc_digest);
    let back: Toc = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, toc);
    let ping = toc.entries.iter().find(|e| e.name == "bin/ping").unwrap();
    assert_eq!(ping.xattrs["security.capability"], CAP);
    assert_eq!(ping.mod_time, "2023-11-14T22:13:20Z");
    assert_eq!(ping.mode, 0o4755);
    let null = toc.entries.iter().find(|e| e.name == "dev/null").unwrap();
    assert_eq!((null.dev_major, null.dev_minor), (1, 3));
    let _ = Index::build(&toc, blob.len() as u64).unwrap();
}
