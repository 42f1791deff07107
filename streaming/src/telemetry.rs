//! The telemetry server (cargo feature `telemetry`): a node's metrics and
//! status over HTTP, for Prometheus, dashboards and health checks.
//!
//! - `GET /metrics`: the Prometheus text format (version 0.0.4). The node's
//!   metrics are read from an [`Observer`] at each scrape; a streamer's own
//!   metrics are whatever it registered in the same
//!   [`prometheus::Registry`] ([`Registry::metrics`](crate::Registry::metrics)).
//! - `GET /status`: [`NodeStatus`] as JSON.
//! - `GET /healthz`: `200` while the node commits, `503` once a streamer
//!   halted it (or it shut down) or a section of the status says it is not
//!   healthy ([`StatusSection::with_health`](crate::StatusSection::with_health)),
//!   with a one-line JSON body.
//!
//! A program whose streamers restart (a replica, after a snapshot) keeps
//! one server and points it at each new observer
//! ([`TelemetryServer::observe`]): the endpoints never go away.
//!
//! The server runs on a tokio runtime of its own, on one thread named
//! `telemetry`; it reads the manager's atomics and never touches the commit
//! path. Every metric is documented in `docs/operations.md`.
//!
//! Its listener is [`statestream_net`]'s: a cap on open connections, a
//! timeout for a client that does not send its request head, and a `Host`
//! check (`421` for a host the server is not for), set by
//! [`TelemetryOptions`]. A stranger's connections cannot take the
//! descriptors the node needs to write blocks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};
use statestream_config::TelemetryConfig;
use statestream_net::{HostCheck, Limits, ServerTls, ServiceThread, ServiceThreadError, TlsFiles};
use tower::Layer;

use crate::observe::{NodeState, NodeStatus, Observer, StreamerState};

/// Errors of the telemetry server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The address could not be bound (in use, not an address of this
    /// machine, a privileged port).
    #[error("telemetry: cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// The runtime or its thread could not be started.
    #[error("telemetry: cannot start the server: {source}")]
    Start {
        #[source]
        source: std::io::Error,
    },

    /// The TLS files could not be read, or the key does not go with the
    /// certificate.
    #[error("telemetry: {key}: {source}")]
    Tls {
        /// The `[telemetry]` key naming the file at fault.
        key: &'static str,
        #[source]
        source: statestream_net::TlsError,
    },

    /// The node's metrics clash with metrics already in the registry (two
    /// servers on one registry, or a streamer that took a `statestream_`
    /// name).
    #[error("telemetry: cannot register the node's metrics: {source}")]
    Register {
        #[source]
        source: prometheus::Error,
    },
}

/// What the telemetry server allows its clients: start from
/// [`TelemetryOptions::default`] or the node's `[telemetry]` table
/// ([`TelemetryOptions::from_config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TelemetryOptions {
    /// Connections open at once; one more is closed as soon as it is
    /// accepted. Default [`statestream_net::DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// How long a client has to send a request head (and how long a
    /// keep-alive connection may idle). Default
    /// [`statestream_net::DEFAULT_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// `Host` names accepted beyond `localhost`, `127.0.0.1`, `[::1]` and
    /// the bound address (`"*"`: any host).
    pub allowed_hosts: Vec<String>,
    /// HTTPS with these files (re-read by
    /// [`statestream_net::reload_all`], on the node's SIGHUP); `None`:
    /// plain HTTP.
    pub tls: Option<TlsFiles>,
}

impl Default for TelemetryOptions {
    fn default() -> TelemetryOptions {
        TelemetryOptions {
            max_connections: statestream_net::DEFAULT_MAX_CONNECTIONS,
            header_timeout: statestream_net::DEFAULT_HEADER_TIMEOUT,
            allowed_hosts: Vec::new(),
            tls: None,
        }
    }
}

