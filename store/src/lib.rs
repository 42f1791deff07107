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
mod changeset;
mod checksum;
mod error;
mod hash;
mod iter;
mod key;
mod kv;
mod listener;
mod multistore;
mod record;

pub use cache::Cache;
pub use changelog::ChangeLog;
pub use changeset::{ChangeSet, CommitInfo, StoreChanges};
pub use checksum::{crc32c_append, crc32c_combine};
pub use error::{Error, Result};
pub use hash::{Hash, ZERO_HASH, app_hash, chain_store_hash, to_hex};
pub use iter::{KvIter, Order};
pub use key::{MAX_STORE_KEY_LEN, StoreKey};
pub use kv::KvStore;
pub use listener::WriteListener;
pub use multistore::{CommitInput, DEFAULT_CACHE_SIZE, MultiStore, StoreOptions};
pub use record::{
    Record, Records, decode_message, encode_record, get_uvarint, put_uvarint, uvarint_len,
};
