use statestream_config::ConfigError;
use statestream_core::{BoxError, StreamError};

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

    /// A streamer's type refused its options (found without building it).
    #[error("streamer \"{streamer}\" (type \"{type_name}\") is invalid: {source}")]
    Invalid {
        streamer: String,
        type_name: String,
        #[source]
        source: BoxError,
    },

    /// Two streamers would write the same place (a directory and prefix, a
    /// stream, a table's rows): each would overwrite or interleave with the
    /// other's output.
    #[error(
        "streamers \"{first}\" and \"{second}\" both write to {destination}: give each a place of its own"
    )]
    SameDestination {
        first: String,
        second: String,
        destination: String,
    },

    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// The store failed.
    #[error(transparent)]
    Store(#[from] statestream_store::Error),

    /// The node's credentials (a system table of the store) cannot be read.
    #[error("credentials: {0}")]
    Credentials(#[from] statestream_access::AccessError),

    /// A name, record or block metadata did not validate or decode.
    #[error(transparent)]
    Data(#[from] statestream_core::Error),

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

    /// A hook failed while starting or closing a streamer.
    #[error("streamer \"{streamer}\" failed to {action}: {source}")]
    Lifecycle {
        streamer: String,
        action: &'static str,
        #[source]
        source: StreamError,
    },

    /// Two streamers were given the same name (their cursors would clash).
    #[error("streamer \"{streamer}\": two streamers have this name")]
    DuplicateName { streamer: String },

    /// A streamer's cursor is below the oldest block the change log keeps.
    #[error(
        "streamer \"{streamer}\": its cursor is at height {cursor} but blocks {first_missing}..={last_missing} \
         are no longer in the change log (it is pruned below the lowest cursor of the configured \
         streamers, and this one was left out of the configuration meanwhile); to start it with \
         the next block instead, give its [streamers.<name>] table a new name or delete its cursor \
         (MultiStore::delete_cursor; for the demo node, `statestream cursors --home HOME --delete \
         {streamer}`)"
    )]
    CursorPruned {
        streamer: String,
        cursor: u64,
        first_missing: u64,
        last_missing: u64,
    },

    /// An async streamer's worker thread could not be started.
    #[error("streamer \"{streamer}\": cannot start its worker thread: {source}")]
    Spawn {
        streamer: String,
        #[source]
        source: std::io::Error,
    },

    /// A source gave a block that cannot be committed as it is.
    #[error("source block at height {height}: {reason}")]
    BadSourceBlock { height: u64, reason: String },

    /// A source skipped heights and the pipeline is set to refuse that
    /// (`on_gap = "halt"`). The gap is recorded; the block is not committed.
    #[error(
        "source block at height {height}: heights {first_missing}..={last_missing} were never received (the source committed them while statestream was not there); refused (on_gap = \"halt\")"
    )]
    SourceGap {
        height: u64,
        first_missing: u64,
        last_missing: u64,
    },

    /// A source gave a height again with another app hash than the one kept
    /// for it.
    #[error(
        "source block at height {height} given again with app hash {given}, but the replica kept {kept} for it: the source diverged"
    )]
    SourceDiverged {
        height: u64,
        kept: String,
        given: String,
    },

    /// A source's block does not give the hash chain value (or the app
    /// hash) the source says it committed: the replica refused it.
    #[error(
        "block {height} diverges from its source in store \"{store}\": the source's hash is {expected}, the replica computes {computed}"
    )]
    BlockDiverged {
        height: u64,
        /// The store, or `*app_hash*` for the app hash.
        store: String,
        expected: String,
        computed: String,
    },

    /// A source's snapshot does not hold what a replica restores.
    #[error("the source's snapshot at height {height} cannot be restored: {reason}")]
    BadSnapshot { height: u64, reason: String },

    /// An async streamer's worker thread panicked.
    #[error("streamer \"{streamer}\": its worker thread panicked")]
    WorkerPanicked { streamer: String },

    /// A streamer was added at run time to a manager that is closing or
    /// closed.
    #[error("streamer \"{streamer}\": the delivery manager is closed; no streamer can be added")]
    ManagerClosed { streamer: String },

    /// A run-time operation named a streamer the manager does not run or
    /// hold a cursor for.
    #[error("streamer \"{streamer}\": no such run-time streamer")]
    UnknownRuntimeStreamer { streamer: String },

    /// A streamer added at run time names a store the node does not have.
    #[error("streamer \"{streamer}\": unknown store \"{store}\" (the stores: {known})")]
    RuntimeUnknownStore {
        streamer: String,
        store: String,
        known: String,
    },

    /// A streamer added at run time must be async: sync streamers run on
    /// the committing thread, which a run-time caller does not own.
    #[error(
        "streamer \"{streamer}\": a streamer added at run time must be async (delivery = \"async\")"
    )]
    RuntimeSync { streamer: String },

    /// A streamer added at run time was asked to start at a height not
    /// committed yet.
    #[error(
        "streamer \"{streamer}\": cannot start at height {height}: the committed height is {committed} (start at most at {next}, the next block)",
        next = committed + 1
    )]
    StartAhead {
        streamer: String,
        height: u64,
        committed: u64,
    },

    /// A streamer added at run time was asked to start (or resume) at a
    /// height the change log no longer keeps.
    #[error(
        "streamer \"{streamer}\": cannot start at height {height}: the change log keeps blocks from {first_kept} on"
    )]
    StartPruned {
        streamer: String,
        height: u64,
        first_kept: u64,
    },
}

/// Result type of the streaming layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
