//! A Rust client of `statestream.v1.StateStream`: a resumable subscription
//! that keeps its cursor (the last height whose block it has seen end) in a
//! pluggable [`CursorStore`], resumes from it after any disconnect
//! (reconnecting with backoff) and on the next run, the way reflex
//! consumers keep their cursor table.
//!
//! ```no_run
//! # async fn demo() -> Result<(), statestream_serve::client::ClientError> {
//! use statestream_serve::client::{FileCursor, StartFrom, SubscribeOptions, ResumableSubscription, Update};
//! let options = SubscribeOptions::new("127.0.0.1:9090").start(StartFrom::Snapshot);
//! let mut sub = ResumableSubscription::new(options, FileCursor::new("cursor.txt"));
//! loop {
//!     match sub.next().await? {
//!         Update::Snapshot { entries, .. } => { /* load entries */ }
//!         Update::Block { height, changes, .. } => { /* apply changes; the cursor is at `height` */ }
//!         _ => {}
//!     }
//! }
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::proto::v1::{
    self, BlockChanges, Change, Entry, state_stream_client::StateStreamClient,
    subscribe_request::Start, subscribe_response::Message,
};

/// Why a client call failed (for good: retryable failures are retried).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not a URI.
    #[error("invalid server address {address:?}: {reason}")]
    Address { address: String, reason: String },
    /// The token cannot be sent in a header.
    #[error("invalid token: {0}")]
    Token(String),
    /// The server answered with a status that retrying cannot change.
    #[error("server: {}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The cursor store failed.
    #[error("cursor: {0}")]
    Cursor(#[source] std::io::Error),
}

/// Where a subscription keeps the last height it has fully received.
pub trait CursorStore: Send {
    /// The stored cursor, `None` when there is none yet.
    fn load(&mut self) -> std::io::Result<Option<u64>>;
    /// Stores the cursor after a block (or a snapshot) has ended.
    fn save(&mut self, height: u64) -> std::io::Result<()>;
}

/// A cursor kept in memory (lost with the process).
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryCursor(pub Option<u64>);

impl CursorStore for MemoryCursor {
    fn load(&mut self) -> std::io::Result<Option<u64>> {
        Ok(self.0)
    }
    fn save(&mut self, height: u64) -> std::io::Result<()> {
        self.0 = Some(height);
        Ok(())
    }
}

/// A cursor kept in a file, as decimal text, replaced atomically (written
/// to `<file>.tmp`, then renamed).
#[derive(Debug, Clone)]
pub struct FileCursor {
    path: PathBuf,
}

impl FileCursor {
    /// A cursor in `path` (created on the first save).
    pub fn new(path: impl AsRef<Path>) -> FileCursor {
        FileCursor {
            path: path.as_ref().to_path_buf(),
        }
    }
}

impl CursorStore for FileCursor {
    fn load(&mut self) -> std::io::Result<Option<u64>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse().map(Some).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: not a height (a decimal number)", self.path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save(&mut self, height: u64) -> std::io::Result<()> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, format!("{height}\n"))?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// Where a subscription without a cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// A snapshot of the current state, then the blocks after it.
    Snapshot,
    /// Every block from this height on.
    Height(u64),
    /// The blocks after the current head.
    Live,
}

/// What to subscribe to, and how.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    address: String,
    token: Option<String>,
    stores: Vec<String>,
    prefixes: Vec<(String, Vec<u8>)>,
    start: StartFrom,
    max_backoff: Duration,
}

impl SubscribeOptions {
    /// The server at `address` (`host:port` or `http://host:port`), every
    /// streamed store, live.
    pub fn new(address: &str) -> SubscribeOptions {
        SubscribeOptions {
            address: address.to_string(),
            token: None,
            stores: Vec::new(),
            prefixes: Vec::new(),
            start: StartFrom::Live,
            max_backoff: Duration::from_secs(5),
        }
    }

    /// Sends `authorization: Bearer <token>`.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// Selects a whole store.
    pub fn store(mut self, store: &str) -> Self {
        self.stores.push(store.to_string());
        self
    }

    /// Selects the keys of `store` that start with `prefix`.
    pub fn prefix(mut self, store: &str, prefix: &[u8]) -> Self {
        self.prefixes.push((store.to_string(), prefix.to_vec()));
        self
    }

    /// Where to start when the cursor store holds no cursor.
    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// The longest wait between reconnection attempts (default 5 s; the
    /// first is 100 ms, doubling).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let uri = if self.address.contains("://") {
            self.address.clone()
        } else {
            format!("http://{}", self.address)
        };
        Endpoint::from_shared(uri)
            .map(|e| e.connect_timeout(Duration::from_secs(5)))
            .map_err(|e| ClientError::Address {
                address: self.address.clone(),
                reason: e.to_string(),
            })
    }

    /// A request carrying the token.
    pub fn request<T>(&self, message: T) -> Result<Request<T>, ClientError> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            let value: MetadataValue<_> = format!("Bearer {token}")
                .parse()
                .map_err(|_| ClientError::Token("not valid in a header".into()))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }

    /// A connected client (for the unary calls: `ListStores`,
    /// `Snapshot`, `PushUpdate`).
    pub async fn connect(&self) -> Result<StateStreamClient<Channel>, ClientError> {
        let channel = self.endpoint()?.connect().await.map_err(|e| {
            ClientError::Status(tonic::Status::unavailable(format!("cannot connect: {e}")))
        })?;
        Ok(StateStreamClient::new(channel))
    }

    fn filter(&self) -> v1::Filter {
        v1::Filter {
            stores: self.stores.clone(),
            prefixes: self
                .prefixes
                .iter()
                .map(|(store, prefix)| v1::KeyPrefix {
                    store: store.clone(),
                    prefix: prefix.clone(),
                })
                .collect(),
        }
    }
}

