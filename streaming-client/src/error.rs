//! The errors of the client and of its cursor stores.

use std::path::PathBuf;

/// Why a client call failed for good (retryable failures are retried and
/// reported as [`Update::Reconnecting`](crate::Update::Reconnecting)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The address is not a URI.
    #[error("invalid server address {address:?}: {reason}")]
    Address { address: String, reason: String },
    /// TLS with the server failed: its certificate does not verify against
    /// the CA file, it refused ours, or a file cannot be read.
    #[error("TLS with {endpoint}: {reason}")]
    Tls { endpoint: String, reason: String },
    /// The token cannot be sent in a header.
    #[error("invalid token: {0}")]
    Token(String),
    /// The server answered with a status that retrying cannot change.
    #[error("server: {}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The cursor store failed.
    #[error(transparent)]
    Cursor(#[from] CursorError),
    /// [`ResumableSubscription::ack`](crate::ResumableSubscription::ack)
    /// named a height the subscription has not yet given whole.
    #[error(
        "cannot acknowledge height {height}: the last height received whole is {}",
        .received.map_or_else(|| "none".to_string(), |h| h.to_string())
    )]
    AckAhead { height: u64, received: Option<u64> },
}

/// Why a [`CursorStore`](crate::CursorStore) could not load or save.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CursorError {
    /// The cursor file exists but cannot be read.
    #[error("cannot read the cursor file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The cursor file does not hold a height: it was not written by
    /// [`FileCursor`](crate::FileCursor), or was edited. Resuming from a
    /// guess could skip blocks, so this is an error until the file is fixed
    /// or removed.
    #[error(
        "the cursor file {} does not hold a height (one decimal number): {text:?}",
        .path.display()
    )]
    Parse { path: PathBuf, text: String },
    /// Saving `height` failed at `step`; the file still holds the height
    /// saved before.
    #[error("cannot save height {height} in the cursor file {} ({step}): {source}", .path.display())]
    Write {
        path: PathBuf,
        height: u64,
        step: &'static str,
        source: std::io::Error,
    },
    /// A cursor store of the application's own failed.
    #[error("cursor store: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}
