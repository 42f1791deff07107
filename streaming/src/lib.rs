//! `statestream`: streams the committed state changes of a
//! [`statestream_store::MultiStore`], block by block, to streamers chosen in
//! `app.toml`.
//!
//! - [`Streamer`]: the trait a destination implements (one required hook,
//!   `on_block`; its contract is written on it).
//! - [`Block`]: one committed block as a streamer sees it (the shared change
//!   set, filtered to the streamer's stores, and the block's metadata).
//! - [`Registry`]: streamer type name -> constructor.
//! - [`DeliveryManager`]: commits blocks and delivers them, sync or async,
//!   with persisted cursors, catch-up from the store's change log, and the
//!   `stop-node-on-error` policy.
//! - [`ProcessStreamer`] (`type = "process"`): a streamer that is a separate
//!   program in any language; [`plugin`] holds the protocol's framing and a
//!   helper for writing plugins in Rust (`docs/plugin-protocol.md`).
//! - [`proto`]: the wire schema (`proto/statestream/v1/*.proto`).
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use statestream::{Block, BlockMeta, DeliveryManager, StreamError, Streamer, StreamerSetup};
//! use statestream_store::{KvStore, MultiStore, StoreKey};
//!
//! struct Heights(Arc<Mutex<Vec<u64>>>);
//! impl Streamer for Heights {
//!     fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
//!         self.0.lock().unwrap().push(block.height());
//!         Ok(())
//!     }
//! }
//!
//! let bank = StoreKey::new("bank")?;
//! let mut store = MultiStore::in_memory(&[bank.clone()])?;
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let setup = StreamerSetup::new("heights", &[bank.clone()]);
//! let mut manager =
//!     DeliveryManager::with_streamers(&mut store, vec![(setup, Box::new(Heights(seen.clone())))])?;
//! for i in 0..3u8 {
//!     store.set(&bank, b"k", &[i])?;
//!     manager.commit(&mut store, BlockMeta::default())?;
//! }
//! manager.close(&mut store)?;
//! assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod block;
mod builtin;
mod error;
mod manager;
pub mod plugin;
mod process;
pub mod proto;
mod registry;
mod streamer;

pub use block::{Block, BlockMeta, StoreSelection, Tx};
pub use error::{BoxError, Error, Result, StreamError};
pub use manager::{DeliveryManager, StreamerSetup, StreamerStats};
pub use process::{ProcessError, ProcessStreamer, ProcessStreamerConfig};
pub use registry::{Registry, StreamerContext};
pub use statestream_config::Delivery;
pub use statestream_store::crc32c_append;
pub use streamer::Streamer;
