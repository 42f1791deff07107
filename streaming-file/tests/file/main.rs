//! Tests of the file streamer and the block-file reader (one test binary, a
//! module per area).

mod config;
mod fixtures;
mod paths;
mod python;
mod reader;
mod util;
mod writer;
