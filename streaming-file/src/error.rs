use std::path::PathBuf;

/// Errors of the file streamer and of the block-file reader. Every variant
/// about a file names it; those about its content give the height and, where
/// there is one, the byte offset in the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option of the streamer's `app.toml` table is invalid (the error
    /// names the file, the table, the key and its line).
    #[error(transparent)]
    Config(#[from] statestream_config::ConfigError),

    /// A prefix given to the reader is not a plain file-name fragment.
    #[error("invalid prefix {prefix:?}: {reason}")]
    BadPrefix {
        prefix: String,
        reason: &'static str,
    },

    /// `write_dir` could not be created, or is not writable.
    #[error("write directory {}: {what}: {source}", path.display())]
    WriteDir {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The directory to read is missing or is not a directory.
    #[error("block directory {}: {reason}", path.display())]
    NotADirectory { path: PathBuf, reason: String },

    /// Reading or writing a file failed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// Block `height` has no data file.
    #[error("{}: block {height} has no data file", path.display())]
    MissingBlock { path: PathBuf, height: u64 },

    /// A file is shorter than its 8-byte length header.
    #[error("{}: truncated header at offset 0: the file holds {size} bytes, the length header needs 8", path.display())]
    TruncatedHeader {
        path: PathBuf,
        height: u64,
        size: u64,
    },

    /// A file's length header disagrees with its size.
    #[error(
        "{}: length mismatch: the header at offset 0 announces {expected} payload bytes, the file holds {actual} after the header",
        path.display()
    )]
    HeaderLength {
        path: PathBuf,
        height: u64,
        expected: u64,
        actual: u64,
    },

    /// A meta file's `BlockMetadata` does not decode.
    #[error("{}: block metadata does not decode at offset 8: {reason}", path.display())]
    BadMeta {
        path: PathBuf,
        height: u64,
        reason: String,
    },

    /// A meta file's own checksum (`meta_crc32c`) disagrees with its bytes:
    /// the file changed after it was written.
    #[error(
        "{}: meta checksum mismatch: the checksum at the end of the metadata is {expected:08x}, the metadata's CRC-32C is {actual:08x}",
        path.display()
    )]
    MetaCrc {
        path: PathBuf,
        height: u64,
        expected: u32,
        actual: u32,
    },

    /// A meta file describes another height than its name says.
    #[error("{}: height mismatch: the metadata says height {actual}, the file name {expected}", path.display())]
    MetaHeight {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    /// The data file's payload length disagrees with its meta file.
    #[error(
        "{}: length mismatch: the meta file says the payload holds {expected} bytes, it holds {actual}",
        path.display()
    )]
    PayloadLength {
        path: PathBuf,
        height: u64,
        expected: u64,
        actual: u64,
    },

    /// The data file's payload CRC-32C disagrees with its meta file.
    #[error(
        "{}: crc mismatch: the meta file says the payload's CRC-32C is {expected:08x}, it is {actual:08x}",
        path.display()
    )]
    Crc {
        path: PathBuf,
        height: u64,
        expected: u32,
        actual: u32,
    },

    /// A record of a data file does not decode. `offset` is the byte offset
    /// of the record in the file (8 + its offset in the payload).
    #[error("{}: bad record at offset {offset}: {reason}", path.display())]
    BadRecord {
        path: PathBuf,
        height: u64,
        offset: u64,
        reason: String,
    },

    /// The records of a data file are not ordered by store, then key.
    #[error("{}: records out of order at offset {offset}: {reason}", path.display())]
    Order {
        path: PathBuf,
        height: u64,
        offset: u64,
        reason: String,
    },
}

impl Error {
    /// The height the error is about, when it is about one block.
    pub fn height(&self) -> Option<u64> {
        match self {
            Error::MissingBlock { height, .. }
            | Error::TruncatedHeader { height, .. }
            | Error::HeaderLength { height, .. }
            | Error::BadMeta { height, .. }
            | Error::MetaCrc { height, .. }
            | Error::PayloadLength { height, .. }
            | Error::Crc { height, .. }
            | Error::BadRecord { height, .. }
            | Error::Order { height, .. } => Some(*height),
            Error::MetaHeight { expected, .. } => Some(*expected),
            _ => None,
        }
    }
}
