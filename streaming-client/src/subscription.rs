//! A subscription that resumes after disconnects and restarts, with a
//! cursor that follows what the consumer acknowledges.

use std::time::Duration;

use crate::cursor::CursorStore;
use crate::error::ClientError;
use crate::options::{StartFrom, SubscribeOptions};
use crate::proto::v1::{
    self, BlockChanges, Change, Entry, subscribe_request::Start, subscribe_response::Message,
};

/// One thing a subscription yields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
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
        /// The hashes at `height`, on the last part (`end`); empty on the
        /// others and from servers that do not send them.
        hashes: BlockHashes,
    },
    /// One whole block: its net changes in the filter (maybe none).
    Block {
        height: u64,
        time: Option<prost_types::Timestamp>,
        changes: Vec<Change>,
        /// The hashes the server committed the block with (empty from
        /// servers that do not send them).
        hashes: BlockHashes,
    },
    /// The server is idle; its head height.
    Heartbeat { head: u64 },
    /// The connection failed or ended; the subscription reconnects after
    /// `delay` and resumes after the last height it gave whole.
    Reconnecting { reason: String, delay: Duration },
}

/// The hashes a server sends with a block's last message and a snapshot's
/// last chunk (see docs/serve.md, "Hashes").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockHashes {
    /// statestream's app hash after the block, over every store of the
    /// server's node.
    pub app_hash: Vec<u8>,
    /// The hash chain value of each store the server streams, in name
    /// order.
    pub store_hashes: Vec<v1::StoreHash>,
    /// The app hash of the chain the server's node replicates (empty on a
    /// node's own blocks).
    pub source_app_hash: Vec<u8>,
}

impl Update {
    /// The height to [acknowledge](ResumableSubscription::ack) once this
    /// update is handled: a block's, or a snapshot's when this is its last
    /// part. `None` for the other updates (nothing to save).
    pub fn ack_height(&self) -> Option<u64> {
        match self {
            Update::Block { height, .. }
            | Update::Snapshot {
                height, end: true, ..
            } => Some(*height),
            _ => None,
        }
    }
}

/// Whether a status is worth retrying (the server restarts, sheds a slow
/// client, or is full for now).
pub(crate) fn retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unavailable | Aborted | ResourceExhausted | Cancelled | Unknown | DeadlineExceeded
    )
}

/// The first wait before a reconnection; it doubles up to
/// [`SubscribeOptions::max_backoff`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A subscription that survives disconnects and restarts, delivering at
/// least once.
///
/// Changes are yielded per whole block, so a reconnection never repeats or
/// skips one within a run. The cursor store holds the last height the
/// consumer has **acknowledged** with [`ack`](Self::ack) (never one it has
/// merely received): a consumer that stops or crashes between receiving a
/// block and handling it gets that block again on its next run. A consumer
/// that never acknowledges starts where the options say on every run.
pub struct ResumableSubscription<C: CursorStore> {
    options: SubscribeOptions,
    cursor: C,
    stream: Option<tonic::Streaming<v1::SubscribeResponse>>,
    pending: Option<BlockChanges>,
    in_snapshot: bool,
    backoff: Duration,
    /// The wait before the next connection attempt.
    delay: Option<Duration>,
    /// Whether the cursor store has been read (once, before the first
    /// connection).
    loaded: bool,
    /// The last height given whole (a block, or a snapshot's end), or
    /// loaded from the cursor store: reconnections within this run resume
    /// after it, since the consumer holds everything up to it.
    received: Option<u64>,
    /// The last height saved in the cursor store.
    saved: Option<u64>,
}

impl<C: CursorStore> std::fmt::Debug for ResumableSubscription<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumableSubscription")
            .field("options", &self.options)
            .field("received", &self.received)
            .field("saved", &self.saved)
            .finish_non_exhaustive()
    }
}

impl<C: CursorStore> ResumableSubscription<C> {
    /// A subscription (it loads its cursor and connects on the first
    /// [`next`](Self::next)).
    pub fn new(options: SubscribeOptions, cursor: C) -> Self {
        ResumableSubscription {
            options,
            cursor,
            stream: None,
            pending: None,
            in_snapshot: false,
            backoff: FIRST_BACKOFF,
            delay: None,
            loaded: false,
            received: None,
            saved: None,
        }
    }

    /// The cursor store.
    pub fn cursor(&mut self) -> &mut C {
        &mut self.cursor
    }

    /// The last height given whole (or loaded from the cursor store).
    pub fn received(&self) -> Option<u64> {
        self.received
    }

