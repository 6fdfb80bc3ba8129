//! Snapshot metadata for hologram-snapshotter.
pub mod filter;
