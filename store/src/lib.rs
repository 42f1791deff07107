//! `statestream-store`: the key/value engine whose committed changes
//! statestream streams.
//!
//! A [`MultiStore`] holds named sub-stores ([`StoreKey`]) on one embedded
//! database (redb). Writes go to the root or through nestable [`Cache`]
//! layers; only writes that reach the root are observed by
//! [`WriteListener`]s, once each. [`MultiStore::commit`] persists the block's
//! state, its change set (in the change log) and the per-store hash chains in
//! one engine transaction and returns [`CommitInfo`].
//!
//! The store knows nothing of streaming, protobuf schemas or TOML; it emits
//! plain change sets whose records are in the canonical record encoding (see
//! [`encode_record`]), the bytes that the app hash covers.
//!
//! ```
//! use statestream_store::{KvStore, MultiStore, Order, StoreKey};
//!
//! let bank = StoreKey::new("bank")?;
//! let acc = StoreKey::new("acc")?;
//! let mut store = MultiStore::in_memory(&[bank.clone(), acc.clone()])?;
//!
//! let mut tx = store.cache();
//! tx.set(&bank, b"alice", b"10")?;
//! tx.set(&bank, b"bob", b"5")?;
//! {
//!     let mut inner = tx.cache();
//!     inner.delete(&bank, b"bob")?;
//!     inner.write()?;
//! }
//! tx.write()?;
//! let info = store.commit()?;
//! assert_eq!(info.version, 1);
//!
//! let keys: Vec<_> = store
//!     .iter(&bank, Order::Ascending)?
//!     .map(|kv| kv.map(|(k, _)| k))
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(keys, vec![b"alice".to_vec()]);
//!
//! let block = store.change_log().read(1)?;
//! let records: Vec<_> = block.records().map(|r| (r.key.to_vec(), r.is_delete())).collect();
//! assert_eq!(records, vec![(b"alice".to_vec(), false), (b"bob".to_vec(), true)]);
//! # Ok::<(), statestream_store::Error>(())
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod cache;
mod changelog;
mod error;
mod iter;
mod kv;
mod listener;
mod multistore;
mod reader;
mod records;

pub use cache::Cache;
pub use changelog::{ChangeLog, ChangeLogMeter, ChangeLogSize};
pub use error::{Error, Result};
pub use iter::{KvIter, Order};
pub use kv::KvStore;
pub use listener::WriteListener;
pub use multistore::{CommitInput, DEFAULT_CACHE_SIZE, MultiStore, StoreOptions};
pub use reader::{ReadSnapshot, StoreReader};
pub use records::Records;
/// The data model the store commits in, from `statestream-core` (its
/// signatures use these types).
pub use statestream_core::{ChangeSet, CommitInfo, Hash, StoreChanges, StoreKey};
