//! The FUSE edge: a read-only filesystem over one [`Layer`]. Thin by design:
//! metadata comes from the layer's index, file data from `Layer::read`.
//!
//! **read(2) on a lazily pulled file lands in [`LayerFs::read`].**
//!
//! The tree is immutable, so the kernel may cache everything: entries and
//! attributes get long TTLs, and opens are zero-message (the first OPEN and
//! OPENDIR are answered ENOSYS: the kernel then opens files and directories
//! itself, keeping their pages and listings cached across opens), so a warm
//! open or read never reaches us. With passthrough (handover off) files are
//! opened through us instead, to hand the kernel their backing file.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request, RequestId,
    SessionACL,
};
use hologram_estargz::{Index, Node, NodeKind};

use crate::layer::Layer;

/// The layer never changes: let the kernel cache names and attributes.
const TTL: Duration = Duration::from_secs(3600);
const BLOCK: u32 = 4096;

/// How the open handles of one inode read: through us, or passthrough to a
/// cache file. The kernel refuses to mix the two on one inode, and wants one
/// backing id per inode while it has passthrough handles.
#[derive(Debug)]
enum OpenState {
    Normal(u32),
    Passthrough(fuser::BackingId, u32),
}

/// The filesystem handed to fuser.
#[derive(Debug)]
pub struct LayerFs {
    layer: Arc<Layer>,
    /// The kernel accepted FUSE passthrough (Linux ≥ 6.9, CAP_SYS_ADMIN).
    passthrough: Arc<AtomicBool>,
    /// Whether any file of the layer has an extended attribute.
    has_xattrs: bool,
    opens: Mutex<HashMap<u64, OpenState>>,
    /// Reads waiting on the network, by FUSE request id.
    waiting: WaitingReads,
}

/// The reply of a read waiting on the network: whoever takes it first
/// answers — the read when its bytes arrive, or an INTERRUPT with EINTR.
type ReplySlot = Arc<Mutex<Option<ReplyData>>>;

/// The reads of one mount that wait on the network, by FUSE request id, so
/// that `FUSE_INTERRUPT` (the reader got a signal) can answer one at once.
#[derive(Debug, Default, Clone)]
pub(crate) struct WaitingReads(Arc<Mutex<HashMap<u64, ReplySlot>>>);

impl WaitingReads {
    /// Registers request `unique`'s reply; the slot it is kept in.
    fn register(&self, unique: u64, reply: ReplyData) -> ReplySlot {
        let slot = Arc::new(Mutex::new(Some(reply)));
        if let Ok(mut w) = self.0.lock() {
            w.insert(unique, Arc::clone(&slot));
        }
        slot
    }

    /// The reply of request `unique` when the read is done (`None`: an
    /// interrupt answered it already).
    fn finish(&self, unique: u64, slot: &ReplySlot) -> Option<ReplyData> {
        if let Ok(mut w) = self.0.lock() {
            w.remove(&unique);
        }
        slot.lock().ok().and_then(|mut r| r.take())
    }

    /// The reply of request `unique`, taken away from its read (`None`:
    /// not a waiting read, or answered already).
    fn interrupt(&self, unique: u64) -> Option<ReplyData> {
        let slot = self.0.lock().ok().and_then(|mut w| w.remove(&unique))?;
        let taken = slot.lock().ok().and_then(|mut r| r.take());
        taken
    }
}

fn kind_of(k: NodeKind) -> FileType {
    match k {
        NodeKind::Dir => FileType::Directory,
        NodeKind::Reg => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Char => FileType::CharDevice,
        NodeKind::Block => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
    }
}

fn time_of(secs: i64, nsecs: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nsecs)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::new(secs.unsigned_abs(), 0))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// Linux's `makedev`.
fn makedev(major: u32, minor: u32) -> u32 {
    ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & !0xff) << 12)
}

/// The stat of `node`, as the kernel should see it.
pub fn attr_of(node: &Node) -> FileAttr {
    let t = time_of(node.mtime_secs, node.mtime_nsecs);
    let size = match node.kind {
        // The index keeps a symlink's target length as its size.
        NodeKind::Symlink => node.size,
        NodeKind::Dir => u64::from(BLOCK),
        _ => node.size,
    };
    FileAttr {
        ino: INodeNo(node.ino),
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: kind_of(node.kind),
        perm: (node.mode & 0o7777) as u16,
        nlink: node.nlink,
        uid: node.uid,
        gid: node.gid,
        rdev: makedev(node.rdev_major, node.rdev_minor),
        blksize: BLOCK,
        flags: 0,
    }
}

