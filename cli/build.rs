//! Generates the gRPC server of `statestream cosmos-plugin` (the Cosmos
//! SDK's ABCI listener service and go-plugin's controller) from `proto/`
//! with tonic-prost-build, compiling the `.proto` files with protox (no
//! system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/cosmos/store/streaming/abci/grpc.proto",
        "proto/cosmos/store/v1beta1/listening.proto",
        "proto/tendermint/abci/types.proto",
        "proto/tendermint/types/types.proto",
        "proto/plugin/grpc_controller.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    // The client side is `statestream bench`'s host of the plugin.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(protox::compile(files, ["proto"])?)?;
    Ok(())
}
