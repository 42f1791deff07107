//! The errors of the `serve` streamer and of its client.

use std::net::SocketAddr;

/// Why the `serve` streamer could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The streamer was built without read access to the store.
    #[error(
        "streamer {streamer:?}: `serve` needs read access to the store (build it through the delivery manager)"
    )]
    NoReader { streamer: String },
    /// The async runtime could not be created.
    #[error("streamer {streamer:?}: cannot start the async runtime: {source}")]
    Runtime {
        streamer: String,
        #[source]
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("streamer {streamer:?}: cannot listen on {address} ({key}): {reason}")]
    Bind {
        streamer: String,
        /// The option that names the address.
        key: &'static str,
        address: SocketAddr,
        reason: String,
    },
    /// The TLS files could not be read, or do not go together.
    #[error("streamer {streamer:?}: {key}: {reason}")]
    Tls {
        streamer: String,
        /// The option that names the file at fault.
        key: &'static str,
        reason: String,
    },
    /// Reading the store failed.
    #[error("streamer {streamer:?}: cannot read the store: {source}")]
    Store {
        streamer: String,
        #[source]
        source: statestream_core::StreamError,
    },
}

/// Why a subscription (of any front-end) ended, or could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// A height below the retained window (or above the head).
    #[error("height {height} is not available: {reason}")]
    OutOfRange { height: u64, reason: String },
    /// A filter names something that is not streamed, or is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// Too many subscribers.
    #[error("{0} subscribers already: the limit (max_subscribers) is reached; try again later")]
    TooManySubscribers(usize),
    /// Too many one-shot snapshots being read.
    #[error(
        "{0} one-shot snapshots are being read already: the limit (max_snapshots) is reached; try again later"
    )]
    TooManySnapshots(usize),
    /// The server is shutting down.
    #[error("the server is shutting down; resume from the height after the last block you saw end")]
    ShuttingDown,
    /// Reading the store failed.
    #[error("cannot read the store: {0}")]
    Store(String),
}
