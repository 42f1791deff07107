//! System records: small named tables of the node's own bookkeeping
//! (credentials, run-time subscriptions, a relay's upstream position) kept
//! in the store's database beside the streamed stores, never streamed and
//! never part of a hash. Each write is its own durable transaction, so it
//! survives a crash and needs no file kept in step; it waits for a commit in
//! progress, never the other way round for longer than one small write.

use std::path::PathBuf;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};

/// A handle on one system table, cheap to clone and usable from any thread
/// while the store commits. Table names live in their own namespace: they
/// cannot collide with a store's name (a store name has no `:`).
#[derive(Clone)]
pub struct Records {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    table: Arc<str>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("path", &self.path)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl Records {
    pub(crate) fn new(db: Arc<Database>, path: Arc<PathBuf>, name: &str) -> Records {
        Records {
            db,
            path,
            table: format!("sys:{name}").into(),
        }
    }

    fn def(&self) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(&self.table)
    }

    fn err(&self, doing: &'static str) -> impl Fn(redb::Error) -> Error + '_ {
        move |e| Error::engine(&self.path, doing, e)
    }

    /// The record `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let err = self.err("reading a system record");
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = match txn.open_table(self.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(err(e.into())),
        };
        Ok(t.get(key)
            .map_err(|e| err(e.into()))?
            .map(|v| v.value().to_vec()))
    }

    /// Every record, in key order.
    pub fn list(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let err = self.err("reading system records");
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = match txn.open_table(self.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(err(e.into())),
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Writes the record `key`, durably, replacing any earlier value.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.modify(key, |_| Some(value.to_vec()))
    }

    /// Writes the record `key` only if there is none yet; returns whether
    /// it was written (false: the key exists, nothing changed).
    pub fn insert_new(&self, key: &str, value: &[u8]) -> Result<bool> {
        let mut written = false;
        self.modify(key, |old| {
            written = old.is_none();
            written.then(|| value.to_vec())
        })?;
        Ok(written)
    }

    /// Reads the record `key` and writes what `change` returns for it
    /// (`None`: leave it as it is) in one durable write transaction, so no
    /// other write comes between the read and the write.
    pub fn modify(
        &self,
        key: &str,
        change: impl FnOnce(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<()> {
        let err = self.err("writing a system record");
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut t = txn.open_table(self.def()).map_err(|e| err(e.into()))?;
            let new = {
                let old = t.get(key).map_err(|e| err(e.into()))?;
                change(old.as_ref().map(|v| v.value()))
            };
            if let Some(new) = new {
                t.insert(key, new.as_slice()).map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))
    }

    /// Removes the record `key`, durably; returns whether there was one.
    pub fn delete(&self, key: &str) -> Result<bool> {
        let err = self.err("deleting a system record");
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        let existed = {
            let mut t = txn.open_table(self.def()).map_err(|e| err(e.into()))?;
            t.remove(key).map_err(|e| err(e.into()))?.is_some()
        };
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use crate::{KvStore, MultiStore, StoreKey};

    #[test]
    fn records_survive_a_reopen_and_are_not_a_store() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.redb");
        let bank = StoreKey::new("bank")?;
        {
            let store = MultiStore::open(&path, std::slice::from_ref(&bank), Default::default())?;
            let creds = store.records("credentials");
            assert!(creds.insert_new("wallet", b"one")?);
            assert!(
                !creds.insert_new("wallet", b"two")?,
                "an existing record is kept"
            );
            creds.put("indexer", b"x")?;
            creds.modify("indexer", |old| {
                assert_eq!(old, Some(&b"x"[..]));
                None
            })?;
            assert_eq!(
                creds.get("indexer")?,
                Some(b"x".to_vec()),
                "None leaves the record"
            );
            assert!(creds.delete("indexer")?);
            assert!(!creds.delete("indexer")?);
            assert_eq!(store.records("other").list()?, vec![]);
            store.close()?;
        }
        let store = MultiStore::open_existing(&path, Default::default())?;
        assert_eq!(
            store.records("credentials").list()?,
            vec![("wallet".to_string(), b"one".to_vec())]
        );
        assert_eq!(store.stores(), &[bank][..], "a system table is not a store");
        Ok(())
    }
}
