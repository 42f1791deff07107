use std::collections::BTreeMap;
use std::ops::Bound;

use crate::error::{Error, Result};
use crate::iter::{KvIter, Order, is_empty_range, merge};
use crate::kv::KvStore;
use crate::multistore::check_store;
use statestream_core::StoreKey;

/// A cache layer: a transaction over a parent ([`MultiStore`](crate::MultiStore)
/// or another `Cache`).
///
/// Its writes stay in memory, visible to reads through it, until
/// [`write`](Cache::write) flushes them into the parent (the last write per
/// key, by store name then key). Dropping it discards them: the parent and
/// the write listeners never see them.
pub struct Cache<'p> {
    parent: &'p mut dyn KvStore,
    writes: BTreeMap<StoreKey, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl std::fmt::Debug for Cache<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field(
                "pending",
                &self.writes.values().map(BTreeMap::len).sum::<usize>(),
            )
            .finish_non_exhaustive()
    }
}

impl<'p> Cache<'p> {
    /// A cache over `parent`.
    pub fn new(parent: &'p mut dyn KvStore) -> Cache<'p> {
        Cache {
            parent,
            writes: BTreeMap::new(),
        }
    }

    /// A nested cache over this one.
    pub fn cache(&mut self) -> Cache<'_> {
        Cache::new(self)
    }

    /// Flushes the writes into the parent, by store name then key.
    pub fn write(self) -> Result<()> {
        // The keys and values move into the parent: a write-back copies no
        // key or value bytes.
        for (store, writes) in self.writes {
            for (key, value) in writes {
                self.parent.write_owned(&store, key, value)?;
            }
        }
        Ok(())
    }

    /// Discards the writes (the same as dropping the cache).
    pub fn discard(self) {}

    fn record(&mut self, store: &StoreKey, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<()> {
        check_store(self.parent.stores(), store)?;
        if key.is_empty() {
            return Err(Error::EmptyKey {
                store: store.name().to_string(),
            });
        }
        // Look the store up by reference first: cloning the key (an `Arc`
        // bump) only for a store's first write.
        match self.writes.get_mut(store) {
            Some(w) => w.insert(key, value),
            None => self
                .writes
                .entry(store.clone())
                .or_default()
                .insert(key, value),
        };
        Ok(())
    }
}

impl KvStore for Cache<'_> {
    fn stores(&self) -> &[StoreKey] {
        self.parent.stores()
    }

    fn get(&self, store: &StoreKey, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.writes.get(store).and_then(|w| w.get(key)) {
            return Ok(v.clone());
        }
        self.parent.get(store, key)
    }

    fn set(&mut self, store: &StoreKey, key: &[u8], value: &[u8]) -> Result<()> {
        self.record(store, key.to_vec(), Some(value.to_vec()))
    }

    fn delete(&mut self, store: &StoreKey, key: &[u8]) -> Result<()> {
        self.record(store, key.to_vec(), None)
    }

    fn write_owned(
        &mut self,
        store: &StoreKey,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> Result<()> {
        self.record(store, key, value)
    }

    fn range(
        &self,
        store: &StoreKey,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        order: Order,
    ) -> Result<KvIter<'_>> {
        let base = self.parent.range(store, start, end, order)?;
        let Some(own) = self.writes.get(store) else {
            return Ok(base);
        };
        if is_empty_range(start, end) {
            return Ok(KvIter::empty());
        }
        let own = own
            .range::<[u8], _>((start, end))
            .map(|(k, v)| (k.as_slice(), v.as_deref()));
        Ok(match order {
            Order::Ascending => merge(own, base, order),
            Order::Descending => merge(own.rev(), base, order),
        })
    }
}
