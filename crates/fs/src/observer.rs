//! What the filesystem reports about itself. The daemon turns it into
//! Prometheus metrics; this crate stays free of any metrics library, and with
//! metrics off the [`NoObserver`] costs nothing on the read path.

/// Events of the FUSE edge and the read path. Implementations must be cheap
/// and must not block: they run inside read(2).
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// One FUSE operation (`lookup`, `getattr`, `read`, `readdir`, ...).
    fn fuse_op(&self, _op: &'static str, _ok: bool) {}
    /// One FUSE read: time spent, bytes returned.
    fn fuse_read(&self, _seconds: f64, _bytes: u64, _ok: bool) {}
    /// One range request to the layer's source.
    fn fetch(&self, _source: &'static str, _seconds: f64, _bytes: u64, _ok: bool) {}
    /// A chunk looked up in the cache on the read path.
    fn cache_lookup(&self, _hit: bool) {}
    /// A chunk whose bytes did not match its digest.
    fn verify_failure(&self) {}
    /// A read waiting on the network answered EINTR: its reader got a
    /// signal (FUSE_INTERRUPT).
    fn read_interrupted(&self) {}
}

/// Reports nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}
