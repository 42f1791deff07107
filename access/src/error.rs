//! The errors of the credential registry.

/// Why a change to the credentials was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The request is not valid (an id, a scope, a prefix, a time).
    #[error("{0}")]
    Invalid(String),
    /// No credential has this id.
    #[error("no credential {id:?}")]
    NotFound { id: String },
    /// A credential with this id exists (and is not revoked).
    #[error("credential {id:?} exists")]
    Exists { id: String },
    /// The credential is revoked: it can be created anew, not changed.
    #[error("credential {id:?} is revoked")]
    Revoked { id: String },
    /// The OS random number generator failed.
    #[error("cannot draw a secret from the OS random number generator: {0}")]
    Random(String),
    /// A stored credential cannot be read back.
    #[error("stored credential {id:?} cannot be read: {reason}")]
    Corrupt { id: String, reason: String },
    /// The store failed.
    #[error("credential store: {0}")]
    Store(#[from] statestream_store::Error),
}

/// Why a request's secret does not authenticate it. Every variant is
/// `UNAUTHENTICATED` / 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The secret is not of the form `ss_<id>_<random>`, or names no
    /// credential, or is not (or no longer) one of its secrets.
    #[error("unknown credential")]
    Unknown,
    /// The credential was revoked.
    #[error("credential {id:?} is revoked")]
    Revoked { id: String },
    /// The credential's `expires_at` has passed.
    #[error("credential {id:?} expired")]
    Expired { id: String },
}
