use std::fmt;

use crate::checksum::crc32c_append;
use crate::error::{Error, Result};
use crate::hash::{Hash, ZERO_HASH, app_hash, chain_store_hash, to_hex};
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

/// What a record did to its key, as the store saw it at commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// The key did not exist before the block.
    Create,
    /// The key existed before the block and has a new value. Change sets
    /// that do not know (read back from files, or from change log entries
    /// written before the store recorded it) report every set as an update.
    Update,
    /// The key was deleted.
    Delete,
}

/// One store's part of a block: its records in key order, in the canonical
/// record encoding, their CRC-32C, and the store's chained hash after the
/// block.
///
/// Built by the store at commit ([`push`](StoreChanges::push) per key, then
/// [`ChangeSet::seal`]) or reassembled from stored parts
/// ([`ChangeSet::from_parts`]).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreChanges {
    store: StoreKey,
    hash: Hash,
    encoded: Vec<u8>,
    /// CRC-32C of `encoded`, set when `encoded` is complete.
    crc32c: u32,
    count: usize,
    /// One bit per record (record `i` is bit `i % 8` of byte `i / 8`): set
    /// when the record created its key.
    created: Vec<u8>,
}

impl StoreChanges {
    /// No change yet for `store`.
    pub fn new(store: StoreKey) -> StoreChanges {
        StoreChanges {
            store,
            hash: ZERO_HASH,
            encoded: Vec::new(),
            crc32c: 0,
            count: 0,
            created: Vec::new(),
        }
    }

    /// [`new`](StoreChanges::new), with room for exactly `writes`: the
    /// records are encoded without growing the buffer (and copying it) on
    /// the commit path.
    pub fn with_room_for<'a>(
        store: StoreKey,
        writes: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> StoreChanges {
        let (count, len) = writes.fold((0usize, 0usize), |(n, len), (key, value)| {
            (n + 1, len + record_len(store.name(), key, value))
        });
        let mut changes = StoreChanges::new(store);
        changes.encoded.reserve_exact(len);
        changes.created.reserve_exact(count.div_ceil(8));
        changes
    }

    /// Appends the change of one key: `value` is `None` for a delete;
    /// `created` says that the key did not exist before the block. Keys
    /// must come in ascending order, each once.
    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>, created: bool) {
        encode_record(&mut self.encoded, self.store.name(), key, value);
        if self.count.is_multiple_of(8) {
            self.created.push(0);
        }
        if created && value.is_some() {
            let last = self.created.len() - 1;
            self.created[last] |= 1 << (self.count % 8);
        }
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

    /// Iterates the records with what each did to its key, in key order.
    pub fn changes(&self) -> impl Iterator<Item = (Record<'_>, Action)> + '_ {
        self.records().enumerate().map(|(i, r)| {
            let action = if r.is_delete() {
                Action::Delete
            } else if self
                .created
                .get(i / 8)
                .is_some_and(|b| b & (1 << (i % 8)) != 0)
            {
                Action::Create
            } else {
                Action::Update
            };
            (r, action)
        })
    }

    /// Which records created their key: bit `i % 8` of byte `i / 8` for
    /// record `i` (what [`ChangeSet::from_parts`] takes back).
    pub fn created_bits(&self) -> &[u8] {
        &self.created
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
    height: u64,
    app_hash: Hash,
    app_meta: Vec<u8>,
    stores: Vec<StoreChanges>,
}

/// One store's part of a stored change set, as
/// [`ChangeSet::from_parts`] takes it back.
#[derive(Debug, Clone)]
pub struct StoreParts {
    /// The store.
    pub store: StoreKey,
    /// Its chained hash after the block.
    pub hash: Hash,
    /// Its records, in the canonical encoding.
    pub encoded: Vec<u8>,
    /// How many records `encoded` holds.
    pub count: usize,
    /// [`StoreChanges::created_bits`]; empty when not recorded.
    pub created: Vec<u8>,
}

impl ChangeSet {
    /// Seals block `height`: chains each store's hash from its hash before
    /// the block (`prev`, indexed like `stores`), checksums each store's
    /// records and computes the app hash. `stores` must hold every store of
    /// the multi-store, in name order.
    pub fn seal(
        height: u64,
        app_meta: Vec<u8>,
        mut stores: Vec<StoreChanges>,
        prev: &[Hash],
    ) -> ChangeSet {
        for (s, prev) in stores.iter_mut().zip(prev) {
            s.hash = chain_store_hash(prev, &s.encoded);
            s.crc32c = crc32c_append(0, &s.encoded);
        }
        let app_hash = app_hash(stores.iter().map(|s| (s.store.name(), &s.hash)));
        ChangeSet {
            height,
            app_hash,
            app_meta,
            stores,
        }
    }

    /// Reassembles a stored change set, checking that every record decodes,
    /// belongs to its store, and that the counts match. The hashes are
    /// taken as stored.
    pub fn from_parts(
        height: u64,
        app_hash: Hash,
        app_meta: Vec<u8>,
        parts: Vec<StoreParts>,
    ) -> Result<ChangeSet> {
        let mut stores = Vec::with_capacity(parts.len());
        for p in parts {
            let bad = |reason: String| Error::BadChangeSet {
                height,
                store: p.store.name().to_string(),
                reason,
            };
            let mut seen = 0usize;
            for r in Records::new(&p.encoded) {
                let r = r.map_err(|e| bad(e.to_string()))?;
                if r.store != p.store.name() {
                    return Err(bad(format!("holds a record of store {}", r.store)));
                }
                seen += 1;
            }
            if seen != p.count {
                return Err(bad(format!("{seen} records, header says {}", p.count)));
            }
            if !p.created.is_empty() && p.created.len() != p.count.div_ceil(8) {
                return Err(bad(format!(
                    "{} bytes of created flags for {} records",
                    p.created.len(),
                    p.count
                )));
            }
            let crc32c = crc32c_append(0, &p.encoded);
            stores.push(StoreChanges {
                store: p.store,
                hash: p.hash,
                encoded: p.encoded,
                crc32c,
                count: p.count,
                created: p.created,
            });
        }
        Ok(ChangeSet {
            height,
            app_hash,
            app_meta,
            stores,
        })
    }

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

    /// The app hash after the block.
    pub fn app_hash(&self) -> &Hash {
        &self.app_hash
    }

    /// The opaque block metadata the application gave with the block.
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
