//! Writes pushed by consumers (a `serve` streamer's `PushUpdate`), which
//! the application commits, or not, between blocks.
//!
//! The delivery manager owns one [`PushQueue`] and hands it to every
//! streamer in [`StreamerContext`](crate::StreamerContext). A streamer
//! [`push`](PushQueue::push)es a write with a reply callback; the
//! application [`attach`](PushQueue::attach)es to say it drains the queue,
//! then before each commit takes a [`PushBatch`] with
//! [`drain`](PushQueue::drain), applies what it accepts, and after the
//! commit tells the batch the height ([`PushBatch::committed`]; the
//! delivery manager's `commit_pushed` does both, and answers a block that
//! committed with its height even when a streamer then halts the node). A write
//! the application refuses gets [`PushedWrite::reject`]; a batch dropped
//! unanswered rejects what is left, so no pusher waits for ever.
//!
//! Why in the core: the queue is handed to streamers in their context, and
//! a streamer crate (`statestream-serve`) depends on the core alone; the
//! facade depends on the streamer crates, so the type cannot live there. It
//! is a plain mutex-guarded list: no channel, no thread, no I/O.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Writes a queue holds at most before [`PushQueue::push`] refuses more.
pub const PUSH_QUEUE_LIMIT: usize = 10_000;

/// Pushed bytes (keys and values) one [`PushQueue::drain`] takes at most:
/// one block never carries more pushed bytes than this; the writes left
/// wait for the next block, in push order. A single write larger than this
/// is refused by [`PushQueue::push`].
pub const PUSH_BLOCK_BYTES: usize = 4 << 20;

/// What a pusher is told: the height that committed its write, or why it
/// was not.
pub type PushReply = Box<dyn FnOnce(Result<u64, String>) + Send>;

/// Why [`PushQueue::push`] refused a write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// No application drains this queue.
    #[error("the application does not accept pushed writes")]
    NotAttached,
    /// The application has not drained the queue for a while.
    #[error("{0} pushed writes are waiting for the next block; try again later")]
    Full(usize),
    /// The writes waiting would hold more than the pusher's byte limit.
    #[error(
        "{queued} bytes of pushed writes are waiting for the next blocks (limit {limit}); try again later"
    )]
    FullBytes { queued: usize, limit: usize },
    /// One write (key and value) is larger than a block may carry.
    #[error("the write's key and value are {size} bytes, more than the {limit} one block carries")]
    TooLarge { size: usize, limit: usize },
}

/// One pushed write: set `store`/`key` to `value`, or delete it (`None`).
pub struct PushedWrite {
    /// The store's name.
    pub store: String,
    /// The key (not empty).
    pub key: Vec<u8>,
    /// The new value, `None` to delete.
    pub value: Option<Vec<u8>>,
    reply: Option<PushReply>,
}

impl std::fmt::Debug for PushedWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushedWrite")
            .field("store", &self.store)
            .field("key", &self.key)
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

impl PushedWrite {
    /// The bytes this write counts for in the queue's and a block's
    /// limits: its key and value.
    pub fn size(&self) -> usize {
        write_size(&self.key, self.value.as_deref())
    }

    /// The write was committed at `height` (a relay answers each write
    /// forwarded to its upstream with the upstream's height for it).
    pub fn committed(mut self, height: u64) {
        if let Some(reply) = self.reply.take() {
            reply(Ok(height));
        }
    }

    /// The application refuses this write; the pusher is told `reason`.
    pub fn reject(mut self, reason: impl Into<String>) {
        if let Some(reply) = self.reply.take() {
            reply(Err(reason.into()));
        }
    }
}

impl Drop for PushedWrite {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            reply(Err(
                "the application dropped the write without committing it".into(),
            ));
        }
    }
}

/// The bytes a write of `key` and `value` counts for.
fn write_size(key: &[u8], value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len)
}

#[derive(Default)]
struct Inner {
    writes: VecDeque<PushedWrite>,
    /// The sum of the waiting writes' sizes.
    bytes: usize,
    attached: bool,
}

/// A queue of pushed writes shared by the streamers (producers) and the
/// application (consumer). Cloning gives another handle to the same queue.
#[derive(Clone, Default)]
pub struct PushQueue {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for PushQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("PushQueue")
            .field("attached", &inner.attached)
            .field("pending", &inner.writes.len())
            .field("bytes", &inner.bytes)
            .finish()
    }
}

