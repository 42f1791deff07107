//! `statestream-core`: the data model and the extension point of
//! statestream, and all a streamer needs to depend on.
//!
//! - [`StoreKey`], the canonical record encoding ([`encode_record`],
//!   [`Records`]), [`ChangeSet`]/[`StoreChanges`] (one block's net changes,
//!   built once by the store and shared), the hash chains and the app hash.
//! - [`Block`]: one committed block as a streamer sees it (the shared change
//!   set filtered to its stores, and the application's [`BlockMeta`]).
//! - [`Streamer`]: the trait a destination implements (one required hook,
//!   `on_block`; its contract is written on it), [`StreamError`], and
//!   [`StreamerContext`] with read access to the node's state
//!   ([`StateReader`], [`StateSnapshot`]) and the queue of writes pushed
//!   by consumers ([`PushQueue`]).
//! - [`proto`]: the wire schema; [`plugin`]: the plugin protocol's framing,
//!   for out-of-process streamers written in Rust.
//!
//! No storage engine, TOML, channels or threads: the store
//! (`statestream-store`), the delivery manager and the registry
//! (`statestream`) build on this crate, and so does every streamer. The one
//! piece of shared state here is [`PushQueue`], a mutex-guarded list of
//! pushed writes: it is part of the streamer contract (a streamer receives
//! it in its [`StreamerContext`], and streamer crates depend on this crate
//! alone), so it cannot live in the facade, which depends on the streamer
//! crates.
//!
//! ```
//! use statestream_core::{
//!     Block, BlockMeta, ChangeSet, StoreChanges, StoreKey, StoreSelection, StreamError,
//!     Streamer, ZERO_HASH,
//! };
//! use std::sync::Arc;
//!
//! /// Counts the records it is given.
//! struct Count(usize);
//! impl Streamer for Count {
//!     fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
//!         self.0 += block.records().count();
//!         Ok(())
//!     }
//! }
//!
//! let bank = StoreKey::new("bank")?;
//! let mut changes = StoreChanges::new(bank.clone());
//! changes.push(b"alice", Some(b"10"), true);
//! changes.push(b"bob", None, false);
//! let meta = BlockMeta::default();
//! let cs = ChangeSet::seal(1, meta.encode_app_meta(), vec![changes], &[ZERO_HASH]);
//! let block = Block::new(Arc::new(cs), Arc::new(meta), &StoreSelection::all(&[bank]));
//!
//! let mut count = Count(0);
//! count.on_block(&block)?;
//! assert_eq!(count.0, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod block;
mod changeset;
mod checksum;
mod context;
mod error;
mod hash;
mod key;
pub mod plugin;
pub mod proto;
mod push;
mod record;
mod streamer;

pub use block::{
    Block, BlockMeta, META_CRC_FIELD_LEN, MetaChecksum, StoreSelection, Tx, check_metadata_checksum,
};
pub use changeset::{Action, ChangeSet, CommitInfo, StoreChanges, StoreParts};
pub use checksum::{crc32c_append, crc32c_combine};
pub use context::{
    KeyValue, KeyValues, Shutdown, SnapshotHashes, StateReader, StateSnapshot, StreamerContext,
    prefix_end,
};
pub use error::{BoxError, Error, Result, StreamError};
pub use hash::{Hash, ZERO_HASH, app_hash, chain_store_hash, to_hex};
pub use key::{MAX_STORE_KEY_LEN, StoreKey};
pub use push::{
    PUSH_BLOCK_BYTES, PUSH_QUEUE_LIMIT, PushBatch, PushError, PushQueue, PushReply, PushedWrite,
};
pub use record::{Record, Records, decode_message, encode_record};
pub use streamer::Streamer;
