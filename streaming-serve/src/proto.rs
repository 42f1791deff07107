//! The generated gRPC code: `statestream.v1` (the `StateStream` service) and
//! `datastream` (the `DataService` interface), and the encoded descriptor
//! set served by reflection.

/// `package statestream.v1` of `proto/statestream/v1/serve.proto`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("statestream.v1");
}

/// `package datastream` of `proto/datastream/datastream.proto`.
pub mod datastream {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("datastream");
}

/// The `FileDescriptorSet` of both files, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/serve_descriptor.bin"));
