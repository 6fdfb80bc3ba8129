//! Building an [`Index`] from TOC entries, one entry at a time.
//!
//! The steps, in the order a reader meets them:
//!
//! 1. [`Builder::push`] takes each entry: a `chunk` entry joins the open
//!    regular file ([`Builder::add_chunk_entry`]); any other entry first
//!    closes the open file ([`Builder::close_file`], which validates its
//!    data layout) and is then classified ([`Builder::add_entry`]): root
//!    metadata, landmark, opaque marker, whiteout, directory, file, link,
//!    device; hardlinks wait for the end.
//! 2. [`Builder::finish`] closes the last file, checks the version, links
//!    the hardlinks ([`Builder::link_hardlinks`]), marks opaque directories,
//!    checks that no payload is claimed twice and measures each chunk's
//!    compressed extent ([`Builder::chunk_extents`]), and sorts the
//!    directory entries ([`Builder::into_index`]).
//!
//! Names live once, in a byte arena; a hash table maps (directory, name) to
//! an inode while building, so no full path is ever kept per entry.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::HashTable;
use hologram_oci::Digest;

use super::entry::EntryRef;
use super::{Chunk, Dirent, Extra, Index, IndexLimits, Node, NodeKind, Span, NO_EXTRA};
use crate::{
    Error, FOOTER_SIZE, MAX_FILE_SIZE, NO_PREFETCH_LANDMARK, OPAQUE_XATTR, PREFETCH_LANDMARK,
};

const WHITEOUT_PREFIX: &str = ".wh.";
const AUFS_PREFIX: &str = ".wh..wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Longest path component Linux serves (NAME_MAX).
const MAX_NAME_LEN: usize = 255;
/// Longest path Linux serves (PATH_MAX).
const MAX_PATH_LEN: usize = 4096;
/// Linux XATTR_NAME_MAX / XATTR_SIZE_MAX.
const MAX_XATTR_NAME: usize = 255;
const MAX_XATTR_VALUE: usize = 65536;
/// Marks a node that no TOC entry defined (an implied directory).
const IMPLIED: u32 = u32::MAX;

/// Where the payload area of a blob ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub blob_size: u64,
    /// Chunk payloads lie below this offset (the TOC member's start).
    pub data_end: u64,
}

impl Geometry {
    pub(crate) fn with_toc_offset(blob_size: u64, toc_offset: u64) -> Result<Geometry, Error> {
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
        Ok(Geometry {
            blob_size,
            data_end: toc_offset,
        })
    }
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

fn entry_err(index: usize, name: &str, reason: impl Into<String>) -> Error {
    Error::Entry {
        index,
        name: name.to_owned(),
        reason: reason.into(),
    }
}

fn range_u32(v: i64, what: &str) -> Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{what} {v} is out of range"))
}

fn nonneg(v: i64, what: &str) -> Result<u64, String> {
    u64::try_from(v).map_err(|_| format!("{what} {v} is negative"))
}

/// Owner, mode, time and xattrs of an entry, validated.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

fn parse_mtime(s: &str) -> Result<(i64, u32), String> {
    hologram_oci::time::parse_rfc3339_unix(s)
        .map_err(|_| format!("modtime {s:?} is not an RFC 3339 timestamp"))
}

