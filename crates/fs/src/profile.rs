//! Prefetch profiles learned on the node.
//!
//! The first run of an image teaches the order in which its workload reads
//! each layer: [`Learner`] notes every chunk a read touches, in the order of
//! first touch, from the first read until a window has passed (the
//! workload's start-up). The daemon stores that order per layer digest
//! (`hologram-snapshotter`'s `profiles` module); a later mount of the same
//! layer — after the cache was emptied, or on another node given the file —
//! prefetches the chunks in that order ([`crate::layer::Layer::with_profile`]).
//!
//! A profile is only an order. It names files (paths from the layer root)
//! and offsets in them; names the index does not know, or offsets past a
//! file's end, are skipped. Every byte it makes us fetch is verified
//! against the TOC like any other, so a wrong or hostile profile can waste
//! bandwidth (at most the layer's size, which background fetch would spend
//! anyway) but never change what a container reads.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hologram_estargz::{Chunk, Index, NodeKind};

/// The files a workload read, in first-read order, each with the offsets
/// (within the file) of the chunks it read, in first-read order.
pub type ProfileFiles = Vec<(PathBuf, Vec<u64>)>;

/// Records a layer's first reads (see the module documentation).
#[derive(Debug)]
pub struct Learner {
    window: Duration,
    max_chunks: usize,
    /// False once the window has passed or the profile was taken: the read
    /// path then skips the lock.
    open: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    first: Option<Instant>,
    /// (inode, chunk file offsets) in first-read order.
    files: Vec<(u64, Vec<u64>)>,
    slot: HashMap<u64, usize>,
    seen: HashSet<(u64, u64)>,
    taken: bool,
}

impl Learner {
    /// Records for `window` after the first read, at most `max_chunks`
    /// chunks.
    pub fn new(window: Duration, max_chunks: usize) -> Learner {
        Learner {
            window,
            max_chunks,
            open: AtomicBool::new(true),
            state: Mutex::new(State::default()),
        }
    }

    /// Notes that a read of file `ino` touched `chunks`.
    pub fn note(&self, ino: u64, chunks: &[&Chunk]) {
        if !self.open.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let first = *st.first.get_or_insert_with(Instant::now);
        if first.elapsed() > self.window || st.seen.len() >= self.max_chunks {
            self.open.store(false, Ordering::Relaxed);
            return;
        }
        for c in chunks {
            if !st.seen.insert(c.key()) {
                continue;
            }
            let slot = match st.slot.get(&ino) {
                Some(&s) => s,
                None => {
                    let s = st.files.len();
                    st.files.push((ino, Vec::new()));
                    st.slot.insert(ino, s);
                    s
                }
            };
            if let Some((_, offsets)) = st.files.get_mut(slot) {
                offsets.push(c.file_offset);
            }
        }
    }

    /// Whether the window has passed since the first read (the profile is
    /// complete).
    pub fn window_passed(&self) -> bool {
        self.state
            .lock()
            .ok()
            .and_then(|st| st.first)
            .is_some_and(|f| f.elapsed() > self.window)
    }

    /// The profile, once: `None` when nothing was read, or when it was
    /// taken before. Recording stops.
    pub fn take(&self, index: &Index) -> Option<ProfileFiles> {
        self.open.store(false, Ordering::Relaxed);
        let mut st = self.state.lock().ok()?;
        if st.taken || st.files.is_empty() {
            return None;
        }
        st.taken = true;
        let files = std::mem::take(&mut st.files);
        Some(
            files
                .into_iter()
                .filter_map(|(ino, offsets)| Some((index.path_of(ino)?, offsets)))
                .collect(),
        )
    }
}

/// The inode of regular file `path` (from the layer root), if the index
/// has one there. Only plain names are walked: no `..`, no `.`, no
/// symlinks followed.
pub fn resolve(index: &Index, path: &std::path::Path) -> Option<u64> {
    use std::path::Component;
    let mut ino = Index::ROOT;
    for c in path.components() {
        match c {
            Component::Normal(name) => ino = index.lookup(ino, name)?,
            _ => return None,
        }
    }
    let node = index.node(ino)?;
    (node.kind == NodeKind::Reg).then_some(ino)
}
