//! The delivery manager: hands every committed block to every configured
//! streamer, sync or async, keeps their cursors, catches them up from the
//! change log, and applies the error policy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use statestream_config::{Delivery, StreamerSpec};
use statestream_store::{ChangeLog, CommitInfo, CommitInput, MultiStore, StoreKey};
use tracing::{debug, info, warn};

use crate::block::{Block, BlockMeta, StoreSelection};
use crate::error::{Error, Result};
use crate::registry::{Registry, StreamerContext};
use crate::streamer::Streamer;

/// How long an idle async worker waits before looking at the committed
/// height on its own (it finds blocks it could not be handed this way).
const POLL: Duration = Duration::from_millis(50);
/// First and longest pause between attempts after a failed delivery.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// While blocks flow, a streamer is flushed at most this often (it is also
/// flushed whenever it goes idle, and at shutdown). This bounds how many
/// blocks a power loss can make a non-fsyncing streamer deliver again, and
/// how many blocks the change log holds for it: the log keeps every block
/// above the flushed cursor, and the store's commits cost more the more it
/// holds (~3% with 40 blocks of 1,000 writes held, `cargo bench -p
/// statestream-store --bench retention`), so this is short.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
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

#[derive(Debug)]
struct Shared {
    name: String,
    stop_node_on_error: bool,
    delivered: AtomicU64,
    /// The last height covered by a successful `on_flush`: the cursor.
    durable: AtomicU64,
    errors: AtomicU64,
    fell_behind: AtomicU64,
    caught_up: AtomicU64,
    last_error: Mutex<Option<String>>,
    halted: Mutex<Option<(u64, String)>>,
    /// Set at shutdown: a failing delivery is not retried (the block stays
    /// in the change log for the next start).
    closing: AtomicBool,
    /// Set when the manager is dropped without `close`: stop at once.
    abandoned: AtomicBool,
}

impl Shared {
    fn new(setup: &StreamerSetup, delivered: u64) -> Shared {
        Shared {
            name: setup.name.clone(),
            stop_node_on_error: setup.stop_node_on_error,
            delivered: AtomicU64::new(delivered),
            durable: AtomicU64::new(delivered),
            errors: AtomicU64::new(0),
            fell_behind: AtomicU64::new(0),
            caught_up: AtomicU64::new(0),
            last_error: Mutex::new(None),
            halted: Mutex::new(None),
            closing: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
        }
    }

    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Flushes `streamer` when it delivered blocks since its last flush, and
    /// `force` is set or [`FLUSH_INTERVAL`] has passed. A failed flush is a
    /// delivery error: `delivered` falls back to the durable height, so the
    /// unflushed blocks are delivered again (from the change log, which
    /// keeps everything above the durable height). Returns whether the
    /// streamer is in good standing.
    fn flush(&self, streamer: &mut dyn Streamer, last_flush: &mut Instant, force: bool) -> bool {
        let delivered = self.delivered();
        let durable = self.durable();
        if delivered == durable || (!force && last_flush.elapsed() < FLUSH_INTERVAL) {
            return true;
        }
        *last_flush = Instant::now();
        match streamer.on_flush() {
            Ok(()) => {
                self.durable.store(delivered, Ordering::Release);
                true
            }
            Err(e) => {
                self.delivered.store(durable, Ordering::Release);
                self.failed(durable + 1, &format_args!("flush failed: {e}"));
                false
            }
        }
    }

    fn halted(&self) -> Option<(u64, String)> {
        lock(&self.halted).clone()
    }

    /// Records a failed attempt; returns whether the node must stop.
    fn failed(&self, height: u64, error: &dyn std::fmt::Display) -> bool {
        let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        let message = error.to_string();
        warn!(height, streamer = %self.name, error = %message, errors, "delivery failed");
        *lock(&self.last_error) = Some(message.clone());
        if self.stop_node_on_error {
            let mut h = lock(&self.halted);
            if h.is_none() {
                *h = Some((height, message));
            }
            true
        } else {
            false
        }
    }
}

/// Locks a mutex, recovering the data if a thread panicked while holding it
/// (the guarded values are plain snapshots that stay valid).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Mode {
    Sync {
        streamer: Box<dyn Streamer>,
    },
    Async {
        tx: Option<Sender<Block>>,
        handle: Option<JoinHandle<()>>,
    },
}

