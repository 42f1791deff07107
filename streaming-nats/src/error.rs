use std::time::Duration;

/// Errors of the streamer, the reader and the replay. Messages show URLs
/// without credentials and never a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// A server address does not parse.
    #[error("invalid NATS url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },

    /// No server of the list could be reached, or the handshake failed
    /// (TLS, authentication). The url is shown without credentials, and
    /// the reason never contains a secret.
    #[error("cannot connect to {url}: {reason}")]
    Unreachable { url: String, reason: String },

    /// The connection was lost and did not come back in time (the client
    /// keeps reconnecting in the background).
    #[error("cannot connect to {url}: the connection is lost and not back after {} ms{}", waited.as_millis(), last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    Disconnected {
        url: String,
        waited: Duration,
        last_error: Option<String>,
    },

    /// A credentials, key or certificate file cannot be used.
    #[error("{key} {path}: {reason}")]
    File {
        key: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },

    /// The streamer's async runtime could not be started.
    #[error("cannot start the NATS client's runtime: {0}")]
    Runtime(#[source] std::io::Error),

    /// The node is shutting down: a wait for the server was cut short.
    #[error("the node is shutting down")]
    ShuttingDown,

    /// A request to the server failed (not a refusal by JetStream).
    #[error("{url}: {what} failed: {reason}")]
    Request {
        url: String,
        what: String,
        reason: String,
    },

    /// The server did not answer in time.
    #[error("{url}: no answer to {what} within {} ms", timeout.as_millis())]
    Timeout {
        url: String,
        what: String,
        timeout: Duration,
    },

    /// The server's limits do not allow what the streamer must do (a
    /// `max_payload` too small to split blocks into).
    #[error("{url}: {message}")]
    Unsupported { url: String, message: String },

    /// Nobody listens on a subject: JetStream is not enabled on the server,
    /// or no stream captures the subject.
    #[error("{url}: no responders on {subject}: {hint}")]
    NoResponders {
        url: String,
        subject: String,
        hint: String,
    },

    /// A JetStream API call or a publish was refused.
    #[error("JetStream {api} failed: {description} (code {code}, err_code {err_code})")]
    JetStream {
        api: String,
        code: u32,
        err_code: u32,
        description: String,
    },

    /// The stream does not exist and the streamer may not create it.
    #[error("JetStream stream {stream:?} does not exist and create_stream = false")]
    MissingStream { stream: String },

    /// A block was stored by another stream than the configured one (two
    /// streams' subjects overlap).
    #[error(
        "block {height} was stored in stream {got:?}, not in the configured stream {want:?}: \
         check the streams' subjects"
    )]
    WrongStream {
        height: u64,
        got: String,
        want: String,
    },

    /// JetStream refused a block because its subject belongs to another
    /// stream than the configured one (`Nats-Expected-Stream`).
    #[error(
        "block {height}: subject {subject} is not captured by the configured stream {want:?} \
         ({description}): check the streams' subjects"
    )]
    StreamMismatch {
        height: u64,
        subject: String,
        want: String,
        description: String,
    },

    /// The stream holds some parts of a split block, and they are not the
    /// parts of the node's block: publishing the missing ones under the
    /// same message ids would make a block that does not decode.
    #[error(
        "stream {stream:?} holds parts of block {height} that are not the node's block \
         ({reason}): remove that block's messages from the stream before publishing it again"
    )]
    StoredPartsDiffer {
        stream: String,
        height: u64,
        reason: String,
    },

    /// A JSON answer of the server does not decode.
    #[error("{what}: unexpected answer from the server: {reason}")]
    BadAnswer { what: String, reason: String },

    /// A stored message is not a valid block message, or the stream's
    /// blocks are not contiguous.
    #[error("stream {stream:?}, message {seq}: {reason}")]
    BadMessage {
        stream: String,
        seq: u64,
        reason: String,
    },

    /// Rebuilding the state from the stream failed a check.
    #[error("replay of stream {stream:?}, block {height}: {reason}")]
    Replay {
        stream: String,
        height: u64,
        reason: String,
    },

    /// The replay's sink refused a block.
    #[error("replay: block {height} could not be applied: {source}")]
    Sink {
        height: u64,
        #[source]
        source: statestream_core::BoxError,
    },

    /// A follower's next height is no longer in the stream (removed by
    /// the stream's limits, or the stream was purged): the reader must
    /// start over from a snapshot.
    #[error(
        "stream {stream:?} no longer holds block {height}{}",
        match first { Some(f) => format!(" (its first block is now {f})"), None => " (it holds no block)".to_string() }
    )]
    HeightGone {
        stream: String,
        height: u64,
        first: Option<u64>,
    },

    /// The stream a follower reads does not exist on the server.
    #[error("{url}: JetStream stream {stream:?} does not exist")]
    NoStream { url: String, stream: String },

    /// A stored record or store name did not validate.
    #[error(transparent)]
    Data(#[from] statestream_core::Error),
}

impl NatsError {
    /// Whether this error is a timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, NatsError::Timeout { .. })
    }

    /// Whether this error is about the connection or the server's
    /// availability (lost connection, timeout, JetStream not answering,
    /// a request that failed): trying again later may succeed. Errors
    /// about what the stream holds, files and options are not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            NatsError::Unreachable { .. }
                | NatsError::Disconnected { .. }
                | NatsError::Request { .. }
                | NatsError::Timeout { .. }
                | NatsError::NoResponders { .. }
                | NatsError::JetStream { .. }
                | NatsError::NoStream { .. }
        )
    }
}

/// Result type of this crate.
pub type Result<T, E = NatsError> = std::result::Result<T, E>;
