//! Streamers added and removed while the manager runs, from any thread:
//! the [`RuntimeHandle`].
//!
//! A run-time streamer is async. The handle starts its worker at once (it
//! catches up from the change log on its own thread) and leaves it for the
//! manager to adopt at its next commit; the adoption, the change-log
//! pruning and the handle's retention check all happen under one lock, so
//! a block the new streamer still needs is never pruned between the check
//! and the adoption.
//!
//! Every run-time streamer is registered in the store's system table
//! `runtime_streamers` (name -> the cursor it was registered with); its
//! cursor then rides with the commits like any other. A registered
//! streamer that does not run (stopped with [`RuntimeHandle::stop`], or
//! not added again yet after a restart) is *held*: its cursor still holds
//! the change log, so that it resumes losing nothing. Only
//! [`RuntimeHandle::remove`] drops the registration and the cursor.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use statestream_config::Delivery;
use statestream_core::{Shutdown, StoreKey, StoreSelection, Streamer};
use statestream_store::{ChangeLog, MultiStore, Records};
use tracing::{info, warn};

use super::setup::{StreamerSetup, spawn};
use super::{Instance, Mode};
use crate::driver::{Driver, Progress};
use crate::error::{Error, Result};
use crate::observe::{Observer, Watched};

/// The system table of run-time streamers: name -> the cursor (8 bytes,
/// big-endian) it was registered or last stopped with.
pub(crate) const RUNTIME_TABLE: &str = "runtime_streamers";

/// After the drain limit, how long a stop still waits for the worker.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Where a streamer added at run time starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartAt {
    /// With the next block committed.
    Head,
    /// With block `height` (at least 1, at most the next block): the blocks
    /// from it to the committed height are read from the change log first,
    /// which must still keep them.
    Height(u64),
    /// From the cursor the store keeps for this name (a streamer stopped
    /// with [`RuntimeHandle::stop`], or one that ran before a restart); a
    /// name without one starts with the next block.
    Resume,
}

/// One run-time streamer's progress, as [`RuntimeHandle::cursor`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeCursor {
    /// Whether it runs (false: held, its cursor keeping the change log).
    pub running: bool,
    /// The last height delivered.
    pub delivered: u64,
    /// The last height flushed: the cursor persisted in the store.
    pub durable: u64,
}

/// One running run-time streamer, as the handle sees it.
struct Running {
    progress: Arc<Progress>,
    /// Disconnected when its worker thread has ended.
    done: crossbeam_channel::Receiver<()>,
}

/// What the handle and the manager share, under [`Runtime::state`].
#[derive(Default)]
pub(crate) struct RuntimeState {
    /// Set when the manager closes: nothing more is added.
    pub(super) closed: bool,
    /// Started by a handle, not yet adopted by the manager.
    pub(super) adopt: Vec<(Instance, u64)>,
    running: BTreeMap<String, Running>,
    /// Registered, not running: their cursors hold the change log.
    pub(super) held: BTreeMap<String, u64>,
    /// Cursors of stopped streamers, for the next commit (or close).
    pub(super) write_cursors: BTreeMap<String, u64>,
    /// Cursors of removed streamers, for the next commit (or close) to
    /// delete.
    pub(super) drop_cursors: Vec<String>,
    /// The change log keeps no block below this height.
    pub(super) pruned_below: u64,
}

/// What every [`RuntimeHandle`] of one manager shares with it.
pub(crate) struct Runtime {
    pub(crate) state: Mutex<RuntimeState>,
    registry: Records,
    change_log: ChangeLog,
    all_stores: Vec<StoreKey>,
    committed: Arc<AtomicU64>,
    configured: HashSet<String>,
    closing: Shutdown,
    observer: Observer,
    shutdown_timeout: Duration,
}

