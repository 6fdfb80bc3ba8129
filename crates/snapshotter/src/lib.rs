//! hologram-snapshotter: a containerd snapshotter served over gRPC as a
//! proxy plugin.
//!
//! Where things are handled:
//! * `service.rs` — the gRPC edge: every containerd call (Prepare, View,
//!   Mounts, Commit, Remove, Stat, Update, List/Walk, Usage, Cleanup) arrives here;
//! * `snapshotter.rs` — the operations themselves, over the metadata store
//!   (`hologram-store`) and the snapshot directories;
//! * `plan.rs` — the typed plan of an image-layer Prepare: labels parsed
//!   once, the image's manifest and config fetched and checked once;
//! * `remote.rs` — remote snapshots: mounting a planned layer through
//!   `hologram-fs` (whose `LayerFs::read` is where read(2) lands), its check,
//!   restoring mounts after a restart;
//! * `ctp96.rs` — which transport layer bytes come over (`HOLOGRAM_NET`):
//!   the registry, CTP-96, or CTP-96 with the registry behind it;
//! * `trust.rs` — the witness check of an image before its layers are used;
//! * `mounts.rs` — the mounts handed back to containerd;
//! * `fdstore/` — handing FUSE connections and the listening socket to a
//!   holder process so a restarted daemon takes them over (running
//!   containers never notice the restart);
//! * `cri_proxy.rs` — the CRI image-service proxy that keeps Kubernetes
//!   pull secrets in memory for lazy reads;
//! * `daemon.rs` — socket, server, signals; `config.rs` — configuration.

#![forbid(unsafe_code)]

pub mod alloc;
pub mod config;
pub mod cri_proxy;
pub mod ctp96;
pub mod daemon;
pub mod disk_usage;
pub mod fdstore;
pub mod metrics;
pub mod mountinfo;
pub mod mounts;
pub mod node;
pub mod plan;
pub mod profiles;
pub mod remote;
pub mod service;
pub mod snapshotter;
pub mod trust;
