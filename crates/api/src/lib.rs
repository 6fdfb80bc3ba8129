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

/// Opens a gRPC channel to a unix socket (containerd's, or a snapshotter's).
pub async fn connect_unix(
    path: impl AsRef<std::path::Path>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.as_ref().to_owned();
    // The URI is required by the API but unused: the connector below decides.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}
