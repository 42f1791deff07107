//! Read access for other threads: snapshots of the committed state pinned at
//! one height, and the change log, behind the core's [`StateReader`] trait
//! (what a streamer's [`StreamerContext`](statestream_core::StreamerContext)
//! holds).

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

use redb::{Database, ReadOnlyTable, ReadableDatabase};
use statestream_core::{
    ChangeSet, Hash, KeyValues, SnapshotHashes, StateReader, StateSnapshot, StoreKey, StreamError,
    ZERO_HASH,
};

use crate::changelog::ChangeLog;
use crate::error::{Error, Result};
use crate::multistore::{
    META, META_VERSION, STORE_HASHES, state_def, state_table_name, unknown_store,
};

/// A handle that reads committed data from any thread while the node keeps
/// committing: cheap to clone, `Send + Sync`. Reads never see uncommitted
/// writes and never block a commit.
#[derive(Clone)]
pub struct StoreReader {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    stores: Arc<[StoreKey]>,
    change_log: ChangeLog,
}

impl std::fmt::Debug for StoreReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreReader")
            .field("path", &self.path)
            .field("stores", &self.stores)
            .finish()
    }
}

impl StoreReader {
    pub(crate) fn new(
        db: Arc<Database>,
        path: Arc<PathBuf>,
        stores: &[StoreKey],
        change_log: ChangeLog,
    ) -> StoreReader {
        StoreReader {
            db,
            path,
            stores: stores.into(),
            change_log,
        }
    }

    /// A snapshot of the committed state, pinned at the last committed
    /// height.
    pub fn read_snapshot(&self) -> Result<ReadSnapshot> {
        let err = |e: redb::Error| Error::engine(&self.path, "opening a read snapshot", e);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let height = {
            let meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            match meta.get(META_VERSION).map_err(|e| err(e.into()))? {
                Some(v) => {
                    u64::from_be_bytes(v.value().try_into().map_err(|_| Error::Corrupt {
                        path: self.path.to_path_buf(),
                        what: "the stored version is not 8 bytes".into(),
                    })?)
                }
                None => 0,
            }
        };
        let mut tables = Vec::with_capacity(self.stores.len());
        for s in self.stores.iter() {
            tables.push(
                txn.open_table(state_def(&state_table_name(s)))
                    .map_err(|e| err(e.into()))?,
            );
        }
        let hashes = txn.open_table(STORE_HASHES).map_err(|e| err(e.into()))?;
        Ok(ReadSnapshot {
            height,
            stores: Arc::clone(&self.stores),
            tables,
            hashes,
            path: Arc::clone(&self.path),
        })
    }
}

impl StateReader for StoreReader {
    fn snapshot(&self) -> std::result::Result<Box<dyn StateSnapshot>, StreamError> {
        Ok(Box::new(self.read_snapshot().map_err(StreamError::new)?))
    }

    fn committed_height(&self) -> std::result::Result<u64, StreamError> {
        Ok(self.read_snapshot().map_err(StreamError::new)?.height)
    }

    fn retained(&self) -> std::result::Result<Option<(u64, u64)>, StreamError> {
        self.change_log.bounds().map_err(StreamError::new)
    }

    fn change_set(&self, height: u64) -> std::result::Result<Arc<ChangeSet>, StreamError> {
        self.change_log
            .read(height)
            .map(Arc::new)
            .map_err(StreamError::new)
    }
}

/// The committed state of every store at one height (a redb read
/// transaction).
pub struct ReadSnapshot {
    height: u64,
    stores: Arc<[StoreKey]>,
    tables: Vec<ReadOnlyTable<&'static [u8], &'static [u8]>>,
    hashes: ReadOnlyTable<&'static str, &'static [u8]>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for ReadSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSnapshot")
            .field("height", &self.height)
            .finish()
    }
}

impl StateSnapshot for ReadSnapshot {
    fn height(&self) -> u64 {
        self.height
    }

    fn hashes(&self) -> std::result::Result<Option<SnapshotHashes>, StreamError> {
        let err = |e: redb::Error| {
            StreamError::new(Error::engine(&self.path, "reading a snapshot's hashes", e))
        };
        let mut stores = Vec::with_capacity(self.stores.len());
        for s in self.stores.iter() {
            let stored = self.hashes.get(s.name()).map_err(|e| err(e.into()))?;
            let hash: Hash = match stored {
                Some(v) => v.value().try_into().map_err(|_| {
                    StreamError::new(Error::Corrupt {
                        path: self.path.to_path_buf(),
                        what: format!("hash of store {s} is not 32 bytes"),
                    })
                })?,
                None => ZERO_HASH,
            };
            stores.push((s.clone(), hash));
        }
        // As `MultiStore::last_commit`: no app hash before the first block.
        let app_hash = if self.height == 0 {
            ZERO_HASH
        } else {
            statestream_core::app_hash(stores.iter().map(|(s, h)| (s.name(), h)))
        };
        Ok(Some(SnapshotHashes { app_hash, stores }))
    }

    fn range(
        &self,
        store: &StoreKey,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> std::result::Result<KeyValues<'_>, StreamError> {
        let i = self
            .stores
            .binary_search(store)
            .map_err(|_| StreamError::new(unknown_store(store, &self.stores)))?;
        if crate::iter::is_empty_range(start, end) {
            return Ok(Box::new(std::iter::empty()));
        }
        let path = Arc::clone(&self.path);
        let range = self.tables[i]
            .range::<&[u8]>((start, end))
            .map_err(|e| StreamError::new(Error::engine(&path, "iterating a read snapshot", e)))?;
        Ok(Box::new(range.map(move |item| {
            item.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                .map_err(|e| StreamError::new(Error::engine(&path, "iterating a read snapshot", e)))
        })))
    }
}