impl LayerFs {
    pub fn new(layer: Arc<Layer>) -> Self {
        let index = layer.index();
        let has_xattrs = (1..=index.len() as u64)
            .filter_map(|i| index.node(i))
            .any(|n| index.xattrs(n).is_some_and(|x| !x.is_empty()));
        LayerFs {
            layer,
            has_xattrs,
            passthrough: Arc::new(AtomicBool::new(false)),
            opens: Mutex::new(HashMap::new()),
            waiting: WaitingReads::default(),
        }
    }

    /// The cache file holding all of regular file `node`, when its only
    /// chunk is cached: such a file can be served by the kernel directly.
    fn complete_file(&self, node: &Node) -> Option<std::fs::File> {
        let [c] = self.layer.index().chunks(node) else {
            return None;
        };
        if c.file_offset != 0 || c.size != node.size {
            return None;
        }
        let path = self.layer.cache().path_of(&c.digest)?;
        std::fs::File::open(path).ok()
    }

    /// Opens `node` for reading, with passthrough when possible.
    fn open_file(&self, node: &Node, reply: ReplyOpen) {
        let Ok(mut opens) = self.opens.lock() else {
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
        };
        match opens.get_mut(&node.ino) {
            Some(OpenState::Passthrough(id, n)) => {
                *n += 1;
                self.obs().fuse_op("open_passthrough", true);
                return reply.opened_passthrough(FileHandle(1), FopenFlags::empty(), id);
            }
            Some(OpenState::Normal(n)) => {
                *n += 1;
                return reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
            }
            None => {}
        }
        if self.passthrough.load(Ordering::Relaxed) {
            if let Some(file) = self.complete_file(node) {
                match reply.open_backing(&file) {
                    Ok(id) => {
                        reply.opened_passthrough(FileHandle(1), FopenFlags::empty(), &id);
                        opens.insert(node.ino, OpenState::Passthrough(id, 1));
                        self.obs().fuse_op("open_passthrough", true);
                        return;
                    }
                    Err(e) => {
                        // e.g. the kernel lacks passthrough after all: stop trying.
                        tracing::info!(error = %e, "FUSE passthrough unavailable; serving reads in userspace");
                        self.passthrough.store(false, Ordering::Relaxed);
                    }
                }
            }
        }
        opens.insert(node.ino, OpenState::Normal(1));
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn obs(&self) -> &dyn crate::observer::Observer {
        self.layer.observer().as_ref()
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.layer.index().node(ino.0).ok_or(Errno::ENOENT)
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(u32::try_from(data.len()).unwrap_or(u32::MAX));
    } else if data.len() <= size as usize {
        reply.data(data);
    } else {
        reply.error(Errno::ERANGE);
    }
}

impl Filesystem for LayerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_readahead(1024 * 1024);
        // Symlink targets never change: let the kernel cache them.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_CACHE_SYMLINKS);
        // Passthrough for files complete in the cache. Stack depth 1: the
        // backing files are on a plain filesystem, and overlayfs stacks on us.
        let ok = self.layer.passthrough_allowed()
            && config
                .add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH)
                .is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.passthrough.store(ok, Ordering::Relaxed);
        tracing::debug!(passthrough = ok, "FUSE session initialised");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let index = self.layer.index();
        let found = index.lookup(parent.0, name).and_then(|ino| index.node(ino));
        self.obs().fuse_op("lookup", found.is_some());
        match found {
            Some(node) => reply.entry(&TTL, &attr_of(node), Generation(0)),
            // A negative entry (node id 0) with a TTL: the kernel caches
            // the absence (the tree never changes), so the next lookup of
            // this name — overlayfs asks every lower layer — stays local.
            None => match index.node(Index::ROOT) {
                Some(root) => {
                    let mut none = attr_of(root);
                    none.ino = INodeNo(0);
                    reply.entry(&TTL, &none, Generation(0))
                }
                None => reply.error(Errno::ENOENT),
            },
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let node = self.node(ino);
        self.obs().fuse_op("getattr", node.is_ok());
        match node {
            Ok(node) => reply.attr(&TTL, &attr_of(node)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let node = self.node(ino);
        self.obs().fuse_op("readlink", node.is_ok());
        let index = self.layer.index();
        match node {
            Ok(n) if n.kind == NodeKind::Symlink => match index.link_target(n) {
                Some(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t)),
                None => reply.error(Errno::EINVAL),
            },
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let node = self.node(ino);
        self.obs().fuse_op("open", node.is_ok());
        match node {
            Ok(n) if n.kind == NodeKind::Dir => reply.error(Errno::EISDIR),
            Ok(_) if flags.acc_mode() != OpenAccMode::O_RDONLY => reply.error(Errno::EROFS),
            Ok(n) if !self.passthrough.load(Ordering::Relaxed) => {
                // Zero-message opens: ENOSYS tells the kernel this
                // filesystem needs no OPEN (the open succeeds), and from now
                // on it opens files of this mount without asking us, with
                // FOPEN_KEEP_CACHE, and sends no RELEASE. A warm open then
                // never reaches the daemon. (The mount is read-only: the
                // kernel refuses writes itself.)
                self.layer.record_open(n.ino);
                reply.error(Errno::ENOSYS)
            }
            Ok(n) => {
                self.layer.record_open(n.ino);
                self.open_file(n, reply)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let t = std::time::Instant::now();
        // With zero-message opens a file's first read is its first sign of
        // use (the profile recorder's access log).
        self.layer.record_open(ino.0);
        // Bytes at hand are answered here; a read that must wait on the
        // network is answered from a blocking thread of the runtime, so a
        // slow registry never holds this FUSE worker (lookups, cached reads
        // and other files keep being served).
        if let Some(res) = self.layer.read_if_cached(ino.0, offset, size) {
            return answer_read(&self.layer, ino.0, offset, size, t, res, reply);
        }
        // Registered until answered: a signal to the reader (INTERRUPT)
        // answers EINTR at once, without waiting for the network.
        let unique = req.unique().0;
        let slot = self.waiting.register(unique, reply);
        let waiting = self.waiting.clone();
        let layer = Arc::clone(&self.layer);
        layer.fetch_ahead(ino.0, offset, size);
        let rt = layer.runtime().clone();
        rt.spawn_blocking(move || {
            // An interrupted read still fetches: the bytes fill the cache
            // for the reader's next attempt.
            let res = layer.read(ino.0, offset, size);
            match waiting.finish(unique, &slot) {
                Some(reply) => answer_read(&layer, ino.0, offset, size, t, res, reply),
                None => {
                    tracing::debug!(layer = %layer.digest(), ino = ino.0, offset, ok = res.is_ok(),
                    "read done after its reader was interrupted; answer dropped")
                }
            }
        });
    }

    fn interrupt(&self, _req: &Request, unique: RequestId, reply: ReplyEmpty) {
        match self.waiting.interrupt(unique.0) {
            Some(read) => {
                // First the interrupt (the kernel ignores a 0 answer), then
                // the read: its reader returns EINTR now.
                reply.ok();
                read.error(Errno::EINTR);
                self.obs().read_interrupted();
                tracing::debug!(layer = %self.layer.digest(), unique = unique.0, "read waiting on the network interrupted: EINTR");
            }
            // Not a read waiting here: it may not have reached us yet (the
            // kernel sends the interrupt again later) or be answered
            // already (the kernel drops this answer). fuse.rst: EAGAIN.
            None => reply.error(Errno::EAGAIN),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written: ENOSYS tells the kernel not to send
        // FLUSH again on this mount.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Ok(mut opens) = self.opens.lock() {
            let last = match opens.get_mut(&ino.0) {
                Some(OpenState::Normal(n)) | Some(OpenState::Passthrough(_, n)) => {
                    *n = n.saturating_sub(1);
                    *n == 0
                }
                None => false,
            };
            if last {
                opens.remove(&ino.0); // drops (closes) a backing id
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            // Zero-message opendir (as for files): the kernel opens
            // directories of this mount itself from now on, with
            // FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR (listings cached too).
            Ok(n) if n.kind == NodeKind::Dir => reply.error(Errno::ENOSYS),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let index = self.layer.index();
        self.obs().fuse_op("readdir", true);
        let node = match self.node(ino) {
            Ok(n) if n.kind == NodeKind::Dir => n,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        // Offsets: 1 = after ".", 2 = after "..", 2 + i + 1 = after child i.
        let mut next = offset;
        if next == 0 {
            if reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            next = 1;
        }
        if next == 1 {
            if reply.add(INodeNo(node.parent), 2, FileType::Directory, "..") {
                return reply.ok();
            }
            next = 2;
        }
        let start = usize::try_from(next - 2).unwrap_or(usize::MAX);
        let mut children = index.children(ino.0);
        if start > 0 && children.nth(start - 1).is_none() {
            return reply.ok();
        }
        for (i, (name, child)) in children.enumerate() {
            let kind = index
                .node(child)
                .map_or(FileType::RegularFile, |n| kind_of(n.kind));
            if reply.add(INodeNo(child), (start + i + 3) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let index = self.layer.index();
        let bytes: u64 = (1..=index.len() as u64)
            .filter_map(|i| index.node(i))
            .map(|n| n.size)
            .sum();
        let files = index.len() as u64;
        self.obs().fuse_op("statfs", true);
        reply.statfs(
            bytes.div_ceil(u64::from(BLOCK)),
            0,
            0,
            files,
            0,
            BLOCK,
            255,
            BLOCK,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !self.has_xattrs {
            // No file of this layer has an extended attribute: ENOSYS
            // makes the kernel stop asking (callers then get EOPNOTSUPP
            // instead of ENODATA: "none here" either way) — otherwise
            // every exec and overlayfs lookup costs a round trip.
            self.obs().fuse_op("getxattr", true);
            return reply.error(Errno::ENOSYS);
        }
        let node = self.node(ino);
        self.obs().fuse_op("getxattr", node.is_ok());
        match node {
            Ok(n) => match self.layer.index().xattr(n, name) {
                Some(v) => xattr_reply(reply, size, v),
                None => reply.error(Errno::NO_XATTR),
            },
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if !self.has_xattrs {
            // An empty list, not ENOSYS: listxattr(2) on a file without
            // attributes returns 0 on every disk filesystem, and overlayfs
            // passes a lower layer's EOPNOTSUPP up to the container (tools
            // such as getfattr, rsync -X and cp -a would then report
            // errors). listxattr is rare; getxattr is the hot one.
            self.obs().fuse_op("listxattr", true);
            return xattr_reply(reply, size, &[]);
        }
        let node = self.node(ino);
        self.obs().fuse_op("listxattr", node.is_ok());
        match node {
            Ok(n) => {
                let mut list = Vec::new();
                for k in self
                    .layer
                    .index()
                    .xattrs(n)
                    .into_iter()
                    .flat_map(|x| x.keys())
                {
                    list.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(k.as_os_str()));
                    list.push(0);
                }
                xattr_reply(reply, size, &list);
            }
            Err(e) => reply.error(e),
        }
    }
}

/// Replies to a FUSE read and accounts for it.
fn answer_read(
    layer: &Layer,
    ino: u64,
    offset: u64,
    size: u32,
    started: std::time::Instant,
    res: Result<Vec<u8>, crate::layer::ReadError>,
    reply: ReplyData,
) {
    let obs = layer.observer();
    obs.fuse_op("read", res.is_ok());
    obs.fuse_read(
        started.elapsed().as_secs_f64(),
        res.as_ref().map_or(0, |d| d.len() as u64),
        res.is_ok(),
    );
    match res {
        Ok(data) => reply.data(&data),
        Err(e) => {
            tracing::warn!(layer = %layer.digest(), ino, offset, size, error = %e, "read failed: EIO");
            reply.error(Errno::EIO);
        }
    }
}

/// A mounted layer; dropping it unmounts (lazily) and stops its warm-up.
pub struct MountedLayer {
    layer: Arc<Layer>,
    session: Option<fuser::BackgroundSession>,
    /// A duplicate of the connection's `/dev/fuse` fd, for a holder that
    /// keeps the connection alive while the daemon restarts.
    device: Option<OwnedFd>,
    /// What the kernel accepted at FUSE_INIT (a process taking the
    /// connection over must know it: the kernel asks only once).
    passthrough: Arc<AtomicBool>,
    /// Set when this process took the connection over from an earlier one:
    /// fuser did not mount it, so dropping the session does not unmount it.
    adopted_at: Option<PathBuf>,
}

impl std::fmt::Debug for MountedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountedLayer")
            .field("layer", &self.layer)
            .field("adopted_at", &self.adopted_at)
            .finish_non_exhaustive()
    }
}

impl MountedLayer {
    pub fn layer(&self) -> &Arc<Layer> {
        &self.layer
    }

    /// The connection's `/dev/fuse` fd (borrowed: duplicate it to keep it).
    pub fn device(&self) -> Option<BorrowedFd<'_>> {
        self.device.as_ref().map(AsFd::as_fd)
    }

    /// Whether the kernel accepted FUSE passthrough on this connection.
    pub fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Stops serving without unmounting, for a process about to exit whose
    /// successor takes the connection over (the kernel keeps the mount and
    /// queues requests while a holder keeps a duplicate of the fd). The
    /// worker threads are left to end with the process.
    pub fn leave_mounted(mut self) {
        self.layer.close();
        if let Some(s) = self.session.take() {
            // Dropping the session would unmount; the process is exiting
            // anyway, and its threads end with it.
            std::mem::forget(s);
        }
        self.adopted_at = None;
    }
}

impl Drop for MountedLayer {
    fn drop(&mut self) {
        self.layer.close();
        // Dropping the session detaches the mount (MNT_DETACH) without waiting
        // for its thread: files a process still holds open keep the
        // connection alive until they are closed, and shutdown must not hang
        // on them.
        drop(self.session.take());
        if let Some(path) = self.adopted_at.take() {
            if let Err(e) = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(mountpoint = %path.display(), error = %e, "cannot detach a mount taken over at start");
            }
        }
    }
}

/// fuser's configuration for a layer's session.
fn session_config(threads: usize, fsname: String) -> Config {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(fsname),
        MountOption::Subtype("hologram".into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
    ];
    // Containers run as any user: let every uid in, the kernel checks modes.
    cfg.acl = SessionACL::All;
    cfg.n_threads = Some(threads.max(1));
    // One device fd shared by the workers (no clone_fd): the kernel then
    // finds the request an INTERRUPT refers to whichever worker answers it
    // (with cloned fds an answer on another worker's fd failed with
    // ENOENT). `LayerFs::interrupt` answers a read waiting on the network
    // with EINTR, anything else with EAGAIN.
    cfg.clone_fd = false;
    cfg
}

fn start_warm(layer: &Arc<Layer>) -> io::Result<()> {
    let warm = Arc::clone(layer);
    std::thread::Builder::new()
        .name("hologram-warm".into())
        .spawn(move || warm.warm())?;
    Ok(())
}

/// Mounts `layer` read-only at `mountpoint` and starts its prefetch and
/// background fetch on a thread of their own.
pub fn mount(layer: Arc<Layer>, mountpoint: &Path, threads: usize) -> io::Result<MountedLayer> {
    let cfg = session_config(threads, format!("hologram:{}", layer.digest()));
    let fs = LayerFs::new(Arc::clone(&layer));
    let passthrough = Arc::clone(&fs.passthrough);
    let session = fuser::Session::new(fs, mountpoint, &cfg)?;
    let device = session.as_fd().try_clone_to_owned()?;
    let session = session.spawn()?;
    start_warm(&layer)?;
    Ok(MountedLayer {
        layer,
        session: Some(session),
        device: Some(device),
        passthrough,
        adopted_at: None,
    })
}

/// Serves `layer` on a live FUSE connection an earlier process mounted at
/// `mountpoint` and initialised (`passthrough`: what the kernel accepted
/// then), and asks the kernel to send again the requests that process read
/// and never answered.
pub fn adopt(
    layer: Arc<Layer>,
    device: OwnedFd,
    mountpoint: &Path,
    threads: usize,
    passthrough: bool,
) -> io::Result<MountedLayer> {
    let cfg = session_config(threads, format!("hologram:{}", layer.digest()));
    let fs = LayerFs::new(Arc::clone(&layer));
    fs.passthrough.store(passthrough, Ordering::Relaxed);
    let flag = Arc::clone(&fs.passthrough);
    let keep = device.try_clone()?;
    let session = fuser::Session::from_fd_initialized(fs, device, SessionACL::All, cfg);
    let session = session.spawn()?;
    if let Err(e) = session.notifier().resend() {
        // Linux < 6.9: a request the dead process had read stays unanswered
        // (its reader waits until the connection is aborted).
        tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "FUSE_NOTIFY_RESEND refused; requests in flight at the restart are lost");
    }
    start_warm(&layer)?;
    Ok(MountedLayer {
        layer,
        session: Some(session),
        device: Some(keep),
        passthrough: flag,
        adopted_at: Some(mountpoint.to_path_buf()),
    })
}
