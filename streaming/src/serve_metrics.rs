//! The `serve` streamer's metrics on the node's `/metrics` (features
//! `serve` and `telemetry`): a collector reading the streamer's counters
//! ([`statestream_serve::ServeMetrics`]) at each scrape, so the streamer
//! crate needs no metrics library.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use statestream_serve::{FrontEndMetrics, ServeMetrics};

/// Name, help, type, and the value of one front-end's counters.
type Metric = (
    &'static str,
    &'static str,
    MetricType,
    fn(&FrontEndMetrics) -> u64,
);

const METRICS: [Metric; 4] = [
    (
        "serve_subscribers",
        "Subscribers of the serve streamer connected now, by front-end.",
        MetricType::GAUGE,
        |m| m.subscribers,
    ),
    (
        "serve_messages_sent_total",
        "Messages sent to subscribers (gRPC messages; SSE writes: a put or one block's events), heartbeats excluded.",
        MetricType::COUNTER,
        |m| m.messages_sent,
    ),
    (
        "serve_bytes_sent_total",
        "Bytes of the messages sent to subscribers (gRPC: encoded protobuf; SSE: event text).",
        MetricType::COUNTER,
        |m| m.bytes_sent,
    ),
    (
        "serve_slow_disconnects_total",
        "Subscribers disconnected because they did not keep up.",
        MetricType::COUNTER,
        |m| m.slow_disconnects,
    ),
];

/// The limit on subscribers (label `streamer` only: one limit for all
/// front-ends).
const MAX_SUBSCRIBERS: (&str, &str) = (
    "serve_max_subscribers",
    "The serve streamer's max_subscribers: subscribers of all front-ends together are refused past it.",
);

/// The metrics of one `serve` streamer (const label `streamer`, label
/// `frontend`).
struct ServeCollector {
    streamer: String,
    metrics: Arc<ServeMetrics>,
    descs: Vec<Desc>,
}

impl ServeCollector {
    fn new(
        streamer: &str,
        metrics: Arc<ServeMetrics>,
    ) -> Result<ServeCollector, prometheus::Error> {
        let descs = METRICS
            .iter()
            .map(|(name, help, _, _)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    vec!["frontend".to_owned()],
                    HashMap::from([("streamer".to_owned(), streamer.to_owned())]),
                )
            })
            .chain(std::iter::once(Desc::new(
                MAX_SUBSCRIBERS.0.to_owned(),
                MAX_SUBSCRIBERS.1.to_owned(),
                Vec::new(),
                HashMap::from([("streamer".to_owned(), streamer.to_owned())]),
            )))
            .collect::<Result<_, _>>()?;
        Ok(ServeCollector {
            streamer: streamer.to_owned(),
            metrics,
            descs,
        })
    }
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut pair = proto::LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

impl Collector for ServeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = self.metrics.read();
        let mut families: Vec<MetricFamily> = METRICS
            .iter()
            .map(|(name, help, kind, value)| {
                let samples = now
                    .iter()
                    .map(|m| {
                        let mut sample = proto::Metric::default();
                        sample.set_label(vec![
                            label("frontend", m.front_end.name()),
                            label("streamer", &self.streamer),
                        ]);
                        let v = value(m) as f64;
                        if *kind == MetricType::COUNTER {
                            let mut c = proto::Counter::default();
                            c.set_value(v);
                            sample.set_counter(c);
                        } else {
                            let mut g = proto::Gauge::default();
                            g.set_value(v);
                            sample.set_gauge(g);
                        }
                        sample
                    })
                    .collect();
                let mut family = MetricFamily::default();
                family.set_name((*name).to_owned());
                family.set_help((*help).to_owned());
                family.set_field_type(*kind);
                family.set_metric(samples);
                family
            })
            .collect();
        let mut limit = proto::Metric::default();
        limit.set_label(vec![label("streamer", &self.streamer)]);
        let mut g = proto::Gauge::default();
        g.set_value(self.metrics.max_subscribers() as f64);
        limit.set_gauge(g);
        let mut family = MetricFamily::default();
        family.set_name(MAX_SUBSCRIBERS.0.to_owned());
        family.set_help(MAX_SUBSCRIBERS.1.to_owned());
        family.set_field_type(MetricType::GAUGE);
        family.set_metric(vec![limit]);
        families.push(family);
        families
    }
}

/// Registers the metrics of the `serve` streamer `streamer` (its
/// [`ServeHandle::metrics`](statestream_serve::ServeHandle::metrics)) in
/// `registry`, replacing those of an earlier instance of the same name.
pub fn register_serve_metrics(
    registry: &prometheus::Registry,
    streamer: &str,
    metrics: Arc<ServeMetrics>,
) -> Result<(), prometheus::Error> {
    let collector = ServeCollector::new(streamer, Arc::clone(&metrics))?;
    match registry.register(Box::new(collector)) {
        Err(prometheus::Error::AlreadyReg) => {
            // Unregistering goes by the descriptions: any collector of the
            // same streamer name stands for the old one.
            registry.unregister(Box::new(ServeCollector::new(streamer, Arc::default())?))?;
            registry.register(Box::new(ServeCollector::new(streamer, metrics)?))
        }
        other => other,
    }
}

/// Name, help, type and value of one credential's counters.
type CredentialMetric = (
    &'static str,
    &'static str,
    MetricType,
    fn(&statestream_access::CounterValues) -> u64,
);

