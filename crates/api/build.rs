//! Compiles containerd's vendored snapshots v1 protos with `protox` (a pure-Rust
//! protobuf compiler, so no `protoc` is needed) and generates prost messages plus
//! tonic client and server code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/containerd/types/mount.proto",
        "proto/containerd/services/snapshots/v1/snapshots.proto",
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
