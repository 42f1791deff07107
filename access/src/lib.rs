//! `statestream-access`: the credentials of a node's `serve` front-ends,
//! shared by the streamer, the admin API (`statestream-admin`), the CLI
//! and run-time subscriptions.
//!
//! A [`Credential`] has an id, scopes (stores and key prefixes it may
//! read), permissions (`push`, `subscribe_webhooks`), a `max_streams`
//! limit, an optional expiry and a description. Its secret,
//! `ss_<id>_<random>` with 256 random bits from the OS, is shown once;
//! only its SHA-256 is kept, in the node's store (the system table
//! `credentials`). A rotation keeps the old secret valid for a grace
//! period; a revocation keeps the record, marked revoked. Every change is
//! written to the store, then to the in-memory view, then announced
//! ([`Registry::changes`]) so open streams re-check at once.
//!
//! ```
//! use statestream_access::{NewCredential, Registry, Scope};
//!
//! let registry = Registry::in_memory();
//! let (wallet, secret) = registry.create(NewCredential {
//!     id: "wallet".into(),
//!     scopes: vec![Scope { store: "bank".into(), prefixes: vec![b"balances/".to_vec()] }],
//!     push: false,
//!     subscribe_webhooks: false,
//!     max_streams: Some(10),
//!     expires_at: None,
//!     description: "the wallet backend".into(),
//! })?;
//! let who = registry.authenticate(secret.expose())?;
//! assert_eq!(who.credential.id, wallet.id);
//! registry.revoke("wallet")?;
//! assert!(registry.authenticate(secret.expose()).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod error;
mod install;
mod model;
mod registry;
mod secret;
mod time;

pub use error::{AccessError, AuthError};
pub use install::{Installation, install, installed};
pub use model::{
    ANY_STORE, Credential, CredentialPatch, MAX_ID_LEN, NewCredential, Rotation, Scope, ScopeText,
    check_id, prefix_from_text, prefix_to_text,
};
pub use registry::{
    AUDIT_TARGET, Authenticated, CounterValues, Counters, Registry, StreamSlot, TABLE,
};
pub use secret::{Secret, constant_time_eq};
pub use time::{format_rfc3339, now, parse_rfc3339};
