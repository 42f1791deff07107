use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition,
    backends::InMemoryBackend,
};

use crate::cache::Cache;
use crate::changelog::{CHANGELOG, ChangeLog, SizeCounter, entry_len, write_entry};
use statestream_core::{ChangeSet, CommitInfo, Hash, StoreChanges, StoreKey, ZERO_HASH};

use crate::error::{Error, Result};
use crate::iter::{KvIter, Order, is_empty_range, merge};
use crate::kv::KvStore;
use crate::listener::{ChangeSetBuilder, WriteListener};
use crate::reader::StoreReader;

pub(crate) const META: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("meta");
pub(crate) const STORE_HASHES: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("store_hashes");
const CURSORS: TableDefinition<'static, &'static str, u64> = TableDefinition::new("cursors");
/// Height gaps a source left (first missing height -> last missing height).
const GAPS: TableDefinition<'static, u64, u64> = TableDefinition::new("gaps");

pub(crate) const META_VERSION: &str = "version";
const META_STORES: &str = "stores";
const META_FORMAT: &str = "format";
const DB_FORMAT: &[u8] = b"statestream-store/1";

/// With `fsync` off, one commit in this many is made durable anyway: redb
/// cannot reuse pages freed by non-durable commits, so a node that never
/// made a durable commit would grow its file without bound.
const DURABLE_EVERY: u64 = 128;

pub(crate) fn state_def(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

pub(crate) fn state_table_name(store: &StoreKey) -> String {
    format!("state/{}", store.name())
}

/// How a [`MultiStore`] persists its commits.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `true` (the default): every commit is fsynced before `commit`
    /// returns; a crash (even of the machine) never loses a committed block.
    ///
    /// `false`: commits are written without fsync (redb's
    /// `Durability::None`), and one in every 128 commits, plus the commit
    /// done by [`MultiStore::close`], is made durable. A crash of the process
    /// rolls the store back to the last durable commit: the node re-executes
    /// the blocks after it, which for a deterministic state machine gives the
    /// same blocks again. Streamers must accept such re-delivery (they do:
    /// delivery is idempotent per height).
    pub fsync: bool,

    /// Bytes of the engine's page cache (default 256 MiB; redb's own
    /// default is 1 GiB). The cache holds written pages too, so with a
    /// lagging streamer (a change log that grows) the node's memory grows
    /// with the log up to this bound (about 2.5 times it, allocator overhead
    /// included). Larger caches make commits on a large state faster: with
    /// 1,000 random-key writes per block, 64 MiB made commits ~28% slower
    /// than 256 MiB or 1 GiB on a state of a few hundred MB.
    pub cache_size: usize,

    /// Check the whole file's page checksums when opening (default
    /// `false`). redb verifies checksums only when it repairs after an
    /// unclean shutdown, so a file damaged after a clean close is otherwise
    /// trusted, and a damaged page can make the engine panic instead of
    /// failing. With the check a damaged file is an [`Error::Engine`] at
    /// open. It reads the whole file, so it costs time proportional to the
    /// store's size.
    pub verify_on_open: bool,
}

/// The default [`StoreOptions::cache_size`].
pub const DEFAULT_CACHE_SIZE: usize = 256 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            fsync: true,
            cache_size: DEFAULT_CACHE_SIZE,
            verify_on_open: false,
        }
    }
}

/// What to commit besides the state: the application's opaque block
/// metadata (kept in the change log with the block), cursor updates, and
/// pruning of the change log. All of it lands in the block's single engine
/// transaction.
#[derive(Debug, Default, Clone)]
pub struct CommitInput {
    app_meta: Vec<u8>,
    cursors: Vec<(String, u64)>,
    prune_below: Option<u64>,
}

impl CommitInput {
    /// An input with nothing but the state.
    pub fn new() -> CommitInput {
        CommitInput::default()
    }

    /// Opaque block metadata, stored in the change log with the block and
    /// returned by [`ChangeSet::app_meta`].
    pub fn app_meta(mut self, meta: Vec<u8>) -> CommitInput {
        self.app_meta = meta;
        self
    }

    /// Persists a cursor (a named height) with the block.
    pub fn cursor(mut self, name: impl Into<String>, height: u64) -> CommitInput {
        self.cursors.push((name.into(), height));
        self
    }

    /// Removes change log entries below `height` in the same transaction.
    pub fn prune_below(mut self, height: u64) -> CommitInput {
        self.prune_below = Some(height);
        self
    }
}

struct Snapshot {
    tables: Vec<ReadOnlyTable<&'static [u8], &'static [u8]>>,
}

