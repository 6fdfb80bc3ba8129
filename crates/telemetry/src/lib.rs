//! Prometheus metrics for hologram-snapshotter, and the small HTTP endpoint
//! that serves them.
//!
//! * [`Metrics`] owns a `prometheus_client` registry in which every metric
//!   family is declared up front, so that a scrape right after start-up
//!   already shows each family (`# HELP` / `# TYPE`) and the label sets that
//!   are known in advance with the value 0.
//! * Gauges that describe the daemon's state (mounted layers, cache use, ...)
//!   are read at scrape time through a callback ([`Metrics::set_collector`]).
//! * [`serve`] (or [`bind`] + [`serve_on`]) answers `/metrics` in the
//!   Prometheus text format 0.0.4 and `/healthz` from a health callback,
//!   and the node's web page (`/`, its script and style) with the JSON API
//!   behind it ([`api::NodeState`] at [`api::NODE_PATH`]), which the daemon
//!   fills in at request time through [`Metrics::set_node_collector`].
//!
//! Labels are kept to small fixed sets: label values are checked by
//! [`label_value`] and anything unexpected (too long, odd characters — a
//! digest, a path) is reported as `"other"`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub mod api;
mod process;
pub mod recent;
mod server;
mod ui;

pub use process::unix_now;
pub use recent::{record_warning, sanitize};
pub use server::{
    bind, parse_listen, serve, serve_on, HealthCheck, TelemetryError, DEFAULT_METRICS_ADDRESS,
};

/// `Content-Type` of what [`Metrics::encode`] returns (Prometheus text
/// format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `result` label of a successful operation.
pub const RESULT_OK: &str = "ok";
/// The `result` label of a failed operation.
pub const RESULT_ERROR: &str = "error";
/// What a label value that is not acceptable is replaced with.
pub const OTHER: &str = "other";

/// The snapshotter gRPC operations (containerd's Snapshots service).
pub const SNAPSHOTTER_OPS: &[&str] = &[
    "prepare", "view", "mounts", "commit", "remove", "stat", "update", "list", "usage", "cleanup",
];
/// The FUSE operations whose series exist from start-up.
pub const FUSE_OPS: &[&str] = &[
    "lookup",
    "getattr",
    "open",
    "read",
    "readdir",
    "readlink",
    "getxattr",
    "listxattr",
    "statfs",
];
/// Where remote bytes come from (`source` label).
pub const FETCH_SOURCES: &[&str] = &["registry", "ctp96", "cache"];
/// The reasons a layer is not mounted remotely (`reason` label of
/// `hologram_remote_fallbacks_total`); any other reason is counted as
/// `"other"`.
pub const FALLBACK_REASONS: &[&str] = &[
    "no_labels",
    "not_estargz",
    "fetch_error",
    "disabled",
    "mount_error",
    "label_mismatch",
    "chain_conflict",
    "over_budget",
    "other",
];
/// Outcomes of the whole-layer check (`result` label of
/// `hologram_layer_checks_total`).
pub const LAYER_CHECK_RESULTS: &[&str] = &["verified", "bad"];

/// What happened to prefetch profiles learned on the node
/// (`hologram_prefetch_profiles_total`): a layer learned one and it was
/// stored, a mount prefetched by one, a profile file was refused.
pub const PROFILE_EVENTS: &[&str] = &["learned", "applied", "refused"];

/// See [`Metrics::fuse_handles`]. Cheap to clone (every handle is an `Arc`).
#[derive(Clone, Debug)]
pub struct FuseHandles {
    ops: std::collections::HashMap<&'static str, (Counter, Counter)>,
    read_ok: Histogram,
    read_err: Histogram,
    read_bytes: Counter,
    cache_hit: Counter,
    cache_miss: Counter,
    registry: (Histogram, Counter, Counter, Counter),
    ctp96: (Histogram, Counter, Counter, Counter),
    verification_failures: Counter,
    read_interrupted: Counter,
}

