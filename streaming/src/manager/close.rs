//! Shutdown: a bounded drain of the async streamers, then the cursors.
//!
//! A stop is not a failure. Close first lets async streamers go on for the
//! drain limit (`shutdown_timeout`): they deliver what is queued and
//! committed, and a streamer's own short retries go on. A streamer that
//! fails meanwhile is not retried by the manager (the rest of its blocks
//! stay in the change log). When the limit passes, the streamers' shutdown
//! signal cuts their waits short; a delivery cut that way is not the
//! streamer's failure. A streamer still busy a grace period later (a
//! request that never answers) is left behind. The cursors are saved
//! either way, and what is pending is logged with the height each streamer
//! resumes from.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use tracing::{info, warn};

use super::{DeliveryManager, Instance, Mode};
use crate::error::{Error, Result};

/// After the drain limit, how long close still waits for a streamer whose
/// waits were cut short to return from its current call and close; one
/// still busy then is left behind.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

impl DeliveryManager {
    /// Clean shutdown, bounded in time for every streamer.
    ///
    /// - Async streamers drain for up to the drain limit
    ///   ([`shutdown_timeout`](crate::DeliveryManagerBuilder::shutdown_timeout)):
    ///   they deliver their queue and every committed block, and their own
    ///   retries go on; a failing delivery is not retried by the manager.
    ///   Then the [shutdown signal](DeliveryManager::shutdown_signal) ends
    ///   their waits: a delivery cut short by it is not a failure. A worker
    ///   still busy a grace period (`CLOSE_GRACE`) later is left behind (it
    ///   stops at its next step, or with the process).
    /// - Sync streamers, which delivered every block inside `commit`, are
    ///   flushed and closed once the signal is triggered.
    /// - Every streamer's cursor (its last flushed height) is persisted, and
    ///   each streamer with blocks pending is logged with the height it
    ///   resumes from; the change log keeps those blocks.
    ///
    /// Returns [`Error::Halted`] when a streamer with `stop-node-on-error`
    /// failed (during the run, or while draining before the limit), so a
    /// node that shuts down after such a failure does not report success;
    /// the cursors are persisted first either way.
    pub fn close(mut self, store: &mut statestream_store::MultiStore) -> Result<()> {
        let started = Instant::now();
        self.observer.shared.stopped.store(true, Ordering::Release);
        self.closing.trigger();
        {
            // No streamer is added from now on; the ones started since the
            // last commit drain with the others.
            let runtime = std::sync::Arc::clone(&self.runtime);
            let mut rt = runtime.lock();
            rt.closed = true;
            self.adopt(&mut rt);
        }
        for inst in &self.instances {
            inst.progress.closing.trigger();
        }
        let mut first_err: Option<Error> = None;
        for inst in &mut self.instances {
            // The worker drains its queue and catches up to the committed
            // height once the channel is closed.
            if let Mode::Async { tx, .. } = &mut inst.mode {
                drop(tx.take());
            }
        }
        let drain_end = started + self.shutdown_timeout;
        let busy = wait_for_workers(&mut self.instances, drain_end, &mut first_err);
        if busy {
            info!(
                limit_ms = self.shutdown_timeout.as_millis() as u64,
                "drain limit reached: ending the streamers' waits; what they have not delivered stays in the change log"
            );
        }
        self.shutdown.trigger();
        for inst in &self.instances {
            inst.progress.shutdown.trigger();
        }
        // Sync streamers delivered every block inside commit; what is left
        // is their last flush, after the signal so that a wait of theirs
        // ends at once.
        for inst in &mut self.instances {
            if let Mode::Sync { driver } = &mut inst.mode
                && let Err(e) = driver.close()
            {
                warn!(streamer = %inst.setup.name, error = %e, "close failed");
                first_err.get_or_insert(e);
            }
        }
        if busy
            && wait_for_workers(
                &mut self.instances,
                Instant::now() + CLOSE_GRACE,
                &mut first_err,
            )
        {
            for inst in &mut self.instances {
                if let Mode::Async { handle, .. } = &mut inst.mode
                    && handle.take().is_some()
                {
                    inst.progress.abandoned.store(true, Ordering::Release);
                    warn!(streamer = %inst.setup.name,
                        "streamer still busy after the drain limit: left behind without on_close");
                }
            }
        }
        let (stopped, dropped) = {
            let runtime = std::sync::Arc::clone(&self.runtime);
            let mut rt = runtime.lock();
            (
                std::mem::take(&mut rt.write_cursors),
                std::mem::take(&mut rt.drop_cursors),
            )
        };
        let cursors: Vec<(String, u64)> = self
            .instances
            .iter()
            // A run-time streamer stopped meanwhile has its cursor in
            // `stopped`; a removed one has none.
            .filter(|i| !i.progress.removed.load(Ordering::Acquire))
            .map(|i| (i.setup.name.clone(), i.progress.durable()))
            .chain(stopped)
            .collect();
        let refs: Vec<(&str, u64)> = cursors.iter().map(|(n, h)| (n.as_str(), *h)).collect();
        store.save_cursors(&refs)?;
        for name in dropped {
            store.delete_cursor(&name)?;
        }
        let committed = self.committed.load(Ordering::Acquire);
        for s in self.stats() {
            info!(streamer = %s.name, delivered = s.delivered_height, lag = s.lag,
                errors = s.errors, fell_behind = s.fell_behind, caught_up = s.caught_up,
                "streamer closed");
            if s.durable_height < committed {
                info!(streamer = %s.name, pending = committed - s.durable_height,
                    resumes_at = s.durable_height + 1,
                    "blocks not delivered before shutdown stay in the change log; the streamer resumes with them at the next start");
            }
        }
        let halted = self.check_halted().err();
        self.instances.clear();
        match halted.or(first_err) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Waits until every async worker still running has ended, or `deadline`.
/// Returns whether some are still running (their handles are kept).
fn wait_for_workers(
    instances: &mut [Instance],
    deadline: Instant,
    first_err: &mut Option<Error>,
) -> bool {
    let mut busy = false;
    for inst in instances {
        let Mode::Async { handle, done, .. } = &mut inst.mode else {
            continue;
        };
        if handle.is_none() {
            continue;
        }
        match done.recv_deadline(deadline) {
            Err(RecvTimeoutError::Timeout) => busy = true,
            // The thread dropped its end: it has ended, the join is quick.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(h) = handle.take()
                    && h.join().is_err()
                {
                    first_err.get_or_insert(Error::WorkerPanicked {
                        streamer: inst.setup.name.clone(),
                    });
                }
            }
        }
    }
    busy
}

impl Drop for DeliveryManager {
    fn drop(&mut self) {
        // Dropped without `close`: tell workers to stop as soon as they can;
        // whatever they did not deliver is in the change log.
        self.observer.shared.stopped.store(true, Ordering::Release);
        for inst in &mut self.instances {
            inst.progress.abandoned.store(true, Ordering::Release);
            if let Mode::Async { tx, .. } = &mut inst.mode {
                drop(tx.take());
            }
            inst.progress.closing.trigger();
            inst.progress.shutdown.trigger();
        }
        self.closing.trigger();
        self.shutdown.trigger();
        let runtime = std::sync::Arc::clone(&self.runtime);
        let mut rt = runtime.lock();
        rt.closed = true;
        for (inst, _) in &rt.adopt {
            inst.progress.abandoned.store(true, Ordering::Release);
            inst.progress.closing.trigger();
            inst.progress.shutdown.trigger();
        }
        rt.adopt.clear();
    }
}
