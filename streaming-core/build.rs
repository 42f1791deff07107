//! Generates the protobuf types from `proto/` with prost, using protox as the
//! compiler so that no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/statestream/v1/store_kv_pair.proto",
        "proto/statestream/v1/block.proto",
        "proto/statestream/v1/plugin.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
