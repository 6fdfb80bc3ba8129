//! A validated, ready-to-serve file tree of one eStargz layer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};

use crate::digest::parse_sha256;
use crate::toc::{Toc, TocEntry};
use crate::{
    rfc3339, Error, FOOTER_SIZE, MAX_ENTRIES, MAX_FILE_SIZE, NO_PREFETCH_LANDMARK, OPAQUE_XATTR,
    PREFETCH_LANDMARK,
};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Longest path component Linux serves (NAME_MAX).
const MAX_NAME_LEN: usize = 255;
/// Longest path Linux serves (PATH_MAX).
const MAX_PATH_LEN: usize = 4096;
/// Linux XATTR_NAME_MAX / XATTR_SIZE_MAX.
const MAX_XATTR_NAME: usize = 255;
const MAX_XATTR_VALUE: usize = 65536;

/// File type of a [`Node`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// Directory.
    Dir,
    /// Regular file.
    Reg,
    /// Symbolic link.
    Symlink,
    /// Character device (also used for overlay whiteouts, 0/0).
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
}

/// One inode of the layer's file tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Inode number ([`Index::ROOT`] for "/").
    pub ino: u64,
    /// Inode of the directory holding this node's first name (ROOT for ROOT).
    pub parent: u64,
    /// File type.
    pub kind: NodeKind,
    /// Permission bits including setuid/setgid/sticky; no file type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Regular file: its size. Symlink: length of the target. Otherwise 0.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime_secs: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsecs: u32,
    /// Link count: names of a regular file; 2 + subdirectories of a directory.
    pub nlink: u32,
    /// Device major number.
    pub rdev_major: u32,
    /// Device minor number.
    pub rdev_minor: u32,
    /// Symlink target.
    pub link_target: Option<OsString>,
    /// Extended attributes (including `trusted.overlay.opaque` = `y` on
    /// directories with an opaque marker).
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    /// Regular file data, in file order, contiguous from 0 to `size`.
    pub chunks: Vec<Chunk>,
}

/// One independently fetchable and verifiable piece of a regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of this chunk within the file.
    pub file_offset: u64,
    /// Uncompressed bytes.
    pub size: u64,
    /// Where its gzip member starts in the blob (TOC `offset`).
    pub blob_offset: u64,
    /// Compressed length: up to the next member start (the next distinct
    /// chunk offset in blob order, or the end of the payload area).
    pub blob_len: u64,
    /// Uncompressed bytes of the member that precede this chunk (TOC
    /// `innerOffset`; 0 unless a writer packed several payloads into one
    /// member). [`crate::decompress_chunk`] skips them.
    pub inner_offset: u64,
    /// `sha256:<hex>` of the uncompressed chunk bytes.
    pub digest: String,
}

/// A validated, ready-to-serve file tree of one layer, presented the way
/// stargz-snapshotter presents it to overlayfs:
///
/// * entry names are cleaned: leading `/` and `./` and empty or `.`
///   components are dropped (`/etc/x`, `./etc/x` and `etc//x` are all
///   `etc/x`); any `..` component is rejected; `./` or `/` itself is the root
///   directory and sets its metadata;
/// * a whiteout `.wh.NAME` becomes a character device 0/0 named `NAME`
///   (mode 0, owner and mtime of the whiteout entry), unless an entry named
///   `NAME` exists in the same directory of this layer (that entry wins);
///   other `.wh..wh.*` names (AUFS metadata) are not presented;
/// * an opaque marker `.wh..wh..opq` sets `trusted.overlay.opaque` = `y` on
///   its directory and is not listed;
/// * the landmarks `.prefetch.landmark` / `.no.prefetch.landmark` in the root
///   are not listed; they only determine [`Index::prefetch_end`];
/// * directories implied by paths but without an entry are created with mode
///   0755, owner 0:0, mtime 0;
/// * hardlinks share their target's inode; the target must (after following
///   hardlink chains) be a regular file;
/// * inode numbers are assigned in TOC order (implied directories when first
///   implied), so they are stable for a given TOC.
#[derive(Debug, Clone)]
pub struct Index {
    nodes: Vec<Node>,
    children: Vec<Vec<(OsString, u64)>>,
    prefetch_end: Option<u64>,
    /// (ino, index into that node's chunks), in blob order.
    chunk_order: Vec<(u64, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Reg,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "dir" => Kind::Dir,
            "reg" => Kind::Reg,
            "symlink" => Kind::Symlink,
            "hardlink" => Kind::Hardlink,
            "char" => Kind::Char,
            "block" => Kind::Block,
            "fifo" => Kind::Fifo,
            _ => return None,
        })
    }
}

