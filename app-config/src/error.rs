//! The one error type of this crate.

use std::fmt;
use std::path::{Path, PathBuf};

/// An error in an `app.toml` file, or in the options handed to a streamer.
///
/// Every variant names the file it comes from. Variants about a key also name
/// the table (`[store]`, `[streamers.file]`), the key as the user spelled it
/// and, when known, its 1-based line, so that the message alone is enough to
/// fix the file:
///
/// ```text
/// /home/n/config/app.toml: [streamers.file] key `queue` (line 12): expected a positive integer, got string "big"
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{}: invalid toml at line {line}, column {column}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The TOML parser's message.
        message: String,
    },
    /// A key is unknown, missing, of the wrong type or has a bad value.
    #[error("{}: {table} key `{key}`{}: {message}", path.display(), LineSuffix(*line))]
    Key {
        /// The file (`<inline>` for options built in code).
        path: PathBuf,
        /// The table, as written in TOML: `[store]`, `[streamers.file]`.
        table: String,
        /// The key as the user spelled it (`stop-node-on-error` or `stop_node_on_error`).
        key: String,
        /// 1-based line of the key, or of the table when the key is missing.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A table is wrong as a whole, and no single key can be blamed.
    #[error("{}: {table}{}: {message}", path.display(), LineSuffix(*line))]
    Table {
        /// The file (`<inline>` for options built in code).
        path: PathBuf,
        /// The table, as written in TOML: `[store]`, `[streamers.file]`.
        table: String,
        /// 1-based line of the table, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. }
            | ConfigError::Syntax { path, .. }
            | ConfigError::Key { path, .. }
            | ConfigError::Table { path, .. } => path,
        }
    }

    /// The table the error is about (`[streamers.file]`), if any.
    pub fn table(&self) -> Option<&str> {
        match self {
            ConfigError::Key { table, .. } | ConfigError::Table { table, .. } => Some(table),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }

    /// The key the error is about, as the user spelled it, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Key { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The 1-based line the error is about, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Syntax { line, .. } => Some(*line),
            ConfigError::Key { line, .. } | ConfigError::Table { line, .. } => *line,
            ConfigError::Read { .. } => None,
        }
    }
}

/// Formats an optional line as ` (line N)`, or nothing.
struct LineSuffix(Option<usize>);

impl fmt::Display for LineSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, " (line {line})"),
            None => Ok(()),
        }
    }
}
