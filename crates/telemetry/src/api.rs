//! The JSON API behind the node's web page (`GET /api/v1/node`), also read
//! by `hologram status`.
//!
//! The types are plain data: the telemetry crate fills in what its own
//! registry counts ([`Metrics::node_state`](crate::Metrics::node_state):
//! bytes fetched by source, cache lookups, checks, fallbacks, CTP-96
//! operations and hints), the daemon the rest through its callback
//! ([`Metrics::set_node_collector`](crate::Metrics::set_node_collector)):
//! images and layers, cache use, the CTP-96 session, recent warnings and
//! the throughput samples. No type here knows the daemon.
//!
//! Every string that comes from an image (references, digests as the
//! labels give them, annotations, reasons that quote them) is attacker
//! input: it is carried as data, never as markup, and the page renders it
//! with `textContent` only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The path of [`NodeState`].
pub const NODE_PATH: &str = "/api/v1/node";

/// The version of the API's shape: bumped when a field changes meaning or
/// goes away (new fields may appear in any version).
pub const API_VERSION: u32 = 1;

/// Everything the page shows, at one instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeState {
    /// [`API_VERSION`].
    pub api_version: u32,
    /// The daemon's version.
    pub daemon_version: String,
    /// When this state was taken, Unix seconds.
    pub generated_at: f64,
    /// Seconds since the daemon started.
    pub uptime_seconds: f64,
    /// Resident memory of the daemon, bytes.
    pub resident_bytes: u64,
    /// Images on this node, most recently seen first.
    pub images: Vec<ImageState>,
    /// Remote layers mounted now.
    pub mounted_layers: u64,
    /// Remote layers not mounted again yet after a restart (no local TOC
    /// copy), restored in the background.
    pub restoring: Vec<RestoringLayerState>,
    /// The chunk cache.
    pub cache: CacheState,
    /// Bytes moved since start.
    pub transfer: TransferState,
    /// Chunk and layer checks, fallbacks.
    pub checks: CheckState,
    /// The trust gate, when it is on.
    pub trust: Option<TrustGateState>,
    /// The CTP-96 transport, when an endpoint is configured.
    pub ctp96: Option<Ctp96State>,
    /// Throughput samples, oldest first (about one a second).
    pub throughput: Vec<ThroughputSample>,
    /// Recent warnings and errors of the daemon, oldest first.
    pub warnings: Vec<Warning>,
    /// Snapshotter operations: op → (ok, errors).
    pub operations: BTreeMap<String, OpCount>,
}

/// A layer the daemon is restoring in the background after a restart: its
/// TOC has no local copy and must come from the registry. Snapshots on it
/// are refused until it is mounted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoringLayerState {
    /// The layer's digest.
    pub digest: String,
    /// The committed snapshot that serves it.
    pub snapshot_id: u64,
    /// The image it was mounted for, as its labels name it.
    pub image: String,
    /// Attempts that failed so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Since when, Unix seconds.
    pub since: f64,
}

/// One image and its layers, bottom layer first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageState {
    /// The image as its labels name it.
    pub reference: String,
    /// Its manifest digest, when known.
    pub manifest_digest: Option<String>,
    /// The trust gate's verdict, when the gate checked it.
    pub trust: Option<TrustVerdict>,
    /// Its layers, bottom first.
    pub layers: Vec<LayerState>,
    /// When the daemon last dealt with it, Unix seconds.
    pub last_seen: f64,
}

/// How a layer is on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerMode {
    /// Mounted through FUSE, fetched on demand.
    Lazy,
    /// Not served lazily: containerd downloaded and unpacked it.
    Unpacked,
    /// Already on the node (an earlier pull, another image).
    Present,
    /// Named by the image, not prepared yet (or no longer mounted).
    #[default]
    Pending,
}

/// One layer of an image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LayerState {
    /// The layer's digest.
    pub digest: String,
    /// Compressed size as the manifest gives it.
    pub size: u64,
    /// lazy / unpacked / present / pending.
    pub mode: LayerMode,
    /// Why it was not served lazily (`unpacked`).
    pub fallback: Option<FallbackInfo>,
    /// The snapshot that serves it (`lazy`).
    pub snapshot_id: Option<u64>,
    /// Where its bytes come from now (`registry`, `ctp96`).
    pub source: Option<String>,
    /// Compressed bytes fetched for readers.
    pub demand_bytes: u64,
    /// Compressed bytes fetched by the prefetch pass.
    pub prefetch_bytes: u64,
    /// Compressed bytes fetched by the background pass.
    pub background_bytes: u64,
    /// Uncompressed bytes returned to readers.
    pub served_bytes: u64,
    /// Chunks not in the cache yet.
    pub pending_chunks: u64,
    /// Chunks of this layer that failed verification.
    pub verification_failures: u64,
    /// The whole-layer check: `pending`, `verified`, `bad`.
    pub check: Option<String>,
    /// Why the check failed (`bad`).
    pub check_reason: Option<String>,
    /// The layer descriptor's annotations (bounded, attacker-chosen).
    pub annotations: BTreeMap<String, String>,
}