struct Instance {
    setup: StreamerSetup,
    selection: StoreSelection,
    shared: Arc<Shared>,
    mode: Mode,
    /// The cursor value last written to the store.
    persisted: u64,
    /// When a sync streamer was last flushed.
    last_flush: Instant,
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
    change_log: ChangeLog,
    committed: Arc<AtomicU64>,
    pruned_below: u64,
    halted: Option<(String, u64, String)>,
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
    /// `specs` come from `AppConfig::resolve`.
    pub fn start(
        store: &mut MultiStore,
        specs: &[StreamerSpec],
        registry: &Registry,
        home: &Path,
    ) -> Result<DeliveryManager> {
        let all = statestream_store::KvStore::stores(store).to_vec();
        let mut built = Vec::with_capacity(specs.len());
        for spec in specs {
            // An unknown type is a configuration error: name the file, the
            // table, the key and the line, as for every other bad key (the
            // registry's own error knows none of them).
            if !registry.contains(&spec.type_name) {
                let known = registry.types();
                return Err(Error::Config(
                    spec.options.clone().with_name(spec.name.clone()).error(
                        "type",
                        format!(
                            "unknown type \"{}\" (known types: {})",
                            spec.type_name,
                            if known.is_empty() {
                                "none registered".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ),
                ));
            }
            let stores = spec
                .stores
                .iter()
                .map(|s| StoreKey::new(s))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            for s in &stores {
                if all.binary_search(s).is_err() {
                    return Err(statestream_store::Error::UnknownStore {
                        store: s.name().to_string(),
                        known: all
                            .iter()
                            .map(StoreKey::name)
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                    .into());
                }
            }
            let ctx = StreamerContext {
                name: &spec.name,
                stores: &stores,
                options: &spec.options,
                home,
            };
            let streamer = registry.build(&spec.type_name, &ctx)?;
            let setup = StreamerSetup {
                name: spec.name.clone(),
                stores,
                delivery: spec.delivery,
                queue: spec.queue.max(1),
                stop_node_on_error: spec.stop_node_on_error,
            };
            built.push((setup, streamer));
        }
        DeliveryManager::with_streamers(store, built)
    }

    /// Starts streamers built by the application.
    pub fn with_streamers(
        store: &mut MultiStore,
        streamers: Vec<(StreamerSetup, Box<dyn Streamer>)>,
    ) -> Result<DeliveryManager> {
        let all = statestream_store::KvStore::stores(store).to_vec();
        let committed_height = store.version();
        let change_log = store.change_log();
        let bounds = change_log.bounds()?;
        let committed = Arc::new(AtomicU64::new(committed_height));
        let mut names = HashMap::new();
        let mut new_cursors = Vec::new();
        let mut prepared = Vec::new();
        for (setup, streamer) in streamers {
            if names.insert(setup.name.clone(), ()).is_some() {
                return Err(Error::Worker {
                    streamer: setup.name,
                    what: "two streamers have this name".into(),
                });
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
            if cursor < committed_height {
                let first_kept = bounds.map_or(u64::MAX, |(lo, _)| lo);
                if cursor + 1 < first_kept {
                    return Err(Error::Worker {
                        streamer: setup.name.clone(),
                        what: format!(
                            "its cursor is at height {cursor} but blocks {}..={} are no longer \
                             in the change log (it is pruned below the lowest cursor of the \
                             configured streamers, and this one was left out of the \
                             configuration meanwhile); to start it with the next block \
                             instead, give its [streamers.<name>] table a new name or delete \
                             its cursor (MultiStore::delete_cursor; for the demo node, \
                             `statestream cursors --home HOME --delete {}`)",
                            cursor + 1,
                            first_kept.min(committed_height + 1) - 1,
                            setup.name
                        ),
                    });
                }
            }
            prepared.push((setup, streamer, cursor));
        }
        if !new_cursors.is_empty() {
            let refs: Vec<(&str, u64)> =
                new_cursors.iter().map(|(n, h)| (n.as_str(), *h)).collect();
            store.save_cursors(&refs)?;
        }
        let mut instances = Vec::with_capacity(prepared.len());
        for (setup, mut streamer, cursor) in prepared {
            let selection = StoreSelection::new(&all, &setup.stores);
            let shared = Arc::new(Shared::new(&setup, cursor));
            let mode = match setup.delivery {
                Delivery::Sync => {
                    streamer
                        .on_start(cursor + 1)
                        .map_err(|source| Error::Lifecycle {
                            streamer: setup.name.clone(),
                            action: "start",
                            source,
                        })?;
                    Mode::Sync { streamer }
                }
                Delivery::Async => {
                    let (tx, rx) = crossbeam_channel::bounded(setup.queue.max(1));
                    let worker = Worker {
                        streamer,
                        rx,
                        shared: Arc::clone(&shared),
                        change_log: change_log.clone(),
                        selection: selection.clone(),
                        committed: Arc::clone(&committed),
                        last_flush: Instant::now(),
                    };
                    let handle = std::thread::Builder::new()
                        .name(format!("stream-{}", setup.name))
                        .spawn(move || worker.run())
                        .map_err(|e| Error::Worker {
                            streamer: setup.name.clone(),
                            what: format!("cannot start its worker thread: {e}"),
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
                selection,
                shared,
                mode,
                persisted: cursor,
                last_flush: Instant::now(),
            });
        }
        let mut manager = DeliveryManager {
            instances,
            all_stores: all,
            change_log,
            committed,
            pruned_below: bounds.map_or(0, |(lo, _)| lo),
            halted: None,
        };
        // Sync streamers catch up now, before any new block.
        for i in 0..manager.instances.len() {
            if matches!(manager.instances[i].mode, Mode::Sync { .. }) {
                manager.catch_up_sync(i, committed_height);
            }
        }
        if let Some((name, height, message)) = manager.halted.clone() {
            return Err(Error::Halted {
                streamer: name,
                height,
                message,
            });
        }
        Ok(manager)
    }

    /// The stores of the multi-store, in name order.
    pub fn stores(&self) -> &[StoreKey] {
        &self.all_stores
    }

    fn check_halted(&mut self) -> Result<()> {
        if self.halted.is_none() {
            for inst in &self.instances {
                if let Some((height, message)) = inst.shared.halted() {
                    self.halted = Some((inst.setup.name.clone(), height, message));
                    break;
                }
            }
        }
        match &self.halted {
            Some((name, height, message)) => Err(Error::Halted {
                streamer: name.clone(),
                height: *height,
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Commits the block on `store` and delivers it. See the type's
    /// documentation for the error policy.
    pub fn commit(&mut self, store: &mut MultiStore, meta: BlockMeta) -> Result<CommitInfo> {
        self.check_halted()?;
        let mut input = CommitInput::new().app_meta(meta.encode_app_meta());
        let mut low = store.version();
        let mut cursor_updates = Vec::new();
        for (i, inst) in self.instances.iter().enumerate() {
            // Only flushed heights are persisted, and the change log keeps
            // everything above the lowest of them.
            let d = inst.shared.durable();
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
        for i in 0..self.instances.len() {
            let inst = &self.instances[i];
            let block = Block::new(Arc::clone(&changes), Arc::clone(&meta), &inst.selection);
            match &inst.mode {
                Mode::Sync { .. } => {
                    if self.catch_up_sync(i, height - 1) && self.deliver_sync(i, &block) {
                        self.flush_sync(i, false);
                    }
                }
                Mode::Async { tx, .. } => {
                    if let Some(tx) = tx {
                        match tx.try_send(block) {
                            Ok(()) => {}
                            Err(TrySendError::Full(_)) => {
                                let n = inst.shared.fell_behind.fetch_add(1, Ordering::Relaxed);
                                if n.is_multiple_of(LOG_EVERY) {
                                    warn!(height, streamer = %inst.setup.name, queue = inst.setup.queue,
                                        "queue full: streamer falls behind and will catch up from the change log");
                                }
                            }
                            Err(TrySendError::Disconnected(_)) => {
                                // The worker stopped (halted); check_halted
                                // reports it at the next commit.
                            }
                        }
                    }
                }
            }
        }
        if height.is_multiple_of(LOG_EVERY) {
            for s in self.stats() {
                info!(streamer = %s.name, delivered = s.delivered_height, lag = s.lag,
                    queue = s.queue_depth, errors = s.errors, "streamer stats");
            }
        }
        if let Some((name, h, message)) = &self.halted {
            return Err(Error::Halted {
                streamer: name.clone(),
                height: *h,
                message: message.clone(),
            });
        }
        Ok(changes.commit_info())
    }

    /// Delivers blocks `delivered+1..=upto` from the change log to sync
    /// streamer `i`. Returns whether it is caught up.
    fn catch_up_sync(&mut self, i: usize, upto: u64) -> bool {
        let mut next = self.instances[i].shared.delivered() + 1;
        if next <= upto {
            debug!(streamer = %self.instances[i].setup.name, from = next, to = upto, "catching up from the change log");
        }
        while next <= upto {
            let block = match self
                .change_log
                .read(next)
                .map(Arc::new)
                .map_err(Error::from)
                .and_then(|cs| Block::from_change_set(cs, &self.instances[i].selection))
            {
                Ok(b) => b,
                Err(e) => {
                    self.sync_failed(i, next, &e);
                    return false;
                }
            };
            if !self.deliver_sync(i, &block) {
                return false;
            }
            self.instances[i]
                .shared
                .caught_up
                .fetch_add(1, Ordering::Relaxed);
            next += 1;
        }
        true
    }

    fn deliver_sync(&mut self, i: usize, block: &Block) -> bool {
        let inst = &mut self.instances[i];
        if inst.shared.halted().is_some() {
            return false;
        }
        let Mode::Sync { streamer } = &mut inst.mode else {
            return false;
        };
        match streamer.on_block(block) {
            Ok(()) => {
                inst.shared
                    .delivered
                    .store(block.height(), Ordering::Release);
                true
            }
            Err(e) => {
                self.sync_failed(i, block.height(), &e);
                false
            }
        }
    }

    /// Flushes sync streamer `i` (see [`Shared::flush`]).
    fn flush_sync(&mut self, i: usize, force: bool) {
        let inst = &mut self.instances[i];
        let Mode::Sync { streamer } = &mut inst.mode else {
            return;
        };
        if !inst
            .shared
            .flush(streamer.as_mut(), &mut inst.last_flush, force)
            && self.halted.is_none()
            && let Some((h, m)) = inst.shared.halted()
        {
            self.halted = Some((inst.setup.name.clone(), h, m));
        }
    }

    fn sync_failed(&mut self, i: usize, height: u64, e: &dyn std::fmt::Display) {
        let inst = &self.instances[i];
        if inst.shared.failed(height, e)
            && self.halted.is_none()
            && let Some((h, m)) = inst.shared.halted()
        {
            self.halted = Some((inst.setup.name.clone(), h, m));
        }
    }

    /// Every streamer's progress.
    pub fn stats(&self) -> Vec<StreamerStats> {
        let committed = self.committed.load(Ordering::Acquire);
        self.instances
            .iter()
            .map(|inst| {
                let delivered = inst.shared.delivered();
                StreamerStats {
                    name: inst.setup.name.clone(),
                    delivery: inst.setup.delivery,
                    delivered_height: delivered,
                    durable_height: inst.shared.durable(),
                    lag: committed.saturating_sub(delivered),
                    queue_depth: match &inst.mode {
                        Mode::Async { tx: Some(tx), .. } => tx.len(),
                        _ => 0,
                    },
                    errors: inst.shared.errors.load(Ordering::Relaxed),
                    fell_behind: inst.shared.fell_behind.load(Ordering::Relaxed),
                    caught_up: inst.shared.caught_up.load(Ordering::Relaxed),
                    last_error: lock(&inst.shared.last_error).clone(),
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
        for i in 0..self.instances.len() {
            if matches!(self.instances[i].mode, Mode::Sync { .. }) {
                self.flush_sync(i, true);
            }
        }
        let mut first_err: Option<Error> = None;
        for inst in &mut self.instances {
            match &mut inst.mode {
                Mode::Async { tx, handle } => {
                    // Workers drain their queue and catch up to the
                    // committed height when the channel closes; a streamer
                    // that keeps failing gives up instead of retrying.
                    inst.shared.closing.store(true, Ordering::Release);
                    drop(tx.take());
                    if let Some(h) = handle.take()
                        && h.join().is_err()
                        && first_err.is_none()
                    {
                        first_err = Some(Error::Worker {
                            streamer: inst.setup.name.clone(),
                            what: "its worker thread panicked".into(),
                        });
                    }
                }
                Mode::Sync { streamer } => {
                    if let Err(source) = streamer.on_close() {
                        warn!(streamer = %inst.setup.name, error = %source, "close failed");
                        if first_err.is_none() {
                            first_err = Some(Error::Lifecycle {
                                streamer: inst.setup.name.clone(),
                                action: "close",
                                source,
                            });
                        }
                    }
                }
            }
        }
        let cursors: Vec<(String, u64)> = self
            .instances
            .iter()
            .map(|i| (i.setup.name.clone(), i.shared.durable()))
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
        for inst in &mut self.instances {
            inst.shared.closing.store(true, Ordering::Release);
            inst.shared.abandoned.store(true, Ordering::Release);
            if let Mode::Async { tx, .. } = &mut inst.mode {
                drop(tx.take());
            }
        }
    }
}

struct Worker {
    streamer: Box<dyn Streamer>,
    rx: Receiver<Block>,
    shared: Arc<Shared>,
    change_log: ChangeLog,
    selection: StoreSelection,
    committed: Arc<AtomicU64>,
    last_flush: Instant,
}

impl Worker {
    fn run(mut self) {
        let name = self.shared.name.clone();
        if let Err(e) = self.streamer.on_start(self.shared.delivered() + 1) {
            let failed = Error::Lifecycle {
                streamer: name.clone(),
                action: "start",
                source: e,
            };
            if self.shared.failed(self.shared.delivered() + 1, &failed) {
                return;
            }
        }
        loop {
            if self.shared.halted().is_some() {
                break;
            }
            match self.rx.recv_timeout(POLL) {
                Ok(block) => {
                    let h = block.height();
                    let next = self.shared.delivered() + 1;
                    if h < next {
                        continue;
                    }
                    if h > next && !self.catch_up(h - 1) {
                        continue;
                    }
                    self.deliver(&block, false);
                }
                Err(RecvTimeoutError::Timeout) => {
                    // Idle: make what was delivered durable, then look for
                    // blocks that could not be queued.
                    self.flush(true);
                    let c = self.committed.load(Ordering::Acquire);
                    self.catch_up(c);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let c = self.committed.load(Ordering::Acquire);
                    while self.shared.delivered() < c && self.catch_up(c) {}
                    break;
                }
            }
        }
        self.flush(true);
        if let Err(e) = self.streamer.on_close() {
            warn!(streamer = %name, error = %e, "close failed");
        }
    }

    fn flush(&mut self, force: bool) -> bool {
        self.shared
            .flush(self.streamer.as_mut(), &mut self.last_flush, force)
    }

    /// Delivers `delivered+1..=upto` from the change log. Returns whether
    /// it got there.
    fn catch_up(&mut self, upto: u64) -> bool {
        while self.shared.delivered() < upto {
            if self.shared.halted().is_some() || self.shared.abandoned.load(Ordering::Acquire) {
                return false;
            }
            let h = self.shared.delivered() + 1;
            let block = self
                .change_log
                .read(h)
                .map(Arc::new)
                .map_err(Error::from)
                .and_then(|cs| Block::from_change_set(cs, &self.selection));
            match block {
                Ok(b) => {
                    if !self.deliver(&b, true) {
                        return false;
                    }
                }
                Err(e) => {
                    if !self.shared.failed(h, &e) {
                        self.pause(BACKOFF_MAX);
                    }
                    return false;
                }
            }
        }
        true
    }

    /// Delivers one block, retrying with backoff while errors are not
    /// fatal. Returns whether it was delivered.
    fn deliver(&mut self, block: &Block, from_log: bool) -> bool {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.streamer.on_block(block) {
                Ok(()) => {
                    self.shared
                        .delivered
                        .store(block.height(), Ordering::Release);
                    if from_log {
                        self.shared.caught_up.fetch_add(1, Ordering::Relaxed);
                    }
                    return self.flush(false);
                }
                Err(e) => {
                    if self.shared.failed(block.height(), &e) {
                        return false;
                    }
                    if !self.pause(backoff) {
                        return false;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Sleeps for `d` in small steps; `false` if shutdown began meanwhile.
    fn pause(&self, d: Duration) -> bool {
        let step = Duration::from_millis(10);
        let mut slept = Duration::ZERO;
        while slept < d {
            if self.shared.closing.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(step);
            slept += step;
        }
        !self.shared.closing.load(Ordering::Acquire)
    }
}