struct Item<'a> {
    index: usize,
    e: &'a TocEntry,
    path: Vec<&'a str>,
    kind: Kind,
    /// For `reg`: the reg entry itself followed by its `chunk` entries.
    raw_chunks: Vec<(usize, &'a TocEntry)>,
    /// Validated chunks (blob_len filled in later).
    chunks: Vec<Chunk>,
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

fn entry_err(index: usize, e: &TocEntry, reason: impl Into<String>) -> Error {
    Error::Entry {
        index,
        name: e.name.clone(),
        reason: reason.into(),
    }
}

/// Splits a TOC/tar name into clean components (see [`Index`]).
pub(crate) fn clean_name(name: &str) -> Result<Vec<&str>, String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.contains('\0') {
        return Err("name contains a NUL byte".into());
    }
    let mut out = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("name has a \"..\" component (escapes the layer root)".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn range_u32(v: i64, what: &str) -> Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{what} {v} is out of range"))
}

fn meta(e: &TocEntry) -> Result<Meta, String> {
    if e.mode < 0 || e.mode > i64::from(u32::MAX) {
        return Err(format!("mode {} is out of range", e.mode));
    }
    let mtime = if e.mod_time.is_empty() {
        (0, 0)
    } else {
        rfc3339::parse(&e.mod_time)?
    };
    let mut xattrs = BTreeMap::new();
    for (k, v) in &e.xattrs {
        if k.is_empty() || k.contains('\0') || k.len() > MAX_XATTR_NAME {
            return Err(format!("invalid xattr name {k:?}"));
        }
        if v.len() > MAX_XATTR_VALUE {
            return Err(format!(
                "xattr {k:?} value is {} bytes, over {MAX_XATTR_VALUE}",
                v.len()
            ));
        }
        xattrs.insert(OsString::from(k), v.clone());
    }
    Ok(Meta {
        mode: (e.mode as u32) & 0o7777,
        uid: range_u32(e.uid, "uid")?,
        gid: range_u32(e.gid, "gid")?,
        mtime,
        xattrs,
    })
}

fn nonneg(v: i64, what: &str) -> Result<u64, String> {
    u64::try_from(v).map_err(|_| format!("{what} {v} is negative"))
}

/// Validates a regular file's size and chunk list.
fn reg_chunks(it: &Item<'_>, blob_size: u64, data_end: u64) -> Result<(u64, Vec<Chunk>), Error> {
    let err = |index: usize, reason: String| entry_err(index, it.e, reason);
    let size = nonneg(it.e.size, "size").map_err(|r| err(it.index, r))?;
    let limit = blob_size.saturating_mul(1024).min(MAX_FILE_SIZE);
    if size > limit {
        return Err(err(
            it.index,
            format!(
                "file size {size} is absurd (limit {limit}: 1 TiB, and at most 1024 times the {blob_size}-byte blob)"
            ),
        ));
    }
    if size == 0 {
        if let Some(&(ci, _)) = it.raw_chunks.get(1) {
            return Err(err(ci, "chunk entry for an empty file".into()));
        }
        return Ok((0, Vec::new()));
    }
    let single = it.raw_chunks.len() == 1;
    let mut chunks = Vec::with_capacity(it.raw_chunks.len());
    let mut expect = 0u64;
    for &(ci, ce) in &it.raw_chunks {
        let file_offset = nonneg(ce.chunk_offset, "chunkOffset").map_err(|r| err(ci, r))?;
        let chunk_size = nonneg(ce.chunk_size, "chunkSize").map_err(|r| err(ci, r))?;
        let blob_offset = nonneg(ce.offset, "offset").map_err(|r| err(ci, r))?;
        let inner_offset = nonneg(ce.inner_offset, "innerOffset").map_err(|r| err(ci, r))?;
        if file_offset < expect {
            return Err(err(
                ci,
                format!("chunk at file offset {file_offset} overlaps the previous chunk, which ends at {expect}"),
            ));
        }
        if file_offset > expect {
            return Err(err(
                ci,
                if expect == 0 {
                    format!("the first chunk starts at file offset {file_offset}, not 0")
                } else {
                    format!("gap in the file data: chunk starts at {file_offset} but the previous chunk ends at {expect}")
                },
            ));
        }
        if file_offset >= size {
            return Err(err(
                ci,
                format!("chunk offset {file_offset} is not below the file size {size}"),
            ));
        }
        let csize = if chunk_size == 0 {
            size - file_offset
        } else {
            chunk_size
        };
        let end = file_offset
            .checked_add(csize)
            .filter(|&end| end <= size)
            .ok_or_else(|| {
                err(
                    ci,
                    format!("chunk of {csize} bytes at file offset {file_offset} extends past the file size {size}"),
                )
            })?;
        if blob_offset >= data_end {
            return Err(err(
                ci,
                format!(
                    "payload offset {blob_offset} lies beyond the blob's payload area (which ends at {data_end})"
                ),
            ));
        }
        if inner_offset > limit {
            return Err(err(ci, format!("innerOffset {inner_offset} is absurd")));
        }
        let digest = if !ce.chunk_digest.is_empty() {
            &ce.chunk_digest
        } else if single && !it.e.digest.is_empty() {
            &it.e.digest
        } else {
            return Err(err(
                ci,
                "chunk has no chunkDigest, so it cannot be verified".into(),
            ));
        };
        parse_sha256(digest).map_err(|e| err(ci, e.to_string()))?;
        chunks.push(Chunk {
            file_offset,
            size: csize,
            blob_offset,
            blob_len: 0,
            inner_offset,
            digest: digest.clone(),
        });
        expect = end;
    }
    if expect != size {
        return Err(err(
            it.index,
            format!("chunks cover only {expect} of the file's {size} bytes"),
        ));
    }
    Ok((size, chunks))
}

struct Builder {
    nodes: Vec<Node>,
    kids: Vec<BTreeMap<OsString, u64>>,
    /// Directories and non-hardlink entries by cleaned path ("" = root).
    by_path: HashMap<String, u64>,
    /// The directory `ensure_dir` returned last (entries usually come
    /// directory by directory).
    last_dir: (String, u64),
}

impl Builder {
    fn node_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(ino.checked_sub(1)? as usize)
    }

    fn add(&mut self, mut node: Node) -> u64 {
        let ino = self.nodes.len() as u64 + 1;
        node.ino = ino;
        self.nodes.push(node);
        self.kids.push(BTreeMap::new());
        ino
    }

    fn link(&mut self, parent: u64, name: &str, ino: u64) -> Result<(), String> {
        let kids = self
            .kids
            .get_mut(parent as usize - 1)
            .ok_or_else(|| "internal error: bad parent inode".to_string())?;
        if kids.contains_key(OsStr::new(name)) {
            return Err(format!("{name:?} already exists in its directory"));
        }
        kids.insert(OsString::from(name), ino);
        Ok(())
    }

    /// Returns the inode of directory `comps`, creating implied directories.
    fn ensure_dir(&mut self, comps: &[&str]) -> Result<u64, String> {
        if self.last_dir.1 != 0 && same_path(&self.last_dir.0, comps) {
            return Ok(self.last_dir.1);
        }
        let ino = self.walk_dirs(comps)?;
        self.last_dir = (comps.join("/"), ino);
        Ok(ino)
    }

    fn walk_dirs(&mut self, comps: &[&str]) -> Result<u64, String> {
        let mut cur = Index::ROOT;
        let mut key = String::new();
        for c in comps {
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(c);
            if let Some(&ino) = self.by_path.get(&key) {
                let is_dir =
                    self.nodes.get(ino as usize - 1).map(|n| n.kind) == Some(NodeKind::Dir);
                if !is_dir {
                    return Err(format!("parent {key:?} is not a directory"));
                }
                cur = ino;
                continue;
            }
            let ino = self.add(new_node(cur, NodeKind::Dir, 0o755));
            self.link(cur, c, ino)?;
            self.by_path.insert(key.clone(), ino);
            cur = ino;
        }
        Ok(cur)
    }
}

