//! `statestream`: streams the committed state changes of a
//! [`statestream_store::MultiStore`], block by block, to streamers chosen in
//! `app.toml`. This is the crate an application depends on.
//!
//! - [`Registry`]: streamer type name -> constructor.
//!   [`Registry::with_builtins`] holds every built-in type of this build:
//!   `log`, `process`, and each streamer crate enabled by its cargo feature
//!   of the same name (`file`, `nats`, `postgres`, `serve`, `webhook`; all
//!   on by default).
//! - [`DeliveryManager`] (set up with [`DeliveryManager::builder`]):
//!   commits blocks and delivers them, sync or async, with persisted
//!   cursors, catch-up from the store's change log, the
//!   `stop-node-on-error` policy (a panicking streamer included), and a
//!   bounded drain at close.
//! - [`Observer`] ([`DeliveryManager::observer`]): committed height, commit
//!   durations, the change log's size and every streamer's progress, read
//!   from any thread; `TelemetryServer` (cargo feature `telemetry`, on by
//!   default) serves them as `GET /metrics` (Prometheus), `GET /status`
//!   (JSON) and `GET /healthz` (`docs/operations.md`).
//! - `register_serve_metrics` (cargo features `serve` and `telemetry`): a
//!   `serve` streamer's counters, by front-end, in the Prometheus registry.
//! - [`ProcessStreamer`] (`type = "process"`): a streamer that is a separate
//!   program in any language (`docs/plugin-protocol.md`).
//! - The data model and the extension point, re-exported from
//!   `statestream-core` (what a streamer crate depends on): [`Streamer`],
//!   [`Block`], [`StreamerContext`], [`proto`], [`plugin`].
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
//! let mut manager = DeliveryManager::builder()
//!     .streamer(setup, Box::new(Heights(seen.clone())))
//!     .start(&mut store)?;
//! for i in 0..3u8 {
//!     store.set(&bank, b"k", &[i])?;
//!     manager.commit(&mut store, BlockMeta::default())?;
//! }
//! manager.close(&mut store)?;
//! assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod builtin;
mod driver;
mod error;
mod ingest;
mod manager;
mod observe;
mod process;
mod registry;
#[cfg(all(feature = "serve", feature = "telemetry"))]
mod serve_metrics;
#[cfg(feature = "telemetry")]
mod telemetry;

pub use error::{Error, Result};
pub use ingest::{
    INGEST_SECTION, Ingest, IngestStatus, Ingested, OnGap, SourceBlock, SourceHashes,
    SourceSnapshot, SourceWrite, StartManager,
};
pub use manager::{
    DeliveryManager, DeliveryManagerBuilder, RuntimeCursor, RuntimeHandle, StartAt, StreamerSetup,
    StreamerStats,
};
pub use observe::{
    Bucket, COMMIT_BUCKETS, ChangeLogStatus, GapStatus, Health, HistogramStatus, IngestReport,
    NodeState, NodeStatus, Observer, Section, StatusSection, StreamerState, StreamerStatus,
};
pub use process::{PLUGIN_INHERITED_ENV, ProcessError, ProcessStreamer, ProcessStreamerConfig};
/// The Prometheus client (`telemetry` feature), for streamers that register
/// metrics of their own in [`Registry::metrics`].
#[cfg(feature = "telemetry")]
pub use prometheus;
pub use registry::Registry;
#[cfg(all(feature = "serve", feature = "telemetry"))]
pub use serve_metrics::register_serve_metrics;
/// The `app.toml` model (`statestream-config`), for an application that
/// depends on this crate alone.
pub use statestream_config as config;
pub use statestream_config::Delivery;
pub use statestream_core::{
    Action, Block, BlockMeta, BoxError, ChangeSet, CommitInfo, Hash, PUSH_BLOCK_BYTES, PushBatch,
    PushError, PushQueue, PushedWrite, Record, Shutdown, StateReader, StateSnapshot, StoreKey,
    StoreSelection, StreamError, Streamer, StreamerContext, Tx, crc32c_append, plugin, proto,
    to_hex,
};
/// The store (`statestream-store`), for an application that depends on this
/// crate alone.
pub use statestream_store as store;
#[cfg(feature = "telemetry")]
pub use telemetry::{TelemetryError, TelemetryOptions, TelemetryServer};
