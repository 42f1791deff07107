//! The wire schema, generated at build time from `proto/statestream/v1/*.proto`
//! (prost, compiled by protox: no system `protoc` needed). The `.proto`
//! files are the schema other languages use.

#![allow(missing_docs, clippy::all, unreachable_pub)]

include!(concat!(env!("OUT_DIR"), "/statestream.v1.rs"));
