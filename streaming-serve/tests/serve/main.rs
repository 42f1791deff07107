//! Integration tests of the `serve` streamer: a real store and delivery
//! manager, the real server on a loopback port the OS chose, real tonic
//! clients.

mod util;

mod datastream;
mod limits;
mod metrics;
mod push;
mod python;
mod sse;
mod subscribe;