impl FuseHandles {
    /// A read waiting on the network answered EINTR (its reader got a
    /// signal): `hologram_fuse_operations{op="read",result="interrupted"}`.
    pub fn read_interrupted(&self) {
        self.read_interrupted.inc();
    }

    /// One FUSE op; ops not resolved up front are ignored.
    pub fn op(&self, op: &str, ok: bool) {
        if let Some((good, bad)) = self.ops.get(op) {
            if ok {
                good.inc()
            } else {
                bad.inc()
            };
        }
    }

    /// One FUSE read.
    pub fn read(&self, seconds: f64, bytes: u64, ok: bool) {
        if ok { &self.read_ok } else { &self.read_err }.observe(seconds);
        self.read_bytes.inc_by(bytes);
    }

    /// One cache lookup on the read path.
    pub fn cache(&self, hit: bool) {
        if hit {
            &self.cache_hit
        } else {
            &self.cache_miss
        }
        .inc();
    }

    /// One remote fetch; `source` is "registry" or "ctp96".
    pub fn fetch(&self, source: &str, seconds: f64, bytes: u64, ok: bool) {
        let (d, b, good, bad) = if source == "ctp96" {
            &self.ctp96
        } else {
            &self.registry
        };
        d.observe(seconds);
        b.inc_by(bytes);
        if ok {
            good.inc()
        } else {
            bad.inc()
        };
    }

    /// A chunk that failed verification.
    pub fn verification_failure(&self) {
        self.verification_failures.inc();
    }
}

/// Longest label value accepted as is.
const MAX_LABEL_LEN: usize = 40;

