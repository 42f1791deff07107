//! What a relay shows: its `/status` fields and `/healthz` verdict (a
//! [`StatusSection`] of the streamers' observer, its fields at the top
//! level) and its metrics, from one [`RelayStatus`] the relay loop updates.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use statestream::StatusSection;
use statestream::prometheus::{IntCounter, IntGauge, Registry};

/// The relay's state, readable from any thread.
#[derive(Debug, Default)]
pub struct RelayStatus {
    upstream: Mutex<String>,
    upstream_head: AtomicU64,
    height: AtomicU64,
    ready: AtomicBool,
    failovers: AtomicU64,
    resnapshots: AtomicU64,
    diverged: Mutex<Option<(u64, String)>>,
}

impl RelayStatus {
    pub fn set_upstream(&self, name: &str) {
        *self.upstream.lock().unwrap_or_else(PoisonError::into_inner) = name.to_owned();
    }

    pub fn upstream(&self) -> String {
        self.upstream
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_upstream_head(&self, head: u64) {
        self.upstream_head.store(head, Ordering::Relaxed);
    }

    pub fn upstream_head(&self) -> u64 {
        self.upstream_head.load(Ordering::Relaxed)
    }

    pub fn set_height(&self, height: u64) {
        self.height.store(height, Ordering::Relaxed);
    }

    pub fn height(&self) -> u64 {
        self.height.load(Ordering::Relaxed)
    }

    /// Blocks the relay trails its upstream's head by.
    pub fn lag(&self) -> u64 {
        self.upstream_head().saturating_sub(self.height())
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn failed_over(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    pub fn resnapshotted(&self) {
        self.resnapshots.fetch_add(1, Ordering::Relaxed);
    }

    pub fn resnapshots(&self) -> u64 {
        self.resnapshots.load(Ordering::Relaxed)
    }

    pub fn set_diverged(&self, height: u64, store: &str) {
        *self.diverged.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((height, store.to_owned()));
    }

    pub fn diverged(&self) -> Option<(u64, String)> {
        self.diverged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl RelayStatus {
    /// The relay's section of `/status` (its fields at the top level, as
    /// docs/relay.md lists them) and its `/healthz` verdict.
    pub fn section(self: &Arc<Self>) -> StatusSection {
        let fields = Arc::clone(self);
        let health = Arc::clone(self);
        StatusSection::new(Arc::new(move || fields.fields()))
            .with_health(Arc::new(move || health.unhealthy()))
            .top_level()
    }

    fn fields(&self) -> serde_json::Value {
        let diverged = self
            .diverged()
            .map(|(height, store)| serde_json::json!({ "height": height, "store": store }));
        serde_json::json!({
            "upstream": self.upstream(),
            "upstream_head": self.upstream_head(),
            "local_height": self.height(),
            "lag_blocks": self.lag(),
            "ready": self.ready(),
            "failovers": self.failovers(),
            "resnapshots": self.resnapshots(),
            "diverged": diverged,
        })
    }

    fn unhealthy(&self) -> Option<String> {
        if let Some((height, store)) = self.diverged() {
            return Some(format!(
                "diverged from the upstream at height {height} (store {store})"
            ));
        }
        (!self.ready()).then(|| {
            format!(
                "not ready: {} blocks behind the upstream {}",
                self.lag(),
                self.upstream()
            )
        })
    }
}

/// The relay's metrics (docs/operations.md), set from a [`RelayStatus`].
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    height: IntGauge,
    upstream_head: IntGauge,
    lag: IntGauge,
    ready: IntGauge,
    diverged: IntGauge,
    failovers: IntCounter,
    resnapshots: IntCounter,
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl RelayMetrics {
    /// Registers them in `registry` (the one `/metrics` serves).
    pub fn register(registry: &Registry) -> anyhow::Result<RelayMetrics> {
        let g = |name: &str, help: &str| -> anyhow::Result<IntGauge> {
            let m = IntGauge::new(name, help)?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let c = |name: &str, help: &str| -> anyhow::Result<IntCounter> {
            let m = IntCounter::new(name, help)?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        Ok(RelayMetrics {
            height: g("relay_height", "The last height the relay committed.")?,
            upstream_head: g(
                "relay_upstream_head",
                "The head height of the upstream in use, as last seen.",
            )?,
            lag: g(
                "relay_lag_blocks",
                "Blocks the relay trails the upstream in use by.",
            )?,
            ready: g(
                "relay_ready",
                "1 while the relay serves clients (within ready_lag_blocks, not diverged), else 0.",
            )?,
            diverged: g(
                "relay_diverged",
                "1 once a block diverged from the upstream (the relay stopped applying), else 0.",
            )?,
            failovers: c(
                "relay_failovers_total",
                "Moves to another upstream: a disconnect, an error or a lag.",
            )?,
            resnapshots: c(
                "relay_resnapshots_total",
                "Fresh snapshots taken because the upstream no longer retained the next height.",
            )?,
        })
    }

    /// Sets every metric from `status`.
    pub fn update(&self, status: &RelayStatus) {
        self.height.set(gauge(status.height()));
        self.upstream_head.set(gauge(status.upstream_head()));
        self.lag.set(gauge(status.lag()));
        self.ready.set(i64::from(status.ready()));
        self.diverged.set(i64::from(status.diverged().is_some()));
        let f = status.failovers();
        self.failovers
            .inc_by(f.saturating_sub(self.failovers.get()));
        let r = status.resnapshots();
        self.resnapshots
            .inc_by(r.saturating_sub(self.resnapshots.get()));
    }
}