/// A set of named key/value stores committed together, block by block.
///
/// Writes go to the root (the multi-store itself) or through [`Cache`]
/// layers. Until `commit`, the root's writes are held in memory, where they
/// form the block's change set; `commit` persists state, change set (in the
/// change log) and per-store hashes in one transaction of the embedded
/// engine (redb).
///
/// ```
/// use statestream_store::{KvStore, MultiStore, StoreKey};
///
/// let bank = StoreKey::new("bank")?;
/// let mut store = MultiStore::in_memory(&[bank.clone()])?;
/// let mut tx = store.cache();
/// tx.set(&bank, b"alice", b"10")?;
/// tx.write()?;
/// let info = store.commit()?;
/// assert_eq!(info.version, 1);
/// assert_eq!(store.get(&bank, b"alice")?, Some(b"10".to_vec()));
/// let block = store.change_log().read(1)?;
/// assert_eq!(block.len(), 1);
/// # Ok::<(), statestream_store::Error>(())
/// ```
pub struct MultiStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    stores: Vec<StoreKey>,
    options: StoreOptions,
    version: u64,
    app_hash: Hash,
    hashes: Vec<Hash>,
    pending: ChangeSetBuilder,
    snapshot: Snapshot,
    listeners: Vec<(Vec<bool>, Box<dyn WriteListener>)>,
    poisoned: Option<u64>,
    /// The change log's size, shared with every [`ChangeLog`] handle.
    log_size: Arc<SizeCounter>,
}

impl std::fmt::Debug for MultiStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiStore")
            .field("path", &self.path)
            .field("stores", &self.stores)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

fn sorted_stores(stores: &[StoreKey]) -> Result<Vec<StoreKey>> {
    let mut v = stores.to_vec();
    v.sort();
    for w in v.windows(2) {
        if w[0] == w[1] {
            return Err(Error::DuplicateStoreKey(w[0].name().to_string()));
        }
    }
    Ok(v)
}

/// An error opening the database file: another process holding it is
/// [`Error::InUse`], anything else the engine's error.
fn open_error(path: &Path, e: redb::DatabaseError) -> Error {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse {
            path: path.to_path_buf(),
        },
        e => Error::engine(path, "opening", e),
    }
}

impl MultiStore {
    /// Opens (or creates) the database file at `path` with the given stores.
    /// The set of stores is fixed when the database is created; reopening
    /// with another set is an error.
    pub fn open(path: &Path, stores: &[StoreKey], options: StoreOptions) -> Result<MultiStore> {
        if matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        {
            create_new(path, stores, &options)?;
        }
        let db = Database::builder()
            .set_cache_size(options.cache_size)
            .set_check_integrity_on_open(options.verify_on_open)
            .create(path)
            .map_err(|e| open_error(path, e))?;
        Self::from_db(db, path.to_path_buf(), stores, options)
    }