impl Runtime {
    pub(crate) fn lock(&self) -> MutexGuard<'_, RuntimeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads the registered run-time streamers at start: each is held at its
/// cursor (the one that rode with the commits, else the one it was
/// registered with) until it is added again or removed.
pub(crate) fn registered(store: &MultiStore) -> Result<BTreeMap<String, u64>> {
    let mut held = BTreeMap::new();
    for (name, value) in store.records(RUNTIME_TABLE).list()? {
        let cursor = match store.cursor(&name)? {
            Some(c) => c,
            None => decode(&value),
        };
        held.insert(name, cursor.min(store.version()));
    }
    Ok(held)
}

fn decode(value: &[u8]) -> u64 {
    value
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn runtime(
    store: &MultiStore,
    held: BTreeMap<String, u64>,
    pruned_below: u64,
    committed: Arc<AtomicU64>,
    configured: HashSet<String>,
    closing: Shutdown,
    observer: Observer,
    shutdown_timeout: Duration,
) -> Arc<Runtime> {
    Arc::new(Runtime {
        state: Mutex::new(RuntimeState {
            held,
            pruned_below,
            ..RuntimeState::default()
        }),
        registry: store.records(RUNTIME_TABLE),
        change_log: store.change_log(),
        all_stores: statestream_store::KvStore::stores(store).to_vec(),
        committed,
        configured,
        closing,
        observer,
        shutdown_timeout,
    })
}

/// Adds and removes streamers on a running [`DeliveryManager`](crate::DeliveryManager),
/// from any thread (a tokio task included: its calls do not await, and
/// [`stop`](RuntimeHandle::stop) and [`remove`](RuntimeHandle::remove) wait
/// at most the manager's drain limit plus a second, so call them from a
/// blocking context). Cheap to clone. Get one with
/// [`DeliveryManager::runtime`](crate::DeliveryManager::runtime).
///
/// - [`add`](RuntimeHandle::add) starts an async streamer now with its own
///   cursor (from the head, a height the change log still keeps, or the
///   cursor the store holds for its name), registered in the store so
///   that it is held after a restart until it is added again.
/// - [`stop`](RuntimeHandle::stop) ends it and keeps its cursor: the
///   change log keeps what it has not delivered, and a later
///   `add(.., StartAt::Resume)` continues from there.
/// - [`remove`](RuntimeHandle::remove) ends it (or a held one) and drops
///   its registration and cursor.
///
/// Streamers of app.toml are not run-time streamers: they cannot be
/// stopped or removed here, and their names cannot be taken.
#[derive(Clone)]
pub struct RuntimeHandle {
    pub(crate) inner: Arc<Runtime>,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("RuntimeHandle")
            .field("running", &state.running.keys().collect::<Vec<_>>())
            .field("held", &state.held)
            .finish_non_exhaustive()
    }
}

impl RuntimeHandle {
    /// The last committed height.
    pub fn committed(&self) -> u64 {
        self.inner.committed.load(Ordering::Acquire)
    }

    /// The stores of the multi-store, in name order.
    pub fn stores(&self) -> &[StoreKey] {
        &self.inner.all_stores
    }

    /// The change log the streamers read from (a replay reads blocks from
    /// it; its bounds say what is kept).
    pub fn change_log(&self) -> &ChangeLog {
        &self.inner.change_log
    }

