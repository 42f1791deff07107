//! The delivery manager: hands every committed block to every configured
//! streamer, sync or async, keeps their cursors, catches them up from the
//! change log, and applies the error policy.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use statestream_config::{Delivery, StreamerSpec};
use statestream_core::{
    Block, BlockMeta, CommitInfo, PushQueue, Shutdown, StateReader, StoreKey, StoreSelection,
    Streamer, StreamerContext,
};
use statestream_store::{CommitInput, MultiStore};
use tracing::{info, warn};

use crate::driver::{Driver, Halt, Progress, Step};
use crate::error::{Error, Result};
use crate::observe::{CommitHistogram, Observer, Shared, Watched};
use crate::registry::Registry;

/// How long an idle async worker waits before looking at the committed
/// height on its own (it finds blocks it could not be handed this way).
const POLL: Duration = Duration::from_millis(50);
/// First and longest pause between attempts after a failed delivery.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Stats are logged every this many blocks.
const LOG_EVERY: u64 = 1000;

/// How one streamer instance is delivered to: what
/// [`DeliveryManager::with_streamers`] takes for a streamer built by the
/// application rather than from app.toml.
#[derive(Debug, Clone)]
pub struct StreamerSetup {
    /// Instance name: the cursor's name, and the name in logs.
    pub name: String,
    /// The stores it receives.
    pub stores: Vec<StoreKey>,
    /// Sync or async delivery.
    pub delivery: Delivery,
    /// Async: blocks buffered in memory before the streamer falls behind.
    pub queue: usize,
    /// Whether a delivery error stops the node.
    pub stop_node_on_error: bool,
}

impl StreamerSetup {
    /// Async delivery, queue 64, stop on error: the app.toml defaults.
    pub fn new(name: &str, stores: &[StoreKey]) -> StreamerSetup {
        StreamerSetup {
            name: name.to_string(),
            stores: stores.to_vec(),
            delivery: Delivery::Async,
            queue: statestream_config::DEFAULT_QUEUE,
            stop_node_on_error: true,
        }
    }

    /// Sets the delivery mode.
    pub fn delivery(mut self, delivery: Delivery) -> StreamerSetup {
        self.delivery = delivery;
        self
    }

    /// Sets the async queue length (at least 1).
    pub fn queue(mut self, queue: usize) -> StreamerSetup {
        self.queue = queue.max(1);
        self
    }

    /// Sets the error policy.
    pub fn stop_node_on_error(mut self, stop: bool) -> StreamerSetup {
        self.stop_node_on_error = stop;
        self
    }
}

/// A snapshot of one streamer's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamerStats {
    /// Instance name.
    pub name: String,
    /// Delivery mode.
    pub delivery: Delivery,
    /// The last height delivered.
    pub delivered_height: u64,
    /// The last height flushed: the cursor that is persisted.
    pub durable_height: u64,
    /// Committed height minus delivered height.
    pub lag: u64,
    /// Async: blocks waiting in the queue.
    pub queue_depth: usize,
    /// Failed delivery attempts so far.
    pub errors: u64,
    /// Blocks that could not be queued (queue full) and were later read
    /// from the change log.
    pub fell_behind: u64,
    /// Blocks delivered from the change log rather than live.
    pub caught_up: u64,
    /// The last delivery error, if any.
    pub last_error: Option<String>,
}