const CREDENTIAL_METRICS: [CredentialMetric; 4] = [
    (
        "serve_credential_streams",
        "Streams open now, by credential (all serve streamers and front-ends).",
        MetricType::GAUGE,
        |v| v.streams,
    ),
    (
        "serve_credential_messages_sent_total",
        "Messages sent to a credential's streams.",
        MetricType::COUNTER,
        |v| v.messages,
    ),
    (
        "serve_credential_bytes_sent_total",
        "Bytes of the messages sent to a credential's streams.",
        MetricType::COUNTER,
        |v| v.bytes,
    ),
    (
        "serve_credential_denials_total",
        "Requests of a known credential refused (revoked, expired, outside its scopes, over max_streams).",
        MetricType::COUNTER,
        |v| v.denials,
    ),
];

/// The counters of the node's credentials (label `credential`).
struct CredentialCollector {
    credentials: statestream_access::Registry,
    descs: Vec<Desc>,
}

impl CredentialCollector {
    fn new(credentials: statestream_access::Registry) -> Result<Self, prometheus::Error> {
        let descs = CREDENTIAL_METRICS
            .iter()
            .map(|(name, help, _, _)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    vec!["credential".to_owned()],
                    HashMap::new(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(CredentialCollector { credentials, descs })
    }
}

impl Collector for CredentialCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = self.credentials.metrics();
        CREDENTIAL_METRICS
            .iter()
            .map(|(name, help, kind, value)| {
                let samples = now
                    .iter()
                    .map(|(id, v)| {
                        let mut sample = proto::Metric::default();
                        sample.set_label(vec![label("credential", id)]);
                        let v = value(v) as f64;
                        if *kind == MetricType::COUNTER {
                            let mut c = proto::Counter::default();
                            c.set_value(v);
                            sample.set_counter(c);
                        } else {
                            let mut g = proto::Gauge::default();
                            g.set_value(v);
                            sample.set_gauge(g);
                        }
                        sample
                    })
                    .collect();
                let mut family = MetricFamily::default();
                family.set_name((*name).to_owned());
                family.set_help((*help).to_owned());
                family.set_field_type(*kind);
                family.set_metric(samples);
                family
            })
            .collect()
    }
}

/// Registers the per-credential metrics of `credentials` in `registry`,
/// replacing an earlier registration (a node's streamers share one).
pub fn register_credential_metrics(
    registry: &prometheus::Registry,
    credentials: statestream_access::Registry,
) -> Result<(), prometheus::Error> {
    let collector = CredentialCollector::new(credentials.clone())?;
    match registry.register(Box::new(collector)) {
        Err(prometheus::Error::AlreadyReg) => {
            let old = CredentialCollector::new(statestream_access::Registry::in_memory())?;
            registry.unregister(Box::new(old))?;
            registry.register(Box::new(CredentialCollector::new(credentials)?))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_metrics_are_labelled_by_credential() {
        let credentials = statestream_access::Registry::in_memory();
        let (_, secret) = credentials
            .create(statestream_access::NewCredential {
                id: "wallet".into(),
                scopes: vec![statestream_access::Scope {
                    store: "*".into(),
                    prefixes: Vec::new(),
                }],
                push: false,
                subscribe_webhooks: false,
                max_streams: None,
                expires_at: None,
                description: String::new(),
            })
            .unwrap();
        let who = credentials.authenticate(secret.expose()).unwrap();
        let slot = credentials.open_stream(&who).unwrap();
        slot.counters().sent(10);
        slot.counters().sent(5);
        credentials.denied(Some("wallet"), "grpc", "outside its scopes");
        let registry = prometheus::Registry::new();
        register_credential_metrics(&registry, credentials.clone()).unwrap();
        // A second registration (a second serve streamer) replaces it.
        register_credential_metrics(&registry, credentials).unwrap();
        let value = |name: &str| {
            let family = registry
                .gather()
                .into_iter()
                .find(|f| f.name() == name)
                .unwrap_or_else(|| panic!("no {name}"));
            let m = &family.get_metric()[0];
            assert_eq!(m.get_label()[0].value(), "wallet");
            if family.get_field_type() == MetricType::GAUGE {
                m.get_gauge().get_value()
            } else {
                m.get_counter().get_value()
            }
        };
        assert_eq!(value("serve_credential_streams"), 1.0);
        assert_eq!(value("serve_credential_messages_sent_total"), 2.0);
        assert_eq!(value("serve_credential_bytes_sent_total"), 15.0);
        assert_eq!(value("serve_credential_denials_total"), 1.0);
        drop(slot);
        assert_eq!(value("serve_credential_streams"), 0.0);
    }

    #[test]
    fn one_collector_per_streamer_name_the_latest_wins() {
        let registry = prometheus::Registry::new();
        register_serve_metrics(&registry, "a", Arc::default()).unwrap();
        register_serve_metrics(&registry, "b", Arc::default()).unwrap();
        // A rebuilt `a` replaces the first one instead of failing.
        register_serve_metrics(&registry, "a", Arc::default()).unwrap();
        let families = registry.gather();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "serve_bytes_sent_total",
                "serve_max_subscribers",
                "serve_messages_sent_total",
                "serve_slow_disconnects_total",
                "serve_subscribers",
            ]
        );
        for family in &families {
            // Two streamers by two front-ends; the limit once per streamer.
            let samples = if family.name() == MAX_SUBSCRIBERS.0 {
                2
            } else {
                4
            };
            assert_eq!(family.get_metric().len(), samples, "{}", family.name());
        }
    }
}