    /// Opens a database file that already exists, with the set of stores it
    /// was created with (for tools that do not know the application's
    /// stores). A missing file is an error, never a new database.
    pub fn open_existing(path: &Path, options: StoreOptions) -> Result<MultiStore> {
        let db = Database::builder()
            .set_cache_size(options.cache_size)
            .set_check_integrity_on_open(options.verify_on_open)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        let err = |e: redb::Error| Error::engine(path, "reading the store names", e);
        let names = {
            let txn = db.begin_read().map_err(|e| err(e.into()))?;
            let meta = match txn.open_table(META) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => {
                    return Err(Error::Corrupt {
                        path: path.to_path_buf(),
                        what: "not a statestream store (no meta table)".into(),
                    });
                }
                Err(e) => return Err(err(e.into())),
            };
            let found = meta.get(META_STORES).map_err(|e| err(e.into()))?;
            let Some(found) = found else {
                return Err(Error::Corrupt {
                    path: path.to_path_buf(),
                    what: "not a statestream store (no store names)".into(),
                });
            };
            String::from_utf8_lossy(found.value()).into_owned()
        };
        let stores = names
            .split(',')
            .filter(|n| !n.is_empty())
            .map(StoreKey::new)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Corrupt {
                path: path.to_path_buf(),
                what: format!("bad store names {names:?}: {e}"),
            })?;
        Self::from_db(db, path.to_path_buf(), &stores, options)
    }

    /// A store on redb's in-memory backend: the same code path as on disk,
    /// for tests and benchmarks.
    pub fn in_memory(stores: &[StoreKey]) -> Result<MultiStore> {
        let path = PathBuf::from("<memory>");
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .map_err(|e| Error::engine(&path, "creating in memory", e))?;
        Self::from_db(db, path, stores, StoreOptions::default())
    }

    fn from_db(
        db: Database,
        path: PathBuf,
        stores: &[StoreKey],
        options: StoreOptions,
    ) -> Result<MultiStore> {
        let stores = sorted_stores(stores)?;
        let path = Arc::new(path);
        let err = |action| {
            let path = Arc::clone(&path);
            move |e: redb::Error| Error::engine(&path, action, e)
        };
        let names = stores
            .iter()
            .map(StoreKey::name)
            .collect::<Vec<_>>()
            .join(",");
        let txn = db
            .begin_write()
            .map_err(|e| err("initialising")(e.into()))?;
        let (version, hashes, app_hash) = {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| err("initialising")(e.into()))?;
            let existing = meta
                .get(META_STORES)
                .map_err(|e| err("initialising")(e.into()))?
                .map(|v| v.value().to_vec());
            match existing {
                Some(found) => {
                    if found != names.as_bytes() {
                        return Err(Error::StoreSetMismatch {
                            path: path.to_path_buf(),
                            found: String::from_utf8_lossy(&found).into_owned(),
                            given: names,
                        });
                    }
                    let format = meta
                        .get(META_FORMAT)
                        .map_err(|e| err("initialising")(e.into()))?
                        .map(|v| v.value().to_vec());
                    if format.as_deref() != Some(DB_FORMAT) {
                        return Err(Error::Corrupt {
                            path: path.to_path_buf(),
                            what: "missing or unknown format marker".into(),
                        });
                    }
                }
                None => {
                    meta.insert(META_STORES, names.as_bytes())
                        .map_err(|e| err("initialising")(e.into()))?;
                    meta.insert(META_FORMAT, DB_FORMAT)
                        .map_err(|e| err("initialising")(e.into()))?;
                    meta.insert(META_VERSION, &0u64.to_be_bytes()[..])
                        .map_err(|e| err("initialising")(e.into()))?;
                }
            }
            let version = match meta
                .get(META_VERSION)
                .map_err(|e| err("initialising")(e.into()))?
            {
                Some(v) => {
                    u64::from_be_bytes(v.value().try_into().map_err(|_| Error::Corrupt {
                        path: path.to_path_buf(),
                        what: "version is not 8 bytes".into(),
                    })?)
                }
                None => 0,
            };
            let mut hashes_t = txn
                .open_table(STORE_HASHES)
                .map_err(|e| err("initialising")(e.into()))?;
            let mut hashes = Vec::with_capacity(stores.len());
            for s in &stores {
                let h = hashes_t
                    .get(s.name())
                    .map_err(|e| err("initialising")(e.into()))?
                    .map(|v| v.value().to_vec());
                let h: Hash = match h {
                    Some(h) => h.as_slice().try_into().map_err(|_| Error::Corrupt {
                        path: path.to_path_buf(),
                        what: format!("hash of store {s} is not 32 bytes"),
                    })?,
                    None => {
                        if version != 0 {
                            return Err(Error::Corrupt {
                                path: path.to_path_buf(),
                                what: format!("no hash for store {s} at version {version}"),
                            });
                        }
                        hashes_t
                            .insert(s.name(), &ZERO_HASH[..])
                            .map_err(|e| err("initialising")(e.into()))?;
                        ZERO_HASH
                    }
                };
                hashes.push(h);
            }
            for s in &stores {
                let name = state_table_name(s);
                txn.open_table(state_def(&name))
                    .map_err(|e| err("initialising")(e.into()))?;
            }
            txn.open_table(CHANGELOG)
                .map_err(|e| err("initialising")(e.into()))?;
            txn.open_table(CURSORS)
                .map_err(|e| err("initialising")(e.into()))?;
            let app_hash =
                statestream_core::app_hash(stores.iter().map(StoreKey::name).zip(hashes.iter()));
            (version, hashes, app_hash)
        };
        txn.commit().map_err(|e| err("initialising")(e.into()))?;
        let log_size = Arc::new(SizeCounter::scan(&db, &path)?);
        let db = Arc::new(db);
        let snapshot = open_snapshot(&db, &path, &stores)?;
        Ok(MultiStore {
            db,
            path,
            log_size,
            pending: ChangeSetBuilder::new(stores.len()),
            stores,
            options,
            version,
            app_hash: if version == 0 { ZERO_HASH } else { app_hash },
            hashes,
            snapshot,
            listeners: Vec::new(),
            poisoned: None,
        })
    }

    /// Where the database lives (`<memory>` for an in-memory store).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last committed version (block height); 0 before the first commit.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The last commit's info (version 0 and a zero hash before the first).
    pub fn last_commit(&self) -> CommitInfo {
        CommitInfo {
            version: self.version,
            app_hash: self.app_hash,
        }
    }

    /// The chained hash of one store after the last commit.
    pub fn store_hash(&self, store: &StoreKey) -> Result<Hash> {
        Ok(self.hashes[self.index(store)?])
    }

    /// A handle on the change log, usable from other threads.
    pub fn change_log(&self) -> ChangeLog {
        ChangeLog {
            db: Arc::clone(&self.db),
            path: Arc::clone(&self.path),
            size: Arc::clone(&self.log_size),
        }
    }

    /// Whether `store` is one of this multi-store's stores: an
    /// [`Error::UnknownStore`] listing them when it is not.
    pub fn check_store(&self, store: &StoreKey) -> Result<()> {
        check_store(&self.stores, store)
    }

    /// A handle that reads committed state (snapshots pinned at one
    /// height) and the change log from other threads.
    pub fn reader(&self) -> StoreReader {
        StoreReader::new(
            Arc::clone(&self.db),
            Arc::clone(&self.path),
            &self.stores,
            self.change_log(),
        )
    }

    /// Attaches a listener to the given stores. It observes every write that
    /// reaches the root from now on (see [`WriteListener`] for the contract).
    pub fn add_listener(
        &mut self,
        stores: &[StoreKey],
        listener: Box<dyn WriteListener>,
    ) -> Result<()> {
        let mut mask = vec![false; self.stores.len()];
        for s in stores {
            mask[self.index(s)?] = true;
        }
        self.listeners.push((mask, listener));
        Ok(())
    }

    /// A cache layer (a transaction) over the root: its writes reach the
    /// root, and the listeners, only when it is written back.
    pub fn cache(&mut self) -> Cache<'_> {
        Cache::new(self)
    }

    pub(crate) fn index(&self, store: &StoreKey) -> Result<usize> {
        self.stores
            .binary_search(store)
            .map_err(|_| unknown_store(store, &self.stores))
    }

    fn check_usable(&self) -> Result<()> {
        match self.poisoned {
            Some(height) => Err(Error::Poisoned { height }),
            None => Ok(()),
        }
    }

    fn write(&mut self, store: &StoreKey, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let index = self.check_write(store, key)?;
        self.notify(index, store, key, value);
        self.pending.record(index, key, value);
        Ok(())
    }

    /// The store's index, if the handle is usable and the key not empty.
    fn check_write(&self, store: &StoreKey, key: &[u8]) -> Result<usize> {
        self.check_usable()?;
        let index = self.index(store)?;
        if key.is_empty() {
            return Err(Error::EmptyKey {
                store: store.name().to_string(),
            });
        }
        Ok(index)
    }

    fn notify(&mut self, index: usize, store: &StoreKey, key: &[u8], value: Option<&[u8]>) {
        for (mask, listener) in &mut self.listeners {
            if mask[index] {
                listener.on_write(store, key, value);
            }
        }
    }

    /// Commits the block: persists the pending writes, the change set and
    /// the hashes in one engine transaction. Returns the new version and app
    /// hash. An empty block commits too (the hashes still advance).
    pub fn commit(&mut self) -> Result<CommitInfo> {
        Ok(self.commit_block(CommitInput::new())?.commit_info())
    }

    /// Like [`commit`](MultiStore::commit), with metadata, cursors and
    /// pruning in the same transaction, and returns the block's change set
    /// (built once; share it with `Arc`).
    pub fn commit_block(&mut self, input: CommitInput) -> Result<Arc<ChangeSet>> {
        self.check_usable()?;
        let height = self.version + 1;
        let pending = self.pending.take();
        // From here on a failure leaves memory and disk out of step (the
        // pending writes are consumed): poison the handle until it succeeds.
        self.poisoned = Some(height);
        let (cs, hashes, logged) = self.persist(height, pending, input)?;
        self.log_size
            .update(Some(logged.added), logged.removed, logged.removed_bytes);
        self.poisoned = None;
        self.version = height;
        self.app_hash = *cs.app_hash();
        self.hashes = hashes;
        self.snapshot = open_snapshot(&self.db, &self.path, &self.stores)?;
        let info = cs.commit_info();
        for (_, l) in &mut self.listeners {
            l.on_commit(&info);
        }
        Ok(Arc::new(cs))
    }

    fn persist(
        &mut self,
        height: u64,
        pending: Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
        input: CommitInput,
    ) -> Result<(ChangeSet, Vec<Hash>, Logged)> {
        let path = Arc::clone(&self.path);
        let err = |e: redb::Error| Error::engine(&path, "committing", e);
        let mut txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        let durable = self.options.fsync || height.is_multiple_of(DURABLE_EVERY);
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(|e| err(redb::Error::from(e)))?;
        }
        let mut stores = Vec::with_capacity(self.stores.len());
        for (store, writes) in self.stores.iter().zip(pending) {
            let mut changes = StoreChanges::with_room_for(
                store.clone(),
                writes.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
            );
            let name = state_table_name(store);
            let mut table = txn
                .open_table(state_def(&name))
                .map_err(|e| err(e.into()))?;
            for (key, value) in &writes {
                // The engine returns the value a key had, so whether a set
                // creates its key costs nothing extra.
                let existed = match value {
                    Some(v) => table
                        .insert(key.as_slice(), v.as_slice())
                        .map_err(|e| err(e.into()))?
                        .is_some(),
                    None => table
                        .remove(key.as_slice())
                        .map_err(|e| err(e.into()))?
                        .is_some(),
                };
                changes.push(key, value.as_deref(), !existed);
            }
            stores.push(changes);
        }
        let cs = ChangeSet::seal(height, input.app_meta, stores, &self.hashes);
        let hashes: Vec<Hash> = cs.stores().iter().map(|s| *s.hash()).collect();
        let mut logged = Logged::default();
        {
            let mut log = txn.open_table(CHANGELOG).map_err(|e| err(e.into()))?;
            // Encoded straight into the page space redb reserves for the
            // entry: the records are copied once, from the change set.
            let len = entry_len(&cs);
            write_entry(
                &cs,
                log.insert_reserve(height, len)
                    .map_err(|e| err(e.into()))?
                    .as_mut(),
            );
            logged.added = len as u64;
            if let Some(below) = input.prune_below {
                // The entries are read to be removed anyway: counting their
                // bytes keeps the change log's size without a scan.
                log.retain_in(..below, |_, entry| {
                    logged.removed += 1;
                    logged.removed_bytes += entry.len() as u64;
                    false
                })
                .map_err(|e| err(e.into()))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            meta.insert(META_VERSION, &height.to_be_bytes()[..])
                .map_err(|e| err(e.into()))?;
            let mut hash_t = txn.open_table(STORE_HASHES).map_err(|e| err(e.into()))?;
            for s in cs.stores() {
                hash_t
                    .insert(s.store().name(), &s.hash()[..])
                    .map_err(|e| err(e.into()))?;
            }
            let mut cursors = txn.open_table(CURSORS).map_err(|e| err(e.into()))?;
            for (name, h) in &input.cursors {
                cursors
                    .insert(name.as_str(), *h)
                    .map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))?;
        Ok((cs, hashes, logged))
    }

    /// Adds stores at run time (the ones not held yet; the others are
    /// ignored), in one durable transaction of their own: each starts empty,
    /// with the zero hash, so its hash chain starts with the next commit. A
    /// source that discovers its stores from its blocks (a Cosmos chain)
    /// adds them as they first appear. Readers and change log handles taken
    /// before see the old set of stores: take new ones.
    pub fn add_stores(&mut self, stores: &[StoreKey]) -> Result<()> {
        self.check_usable()?;
        let mut added: Vec<StoreKey> = stores
            .iter()
            .filter(|s| self.stores.binary_search(s).is_err())
            .cloned()
            .collect();
        added.sort();
        added.dedup();
        if added.is_empty() {
            return Ok(());
        }
        let mut all = self.stores.clone();
        all.extend(added.iter().cloned());
        all.sort();
        let names = all.iter().map(StoreKey::name).collect::<Vec<_>>().join(",");
        let path = Arc::clone(&self.path);
        let err = |e: redb::Error| Error::engine(&path, "adding stores", e);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            meta.insert(META_STORES, names.as_bytes())
                .map_err(|e| err(e.into()))?;
            let mut hashes = txn.open_table(STORE_HASHES).map_err(|e| err(e.into()))?;
            for s in &added {
                hashes
                    .insert(s.name(), &ZERO_HASH[..])
                    .map_err(|e| err(e.into()))?;
                let name = state_table_name(s);
                txn.open_table(state_def(&name))
                    .map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))?;
        for s in added {
            let Err(i) = self.stores.binary_search(&s) else {
                continue;
            };
            self.stores.insert(i, s);
            self.hashes.insert(i, ZERO_HASH);
            self.pending.per_store.insert(i, BTreeMap::new());
            for (mask, _) in &mut self.listeners {
                mask.insert(i, false);
            }
        }
        self.snapshot = open_snapshot(&self.db, &self.path, &self.stores)?;
        Ok(())
    }

    /// Makes `height` the next height to commit, for a store fed by a source
    /// with heights of its own. On a store that has never committed this is
    /// where it starts (a replica of a chain joined at a later height), and
    /// no gap. Otherwise the heights from the next one up to `height - 1`
    /// are a gap: recorded (see [`gaps`](MultiStore::gaps)) in the same
    /// transaction, and every cursor at the current height moves to the end
    /// of the gap, as those blocks will never exist here. Returns the gap
    /// recorded, if any. `height` at or below the next height is an error
    /// ([`Error::HeightNotAhead`]). Pending writes are kept.
    pub fn continue_at(&mut self, height: u64) -> Result<Option<(u64, u64)>> {
        self.check_usable()?;
        let next = self.version + 1;
        if height <= next {
            return Err(Error::HeightNotAhead {
                path: self.path.to_path_buf(),
                height,
                next,
            });
        }
        let path = Arc::clone(&self.path);
        let err = |e: redb::Error| Error::engine(&path, "continuing past a height gap", e);
        let fresh = self.version == 0;
        let gap = (!fresh).then_some((next, height - 1));
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            meta.insert(META_VERSION, &(height - 1).to_be_bytes()[..])
                .map_err(|e| err(e.into()))?;
            if let Some((from, to)) = gap {
                let mut gaps = txn.open_table(GAPS).map_err(|e| err(e.into()))?;
                gaps.insert(from, to).map_err(|e| err(e.into()))?;
            }
            let mut cursors = txn.open_table(CURSORS).map_err(|e| err(e.into()))?;
            let mut moved = Vec::new();
            for item in cursors.iter().map_err(|e| err(e.into()))? {
                let (k, v) = item.map_err(|e| err(e.into()))?;
                if v.value() == self.version {
                    moved.push(k.value().to_string());
                }
            }
            for name in moved {
                cursors
                    .insert(name.as_str(), height - 1)
                    .map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))?;
        self.version = height - 1;
        Ok(gap)
    }

    /// The chain value each store would have if the pending writes were
    /// committed now (in store order), without committing them: a replica
    /// checks a block against its source's values before committing it.
    pub fn pending_hashes(&self) -> Vec<(StoreKey, Hash)> {
        let mut encoded = Vec::new();
        self.stores
            .iter()
            .zip(&self.pending.per_store)
            .zip(&self.hashes)
            .map(|((store, writes), prev)| {
                encoded.clear();
                for (key, value) in writes {
                    statestream_core::encode_record(
                        &mut encoded,
                        store.name(),
                        key,
                        value.as_deref(),
                    );
                }
                (
                    store.clone(),
                    statestream_core::chain_store_hash(prev, &encoded),
                )
            })
            .collect()
    }

    /// Drops the pending writes (a replica's refused block). Listeners
    /// saw them written; they are told nothing more.
    pub fn discard_pending(&mut self) {
        self.pending.take();
    }

    /// Makes the pending writes the whole state at `height`, a snapshot
    /// taken from a source whose chain values at that height were `hashes`
    /// (one for each store of this multi-store, in any order), so that the
    /// next commit is `height + 1` and chains from them. One durable
    /// transaction: every state table cleared and the pending writes
    /// written, the version and the chain values set, the change log
    /// emptied (its blocks led to the state replaced: none can be streamed
    /// as history of this one) and every cursor moved to `height`. On a
    /// store that had committed, the heights from its next one to `height`
    /// are recorded as a gap and returned.
    pub fn restore_snapshot(
        &mut self,
        height: u64,
        hashes: &[(StoreKey, Hash)],
    ) -> Result<Option<(u64, u64)>> {
        self.check_usable()?;
        let bad = |reason: String| Error::BadSnapshot {
            path: self.path.to_path_buf(),
            height,
            reason,
        };
        if height <= self.version {
            return Err(bad(format!(
                "the store has committed height {} already",
                self.version
            )));
        }
        let mut chains = Vec::with_capacity(self.stores.len());
        for s in &self.stores {
            match hashes.iter().find(|(name, _)| name == s) {
                Some((_, h)) => chains.push(*h),
                None => return Err(bad(format!("no chain value for store {s}"))),
            }
        }
        if let Some((extra, _)) = hashes
            .iter()
            .find(|(n, _)| self.stores.binary_search(n).is_err())
        {
            return Err(bad(format!(
                "a chain value for store {extra}, which the store does not hold"
            )));
        }
        let gap = (self.version != 0).then_some((self.version + 1, height));
        let pending = self.pending.take();
        self.poisoned = Some(height);
        let path = Arc::clone(&self.path);
        let err = |e: redb::Error| Error::engine(&path, "restoring a snapshot", e);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        let (mut removed, mut removed_bytes) = (0u64, 0u64);
        {
            for (store, writes) in self.stores.iter().zip(pending) {
                let name = state_table_name(store);
                txn.delete_table(state_def(&name))
                    .map_err(|e| err(e.into()))?;
                let mut table = txn
                    .open_table(state_def(&name))
                    .map_err(|e| err(e.into()))?;
                for (key, value) in &writes {
                    if let Some(v) = value {
                        table
                            .insert(key.as_slice(), v.as_slice())
                            .map_err(|e| err(e.into()))?;
                    }
                }
            }
            let mut log = txn.open_table(CHANGELOG).map_err(|e| err(e.into()))?;
            log.retain(|_, entry| {
                removed += 1;
                removed_bytes += entry.len() as u64;
                false
            })
            .map_err(|e| err(e.into()))?;
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            meta.insert(META_VERSION, &height.to_be_bytes()[..])
                .map_err(|e| err(e.into()))?;
            let mut hash_t = txn.open_table(STORE_HASHES).map_err(|e| err(e.into()))?;
            for (store, h) in self.stores.iter().zip(&chains) {
                hash_t
                    .insert(store.name(), &h[..])
                    .map_err(|e| err(e.into()))?;
            }
            if let Some((from, to)) = gap {
                let mut gaps = txn.open_table(GAPS).map_err(|e| err(e.into()))?;
                gaps.insert(from, to).map_err(|e| err(e.into()))?;
            }
            let mut cursors = txn.open_table(CURSORS).map_err(|e| err(e.into()))?;
            let names: Vec<String> = cursors
                .iter()
                .map_err(|e| err(e.into()))?
                .map(|item| item.map(|(k, _)| k.value().to_string()))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| err(e.into()))?;
            for name in names {
                cursors
                    .insert(name.as_str(), height)
                    .map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))?;
        self.log_size.update(None, removed, removed_bytes);
        self.poisoned = None;
        self.version = height;
        self.app_hash =
            statestream_core::app_hash(self.stores.iter().map(StoreKey::name).zip(chains.iter()));
        self.hashes = chains;
        self.snapshot = open_snapshot(&self.db, &self.path, &self.stores)?;
        Ok(gap)
    }

    /// The system table `name` (credentials, subscriptions, ...): records
    /// of the node's own bookkeeping beside the stores, not streamed and
    /// not hashed. See [`Records`](crate::Records).
    pub fn records(&self, name: &str) -> crate::Records {
        crate::Records::new(self.db.clone(), self.path.clone(), name)
    }

    /// The height gaps recorded by [`continue_at`](MultiStore::continue_at),
    /// as (first missing, last missing) pairs in height order.
    pub fn gaps(&self) -> Result<Vec<(u64, u64)>> {
        let err = |e: redb::Error| Error::engine(&self.path, "reading height gaps", e);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = match txn.open_table(GAPS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(err(e.into())),
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            out.push((k.value(), v.value()));
        }
        Ok(out)
    }

    /// The persisted cursor `name`, if any.
    pub fn cursor(&self, name: &str) -> Result<Option<u64>> {
        let err = |e: redb::Error| Error::engine(&self.path, "reading cursors", e);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = txn.open_table(CURSORS).map_err(|e| err(e.into()))?;
        Ok(t.get(name).map_err(|e| err(e.into()))?.map(|v| v.value()))
    }

    /// All persisted cursors, by name.
    pub fn cursors(&self) -> Result<Vec<(String, u64)>> {
        let err = |e: redb::Error| Error::engine(&self.path, "reading cursors", e);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = txn.open_table(CURSORS).map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            out.push((k.value().to_string(), v.value()));
        }
        Ok(out)
    }

    /// Removes the persisted cursor `name`, in its own durable transaction.
    /// Returns whether there was one. A streamer of that name configured
    /// later starts with the next block, as a new one does.
    pub fn delete_cursor(&mut self, name: &str) -> Result<bool> {
        self.check_usable()?;
        let err = |e: redb::Error| Error::engine(&self.path, "deleting a cursor", e);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        let existed = {
            let mut t = txn.open_table(CURSORS).map_err(|e| err(e.into()))?;
            t.remove(name).map_err(|e| err(e.into()))?.is_some()
        };
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(existed)
    }

    /// Persists cursors now, in their own durable transaction (used at
    /// shutdown; during operation cursors ride along with commits).
    pub fn save_cursors(&mut self, cursors: &[(&str, u64)]) -> Result<()> {
        self.check_usable()?;
        let err = |e: redb::Error| Error::engine(&self.path, "saving cursors", e);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut t = txn.open_table(CURSORS).map_err(|e| err(e.into()))?;
            for (name, h) in cursors {
                t.insert(*name, *h).map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))
    }

    /// Removes change log entries below `height`; returns how many. Callers
    /// that stream must pass the lowest cursor + 1 of their streamers.
    pub fn prune_change_log(&mut self, below: u64) -> Result<u64> {
        self.check_usable()?;
        let err = |e: redb::Error| Error::engine(&self.path, "pruning the change log", e);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        let (mut removed, mut removed_bytes) = (0u64, 0u64);
        {
            let mut t = txn.open_table(CHANGELOG).map_err(|e| err(e.into()))?;
            t.retain_in(..below, |_, entry| {
                removed += 1;
                removed_bytes += entry.len() as u64;
                false
            })
            .map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))?;
        self.log_size.update(None, removed, removed_bytes);
        Ok(removed)
    }

    /// Makes every commit so far durable (a no-op with `fsync` on) and
    /// closes the store. Pending (uncommitted) writes are discarded.
    pub fn close(self) -> Result<()> {
        if self.poisoned.is_none() && !self.options.fsync {
            let err = |e: redb::Error| Error::engine(&self.path, "closing", e);
            let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
            txn.commit().map_err(|e| err(e.into()))?;
        }
        Ok(())
    }
}

