//! The subscription hub: the blocks the streamer was given, by height, for
//! every front-end (gRPC and HTTP), and the one snapshot reader they share
//! ([`snapshot`]).
//!
//! The hub keeps the latest [`RING_BLOCKS`] blocks in memory and reads
//! older ones from the store's change log, so every subscription is just a
//! next height to send: a subscriber that reads slowly falls back to the
//! change log without holding memory, and hand-overs (snapshot to live,
//! history to live) are gap-free and duplicate-free by construction: a
//! snapshot at height S continues with block S + 1, wherever that block is
//! read from. The committing thread only pushes into the ring and bumps a
//! `watch` channel ([`Hub::publish`]), which never blocks on a subscriber.
//!
//! Each block in the ring is a [`HubBlock`]: the block and what the
//! front-ends rendered of it ([`slot`]), so subscribers with the same
//! selection and encoding share one rendering of each block.

mod slot;
pub(crate) mod snapshot;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use statestream_core::{Block, PushQueue, StateReader, StoreKey, StoreSelection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Interval, MissedTickBehavior};

use crate::error::HubError;
use crate::filter::FilterBuilder;
use crate::metrics::{FrontEnd, ServeMetrics};

pub use slot::HubBlock;

/// Blocks kept in memory for subscribers at or near the head.
pub const RING_BLOCKS: usize = 64;

/// The serve options that bound `PushUpdate`: `max_push_bytes` and
/// `max_push_value_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PushLimits {
    pub queued_bytes: usize,
    pub write_bytes: usize,
}

/// What the hub is built from.
pub(crate) struct HubSetup {
    pub name: String,
    pub stores: Vec<StoreKey>,
    pub selection: StoreSelection,
    pub reader: Arc<dyn StateReader>,
    pub push: Option<PushQueue>,
    pub push_limits: PushLimits,
    pub heartbeat: Duration,
    pub max_subscribers: usize,
    pub max_filter_entries: usize,
    pub max_snapshots: usize,
    pub value_types: Vec<String>,
}

/// The hub of one `serve` streamer.
pub struct Hub {
    name: String,
    stores: Vec<StoreKey>,
    value_types: Vec<String>,
    selection: StoreSelection,
    reader: Arc<dyn StateReader>,
    push: Option<PushQueue>,
    push_limits: PushLimits,
    ring: Mutex<VecDeque<HubBlock>>,
    head: watch::Sender<u64>,
    closing: watch::Sender<bool>,
    subscribers: AtomicUsize,
    max_subscribers: usize,
    max_filter_entries: usize,
    /// Places for one-shot snapshots; also what bounds their store reads
    /// on the blocking threads, apart from the live subscribers.
    snapshots: Arc<Semaphore>,
    max_snapshots: usize,
    heartbeat: Duration,
    metrics: Arc<ServeMetrics>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("name", &self.name)
            .field("head", &self.head())
            .field("subscribers", &self.subscribers())
            .finish_non_exhaustive()
    }
}

/// One item of a subscription.
#[derive(Debug, Clone)]
pub enum Event {
    /// The next block, in height order.
    Block(HubBlock),
    /// Nothing happened for a heartbeat interval; the head height.
    Heartbeat(u64),
}

impl Hub {
    pub(crate) fn new(setup: HubSetup, head: u64) -> Hub {
        Hub {
            name: setup.name,
            stores: setup.stores,
            value_types: setup.value_types,
            selection: setup.selection,
            reader: setup.reader,
            push: setup.push,
            push_limits: setup.push_limits,
            ring: Mutex::new(VecDeque::with_capacity(RING_BLOCKS)),
            head: watch::Sender::new(head),
            closing: watch::Sender::new(false),
            subscribers: AtomicUsize::new(0),
            max_subscribers: setup.max_subscribers,
            max_filter_entries: setup.max_filter_entries,
            snapshots: Arc::new(Semaphore::new(setup.max_snapshots)),
            max_snapshots: setup.max_snapshots,
            heartbeat: setup.heartbeat,
            metrics: Arc::default(),
        }
    }

    /// The streamer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The streamed stores, in name order.
    pub fn stores(&self) -> &[StoreKey] {
        &self.stores
    }

    /// The `value_type` of each streamed store (same order as
    /// [`stores`](Hub::stores)).
    pub fn value_types(&self) -> &[String] {
        &self.value_types
    }

