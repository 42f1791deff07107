//! Per-subscription metrics on `/metrics`, read from the engine at each
//! scrape.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use crate::engine::Engine;
use crate::model::State;

/// The metrics of every subscription: register it in the node's registry
/// (`prometheus::Registry::register(Box::new(engine.collector()))`).
pub struct SubscriptionCollector {
    engine: Engine,
    delivered_height: IntGaugeVec,
    lag: IntGaugeVec,
    state: IntGaugeVec,
    attempts: IntCounterVec,
    descs: Vec<Desc>,
}

impl std::fmt::Debug for SubscriptionCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionCollector")
            .finish_non_exhaustive()
    }
}

fn vecs() -> prometheus::Result<(IntGaugeVec, IntGaugeVec, IntGaugeVec, IntCounterVec)> {
    Ok((
        IntGaugeVec::new(
            Opts::new(
                "statestream_subscription_delivered_height",
                "The last height a subscription delivered (its cursor).",
            ),
            &["subscription"],
        )?,
        IntGaugeVec::new(
            Opts::new(
                "statestream_subscription_lag_blocks",
                "Committed height minus a subscription's delivered height.",
            ),
            &["subscription"],
        )?,
        IntGaugeVec::new(
            Opts::new(
                "statestream_subscription_state",
                "1 for a subscription's current state (active, paused, disabled), else 0.",
            ),
            &["subscription", "state"],
        )?,
        IntCounterVec::new(
            Opts::new(
                "statestream_subscription_attempts_total",
                "Webhook attempts of a subscription by outcome (delivered, discarded, failed), and waits for its rate limit (rate_limited).",
            ),
            &["subscription", "outcome"],
        )?,
    ))
}

impl Engine {
    /// The collector of this engine's metrics.
    pub fn collector(&self) -> prometheus::Result<SubscriptionCollector> {
        let (delivered_height, lag, state, attempts) = vecs()?;
        let descs = delivered_height
            .desc()
            .into_iter()
            .chain(lag.desc())
            .chain(state.desc())
            .chain(attempts.desc())
            .cloned()
            .collect();
        Ok(SubscriptionCollector {
            engine: self.clone(),
            delivered_height,
            lag,
            state,
            attempts,
            descs,
        })
    }
}

impl Collector for SubscriptionCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Fresh vectors each scrape: a deleted subscription disappears.
        let Ok((delivered_height, lag, state, attempts)) = vecs() else {
            return Vec::new();
        };
        let Ok(list) = self.engine.status() else {
            return Vec::new();
        };
        for s in list {
            let id = s.id.as_str();
            delivered_height
                .with_label_values(&[id])
                .set(i64::try_from(s.delivered_height).unwrap_or(i64::MAX));
            lag.with_label_values(&[id])
                .set(i64::try_from(s.lag_blocks).unwrap_or(i64::MAX));
            for st in [State::Active, State::Paused, State::Disabled] {
                state
                    .with_label_values(&[id, st.as_str()])
                    .set(i64::from(s.state == st));
            }
            for (outcome, n) in [
                ("delivered", s.delivered),
                ("discarded", s.discarded),
                ("failed", s.failed),
                ("rate_limited", s.rate_limited),
            ] {
                attempts.with_label_values(&[id, outcome]).inc_by(n);
            }
        }
        let _ = (
            &self.delivered_height,
            &self.lag,
            &self.state,
            &self.attempts,
        );
        [
            delivered_height.collect(),
            lag.collect(),
            state.collect(),
            attempts.collect(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}
