//! Setting a manager up: the builder, building the configured streamers,
//! resolving each streamer's cursor against the store, and starting each
//! one (sync: caught up now; async: its queue and worker thread).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use statestream_config::{DEFAULT_SHUTDOWN_TIMEOUT_MS, Delivery, StreamerSpec};
use statestream_core::{
    PushQueue, Shutdown, StateReader, StoreKey, StoreSelection, Streamer, StreamerContext,
};
use statestream_store::MultiStore;
use tracing::info;

use super::worker::Worker;
use super::{DeliveryManager, Instance, Mode};
use crate::driver::{Driver, Progress, Step};
use crate::error::{Error, Result};
use crate::observe::{CommitHistogram, Observer, Shared, Watched};
use crate::registry::Registry;

/// How one streamer instance is delivered to: what
/// [`DeliveryManagerBuilder::streamer`] takes for a streamer built by the
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
    /// The app.toml defaults: async delivery, a queue of
    /// [`DEFAULT_QUEUE`](statestream_config::DEFAULT_QUEUE) blocks, stop on
    /// error.
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

/// The streamers of app.toml: what [`DeliveryManagerBuilder::configured`]
/// takes.
struct Configured<'a> {
    specs: &'a [StreamerSpec],
    registry: &'a Registry,
    home: &'a Path,
}

/// Sets up a [`DeliveryManager`]: which streamers (from app.toml, built by
/// the application, or both), the queue of pushed writes, the shutdown
/// signal and the drain limit; then [`start`](DeliveryManagerBuilder::start).
///
/// ```
/// # use statestream::{DeliveryManager, Registry};
/// # use statestream_store::{MultiStore, StoreKey};
/// # let mut store = MultiStore::in_memory(&[StoreKey::new("bank")?])?;
/// let config = statestream::config::AppConfig::parse(
///     "[store]\nstreamers = [\"log\"]\n[streamers.log]\nkeys = [\"*\"]\n",
///     std::path::Path::new("app.toml"),
/// )?;
/// let specs = config.resolve(&["bank"])?;
/// let registry = Registry::with_builtins();
/// let manager = DeliveryManager::builder()
///     .configured(&specs, &registry, std::path::Path::new("."))
///     .shutdown_timeout(config.shutdown_timeout())
///     .start(&mut store)?;
/// manager.close(&mut store)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until `start`"]
pub struct DeliveryManagerBuilder<'a> {
    configured: Option<Configured<'a>>,
    application: Vec<(StreamerSetup, Box<dyn Streamer>)>,
    push: Option<PushQueue>,
    shutdown: Option<Shutdown>,
    shutdown_timeout: Duration,
    credentials: Option<statestream_access::Registry>,
}

impl std::fmt::Debug for DeliveryManagerBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryManagerBuilder")
            .field(
                "configured",
                &self
                    .configured
                    .as_ref()
                    .map(|c| c.specs.iter().map(|s| &s.name).collect::<Vec<_>>()),
            )
            .field(
                "application",
                &self
                    .application
                    .iter()
                    .map(|(s, _)| &s.name)
                    .collect::<Vec<_>>(),
            )
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for DeliveryManagerBuilder<'_> {
    fn default() -> Self {
        DeliveryManagerBuilder {
            configured: None,
            application: Vec::new(),
            push: None,
            shutdown: None,
            shutdown_timeout: Duration::from_millis(DEFAULT_SHUTDOWN_TIMEOUT_MS),
            credentials: None,
        }
    }
}

impl<'a> DeliveryManagerBuilder<'a> {
    /// The streamers of app.toml: `specs` come from `AppConfig::resolve`
    /// (which has checked the store names against the store's), built with
    /// `registry`; relative paths in their options are under `home`. They
    /// come first, in `specs` order.
    pub fn configured(
        mut self,
        specs: &'a [StreamerSpec],
        registry: &'a Registry,
        home: &'a Path,
    ) -> Self {
        self.configured = Some(Configured {
            specs,
            registry,
            home,
        });
        self
    }

    /// A streamer built by the application (its type, for observers, is
    /// `application`). To end a wait of its own at shutdown, build it with a
    /// [`Shutdown`] given to [`shutdown`](DeliveryManagerBuilder::shutdown).
    pub fn streamer(mut self, setup: StreamerSetup, streamer: Box<dyn Streamer>) -> Self {
        self.application.push((setup, streamer));
        self
    }

    /// Several streamers built by the application, in order.
    pub fn streamers(mut self, streamers: Vec<(StreamerSetup, Box<dyn Streamer>)>) -> Self {
        self.application.extend(streamers);
        self
    }

    /// The queue of pushed writes handed to the configured streamers (a
    /// `serve` streamer's `PushUpdate`). Give one the application has
    /// already [`attach`](PushQueue::attach)ed to accept pushes from the
    /// moment a server starts; without it the manager makes its own, which
    /// [`DeliveryManager::push_queue`] attaches.
    pub fn push_queue(mut self, push: PushQueue) -> Self {
        self.push = Some(push);
        self
    }

