//! One streamer's delivery state machine. The rules that guarantee nothing
//! is lost live here once, for both delivery modes: blocks go out in height
//! order with none skipped (the ones a streamer was not handed live are read
//! from the change log), the cursor only covers flushed blocks, and a
//! failure with `stop-node-on-error` halts. The sync path steps it on the
//! committing thread; the async worker steps it in its loop.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use statestream_core::{Block, Shutdown, StoreSelection, StreamError, Streamer};
use statestream_store::ChangeLog;
use tracing::{debug, error, info, warn};

use crate::error::Error;

/// While blocks flow, a streamer is flushed at most this often (it is also
/// flushed whenever it goes idle, and at shutdown). This bounds how many
/// blocks a power loss can make a non-fsyncing streamer deliver again, and
/// how many blocks the change log holds for it (the log keeps every block
/// above the flushed cursor, and the store's commits cost more the more it
/// holds: `docs/performance.md` measures the trade-off), so it is short.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Why a streamer stopped the node: the first failure of a streamer with
/// `stop-node-on-error = true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Halt {
    pub(crate) streamer: String,
    pub(crate) height: u64,
    pub(crate) message: String,
}

impl From<Halt> for Error {
    fn from(h: Halt) -> Error {
        Error::Halted {
            streamer: h.streamer,
            height: h.height,
            message: h.message,
        }
    }
}

/// A streamer's progress, shared between its driver (on whichever thread
/// delivers) and the manager (stats, cursors, halt checks).
#[derive(Debug)]
pub(crate) struct Progress {
    pub(crate) name: String,
    stop_node_on_error: bool,
    delivered: AtomicU64,
    /// The last height covered by a successful `on_flush`: the cursor.
    durable: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) fell_behind: AtomicU64,
    pub(crate) caught_up: AtomicU64,
    /// Async: blocks in its queue, as last seen by the committing thread
    /// (after a send) or the worker (after a receive). For observers only.
    pub(crate) queued: AtomicU64,
    /// Panics caught in the streamer's hooks.
    pub(crate) panics: AtomicU64,
    last_error: Mutex<Option<String>>,
    halt: Mutex<Option<Halt>>,
    /// Triggered when the manager starts closing: a failing delivery is not
    /// retried (the block stays in the change log for the next start), and
    /// a backoff pause ends at once.
    pub(crate) closing: Shutdown,
    /// The streamers' own signal, triggered once the drain limit has passed
    /// (or at once when the manager is dropped): a failure after it is a
    /// delivery cut by the stop, not the streamer's failure.
    pub(crate) shutdown: Shutdown,
    /// Set when the manager stops waiting for the streamer (dropped without
    /// `close`, or still busy past the drain limit): stop at once.
    pub(crate) abandoned: AtomicBool,
    /// Set when a run-time streamer is stopped or removed
    /// ([`RuntimeHandle`](crate::RuntimeHandle)): stop at once.
    pub(crate) removed: AtomicBool,
}