    /// The last height saved in the cursor store by this subscription (or
    /// loaded from it).
    pub fn acknowledged(&self) -> Option<u64> {
        self.saved
    }

    /// Says the consumer is done with every height up to `height` (see
    /// [`Update::ack_height`]) and saves it in the cursor store, so that
    /// the next run resumes after it. Acknowledging a height at or below
    /// the saved one does nothing; one that has not been given whole yet
    /// (a block not yet received, a snapshot before its last part) is
    /// [`ClientError::AckAhead`].
    pub fn ack(&mut self, height: u64) -> Result<(), ClientError> {
        if self.received.is_none_or(|r| height > r) {
            return Err(ClientError::AckAhead {
                height,
                received: self.received,
            });
        }
        if self.saved.is_some_and(|s| height <= s) {
            return Ok(());
        }
        self.cursor.save(height)?;
        self.saved = Some(height);
        Ok(())
    }

    async fn open(&mut self) -> Result<Result<(), String>, ClientError> {
        if !self.loaded {
            let stored = self.cursor.load()?;
            self.received = stored;
            self.saved = stored;
            self.loaded = true;
        }
        let start = match self.received {
            Some(h) => Start::FromHeight(h + 1),
            None => match self.options.start {
                StartFrom::Snapshot => Start::Snapshot(v1::StartSnapshot {}),
                StartFrom::Height(h) => Start::FromHeight(h),
                StartFrom::Live => Start::Live(v1::StartLive {}),
            },
        };
        let mut client = match self.options.try_connect().await? {
            Ok(c) => c,
            Err(reason) => return Ok(Err(reason)),
        };
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
            Err(s) => self.options.status_error(s).map(Err),
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
    /// resumes after the last height given whole); the others are errors.
    /// Nothing is saved here: see [`ack`](Self::ack).
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
                Err(s) => {
                    let reason = self.options.status_error(s)?;
                    return Ok(self.reconnect(reason));
                }
            };
            self.backoff = FIRST_BACKOFF;
            match message.message {
                Some(Message::Snapshot(chunk)) => {
                    let first = !self.in_snapshot;
                    self.in_snapshot = !chunk.end;
                    if chunk.end {
                        self.received = Some(chunk.height);
                    }
                    return Ok(Update::Snapshot {
                        height: chunk.height,
                        time: chunk.time,
                        entries: chunk.entries,
                        first,
                        end: chunk.end,
                        hashes: BlockHashes {
                            app_hash: chunk.app_hash,
                            store_hashes: chunk.store_hashes,
                            source_app_hash: chunk.source_app_hash,
                        },
                    });
                }
                Some(Message::Block(part)) => {
                    let block = match self.pending.take() {
                        Some(mut b) if b.height == part.height => {
                            b.changes.extend(part.changes);
                            b.end = part.end;
                            b.app_hash = part.app_hash;
                            b.store_hashes = part.store_hashes;
                            b.source_app_hash = part.source_app_hash;
                            b
                        }
                        _ => part,
                    };
                    if !block.end {
                        self.pending = Some(block);
                        continue;
                    }
                    self.received = Some(block.height);
                    return Ok(Update::Block {
                        height: block.height,
                        time: block.time,
                        changes: block.changes,
                        hashes: BlockHashes {
                            app_hash: block.app_hash,
                            store_hashes: block.store_hashes,
                            source_app_hash: block.source_app_hash,
                        },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryCursor;

    #[test]
    fn ack_saves_only_heights_given_whole_and_never_moves_back() {
        let options = SubscribeOptions::new("127.0.0.1:9");
        let mut sub = ResumableSubscription::new(options, MemoryCursor::default());
        let error = sub.ack(1).unwrap_err();
        assert!(
            matches!(
                error,
                ClientError::AckAhead {
                    height: 1,
                    received: None
                }
            ),
            "{error:?}"
        );
        // As after `next` gave block 5 whole.
        sub.received = Some(5);
        sub.ack(4).unwrap();
        assert_eq!(sub.cursor().0, Some(4));
        sub.ack(3).unwrap();
        assert_eq!(sub.cursor().0, Some(4));
        assert!(matches!(
            sub.ack(6),
            Err(ClientError::AckAhead {
                height: 6,
                received: Some(5)
            })
        ));
        sub.ack(5).unwrap();
        assert_eq!((sub.cursor().0, sub.acknowledged()), (Some(5), Some(5)));
    }
}