impl TelemetryOptions {
    /// The options `[telemetry]` sets (`max_connections`,
    /// `header_timeout_ms`, `allowed_hosts`, the TLS files with relative
    /// paths under `home`), defaults for the rest.
    pub fn from_config_in(config: &TelemetryConfig, home: &Path) -> TelemetryOptions {
        let mut options = TelemetryOptions::from_config(config);
        options.tls = config.tls.as_ref().map(|tls| {
            let files = TlsFiles::new(home.join(&tls.cert_file), home.join(&tls.key_file));
            match &tls.client_ca_file {
                Some(ca) => files.client_ca_file(home.join(ca)),
                None => files,
            }
        });
        options
    }

    /// Reads the TLS files as the server will (each exists and parses, the
    /// key goes with the certificate): `statestream config check`'s check.
    pub fn check_tls(&self) -> Result<(), TelemetryError> {
        match &self.tls {
            Some(files) => files.check().map_err(|(file, source)| TelemetryError::Tls {
                key: file.key(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// The options `[telemetry]` sets (`max_connections`,
    /// `header_timeout_ms`, `allowed_hosts`; the TLS files as written,
    /// relative to the current directory: see
    /// [`from_config_in`](Self::from_config_in)), defaults for the rest.
    pub fn from_config(config: &TelemetryConfig) -> TelemetryOptions {
        let defaults = TelemetryOptions::default();
        TelemetryOptions {
            max_connections: config.max_connections.unwrap_or(defaults.max_connections),
            header_timeout: config
                .header_timeout_ms
                .map_or(defaults.header_timeout, Duration::from_millis),
            allowed_hosts: config.allowed_hosts.clone(),
            tls: config.tls.as_ref().map(|tls| {
                let files = TlsFiles::new(&tls.cert_file, &tls.key_file);
                match &tls.client_ca_file {
                    Some(ca) => files.client_ca_file(ca),
                    None => files,
                }
            }),
        }
    }

    fn limits(&self) -> Limits {
        let mut limits = Limits::default();
        limits.max_connections = self.max_connections;
        limits.header_timeout = self.header_timeout;
        limits
    }
}

/// A running telemetry server. Stop it with [`stop`](TelemetryServer::stop)
/// (dropping it stops it too).
#[derive(Debug)]
pub struct TelemetryServer {
    address: SocketAddr,
    /// `None` once stopped.
    server: Option<ServiceThread>,
    /// The observer served, swapped by [`observe`](TelemetryServer::observe).
    observed: Observed,
    /// Where the node's metrics are registered: they are unregistered when
    /// the server stops, so that a server can be started again on the
    /// same registry.
    registered: Option<prometheus::Registry>,
}

/// The observer the server reads, replaced when the streamers restart.
type Observed = Arc<RwLock<Observer>>;

fn current(observed: &Observed) -> Observer {
    observed
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

struct AppState {
    observed: Observed,
    metrics: prometheus::Registry,
}

impl TelemetryServer {
    /// Binds `address` (port 0: the system chooses one; read it back with
    /// [`local_addr`](TelemetryServer::local_addr)) and serves `observer`'s
    /// node with the default [`TelemetryOptions`]. The node's metrics are
    /// registered in `metrics`, next to whatever the streamers registered
    /// there.
    pub fn start(
        address: SocketAddr,
        observer: Observer,
        metrics: prometheus::Registry,
    ) -> Result<TelemetryServer, TelemetryError> {
        TelemetryServer::start_with(address, &TelemetryOptions::default(), observer, metrics)
    }

    /// [`start`](TelemetryServer::start) with `options`.
    pub fn start_with(
        address: SocketAddr,
        options: &TelemetryOptions,
        observer: Observer,
        metrics: prometheus::Registry,
    ) -> Result<TelemetryServer, TelemetryError> {
        // Read first: a bad file is an error of this call, as a bad address.
        options.check_tls()?;
        let tls = options
            .tls
            .clone()
            .map(|files| ServerTls::load("telemetry", files))
            .transpose()
            .map_err(|source| TelemetryError::Tls {
                key: "tls_cert_file",
                source,
            })?;
        let observed: Observed = Arc::new(RwLock::new(observer));
        metrics
            .register(Box::new(NodeCollector::new(Arc::clone(&observed))))
            .map_err(|source| TelemetryError::Register { source })?;
        let state = Arc::new(AppState {
            observed: Arc::clone(&observed),
            metrics: metrics.clone(),
        });
        let app = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/status", get(status_handler))
            .route("/healthz", get(healthz_handler))
            .with_state(state);
        let server = ServiceThread::start("telemetry", address, options.limits(), tls, |bound| {
            HostCheck::for_listener(bound, &options.allowed_hosts).layer(app)
        })
        .map_err(|e| {
            // Unregistered so that a later attempt can register again
            // (collectors are matched by their descriptions).
            let _ = metrics.unregister(Box::new(NodeCollector::new(Arc::clone(&observed))));
            match e {
                ServiceThreadError::Bind { address, source } => {
                    TelemetryError::Bind { address, source }
                }
                ServiceThreadError::Start(source) => TelemetryError::Start { source },
            }
        })?;
        let bound = server.local_addr();
        tracing::info!(tls = options.tls.is_some(), address = %bound, "telemetry server listening (/metrics, /status, /healthz)");
        Ok(TelemetryServer {
            address: bound,
            server: Some(server),
            observed,
            registered: Some(metrics),
        })
    }

    /// Serves `observer` from now on (the streamers were started again:
    /// a replica's new stores, a snapshot), on the same address, without
    /// a moment where the endpoints are gone.
    pub fn observe(&self, observer: Observer) {
        *self
            .observed
            .write()
            .unwrap_or_else(PoisonError::into_inner) = observer;
    }

    /// The address the server listens on (with the port the system chose
    /// when started with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving: requests in flight get a short grace period
    /// (the listener's, 2 s) to finish, then the thread ends.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
        if let Some(metrics) = self.registered.take() {
            let _ = metrics.unregister(Box::new(NodeCollector::new(Arc::clone(&self.observed))));
        }
    }
}

impl Drop for TelemetryServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn metrics_handler(State(state): State<Arc<AppState>>) -> Response {
    let families = state.metrics.gather();
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    match encoder.encode(&families, &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type())], body).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {error}\n"),
        )
            .into_response(),
    }
}

async fn status_handler(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(current(&state.observed).status()).into_response()
}

async fn healthz_handler(State(state): State<Arc<AppState>>) -> Response {
    let status = current(&state.observed).status();
    let mut body = health(&status);
    let mut code = if status.state == NodeState::Committing {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if code == StatusCode::OK
        && let Some(reason) = status.unhealthy
    {
        code = StatusCode::SERVICE_UNAVAILABLE;
        body.error = Some(reason);
    }
    (code, axum::Json(body)).into_response()
}

/// `/healthz`'s body: the state, the height, and why it is not healthy.
fn health(status: &NodeStatus) -> serde_json_value::Health {
    let halted = status
        .streamers
        .iter()
        .find(|s| s.state == StreamerState::Halted);
    serde_json_value::Health {
        state: status.state.as_str(),
        committed_height: status.committed_height,
        streamer: halted.map(|s| s.name.clone()),
        error: halted.and_then(|s| s.error.clone()),
    }
}

mod serde_json_value {
    /// The body of `GET /healthz`.
    #[derive(serde::Serialize)]
    pub(super) struct Health {
        pub(super) state: &'static str,
        pub(super) committed_height: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub(super) streamer: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub(super) error: Option<String>,
    }
}

/// The node's metrics, read from the observer at each scrape.
struct NodeCollector {
    observed: Observed,
    descs: Vec<Desc>,
}

/// Every node metric: name, help, type, labels. The names are a contract
/// (dashboards and alerts use them): see `docs/operations.md`.
const METRICS: &[(&str, &str, MetricType, &[&str])] = &[
    (
        "statestream_committed_height",
        "The last committed block height.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "statestream_halted",
        "1 once a streamer with stop-node-on-error = true failed and the node commits no more; 0 otherwise.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "statestream_commit_duration_seconds",
        "Time per committed block: the store's commit and the sync streamers' deliveries.",
        MetricType::HISTOGRAM,
        &[],
    ),
    (
        "statestream_change_log_blocks",
        "Blocks kept in the change log (above the lowest streamer cursor, and the retained window).",
        MetricType::GAUGE,
        &[],
    ),
    (
        "statestream_change_log_bytes",
        "Bytes of the change log's encoded entries.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "statestream_streamer_info",
        "Always 1; labels name each streamer's type and delivery mode.",
        MetricType::GAUGE,
        &["streamer", "type", "delivery"],
    ),
    (
        "statestream_streamer_delivered_height",
        "The last height delivered to the streamer.",
        MetricType::GAUGE,
        &["streamer"],
    ),
    (
        "statestream_streamer_flushed_height",
        "The last height the streamer flushed: its cursor, where it resumes after a restart.",
        MetricType::GAUGE,
        &["streamer"],
    ),
    (
        "statestream_streamer_lag_blocks",
        "Committed height minus delivered height.",
        MetricType::GAUGE,
        &["streamer"],
    ),
    (
        "statestream_streamer_queue_depth",
        "Async delivery: blocks waiting in the streamer's queue.",
        MetricType::GAUGE,
        &["streamer"],
    ),
    (
        "statestream_streamer_errors_total",
        "Failed delivery attempts (each retry counts).",
        MetricType::COUNTER,
        &["streamer"],
    ),
    (
        "statestream_streamer_fell_behind_total",
        "Blocks that found the streamer's queue full; it reads them from the change log later.",
        MetricType::COUNTER,
        &["streamer"],
    ),
    (
        "statestream_streamer_caught_up_blocks_total",
        "Blocks delivered from the change log rather than live.",
        MetricType::COUNTER,
        &["streamer"],
    ),
    (
        "statestream_streamer_panics_total",
        "Panics caught in the streamer's hooks (each also counts as a delivery error).",
        MetricType::COUNTER,
        &["streamer"],
    ),
    (
        "statestream_streamer_halted",
        "1 when the streamer halted the node (stop-node-on-error = true), else 0.",
        MetricType::GAUGE,
        &["streamer"],
    ),
];

/// The ingest pipeline's metrics, served when the status has its section
/// ([`NodeStatus::ingest`]): a replica fed by a source.
const INGEST_METRICS: &[(&str, &str, MetricType, &[&str])] = &[
    (
        "statestream_ingest_height",
        "The source's last height committed into the replica.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "statestream_ingest_gaps_total",
        "Height gaps seen since the pipeline started: blocks the source committed that the replica never received (refused ones included).",
        MetricType::COUNTER,
        &[],
    ),
    (
        "statestream_ingest_gaps_recorded",
        "Height gaps the replica holds (continued past), since it was created.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "statestream_ingest_replays_total",
        "Blocks the source delivered again, answered without committing or delivering them twice.",
        MetricType::COUNTER,
        &[],
    ),
];

impl NodeCollector {
    fn new(observed: Observed) -> NodeCollector {
        // The ingest metrics are described always: the observer served may
        // change to one with the pipeline's section.
        let descs = METRICS
            .iter()
            .chain(INGEST_METRICS)
            .filter_map(|(name, help, _, labels)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    labels.iter().map(|l| (*l).to_owned()).collect(),
                    HashMap::new(),
                )
                .ok()
            })
            .collect();
        NodeCollector { observed, descs }
    }
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut pair = proto::LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

/// A gauge or counter sample with labels.
fn sample(kind: MetricType, labels: Vec<proto::LabelPair>, value: f64) -> proto::Metric {
    let mut m = proto::Metric::default();
    m.set_label(labels);
    if kind == MetricType::COUNTER {
        let mut c = proto::Counter::default();
        c.set_value(value);
        m.set_counter(c);
    } else {
        let mut g = proto::Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    }
    m
}

impl Collector for NodeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let status = current(&self.observed).status();
        let halted = status.state == NodeState::Halted;
        let mut families: Vec<MetricFamily> = METRICS
            .iter()
            .map(|(name, help, kind, _)| {
                let kind = *kind;
                let metrics: Vec<proto::Metric> = match *name {
                    "statestream_committed_height" => {
                        vec![sample(kind, vec![], status.committed_height as f64)]
                    }
                    "statestream_halted" => vec![sample(kind, vec![], f64::from(u8::from(halted)))],
                    "statestream_commit_duration_seconds" => {
                        let h = &status.commit_duration;
                        let mut hist = proto::Histogram::default();
                        hist.set_sample_count(h.count);
                        hist.set_sample_sum(h.sum_seconds);
                        hist.set_bucket(
                            h.buckets
                                .iter()
                                .map(|b| {
                                    let mut bucket = proto::Bucket::default();
                                    bucket.set_upper_bound(b.le);
                                    bucket.set_cumulative_count(b.count);
                                    bucket
                                })
                                .collect(),
                        );
                        let mut m = proto::Metric::default();
                        m.set_histogram(hist);
                        vec![m]
                    }
                    "statestream_change_log_blocks" => {
                        vec![sample(kind, vec![], status.change_log.blocks as f64)]
                    }
                    "statestream_change_log_bytes" => {
                        vec![sample(kind, vec![], status.change_log.bytes as f64)]
                    }
                    _ => status
                        .streamers
                        .iter()
                        .map(|s| {
                            let value = match *name {
                                "statestream_streamer_info" => 1,
                                "statestream_streamer_delivered_height" => s.delivered_height,
                                "statestream_streamer_flushed_height" => s.flushed_height,
                                "statestream_streamer_lag_blocks" => s.lag_blocks,
                                "statestream_streamer_queue_depth" => s.queue_depth,
                                "statestream_streamer_errors_total" => s.errors,
                                "statestream_streamer_fell_behind_total" => s.fell_behind,
                                "statestream_streamer_caught_up_blocks_total" => s.caught_up,
                                "statestream_streamer_panics_total" => s.panics,
                                _ => u64::from(s.state == StreamerState::Halted),
                            };
                            let labels = if *name == "statestream_streamer_info" {
                                vec![
                                    label("streamer", &s.name),
                                    label("type", &s.type_name),
                                    label("delivery", s.delivery),
                                ]
                            } else {
                                vec![label("streamer", &s.name)]
                            };
                            sample(kind, labels, value as f64)
                        })
                        .collect(),
                };
                let mut family = MetricFamily::default();
                family.set_name((*name).to_owned());
                family.set_help((*help).to_owned());
                family.set_field_type(kind);
                family.set_metric(metrics);
                family
            })
            .collect();
        if let Some(ingest) = status.ingest() {
            for (name, help, kind, _) in INGEST_METRICS {
                let value = match *name {
                    "statestream_ingest_height" => ingest.height,
                    "statestream_ingest_gaps_total" => ingest.gaps_total,
                    "statestream_ingest_gaps_recorded" => ingest.gaps.len() as u64,
                    _ => ingest.replays_total,
                };
                let mut family = MetricFamily::default();
                family.set_name((*name).to_owned());
                family.set_help((*help).to_owned());
                family.set_field_type(*kind);
                family.set_metric(vec![sample(*kind, vec![], value as f64)]);
                families.push(family);
            }
        }
        families
    }
}
