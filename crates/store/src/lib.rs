//! Snapshot metadata for hologram-snapshotter: the crash-safe store
//! ([`MetaStore`]) and containerd's filter language ([`filter`]).
//!
//! Pure logic: nothing here mounts, touches snapshot directories or talks to
//! the network, so it is tested without root.

#![forbid(unsafe_code)]

pub mod filter;
mod store;

use serde::{Deserialize, Serialize};

pub use store::{
    validate_key, validate_labels, Info, MetaStore, Snapshot, Txn, Usage, MAX_KEY_LEN,
    MAX_LABELS_TOTAL, MAX_LABEL_SIZE,
};

/// A snapshot's kind, as containerd defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    /// The name containerd's filters use (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// Errors with the classes containerd's errdefs know; the service maps each
/// to its gRPC code.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    #[error("{0}")]
    Internal(String),
}

#[cfg(test)]
mod tests;