impl LayerState {
    /// Every compressed byte fetched for this layer.
    pub fn fetched_bytes(&self) -> u64 {
        self.demand_bytes
            .saturating_add(self.prefetch_bytes)
            .saturating_add(self.background_bytes)
    }
}

/// Why a layer was unpacked instead of mounted lazily.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FallbackInfo {
    /// The category (`not_estargz`, `fetch_error`, ...).
    pub category: String,
    /// The full reason.
    pub reason: String,
}

/// The trust gate's verdict on one image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrustVerdict {
    /// `allowed`, `warned` (not verified, allowed in warn mode) or `refused`.
    pub decision: String,
    /// `enforce` or `warn`.
    pub mode: String,
    /// The image's UOR-ID.
    pub uor_id: String,
    /// The id of the key whose witness verified, when one did.
    pub key_id: Option<String>,
    /// Why it was not verified.
    pub reason: Option<String>,
    /// When the verdict was reached, Unix seconds.
    pub at: f64,
}

/// The trust gate's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrustGateState {
    /// `enforce` or `warn`.
    pub mode: String,
    /// How many trusted keys are configured.
    pub trusted_keys: u64,
}

/// The chunk cache.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheState {
    /// Bytes held.
    pub bytes: u64,
    /// Its limit.
    pub limit_bytes: u64,
    /// Lookups that found the chunk.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// hits / (hits + misses), when there was a lookup.
    pub hit_ratio: Option<f64>,
    /// Verified chunks it could not store (served from memory).
    pub write_failures: u64,
}

/// Bytes moved since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransferState {
    /// Compressed bytes fetched, by source (`registry`, `ctp96`).
    pub fetched_bytes: BTreeMap<String, u64>,
    /// Fetches that failed, by source.
    pub fetch_errors: BTreeMap<String, u64>,
    /// Uncompressed bytes returned by FUSE reads.
    pub read_bytes: u64,
    /// Bytes fetched by prefetch passes (mounted layers).
    pub prefetch_bytes: u64,
    /// Bytes fetched by background passes (mounted layers).
    pub background_bytes: u64,
    /// Chunks of mounted layers still to fetch in the background.
    pub background_pending_chunks: u64,
}

/// Chunk and layer checks, fallbacks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckState {
    /// Chunks whose bytes did not match their digest.
    pub chunk_verification_failures: u64,
    /// Whole-layer checks that passed.
    pub layers_verified: u64,
    /// Whole-layer checks that failed.
    pub layers_bad: u64,
    /// Layers unpacked instead of served lazily, by reason.
    pub fallbacks: BTreeMap<String, u64>,
}

/// The CTP-96 transport.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ctp96State {
    /// `ctp96` or `auto`.
    pub mode: String,
    /// The endpoint's URL (without user information).
    pub endpoint: String,
    /// The open session, if any.
    pub session_id: Option<String>,
    /// Its lease.
    pub lease_id: Option<String>,
    /// The lease length last granted, seconds.
    pub lease_seconds: f64,
    /// The last energy hints: load, concurrency, chunk_size, retry_after_ms.
    pub hints: BTreeMap<String, f64>,
    /// Operations: `op/result` → count.
    pub operations: BTreeMap<String, u64>,
}

/// One throughput sample: the rates over the second before `t`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThroughputSample {
    /// Unix seconds.
    pub t: f64,
    /// Compressed bytes fetched per second (every source).
    pub fetched_per_sec: f64,
    /// Uncompressed bytes returned to readers per second.
    pub read_per_sec: f64,
}

/// A warning or error the daemon logged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Warning {
    /// Unix seconds.
    pub at: f64,
    /// `WARN` or `ERROR`.
    pub level: String,
    /// The module that logged it.
    pub target: String,
    /// The message and its fields, credentials and other users' paths
    /// removed, bounded.
    pub text: String,
}

/// Counts of one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpCount {
    pub ok: u64,
    pub errors: u64,
}