/// Whether `key` is `comps` joined with "/".
fn same_path(key: &str, comps: &[&str]) -> bool {
    let mut rest = key;
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            match rest.strip_prefix('/') {
                Some(r) => rest = r,
                None => return false,
            }
        }
        match rest.strip_prefix(c) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

fn new_node(parent: u64, kind: NodeKind, mode: u32) -> Node {
    Node {
        ino: 0,
        parent,
        kind,
        mode,
        uid: 0,
        gid: 0,
        size: 0,
        mtime_secs: 0,
        mtime_nsecs: 0,
        nlink: 1,
        rdev_major: 0,
        rdev_minor: 0,
        link_target: None,
        xattrs: BTreeMap::new(),
        chunks: Vec::new(),
    }
}

fn apply_meta(n: &mut Node, m: Meta) {
    n.mode = m.mode;
    n.uid = m.uid;
    n.gid = m.gid;
    n.mtime_secs = m.mtime.0;
    n.mtime_nsecs = m.mtime.1;
    n.xattrs = m.xattrs;
}

fn is_landmark(name: &str) -> bool {
    name == PREFETCH_LANDMARK || name == NO_PREFETCH_LANDMARK
}

impl Index {
    /// Inode number of "/".
    pub const ROOT: u64 = 1;

    /// Validates `toc` and builds the tree. `blob_size` is the size of the
    /// whole blob; the payload area is taken to end at the footer, so the
    /// last chunk's `blob_len` also covers the TOC member (decompressing a
    /// chunk stops at the end of its own gzip member, so that is harmless,
    /// but [`Index::build_with_toc_offset`] avoids fetching those bytes).
    ///
    /// Rejects, with an [`Error`] naming the entry: names that escape the
    /// root (`..`), empty names or names with NUL, components over 255 bytes
    /// or paths over 4096 bytes, duplicates, entries below a non-directory,
    /// file sizes over 1 TiB or over 1024 × `blob_size`, chunk offsets past
    /// the payload area, chunks that overlap, leave gaps, do not start at 0
    /// or do not cover the file, chunks without a (well-formed sha256)
    /// digest, `chunk` entries not following their `reg` entry, hardlinks
    /// to missing or non-regular targets, unknown types, out-of-range
    /// modes/ids/device numbers, bad modtimes and xattr names, a version
    /// other than 1, and more than 10 million entries.
    pub fn build(toc: &Toc, blob_size: u64) -> Result<Index, Error> {
        let data_end = blob_size.checked_sub(FOOTER_SIZE).ok_or_else(|| {
            Error::InvalidToc(format!(
                "blob size {blob_size} is smaller than the {FOOTER_SIZE}-byte footer"
            ))
        })?;
        Self::build_limited(toc, blob_size, data_end, MAX_ENTRIES)
    }

