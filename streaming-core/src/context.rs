//! What a streamer is given when it is built: its name, its stores, the
//! node's home, and read access to the committed state and the change log.

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::changeset::ChangeSet;
use crate::error::StreamError;
use crate::hash::Hash;
use crate::key::StoreKey;

/// One key and its value, as read from a [`StateSnapshot`].
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// An iterator over a snapshot's keys and values, in ascending key order.
pub type KeyValues<'a> = Box<dyn Iterator<Item = Result<KeyValue, StreamError>> + Send + 'a>;

/// The committed state of every store, pinned at one height: reads see
/// exactly the state after block [`height`](StateSnapshot::height), however
/// many blocks commit meanwhile. Holding a snapshot keeps the engine from
/// reusing the pages it reads, so hold it for one pass, not for ever.
pub trait StateSnapshot: Send {
    /// The height whose state this snapshot reads (0: before the first
    /// block).
    fn height(&self) -> u64;

    /// The keys of `store` within the bounds, in ascending order.
    fn range(
        &self,
        store: &StoreKey,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> Result<KeyValues<'_>, StreamError>;

    /// The keys of `store` that start with `prefix`, in ascending order.
    fn prefix(&self, store: &StoreKey, prefix: &[u8]) -> Result<KeyValues<'_>, StreamError> {
        let end = prefix_end(prefix);
        let end = match &end {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        self.range(store, Bound::Included(prefix), end)
    }

    /// The hashes at the snapshot's height, read with its state: what a
    /// replica taking the snapshot checks it against and continues its
    /// chains from. `None` when the reader does not keep them.
    fn hashes(&self) -> Result<Option<SnapshotHashes>, StreamError> {
        Ok(None)
    }
}

/// The hashes of a [`StateSnapshot`]'s height.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHashes {
    /// The app hash over every store (the zero hash at height 0).
    pub app_hash: Hash,
    /// Every store's hash chain value `h_s(height)`, in name order.
    pub stores: Vec<(StoreKey, Hash)>,
}

/// The first key after every key that starts with `prefix` (`None`: there
/// is none, every key above `prefix` has it).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Read access to a node's committed data, from any thread: snapshots of
/// the state, and the change log (every retained block's change set).
///
/// The store implements it; a streamer that serves readers (a subscription
/// hub) keeps the `Arc` it is given in [`StreamerContext`].
pub trait StateReader: Send + Sync {
    /// A snapshot of the state after the last committed block.
    fn snapshot(&self) -> Result<Box<dyn StateSnapshot>, StreamError>;

    /// The last committed height.
    fn committed_height(&self) -> Result<u64, StreamError>;

    /// The oldest and newest heights the change log holds, `None` when it is
    /// empty. Blocks below the oldest were pruned.
    fn retained(&self) -> Result<Option<(u64, u64)>, StreamError>;

    /// The change set of block `height`, from the change log; an error when
    /// it is not (or no longer) retained.
    fn change_set(&self, height: u64) -> Result<Arc<ChangeSet>, StreamError>;
}

/// Tells streamers that the node is stopping now, so that a wait of their
/// own (a retry after a backoff, a reconnection) ends at once: the block
/// they were delivering stays in the change log and is delivered again at
/// the next start. The delivery manager triggers it once the drain at close
/// has run for its limit (`[store] shutdown_timeout_ms`; at once when the
/// manager is dropped without closing). During the drain deliveries and
/// retries go on, so a healthy streamer drains everything committed; a
/// delivery that fails after the signal is not counted as the streamer's
/// failure. Cloning shares the signal; once triggered it stays so.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<(Mutex<bool>, Condvar)>);

impl Shutdown {
    /// A signal not triggered yet.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Triggers the signal: every current and later [`wait`](Shutdown::wait)
    /// returns at once.
    pub fn trigger(&self) {
        let (lock, cvar) = &*self.0;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cvar.notify_all();
    }

    /// Whether [`trigger`](Shutdown::trigger) was called.
    pub fn is_triggered(&self) -> bool {
        *self.0.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps for `d` unless the signal is triggered first; returns whether
    /// it was triggered.
    pub fn wait(&self, d: Duration) -> bool {
        let (lock, cvar) = &*self.0;
        let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = cvar
            .wait_timeout_while(guard, d, |triggered| !*triggered)
            .unwrap_or_else(PoisonError::into_inner);
        *guard
    }
}

/// What a constructor receives to build one streamer instance (its
/// type-specific options come separately, parsed by the streamer's own
/// config type).
#[derive(Clone, Copy)]
pub struct StreamerContext<'a> {
    /// The instance's name (its `[streamers.<name>]` table).
    pub name: &'a str,
    /// The stores it receives, resolved from `keys`, in name order.
    pub stores: &'a [StoreKey],
    /// Every store of the node, in name order.
    pub all_stores: &'a [StoreKey],
    /// The node's home directory (relative paths in options are under it).
    pub home: &'a Path,
    /// Read access to the committed state and the change log. The delivery
    /// manager always gives it; `None` where a streamer is built without a
    /// store (tools, tests). A streamer that needs it fails to build
    /// without it.
    pub reader: Option<&'a Arc<dyn StateReader>>,
    /// Triggered when the node stops (after the drain at close): end long
    /// waits at once.
    pub shutdown: &'a Shutdown,
    /// The queue of writes pushed by consumers, which the application
    /// drains between blocks (a `serve` streamer's `PushUpdate`). The
    /// delivery manager always gives it; `None` elsewhere.
    pub push: Option<&'a crate::push::PushQueue>,
}

impl std::fmt::Debug for StreamerContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamerContext")
            .field("name", &self.name)
            .field("stores", &self.stores)
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::{Shutdown, prefix_end};
    use std::time::Duration;

    #[test]
    fn shutdown_ends_a_wait_and_stays_triggered() {
        let s = Shutdown::new();
        assert!(!s.wait(Duration::from_millis(1)));
        let other = s.clone();
        let t = std::thread::spawn(move || other.wait(Duration::from_secs(600)));
        s.trigger();
        assert!(t.join().unwrap());
        assert!(s.is_triggered() && s.wait(Duration::from_secs(600)));
    }

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
