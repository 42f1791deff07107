//! The generated gRPC code: `statestream.v1` (the `StateStream` service) and
//! `datastream` (the `DataService` interface), and the encoded descriptor
//! set served by reflection.

/// `package statestream.v1` of `proto/statestream/v1/serve.proto`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("statestream.v1");
}

/// The server's build of `statestream.v1`: the same messages and service,
/// with `BlockChanges` replaced by [`crate::wire::Encoded`] (bytes
/// encoded once per block).
pub(crate) mod server {
    #![allow(missing_docs, clippy::all, clippy::pedantic, dead_code)]
    include!(concat!(env!("OUT_DIR"), "/server/statestream.v1.rs"));
}

/// `package datastream` of `proto/datastream/datastream.proto`.
pub mod datastream {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("datastream");
}

/// The `FileDescriptorSet` of both files, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/serve_descriptor.bin"));
