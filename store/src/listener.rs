use std::collections::BTreeMap;

use statestream_core::{CommitInfo, StoreKey};

/// Observes the writes that reach the root of a
/// [`MultiStore`](crate::MultiStore).
///
/// Contract:
/// - `on_write` is called exactly once per write that reaches the root: a
///   direct write on the multi-store, or each write of a cache layer when the
///   outermost cache is written back. Writes held in a cache are not observed
///   until they reach the root; a cache that is dropped is never observed; a
///   write that travels through nested caches is observed once.
/// - Writes are observed in the order they reach the root. When a cache is
///   written back its writes arrive ordered by store name, then key, and only
///   the last write per key of that cache.
/// - `value` is `None` for a delete.
/// - `on_commit` is called after the block is durably committed (after the
///   engine's transaction commits), with the block's commit info.
/// - Calls come from the thread that owns the multi-store; a listener must
///   not block for long, as it runs inside `set`, `delete` and `commit`.
pub trait WriteListener: Send {
    /// A write reached the root.
    fn on_write(&mut self, store: &StoreKey, key: &[u8], value: Option<&[u8]>);

    /// The block that held the observed writes was committed.
    fn on_commit(&mut self, info: &CommitInfo) {
        let _ = info;
    }
}

/// The built-in listener that builds a block's change set: the last
/// operation per (store, key), in key order per store.
///
/// The multi-store also reads its uncommitted writes from here, so the change
/// set is not a second copy of the block's writes: it is the root's only
/// pending layer.
#[derive(Debug, Default)]
pub(crate) struct ChangeSetBuilder {
    /// Indexed like the multi-store's sorted store list.
    pub(crate) per_store: Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl ChangeSetBuilder {
    pub(crate) fn new(stores: usize) -> ChangeSetBuilder {
        ChangeSetBuilder {
            per_store: (0..stores).map(|_| BTreeMap::new()).collect(),
        }
    }

    pub(crate) fn record(&mut self, index: usize, key: &[u8], value: Option<&[u8]>) {
        let map = &mut self.per_store[index];
        match map.get_mut(key) {
            Some(slot) => match (slot.as_mut(), value) {
                // Reuse the allocation for an overwrite.
                (Some(old), Some(new)) => {
                    old.clear();
                    old.extend_from_slice(new);
                }
                _ => *slot = value.map(<[u8]>::to_vec),
            },
            None => {
                map.insert(key.to_vec(), value.map(<[u8]>::to_vec));
            }
        }
    }

    /// Like [`record`](ChangeSetBuilder::record), taking the bytes.
    pub(crate) fn record_owned(&mut self, index: usize, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.per_store[index].insert(key, value);
    }

    pub(crate) fn take(&mut self) -> Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>> {
        let n = self.per_store.len();
        std::mem::replace(
            &mut self.per_store,
            (0..n).map(|_| BTreeMap::new()).collect(),
        )
    }
}
