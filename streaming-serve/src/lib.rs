//! `statestream-serve`: the `serve` streamer. A subscription hub fed by the
//! streamer's `on_block`, served over gRPC and HTTP: statestream's own
//! `statestream.v1.StateStream` (snapshot, resume by height, live, with
//! heartbeats and `PushUpdate`) and the datastream seed's
//! `datastream.DataService`, plus the standard health and reflection
//! services; Server-Sent Events and JSON snapshots. See `docs/serve.md`.
//!
//! - [`ServeConfig`]: the options of `type = "serve"`; [`ServeConfig::build`]
//!   starts the server (errors name the key, or say why the address cannot
//!   be bound).
//! - [`Hub`]: the blocks by height (recent ones in memory, older ones from
//!   the store's change log), subscriptions, limits, the one snapshot
//!   reader. The front-ends only translate its events:
//! - gRPC (`grpc/`): `StateStream`, `DataService`, health and reflection
//!   on `grpc_address`.
//! - HTTP (`http/`): Server-Sent Events (`GET /stream`, `/stream/ping`) and
//!   `GET /snapshot` on `http_address` (axum), see `docs/serve.md`.
//! - Shared by both: the access check (`access`), the outbox with its stall
//!   rule (`outbox`), a block under a filter (`selection`).
//! - [`metrics`]: subscribers, messages and bytes sent, slow disconnects,
//!   per front-end ([`ServeHandle::metrics`]).
//! - [`proto`]: the generated messages, clients and servers.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod access;
mod config;
mod error;
pub mod filter;
pub mod gate;
mod grpc;
mod http;
mod hub;
pub mod metrics;
mod outbox;
pub mod proto;
mod selection;
mod streamer;

pub use config::{
    DEFAULT_GRPC_ADDRESS, DEFAULT_HEARTBEAT_MS, DEFAULT_MAX_PUSH_BYTES,
    DEFAULT_MAX_PUSH_VALUE_BYTES, DEFAULT_MAX_SUBSCRIBERS, DEFAULT_RETAIN_BLOCKS,
    DEFAULT_VALUE_TYPE, SERVE_TYPE, ServeConfig,
};
pub use error::{HubError, ServeError};
pub use filter::{Filter, FilterBuilder};
pub use gate::{Closed, Gate};
pub use grpc::DELETED;
pub use hub::{Event, Hub, HubBlock, RING_BLOCKS, SubscriberGuard, Subscription};
pub use metrics::{FrontEnd, FrontEndMetrics, ServeMetrics};
pub use outbox::CLIENT_BUFFER;
pub use streamer::{ServeHandle, ServeStreamer};
