//! statestream's cross-crate integration tests: one test binary, one module
//! per area. Shared helpers (the recording streamer, a temp home, the store
//! workload) are in the `statestream_tests` library (`tests/src/lib.rs`).

mod config;
mod delivery;
mod errors;
mod file;
mod filters;
mod flush;
mod pruning;
mod registry;
mod restart;
mod streamer;
mod wire;
