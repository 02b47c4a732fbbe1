//! Generates the gRPC code from `berth/**/*.proto`.
//!
//! protoc comes from `protoc-bin-vendored` and is handed to prost through
//! `protoc_executable()`: a global `PROTOC` would leak into raft's own build
//! script, which breaks with a modern protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Deterministic map order keeps encoded objects byte-for-byte stable, so an
    // unchanged object encodes the same way on every replica and every read.
    config.btree_map(["."]);
    // Hand-written, to share its objects with the state machine (`history.rs`).
    config.extern_path(".berth.internal.v1.Change", "crate::history::Change");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(
            config,
            &[
                "berth/v1/objects.proto",
                "berth/internal/v1/storage.proto",
                "berth/internal/v1/raft.proto",
            ],
            &["."],
        )?;
    Ok(())
}