    /// A filter over the streamed stores, of at most `max_filter_entries`
    /// entries: every front-end builds its requests' filters here.
    pub fn filter_builder(&self) -> FilterBuilder<'_> {
        FilterBuilder::new(&self.stores, self.max_filter_entries)
    }

    /// The queue pushed writes go to, when the manager gave one.
    pub fn push_queue(&self) -> Option<&PushQueue> {
        self.push.as_ref()
    }

    /// The bounds of this streamer's pushed writes.
    pub(crate) fn push_limits(&self) -> PushLimits {
        self.push_limits
    }

    pub(crate) fn reader(&self) -> &Arc<dyn StateReader> {
        &self.reader
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// The newest height subscribers can be sent.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// The counters per front-end.
    pub fn metrics(&self) -> &Arc<ServeMetrics> {
        &self.metrics
    }

    /// Subscriptions open now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Blocks held in memory now (at most [`RING_BLOCKS`]).
    pub fn ring_len(&self) -> usize {
        self.ring().len()
    }

    fn ring(&self) -> MutexGuard<'_, VecDeque<HubBlock>> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a delivered block to the subscribers: never blocks on them.
    /// A height at or below the head is already readable from the change
    /// log and is ignored.
    pub fn publish(&self, block: &Block) {
        let height = block.height();
        if height <= self.head() {
            return;
        }
        {
            let mut ring = self.ring();
            if ring.back().is_some_and(|b| b.height() + 1 != height) {
                ring.clear();
            }
            if ring.len() == RING_BLOCKS {
                ring.pop_front();
            }
            ring.push_back(HubBlock::shared(block.clone()));
        }
        self.head.send_replace(height);
    }

    /// Ends every subscription with [`HubError::ShuttingDown`].
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Whether [`close`](Hub::close) was called.
    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// A receiver that turns `true` at shutdown.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Counts a new subscription, or refuses it over `max_subscribers` or
    /// at shutdown. The guard uncounts it when dropped.
    pub fn admit(self: &Arc<Self>, front_end: FrontEnd) -> Result<SubscriberGuard, HubError> {
        if self.is_closing() {
            return Err(HubError::ShuttingDown);
        }
        let mut n = self.subscribers.load(Ordering::Relaxed);
        loop {
            if n >= self.max_subscribers {
                return Err(HubError::TooManySubscribers(n));
            }
            match self.subscribers.compare_exchange_weak(
                n,
                n + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        self.metrics.subscribed(front_end);
        Ok(SubscriberGuard {
            hub: Arc::clone(self),
            front_end,
        })
    }

    /// Takes a place for a one-shot snapshot (`GET /snapshot`,
    /// `DataService.Sync`), or refuses it over `max_snapshots` or at
    /// shutdown. The place is freed when the permit is dropped.
    pub fn admit_snapshot(&self) -> Result<SnapshotPermit, HubError> {
        if self.is_closing() {
            return Err(HubError::ShuttingDown);
        }
        Arc::clone(&self.snapshots)
            .try_acquire_owned()
            .map(|permit| SnapshotPermit { _permit: permit })
            .map_err(|_| HubError::TooManySnapshots(self.max_snapshots))
    }

    pub(crate) fn store_error(e: impl std::fmt::Display) -> HubError {
        HubError::Store(e.to_string())
    }

    /// The oldest height a subscription may start from: the change log's
    /// oldest block (the height after the head when it is empty).
    pub fn oldest(&self) -> Result<u64, HubError> {
        let committed = self.reader.committed_height().map_err(Hub::store_error)?;
        Ok(match self.reader.retained().map_err(Hub::store_error)? {
            Some((lo, _)) => lo,
            None => committed.max(self.head()) + 1,
        })
    }

    /// Checks that a subscription can start at `height` (inclusive):
    /// `OUT_OF_RANGE` below the retained window or past the next block (on
    /// a relay: past the block after its upstream's head, see
    /// [`Gate::set_source_head`](crate::Gate::set_source_head)).
    pub fn check_from(&self, height: u64) -> Result<(), HubError> {
        let height = height.max(1);
        let committed = self.reader.committed_height().map_err(Hub::store_error)?;
        let limit = committed
            .max(self.head())
            .max(crate::Gate::process().source_head())
            + 1;
        if height > limit {
            return Err(HubError::OutOfRange {
                height,
                reason: format!("it is past the head (the next block is {limit})"),
            });
        }
        let oldest = self.oldest()?;
        if height < oldest {
            return Err(HubError::OutOfRange {
                height,
                reason: format!(
                    "it is below the retained window; the oldest available height is {oldest} (take a snapshot instead)"
                ),
            });
        }
        Ok(())
    }

    /// Block `height` (at most the head): from memory, else from the
    /// change log; `OUT_OF_RANGE` when the log no longer holds it.
    pub fn block(&self, height: u64) -> Result<HubBlock, HubError> {
        match self.ring_block(height) {
            Some(b) => Ok(b),
            None => self.logged_block(height),
        }
    }

    /// Block `height` if the ring holds it.
    fn ring_block(&self, height: u64) -> Option<HubBlock> {
        let ring = self.ring();
        let first = ring.front()?.height();
        if height < first {
            return None;
        }
        ring.get((height - first) as usize).cloned()
    }

    /// Block `height` read from the change log (a store read: off the
    /// runtime's worker, see [`Subscription::next`]).
    fn logged_block(&self, height: u64) -> Result<HubBlock, HubError> {
        match self.reader.change_set(height) {
            Ok(cs) => Block::from_change_set(cs, &self.selection)
                .map(HubBlock::own)
                .map_err(Hub::store_error),
            Err(e) => {
                let oldest = self.oldest()?;
                if height < oldest {
                    Err(HubError::OutOfRange {
                        height,
                        reason: format!(
                            "it left the retained window; the oldest available height is {oldest} (take a snapshot instead)"
                        ),
                    })
                } else {
                    Err(Hub::store_error(e))
                }
            }
        }
    }

    /// The time of block `height` (seconds, nanoseconds), when known.
    pub fn block_time(&self, height: u64) -> Option<(i64, u32)> {
        if height == 0 {
            return None;
        }
        let b = self.block(height).ok()?;
        Some((b.meta().time_seconds, b.meta().time_nanos))
    }

    /// Follows blocks from `next` (inclusive).
    pub fn subscribe(self: &Arc<Self>, guard: SubscriberGuard, next: u64) -> Subscription {
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Subscription {
            hub: Arc::clone(self),
            next: next.max(1),
            head: self.head.subscribe(),
            closing: self.closing.subscribe(),
            heartbeat,
            _guard: guard,
        }
    }
}

/// One place of a one-shot snapshot; freed when dropped.
#[derive(Debug)]
pub struct SnapshotPermit {
    _permit: OwnedSemaphorePermit,
}

/// One counted subscription; uncounted when dropped.
#[derive(Debug)]
pub struct SubscriberGuard {
    hub: Arc<Hub>,
    front_end: FrontEnd,
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.hub.subscribers.fetch_sub(1, Ordering::AcqRel);
        self.hub.metrics.unsubscribed(self.front_end);
    }
}

/// A position in the block sequence of one subscriber.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    next: u64,
    head: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
    heartbeat: Interval,
    _guard: SubscriberGuard,
}