    /// Like [`Index::build`], but with the TOC member's offset (from
    /// [`crate::parse_footer`]) as the end of the payload area, which makes
    /// the last chunk's `blob_len` exact.
    pub fn build_with_toc_offset(
        toc: &Toc,
        blob_size: u64,
        toc_offset: u64,
    ) -> Result<Index, Error> {
        let footer_start = blob_size.checked_sub(FOOTER_SIZE).ok_or_else(|| {
            Error::InvalidToc(format!(
                "blob size {blob_size} is smaller than the {FOOTER_SIZE}-byte footer"
            ))
        })?;
        if toc_offset > footer_start {
            return Err(Error::InvalidToc(format!(
                "TOC offset {toc_offset} lies past the footer (at {footer_start})"
            )));
        }
        Self::build_limited(toc, blob_size, toc_offset, MAX_ENTRIES)
    }

    /// `build` with an explicit payload end and entry limit (tests use a
    /// small limit).
    pub(crate) fn build_limited(
        toc: &Toc,
        blob_size: u64,
        data_end: u64,
        max_entries: usize,
    ) -> Result<Index, Error> {
        if toc.version != 1 {
            return Err(Error::InvalidToc(format!(
                "unsupported TOC version {} (only 1 is defined)",
                toc.version
            )));
        }
        if toc.entries.len() > max_entries {
            return Err(Error::InvalidToc(format!(
                "{} entries, over the limit of {max_entries}",
                toc.entries.len()
            )));
        }

        // Pass 1: classify entries, attach chunk entries to their file.
        let mut items: Vec<Item<'_>> = Vec::with_capacity(toc.entries.len());
        for (i, e) in toc.entries.iter().enumerate() {
            if e.kind == "chunk" {
                let last = items
                    .last_mut()
                    .filter(|it| it.kind == Kind::Reg)
                    .ok_or_else(|| {
                        entry_err(i, e, "\"chunk\" entry does not follow a \"reg\" entry")
                    })?;
                if !e.name.is_empty() {
                    let p = clean_name(&e.name).map_err(|r| entry_err(i, e, r))?;
                    if p != last.path {
                        return Err(entry_err(
                            i,
                            e,
                            format!(
                                "chunk entry does not belong to the preceding file {:?}",
                                last.e.name
                            ),
                        ));
                    }
                }
                last.raw_chunks.push((i, e));
                continue;
            }
            let kind = Kind::parse(&e.kind)
                .ok_or_else(|| entry_err(i, e, format!("unknown entry type {:?}", e.kind)))?;
            let path = clean_name(&e.name).map_err(|r| entry_err(i, e, r))?;
            if path.iter().any(|c| c.len() > MAX_NAME_LEN) {
                return Err(entry_err(
                    i,
                    e,
                    format!("a path component is longer than {MAX_NAME_LEN} bytes"),
                ));
            }
            if e.name.len() > MAX_PATH_LEN {
                return Err(entry_err(
                    i,
                    e,
                    format!("path is longer than {MAX_PATH_LEN} bytes"),
                ));
            }
            items.push(Item {
                index: i,
                e,
                path,
                kind,
                raw_chunks: if kind == Kind::Reg {
                    vec![(i, e)]
                } else {
                    Vec::new()
                },
                chunks: Vec::new(),
            });
        }

        // Pass 2: validate file data layout; blob extents of chunks.
        let mut sizes: Vec<u64> = vec![0; items.len()];
        for (n, it) in items.iter_mut().enumerate() {
            if it.kind == Kind::Reg {
                let (size, chunks) = reg_chunks(it, blob_size, data_end)?;
                sizes[n] = size;
                it.chunks = chunks;
            }
        }
        let mut starts: Vec<u64> = Vec::new();
        let mut seen_payload: HashMap<(u64, u64), usize> = HashMap::with_capacity(items.len());
        for it in &items {
            for (c, &(ci, ce)) in it.chunks.iter().zip(&it.raw_chunks) {
                if let Some(prev) = seen_payload.insert((c.blob_offset, c.inner_offset), ci) {
                    return Err(entry_err(
                        ci,
                        ce,
                        format!(
                            "payload at blob offset {} (inner offset {}) is also claimed by entry #{prev}",
                            c.blob_offset, c.inner_offset
                        ),
                    ));
                }
                starts.push(c.blob_offset);
            }
        }
        starts.sort_unstable();
        starts.dedup();
        for it in &mut items {
            for c in &mut it.chunks {
                let next = starts
                    .get(starts.partition_point(|&s| s <= c.blob_offset))
                    .copied()
                    .unwrap_or(data_end);
                c.blob_len = next - c.blob_offset;
            }
        }

        // Names that exist as real entries (or implied directories): a
        // whiteout for one of them is hidden by it.
        // Only needed (and only computed) when the layer has whiteouts.
        let has_whiteouts = items.iter().any(|it| {
            it.path
                .last()
                .is_some_and(|b| b.starts_with(WHITEOUT_PREFIX) && !b.starts_with(".wh..wh."))
        });
        let mut normal: HashSet<String> = HashSet::new();
        for it in items.iter().filter(|_| has_whiteouts) {
            let n = it.path.len();
            for k in 1..n {
                normal.insert(it.path[..k].join("/"));
            }
            if let Some(base) = it.path.last() {
                let special = base.starts_with(WHITEOUT_PREFIX) || (n == 1 && is_landmark(base));
                if !special {
                    normal.insert(it.path.join("/"));
                }
            }
        }

        // Pass 3: the tree.
        let mut b = Builder {
            nodes: Vec::with_capacity(items.len() + 1),
            kids: Vec::with_capacity(items.len() + 1),
            by_path: HashMap::with_capacity(items.len() + 1),
            last_dir: (String::new(), 0),
        };
        let root = b.add(new_node(Self::ROOT, NodeKind::Dir, 0o755));
        b.by_path.insert(String::new(), root);
        let mut seen: HashMap<String, usize> = HashMap::with_capacity(items.len());
        let mut hardlinks: Vec<(usize, u64, String)> = Vec::new();
        let mut link_targets: HashMap<String, String> = HashMap::new();
        let mut opaque: Vec<u64> = Vec::new();
        let mut prefetch_end = None;
        let mut no_prefetch = false;

        for (n, it) in items.iter_mut().enumerate() {
            let (idx, e) = (it.index, it.e);
            let err = |r: String| entry_err(idx, e, r);
            let key = it.path.join("/");
            if let Some(prev) = seen.insert(key.clone(), idx) {
                return Err(err(format!("duplicate entry (same path as entry #{prev})")));
            }
            let m = meta(e).map_err(err)?;
            let Some((base, parent)) = it.path.split_last() else {
                if it.kind != Kind::Dir {
                    return Err(err("the root entry must be a directory".into()));
                }
                if let Some(r) = b.node_mut(Self::ROOT) {
                    apply_meta(r, m);
                }
                continue;
            };
            let base = *base;
            if let Some(c) = parent.iter().find(|c| c.starts_with(WHITEOUT_PREFIX)) {
                return Err(err(format!("path goes through the whiteout name {c:?}")));
            }
            let parent_ino = b.ensure_dir(parent).map_err(err)?;
            if parent.is_empty() && is_landmark(base) {
                if base == NO_PREFETCH_LANDMARK {
                    no_prefetch = true;
                } else if let Some(c) = it.chunks.first() {
                    prefetch_end = Some(c.blob_offset);
                }
                continue;
            }
            if base == OPAQUE_MARKER {
                opaque.push(parent_ino);
                continue;
            }
            if base.starts_with(".wh..wh.") {
                continue;
            }
            if let Some(target) = base.strip_prefix(WHITEOUT_PREFIX) {
                if target.is_empty() || target == "." || target == ".." {
                    return Err(err(format!("whiteout {base:?} names no file")));
                }
                let mut tkey = parent.join("/");
                if !tkey.is_empty() {
                    tkey.push('/');
                }
                tkey.push_str(target);
                if normal.contains(&tkey) {
                    continue;
                }
                let mut node = new_node(parent_ino, NodeKind::Char, 0);
                node.uid = m.uid;
                node.gid = m.gid;
                node.mtime_secs = m.mtime.0;
                node.mtime_nsecs = m.mtime.1;
                let ino = b.add(node);
                b.link(parent_ino, target, ino).map_err(err)?;
                continue;
            }
            if let Some(&ino) = b.by_path.get(&key) {
                // Created earlier as an implied directory.
                if it.kind != Kind::Dir {
                    return Err(err(format!(
                        "is a {} but other entries lie below it",
                        e.kind
                    )));
                }
                if let Some(node) = b.node_mut(ino) {
                    apply_meta(node, m);
                }
                continue;
            }
            let mut node = new_node(parent_ino, NodeKind::Dir, 0);
            match it.kind {
                Kind::Dir => {}
                Kind::Reg => {
                    node.kind = NodeKind::Reg;
                    node.size = sizes[n];
                    node.chunks = std::mem::take(&mut it.chunks);
                }
                Kind::Symlink => {
                    if e.link_name.is_empty() || e.link_name.contains('\0') {
                        return Err(err("symlink target is empty or contains NUL".into()));
                    }
                    node.kind = NodeKind::Symlink;
                    node.size = e.link_name.len() as u64;
                    node.link_target = Some(OsString::from(&e.link_name));
                }
                Kind::Char | Kind::Block => {
                    node.kind = if it.kind == Kind::Char {
                        NodeKind::Char
                    } else {
                        NodeKind::Block
                    };
                    node.rdev_major = range_u32(e.dev_major, "devMajor").map_err(err)?;
                    node.rdev_minor = range_u32(e.dev_minor, "devMinor").map_err(err)?;
                }
                Kind::Fifo => node.kind = NodeKind::Fifo,
                Kind::Hardlink => {
                    let target = clean_name(&e.link_name)
                        .map_err(|r| err(format!("hardlink target {:?}: {r}", e.link_name)))?
                        .join("/");
                    link_targets.insert(key.clone(), target);
                    hardlinks.push((n, parent_ino, key));
                    continue;
                }
            }
            apply_meta(&mut node, m);
            let ino = b.add(node);
            b.link(parent_ino, base, ino).map_err(err)?;
            b.by_path.insert(key, ino);
        }

        // Pass 4: hardlinks share their (final) target's inode.
        for (n, parent_ino, key) in hardlinks {
            let it = &items[n];
            let err = |r: String| entry_err(it.index, it.e, r);
            let mut cur = link_targets.get(&key).cloned().unwrap_or_default();
            let mut hops = 0usize;
            let ino = loop {
                if let Some(&ino) = b.by_path.get(&cur) {
                    break ino;
                }
                match link_targets.get(&cur) {
                    Some(next) if hops <= link_targets.len() => {
                        cur = next.clone();
                        hops += 1;
                    }
                    Some(_) => return Err(err("hardlink cycle".into())),
                    None => {
                        return Err(err(format!(
                            "hardlink target {:?} does not exist in this layer",
                            it.e.link_name
                        )))
                    }
                }
            };
            let target = b
                .node_mut(ino)
                .ok_or_else(|| err("internal error: bad inode".into()))?;
            if target.kind != NodeKind::Reg {
                return Err(err(format!(
                    "hardlink target {:?} is not a regular file",
                    it.e.link_name
                )));
            }
            target.nlink = target.nlink.saturating_add(1);
            let base = it.path.last().copied().unwrap_or_default();
            b.link(parent_ino, base, ino).map_err(err)?;
        }

        for ino in opaque {
            if let Some(d) = b.node_mut(ino) {
                d.xattrs.insert(OsString::from(OPAQUE_XATTR), b"y".to_vec());
            }
        }

        // Directory link counts; children lists; chunks in blob order.
        let Builder {
            mut nodes, kids, ..
        } = b;
        let mut children = Vec::with_capacity(kids.len());
        for (i, k) in kids.into_iter().enumerate() {
            let subdirs = k
                .values()
                .filter(|&&c| nodes.get(c as usize - 1).map(|n| n.kind) == Some(NodeKind::Dir))
                .count();
            if let Some(n) = nodes.get_mut(i) {
                if n.kind == NodeKind::Dir {
                    n.nlink = u32::try_from(subdirs).unwrap_or(u32::MAX).saturating_add(2);
                }
            }
            children.push(k.into_iter().collect::<Vec<_>>());
        }
        let mut order: Vec<(u64, u64, u64, usize)> = Vec::new();
        for n in &nodes {
            for (i, c) in n.chunks.iter().enumerate() {
                order.push((c.blob_offset, c.inner_offset, n.ino, i));
            }
        }
        order.sort_unstable();
        Ok(Index {
            nodes,
            children,
            prefetch_end: if no_prefetch { None } else { prefetch_end },
            chunk_order: order.into_iter().map(|(_, _, ino, i)| (ino, i)).collect(),
        })
    }