/// `v` when it is a short, plain label value (ASCII letters, digits, `_`,
/// `-`, `.`, at most 40 bytes, not empty), else `"other"`. This keeps a
/// digest, a path or an error message out of the label space.
pub fn label_value(v: &str) -> &str {
    let plain = !v.is_empty()
        && v.len() <= MAX_LABEL_LEN
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if plain {
        v
    } else {
        OTHER
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpResult {
    op: String,
    result: String,
}

impl OpResult {
    fn new(op: &str, result: &str) -> Self {
        OpResult {
            op: label_value(op).to_owned(),
            result: label_value(result).to_owned(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceResult {
    source: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HintLabel {
    hint: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets (seconds) of the snapshotter operation latency: 0.5 ms .. 60 s.
const OP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Buckets (seconds) of a FUSE read: 50 µs .. 10 s (a cold read waits for the
/// network).
const FUSE_READ_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Buckets (seconds) of one remote fetch: 1 ms .. 60 s.
const FETCH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn op_histogram() -> Histogram {
    Histogram::new(OP_BUCKETS.iter().copied())
}

fn fuse_read_histogram() -> Histogram {
    Histogram::new(FUSE_READ_BUCKETS.iter().copied())
}

fn fetch_histogram() -> Histogram {
    Histogram::new(FETCH_BUCKETS.iter().copied())
}

/// A family that is declared (`# HELP`, `# TYPE`) even while it has no
/// series yet; `prometheus_client` leaves empty families out otherwise.
#[derive(Debug)]
struct Declared<F>(F);

impl<F: EncodeMetric> EncodeMetric for Declared<F> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// Creates the series `labels` of `family` (with the value 0).
fn seed<S, M, C>(family: &Family<S, M, C>, labels: &S)
where
    S: Clone + std::hash::Hash + Eq,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    drop(family.get_or_create(labels));
}

/// Values the daemon fills in from its state at each scrape (see
/// [`Metrics::set_collector`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GaugeSnapshot {
    /// Remote layers mounted now (`hologram_mounted_layers`).
    pub mounted_layers: u64,
    /// Remote layers not mounted yet after a restart, being restored in
    /// the background (`hologram_restoring_layers`).
    pub restoring_layers: u64,
    /// Bytes held in the chunk cache (`hologram_cache_bytes`).
    pub cache_bytes: u64,
    /// The chunk cache's limit (`hologram_cache_limit_bytes`).
    pub cache_limit_bytes: u64,
    /// Bytes prefetched since start, monotonic (`hologram_prefetch_bytes_total`).
    pub prefetch_bytes: u64,
    /// Bytes fetched in the background (`hologram_background_fetch_bytes`).
    pub background_fetch_bytes: u64,
    /// Chunks still waiting for a background fetch
    /// (`hologram_background_pending_chunks`).
    pub background_pending_chunks: u64,
    /// Bytes served to readers since start, monotonic
    /// (`hologram_served_bytes_total`).
    pub bytes_served: u64,
    /// Chunks of the mounted layers the cache could not store, served from
    /// memory (`hologram_cache_write_failures`).
    pub cache_write_failures: u64,
}

type CollectFn = Box<dyn Fn(&mut GaugeSnapshot) + Send + Sync>;
type NodeFn = Box<dyn Fn(&mut api::NodeState) + Send + Sync>;

/// The scrape-time part: the daemon's gauges and the process metrics.
struct StateCollector {
    callback: Arc<RwLock<Option<CollectFn>>>,
    /// Unix time the process started, computed once.
    start_time: f64,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector")
            .field("start_time", &self.start_time)
            .finish_non_exhaustive()
    }
}

fn encode_gauge<V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<V>: EncodeMetric,
{
    let gauge = ConstGauge::new(value);
    let metric_encoder = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric_encoder)
}

fn encode_counter<V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> Result<(), std::fmt::Error>
where
    ConstCounter<V>: EncodeMetric,
{
    let counter = ConstCounter::new(value);
    let metric_encoder = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
    counter.encode(metric_encoder)
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut s = GaugeSnapshot::default();
        {
            let guard = self
                .callback
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(f) = guard.as_ref() {
                f(&mut s);
            }
        }
        let e = &mut encoder;
        encode_gauge(
            e,
            "hologram_mounted_layers",
            "Remote layers mounted now.",
            s.mounted_layers,
        )?;
        encode_gauge(
            e,
            "hologram_restoring_layers",
            "Remote layers not mounted again yet after a restart (no local TOC copy, the registry is needed), restored in the background.",
            s.restoring_layers,
        )?;
        encode_gauge(
            e,
            "hologram_cache_bytes",
            "Bytes held in the chunk cache.",
            s.cache_bytes,
        )?;
        encode_gauge(
            e,
            "hologram_cache_limit_bytes",
            "Size limit of the chunk cache.",
            s.cache_limit_bytes,
        )?;
        encode_counter(
            e,
            "hologram_prefetch_bytes",
            "Bytes prefetched since start.",
            s.prefetch_bytes,
        )?;
        encode_gauge(
            e,
            "hologram_background_fetch_bytes",
            "Bytes fetched by the background fetcher.",
            s.background_fetch_bytes,
        )?;
        encode_gauge(
            e,
            "hologram_background_pending_chunks",
            "Chunks waiting for the background fetcher.",
            s.background_pending_chunks,
        )?;
        encode_counter(
            e,
            "hologram_served_bytes",
            "Bytes served to readers of remote layers since start.",
            s.bytes_served,
        )?;
        encode_gauge(
            e,
            "hologram_cache_write_failures",
            "Verified chunks of the mounted layers the cache could not store (disk full, I/O error), served from memory.",
            s.cache_write_failures,
        )?;

        let p = process::sample();
        encode_gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            p.resident_bytes,
        )?;
        encode_gauge(
            e,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            self.start_time,
        )?;
        encode_counter(
            e,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        )?;
        encode_gauge(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            p.open_fds,
        )?;
        Ok(())
    }
}

/// The daemon's metrics. Cheap to call from any thread; share it as
/// `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    collector: Arc<RwLock<Option<CollectFn>>>,
    snapshotter_ops: Family<OpResult, Counter>,
    snapshotter_duration: HistogramFamily<OpLabel>,
    fuse_ops: Family<OpResult, Counter>,
    fuse_read_duration: HistogramFamily<ResultLabel>,
    fuse_read_bytes: Counter,
    resolver_ops: Family<OpResult, Counter>,
    witness_ops: Family<OpResult, Counter>,
    ctp96_ops: Family<OpResult, Counter>,
    remote_fetch_duration: HistogramFamily<SourceLabel>,
    remote_fetches: Family<SourceResult, Counter>,
    fetched_bytes: Family<SourceLabel, Counter>,
    cache_requests: Family<ResultLabel, Counter>,
    verification_failures: Counter,
    layer_checks: Family<ResultLabel, Counter>,
    fallbacks: Family<ReasonLabel, Counter>,
    profiles: Family<ResultLabel, Counter>,
    energy_hints: Family<HintLabel, FloatGauge>,
    lease_duration: FloatGauge,
    /// What the JSON API reads that the families cannot list: the
    /// snapshotter operations by result, the CTP-96 series, the hints.
    tally: Mutex<Tally>,
    node: RwLock<Option<NodeFn>>,
    start_time: f64,
    throughput: Mutex<recent::Throughput>,
}

/// See [`Metrics::tally`].
#[derive(Debug, Default)]
struct Tally {
    ops: BTreeMap<String, api::OpCount>,
    ctp96: BTreeMap<String, Counter>,
    hints: BTreeMap<String, f64>,
}

/// Registers a counter family and seeds the label sets known in advance.
fn counters<L>(
    r: &mut Registry,
    name: &str,
    help: &str,
    seeds: impl IntoIterator<Item = L>,
) -> Family<L, Counter>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    r.register(name, help, Declared(family.clone()));
    for l in seeds {
        seed(&family, &l);
    }
    family
}

/// Registers a histogram family and seeds the label sets known in advance.
fn histograms<L>(
    r: &mut Registry,
    name: &str,
    help: &str,
    buckets: fn() -> Histogram,
    seeds: impl IntoIterator<Item = L>,
) -> HistogramFamily<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family: HistogramFamily<L> = Family::new_with_constructor(buckets);
    r.register(name, help, Declared(family.clone()));
    for l in seeds {
        seed(&family, &l);
    }
    family
}

