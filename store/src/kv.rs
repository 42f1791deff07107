use std::ops::Bound;

use crate::error::Result;
use statestream_core::prefix_end;

use crate::iter::{KvIter, Order};
use statestream_core::StoreKey;

/// Reads and writes of named stores, on the root
/// ([`MultiStore`](crate::MultiStore)) or on a [`Cache`](crate::Cache) layer.
///
/// Reads see the layer's own pending writes merged over its parent's view,
/// down to the committed state.
pub trait KvStore {
    /// The stores, in name order.
    fn stores(&self) -> &[StoreKey];

    /// The value of `key`, or `None`.
    fn get(&self, store: &StoreKey, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Sets `key` to `value`. Keys must not be empty.
    fn set(&mut self, store: &StoreKey, key: &[u8], value: &[u8]) -> Result<()>;

    /// Deletes `key` (a delete of a missing key is still a recorded write,
    /// as in Cosmos).
    fn delete(&mut self, store: &StoreKey, key: &[u8]) -> Result<()>;

    /// Sets (`Some`) or deletes (`None`) `key`, taking ownership of the
    /// bytes: a layer that keeps its writes (a cache, the root's pending
    /// block) moves them in instead of copying them. This is how a cache
    /// writes back into its parent. The default copies through
    /// [`set`](KvStore::set) and [`delete`](KvStore::delete).
    fn write_owned(
        &mut self,
        store: &StoreKey,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> Result<()> {
        match value {
            Some(v) => self.set(store, &key, &v),
            None => self.delete(store, &key),
        }
    }

    /// Iterates the keys in `(start, end)`, in `order`.
    fn range(
        &self,
        store: &StoreKey,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        order: Order,
    ) -> Result<KvIter<'_>>;

    /// Whether `key` has a value.
    fn has(&self, store: &StoreKey, key: &[u8]) -> Result<bool> {
        Ok(self.get(store, key)?.is_some())
    }

    /// Iterates every key of the store, in `order`.
    fn iter(&self, store: &StoreKey, order: Order) -> Result<KvIter<'_>> {
        self.range(store, Bound::Unbounded, Bound::Unbounded, order)
    }

    /// Iterates the keys that start with `prefix`, in `order`.
    fn prefix(&self, store: &StoreKey, prefix: &[u8], order: Order) -> Result<KvIter<'_>> {
        let end = prefix_end(prefix);
        let end = match &end {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        // The iterator borrows `end` only while the bounds are applied to the
        // underlying ranges, which copy or compare eagerly; collecting the
        // bound into the range call keeps lifetimes simple.
        self.range(store, Bound::Included(prefix), end, order)
    }
}