impl Progress {
    pub(crate) fn new(
        name: &str,
        stop_node_on_error: bool,
        cursor: u64,
        closing: Shutdown,
        shutdown: Shutdown,
    ) -> Progress {
        Progress {
            name: name.to_string(),
            stop_node_on_error,
            delivered: AtomicU64::new(cursor),
            durable: AtomicU64::new(cursor),
            errors: AtomicU64::new(0),
            fell_behind: AtomicU64::new(0),
            caught_up: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            last_error: Mutex::new(None),
            halt: Mutex::new(None),
            closing,
            shutdown,
            abandoned: AtomicBool::new(false),
            removed: AtomicBool::new(false),
        }
    }

    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub(crate) fn halt(&self) -> Option<Halt> {
        lock(&self.halt).clone()
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Records a failed attempt at `height`; returns whether the node must
    /// stop (the streamer is then halted). A failure once the streamers'
    /// shutdown signal is triggered is a delivery the stop cut short (a
    /// retry wait that ended, a request abandoned): it is logged, not
    /// counted, and never halts; the block stays in the change log.
    pub(crate) fn failed(&self, height: u64, error: &dyn std::fmt::Display) -> bool {
        if self.shutdown.is_triggered() {
            info!(height, streamer = %self.name, error = %error,
                "delivery interrupted by the shutdown; the block stays in the change log for the next start");
            return false;
        }
        let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        let message = error.to_string();
        warn!(height, streamer = %self.name, error = %message, errors, "delivery failed");
        *lock(&self.last_error) = Some(message.clone());
        if !self.stop_node_on_error {
            return false;
        }
        lock(&self.halt).get_or_insert(Halt {
            streamer: self.name.clone(),
            height,
            message,
        });
        true
    }

    pub(crate) fn stopped(&self) -> bool {
        self.halt().is_some()
            || self.abandoned.load(Ordering::Acquire)
            || self.removed.load(Ordering::Acquire)
    }
}

/// Locks a mutex, recovering the data if a thread panicked while holding it
/// (the guarded values are plain snapshots that stay valid).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The outcome of one [`Driver::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Every block up to the target is delivered, and flushed if that was
    /// due.
    Done,
    /// A delivery, a flush or a change-log read failed and was recorded;
    /// `halted` when the node must stop. Otherwise the step may be tried
    /// again: it resumes after the last delivered block.
    Failed { halted: bool },
    /// The streamer is halted or the manager is gone: nothing was tried.
    Stopped,
}

/// Delivers blocks to one streamer: owns it, its selection of stores, its
/// progress and its change-log reader.
pub(crate) struct Driver {
    streamer: Box<dyn Streamer>,
    selection: StoreSelection,
    progress: Arc<Progress>,
    change_log: ChangeLog,
    last_flush: Instant,
    /// Set when a hook panicked: the streamer's state is unknown, so before
    /// the next delivery it is started again (`on_start`) from its cursor.
    restart: bool,
}

impl Driver {
    pub(crate) fn new(
        streamer: Box<dyn Streamer>,
        selection: StoreSelection,
        progress: Arc<Progress>,
        change_log: ChangeLog,
    ) -> Driver {
        Driver {
            streamer,
            selection,
            progress,
            change_log,
            last_flush: Instant::now(),
            restart: false,
        }
    }

    pub(crate) fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// Calls `on_start` with the first height the streamer will receive.
    pub(crate) fn start(&mut self) -> Result<(), Error> {
        let next = self.progress.delivered() + 1;
        self.call("on_start", |s| s.on_start(next))
            .map_err(|source| Error::Lifecycle {
                streamer: self.progress.name.clone(),
                action: "start",
                source,
            })
    }

