//! Compiles containerd's vendored protos (snapshots, content, images, leases,
//! diff) and the Kubernetes CRI (`runtime.v1`) with `protox` (a pure-Rust
//! protobuf compiler, so no `protoc` is needed) and generates prost messages plus
//! tonic client and server code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/containerd/types/mount.proto",
        "proto/containerd/types/descriptor.proto",
        "proto/containerd/services/snapshots/v1/snapshots.proto",
        "proto/containerd/services/content/v1/content.proto",
        "proto/containerd/services/images/v1/images.proto",
        "proto/containerd/services/leases/v1/leases.proto",
        "proto/containerd/services/diff/v1/diff.proto",
        "proto/k8s/runtime/v1/api.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
