//! A validated, ready-to-serve file tree of one eStargz layer, in compact
//! form: inodes in one vector, every directory entry name in one byte arena,
//! every chunk in one vector, rare metadata (symlink targets, xattrs) in a
//! side table. About 150 bytes per TOC entry (see [`Index::heap_bytes`]),
//! built by streaming the TOC JSON (see [`Index::from_json`]) so a layer's
//! entries never exist as JSON objects all at once.

mod build;
mod entry;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;

use hologram_oci::Digest;

pub(crate) use build::clean_name;
use build::{Builder, Geometry};

use crate::{Error, Toc, FOOTER_SIZE, MAX_ENTRIES};

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

/// A run of items in one of the index's vectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn range(self) -> Range<usize> {
        self.start as usize..self.start as usize + self.len as usize
    }
}

const NO_EXTRA: u32 = u32::MAX;

/// One inode of the layer's file tree. Its chunks, directory entries,
/// symlink target and xattrs are reached through the [`Index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    chunks: Span,
    dirents: Span,
    extra: u32,
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
    /// Digest of the uncompressed chunk bytes.
    pub digest: Digest,
}

impl Chunk {
    /// The chunk's identity within its blob: several small files may share
    /// one gzip member (same `blob_offset`, different `inner_offset`).
    pub fn key(&self) -> (u64, u64) {
        (self.blob_offset, self.inner_offset)
    }
}

/// A directory entry: a name in the arena and the inode it names.
#[derive(Debug, Clone, Copy)]
struct Dirent {
    name: Span,
    ino: u32,
}

/// What few nodes have.
#[derive(Debug, Clone, Default)]
struct Extra {
    link_target: Option<OsString>,
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

/// Limits on what one layer's index may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexLimits {
    /// Most TOC entries accepted.
    pub max_entries: usize,
}

impl Default for IndexLimits {
    fn default() -> Self {
        IndexLimits {
            max_entries: MAX_ENTRIES,
        }
    }
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
    names: Vec<u8>,
    /// Grouped by directory, each group sorted by name bytes.
    dirents: Vec<Dirent>,
    chunks: Vec<Chunk>,
    /// Chunk ids in blob order (hardlinked files once).
    order: Vec<u32>,
    extras: Vec<Extra>,
    prefetch_end: Option<u64>,
}

/// The entries of one directory, sorted by name (byte order).
#[derive(Debug, Clone)]
pub struct Children<'a> {
    names: &'a [u8],
    it: std::slice::Iter<'a, Dirent>,
}

impl<'a> Iterator for Children<'a> {
    type Item = (&'a OsStr, u64);

    fn next(&mut self) -> Option<Self::Item> {
        let d = self.it.next()?;
        Some((name_of(self.names, d), u64::from(d.ino)))
    }

    fn nth(&mut self, n: usize) -> Option<Self::Item> {
        let d = self.it.nth(n)?;
        Some((name_of(self.names, d), u64::from(d.ino)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.it.size_hint()
    }
}

impl ExactSizeIterator for Children<'_> {}

fn name_of<'a>(names: &'a [u8], d: &Dirent) -> &'a OsStr {
    OsStr::from_bytes(names.get(d.name.range()).unwrap_or_default())
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
    /// other than 1, and more than [`MAX_ENTRIES`] entries.
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
        let g = Geometry::with_toc_offset(blob_size, toc_offset)?;
        Self::build_limited(toc, g.blob_size, g.data_end, MAX_ENTRIES)
    }

    /// `build` with an explicit payload end and entry limit (tests use a
    /// small limit).
    pub(crate) fn build_limited(
        toc: &Toc,
        blob_size: u64,
        data_end: u64,
        max_entries: usize,
    ) -> Result<Index, Error> {
        let mut b = Builder::new(
            Geometry {
                blob_size,
                data_end,
            },
            IndexLimits { max_entries },
        );
        for e in &toc.entries {
            b.push(&entry::EntryRef::from(e))?;
        }
        b.finish(Some(toc.version))
    }

    /// Builds the index straight from the TOC JSON (as
    /// [`crate::read_toc_json`] returns it), one entry at a time: the peak
    /// memory is the JSON plus the index, never a parsed copy of every
    /// entry. `toc_offset` ends the payload area, as in
    /// [`Index::build_with_toc_offset`].
    pub fn from_json(
        json: &[u8],
        blob_size: u64,
        toc_offset: u64,
        limits: IndexLimits,
    ) -> Result<Index, Error> {
        let g = Geometry::with_toc_offset(blob_size, toc_offset)?;
        let mut b = Builder::new(g, limits);
        let version = entry::stream(json, &mut b)?;
        b.finish(version)
    }

