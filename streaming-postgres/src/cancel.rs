//! Cancelling the running statement when the node stops.
//!
//! The synchronous client blocks its thread until the server answers; a
//! statement waiting for a lock that another session holds, or for a server
//! that stopped answering, would keep the streamer's worker (and so
//! `DeliveryManager::close`) waiting up to `statement_timeout_ms`, or
//! forever. When the node's [`Shutdown`] is triggered (after the manager's
//! drain), a watcher thread gives the statement in flight [`STOP_GRACE`]
//! to finish, then asks the server to cancel it through the connection's cancel
//! token. From then on the streamer writes nothing more: the blocks stay in
//! the change log, and the cursor in the database says where the next
//! start resumes.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use postgres::CancelToken;
use statestream_core::Shutdown;
use tracing::{info, warn};

use crate::connect::ConnectSettings;

/// How long a statement still running when the streamers' shutdown signal
/// fires may go on before it is cancelled. The manager triggers that signal
/// only once its drain (`[store] shutdown_timeout_ms`) has passed, so a
/// healthy statement has had its time already; this must stay well below
/// the manager's own grace after the signal, or the worker is left behind
/// with its statement still waiting, to finish once a lock is released.
pub(crate) const STOP_GRACE: Duration = Duration::from_millis(200);

/// How often the watcher, while the node runs, looks whether the streamer
/// is gone ([`Shutdown`] wakes one kind of waiter only).
const WATCH_STEP: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    /// The cancel token of the current connection.
    token: Option<CancelToken>,
    /// Since when the streamer is talking to the server, if it is.
    busy_since: Option<Instant>,
    /// Counts the busy periods, so a cancel is for one of them only.
    generation: u64,
    /// A statement was cancelled because the node stops.
    cancelled: bool,
    /// The streamer is closed or dropped: the watcher ends.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The streamer's side of the watcher.
pub(crate) struct Canceller {
    shared: Arc<Shared>,
    shutdown: Shutdown,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl Canceller {
    pub(crate) fn new(shutdown: Shutdown) -> Canceller {
        Canceller {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
            shutdown,
            watcher: None,
        }
    }

    /// Starts the watcher (once): called when the streamer starts, so a
    /// streamer that is only built starts no thread.
    pub(crate) fn start(&mut self, name: &str, settings: &ConnectSettings) {
        if self.watcher.is_some() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let shutdown = self.shutdown.clone();
        let settings = settings.clone();
        let streamer = name.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("pg-cancel-{name}"))
            .spawn(move || watch(&shared, &shutdown, &settings, &streamer));
        match spawned {
            Ok(handle) => self.watcher = Some(handle),
            // The streamer still works; only a stop during a blocked
            // statement waits for the statement timeout.
            Err(e) => warn!(streamer = %name, error = %e,
                "cannot start the thread that cancels statements at shutdown"),
        }
    }

    /// The token of the connection just opened.
    pub(crate) fn set_token(&self, token: Option<CancelToken>) {
        self.shared.lock().token = token;
    }

    /// Marks the streamer as talking to the server until the guard is
    /// dropped.
    pub(crate) fn busy(&self) -> Busy {
        let mut state = self.shared.lock();
        state.busy_since = Some(Instant::now());
        state.generation += 1;
        drop(state);
        self.shared.changed.notify_all();
        Busy(Arc::clone(&self.shared))
    }

    /// Whether a statement was cancelled because the node stops.
    pub(crate) fn cancelled(&self) -> bool {
        self.shared.lock().cancelled
    }

    /// Ends the watcher.
    pub(crate) fn close(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        // The watcher notices within a `WATCH_STEP` while the node runs,
        // at once after the shutdown signal; it is not joined, so closing
        // never waits for it.
        self.watcher = None;
    }
}

impl Drop for Canceller {
    fn drop(&mut self) {
        self.close();
    }
}

/// See [`Canceller::busy`].
pub(crate) struct Busy(Arc<Shared>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.lock().busy_since = None;
        self.0.changed.notify_all();
    }
}

fn watch(shared: &Shared, shutdown: &Shutdown, settings: &ConnectSettings, streamer: &str) {
    loop {
        if shutdown.wait(WATCH_STEP) {
            break;
        }
        if shared.lock().closed {
            return;
        }
    }
    let stopping = Instant::now();
    let mut state = shared.lock();
    loop {
        if state.closed {
            return;
        }
        let Some(since) = state.busy_since else {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let deadline = since.max(stopping) + STOP_GRACE;
        let now = Instant::now();
        if now < deadline {
            state = shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        let generation = state.generation;
        state.cancelled = true;
        let token = state.token.clone();
        drop(state);
        if let Some(token) = token {
            info!(streamer = %streamer, grace_ms = STOP_GRACE.as_millis() as u64,
                "the node is stopping: cancelling the statement still running");
            if let Err(e) = settings.cancel(&token) {
                warn!(streamer = %streamer, error = %e, "cannot cancel the running statement");
            }
        }
        state = shared.lock();
        while !state.closed && state.generation == generation && state.busy_since.is_some() {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}
