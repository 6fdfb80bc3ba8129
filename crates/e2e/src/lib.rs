//! End-to-end test harness for `hologram-snapshotter`.
//!
//! Every test builds its own world in temp dirs below /tmp: a
//! `docker-registry` on a free 127.0.0.1 port holding a deterministic
//! 3-layer test image (`scripts/mkimage.py`, pushed with skopeo), a
//! `hologram-snapshotter` on a private unix socket, and a private containerd
//! whose `[proxy_plugins.hologram]` points at it. Everything is driven with
//! `ctr`. Dropping [`TestEnv`] stops containerd (after removing its tasks
//! and containers, and killing leftover shims), then the snapshotter, then
//! the registry, unmounts whatever is left below their dirs and removes
//! them.
//!
//! Needs root and the Debian packages containerd, runc, docker-registry,
//! skopeo, busybox-static and python3; the snapshotter binary is found via
//! `$HOLOGRAM_SNAPSHOTTER_BIN`, `build/hologram-snapshotter` or
//! `target/debug/hologram-snapshotter` (build it first).

pub mod browser;
pub mod containerd;
pub mod cri;
pub mod env;
pub mod equivalence;
pub mod faulty;
pub mod image;
pub mod lazy;
pub mod mounts;
pub mod netns;
pub mod process;
pub mod prom;
pub mod proxy;
pub mod registry;
pub mod side_registry;
pub mod snapshotter;
pub mod stoppable_registry;
pub mod treedump;
pub mod trust;
pub mod util;

pub use containerd::{Containerd, SNAPSHOTTER};
pub use env::{parse_snapshot_ls, parse_usage, MountGuard, SnapshotRow, TestEnv, UsageRow};
pub use image::{build_and_push, expected_rootfs_report, TestImage, ROOTFS_CHECK_SCRIPT};
pub use registry::Registry;
pub use snapshotter::Snapshotter;
