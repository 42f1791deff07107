//! Generates the gRPC services and messages from `proto/` with
//! tonic-prost-build, compiling the `.proto` files with protox (no system
//! `protoc`). The encoded descriptor set is kept for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/statestream/v1/serve.proto",
        "proto/datastream/datastream.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("serve_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    // The server's own build of statestream.v1: a `BlockChanges` is sent as
    // bytes encoded once per block and shared by every subscriber with the
    // same filter, and a `SnapshotChunk` as bytes encoded straight from the
    // store's iterator (the wire format is the same: a length-delimited
    // field).
    let server_out = out.join("server");
    std::fs::create_dir_all(&server_out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&server_out)
        .extern_path(".statestream.v1.BlockChanges", "crate::wire::Encoded")
        .extern_path(".statestream.v1.SnapshotChunk", "crate::wire::Encoded")
        .compile_fds(protox::compile(
            ["proto/statestream/v1/serve.proto"],
            ["proto"],
        )?)?;
    Ok(())
}