/// What a commit did to the change log, for its size counter.
#[derive(Debug, Default)]
struct Logged {
    added: u64,
    removed: u64,
    removed_bytes: u64,
}

/// Creates a new database at `path` so that it only ever appears there
/// complete: it is made and initialised (a durable commit) under a
/// temporary name beside it, then renamed into place and the directory
/// synced. A crash while creating leaves at most the temporary file (removed
/// by the next attempt), never a file at `path` that is not a database.
fn create_new(path: &Path, stores: &[StoreKey], options: &StoreOptions) -> Result<()> {
    let io_err = |action: &'static str| {
        move |e: std::io::Error| Error::engine(path, action, redb::Error::Io(e))
    };
    let mut tmp_name = path
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .unwrap_or_default();
    tmp_name.push(".creating");
    let tmp = path.with_file_name(tmp_name);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing a half-created database")(e)),
    }
    let db = Database::builder()
        .set_cache_size(options.cache_size)
        .create(&tmp)
        .map_err(|e| open_error(path, e))?;
    drop(MultiStore::from_db(
        db,
        tmp.clone(),
        stores,
        options.clone(),
    )?);
    std::fs::rename(&tmp, path).map_err(io_err("creating"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing the directory of"))?;
    }
    Ok(())
}

pub(crate) fn unknown_store(store: &StoreKey, stores: &[StoreKey]) -> Error {
    Error::UnknownStore {
        store: store.name().to_string(),
        known: stores
            .iter()
            .map(StoreKey::name)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

pub(crate) fn check_store(stores: &[StoreKey], store: &StoreKey) -> Result<()> {
    stores
        .binary_search(store)
        .map(|_| ())
        .map_err(|_| unknown_store(store, stores))
}

/// One entry of a redb range over a state table.
type RawEntry<'a> = std::result::Result<
    (
        redb::AccessGuard<'a, &'static [u8]>,
        redb::AccessGuard<'a, &'static [u8]>,
    ),
    redb::StorageError,
>;

fn open_snapshot(db: &Database, path: &Path, stores: &[StoreKey]) -> Result<Snapshot> {
    let err = |e: redb::Error| Error::engine(path, "opening a read snapshot", e);
    let txn = db.begin_read().map_err(|e| err(e.into()))?;
    let mut tables = Vec::with_capacity(stores.len());
    for s in stores {
        let name = state_table_name(s);
        tables.push(
            txn.open_table(state_def(&name))
                .map_err(|e| err(e.into()))?,
        );
    }
    Ok(Snapshot { tables })
}

impl KvStore for MultiStore {
    fn stores(&self) -> &[StoreKey] {
        &self.stores
    }

    fn get(&self, store: &StoreKey, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check_usable()?;
        let i = self.index(store)?;
        if let Some(v) = self.pending.per_store[i].get(key) {
            return Ok(v.clone());
        }
        let got = self.snapshot.tables[i]
            .get(key)
            .map_err(|e| Error::engine(&self.path, "reading", e))?;
        Ok(got.map(|v| v.value().to_vec()))
    }

    fn set(&mut self, store: &StoreKey, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(store, key, Some(value))
    }

    fn delete(&mut self, store: &StoreKey, key: &[u8]) -> Result<()> {
        self.write(store, key, None)
    }

    fn write_owned(
        &mut self,
        store: &StoreKey,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> Result<()> {
        let index = self.check_write(store, &key)?;
        self.notify(index, store, &key, value.as_deref());
        self.pending.record_owned(index, key, value);
        Ok(())
    }

    fn range(
        &self,
        store: &StoreKey,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        order: Order,
    ) -> Result<KvIter<'_>> {
        self.check_usable()?;
        let i = self.index(store)?;
        if is_empty_range(start, end) {
            return Ok(KvIter::empty());
        }
        let path = Arc::clone(&self.path);
        let committed = self.snapshot.tables[i]
            .range::<&[u8]>((start, end))
            .map_err(|e| Error::engine(&path, "iterating", e))?;
        let map_item = move |item: RawEntry<'_>| {
            item.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                .map_err(|e| Error::engine(&path, "iterating", e))
        };
        let pending = self.pending.per_store[i]
            .range::<[u8], _>((start, end))
            .map(|(k, v)| (k.as_slice(), v.as_deref()));
        Ok(match order {
            Order::Ascending => merge(pending, KvIter::new(committed.map(map_item)), order),
            Order::Descending => merge(
                pending.rev(),
                KvIter::new(committed.rev().map(map_item)),
                order,
            ),
        })
    }
}