    /// The node with inode number `ino`.
    pub fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(ino.checked_sub(1)? as usize)
    }

    /// The inode of `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Option<u64> {
        let kids = self.children.get(parent.checked_sub(1)? as usize)?;
        kids.binary_search_by(|(n, _)| n.as_os_str().cmp(name))
            .ok()
            .map(|i| kids[i].1)
    }

    /// Entries of directory `dir`, sorted by name (byte order); empty for
    /// anything that is not a directory.
    pub fn children(&self, dir: u64) -> &[(OsString, u64)] {
        dir.checked_sub(1)
            .and_then(|i| self.children.get(i as usize))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Number of inodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: there is always a root directory.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Where prefetch ends: the blob offset of the `.prefetch.landmark`
    /// entry's payload, if the layer has one (files whose payload lies before
    /// it are the prioritized ones). None with `.no.prefetch.landmark` or no
    /// landmark.
    pub fn prefetch_end(&self) -> Option<u64> {
        self.prefetch_end
    }

    /// All chunks of all regular files in blob order (hardlinked files once).
    pub fn all_chunks(&self) -> impl Iterator<Item = (u64, &Chunk)> + '_ {
        self.chunk_order.iter().filter_map(move |&(ino, i)| {
            let c = self.node(ino)?.chunks.get(i)?;
            Some((ino, c))
        })
    }
}
