//! Errors of the subscription engine; each maps to one HTTP status of the
//! API ([`Error::http_status`]).

/// Errors of the subscription engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is invalid: the field and why. Nothing was created or
    /// changed.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },

    /// No subscription has this id (or it is not the caller's).
    #[error("subscription {id:?}: not found")]
    NotFound { id: String },

    /// The operation does not fit the subscription's state.
    #[error("subscription {id:?}: {message}")]
    Conflict { id: String, message: String },

    /// A replay asks for heights the change log no longer keeps.
    #[error(
        "subscription {id:?}: heights {first_missing}..={last_missing} are no longer retained (the change log keeps {kept})"
    )]
    NotRetained {
        id: String,
        first_missing: u64,
        last_missing: u64,
        kept: String,
    },

    /// The engine is closed (the node is stopping).
    #[error("the subscription engine is closed")]
    Closed,

    /// The store failed.
    #[error("subscription store: {0}")]
    Store(#[from] statestream_store::Error),

    /// The delivery manager refused (a start height pruned or not
    /// committed yet, the manager closing).
    #[error(transparent)]
    Manager(#[from] statestream::Error),

    /// A record in the store does not decode.
    #[error("subscription record {id:?} does not decode: {message}")]
    Corrupt { id: String, message: String },

    /// A webhook request could not be formed.
    #[error(transparent)]
    Webhook(#[from] statestream_webhook::Error),

    /// The system's random source failed (a secret or id could not be
    /// made).
    #[error("cannot read random bytes: {0}")]
    Random(#[source] std::io::Error),
}

impl Error {
    pub(crate) fn invalid(field: &str, message: String) -> Error {
        Error::Invalid {
            field: field.to_owned(),
            message,
        }
    }

    /// The HTTP status the admin API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::Invalid { .. } | Error::NotRetained { .. } => 400,
            Error::Manager(
                statestream::Error::StartAhead { .. } | statestream::Error::StartPruned { .. },
            ) => 400,
            Error::NotFound { .. } => 404,
            Error::Conflict { .. } => 409,
            Error::Closed => 503,
            _ => 500,
        }
    }
}

/// Result type of the subscription engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
