//! Generates the client stubs and messages of `statestream.v1.StateStream`
//! and `datastream.DataService` with tonic-prost-build, compiling the
//! `.proto` files with protox (no system `protoc`). The files are the serve
//! streamer's own, so the client and the server share one definition of
//! the wire format.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../streaming-serve/proto";
    let files = [
        "../streaming-serve/proto/statestream/v1/serve.proto",
        "../streaming-serve/proto/datastream/datastream.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(protox::compile(files, [root])?)?;
    Ok(())
}
