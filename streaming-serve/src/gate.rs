//! The serving gate: whether this process's front-ends answer clients at
//! all. A node's gate is always open. A relay (`statestream relay`) closes
//! it while it is too far behind its upstream (not ready) and for good
//! once a block diverged from its upstream; every front-end checks it
//! next to the access check, before it: a client is told to come back
//! later (`UNAVAILABLE`, HTTP 503 with `Retry-After`), never that its token
//! or its request is wrong.
//!
//! One gate per process: a relay's state applies to every `serve`
//! streamer it runs.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

/// Why the gate is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Closed {
    /// The relay is more than its `ready_lag_blocks` behind its upstream,
    /// or does not know its upstream's head (`lag` is `None`).
    #[error("not ready: {}; retry shortly", not_ready(*.lag, *.ready_lag))]
    NotReady { lag: Option<u64>, ready_lag: u64 },
    /// A block diverged from the upstream: nothing from that height on is
    /// served.
    #[error(
        "this relay diverged from its upstream at height {height} (store {store}) and serves nothing; see its log"
    )]
    Diverged { height: u64, store: String },
}

fn not_ready(lag: Option<u64>, ready_lag: u64) -> String {
    match lag {
        Some(lag) => {
            format!("this relay is {lag} blocks behind its upstream (at most {ready_lag} to serve)")
        }
        None => "this relay does not know its upstream's head yet (no upstream answers)".into(),
    }
}

/// The lag stored for "unknown".
const UNKNOWN: u64 = u64::MAX;

const OPEN: u8 = 0;
const NOT_READY: u8 = 1;
const DIVERGED: u8 = 2;

/// The process's serving gate.
#[derive(Debug)]
pub struct Gate {
    state: AtomicU8,
    lag: AtomicU64,
    ready_lag: AtomicU64,
    diverged: Mutex<Option<(u64, String)>>,
    /// The last height the process's source committed (a relay's upstream
    /// head; 0 on a node).
    source_head: AtomicU64,
    /// The state, announced when it changes (the health services wait on
    /// it instead of polling).
    changed: tokio::sync::watch::Sender<u8>,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            state: AtomicU8::new(OPEN),
            lag: AtomicU64::new(0),
            ready_lag: AtomicU64::new(0),
            diverged: Mutex::new(None),
            source_head: AtomicU64::new(0),
            changed: tokio::sync::watch::Sender::new(OPEN),
        }
    }
}

impl Gate {
    /// The gate of this process (open until a relay closes it).
    pub fn process() -> &'static Gate {
        static GATE: OnceLock<Gate> = OnceLock::new();
        GATE.get_or_init(Gate::default)
    }

    /// Opens the gate (`lag` within `ready_lag`) or closes it as not ready
    /// (also when the lag is not known: `None`); ignored once diverged.
    pub fn set_lag(&self, lag: Option<u64>, ready_lag: u64) {
        let lag = lag.unwrap_or(UNKNOWN);
        self.lag.store(lag, Ordering::Relaxed);
        self.ready_lag.store(ready_lag, Ordering::Relaxed);
        let next = if lag != UNKNOWN && lag <= ready_lag {
            OPEN
        } else {
            NOT_READY
        };
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != DIVERGED).then_some(next)
            });
        self.announce();
    }

    /// The last height the process's source committed: a relay sets its
    /// upstream's head. A subscription may start at any height up to the
    /// one after it and waits for the blocks it does not hold yet: a relay
    /// commits without an fsync per block, and after a crash it holds
    /// fewer blocks than its clients saw until it fetched them again.
    pub fn set_source_head(&self, height: u64) {
        self.source_head.store(height, Ordering::Relaxed);
    }

    /// See [`set_source_head`](Gate::set_source_head); 0 when never set.
    pub fn source_head(&self) -> u64 {
        self.source_head.load(Ordering::Relaxed)
    }

    /// Tells the waiters of [`changes`](Gate::changes) when the state
    /// moved (not at every lag update).
    fn announce(&self) {
        let now = self.state.load(Ordering::Acquire);
        self.changed.send_if_modified(|seen| {
            let moved = *seen != now;
            *seen = now;
            moved
        });
    }

    /// A receiver that sees each opening and closing of the gate.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u8> {
        self.changed.subscribe()
    }

    /// Closes the gate for good: block `height` of `store` diverged.
    pub fn set_diverged(&self, height: u64, store: &str) {
        *self.diverged.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((height, store.to_owned()));
        self.state.store(DIVERGED, Ordering::Release);
        self.announce();
    }

    /// Whether a request may be answered.
    pub fn check(&self) -> Result<(), Closed> {
        match self.state.load(Ordering::Acquire) {
            OPEN => Ok(()),
            NOT_READY => Err(Closed::NotReady {
                lag: Some(self.lag.load(Ordering::Relaxed)).filter(|&l| l != UNKNOWN),
                ready_lag: self.ready_lag.load(Ordering::Relaxed),
            }),
            _ => {
                let (height, store) = self
                    .diverged
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .unwrap_or_default();
                Err(Closed::Diverged { height, store })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_opens_and_closes_until_a_divergence_closes_for_good() {
        let gate = Gate::default();
        assert_eq!(gate.check(), Ok(()));
        gate.set_lag(None, 10);
        let unknown = gate.check().unwrap_err();
        assert!(unknown.to_string().contains("does not know"), "{unknown}");
        gate.set_lag(Some(11), 10);
        assert_eq!(
            gate.check(),
            Err(Closed::NotReady {
                lag: Some(11),
                ready_lag: 10
            })
        );
        gate.set_lag(Some(10), 10);
        assert_eq!(gate.check(), Ok(()));
        let changes = gate.changes();
        gate.set_lag(Some(3), 10);
        assert!(
            !changes.has_changed().unwrap(),
            "still open: no announcement"
        );
        gate.set_diverged(42, "bank");
        assert!(changes.has_changed().unwrap(), "closing is announced");
        gate.set_lag(Some(0), 10);
        let closed = gate.check().unwrap_err();
        assert_eq!(
            closed,
            Closed::Diverged {
                height: 42,
                store: "bank".into()
            }
        );
        assert!(closed.to_string().contains("height 42 (store bank)"));
    }
}
