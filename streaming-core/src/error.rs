//! Errors of the data model, and the error streamers return.

/// A boxed error from a streamer, a constructor or a read.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the data model: names, records and metadata that do not
/// validate or decode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A store name failed validation.
    #[error("invalid store key \"{name}\": {reason}")]
    InvalidStoreKey { name: String, reason: &'static str },

    /// A record of the canonical record encoding did not decode.
    #[error("bad record at byte {offset}: {reason}")]
    BadRecord { offset: usize, reason: &'static str },

    /// A block's stored metadata did not decode.
    #[error("block {height}: stored block metadata does not decode: {reason}")]
    BadMetadata { height: u64, reason: String },

    /// The parts of a stored change set do not fit together.
    #[error("change set {height}, store {store}: {reason}")]
    BadChangeSet {
        height: u64,
        store: String,
        reason: String,
    },
}

/// Result type of the data model.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error a [`Streamer`](crate::Streamer) hook (or a read through
/// [`StateReader`](crate::StateReader)) returns: any error, boxed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StreamError(BoxError);

impl StreamError {
    /// Wraps any error.
    pub fn new(error: impl Into<BoxError>) -> StreamError {
        StreamError(error.into())
    }

    /// An error made of a message.
    pub fn msg(message: impl std::fmt::Display) -> StreamError {
        StreamError(message.to_string().into())
    }

    /// The wrapped error.
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

impl From<std::io::Error> for StreamError {
    fn from(e: std::io::Error) -> Self {
        StreamError::new(e)
    }
}

impl From<Error> for StreamError {
    fn from(e: Error) -> Self {
        StreamError::new(e)
    }
}