impl Subscription {
    /// The next height this subscription sends.
    pub fn next_height(&self) -> u64 {
        self.next
    }

    /// The next block, or a heartbeat after an idle interval. Cancel-safe.
    pub async fn next(&mut self) -> Result<Event, HubError> {
        loop {
            if *self.closing.borrow_and_update() {
                return Err(HubError::ShuttingDown);
            }
            let head = *self.head.borrow_and_update();
            if self.next <= head {
                let block = match self.hub.ring_block(self.next) {
                    Some(b) => b,
                    // A client behind the ring: the store read runs on a
                    // blocking thread, so that it does not hold up the
                    // live subscribers on the runtime's worker.
                    None => {
                        let (hub, height) = (Arc::clone(&self.hub), self.next);
                        tokio::task::spawn_blocking(move || hub.logged_block(height))
                            .await
                            .map_err(Hub::store_error)??
                    }
                };
                self.next += 1;
                self.heartbeat.reset();
                return Ok(Event::Block(block));
            }
            tokio::select! {
                changed = self.head.changed() => {
                    if changed.is_err() {
                        return Err(HubError::ShuttingDown);
                    }
                }
                _ = self.closing.changed() => {}
                _ = self.heartbeat.tick() => return Ok(Event::Heartbeat(head)),
            }
        }
    }
}
