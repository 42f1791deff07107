//! `statestream-file`: the file streamer (`type = "file"`) and the reader of
//! the block files it writes.
//!
//! Per committed block `N`, the streamer writes `[P-]block-N-data` (an
//! 8-byte big-endian payload length, then the block's records as
//! uvarint-delimited Cosmos `StoreKVPair` messages, ordered by store then
//! key) and, with `output-metadata`, `[P-]block-N-meta` (an 8-byte
//! big-endian length, then a `BlockMetadata` message holding the payload's
//! length and CRC-32C). Files are written under a temporary name and renamed
//! into place. The byte layout is in `docs/file-format.md`.
//!
//! - [`register`] adds the type `"file"` to a [`statestream::Registry`];
//!   [`FileStreamerConfig`] is its `app.toml` table and builds a
//!   [`FileStreamer`].
//! - [`BlockDir`] lists a directory's blocks of one prefix, opens them as
//!   [`BlockFile`]s (checked against their header and meta file) and
//!   [`follows`](BlockDir::follow) a directory as blocks are written.
//!
//! ```
//! use std::sync::Arc;
//! use statestream::{Block, BlockMeta, StoreSelection, Streamer, StreamerContext};
//! use statestream_config::StreamerOptions;
//! use statestream_file::{BlockDir, FileStreamerConfig, ReadOptions};
//! use statestream_store::{CommitInput, KvStore, MultiStore, StoreKey};
//!
//! let home = tempfile::tempdir()?;
//! let bank = StoreKey::new("bank")?;
//! let stores = [bank.clone()];
//!
//! // Build the streamer as the node does from `[streamers.file]`.
//! let options = StreamerOptions::default();
//! let ctx = StreamerContext { name: "file", stores: &stores, options: &options, home: home.path() };
//! let mut streamer = FileStreamerConfig::default().build(&ctx)?;
//!
//! // Commit a block and hand it to the streamer.
//! let mut store = MultiStore::in_memory(&stores)?;
//! store.set(&bank, b"alice", b"10")?;
//! let meta = BlockMeta::default();
//! let changes = store.commit_block(CommitInput::new().app_meta(meta.encode_app_meta()))?;
//! let block = Block::new(changes, Arc::new(meta), &StoreSelection::all(&stores));
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
mod error;
mod layout;
mod reader;
mod syncer;
mod writer;

pub use config::{FILE_TYPE, FileStreamerConfig, register};
pub use error::Error;
pub use layout::MAX_PREFIX_LEN;
pub use reader::{BlockDir, BlockFile, Follow, ReadOptions, RecordIter};
pub use writer::FileStreamer;
