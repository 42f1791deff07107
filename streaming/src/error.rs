use statestream_config::ConfigError;

/// A boxed error from a streamer or constructor.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error a [`Streamer`](crate::Streamer) hook returns.
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

/// Errors of the streaming layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `type` names no registered streamer type.
    #[error("streamer \"{streamer}\": unknown type \"{type_name}\" (known types: {known})")]
    UnknownType {
        streamer: String,
        type_name: String,
        known: String,
    },

    /// A streamer's constructor failed (bad options, unwritable directory...).
    #[error("streamer \"{streamer}\" (type \"{type_name}\") could not be built: {source}")]
    Build {
        streamer: String,
        type_name: String,
        #[source]
        source: BoxError,
    },

    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// The store failed.
    #[error(transparent)]
    Store(#[from] statestream_store::Error),

    /// A streamer with `stop-node-on-error = true` failed to deliver a block:
    /// the node must stop committing. The block and all blocks before it are
    /// committed and kept in the change log; after a restart the streamer
    /// resumes from its cursor.
    #[error(
        "streamer \"{streamer}\" failed at height {height}: {message}; the node stops (stop-node-on-error = true)"
    )]
    Halted {
        streamer: String,
        height: u64,
        message: String,
    },

    /// A block's stored metadata did not decode.
    #[error("block {height}: stored block metadata does not decode: {reason}")]
    BadMetadata { height: u64, reason: String },

    /// A hook failed while starting or closing a streamer.
    #[error("streamer \"{streamer}\" failed to {action}: {source}")]
    Lifecycle {
        streamer: String,
        action: &'static str,
        #[source]
        source: StreamError,
    },

    /// A worker thread could not be started or panicked.
    #[error("streamer \"{streamer}\": {what}")]
    Worker { streamer: String, what: String },
}

/// Result type of the streaming layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
