use std::fmt;

use crate::hash::{Hash, to_hex};
use crate::key::StoreKey;
use crate::record::{Record, Records, encode_record, record_len};

/// What `commit` returns: the new version (= block height, starting at 1)
/// and the app hash after it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// The height of the committed block.
    pub version: u64,
    /// The app hash after the block.
    pub app_hash: Hash,
}

impl fmt::Debug for CommitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitInfo")
            .field("version", &self.version)
            .field("app_hash", &to_hex(&self.app_hash))
            .finish()
    }
}

/// One store's part of a block: its records in key order, in the canonical
/// record encoding, their CRC-32C, and the store's chained hash after the
/// block.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreChanges {
    pub(crate) store: StoreKey,
    pub(crate) hash: Hash,
    pub(crate) encoded: Vec<u8>,
    /// CRC-32C of `encoded`, set when `encoded` is complete.
    pub(crate) crc32c: u32,
    pub(crate) count: usize,
}

impl StoreChanges {
    pub(crate) fn empty(store: StoreKey) -> StoreChanges {
        StoreChanges {
            store,
            hash: crate::hash::ZERO_HASH,
            encoded: Vec::new(),
            crc32c: 0,
            count: 0,
        }
    }

    /// [`empty`](StoreChanges::empty), with room for exactly `writes`: the
    /// records are encoded without growing the buffer (and copying it) on
    /// the commit path.
    pub(crate) fn with_room_for<'a>(
        store: StoreKey,
        writes: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> StoreChanges {
        let len = writes
            .map(|(key, value)| record_len(store.name(), key, value))
            .sum();
        let mut changes = StoreChanges::empty(store);
        changes.encoded.reserve_exact(len);
        changes
    }

    pub(crate) fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        encode_record(&mut self.encoded, self.store.name(), key, value);
        self.count += 1;
    }

    /// The store these changes belong to.
    pub fn store(&self) -> &StoreKey {
        &self.store
    }

    /// The store's chained hash `h_s(N)` after this block.
    pub fn hash(&self) -> &Hash {
        &self.hash
    }

    /// The records, uvarint-delimited `StoreKVPair` messages: exactly the
    /// bytes a data file holds for this store.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// CRC-32C of [`encoded`](StoreChanges::encoded), computed once when the
    /// block was committed (or read back from the change log).
    pub fn crc32c(&self) -> u32 {
        self.crc32c
    }

    /// Iterates the records, in key order.
    pub fn records(&self) -> impl Iterator<Item = Record<'_>> + '_ {
        // The buffer was produced by `encode_record` (or checked by
        // `ChangeSet::decode`), so decoding cannot fail; a failure would end
        // the iteration rather than panic.
        Records::new(&self.encoded).map_while(Result::ok)
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the store has no change in this block.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl fmt::Debug for StoreChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreChanges")
            .field("store", &self.store.name())
            .field("records", &self.count)
            .field("bytes", &self.encoded.len())
            .field("hash", &to_hex(&self.hash))
            .finish()
    }
}

/// A committed block's change set: the net change per (store, key), ordered
/// by store name then key, plus everything needed to stream the block again
/// later (the application's opaque block metadata, the hashes).
///
/// Every store of the multi-store has an entry, in name order, even when it
/// has no change in the block (its hash still advances).
#[derive(Clone, PartialEq, Eq)]
pub struct ChangeSet {
    pub(crate) height: u64,
    pub(crate) app_hash: Hash,
    pub(crate) app_meta: Vec<u8>,
    pub(crate) stores: Vec<StoreChanges>,
}

impl ChangeSet {
    /// The block height.
    pub fn height(&self) -> u64 {
        self.height
    }

    /// The block's commit info.
    pub fn commit_info(&self) -> CommitInfo {
        CommitInfo {
            version: self.height,
            app_hash: self.app_hash,
        }
    }

    /// The opaque block metadata the application gave to
    /// [`MultiStore::commit_block`](crate::MultiStore::commit_block).
    pub fn app_meta(&self) -> &[u8] {
        &self.app_meta
    }

    /// Per-store changes, in store-name order; every store is present.
    pub fn stores(&self) -> &[StoreChanges] {
        &self.stores
    }

    /// One store's changes.
    pub fn store(&self, name: &str) -> Option<&StoreChanges> {
        self.stores
            .binary_search_by(|s| s.store.name().cmp(name))
            .ok()
            .map(|i| &self.stores[i])
    }

    /// All records of the block, ordered by store name then key.
    pub fn records(&self) -> impl Iterator<Item = Record<'_>> + '_ {
        self.stores.iter().flat_map(StoreChanges::records)
    }

    /// Total number of records.
    pub fn len(&self) -> usize {
        self.stores.iter().map(StoreChanges::len).sum()
    }

    /// Whether no store changed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for ChangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeSet")
            .field("height", &self.height)
            .field("app_hash", &to_hex(&self.app_hash))
            .field("app_meta_bytes", &self.app_meta.len())
            .field("stores", &self.stores)
            .finish()
    }
}