    /// The node with inode number `ino`.
    pub fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino.checked_sub(1)?).ok()?)
    }

    /// The chunks of `node` (a regular file), in file order.
    pub fn chunks(&self, node: &Node) -> &[Chunk] {
        self.chunks.get(node.chunks.range()).unwrap_or_default()
    }

    /// The ids of `node`'s chunks (for [`Index::chunk`]).
    pub fn chunk_ids(&self, node: &Node) -> Range<u32> {
        node.chunks.start..node.chunks.start + node.chunks.len
    }

    /// Chunk `id`.
    pub fn chunk(&self, id: u32) -> Option<&Chunk> {
        self.chunks.get(id as usize)
    }

    /// Every chunk id of every regular file, in blob order (hardlinked
    /// files once).
    pub fn blob_order(&self) -> &[u32] {
        &self.order
    }

    /// All chunks in blob order.
    pub fn all_chunks(&self) -> impl Iterator<Item = &Chunk> + '_ {
        self.order
            .iter()
            .filter_map(move |&id| self.chunks.get(id as usize))
    }

    fn extra(&self, node: &Node) -> Option<&Extra> {
        if node.extra == NO_EXTRA {
            None
        } else {
            self.extras.get(node.extra as usize)
        }
    }

    /// A symlink's target.
    pub fn link_target(&self, node: &Node) -> Option<&OsStr> {
        self.extra(node)?.link_target.as_deref()
    }

    /// A node's extended attributes (including `trusted.overlay.opaque`).
    pub fn xattrs(&self, node: &Node) -> Option<&BTreeMap<OsString, Vec<u8>>> {
        self.extra(node).map(|e| &e.xattrs)
    }

    /// One extended attribute.
    pub fn xattr(&self, node: &Node, name: &OsStr) -> Option<&[u8]> {
        self.xattrs(node)?.get(name).map(Vec::as_slice)
    }

    /// The inode of `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Option<u64> {
        let node = self.node(parent)?;
        let ents = self.dirents.get(node.dirents.range())?;
        let want = name.as_bytes();
        ents.binary_search_by(|d| self.names.get(d.name.range()).unwrap_or_default().cmp(want))
            .ok()
            .and_then(|i| ents.get(i))
            .map(|d| u64::from(d.ino))
    }

    /// One path of inode `ino` from the layer root ("usr/lib/x"; the root
    /// itself is ""). A hardlinked file has several; this is one of them.
    /// Walks up the parents, scanning each directory for the name (meant
    /// for reports, not for the read path).
    pub fn path_of(&self, ino: u64) -> Option<std::path::PathBuf> {
        let mut names: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        // A tree of len() nodes is at most len() deep.
        for _ in 0..=self.len() {
            let node = self.node(cur)?;
            if node.parent == cur || cur == Self::ROOT {
                names.reverse();
                return Some(names.iter().collect());
            }
            let (name, _) = self.children(node.parent).find(|(_, i)| *i == cur)?;
            names.push(name);
            cur = node.parent;
        }
        None
    }

    /// Entries of directory `dir`, sorted by name (byte order); empty for
    /// anything that is not a directory.
    pub fn children(&self, dir: u64) -> Children<'_> {
        let ents = self
            .node(dir)
            .and_then(|n| self.dirents.get(n.dirents.range()))
            .unwrap_or_default();
        Children {
            names: &self.names,
            it: ents.iter(),
        }
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

    /// Bytes of heap this index holds (vectors at capacity, side tables
    /// estimated); what a layer costs the daemon while mounted.
    pub fn heap_bytes(&self) -> u64 {
        let extras: usize = self
            .extras
            .iter()
            .map(|e| {
                std::mem::size_of::<Extra>()
                    + e.link_target.as_ref().map_or(0, |t| t.len())
                    + e.xattrs
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 64)
                        .sum::<usize>()
            })
            .sum();
        (self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.names.capacity()
            + self.dirents.capacity() * std::mem::size_of::<Dirent>()
            + self.chunks.capacity() * std::mem::size_of::<Chunk>()
            + self.order.capacity() * 4
            + extras) as u64
    }
}