/// One thing a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Part of the initial snapshot at `height`. `first`: the first part
    /// of a snapshot (after a reconnection during a snapshot, the snapshot
    /// starts again, maybe at another height: drop what the parts before
    /// gave). `end`: the state at `height` is complete.
    Snapshot {
        height: u64,
        time: Option<prost_types::Timestamp>,
        entries: Vec<Entry>,
        first: bool,
        end: bool,
    },
    /// One whole block: its net changes in the filter (maybe none).
    Block {
        height: u64,
        time: Option<prost_types::Timestamp>,
        changes: Vec<Change>,
    },
    /// The server is idle; its head height.
    Heartbeat { head: u64 },
    /// The connection failed or ended; the subscription reconnects after
    /// `delay` and resumes after its cursor.
    Reconnecting { reason: String, delay: Duration },
}

/// Whether a status is worth retrying (the server restarts, sheds a slow
/// client, or is full for now).
fn retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unavailable | Aborted | ResourceExhausted | Cancelled | Unknown | DeadlineExceeded
    )
}

/// A subscription that survives disconnects and restarts. Changes are
/// yielded per whole block, so a reconnection never repeats or skips one.
pub struct ResumableSubscription<C: CursorStore> {
    options: SubscribeOptions,
    cursor: C,
    stream: Option<tonic::Streaming<v1::SubscribeResponse>>,
    pending: Option<BlockChanges>,
    in_snapshot: bool,
    backoff: Duration,
    /// The wait before the next connection attempt.
    delay: Option<Duration>,
}

impl<C: CursorStore> std::fmt::Debug for ResumableSubscription<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumableSubscription")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);

impl<C: CursorStore> ResumableSubscription<C> {
    /// A subscription (it connects on the first [`next`](Self::next)).
    pub fn new(options: SubscribeOptions, cursor: C) -> Self {
        ResumableSubscription {
            options,
            cursor,
            stream: None,
            pending: None,
            in_snapshot: false,
            backoff: FIRST_BACKOFF,
            delay: None,
        }
    }

    /// The cursor store.
    pub fn cursor(&mut self) -> &mut C {
        &mut self.cursor
    }

    async fn open(&mut self) -> Result<Result<(), String>, ClientError> {
        let start = match self.cursor.load().map_err(ClientError::Cursor)? {
            Some(h) => Start::FromHeight(h + 1),
            None => match self.options.start {
                StartFrom::Snapshot => Start::Snapshot(v1::StartSnapshot {}),
                StartFrom::Height(h) => Start::FromHeight(h),
                StartFrom::Live => Start::Live(v1::StartLive {}),
            },
        };
        let endpoint = self.options.endpoint()?;
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return Ok(Err(format!("cannot connect: {e}"))),
        };
        let mut client = StateStreamClient::new(channel);
        let request = self.options.request(v1::SubscribeRequest {
            filter: Some(self.options.filter()),
            start: Some(start),
        })?;
        match client.subscribe(request).await {
            Ok(r) => {
                self.stream = Some(r.into_inner());
                self.pending = None;
                self.in_snapshot = false;
                Ok(Ok(()))
            }
            Err(s) if retryable(s.code()) => Ok(Err(format!("{}: {}", s.code(), s.message()))),
            Err(s) => Err(ClientError::Status(s)),
        }
    }

    fn reconnect(&mut self, reason: String) -> Update {
        self.stream = None;
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(self.options.max_backoff);
        self.delay = Some(delay);
        Update::Reconnecting { reason, delay }
    }

    /// The next update. Retryable failures come back as
    /// [`Update::Reconnecting`] (the next call waits `delay`, reconnects and
    /// resumes after the cursor); the others are errors.
    pub async fn next(&mut self) -> Result<Update, ClientError> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                if let Some(delay) = self.delay.take() {
                    tokio::time::sleep(delay).await;
                }
                if let Err(reason) = self.open().await? {
                    return Ok(self.reconnect(reason));
                }
                continue;
            };
            let message = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(self.reconnect("the server ended the stream".into())),
                Err(s) if retryable(s.code()) => {
                    return Ok(self.reconnect(format!("{}: {}", s.code(), s.message())));
                }
                Err(s) => return Err(ClientError::Status(s)),
            };
            self.backoff = FIRST_BACKOFF;
            match message.message {
                Some(Message::Snapshot(chunk)) => {
                    let first = !self.in_snapshot;
                    self.in_snapshot = !chunk.end;
                    if chunk.end {
                        self.cursor
                            .save(chunk.height)
                            .map_err(ClientError::Cursor)?;
                    }
                    return Ok(Update::Snapshot {
                        height: chunk.height,
                        time: chunk.time,
                        entries: chunk.entries,
                        first,
                        end: chunk.end,
                    });
                }
                Some(Message::Block(part)) => {
                    let block = match self.pending.take() {
                        Some(mut b) if b.height == part.height => {
                            b.changes.extend(part.changes);
                            b.end = part.end;
                            b
                        }
                        _ => part,
                    };
                    if !block.end {
                        self.pending = Some(block);
                        continue;
                    }
                    self.cursor
                        .save(block.height)
                        .map_err(ClientError::Cursor)?;
                    return Ok(Update::Block {
                        height: block.height,
                        time: block.time,
                        changes: block.changes,
                    });
                }
                Some(Message::Heartbeat(h)) => {
                    return Ok(Update::Heartbeat {
                        head: h.head_height,
                    });
                }
                None => continue,
            }
        }
    }
}
