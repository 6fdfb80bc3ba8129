//! containerd's gRPC APIs this project speaks: the snapshots service (served
//! by the daemon) and the content, images, leases and diff services (used by
//! `hologram pull` and the tests as clients); and the Kubernetes CRI
//! (`runtime.v1`): the daemon serves its `ImageService` as the credentials
//! proxy, the e2e tests drive containerd's CRI as the kubelet does.
//!
//! Generated at build time from the protos vendored under `proto/` (containerd,
//! Apache-2.0; gogoproto options removed, wire format unchanged; k8s.io/cri-api
//! v0.34.0, Apache-2.0, unchanged) with `protox`,
//! so building needs no `protoc`.
//! Module paths mirror the protobuf packages so generated cross-references resolve.

#![forbid(unsafe_code)]
#![allow(clippy::all, missing_docs)]

pub mod containerd {
    /// `containerd.types` (`Mount`, `Descriptor`).
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
        pub mod content {
            /// `containerd.services.content.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
            }
        }
        pub mod images {
            /// `containerd.services.images.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.images.v1");
            }
        }
        pub mod leases {
            /// `containerd.services.leases.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.leases.v1");
            }
        }
        pub mod diff {
            /// `containerd.services.diff.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.diff.v1");
            }
        }
    }
}

/// `runtime.v1`: the Kubernetes Container Runtime Interface.
pub mod runtime {
    /// `runtime.v1` (`RuntimeService`, `ImageService`).
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

pub use containerd::services::content::v1 as content;
pub use containerd::services::diff::v1 as diff;
pub use containerd::services::images::v1 as images;
pub use containerd::services::leases::v1 as leases;
pub use containerd::services::snapshots::v1 as snapshots;
pub use containerd::types;
pub use prost_types;
pub use runtime::v1 as cri;

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