    /// Runs one hook of the streamer. A panic is caught and becomes the
    /// hook's error (counted in `panics`), and the streamer is marked for a
    /// restart: a panic must not end the thread silently, nor leave
    /// `stop-node-on-error` unapplied.
    fn call<T>(
        &mut self,
        hook: &'static str,
        f: impl FnOnce(&mut dyn Streamer) -> Result<T, StreamError>,
    ) -> Result<T, StreamError> {
        let streamer = &mut *self.streamer;
        match catch_unwind(AssertUnwindSafe(|| f(streamer))) {
            Ok(r) => r,
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                self.progress.panics.fetch_add(1, Ordering::Relaxed);
                self.restart = true;
                error!(streamer = %self.progress.name, hook, panic = %message, "streamer panicked");
                Err(StreamError::msg(format_args!(
                    "panicked in {hook}: {message}"
                )))
            }
        }
    }

    /// After a panic: the blocks since the last flush may be lost inside the
    /// streamer, so delivery falls back to the cursor, and the streamer is
    /// started again from there. Returns whether it is ready.
    fn restart(&mut self) -> Result<(), Step> {
        let durable = self.progress.durable();
        self.progress.delivered.store(durable, Ordering::Release);
        let next = durable + 1;
        match self.call("on_start", |s| s.on_start(next)) {
            Ok(()) => {
                self.restart = false;
                info!(streamer = %self.progress.name, next, "streamer restarted after a panic");
                Ok(())
            }
            Err(e) => Err(self.fail(next, &e)),
        }
    }

    /// Delivers every block after the delivered height up to `target`, in
    /// order: `live` when it is the one due, the others read from the change
    /// log. Then flushes, if `force_flush` or [`FLUSH_INTERVAL`] has passed
    /// since the last flush. Stops at the first failure.
    pub(crate) fn step(&mut self, live: Option<&Block>, target: u64, force_flush: bool) -> Step {
        if self.restart {
            if self.progress.stopped() {
                return Step::Stopped;
            }
            if let Err(step) = self.restart() {
                return step;
            }
        }
        let first = self.progress.delivered() + 1;
        if first < target {
            debug!(streamer = %self.progress.name, from = first, to = target, "catching up");
        }
        while self.progress.delivered() < target {
            if self.progress.stopped() {
                return Step::Stopped;
            }
            let height = self.progress.delivered() + 1;
            let from_log;
            let block = match live.filter(|b| b.height() == height) {
                Some(b) => {
                    from_log = false;
                    b.clone()
                }
                None => {
                    from_log = true;
                    match self.read(height) {
                        Ok(b) => b,
                        Err(e) => return self.fail(height, &e),
                    }
                }
            };
            if let Err(e) = self.call("on_block", |s| s.on_block(&block)) {
                if self.restart {
                    // The streamer panicked: what it did since its last
                    // flush cannot be trusted.
                    let durable = self.progress.durable();
                    self.progress.delivered.store(durable, Ordering::Release);
                }
                return self.fail(height, &e);
            }
            self.progress.delivered.store(height, Ordering::Release);
            if from_log {
                self.progress.caught_up.fetch_add(1, Ordering::Relaxed);
            }
            if !self.flush(false) {
                return Step::Failed {
                    halted: self.progress.halt().is_some(),
                };
            }
        }
        if self.flush(force_flush) {
            Step::Done
        } else {
            Step::Failed {
                halted: self.progress.halt().is_some(),
            }
        }
    }

    /// Flushes, then calls `on_close`.
    pub(crate) fn close(&mut self) -> Result<(), Error> {
        if !self.restart {
            self.flush(true);
        }
        self.call("on_close", |s| s.on_close())
            .map_err(|source| Error::Lifecycle {
                streamer: self.progress.name.clone(),
                action: "close",
                source,
            })
    }

    fn read(&self, height: u64) -> Result<Block, Error> {
        let changes = Arc::new(self.change_log.read(height)?);
        Ok(Block::from_change_set(changes, &self.selection)?)
    }

    fn fail(&self, height: u64, error: &dyn std::fmt::Display) -> Step {
        Step::Failed {
            halted: self.progress.failed(height, error),
        }
    }

    /// Flushes the streamer when it delivered blocks since its last flush,
    /// and `force` is set or [`FLUSH_INTERVAL`] has passed. A failed flush
    /// is a delivery error: `delivered` falls back to the durable height, so
    /// the unflushed blocks are delivered again (from the change log, which
    /// keeps everything above the durable height). Returns whether the
    /// streamer is in good standing.
    fn flush(&mut self, force: bool) -> bool {
        let delivered = self.progress.delivered();
        let durable = self.progress.durable();
        if delivered == durable || (!force && self.last_flush.elapsed() < FLUSH_INTERVAL) {
            return true;
        }
        self.last_flush = Instant::now();
        match self.call("on_flush", |s| s.on_flush()) {
            Ok(()) => {
                self.progress.durable.store(delivered, Ordering::Release);
                true
            }
            Err(e) => {
                self.progress.delivered.store(durable, Ordering::Release);
                self.progress
                    .failed(durable + 1, &format_args!("flush failed: {e}"));
                false
            }
        }
    }
}

/// The text of a panic's payload (`panic!` with a literal or a format).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
