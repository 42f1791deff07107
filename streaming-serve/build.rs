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
    Ok(())
}
