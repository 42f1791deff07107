//! The delivery manager: hands every committed block to every configured
//! streamer, sync or async, keeps their cursors, catches them up from the
//! change log, and applies the error policy.
//!
//! - `setup.rs`: the builder, cursor resolution, starting the streamers.
//! - `commit.rs`: the commit path (cursors and pruning in the store's
//!   transaction, then the block to every streamer) and the stats.
//! - `worker.rs`: an async streamer's thread.
//! - `close.rs`: the bounded drain at shutdown.
//! - `runtime.rs`: streamers added and removed while it runs.

mod close;
mod commit;
mod queue;
mod runtime;
mod setup;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;
use statestream_core::{PushQueue, Shutdown, StoreKey, StoreSelection};

use crate::driver::{Driver, Halt, Progress};
use crate::error::Result;
use crate::observe::Observer;

pub use commit::StreamerStats;
pub use runtime::{RuntimeCursor, RuntimeHandle, StartAt};
pub use setup::{DeliveryManagerBuilder, StreamerSetup};

enum Mode {
    Sync {
        driver: Driver,
    },
    Async {
        tx: Option<queue::QueueSender>,
        handle: Option<JoinHandle<()>>,
        /// Disconnected when the worker thread has ended.
        done: Receiver<()>,
    },
}

struct Instance {
    setup: StreamerSetup,
    progress: Arc<Progress>,
    selection: StoreSelection,
    mode: Mode,
    /// The cursor value last written to the store.
    persisted: u64,
}

/// Delivers committed blocks to streamers.
///
/// Set one up with [`DeliveryManager::builder`]. Wire it into the commit
/// path by committing through it: [`commit`](DeliveryManager::commit)
/// commits the block on the store (with the streamers' cursors and the
/// change-log pruning in the same transaction) and then hands the block to
/// every streamer.
///
/// - `sync` streamers are called inside `commit`, on the caller's thread.
/// - `async` streamers each have a bounded queue and a worker thread.
///   `commit` never waits for them: when a queue is full the streamer falls
///   behind, and its worker later reads the blocks it missed from the change
///   log. Memory stays bounded by the queue lengths.
/// - Every streamer has a cursor (the last height it delivered), persisted
///   in the store. On start, a streamer is first caught up from the change
///   log from its cursor to the committed height, then follows live blocks.
///   A streamer new to the store starts with the next block.
/// - The change log is pruned below the lowest cursor only.
/// - Streamers can also be added and removed while the manager runs, from
///   any thread, through a [`RuntimeHandle`] ([`runtime`](DeliveryManager::runtime)):
///   async, each with its own cursor (starting at the head, at a height the
///   change log still keeps, or where it stopped), registered in the store
///   so that after a restart its cursor keeps holding the change log until
///   the application adds it again ([`StartAt::Resume`]) or removes it.
///   A stopped one keeps its cursor (and the change log what it has not
///   delivered); a removed one loses it.
///
/// Error policy, with `stop-node-on-error = true`:
/// - sync: the `commit` call of the failing block returns
///   [`Error::Halted`](crate::Error::Halted). That block is committed (it is
///   in the state and the change log); the streamer's cursor stays before
///   it.
/// - async: the worker stops; the first `commit` call after the failure
///   returns [`Error::Halted`](crate::Error::Halted) without committing
///   anything. Blocks committed between the failure and that call are in
///   the change log.
///
/// In both cases every later `commit` returns the same error, and after a
/// restart the streamer resumes from its cursor. With `false`, errors are
/// logged and counted; the block is attempted again (async: after a backoff
/// that doubles from the worker's `BACKOFF_MIN` to its `BACKOFF_MAX`; sync:
/// at the next commit) and nothing is skipped.
///
/// A panic in a streamer's hook is caught and is that streamer's error,
/// under the same policy; the streamer is then started again (`on_start`)
/// from its cursor before its next delivery.
///
/// [`close`](DeliveryManager::close) is bounded: see there.
pub struct DeliveryManager {
    instances: Vec<Instance>,
    all_stores: Vec<StoreKey>,
    committed: Arc<AtomicU64>,
    pruned_below: u64,
    /// The most blocks any streamer asked the change log to keep
    /// ([`Streamer::retain_blocks`](statestream_core::Streamer::retain_blocks)).
    retain: u64,
    halt: Option<Halt>,
    /// Triggered when close begins: workers stop retrying failures.
    closing: Shutdown,
    /// The streamers' signal, triggered when the drain at close ends: they
    /// end their own waits.
    shutdown: Shutdown,
    /// How long close lets async streamers drain.
    shutdown_timeout: Duration,
    /// Writes pushed by consumers, handed to every configured streamer; the
    /// application drains it.
    push: PushQueue,
    /// What observers (a metrics endpoint) see.
    observer: Observer,
    /// Streamers added and removed at run time, shared with the handles.
    runtime: Arc<runtime::Runtime>,
    /// The node's credentials, installed under the configured streamers'
    /// state reader while the manager lives (a `serve` streamer finds them
    /// there); `None` without configured streamers.
    credentials: Option<statestream_access::Installation>,
}