fn result_labels<'a>(results: &'a [&'a str]) -> impl Iterator<Item = ResultLabel> + 'a {
    results.iter().map(|r| ResultLabel {
        result: (*r).to_owned(),
    })
}

fn op_results<'a>(ops: &'a [&'a str]) -> impl Iterator<Item = OpResult> + 'a {
    ops.iter()
        .flat_map(|op| [RESULT_OK, RESULT_ERROR].map(|r| OpResult::new(op, r)))
}

/// `hologram_snapshotter_operations_total`, `…_operation_duration_seconds`.
fn register_snapshotter(r: &mut Registry) -> (Family<OpResult, Counter>, HistogramFamily<OpLabel>) {
    let ops = counters(
        r,
        "hologram_snapshotter_operations",
        "Snapshotter gRPC operations by operation and result",
        op_results(SNAPSHOTTER_OPS),
    );
    let duration = histograms(
        r,
        "hologram_snapshotter_operation_duration_seconds",
        "Duration of snapshotter gRPC operations",
        op_histogram,
        SNAPSHOTTER_OPS.iter().map(|op| OpLabel {
            op: (*op).to_owned(),
        }),
    );
    (ops, duration)
}

/// `hologram_fuse_operations_total`, `…_read_duration_seconds`, `…_read_bytes_total`.
fn register_fuse(
    r: &mut Registry,
) -> (
    Family<OpResult, Counter>,
    HistogramFamily<ResultLabel>,
    Counter,
) {
    let ops = counters(
        r,
        "hologram_fuse_operations",
        "FUSE operations by operation and result",
        op_results(FUSE_OPS),
    );
    let read_duration = histograms(
        r,
        "hologram_fuse_read_duration_seconds",
        "Duration of FUSE reads, by result",
        fuse_read_histogram,
        result_labels(&[RESULT_OK, RESULT_ERROR]),
    );
    let read_bytes = Counter::default();
    r.register(
        "hologram_fuse_read_bytes",
        "Bytes returned by FUSE reads",
        read_bytes.clone(),
    );
    (ops, read_duration, read_bytes)
}

/// `hologram_remote_fetch_duration_seconds`, `…_fetches_total`, `hologram_fetched_bytes_total`.
fn register_fetches(
    r: &mut Registry,
) -> (
    HistogramFamily<SourceLabel>,
    Family<SourceResult, Counter>,
    Family<SourceLabel, Counter>,
) {
    let sources = || {
        FETCH_SOURCES.iter().map(|s| SourceLabel {
            source: (*s).to_owned(),
        })
    };
    let duration = histograms(
        r,
        "hologram_remote_fetch_duration_seconds",
        "Duration of remote fetches, by source (registry, ctp96, cache)",
        fetch_histogram,
        sources(),
    );
    let fetches = counters(
        r,
        "hologram_remote_fetches",
        "Remote fetches by source and result",
        FETCH_SOURCES.iter().flat_map(|s| {
            [RESULT_OK, RESULT_ERROR].map(|result| SourceResult {
                source: (*s).to_owned(),
                result: result.to_owned(),
            })
        }),
    );
    let bytes = counters(
        r,
        "hologram_fetched_bytes",
        "Bytes fetched, by source",
        sources(),
    );
    (duration, fetches, bytes)
}

/// What is checked on the way: cache lookups, chunk and layer checks,
/// fallbacks.
struct Checks {
    cache_requests: Family<ResultLabel, Counter>,
    verification_failures: Counter,
    layer_checks: Family<ResultLabel, Counter>,
    fallbacks: Family<ReasonLabel, Counter>,
}

fn register_checks(r: &mut Registry) -> Checks {
    let cache_requests = counters(
        r,
        "hologram_cache_requests",
        "Chunk cache lookups, by result (hit, miss)",
        result_labels(&["hit", "miss"]),
    );
    let verification_failures = Counter::default();
    r.register(
        "hologram_chunk_verification_failures",
        "Chunks whose content did not match their digest",
        verification_failures.clone(),
    );
    let layer_checks = counters(
        r,
        "hologram_layer_checks",
        "Whole-layer checks of lazily served layers (blob digest and diff ID), by result",
        result_labels(LAYER_CHECK_RESULTS),
    );
    let fallbacks = counters(
        r,
        "hologram_remote_fallbacks",
        "Layers not mounted remotely (unpacked the ordinary way instead), by reason",
        FALLBACK_REASONS.iter().map(|reason| ReasonLabel {
            reason: (*reason).to_owned(),
        }),
    );
    Checks {
        cache_requests,
        verification_failures,
        layer_checks,
        fallbacks,
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with every metric family declared (and the label sets
    /// known in advance seeded with zero), group by group.
    pub fn new() -> Arc<Metrics> {
        let mut r = Registry::default();
        let (snapshotter_ops, snapshotter_duration) = register_snapshotter(&mut r);
        let (fuse_ops, fuse_read_duration, fuse_read_bytes) = register_fuse(&mut r);
        let resolver_ops = counters(
            &mut r,
            "hologram_resolver_operations",
            "Resolver operations by operation and result",
            [],
        );
        let witness_ops = counters(
            &mut r,
            "hologram_witness_operations",
            "Witness operations by operation and result",
            [],
        );
        let ctp96_ops = counters(
            &mut r,
            "hologram_ctp96_operations",
            "CTP-96 operations by operation and result",
            [],
        );
        let (remote_fetch_duration, remote_fetches, fetched_bytes) = register_fetches(&mut r);
        let checks = register_checks(&mut r);
        let profiles = counters(
            &mut r,
            "hologram_prefetch_profiles",
            "Prefetch profiles learned on the node: learned (stored), applied (a mount prefetched by one), refused (an unusable profile file)",
            result_labels(PROFILE_EVENTS),
        );
        let energy_hints = Family::<HintLabel, FloatGauge>::default();
        r.register(
            "hologram_energy_hints",
            "Energy hints, by hint",
            Declared(energy_hints.clone()),
        );
        let lease_duration = FloatGauge::default();
        r.register(
            "hologram_lease_duration_seconds",
            "Duration of the content leases the snapshotter takes",
            lease_duration.clone(),
        );
        let collector: Arc<RwLock<Option<CollectFn>>> = Arc::new(RwLock::new(None));
        let start_time = process::start_time_seconds();
        r.register_collector(Box::new(StateCollector {
            callback: Arc::clone(&collector),
            start_time,
        }));
        Arc::new(Metrics {
            registry: r,
            collector,
            snapshotter_ops,
            snapshotter_duration,
            fuse_ops,
            fuse_read_duration,
            fuse_read_bytes,
            resolver_ops,
            witness_ops,
            ctp96_ops,
            remote_fetch_duration,
            remote_fetches,
            fetched_bytes,
            cache_requests: checks.cache_requests,
            verification_failures: checks.verification_failures,
            layer_checks: checks.layer_checks,
            fallbacks: checks.fallbacks,
            profiles,
            energy_hints,
            lease_duration,
            tally: Mutex::new(Tally::default()),
            node: RwLock::new(None),
            start_time,
            throughput: Mutex::new(recent::Throughput::default()),
        })
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One snapshotter gRPC operation: `op` is the method (`prepare`,
    /// `commit`, ...), `result` is [`RESULT_OK`] or [`RESULT_ERROR`] (or
    /// another short category), `seconds` its duration.
    pub fn snapshotter_op(&self, op: &str, result: &str, seconds: f64) {
        self.snapshotter_ops
            .get_or_create(&OpResult::new(op, result))
            .inc();
        self.snapshotter_duration
            .get_or_create(&OpLabel {
                op: label_value(op).to_owned(),
            })
            .observe(seconds);
        let mut t = self.tally();
        let c = t.ops.entry(label_value(op).to_owned()).or_default();
        if result == RESULT_OK {
            c.ok += 1;
        } else {
            c.errors += 1;
        }
    }

    /// Pre-resolved metric handles for the FUSE read path: updating them is
    /// an atomic add (histograms: one short lock), with no label hashing or
    /// allocation per event. `ops` lists the FUSE ops to resolve.
    pub fn fuse_handles(&self, ops: &[&'static str]) -> FuseHandles {
        let counter = |op: &str, result: &str| {
            self.fuse_ops
                .get_or_create(&OpResult::new(op, result))
                .clone()
        };
        let hist = |result: &str| {
            self.fuse_read_duration
                .get_or_create(&ResultLabel {
                    result: label_value(result).to_owned(),
                })
                .clone()
        };
        let fetch = |source: &str| {
            let l = SourceLabel {
                source: label_value(source).to_owned(),
            };
            (
                self.remote_fetch_duration.get_or_create(&l).clone(),
                self.fetched_bytes.get_or_create(&l).clone(),
                self.remote_fetches
                    .get_or_create(&SourceResult {
                        source: label_value(source).to_owned(),
                        result: RESULT_OK.to_owned(),
                    })
                    .clone(),
                self.remote_fetches
                    .get_or_create(&SourceResult {
                        source: label_value(source).to_owned(),
                        result: RESULT_ERROR.to_owned(),
                    })
                    .clone(),
            )
        };
        FuseHandles {
            ops: ops
                .iter()
                .map(|op| (*op, (counter(op, RESULT_OK), counter(op, RESULT_ERROR))))
                .collect(),
            read_ok: hist(RESULT_OK),
            read_err: hist(RESULT_ERROR),
            read_bytes: self.fuse_read_bytes.clone(),
            cache_hit: self
                .cache_requests
                .get_or_create(&ResultLabel {
                    result: "hit".to_owned(),
                })
                .clone(),
            cache_miss: self
                .cache_requests
                .get_or_create(&ResultLabel {
                    result: "miss".to_owned(),
                })
                .clone(),
            registry: fetch("registry"),
            ctp96: fetch("ctp96"),
            read_interrupted: counter("read", "interrupted"),
            verification_failures: self.verification_failures.clone(),
        }
    }

    /// One FUSE operation (`lookup`, `getattr`, `read`, ...).
    pub fn fuse_op(&self, op: &str, result: &str) {
        self.fuse_ops
            .get_or_create(&OpResult::new(op, result))
            .inc();
    }

    /// One FUSE read: its duration, the bytes it returned.
    pub fn fuse_read(&self, seconds: f64, bytes: u64, result: &str) {
        self.fuse_read_duration
            .get_or_create(&ResultLabel {
                result: label_value(result).to_owned(),
            })
            .observe(seconds);
        self.fuse_read_bytes.inc_by(bytes);
    }

    /// One resolver operation.
    pub fn resolver_op(&self, op: &str, result: &str) {
        self.resolver_ops
            .get_or_create(&OpResult::new(op, result))
            .inc();
    }

    /// One witness operation.
    pub fn witness_op(&self, op: &str, result: &str) {
        self.witness_ops
            .get_or_create(&OpResult::new(op, result))
            .inc();
    }

    /// One CTP-96 operation.
    pub fn ctp96_op(&self, op: &str, result: &str) {
        self.ctp96_counter(op, result).inc();
    }

    /// The counter of a CTP-96 series, remembered for the JSON API.
    fn ctp96_counter(&self, op: &str, result: &str) -> Counter {
        let labels = OpResult::new(op, result);
        let key = format!("{}/{}", labels.op, labels.result);
        let mut t = self.tally();
        t.ctp96
            .entry(key)
            .or_insert_with(|| self.ctp96_ops.get_or_create(&labels).clone())
            .clone()
    }

    /// Creates the series of a CTP-96 operation with the value 0, so a
    /// scrape shows it before it first happens.
    pub fn declare_ctp96_op(&self, op: &str, result: &str) {
        drop(self.ctp96_counter(op, result));
    }

    /// One chunk cache lookup.
    pub fn cache_lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache_requests
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The whole-layer check of a lazily served layer ended: `verified` or `bad`.
    /// Counts a prefetch-profile event (one of [`PROFILE_EVENTS`]).
    pub fn profile(&self, event: &str) {
        let result = if PROFILE_EVENTS.contains(&event) {
            event
        } else {
            OTHER
        };
        self.profiles
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn layer_check(&self, result: &str) {
        let result = if LAYER_CHECK_RESULTS.contains(&result) {
            result
        } else {
            OTHER
        };
        self.layer_checks
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// A layer that is not mounted remotely. `reason` should be one of
    /// [`FALLBACK_REASONS`]; anything else is counted as `"other"`.
    pub fn fallback(&self, reason: &str) {
        let reason = if FALLBACK_REASONS.contains(&reason) {
            reason
        } else {
            tracing::debug!(reason, "unknown fallback reason counted as \"other\"");
            OTHER
        };
        self.fallbacks
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Sets the energy hint gauge `hint`.
    pub fn set_energy_hint(&self, hint: &str, value: f64) {
        let hint = label_value(hint).to_owned();
        self.energy_hints
            .get_or_create(&HintLabel { hint: hint.clone() })
            .set(value);
        self.tally().hints.insert(hint, value);
    }

    /// Sets the lease duration gauge.
    pub fn set_lease_duration(&self, seconds: f64) {
        self.lease_duration.set(seconds);
    }

    /// Installs the callback that fills in the state gauges at each scrape
    /// (it replaces any previous one). It runs on the scraping task, so it
    /// should only read counters and sizes, not do I/O.
    pub fn set_collector(&self, f: Box<dyn Fn(&mut GaugeSnapshot) + Send + Sync>) {
        let mut guard = self
            .collector
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = Some(f);
    }

    /// Installs the callback that fills in the daemon's part of the JSON
    /// API ([`api::NodeState`]: images, layers, cache use, the CTP-96
    /// session, warnings, throughput) at each request; it replaces any
    /// previous one. Like the collector it runs on the request's task: it
    /// should read state, not do I/O.
    pub fn set_node_collector(&self, f: Box<dyn Fn(&mut api::NodeState) + Send + Sync>) {
        let mut guard = self
            .node
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = Some(f);
    }

    /// Total compressed bytes fetched from remote sources (registry and
    /// CTP-96) since start.
    pub fn fetched_bytes_total(&self) -> u64 {
        ["registry", "ctp96"]
            .iter()
            .map(|s| {
                self.fetched_bytes
                    .get_or_create(&SourceLabel {
                        source: (*s).to_owned(),
                    })
                    .get()
            })
            .sum()
    }

    /// Total bytes FUSE reads returned since start.
    pub fn read_bytes_total(&self) -> u64 {
        self.fuse_read_bytes.get()
    }

    /// Adds a throughput sample (the rates since the previous call); the
    /// server calls it about once a second while it serves.
    pub fn sample_throughput(&self) {
        let (fetched, read) = (self.fetched_bytes_total(), self.read_bytes_total());
        self.throughput
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .sample(process::unix_now(), fetched, read);
    }

    /// The node's state for the JSON API: what this registry counts, then
    /// the daemon's part (its callback).
    pub fn node_state(&self) -> api::NodeState {
        let result = |r: &str| ResultLabel {
            result: r.to_owned(),
        };
        let mut s = api::NodeState {
            api_version: api::API_VERSION,
            ..api::NodeState::default()
        };
        let now = process::unix_now();
        s.generated_at = now;
        s.uptime_seconds = (now - self.start_time).max(0.0);
        s.resident_bytes = process::resident();
        for src in ["registry", "ctp96"] {
            let label = SourceLabel {
                source: src.to_owned(),
            };
            s.transfer.fetched_bytes.insert(
                src.to_owned(),
                self.fetched_bytes.get_or_create(&label).get(),
            );
            let errors = self
                .remote_fetches
                .get_or_create(&SourceResult {
                    source: src.to_owned(),
                    result: RESULT_ERROR.to_owned(),
                })
                .get();
            s.transfer.fetch_errors.insert(src.to_owned(), errors);
        }
        s.transfer.read_bytes = self.fuse_read_bytes.get();
        let hits = self.cache_requests.get_or_create(&result("hit")).get();
        let misses = self.cache_requests.get_or_create(&result("miss")).get();
        s.cache.hits = hits;
        s.cache.misses = misses;
        s.cache.hit_ratio = (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64);
        s.checks.chunk_verification_failures = self.verification_failures.get();
        s.checks.layers_verified = self.layer_checks.get_or_create(&result("verified")).get();
        s.checks.layers_bad = self.layer_checks.get_or_create(&result("bad")).get();
        for reason in FALLBACK_REASONS {
            let n = self
                .fallbacks
                .get_or_create(&ReasonLabel {
                    reason: (*reason).to_owned(),
                })
                .get();
            if n > 0 {
                s.checks.fallbacks.insert((*reason).to_owned(), n);
            }
        }
        {
            let t = self.tally();
            s.operations = t.ops.clone();
            if !t.ctp96.is_empty() {
                s.ctp96 = Some(api::Ctp96State {
                    lease_seconds: self.lease_duration.get(),
                    hints: t.hints.clone(),
                    operations: t.ctp96.iter().map(|(k, c)| (k.clone(), c.get())).collect(),
                    ..api::Ctp96State::default()
                });
            }
        }
        s.throughput = self
            .throughput
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .samples
            .iter()
            .copied()
            .collect();
        s.warnings = recent::recent_warnings();
        let guard = self
            .node
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(f) = guard.as_ref() {
            f(&mut s);
        }
        s
    }

    /// The exposition text (Prometheus text format 0.0.4, [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests;