    /// The signal the manager triggers when its drain at close ends (or
    /// when it is dropped); the configured streamers are given it, and so
    /// may the application's. Default: a new one
    /// ([`DeliveryManager::shutdown_signal`]).
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// At [`close`](DeliveryManager::close), how long async streamers may
    /// go on delivering (and retrying) before the shutdown signal cuts
    /// their waits short. Default
    /// [`DEFAULT_SHUTDOWN_TIMEOUT_MS`](statestream_config::DEFAULT_SHUTDOWN_TIMEOUT_MS);
    /// app.toml's `[store] shutdown_timeout_ms` is
    /// `AppConfig::shutdown_timeout`.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The credentials the configured streamers check (default: opened
    /// from the store's system table `credentials` at each start). A
    /// process that starts its streamers again (a replica) passes the one
    /// registry it opened, which its admin API changes: every start then
    /// sees the same credentials, and a change reaches the running ones.
    pub fn credentials(mut self, registry: statestream_access::Registry) -> Self {
        self.credentials = Some(registry);
        self
    }

    /// Builds the configured streamers, resolves every streamer's cursor,
    /// and starts them: sync streamers are caught up from the change log
    /// now (one that halts fails the start), async ones on their threads.
    pub fn start(self, store: &mut MultiStore) -> Result<DeliveryManager> {
        let shutdown = self.shutdown.unwrap_or_default();
        let push = self.push.unwrap_or_default();
        let (mut streamers, credentials) = match &self.configured {
            Some(c) => {
                let (built, credentials) =
                    build(store, c, &shutdown, &push, self.credentials.clone())?;
                (built, Some(credentials))
            }
            None => (Vec::new(), None),
        };
        streamers.extend(
            self.application
                .into_iter()
                .map(|(setup, streamer)| (setup, "application".to_owned(), streamer)),
        );
        let resolved = resolve_cursors(store, streamers)?;
        let mut manager = launch(store, resolved, shutdown, push, self.shutdown_timeout)?;
        manager.credentials = credentials;
        Ok(manager)
    }
}

/// A streamer ready to start: its setup, type name and instance.
type Built = (StreamerSetup, String, Box<dyn Streamer>);

/// Builds the streamers of app.toml with the registry; the node's
/// credentials are installed under the state reader they are given (a
/// `serve` streamer finds them there) while the returned guard lives.
fn build(
    store: &mut MultiStore,
    c: &Configured<'_>,
    shutdown: &Shutdown,
    push: &PushQueue,
    credentials: Option<statestream_access::Registry>,
) -> Result<(Vec<Built>, statestream_access::Installation)> {
    let all = statestream_store::KvStore::stores(store).to_vec();
    let reader: Arc<dyn StateReader> = Arc::new(store.reader());
    let registry = match credentials {
        Some(r) => r,
        None => statestream_access::Registry::open(store.records(statestream_access::TABLE))?,
    };
    let credentials = statestream_access::install(&reader, registry);
    // Every streamer's options, and that no two write one place, before
    // any is built (a built one may already hold a port or a directory).
    if let Some(error) = c
        .registry
        .validate(c.specs, &all, c.home)
        .into_iter()
        .next()
    {
        return Err(error);
    }
    let mut built = Vec::with_capacity(c.specs.len());
    for spec in c.specs {
        if !c.registry.contains(&spec.type_name) {
            return Err(c
                .registry
                .unknown_type_error(&spec.name, &spec.type_name, &spec.options));
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
            home: c.home,
            reader: Some(&reader),
            shutdown,
            push: Some(push),
        };
        let streamer = c.registry.build(&spec.type_name, &ctx, &spec.options)?;
        let setup = StreamerSetup {
            name: spec.name.clone(),
            stores,
            delivery: spec.delivery,
            queue: spec.queue.max(1),
            stop_node_on_error: spec.stop_node_on_error,
        };
        built.push((setup, spec.type_name.clone(), streamer));
    }
    Ok((built, credentials))
}

/// A streamer whose cursor is known: it resumes after `cursor`.
struct Resolved {
    setup: StreamerSetup,
    type_name: String,
    streamer: Box<dyn Streamer>,
    cursor: u64,
}

/// Every streamer's cursor, checked against the store: unique names, known
/// stores, a cursor the change log can still serve. Streamers new to the
/// store get a cursor at the committed height (they start with the next
/// block), saved now.
fn resolve_cursors(store: &mut MultiStore, streamers: Vec<Built>) -> Result<Vec<Resolved>> {
    let committed_height = store.version();
    let bounds = store.change_log().bounds()?;
    let first_kept = bounds.map_or(u64::MAX, |(lo, _)| lo);
    let mut names = HashSet::new();
    let mut new_cursors = Vec::new();
    let mut resolved = Vec::with_capacity(streamers.len());
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
                // The store rolled back (fsync off and a crash): the blocks
                // after it will be committed again and delivered again,
                // identically.
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
        if cursor < committed_height && cursor + 1 < first_kept {
            return Err(Error::CursorPruned {
                streamer: setup.name.clone(),
                cursor,
                first_missing: cursor + 1,
                last_missing: first_kept.min(committed_height + 1) - 1,
            });
        }
        resolved.push(Resolved {
            setup,
            type_name,
            streamer,
            cursor,
        });
    }
    if !new_cursors.is_empty() {
        let refs: Vec<(&str, u64)> = new_cursors.iter().map(|(n, h)| (n.as_str(), *h)).collect();
        store.save_cursors(&refs)?;
    }
    Ok(resolved)
}

