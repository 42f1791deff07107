use std::path::PathBuf;

/// Errors of the store. Every variant carries the context needed to act on
/// it. An I/O failure, a file that is not a database, a damaged header or an
/// undecodable change log entry is an error, never a panic of this crate.
///
/// Known limit: redb verifies page checksums only when it repairs a file
/// after an unclean shutdown, so bytes damaged inside the b-tree pages of a
/// cleanly closed file can go unnoticed or make redb itself panic on read,
/// unless the store is opened with
/// [`StoreOptions::verify_on_open`](crate::StoreOptions::verify_on_open),
/// which checks every page first and reports the damage as an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The same store name was given twice when opening.
    #[error("store key \"{0}\" is given more than once")]
    DuplicateStoreKey(String),

    /// An operation named a store that this multi-store does not hold.
    #[error("unknown store \"{store}\" (known stores: {known})")]
    UnknownStore { store: String, known: String },

    /// Keys must be non-empty (as in Cosmos, an empty key is a caller bug).
    #[error("empty key in store \"{store}\"")]
    EmptyKey { store: String },

    /// The database was created with another set of stores.
    #[error("database at {path} holds stores [{found}] but was opened with [{given}]")]
    StoreSetMismatch {
        path: PathBuf,
        found: String,
        given: String,
    },

    /// A previous commit failed half-way; the in-memory state may no longer
    /// match the database, so the handle refuses further work.
    #[error("the store is unusable after a failed commit at height {height}; reopen it")]
    Poisoned { height: u64 },

    /// The database file is open elsewhere (in another process, a running
    /// node most likely): its lock is taken.
    #[error("database at {path} is in use by another process (is the node running?)")]
    InUse { path: PathBuf },

    /// The embedded engine (redb) failed: I/O, locking, or internal error.
    #[error("database error at {path} while {action}: {source}")]
    Engine {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: Box<redb::Error>,
    },

    /// [`MultiStore::continue_at`](crate::MultiStore::continue_at) was given
    /// a height that is not after the next one.
    #[error("store at {path}: cannot continue at height {height}, the next height is {next}")]
    HeightNotAhead {
        path: PathBuf,
        height: u64,
        next: u64,
    },

    /// [`MultiStore::restore_snapshot`](crate::MultiStore::restore_snapshot)
    /// was given a height at or below the committed one, or not the chain
    /// values of exactly its stores.
    #[error("store at {path}: cannot restore a snapshot at height {height}: {reason}")]
    BadSnapshot {
        path: PathBuf,
        height: u64,
        reason: String,
    },

    /// Bytes read back from the database do not decode.
    #[error("corrupt database at {path}: {what}")]
    Corrupt { path: PathBuf, what: String },

    /// A change log entry was asked for that is not (or no longer) kept.
    #[error("height {height} is not in the change log (kept: {kept})")]
    NotInChangeLog { height: u64, kept: String },

    /// A name, record or metadata of the data model did not validate.
    #[error(transparent)]
    Data(#[from] statestream_core::Error),
}

/// Result type of the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn engine(
        path: &std::path::Path,
        action: &'static str,
        source: impl Into<redb::Error>,
    ) -> Error {
        Error::Engine {
            path: path.to_path_buf(),
            action,
            source: Box::new(source.into()),
        }
    }
}
