//! Glue between the daemon's parts and its Prometheus registry
//! (`hologram-telemetry`): the filesystem's [`Observer`] and the gauges
//! refreshed at scrape time.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hologram_fs::observer::Observer;
use hologram_telemetry::{GaugeSnapshot, Metrics, RESULT_ERROR, RESULT_OK};

use crate::remote::RemoteLayers;

fn result(ok: bool) -> &'static str {
    if ok {
        RESULT_OK
    } else {
        RESULT_ERROR
    }
}

/// Forwards filesystem events to the metrics registry.
#[derive(Debug)]
pub struct FsMetrics(pub Arc<Metrics>);

impl Observer for FsMetrics {
    fn fuse_op(&self, op: &'static str, ok: bool) {
        self.0.fuse_op(op, result(ok));
    }
    fn fuse_read(&self, seconds: f64, bytes: u64, ok: bool) {
        self.0.fuse_read(seconds, bytes, result(ok));
    }
    fn fetch(&self, source: &'static str, seconds: f64, bytes: u64, ok: bool) {
        self.0.remote_fetch(source, seconds, bytes, result(ok));
    }
    fn cache_lookup(&self, hit: bool) {
        self.0.cache_lookup(hit);
    }
    fn verify_failure(&self) {
        self.0.chunk_verification_failure();
    }
}

/// Refreshes the gauges from the remote layers at every scrape.
pub fn install_collector(metrics: &Metrics, remote: Arc<RemoteLayers>) {
    metrics.set_collector(Box::new(move |g: &mut GaugeSnapshot| {
        let layers = remote.layers();
        g.mounted_layers = layers.len() as u64;
        g.cache_bytes = remote.cache().total();
        g.cache_limit_bytes = remote.cache().limit();
        for l in &layers {
            g.prefetch_bytes += l.stats.prefetched_bytes.load(Ordering::Relaxed);
            g.background_fetch_bytes += l.stats.background_bytes.load(Ordering::Relaxed);
            g.bytes_served += l.stats.bytes_served.load(Ordering::Relaxed);
            g.background_pending_chunks += l.pending_chunks();
        }
    }));
}
