//! containerd's `containerd.services.snapshots.v1.Snapshots` gRPC API.
//!
//! Generated at build time from the protos vendored under `proto/` (containerd
//! v1.6, Apache-2.0, gogoproto options removed; the wire format is unchanged).
//! Module paths mirror the protobuf packages so generated cross-references resolve.

#![allow(clippy::all, missing_docs)]

pub mod containerd {
    /// `containerd.types` (the `Mount` message).
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    pub mod services {
        pub mod snapshots {
            /// `containerd.services.snapshots.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}

pub use containerd::services::snapshots::v1 as snapshots;
pub use containerd::types;
pub use prost_types;