/// Starts every resolved streamer and assembles the manager.
fn launch(
    store: &mut MultiStore,
    resolved: Vec<Resolved>,
    shutdown: Shutdown,
    push: PushQueue,
    shutdown_timeout: Duration,
) -> Result<DeliveryManager> {
    let all = statestream_store::KvStore::stores(store).to_vec();
    let committed_height = store.version();
    let change_log = store.change_log();
    let bounds = change_log.bounds()?;
    let committed = Arc::new(AtomicU64::new(committed_height));
    let closing = Shutdown::new();
    let held = super::runtime::registered(store)?;
    let configured: HashSet<String> = resolved.iter().map(|r| r.setup.name.clone()).collect();
    let retain = resolved
        .iter()
        .map(|r| r.streamer.retain_blocks())
        .max()
        .unwrap_or(0);
    let mut instances = Vec::with_capacity(resolved.len());
    let mut watched = Vec::with_capacity(resolved.len());
    for r in resolved {
        let selection = StoreSelection::new(&all, &r.setup.stores);
        let progress = Arc::new(Progress::new(
            &r.setup.name,
            r.setup.stop_node_on_error,
            r.cursor,
            closing.clone(),
            shutdown.clone(),
        ));
        watched.push(Arc::new(Watched {
            type_name: r.type_name,
            delivery: r.setup.delivery,
            stop_node_on_error: r.setup.stop_node_on_error,
            progress: Arc::clone(&progress),
        }));
        let driver = Driver::new(
            r.streamer,
            selection.clone(),
            Arc::clone(&progress),
            change_log.clone(),
        );
        let mode = spawn(&r.setup, driver, &committed)?;
        info!(streamer = %r.setup.name, delivery = %r.setup.delivery,
            stores = ?r.setup.stores.iter().map(StoreKey::name).collect::<Vec<_>>(),
            next = r.cursor + 1, "streamer started");
        instances.push(Instance {
            setup: r.setup,
            progress,
            selection,
            mode,
            persisted: r.cursor,
        });
    }
    let observer = Observer {
        shared: Arc::new(Shared {
            committed: Arc::clone(&committed),
            commits: CommitHistogram::default(),
            change_log: change_log.meter(),
            streamers: std::sync::RwLock::new(watched),
            stopped: std::sync::atomic::AtomicBool::new(false),
            sections: crate::observe::Sections::default(),
        }),
    };
    let pruned_below = bounds.map_or(0, |(lo, _)| lo);
    let runtime = super::runtime::runtime(
        store,
        held,
        pruned_below,
        Arc::clone(&committed),
        configured,
        closing.clone(),
        observer.clone(),
        shutdown_timeout,
    );
    let mut manager = DeliveryManager {
        instances,
        all_stores: all,
        committed,
        observer,
        runtime,
        pruned_below,
        retain,
        halt: None,
        closing,
        shutdown,
        shutdown_timeout,
        push,
        credentials: None,
    };
    catch_up_sync(&mut manager, committed_height)?;
    Ok(manager)
}

/// Starts one streamer: a sync one's `on_start` now, an async one's queue
/// and worker thread.
pub(super) fn spawn(
    setup: &StreamerSetup,
    mut driver: Driver,
    committed: &Arc<AtomicU64>,
) -> Result<Mode> {
    Ok(match setup.delivery {
        Delivery::Sync => {
            driver.start()?;
            Mode::Sync { driver }
        }
        Delivery::Async => {
            let (tx, rx) = super::queue::bounded(setup.queue);
            // Dropped when the thread ends, however it ends (unwinding
            // included): close waits on it with a deadline, which a join
            // cannot.
            let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
            let worker = Worker {
                driver,
                rx,
                committed: Arc::clone(committed),
            };
            let handle = std::thread::Builder::new()
                .name(format!("stream-{}", setup.name))
                .spawn(move || {
                    let _done = done_tx;
                    worker.run();
                })
                .map_err(|source| Error::Spawn {
                    streamer: setup.name.clone(),
                    source,
                })?;
            Mode::Async {
                tx: Some(tx),
                handle: Some(handle),
                done,
            }
        }
    })
}

/// Sync streamers catch up now, before any new block; one that halts fails
/// the start. (An async one reports its halt at the next commit, whenever
/// its thread gets to it.)
fn catch_up_sync(manager: &mut DeliveryManager, committed_height: u64) -> Result<()> {
    for inst in &mut manager.instances {
        if let Mode::Sync { driver } = &mut inst.mode
            && let Step::Failed { halted: true } = driver.step(None, committed_height, false)
            && let Some(h) = inst.progress.halt()
        {
            return Err(h.into());
        }
    }
    Ok(())
}
