//! Glue between the daemon's parts and its Prometheus registry
//! (`hologram-telemetry`): the filesystem's [`Observer`] and the gauges
//! refreshed at scrape time.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hologram_fs::observer::Observer;
use hologram_telemetry::{FuseHandles, GaugeSnapshot, Metrics};

use crate::remote::RemoteLayers;

/// The FUSE ops whose counters are resolved up front.
const FUSE_OPS: &[&str] = &[
    "lookup",
    "getattr",
    "open",
    "open_passthrough",
    "read",
    "readdir",
    "readlink",
    "getxattr",
    "listxattr",
    "statfs",
];

/// Forwards filesystem events to the metrics registry through pre-resolved
/// handles (no label lookup on the read path).
#[derive(Debug)]
pub struct FsMetrics(FuseHandles);

impl FsMetrics {
    pub fn new(m: &Metrics) -> Self {
        FsMetrics(m.fuse_handles(FUSE_OPS))
    }
}

impl Observer for FsMetrics {
    fn fuse_op(&self, op: &'static str, ok: bool) {
        self.0.op(op, ok);
    }
    fn fuse_read(&self, seconds: f64, bytes: u64, ok: bool) {
        self.0.read(seconds, bytes, ok);
    }
    fn fetch(&self, source: &'static str, seconds: f64, bytes: u64, ok: bool) {
        self.0.fetch(source, seconds, bytes, ok);
    }
    fn cache_lookup(&self, hit: bool) {
        self.0.cache(hit);
    }
    fn verify_failure(&self) {
        self.0.verification_failure();
    }
    fn read_interrupted(&self) {
        self.0.read_interrupted();
    }
}

/// Refreshes the gauges from the remote layers at every scrape.
pub fn install_collector(metrics: &Metrics, remote: Arc<RemoteLayers>) {
    metrics.set_collector(Box::new(move |g: &mut GaugeSnapshot| {
        let layers = remote.layers();
        g.mounted_layers = layers.len() as u64;
        g.restoring_layers = remote.restoring().len() as u64;
        g.cache_bytes = remote.cache().total();
        g.cache_limit_bytes = remote.cache().limit();
        for l in &layers {
            g.prefetch_bytes += l.stats.prefetched_bytes.load(Ordering::Relaxed);
            g.background_fetch_bytes += l.stats.background_bytes.load(Ordering::Relaxed);
            g.bytes_served += l.stats.bytes_served.load(Ordering::Relaxed);
            g.background_pending_chunks += l.pending_chunks();
            g.cache_write_failures += l.stats.cache_write_failures.load(Ordering::Relaxed);
        }
    }));
}