    /// Starts `streamer` (built with `shutdown`, the signal that ends its
    /// own waits: the manager triggers it when the streamer is stopped or
    /// removed, and at the end of the drain when the node stops). Its
    /// cursor starts at `start`; `setup.delivery` must be async.
    ///
    /// Returns its cursor: it delivers from the next height on (with
    /// [`StartAt::Head`], the height committed when it was added).
    ///
    /// Errors: a name in use (a configured streamer or a running one), a
    /// sync setup, an unknown store, a start height not committed yet or no
    /// longer in the change log, a closed manager, the store failing to
    /// register it.
    pub fn add(
        &self,
        setup: StreamerSetup,
        streamer: Box<dyn Streamer>,
        shutdown: Shutdown,
        start: StartAt,
    ) -> Result<u64> {
        let rt = &self.inner;
        let name = setup.name.clone();
        if setup.delivery != Delivery::Async {
            return Err(Error::RuntimeSync { streamer: name });
        }
        if let Some(s) = setup.stores.iter().find(|s| !rt.all_stores.contains(s)) {
            return Err(Error::RuntimeUnknownStore {
                streamer: name,
                store: s.name().to_owned(),
                known: rt
                    .all_stores
                    .iter()
                    .map(StoreKey::name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let mut state = rt.lock();
        if state.closed || rt.closing.is_triggered() {
            return Err(Error::ManagerClosed { streamer: name });
        }
        if rt.configured.contains(&name) || state.running.contains_key(&name) {
            return Err(Error::DuplicateName { streamer: name });
        }
        let committed = rt.committed.load(Ordering::Acquire);
        let cursor = match start {
            StartAt::Head => committed,
            StartAt::Height(h) if h > committed + 1 => {
                return Err(Error::StartAhead {
                    streamer: name,
                    height: h,
                    committed,
                });
            }
            StartAt::Height(h) => h.saturating_sub(1),
            StartAt::Resume => state.held.get(&name).copied().unwrap_or(committed),
        };
        // Blocks below `pruned_below` are gone; the cursor needs every block
        // after it up to the committed height.
        if cursor < committed && cursor + 1 < state.pruned_below {
            return Err(Error::StartPruned {
                streamer: name,
                height: cursor + 1,
                first_kept: state.pruned_below,
            });
        }
        rt.registry.put(&name, &cursor.to_be_bytes())?;
        let retain = streamer.retain_blocks();
        let selection = StoreSelection::new(&rt.all_stores, &setup.stores);
        // Its own closing signal: a stop ends its backoff at once without
        // touching the other streamers.
        let progress = Arc::new(Progress::new(
            &name,
            setup.stop_node_on_error,
            cursor,
            Shutdown::new(),
            shutdown,
        ));
        let driver = Driver::new(
            streamer,
            selection.clone(),
            Arc::clone(&progress),
            rt.change_log.clone(),
        );
        let mode = spawn(&setup, driver, &rt.committed)?;
        let done = match &mode {
            Mode::Async { done, .. } => done.clone(),
            Mode::Sync { .. } => unreachable_sync(),
        };
        state.held.remove(&name);
        state.write_cursors.remove(&name);
        state.drop_cursors.retain(|n| n != &name);
        state.running.insert(
            name.clone(),
            Running {
                progress: Arc::clone(&progress),
                done,
            },
        );
        rt.observer
            .shared
            .streamers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(Watched {
                type_name: "runtime".to_owned(),
                delivery: setup.delivery,
                stop_node_on_error: setup.stop_node_on_error,
                progress: Arc::clone(&progress),
            }));
        info!(streamer = %name, next = cursor + 1,
            stores = ?setup.stores.iter().map(StoreKey::name).collect::<Vec<_>>(),
            "run-time streamer started");
        state.adopt.push((
            Instance {
                setup,
                progress,
                selection,
                mode,
                // Never equal to a cursor: the first commit writes it.
                persisted: u64::MAX,
            },
            retain,
        ));
        Ok(cursor)
    }

    /// Ends a running run-time streamer and keeps its cursor (the change
    /// log keeps every block after it); [`add`](RuntimeHandle::add) with
    /// [`StartAt::Resume`] continues from there. Waits for its worker to
    /// end (a delivery in progress is cut short by its shutdown signal) at
    /// most the drain limit plus a second. Returns the cursor.
    pub fn stop(&self, name: &str) -> Result<u64> {
        let cursor = self.end(name)?;
        let mut state = self.inner.lock();
        state.held.insert(name.to_owned(), cursor);
        state.write_cursors.insert(name.to_owned(), cursor);
        drop(state);
        self.inner.registry.put(name, &cursor.to_be_bytes())?;
        Ok(cursor)
    }

    /// Ends a run-time streamer (running or held) and drops its
    /// registration and cursor: the change log no longer keeps blocks for
    /// it, and the name can be used again as a new streamer.
    pub fn remove(&self, name: &str) -> Result<()> {
        let running = self.inner.lock().running.contains_key(name);
        if running {
            self.end(name)?;
        }
        let mut state = self.inner.lock();
        let held = state.held.remove(name).is_some();
        if !running && !held {
            return Err(Error::UnknownRuntimeStreamer {
                streamer: name.to_owned(),
            });
        }
        state.write_cursors.remove(name);
        state.drop_cursors.push(name.to_owned());
        drop(state);
        self.inner.registry.delete(name)?;
        info!(streamer = %name, "run-time streamer removed with its cursor");
        Ok(())
    }

    /// A run-time streamer's progress (running or held); `None` for a name
    /// that is neither.
    pub fn cursor(&self, name: &str) -> Option<RuntimeCursor> {
        let state = self.inner.lock();
        if let Some(r) = state.running.get(name) {
            return Some(RuntimeCursor {
                running: true,
                delivered: r.progress.delivered(),
                durable: r.progress.durable(),
            });
        }
        state.held.get(name).map(|&c| RuntimeCursor {
            running: false,
            delivered: c,
            durable: c,
        })
    }

    /// The names of the run-time streamers, running and held.
    pub fn names(&self) -> Vec<String> {
        let state = self.inner.lock();
        let mut names: Vec<String> = state
            .running
            .keys()
            .chain(state.held.keys())
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Signals a running streamer to stop, waits for its worker, and
    /// returns its flushed cursor.
    fn end(&self, name: &str) -> Result<u64> {
        let rt = &self.inner;
        let running = {
            let mut state = rt.lock();
            let Some(running) = state.running.remove(name) else {
                return Err(Error::UnknownRuntimeStreamer {
                    streamer: name.to_owned(),
                });
            };
            // Not adopted yet: the manager never sees it.
            state.adopt.retain(|(i, _)| i.setup.name != name);
            // Held from now on, before the manager drops it: a commit
            // while its worker ends must still keep the blocks after its
            // cursor (`stop` then holds it at its final cursor, `remove`
            // drops it). Without this, commits in that window pruned the
            // change log past a stopped streamer's cursor.
            state
                .held
                .insert(name.to_owned(), running.progress.durable());
            running
        };
        let p = &running.progress;
        p.removed.store(true, Ordering::Release);
        p.closing.trigger();
        p.shutdown.trigger();
        let deadline = Instant::now() + rt.shutdown_timeout + STOP_GRACE;
        if let Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Timeout) =
            running.done.recv_deadline(deadline)
        {
            // `Ok` cannot happen (nothing is sent); a timeout leaves the
            // worker behind: it stops at its next step.
            if !matches!(
                running.done.try_recv(),
                Err(crossbeam_channel::TryRecvError::Disconnected)
            ) {
                p.abandoned.store(true, Ordering::Release);
                warn!(streamer = %name, "run-time streamer still busy after the stop limit: left behind");
            }
        }
        rt.observer
            .shared
            .streamers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|w| !Arc::ptr_eq(&w.progress, p));
        let cursor = p.durable();
        info!(streamer = %name, cursor, "run-time streamer stopped");
        Ok(cursor)
    }
}

/// `spawn` gives an async setup an async mode.
fn unreachable_sync() -> crossbeam_channel::Receiver<()> {
    // A receiver whose sender is gone: "ended" at once.
    crossbeam_channel::bounded(0).1
}