enum Mode {
    Sync {
        driver: Driver,
    },
    Async {
        tx: Option<Sender<Block>>,
        handle: Option<JoinHandle<()>>,
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
/// Wire it into the commit path by committing through it:
/// [`commit`](DeliveryManager::commit) commits the block on the store (with
/// the streamers' cursors and the change-log pruning in the same
/// transaction) and then hands the block to every streamer.
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
///
/// Error policy, with `stop-node-on-error = true`:
/// - sync: the `commit` call of the failing block returns
///   [`Error::Halted`]. That block is committed (it is in the state and the
///   change log); the streamer's cursor stays before it.
/// - async: the worker stops; the first `commit` call after the failure
///   returns [`Error::Halted`] without committing anything. Blocks committed
///   between the failure and that call are in the change log.
///
/// In both cases every later `commit` returns the same error, and after a
/// restart the streamer resumes from its cursor. With `false`, errors are
/// logged and counted; the block is attempted again (async: after a backoff
/// of 50 ms doubling to 5 s; sync: at the next commit) and nothing is
/// skipped.
pub struct DeliveryManager {
    instances: Vec<Instance>,
    all_stores: Vec<StoreKey>,
    committed: Arc<AtomicU64>,
    pruned_below: u64,
    /// The most blocks any streamer asked the change log to keep
    /// ([`Streamer::retain_blocks`]).
    retain: u64,
    halt: Option<Halt>,
    /// Triggered at close: streamers end their own waits.
    shutdown: Shutdown,
    /// Writes pushed by consumers, handed to every streamer built by
    /// [`DeliveryManager::start`]; the application drains it.
    push: PushQueue,
    /// What observers (a metrics endpoint) see.
    observer: Observer,
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
    /// Builds the configured streamers with `registry` and starts them.
    /// `specs` come from `AppConfig::resolve`, which has checked the store
    /// names of `keys` against the store's.
    pub fn start(
        store: &mut MultiStore,
        specs: &[StreamerSpec],
        registry: &Registry,
        home: &Path,
    ) -> Result<DeliveryManager> {
        DeliveryManager::start_with_push_queue(store, specs, registry, home, PushQueue::new())
    }

    /// [`start`](DeliveryManager::start), handing the streamers `push`, a
    /// queue of pushed writes the application has already
    /// [`attach`](PushQueue::attach)ed: pushes are accepted from the
    /// moment a server starts, with no window in which they are refused.
    pub fn start_with_push_queue(
        store: &mut MultiStore,
        specs: &[StreamerSpec],
        registry: &Registry,
        home: &Path,
        push: PushQueue,
    ) -> Result<DeliveryManager> {
        let all = statestream_store::KvStore::stores(store).to_vec();
        let reader: Arc<dyn StateReader> = Arc::new(store.reader());
        let shutdown = Shutdown::new();
        // Every streamer's options, and that no two write one place, before
        // any is built (a built one may already hold a port or a directory).
        if let Some(error) = registry.validate(specs, &all, home).into_iter().next() {
            return Err(error);
        }
        let mut built = Vec::with_capacity(specs.len());
        for spec in specs {
            if !registry.contains(&spec.type_name) {
                return Err(registry.unknown_type_error(
                    &spec.name,
                    &spec.type_name,
                    &spec.options,
                ));
            }
            let stores = spec
                .stores
                .iter()
                .map(|s| StoreKey::new(s))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            // An unknown store is refused before the streamer is built (a
            // built streamer may already hold resources: a listening port).
            for s in &stores {
                store.check_store(s)?;
            }
            let ctx = StreamerContext {
                name: &spec.name,
                stores: &stores,
                all_stores: &all,
                home,
                reader: Some(&reader),
                shutdown: &shutdown,
                push: Some(&push),
            };
            let streamer = registry.build(&spec.type_name, &ctx, &spec.options)?;
            let setup = StreamerSetup {
                name: spec.name.clone(),
                stores,
                delivery: spec.delivery,
                queue: spec.queue.max(1),
                stop_node_on_error: spec.stop_node_on_error,
            };
            built.push((setup, spec.type_name.clone(), streamer));
        }
        let mut manager = DeliveryManager::launch(store, built, shutdown)?;
        manager.push = push;
        Ok(manager)
    }

    /// The queue of writes consumers pushed (a `serve` streamer's
    /// `PushUpdate`). Calling this declares that the application drains
    /// it: until then pushes are refused. Before each [`commit`]
    /// (`DeliveryManager::commit`), take a batch with
    /// [`PushQueue::drain`], apply the writes it accepts to the store
    /// (rejecting the others with [`PushBatch::retain`]), commit, and tell
    /// the batch the height with [`PushBatch::committed`].
    ///
    /// [`commit`]: DeliveryManager::commit
    pub fn push_queue(&self) -> PushQueue {
        self.push.attach();
        self.push.clone()
    }

    /// Starts streamers built by the application. Hand them
    /// [`shutdown_signal`](DeliveryManager::shutdown_signal)'s signal
    /// afterwards if they wait on their own; or build them with a
    /// [`Shutdown`] and use [`with_streamers_and_shutdown`](DeliveryManager::with_streamers_and_shutdown).
    pub fn with_streamers(
        store: &mut MultiStore,
        streamers: Vec<(StreamerSetup, Box<dyn Streamer>)>,
    ) -> Result<DeliveryManager> {
        DeliveryManager::launch(store, application(streamers), Shutdown::new())
    }

    /// [`with_streamers`](DeliveryManager::with_streamers), triggering
    /// `shutdown` when the manager closes.
    pub fn with_streamers_and_shutdown(
        store: &mut MultiStore,
        streamers: Vec<(StreamerSetup, Box<dyn Streamer>)>,
        shutdown: Shutdown,
    ) -> Result<DeliveryManager> {
        DeliveryManager::launch(store, application(streamers), shutdown)
    }

    /// The signal this manager triggers when it closes or is dropped.
    pub fn shutdown_signal(&self) -> &Shutdown {
        &self.shutdown
    }

    /// A read-only view of this manager for other threads: committed
    /// height, commit durations, the change log's size, every streamer's
    /// progress and state. What the telemetry server serves.
    pub fn observer(&self) -> Observer {
        self.observer.clone()
    }

    fn launch(
        store: &mut MultiStore,
        streamers: Vec<(StreamerSetup, String, Box<dyn Streamer>)>,
        shutdown: Shutdown,
    ) -> Result<DeliveryManager> {
        let all = statestream_store::KvStore::stores(store).to_vec();
        let committed_height = store.version();
        let change_log = store.change_log();
        let bounds = change_log.bounds()?;
        let committed = Arc::new(AtomicU64::new(committed_height));
        let mut names = HashSet::new();
        let mut new_cursors = Vec::new();
        let mut prepared = Vec::new();
        for (setup, type_name, streamer) in streamers {
            if !names.insert(setup.name.clone()) {
                return Err(Error::DuplicateName {
                    streamer: setup.name,
                });
            }
            for s in &setup.stores {
                store.check_store(s)?;
            }
            let cursor = match store.cursor(&setup.name)? {
                Some(c) if c > committed_height => {
                    // The store rolled back (fsync off and a crash): the
                    // blocks after it will be committed again and delivered
                    // again, identically.
                    info!(streamer = %setup.name, cursor = c, committed = committed_height,
                        "cursor is ahead of the store; resuming from the store's height");
                    committed_height
                }
                Some(c) => c,
                None => {
                    info!(streamer = %setup.name, next = committed_height + 1,
                        "new streamer starts with the next block");
                    new_cursors.push((setup.name.clone(), committed_height));
                    committed_height
                }
            };
            let first_kept = bounds.map_or(u64::MAX, |(lo, _)| lo);
            if cursor < committed_height && cursor + 1 < first_kept {
                return Err(Error::CursorPruned {
                    streamer: setup.name.clone(),
                    cursor,
                    first_missing: cursor + 1,
                    last_missing: first_kept.min(committed_height + 1) - 1,
                });
            }
            prepared.push((setup, type_name, streamer, cursor));
        }
        if !new_cursors.is_empty() {
            let refs: Vec<(&str, u64)> =
                new_cursors.iter().map(|(n, h)| (n.as_str(), *h)).collect();
            store.save_cursors(&refs)?;
        }
        let retain = prepared
            .iter()
            .map(|(_, _, s, _)| s.retain_blocks())
            .max()
            .unwrap_or(0);
        let mut instances = Vec::with_capacity(prepared.len());
        let mut watched = Vec::with_capacity(prepared.len());
        for (setup, type_name, streamer, cursor) in prepared {
            let selection = StoreSelection::new(&all, &setup.stores);
            let progress = Arc::new(Progress::new(&setup.name, setup.stop_node_on_error, cursor));
            watched.push(Watched {
                type_name,
                delivery: setup.delivery,
                stop_node_on_error: setup.stop_node_on_error,
                progress: Arc::clone(&progress),
            });
            let mut driver = Driver::new(
                streamer,
                selection.clone(),
                Arc::clone(&progress),
                change_log.clone(),
            );
            let mode = match setup.delivery {
                Delivery::Sync => {
                    driver.start()?;
                    Mode::Sync { driver }
                }
                Delivery::Async => {
                    let (tx, rx) = crossbeam_channel::bounded(setup.queue.max(1));
                    let worker = Worker {
                        driver,
                        rx,
                        committed: Arc::clone(&committed),
                    };
                    let handle = std::thread::Builder::new()
                        .name(format!("stream-{}", setup.name))
                        .spawn(move || worker.run())
                        .map_err(|source| Error::Spawn {
                            streamer: setup.name.clone(),
                            source,
                        })?;
                    Mode::Async {
                        tx: Some(tx),
                        handle: Some(handle),
                    }
                }
            };
            info!(streamer = %setup.name, delivery = %setup.delivery,
                stores = ?setup.stores.iter().map(StoreKey::name).collect::<Vec<_>>(),
                next = cursor + 1, "streamer started");
            instances.push(Instance {
                setup,
                progress,
                selection,
                mode,
                persisted: cursor,
            });
        }
        let observer = Observer {
            shared: Arc::new(Shared {
                committed: Arc::clone(&committed),
                commits: CommitHistogram::default(),
                change_log: change_log.meter(),
                streamers: watched,
                stopped: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        let mut manager = DeliveryManager {
            instances,
            all_stores: all,
            committed,
            observer,
            pruned_below: bounds.map_or(0, |(lo, _)| lo),
            retain,
            halt: None,
            shutdown,
            push: PushQueue::new(),
        };
        // Sync streamers catch up now, before any new block; one that halts
        // fails the start. (An async one reports its halt at the next
        // commit, whenever its thread gets to it.)
        for inst in &mut manager.instances {
            if let Mode::Sync { driver } = &mut inst.mode
                && let Step::Failed { halted: true } = driver.step(None, committed_height, false)
                && let Some(h) = inst.progress.halt()
            {
                return Err(h.into());
            }
        }
        Ok(manager)
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

    /// Commits the block on `store` and delivers it. See the type's
    /// documentation for the error policy.
    pub fn commit(&mut self, store: &mut MultiStore, meta: BlockMeta) -> Result<CommitInfo> {
        self.check_halted()?;
        let started = Instant::now();
        let mut input = CommitInput::new().app_meta(meta.encode_app_meta());
        // The change log keeps every block above the lowest flushed cursor,
        // and the last `retain` blocks.
        let mut low = (store.version() + 1).saturating_sub(self.retain);
        let mut cursor_updates = Vec::new();
        for (i, inst) in self.instances.iter().enumerate() {
            let d = inst.progress.durable();
            low = low.min(d);
            if d != inst.persisted {
                input = input.cursor(inst.setup.name.clone(), d);
                cursor_updates.push((i, d));
            }
        }
        if low + 1 > self.pruned_below {
            input = input.prune_below(low + 1);
        }
        let changes = store.commit_block(input)?;
        for (i, d) in cursor_updates {
            self.instances[i].persisted = d;
        }
        self.pruned_below = self.pruned_below.max(low + 1);
        let height = changes.height();
        self.committed.store(height, Ordering::Release);
        let meta = Arc::new(meta);
        for inst in &mut self.instances {
            let block = Block::new(Arc::clone(&changes), Arc::clone(&meta), &inst.selection);
            match &mut inst.mode {
                Mode::Sync { driver } => {
                    if let Step::Failed { halted: true } = driver.step(Some(&block), height, false)
                    {
                        self.halt = self.halt.take().or_else(|| inst.progress.halt());
                    }
                }
                Mode::Async { tx: Some(tx), .. } => match tx.try_send(block) {
                    Ok(()) => {
                        inst.progress
                            .queued
                            .store(tx.len() as u64, Ordering::Relaxed);
                    }
                    Err(TrySendError::Full(_)) => {
                        inst.progress
                            .queued
                            .store(inst.setup.queue as u64, Ordering::Relaxed);
                        let n = inst.progress.fell_behind.fetch_add(1, Ordering::Relaxed);
                        if n.is_multiple_of(LOG_EVERY) {
                            warn!(height, streamer = %inst.setup.name, queue = inst.setup.queue,
                                "queue full: streamer falls behind and will catch up from the change log");
                        }
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        // The worker stopped (halted); check_halted reports
                        // it at the next commit.
                    }
                },
                Mode::Async { tx: None, .. } => {}
            }
        }
        if height.is_multiple_of(LOG_EVERY) {
            for s in self.stats() {
                info!(streamer = %s.name, delivered = s.delivered_height, lag = s.lag,
                    queue = s.queue_depth, errors = s.errors, "streamer stats");
            }
        }
        self.observer.shared.commits.record(started.elapsed());
        if let Some(h) = &self.halt {
            return Err(h.clone().into());
        }
        Ok(changes.commit_info())
    }

    /// Every streamer's progress.
    pub fn stats(&self) -> Vec<StreamerStats> {
        let committed = self.committed.load(Ordering::Acquire);
        self.instances
            .iter()
            .map(|inst| {
                let p = &inst.progress;
                let delivered = p.delivered();
                StreamerStats {
                    name: inst.setup.name.clone(),
                    delivery: inst.setup.delivery,
                    delivered_height: delivered,
                    durable_height: p.durable(),
                    lag: committed.saturating_sub(delivered),
                    queue_depth: match &inst.mode {
                        Mode::Async { tx: Some(tx), .. } => tx.len(),
                        _ => 0,
                    },
                    errors: p.errors.load(Ordering::Relaxed),
                    fell_behind: p.fell_behind.load(Ordering::Relaxed),
                    caught_up: p.caught_up.load(Ordering::Relaxed),
                    last_error: p.last_error(),
                }
            })
            .collect()
    }

    /// Clean shutdown: async workers deliver everything committed (unless a
    /// delivery is failing: then they stop after the current attempt), every
    /// streamer's `on_close` runs, and the cursors are persisted.
    ///
    /// Returns [`Error::Halted`] when a streamer with `stop-node-on-error`
    /// failed (during the run or while draining), so a node that shuts down
    /// after such a failure does not report success; the cursors are
    /// persisted first either way.
    pub fn close(mut self, store: &mut MultiStore) -> Result<()> {
        self.observer.shared.stopped.store(true, Ordering::Release);
        self.shutdown.trigger();
        let mut first_err: Option<Error> = None;
        for inst in &mut self.instances {
            match &mut inst.mode {
                Mode::Async { tx, handle } => {
                    // Workers drain their queue and catch up to the
                    // committed height when the channel closes; a streamer
                    // that keeps failing gives up instead of retrying.
                    inst.progress.closing.store(true, Ordering::Release);
                    drop(tx.take());
                    if let Some(h) = handle.take()
                        && h.join().is_err()
                        && first_err.is_none()
                    {
                        first_err = Some(Error::WorkerPanicked {
                            streamer: inst.setup.name.clone(),
                        });
                    }
                }
                Mode::Sync { driver } => {
                    if let Err(e) = driver.close() {
                        warn!(streamer = %inst.setup.name, error = %e, "close failed");
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        let cursors: Vec<(String, u64)> = self
            .instances
            .iter()
            .map(|i| (i.setup.name.clone(), i.progress.durable()))
            .collect();
        let refs: Vec<(&str, u64)> = cursors.iter().map(|(n, h)| (n.as_str(), *h)).collect();
        store.save_cursors(&refs)?;
        for s in self.stats() {
            info!(streamer = %s.name, delivered = s.delivered_height, lag = s.lag,
                errors = s.errors, fell_behind = s.fell_behind, caught_up = s.caught_up,
                "streamer closed");
        }
        let halted = self.check_halted().err();
        self.instances.clear();
        match halted.or(first_err) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for DeliveryManager {
    fn drop(&mut self) {
        // Dropped without `close`: tell workers to stop as soon as they can;
        // whatever they did not deliver is in the change log.
        self.observer.shared.stopped.store(true, Ordering::Release);
        self.shutdown.trigger();
        for inst in &mut self.instances {
            inst.progress.closing.store(true, Ordering::Release);
            inst.progress.abandoned.store(true, Ordering::Release);
            if let Mode::Async { tx, .. } = &mut inst.mode {
                drop(tx.take());
            }
        }
    }
}

/// Streamers built by the application: their type, for observers, is
/// `application`.
fn application(
    streamers: Vec<(StreamerSetup, Box<dyn Streamer>)>,
) -> Vec<(StreamerSetup, String, Box<dyn Streamer>)> {
    streamers
        .into_iter()
        .map(|(setup, streamer)| (setup, "application".to_owned(), streamer))
        .collect()
}

/// An async streamer's thread: steps its driver with each block it is
/// handed, and on its own when idle (to flush, and to find the blocks that
/// could not be queued), retrying failures with backoff.
struct Worker {
    driver: Driver,
    rx: Receiver<Block>,
    committed: Arc<AtomicU64>,
}

impl Worker {
    fn run(mut self) {
        let progress = Arc::clone(self.driver.progress());
        if let Err(e) = self.driver.start() {
            let height = progress.delivered() + 1;
            if progress.failed(height, &e) {
                return;
            }
        }
        let mut backoff = BACKOFF_MIN;
        // A live block whose delivery failed, kept for the retry.
        let mut retry: Option<Block> = None;
        loop {
            if progress.halt().is_some() {
                break;
            }
            let (live, target, force) = match retry.take() {
                Some(block) => {
                    let h = block.height();
                    (Some(block), h, false)
                }
                None => match self.rx.recv_timeout(POLL) {
                    Ok(block) => {
                        progress
                            .queued
                            .store(self.rx.len() as u64, Ordering::Relaxed);
                        let h = block.height();
                        (Some(block), h, false)
                    }
                    // Idle: make what was delivered durable, and look for
                    // blocks that could not be queued.
                    Err(RecvTimeoutError::Timeout) => {
                        progress
                            .queued
                            .store(self.rx.len() as u64, Ordering::Relaxed);
                        (None, self.committed.load(Ordering::Acquire), true)
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        // Shutdown: one last attempt to deliver everything
                        // committed.
                        let c = self.committed.load(Ordering::Acquire);
                        self.driver.step(None, c, true);
                        break;
                    }
                },
            };
            match self.driver.step(live.as_ref(), target, force) {
                Step::Done => backoff = BACKOFF_MIN,
                Step::Stopped | Step::Failed { halted: true } => break,
                Step::Failed { halted: false } => {
                    if self.pause(&progress, backoff) {
                        retry = live;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
        if let Err(e) = self.driver.close() {
            warn!(streamer = %progress.name, error = %e, "close failed");
        }
    }

    /// Sleeps for `d` in small steps; `false` if shutdown began meanwhile.
    fn pause(&self, progress: &Progress, d: Duration) -> bool {
        let step = Duration::from_millis(10);
        let mut slept = Duration::ZERO;
        while slept < d {
            if progress.closing.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(step);
            slept += step;
        }
        !progress.closing.load(Ordering::Acquire)
    }
}
