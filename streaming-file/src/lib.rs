//! `statestream-file`: the file streamer (`type = "file"`) and the reader of
//! the block files it writes.
//!
//! Per committed block `N`, the streamer writes `[P-]block-N-data` (an
//! 8-byte big-endian payload length, then the block's records as
//! uvarint-delimited Cosmos `StoreKVPair` messages, ordered by store then
//! key) and, with `output-metadata`, `[P-]block-N-meta` (an 8-byte
//! big-endian length, then a `BlockMetadata` message holding the payload's
//! length and CRC-32C, and its own CRC-32C at its end). A file gets its
//! final name only once complete (on Linux written unnamed and linked in;
//! elsewhere, and with `fsync = true`, through a temporary name and a
//! rename). The byte layout is in
//! `docs/file-format.md`.
//!
//! - [`FileStreamerConfig`] is the `app.toml` table of `type = "file"` and
//!   builds a [`FileStreamer`]; the `statestream` facade registers the type
//!   (cargo feature `file`, on by default).
//! - [`BlockDir`] lists a directory's blocks of one prefix, opens them as
//!   [`BlockFile`]s (checked against their header and meta file) and
//!   [`follows`](BlockDir::follow) a directory as blocks are written.
//!
//! ```
//! use std::sync::Arc;
//! use statestream_config::StreamerOptions;
//! use statestream_core::{
//!     Block, BlockMeta, ChangeSet, StoreChanges, StoreKey, StoreSelection, Streamer,
//!     StreamerContext, ZERO_HASH,
//! };
//! use statestream_file::{BlockDir, FileStreamerConfig, ReadOptions};
//!
//! let home = tempfile::tempdir()?;
//! let bank = StoreKey::new("bank")?;
//! let stores = [bank.clone()];
//!
//! // Build the streamer as the node does from `[streamers.file]`.
//! let options = StreamerOptions::default();
//! let ctx = StreamerContext {
//!     name: "file",
//!     stores: &stores,
//!     all_stores: &stores,
//!     home: home.path(),
//!     reader: None,
//!     shutdown: &statestream_core::Shutdown::default(),
//!     push: None,
//! };
//! let mut streamer = FileStreamerConfig::default().build(&ctx, &options)?;
//!
//! // Block 1 sets bank/alice; hand it to the streamer.
//! let mut changes = StoreChanges::new(bank.clone());
//! changes.push(b"alice", Some(b"10"), true);
//! let meta = BlockMeta::default();
//! let cs = ChangeSet::seal(1, meta.encode_app_meta(), vec![changes], &[ZERO_HASH]);
//! let block = Block::new(Arc::new(cs), Arc::new(meta), &StoreSelection::all(&stores));
//! streamer.on_block(&block)?;
//!
//! // Read it back.
//! let dir = BlockDir::open(&home.path().join("data/streaming"), "", ReadOptions::default())?;
//! assert_eq!(dir.heights()?, [1]);
//! let file = dir.open_block(1)?;
//! assert_eq!(file.meta().map(|m| m.height), Some(1));
//! for record in file.records() {
//!     let record = record?;
//!     assert_eq!((record.store, record.key, record.value), ("bank", &b"alice"[..], Some(&b"10"[..])));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod config;
mod durable;
mod error;
mod layout;
mod reader;
mod syncer;
mod writer;

pub use config::{FILE_TYPE, FileStreamerConfig};
pub use error::Error;
pub use layout::MAX_PREFIX_LEN;
pub use reader::{BlockDir, BlockFile, Follow, ReadOptions, RecordIter};
pub use writer::FileStreamer;