impl PushQueue {
    /// An empty queue that no application drains yet.
    pub fn new() -> PushQueue {
        PushQueue::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The application declares that it drains the queue between blocks;
    /// until then [`push`](PushQueue::push) refuses every write.
    pub fn attach(&self) {
        self.lock().attached = true;
    }

    /// Whether an application drains the queue.
    pub fn is_attached(&self) -> bool {
        self.lock().attached
    }

    /// Queues a write unless the waiting writes would then hold more than
    /// `max_queued_bytes` (keys and values; each pusher brings its own
    /// limit, a `serve` streamer its `max_push_bytes`); `reply` is called
    /// exactly once, with the committing height or the reason it was not
    /// committed (possibly on another thread; it must not block).
    pub fn push(
        &self,
        max_queued_bytes: usize,
        store: String,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        reply: PushReply,
    ) -> Result<(), PushError> {
        let size = write_size(&key, value.as_deref());
        if size > PUSH_BLOCK_BYTES {
            return Err(PushError::TooLarge {
                size,
                limit: PUSH_BLOCK_BYTES,
            });
        }
        let mut inner = self.lock();
        if !inner.attached {
            return Err(PushError::NotAttached);
        }
        if inner.writes.len() >= PUSH_QUEUE_LIMIT {
            return Err(PushError::Full(inner.writes.len()));
        }
        if inner.bytes.saturating_add(size) > max_queued_bytes {
            return Err(PushError::FullBytes {
                queued: inner.bytes,
                limit: max_queued_bytes,
            });
        }
        inner.bytes += size;
        inner.writes.push_back(PushedWrite {
            store,
            key,
            value,
            reply: Some(reply),
        });
        Ok(())
    }

    /// Writes waiting for the application.
    pub fn len(&self) -> usize {
        self.lock().writes.len()
    }

    /// Whether no write waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes (keys and values) of the writes waiting.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Takes the waiting writes for one block, in push order, up to
    /// [`PUSH_BLOCK_BYTES`] of keys and values; the rest wait for the next
    /// drain.
    pub fn drain(&self) -> PushBatch {
        let mut inner = self.lock();
        let mut taken = 0usize;
        let mut writes = Vec::new();
        while let Some(w) = inner.writes.front() {
            let size = w.size();
            // `push` refuses a write over the limit, so the first always fits.
            if taken + size > PUSH_BLOCK_BYTES {
                break;
            }
            taken += size;
            writes.extend(inner.writes.pop_front());
        }
        inner.bytes -= taken;
        PushBatch { writes }
    }
}

/// The writes taken from a [`PushQueue`] for one block.
#[derive(Debug, Default)]
pub struct PushBatch {
    writes: Vec<PushedWrite>,
}

impl PushBatch {
    /// The writes, in push order.
    pub fn writes(&self) -> &[PushedWrite] {
        &self.writes
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Keeps the writes `accept` returns `Ok` for; the others are rejected
    /// with its reason.
    pub fn retain(&mut self, mut accept: impl FnMut(&PushedWrite) -> Result<(), String>) {
        let writes = std::mem::take(&mut self.writes);
        for w in writes {
            match accept(&w) {
                Ok(()) => self.writes.push(w),
                Err(reason) => w.reject(reason),
            }
        }
    }

    /// The writes, each to be answered on its own
    /// ([`PushedWrite::committed`], [`PushedWrite::reject`]; dropped: told
    /// it was not committed).
    pub fn into_writes(mut self) -> Vec<PushedWrite> {
        std::mem::take(&mut self.writes)
    }

    /// The block at `height` committed every write of the batch.
    pub fn committed(mut self, height: u64) {
        for mut w in self.writes.drain(..) {
            if let Some(reply) = w.reply.take() {
                reply(Ok(height));
            }
        }
    }

    /// None of the batch's writes was committed.
    pub fn reject(mut self, reason: &str) {
        for w in self.writes.drain(..) {
            w.reject(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn push_needs_an_attached_application_and_every_write_gets_one_reply() {
        let q = PushQueue::new();
        let (tx, rx) = mpsc::channel();
        let reply = |tx: &mpsc::Sender<Result<u64, String>>| -> PushReply {
            let tx = tx.clone();
            Box::new(move |r| {
                let _ = tx.send(r);
            })
        };
        assert_eq!(
            q.push(usize::MAX, "s".into(), b"k".to_vec(), None, reply(&tx)),
            Err(PushError::NotAttached)
        );
        q.attach();
        q.push(
            usize::MAX,
            "s".into(),
            b"a".to_vec(),
            Some(b"1".to_vec()),
            reply(&tx),
        )
        .unwrap();
        q.push(usize::MAX, "t".into(), b"b".to_vec(), None, reply(&tx))
            .unwrap();
        let mut batch = q.drain();
        assert!(q.is_empty());
        batch.retain(|w| {
            if w.store == "s" {
                Ok(())
            } else {
                Err("no".into())
            }
        });
        assert_eq!(rx.recv().unwrap(), Err("no".into()));
        batch.committed(7);
        assert_eq!(rx.recv().unwrap(), Ok(7));
        q.push(usize::MAX, "s".into(), b"c".to_vec(), None, reply(&tx))
            .unwrap();
        drop(q.drain());
        assert!(rx.recv().unwrap().is_err());
    }

    #[test]
    fn push_bounds_bytes_and_drain_takes_one_block_of_bytes() {
        let q = PushQueue::new();
        q.attach();
        let reply = || -> PushReply { Box::new(|_| {}) };
        let quarter = PUSH_BLOCK_BYTES / 4;
        let value = |n: usize| Some(vec![b'v'; n - 1]);
        assert_eq!(
            q.push(
                usize::MAX,
                "s".into(),
                b"k".to_vec(),
                value(PUSH_BLOCK_BYTES + 1),
                reply()
            ),
            Err(PushError::TooLarge {
                size: PUSH_BLOCK_BYTES + 1,
                limit: PUSH_BLOCK_BYTES
            })
        );
        let limit = 9 * quarter;
        for _ in 0..9 {
            q.push(limit, "s".into(), b"k".to_vec(), value(quarter), reply())
                .unwrap();
        }
        assert_eq!(q.bytes(), 9 * quarter);
        assert_eq!(
            q.push(limit, "s".into(), b"k".to_vec(), Some(vec![]), reply()),
            Err(PushError::FullBytes {
                queued: 9 * quarter,
                limit
            })
        );
        let sizes: Vec<usize> = std::iter::from_fn(|| {
            let b = q.drain();
            (!b.is_empty()).then(|| b.writes().iter().map(PushedWrite::size).sum())
        })
        .collect();
        assert_eq!(sizes, vec![4 * quarter, 4 * quarter, quarter]);
        assert_eq!(q.bytes(), 0);
    }
}