fn meta(e: &EntryRef<'_>) -> Result<Meta, String> {
    if e.mode < 0 || e.mode > i64::from(u32::MAX) {
        return Err(format!("mode {} is out of range", e.mode));
    }
    let mtime = if e.mod_time.is_empty() {
        (0, 0)
    } else {
        parse_mtime(&e.mod_time)?
    };
    let mut xattrs = BTreeMap::new();
    for (k, v) in e.xattrs.iter() {
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

/// A chunk as the TOC states it, before validation.
struct RawChunk {
    entry: usize,
    offset: i64,
    chunk_offset: i64,
    chunk_size: i64,
    inner_offset: i64,
    digest: Option<String>,
}

impl RawChunk {
    fn of(entry: usize, e: &EntryRef<'_>) -> RawChunk {
        RawChunk {
            entry,
            offset: e.offset,
            chunk_offset: e.chunk_offset,
            chunk_size: e.chunk_size,
            inner_offset: e.inner_offset,
            digest: (!e.chunk_digest.is_empty()).then(|| e.chunk_digest.to_string()),
        }
    }
}

/// A regular file (or root landmark) whose `chunk` entries may follow.
struct OpenFile {
    entry: usize,
    name: String,
    path: Vec<String>,
    size: i64,
    /// The file's whole-content digest (used for a single chunk without
    /// `chunkDigest`).
    digest: Option<String>,
    raw: Vec<RawChunk>,
    /// `None` for a landmark (not presented), else the node.
    ino: Option<u32>,
}

/// A hardlink, linked once every other entry is in.
struct PendingLink {
    entry: usize,
    name: String,
    link_name: String,
    parent: u32,
    base: String,
    /// Its own cleaned path and its cleaned target.
    path: String,
    target: String,
}

/// A (directory, name) → inode entry of the build-time name table.
#[derive(Clone, Copy)]
struct Link {
    parent: u32,
    name: Span,
    ino: u32,
}

pub(crate) struct Builder {
    geometry: Geometry,
    limits: IndexLimits,
    entries: usize,
    nodes: Vec<Node>,
    /// The TOC entry that defined each node ([`IMPLIED`] for implied dirs).
    entry_of: Vec<u32>,
    /// Nodes that are whiteout placeholders (a later real entry replaces them).
    whiteout: Vec<bool>,
    names: Vec<u8>,
    table: HashTable<Link>,
    hasher: std::collections::hash_map::RandomState,
    chunks: Vec<Chunk>,
    /// The TOC entry of each chunk (errors).
    chunk_entry: Vec<u32>,
    /// Landmark payloads: they bound neighbouring chunks but are not served.
    landmark_chunks: Vec<(u64, u64, u32)>,
    extras: Vec<Extra>,
    open: Option<OpenFile>,
    hardlinks: Vec<PendingLink>,
    opaque: Vec<u32>,
    prefetch_end: Option<u64>,
    no_prefetch: bool,
    root_defined: Option<usize>,
    /// The directory resolved last (entries come directory by directory).
    last_dir: (Vec<String>, u32),
    error: Option<Error>,
}

impl Builder {
    pub(crate) fn new(geometry: Geometry, limits: IndexLimits) -> Builder {
        let mut b = Builder {
            geometry,
            limits,
            entries: 0,
            nodes: Vec::new(),
            entry_of: Vec::new(),
            whiteout: Vec::new(),
            names: Vec::new(),
            table: HashTable::new(),
            hasher: Default::default(),
            chunks: Vec::new(),
            chunk_entry: Vec::new(),
            landmark_chunks: Vec::new(),
            extras: Vec::new(),
            open: None,
            hardlinks: Vec::new(),
            opaque: Vec::new(),
            prefetch_end: None,
            no_prefetch: false,
            root_defined: None,
            last_dir: (Vec::new(), 1),
            error: None,
        };
        b.add_node(new_node(1, NodeKind::Dir, 0o755), IMPLIED);
        b
    }

    /// Remembers the error that stopped a streaming decode.
    pub(crate) fn fail(&mut self, e: Error) {
        self.error = Some(e);
    }

    pub(crate) fn take_error(&mut self) -> Option<Error> {
        self.error.take()
    }

    // ------------------------------------------------------------ nodes, names

    fn add_node(&mut self, mut node: Node, entry: u32) -> u32 {
        let ino = self.nodes.len() as u32 + 1;
        node.ino = u64::from(ino);
        self.nodes.push(node);
        self.entry_of.push(entry);
        self.whiteout.push(false);
        ino
    }

    fn node_mut(&mut self, ino: u32) -> Option<&mut Node> {
        self.nodes.get_mut((ino as usize).checked_sub(1)?)
    }

    fn node(&self, ino: u32) -> Option<&Node> {
        self.nodes.get((ino as usize).checked_sub(1)?)
    }

    fn hash(&self, parent: u32, name: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        parent.hash(&mut h);
        name.hash(&mut h);
        h.finish()
    }

    fn name_bytes(&self, s: Span) -> &[u8] {
        self.names.get(s.range()).unwrap_or_default()
    }

    /// The inode named `name` in directory `parent`.
    fn child(&self, parent: u32, name: &str) -> Option<u32> {
        let h = self.hash(parent, name.as_bytes());
        self.table
            .find(h, |l| {
                l.parent == parent && self.name_bytes(l.name) == name.as_bytes()
            })
            .map(|l| l.ino)
    }

    /// Points `name` in `parent` at `ino` (replacing what it named).
    fn set_child(&mut self, parent: u32, name: &str, ino: u32) {
        let h = self.hash(parent, name.as_bytes());
        let names = &self.names;
        if let Some(l) = self.table.find_mut(h, |l| {
            l.parent == parent && names.get(l.name.range()).unwrap_or_default() == name.as_bytes()
        }) {
            l.ino = ino;
            return;
        }
        let span = Span {
            start: self.names.len() as u32,
            len: name.len() as u32,
        };
        self.names.extend_from_slice(name.as_bytes());
        let link = Link {
            parent,
            name: span,
            ino,
        };
        let (names, hasher) = (&self.names, &self.hasher);
        self.table.insert_unique(h, link, |l| {
            let mut hh = hasher.build_hasher();
            l.parent.hash(&mut hh);
            names.get(l.name.range()).unwrap_or_default().hash(&mut hh);
            hh.finish()
        });
    }

    fn link(&mut self, parent: u32, name: &str, ino: u32) -> Result<(), String> {
        if self.child(parent, name).is_some() {
            return Err(format!("{name:?} already exists in its directory"));
        }
        self.set_child(parent, name, ino);
        Ok(())
    }

    fn is_dir(&self, ino: u32) -> bool {
        self.node(ino).map(|n| n.kind) == Some(NodeKind::Dir)
    }

    /// The inode of directory `comps`, creating implied directories (and
    /// turning whiteout placeholders in the way into directories: the real
    /// tree wins over a whiteout of the same layer).
    fn ensure_dir(&mut self, comps: &[&str]) -> Result<u32, String> {
        if self.last_dir.0.len() == comps.len()
            && self.last_dir.0.iter().zip(comps).all(|(a, b)| a == b)
        {
            return Ok(self.last_dir.1);
        }
        let mut cur = 1u32;
        for (i, c) in comps.iter().enumerate() {
            match self.child(cur, c) {
                Some(ino) if self.whiteout.get(ino as usize - 1) == Some(&true) => {
                    self.replace(ino, new_node(u64::from(cur), NodeKind::Dir, 0o755), IMPLIED);
                    cur = ino;
                }
                Some(ino) if self.is_dir(ino) => cur = ino,
                Some(_) => {
                    return Err(format!(
                        "parent {:?} is not a directory",
                        comps[..=i].join("/")
                    ))
                }
                None => {
                    let ino =
                        self.add_node(new_node(u64::from(cur), NodeKind::Dir, 0o755), IMPLIED);
                    self.set_child(cur, c, ino);
                    cur = ino;
                }
            }
        }
        self.last_dir = (comps.iter().map(|c| (*c).to_owned()).collect(), cur);
        Ok(cur)
    }

    /// Overwrites node `ino` (a whiteout placeholder) in place.
    fn replace(&mut self, ino: u32, mut node: Node, entry: u32) {
        node.ino = u64::from(ino);
        let i = ino as usize - 1;
        if let Some(n) = self.nodes.get_mut(i) {
            *n = node;
        }
        if let Some(e) = self.entry_of.get_mut(i) {
            *e = entry;
        }
        if let Some(w) = self.whiteout.get_mut(i) {
            *w = false;
        }
    }

    fn set_extra(&mut self, ino: u32, f: impl FnOnce(&mut Extra)) {
        let Some(idx) = self.node(ino).map(|n| n.extra) else {
            return;
        };
        let idx = if idx == NO_EXTRA {
            let idx = self.extras.len() as u32;
            self.extras.push(Extra::default());
            if let Some(n) = self.node_mut(ino) {
                n.extra = idx;
            }
            idx
        } else {
            idx
        };
        if let Some(e) = self.extras.get_mut(idx as usize) {
            f(e);
        }
    }

    fn apply_meta(&mut self, ino: u32, m: Meta) {
        if let Some(n) = self.node_mut(ino) {
            n.mode = m.mode;
            n.uid = m.uid;
            n.gid = m.gid;
            n.mtime_secs = m.mtime.0;
            n.mtime_nsecs = m.mtime.1;
        }
        if !m.xattrs.is_empty() {
            self.set_extra(ino, |e| e.xattrs = m.xattrs);
        } else if let Some(x) = self.node(ino).map(|n| n.extra) {
            if let Some(e) = self.extras.get_mut(x as usize) {
                e.xattrs.clear();
            }
        }
    }

    // ------------------------------------------------------------ step 1: entries

    /// Takes the next TOC entry.
    pub(crate) fn push(&mut self, e: &EntryRef<'_>) -> Result<(), Error> {
        let index = self.entries;
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Error::InvalidToc(format!(
                "more than {} entries (the limit)",
                self.limits.max_entries
            )));
        }
        if e.kind == "chunk" {
            return self.add_chunk_entry(index, e);
        }
        self.close_file()?;
        self.add_entry(index, e)
    }

    /// A `chunk` entry: the next piece of the open regular file.
    fn add_chunk_entry(&mut self, index: usize, e: &EntryRef<'_>) -> Result<(), Error> {
        let err = |r: String| entry_err(index, &e.name, r);
        let Some(open) = self.open.as_mut() else {
            return Err(err("\"chunk\" entry does not follow a \"reg\" entry".into()));
        };
        if !e.name.is_empty() {
            let p = clean_name(&e.name).map_err(err)?;
            if p.len() != open.path.len() || p.iter().zip(&open.path).any(|(a, b)| a != b) {
                return Err(err(format!(
                    "chunk entry does not belong to the preceding file {:?}",
                    open.name
                )));
            }
        }
        open.raw.push(RawChunk::of(index, e));
        Ok(())
    }

    /// Any entry but `chunk`.
    fn add_entry(&mut self, index: usize, e: &EntryRef<'_>) -> Result<(), Error> {
        let err = |r: String| entry_err(index, &e.name, r);
        let kind =
            Kind::parse(&e.kind).ok_or_else(|| err(format!("unknown entry type {:?}", e.kind)))?;
        let path = clean_name(&e.name).map_err(err)?;
        if path.iter().any(|c| c.len() > MAX_NAME_LEN) {
            return Err(err(format!(
                "a path component is longer than {MAX_NAME_LEN} bytes"
            )));
        }
        if e.name.len() > MAX_PATH_LEN {
            return Err(err(format!("path is longer than {MAX_PATH_LEN} bytes")));
        }
        let m = meta(e).map_err(err)?;
        let Some((&base, parent)) = path.split_last() else {
            return self.set_root(index, kind, m).map_err(err);
        };
        if let Some(c) = parent.iter().find(|c| c.starts_with(WHITEOUT_PREFIX)) {
            return Err(err(format!("path goes through the whiteout name {c:?}")));
        }
        let parent_ino = self.ensure_dir(parent).map_err(err)?;
        if parent.is_empty() && (base == PREFETCH_LANDMARK || base == NO_PREFETCH_LANDMARK) {
            if base == NO_PREFETCH_LANDMARK {
                self.no_prefetch = true;
            }
            // A landmark's payload bounds its neighbours; it is not served.
            if kind == Kind::Reg {
                self.open_file(index, e, &path, None);
            }
            return Ok(());
        }
        if base == OPAQUE_MARKER {
            self.opaque.push(parent_ino);
            return Ok(());
        }
        if base.starts_with(AUFS_PREFIX) {
            return Ok(());
        }
        if let Some(target) = base.strip_prefix(WHITEOUT_PREFIX) {
            return self.add_whiteout(index, parent_ino, target, m).map_err(err);
        }
        let existing = self.child(parent_ino, base);
        if let Some(ino) = existing {
            let placeholder = self.whiteout.get(ino as usize - 1) == Some(&true);
            if !placeholder {
                return self.redefine(index, ino, kind, &e.kind, m).map_err(err);
            }
        }
        if kind == Kind::Hardlink {
            let target = clean_name(&e.link_name)
                .map_err(|r| err(format!("hardlink target {:?}: {r}", e.link_name)))?
                .join("/");
            self.hardlinks.push(PendingLink {
                entry: index,
                name: e.name.to_string(),
                link_name: e.link_name.to_string(),
                parent: parent_ino,
                base: base.to_owned(),
                path: path.join("/"),
                target,
            });
            return Ok(());
        }
        let node = self.node_for(kind, e, parent_ino).map_err(err)?;
        let ino = match existing {
            Some(ino) => {
                self.replace(ino, node, index as u32);
                ino
            }
            None => {
                let ino = self.add_node(node, index as u32);
                self.set_child(parent_ino, base, ino);
                ino
            }
        };
        if kind == Kind::Symlink {
            let target = OsString::from(e.link_name.as_ref());
            self.set_extra(ino, |x| x.link_target = Some(target));
        }
        self.apply_meta(ino, m);
        if kind == Kind::Reg {
            self.open_file(index, e, &path, Some(ino));
        }
        Ok(())
    }

    /// `./` or `/`: the root directory's own metadata.
    fn set_root(&mut self, index: usize, kind: Kind, m: Meta) -> Result<(), String> {
        if kind != Kind::Dir {
            return Err("the root entry must be a directory".into());
        }
        if let Some(prev) = self.root_defined.replace(index) {
            return Err(format!("duplicate entry (same path as entry #{prev})"));
        }
        self.apply_meta(1, m);
        Ok(())
    }

    /// A second entry for a name that exists: only a directory entry for a
    /// directory that was implied so far.
    fn redefine(
        &mut self,
        index: usize,
        ino: u32,
        kind: Kind,
        kind_name: &str,
        m: Meta,
    ) -> Result<(), String> {
        let prev = self.entry_of.get(ino as usize - 1).copied().unwrap_or(0);
        if prev != IMPLIED {
            return Err(format!("duplicate entry (same path as entry #{prev})"));
        }
        if kind != Kind::Dir {
            return Err(format!("is a {kind_name} but other entries lie below it"));
        }
        if let Some(e) = self.entry_of.get_mut(ino as usize - 1) {
            *e = index as u32;
        }
        self.apply_meta(ino, m);
        Ok(())
    }

    /// `.wh.NAME`: a character device 0/0 named NAME, unless NAME exists.
    fn add_whiteout(
        &mut self,
        index: usize,
        parent: u32,
        target: &str,
        m: Meta,
    ) -> Result<(), String> {
        if target.is_empty() || target == "." || target == ".." {
            return Err(format!("whiteout \".wh.{target}\" names no file"));
        }
        if let Some(ino) = self.child(parent, target) {
            if self.whiteout.get(ino as usize - 1) == Some(&true) {
                let prev = self.entry_of.get(ino as usize - 1).copied().unwrap_or(0);
                return Err(format!("duplicate entry (same path as entry #{prev})"));
            }
            return Ok(()); // the layer's own entry wins
        }
        let mut node = new_node(u64::from(parent), NodeKind::Char, 0);
        node.uid = m.uid;
        node.gid = m.gid;
        node.mtime_secs = m.mtime.0;
        node.mtime_nsecs = m.mtime.1;
        let ino = self.add_node(node, index as u32);
        if let Some(w) = self.whiteout.get_mut(ino as usize - 1) {
            *w = true;
        }
        self.set_child(parent, target, ino);
        Ok(())
    }

    /// A new node of `kind` for entry `e` (regular files get their size and
    /// chunks when the file is closed).
    fn node_for(&self, kind: Kind, e: &EntryRef<'_>, parent: u32) -> Result<Node, String> {
        let mut node = new_node(u64::from(parent), NodeKind::Dir, 0);
        match kind {
            Kind::Dir | Kind::Hardlink => {}
            Kind::Reg => node.kind = NodeKind::Reg,
            Kind::Symlink => {
                if e.link_name.is_empty() || e.link_name.contains('\0') {
                    return Err("symlink target is empty or contains NUL".into());
                }
                node.kind = NodeKind::Symlink;
                node.size = e.link_name.len() as u64;
            }
            Kind::Char | Kind::Block => {
                node.kind = if kind == Kind::Char {
                    NodeKind::Char
                } else {
                    NodeKind::Block
                };
                node.rdev_major = range_u32(e.dev_major, "devMajor")?;
                node.rdev_minor = range_u32(e.dev_minor, "devMinor")?;
            }
            Kind::Fifo => node.kind = NodeKind::Fifo,
        }
        Ok(node)
    }

    fn open_file(&mut self, index: usize, e: &EntryRef<'_>, path: &[&str], ino: Option<u32>) {
        self.open = Some(OpenFile {
            entry: index,
            name: e.name.to_string(),
            path: path.iter().map(|c| (*c).to_owned()).collect(),
            size: e.size,
            digest: (!e.digest.is_empty()).then(|| e.digest.to_string()),
            raw: vec![RawChunk::of(index, e)],
            ino,
        });
    }

    /// Validates the open file's size and chunk list and stores its chunks.
    fn close_file(&mut self) -> Result<(), Error> {
        let Some(f) = self.open.take() else {
            return Ok(());
        };
        let (size, chunks) = self.file_chunks(&f)?;
        match f.ino {
            None => {
                if let Some(c) = chunks.first() {
                    if !self.no_prefetch && self.prefetch_end.is_none() {
                        self.prefetch_end = Some(c.blob_offset);
                    }
                }
                for (c, r) in chunks.iter().zip(&f.raw) {
                    self.landmark_chunks
                        .push((c.blob_offset, c.inner_offset, r.entry as u32));
                }
            }
            Some(ino) => {
                let span = Span {
                    start: self.chunks.len() as u32,
                    len: chunks.len() as u32,
                };
                for (c, r) in chunks.into_iter().zip(&f.raw) {
                    self.chunks.push(c);
                    self.chunk_entry.push(r.entry as u32);
                }
                if let Some(n) = self.node_mut(ino) {
                    n.size = size;
                    n.chunks = span;
                }
            }
        }
        Ok(())
    }

    /// A regular file's size and chunks: contiguous from 0 to the size, each
    /// inside the payload area, each with a digest.
    fn file_chunks(&self, f: &OpenFile) -> Result<(u64, Vec<Chunk>), Error> {
        let err = |index: usize, reason: String| entry_err(index, &f.name, reason);
        let blob_size = self.geometry.blob_size;
        let data_end = self.geometry.data_end;
        let size = nonneg(f.size, "size").map_err(|r| err(f.entry, r))?;
        let limit = blob_size.saturating_mul(1024).min(MAX_FILE_SIZE);
        if size > limit {
            return Err(err(
                f.entry,
                format!(
                    "file size {size} is absurd (limit {limit}: 1 TiB, and at most 1024 times the {blob_size}-byte blob)"
                ),
            ));
        }
        if size == 0 {
            if let Some(c) = f.raw.get(1) {
                return Err(err(c.entry, "chunk entry for an empty file".into()));
            }
            return Ok((0, Vec::new()));
        }
        let single = f.raw.len() == 1;
        let mut chunks = Vec::with_capacity(f.raw.len());
        let mut expect = 0u64;
        for rc in &f.raw {
            let ci = rc.entry;
            let file_offset = nonneg(rc.chunk_offset, "chunkOffset").map_err(|r| err(ci, r))?;
            let chunk_size = nonneg(rc.chunk_size, "chunkSize").map_err(|r| err(ci, r))?;
            let blob_offset = nonneg(rc.offset, "offset").map_err(|r| err(ci, r))?;
            let inner_offset = nonneg(rc.inner_offset, "innerOffset").map_err(|r| err(ci, r))?;
            check_contiguous(file_offset, expect, size).map_err(|r| err(ci, r))?;
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
            let digest = match (&rc.digest, single, &f.digest) {
                (Some(d), _, _) => d,
                (None, true, Some(d)) => d,
                _ => {
                    return Err(err(
                        ci,
                        "chunk has no chunkDigest, so it cannot be verified".into(),
                    ))
                }
            };
            let digest = Digest::parse(digest).map_err(|e| err(ci, e.to_string()))?;
            chunks.push(Chunk {
                file_offset,
                size: csize,
                blob_offset,
                blob_len: 0,
                inner_offset,
                digest,
            });
            expect = end;
        }
        if expect != size {
            return Err(err(
                f.entry,
                format!("chunks cover only {expect} of the file's {size} bytes"),
            ));
        }
        Ok((size, chunks))
    }

    // ------------------------------------------------------------ step 2: the end

    /// Completes the index.
    pub(crate) fn finish(mut self, version: Option<u32>) -> Result<Index, Error> {
        self.close_file()?;
        match version {
            Some(1) => {}
            Some(v) => {
                return Err(Error::InvalidToc(format!(
                    "unsupported TOC version {v} (only 1 is defined)"
                )))
            }
            None => return Err(Error::InvalidToc("the TOC has no version".into())),
        }
        self.link_hardlinks()?;
        for ino in std::mem::take(&mut self.opaque) {
            self.set_extra(ino, |e| {
                e.xattrs.insert(OsString::from(OPAQUE_XATTR), b"y".to_vec());
            });
        }
        self.chunk_extents()?;
        Ok(self.into_index())
    }

    /// Links every hardlink to its (final) target, which must be a regular
    /// file; the target's link count grows.
    fn link_hardlinks(&mut self) -> Result<(), Error> {
        let pending = std::mem::take(&mut self.hardlinks);
        let targets: HashMap<&str, &str> = pending
            .iter()
            .map(|h| (h.path.as_str(), h.target.as_str()))
            .collect();
        let mut linked: HashMap<String, u32> = HashMap::new();
        for h in &pending {
            let err = |r: String| entry_err(h.entry, &h.name, r);
            let mut cur = h.target.as_str();
            let mut hops = 0usize;
            let ino = loop {
                if let Some(ino) = self.resolve(cur).or_else(|| linked.get(cur).copied()) {
                    break ino;
                }
                match targets.get(cur) {
                    Some(next) if hops <= targets.len() => {
                        cur = next;
                        hops += 1;
                    }
                    Some(_) => return Err(err("hardlink cycle".into())),
                    None => {
                        return Err(err(format!(
                            "hardlink target {:?} does not exist in this layer",
                            h.link_name
                        )))
                    }
                }
            };
            match self.node_mut(ino) {
                Some(t) if t.kind == NodeKind::Reg => t.nlink = t.nlink.saturating_add(1),
                _ => {
                    return Err(err(format!(
                        "hardlink target {:?} is not a regular file",
                        h.link_name
                    )))
                }
            }
            match self.child(h.parent, &h.base) {
                Some(w) if self.whiteout.get(w as usize - 1) == Some(&true) => {
                    self.set_child(h.parent, &h.base, ino)
                }
                _ => self.link(h.parent, &h.base, ino).map_err(err)?,
            }
            linked.insert(h.path.clone(), ino);
        }
        Ok(())
    }

    /// The inode at slash-separated `path`, following no links.
    fn resolve(&self, path: &str) -> Option<u32> {
        let mut cur = 1u32;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            cur = self.child(cur, c)?;
        }
        Some(cur)
    }

    /// No payload may be claimed twice; each chunk's compressed extent runs
    /// to the next distinct payload start (or the end of the payload area).
    fn chunk_extents(&mut self) -> Result<(), Error> {
        let mut starts: Vec<(u64, u64, u32, Option<u32>)> = self
            .chunks
            .iter()
            .enumerate()
            .map(|(id, c)| {
                let entry = self.chunk_entry.get(id).copied().unwrap_or(0);
                (c.blob_offset, c.inner_offset, entry, Some(id as u32))
            })
            .chain(
                self.landmark_chunks
                    .iter()
                    .map(|&(o, i, entry)| (o, i, entry, None)),
            )
            .collect();
        starts.sort_unstable();
        for w in starts.windows(2) {
            if let [a, b] = w {
                if (a.0, a.1) == (b.0, b.1) {
                    let (first, later) = if a.2 <= b.2 { (a, b) } else { (b, a) };
                    return Err(Error::Entry {
                        index: later.2 as usize,
                        name: self.entry_name(later.3),
                        reason: format!(
                            "payload at blob offset {} (inner offset {}) is also claimed by entry #{}",
                            later.0, later.1, first.2
                        ),
                    });
                }
            }
        }
        let mut offsets: Vec<u64> = starts.iter().map(|s| s.0).collect();
        offsets.dedup();
        let data_end = self.geometry.data_end;
        for c in &mut self.chunks {
            let next = offsets
                .get(offsets.partition_point(|&s| s <= c.blob_offset))
                .copied()
                .unwrap_or(data_end);
            c.blob_len = next - c.blob_offset;
        }
        Ok(())
    }

    /// A chunk's file name for an error (by searching: errors are rare).
    fn entry_name(&self, chunk: Option<u32>) -> String {
        let Some(id) = chunk else {
            return PREFETCH_LANDMARK.to_owned();
        };
        let owner = self
            .nodes
            .iter()
            .find(|n| n.chunks.start <= id && id < n.chunks.start + n.chunks.len);
        let Some(owner) = owner else {
            return String::new();
        };
        // Walk up the parents for a path.
        let mut parts = Vec::new();
        let mut cur = owner.ino as u32;
        while cur != 1 {
            let Some(l) = self.table.iter().find(|l| l.ino == cur) else {
                break;
            };
            parts.push(String::from_utf8_lossy(self.name_bytes(l.name)).into_owned());
            cur = l.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// Directory entries grouped and sorted, directory link counts, chunk
    /// order; the build-time tables are dropped.
    fn into_index(mut self) -> Index {
        let mut links: Vec<Link> = self.table.drain().collect();
        let names = std::mem::take(&mut self.names);
        links.sort_unstable_by(|a, b| {
            a.parent.cmp(&b.parent).then_with(|| {
                names
                    .get(a.name.range())
                    .unwrap_or_default()
                    .cmp(names.get(b.name.range()).unwrap_or_default())
            })
        });
        let mut dirents = Vec::with_capacity(links.len());
        let mut i = 0;
        while i < links.len() {
            let parent = links[i].parent;
            let start = dirents.len() as u32;
            while let Some(l) = links.get(i).filter(|l| l.parent == parent) {
                dirents.push(Dirent {
                    name: l.name,
                    ino: l.ino,
                });
                i += 1;
            }
            if let Some(n) = self.node_mut(parent) {
                n.dirents = Span {
                    start,
                    len: dirents.len() as u32 - start,
                };
            }
        }
        // Link counts of directories: 2 + subdirectories.
        let kinds: Vec<NodeKind> = self.nodes.iter().map(|n| n.kind).collect();
        for n in &mut self.nodes {
            if n.kind == NodeKind::Dir {
                let subdirs = dirents
                    .get(n.dirents.range())
                    .unwrap_or_default()
                    .iter()
                    .filter(|d| kinds.get(d.ino as usize - 1) == Some(&NodeKind::Dir))
                    .count();
                n.nlink = u32::try_from(subdirs).unwrap_or(u32::MAX).saturating_add(2);
            }
        }
        let mut order: Vec<u32> = (0..self.chunks.len() as u32).collect();
        let chunks = &self.chunks;
        order.sort_unstable_by_key(|&id| chunks.get(id as usize).map(Chunk::key));
        let mut nodes = self.nodes;
        nodes.shrink_to_fit();
        let mut chunks = self.chunks;
        chunks.shrink_to_fit();
        let mut names = names;
        names.shrink_to_fit();
        let mut extras = self.extras;
        extras.shrink_to_fit();
        Index {
            nodes,
            names,
            dirents,
            chunks,
            order,
            extras,
            prefetch_end: if self.no_prefetch {
                None
            } else {
                self.prefetch_end
            },
        }
    }
}

/// A chunk must start where the previous one ended (0 for the first), and
/// before the end of the file.
fn check_contiguous(file_offset: u64, expect: u64, size: u64) -> Result<(), String> {
    if file_offset < expect {
        return Err(format!(
            "chunk at file offset {file_offset} overlaps the previous chunk, which ends at {expect}"
        ));
    }
    if file_offset > expect {
        return Err(if expect == 0 {
            format!("the first chunk starts at file offset {file_offset}, not 0")
        } else {
            format!("gap in the file data: chunk starts at {file_offset} but the previous chunk ends at {expect}")
        });
    }
    if file_offset >= size {
        return Err(format!(
            "chunk offset {file_offset} is not below the file size {size}"
        ));
    }
    Ok(())
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
        chunks: Span::default(),
        dirents: Span::default(),
        extra: NO_EXTRA,
    }
}
