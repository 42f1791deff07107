//! The generated client stubs and messages: `statestream.v1` (the
//! `StateStream` service) and `datastream` (the `DataService` interface),
//! from the serve streamer's own `.proto` files.

/// `package statestream.v1`: [`v1::state_stream_client::StateStreamClient`]
/// and its messages.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("statestream.v1");
}

/// `package datastream`: [`datastream::data_service_client::DataServiceClient`]
/// and its messages.
pub mod datastream {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("datastream");
}
