//! Integration tests of the `serve` streamer: a real store and delivery
//! manager, the real server on a loopback port the OS chose, real
//! clients (tonic for gRPC, LaunchDarkly's `eventsource-client` for SSE).

mod util;

mod bounds;
mod credentials;
mod datastream;
mod es;
mod limits;
mod listeners;
mod metrics;
mod push;
mod python;
mod sse;
mod subscribe;
mod tls;
