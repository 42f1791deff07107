//! The commit path: the block is committed on the store with the
//! streamers' flushed cursors and the change-log pruning in the same
//! transaction, then handed to every streamer (sync: delivered now; async:
//! queued without waiting, or left to the change log when the queue is
//! full).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use statestream_config::Delivery;
use statestream_core::{Block, BlockMeta, CommitInfo, PushBatch};
use statestream_store::{CommitInput, MultiStore};
use tracing::{info, warn};

use super::queue::SendError;
use super::{DeliveryManager, Mode};
use crate::driver::Step;
use crate::error::Result;

/// Stats are logged every this many blocks (and a full queue is logged on
/// its first block and then every this many).
const LOG_EVERY: u64 = 1000;

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
    /// Panics caught in the streamer's hooks.
    pub panics: u64,
    /// The last delivery error, if any.
    pub last_error: Option<String>,
}

impl DeliveryManager {
    /// Commits the block on `store` and delivers it. See the type's
    /// documentation for the error policy.
    pub fn commit(&mut self, store: &mut MultiStore, meta: BlockMeta) -> Result<CommitInfo> {
        self.check_halted()?;
        let started = Instant::now();
        let mut input = CommitInput::new().app_meta(meta.encode_app_meta());
        // Held from the adoption of run-time streamers to the pruning, so
        // that a handle's retention check sees either the streamers this
        // commit counts or the pruning it did.
        let runtime = Arc::clone(&self.runtime);
        let mut rt = runtime.lock();
        self.adopt(&mut rt);
        // The change log keeps every block above the lowest flushed cursor
        // (held run-time streamers included), and the last `retain` blocks.
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
        for &c in rt.held.values() {
            low = low.min(c);
        }
        let stopped = std::mem::take(&mut rt.write_cursors);
        for (name, c) in &stopped {
            input = input.cursor(name.clone(), *c);
        }
        let dropped = std::mem::take(&mut rt.drop_cursors);
        if low + 1 > self.pruned_below {
            input = input.prune_below(low + 1);
        }
        let changes = match store.commit_block(input) {
            Ok(c) => c,
            Err(e) => {
                // Tried again with the next commit.
                rt.write_cursors.extend(stopped);
                rt.drop_cursors.extend(dropped);
                return Err(e.into());
            }
        };
        for (i, d) in cursor_updates {
            self.instances[i].persisted = d;
        }
        self.pruned_below = self.pruned_below.max(low + 1);
        rt.pruned_below = self.pruned_below;
        let height = changes.height();
        // Under the lock with the pruning: a handle never sees the new
        // pruning with the old height.
        self.committed.store(height, Ordering::Release);
        drop(rt);
        for name in dropped {
            store.delete_cursor(&name)?;
        }
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
                    Ok(queued) => {
                        inst.progress.queued.store(queued as u64, Ordering::Relaxed);
                    }
                    Err(SendError::Full) => {
                        inst.progress
                            .queued
                            .store(inst.setup.queue as u64, Ordering::Relaxed);
                        let n = inst.progress.fell_behind.fetch_add(1, Ordering::Relaxed);
                        if n.is_multiple_of(LOG_EVERY) {
                            warn!(height, streamer = %inst.setup.name, queue = inst.setup.queue,
                                "queue full: streamer falls behind and will catch up from the change log");
                        }
                    }
                    Err(SendError::Disconnected) => {
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

    /// [`commit`](DeliveryManager::commit) for a block holding the pushed
    /// writes of `batch` (already applied to `store`), then answers each
    /// pusher. A block that committed answers with its height whatever
    /// `commit` returns: when a streamer halts the node on that block
    /// ([`Error::Halted`](crate::Error::Halted)), the writes are in the
    /// state all the same, and a pusher told otherwise would write again.
    /// A block that did not commit (the store failed, or the node was
    /// already halted) rejects them with the error.
    pub fn commit_pushed(
        &mut self,
        store: &mut MultiStore,
        meta: BlockMeta,
        batch: PushBatch,
    ) -> Result<CommitInfo> {
        let before = store.version();
        let result = self.commit(store, meta);
        match &result {
            Ok(info) => batch.committed(info.version),
            // The store's version moves only when `commit_block` committed
            // this call's block; every error after it is a halt.
            Err(_) if store.version() > before => batch.committed(store.version()),
            Err(e) => batch.reject(&format!("the block did not commit: {e}")),
        }
        result
    }

    /// Takes in the run-time streamers started since the last commit, and
    /// lets go of the ones stopped or removed.
    pub(super) fn adopt(&mut self, rt: &mut super::runtime::RuntimeState) {
        for (inst, retain) in rt.adopt.drain(..) {
            self.retain = self.retain.max(retain);
            self.instances.push(inst);
        }
        self.instances
            .retain(|i| !i.progress.removed.load(Ordering::Acquire));
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
                    panics: p.panics.load(Ordering::Relaxed),
                    last_error: p.last_error(),
                }
            })
            .collect()
    }
}