impl std::fmt::Debug for DeliveryManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryManager")
            .field(
                "streamers",
                &self
                    .instances
                    .iter()
                    .map(|i| &i.setup.name)
                    .collect::<Vec<_>>(),
            )
            .field("committed", &self.committed.load(Ordering::Relaxed))
            .finish()
    }
}

impl DeliveryManager {
    /// Sets up a manager: streamers from app.toml
    /// ([`configured`](DeliveryManagerBuilder::configured)) and built by the
    /// application ([`streamer`](DeliveryManagerBuilder::streamer)), then
    /// [`start`](DeliveryManagerBuilder::start).
    pub fn builder<'a>() -> DeliveryManagerBuilder<'a> {
        DeliveryManagerBuilder::default()
    }

    /// The queue of writes consumers pushed (a `serve` streamer's
    /// `PushUpdate`). Calling this declares that the application drains
    /// it: until then pushes are refused. Before each [`commit`]
    /// (`DeliveryManager::commit`), take a batch with
    /// [`PushQueue::drain`], apply the writes it accepts to the store
    /// (rejecting the others with
    /// [`PushBatch::retain`](statestream_core::PushBatch::retain)), and
    /// commit with [`commit_pushed`](DeliveryManager::commit_pushed), which
    /// tells the batch the height.
    ///
    /// [`commit`]: DeliveryManager::commit
    pub fn push_queue(&self) -> PushQueue {
        self.push.attach();
        self.push.clone()
    }

    /// The signal this manager triggers when the drain at close ends, or
    /// when it is dropped.
    pub fn shutdown_signal(&self) -> &Shutdown {
        &self.shutdown
    }

    /// A read-only view of this manager for other threads: committed
    /// height, commit durations, the change log's size, every streamer's
    /// progress and state. What the telemetry server serves.
    pub fn observer(&self) -> Observer {
        self.observer.clone()
    }

    /// A handle to add and remove streamers while the manager runs, from
    /// any thread. See [`RuntimeHandle`].
    pub fn runtime(&self) -> RuntimeHandle {
        RuntimeHandle {
            inner: Arc::clone(&self.runtime),
        }
    }

    /// The node's credentials (the store's system table `credentials`),
    /// shared with the `serve` streamers: what the admin API changes.
    /// `None` when the manager has no configured streamers.
    pub fn credentials(&self) -> Option<statestream_access::Registry> {
        self.credentials.as_ref().map(|i| i.registry().clone())
    }

    /// The stores of the multi-store, in name order.
    pub fn stores(&self) -> &[StoreKey] {
        &self.all_stores
    }

    /// The first halt of any streamer, remembered so that every later call
    /// reports the same one.
    fn check_halted(&mut self) -> Result<()> {
        if self.halt.is_none() {
            self.halt = self.instances.iter().find_map(|i| i.progress.halt());
        }
        match &self.halt {
            Some(h) => Err(h.clone().into()),
            None => Ok(()),
        }
    }
}
