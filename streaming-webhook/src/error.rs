use std::path::PathBuf;

use statestream_config::ConfigError;

/// Errors of the webhook streamer: building it from its options, and
/// delivering a block.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option is invalid; the error names the file, table, key and line.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// The dead-letter directory cannot be created.
    #[error("cannot create the dead-letter directory {}: {source}", path.display())]
    DeadLetterDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The endpoint answered 410 Gone. The streamer sends nothing more until
    /// the node is restarted with a changed configuration.
    #[error(
        "webhook {id}: {url} answered 410 Gone: the endpoint asked to be removed; \
         streamer \"{streamer}\" stops (remove it from app.toml or change its url)"
    )]
    Gone {
        streamer: String,
        id: String,
        url: String,
    },

    /// Every attempt of the retry schedule failed and `on_exhausted =
    /// "halt"`.
    #[error(
        "webhook {id} to {url} not delivered after {attempts} attempts (last: {last}); \
         on_exhausted = \"halt\""
    )]
    Exhausted {
        id: String,
        url: String,
        attempts: usize,
        last: String,
    },

    /// The node is shutting down while a delivery waits for its next
    /// attempt; the block is delivered again at the next start.
    #[error(
        "webhook {id}: not delivered before shutdown; block {height} is delivered again at the \
         next start"
    )]
    ShuttingDown { id: String, height: u64 },

    /// A request could not be written as a dead letter.
    #[error("webhook {id}: cannot write the dead letter {}: {source}", path.display())]
    DeadLetter {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A request could not be formed (a templated URL or header that is
    /// not valid once the change's values are in it).
    #[error("webhook {id}: cannot form the request to {url}: {reason}")]
    BadRequest {
        id: String,
        url: String,
        reason: String,
    },
}
