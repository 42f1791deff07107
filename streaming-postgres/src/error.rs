//! Errors of the postgres streamer.

/// Errors of the postgres streamer: connecting, checking the schema and
/// writing blocks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// No server answered (refused, timed out, unreachable host). The
    /// streamer tries again at the next block.
    #[error("cannot reach PostgreSQL at {target}: {reason}")]
    Unreachable { target: String, reason: String },

    /// The server refused the login (wrong password,
    /// unknown user, missing database) or the TLS handshake failed.
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    Connect { target: String, reason: String },

    /// A statement failed; `what` says which step of the streamer it was.
    #[error("PostgreSQL at {target}: {what}: {reason}")]
    Query {
        target: String,
        what: String,
        reason: String,
    },

    /// A table the streamer needs does not exist and `create_schema =
    /// false`.
    #[error(
        "table {schema}.{table} does not exist and create_schema = false (create it as docs/postgres.md shows, or set create_schema = true)"
    )]
    MissingTable { schema: String, table: String },

    /// A table exists with columns other than the streamer's.
    #[error("table {schema}.{table}, column {column}: {reason}")]
    Conflict {
        schema: String,
        table: String,
        column: String,
        reason: String,
    },

    /// The database's cursor for this streamer is behind the block to
    /// write: the blocks between are not in the database (it was restored
    /// from an older backup, or rows were deleted), and the node no longer
    /// delivers them.
    #[error(
        "streamer {streamer:?}: the database holds blocks up to {cursor} but block {height} \
         is next: blocks {} to {} are missing from the database",
        cursor + 1, height - 1
    )]
    Gap {
        streamer: String,
        cursor: u64,
        height: u64,
    },

    /// Another writer moved this streamer's cursor while the block was
    /// being written (two nodes streaming under one name).
    #[error(
        "streamer {streamer:?}: the cursor in the database is already at or past {height}: \
         is another node streaming to this schema under the same name?"
    )]
    CursorMoved { streamer: String, height: u64 },

    /// A value does not fit PostgreSQL's types (a height above i64::MAX).
    #[error("block {height}: {reason}")]
    OutOfRange { height: u64, reason: String },

    /// The node is stopping and a statement still running after the grace
    /// period was cancelled; nothing more is written until the next start,
    /// which resumes from the cursor in the database.
    #[error(
        "PostgreSQL at {target}: block {height} not written: the node is stopping and the \
         statement still running after {grace_ms} ms was cancelled; the next start resumes \
         from the cursor in the database"
    )]
    Stopped {
        target: String,
        height: u64,
        grace_ms: u64,
    },

    /// `password_file` or `ca_file` could not be read or used.
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// Result type of this crate.
pub type Result<T, E = PostgresError> = std::result::Result<T, E>;

/// The text of a client error: for an error the server reported, its
/// message, SQLSTATE code, detail and hint; otherwise the chain of causes
/// (the client's own `Display` often says only "db error").
pub(crate) fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            s.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            s.push_str(&format!("; hint: {hint}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}
