//! An async streamer's thread: steps its driver with each block it is
//! handed, and on its own when idle (to flush, and to find the blocks that
//! could not be queued), retrying failures with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use statestream_core::Block;
use tracing::warn;

use super::queue::{QueueReceiver, RecvError};
use crate::driver::{Driver, Step};

/// How long an idle async worker waits before looking at the committed
/// height on its own (it finds blocks it could not be handed this way).
const POLL: Duration = Duration::from_millis(50);
/// First and longest pause between attempts after a failed delivery (or a
/// panic, after which the streamer is restarted from its cursor).
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(super) struct Worker {
    pub(super) driver: Driver,
    pub(super) rx: QueueReceiver,
    pub(super) committed: Arc<AtomicU64>,
}

impl Worker {
    pub(super) fn run(mut self) {
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
            if progress.stopped() {
                break;
            }
            let (live, target, force) = match retry.take() {
                Some(block) => {
                    let h = block.height();
                    (Some(block), h, false)
                }
                None => match self.rx.recv_timeout(POLL) {
                    Ok((block, queued)) => {
                        progress.queued.store(queued as u64, Ordering::Relaxed);
                        let h = block.height();
                        (Some(block), h, false)
                    }
                    // Idle: make what was delivered durable, and look for
                    // blocks that could not be queued.
                    Err(RecvError::Timeout) => {
                        progress
                            .queued
                            .store(self.rx.len() as u64, Ordering::Relaxed);
                        (None, self.committed.load(Ordering::Acquire), true)
                    }
                    Err(RecvError::Disconnected) => {
                        // Closing, and the queue is drained: one last
                        // attempt to deliver everything committed.
                        let c = self.committed.load(Ordering::Acquire);
                        self.driver.step(None, c, true);
                        break;
                    }
                },
            };
            match self.driver.step(live.as_ref(), target, force) {
                Step::Done => backoff = BACKOFF_MIN,
                Step::Stopped | Step::Failed { halted: true } => break,
                // Once the node is stopping, a failing streamer is not
                // retried, neither for this block nor for every block still
                // queued: what it has not delivered stays in the change log
                // for the next start.
                Step::Failed { halted: false } if progress.closing.is_triggered() => break,
                Step::Failed { halted: false } => {
                    // The pause ends at once when the node starts closing.
                    if progress.closing.wait(backoff) {
                        break;
                    }
                    retry = live;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        if let Err(e) = self.driver.close() {
            warn!(streamer = %progress.name, error = %e, "close failed");
        }
    }
}
