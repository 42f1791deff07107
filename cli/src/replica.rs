//! What the replicas share (`statestream relay`, `cosmos-plugin`,
//! `ingest-files`: a store fed through `statestream::Ingest`): opening the
//! replica store, starting its streamers, and the telemetry server that
//! follows them.
//!
//! The ingest pipeline starts the streamers again when the replica gains
//! stores or is restored from a snapshot, and each start has a new
//! observer. The telemetry server is started once, on the first, then
//! pointed at each new one ([`TelemetryServer::observe`]): `/status`,
//! `/metrics` and `/healthz` never go away, and the block path (a chain's
//! ListenCommit) never waits for a server to stop and bind again.

use std::path::Path;

use anyhow::{Context, Result};
use statestream::{
    DeliveryManager, Ingest, PushQueue, Registry, TelemetryOptions, TelemetryServer,
};
use statestream_config::{AppConfig, TelemetryConfig};
use statestream_store::{KvStore, MultiStore, StoreKey, StoreOptions};
use tracing::warn;

use crate::node::STORE_PATH;

/// Opens the replica store HOME/data/store.redb (created when missing),
/// with the stores `named` added: they exist from the start, so that the
/// streamers can start before the source first writes them.
///
/// `fsync`: [`StoreOptions::fsync`]. A source that can send its blocks
/// again (a relay's upstream) lets the replica skip the fsync of each
/// block: a crash rolls it back to its last durable commit and it fetches
/// the blocks after it again, identically (they are checked against the
/// upstream's hash chains like any other).
pub(crate) fn open_store(home: &Path, named: &[String], fsync: bool) -> Result<MultiStore> {
    std::fs::create_dir_all(home.join("data"))
        .with_context(|| format!("cannot create the home directory {}", home.display()))?;
    let path = home.join(STORE_PATH);
    let options = StoreOptions {
        fsync,
        ..StoreOptions::default()
    };
    let mut store = if path.exists() {
        MultiStore::open_existing(&path, options)
    } else {
        MultiStore::open(&path, &[], options)
    }
    .with_context(|| format!("cannot open the replica store {}", path.display()))?;
    let named = named
        .iter()
        .map(|n| StoreKey::new(n))
        .collect::<Result<Vec<_>, _>>()?;
    store.add_stores(&named)?;
    Ok(store)
}

/// The replica's credentials: one registry for every start of its
/// streamers ([`start_manager`]), the one its admin API changes.
pub(crate) fn credentials(store: &MultiStore) -> Result<statestream_access::Registry> {
    statestream_access::Registry::open(store.records(statestream_access::TABLE))
        .context("cannot read the replica's credentials")
}

/// Starts the streamers of `config` on the replica's current stores, with
/// its `credentials` (a relay also passes the push queue it forwards
/// upstream): the one place a replica's delivery manager is built.
pub(crate) fn start_manager(
    store: &mut MultiStore,
    config: &AppConfig,
    registry: &Registry,
    home: &Path,
    credentials: &statestream_access::Registry,
    push: Option<&PushQueue>,
) -> statestream::Result<DeliveryManager> {
    let names: Vec<String> = store.stores().iter().map(|s| s.name().to_owned()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let specs = config.resolve(&names)?;
    let builder = DeliveryManager::builder()
        .configured(&specs, registry, home)
        .credentials(credentials.clone());
    let builder = match push {
        Some(push) => builder.push_queue(push.clone()),
        None => builder,
    };
    builder
        .shutdown_timeout(config.shutdown_timeout())
        .start(store)
}

/// `[telemetry]` of a replica: one server, on the pipeline's current
/// observer.
pub(crate) struct Telemetry {
    address: std::net::SocketAddr,
    /// `max_connections`, `header_timeout_ms`, `allowed_hosts`, TLS.
    options: TelemetryOptions,
    metrics: statestream::prometheus::Registry,
    server: Option<TelemetryServer>,
    /// The pipeline's `streamer_starts` the server shows.
    starts: u64,
}

impl Telemetry {
    /// The server `config` describes (TLS files relative to `home`),
    /// serving the metrics of `metrics`; started by
    /// [`follow`](Telemetry::follow).
    pub(crate) fn new(
        config: &TelemetryConfig,
        home: &Path,
        metrics: statestream::prometheus::Registry,
    ) -> Telemetry {
        Telemetry {
            address: config.address,
            options: TelemetryOptions::from_config_in(config, home),
            metrics,
            server: None,
            starts: 0,
        }
    }

    /// Shows the pipeline's current observer: the server is started on the
    /// first one (there is none before the replica knows a store), then
    /// pointed at each new one. Cheap when the streamers did not restart
    /// (an atomic read): called after each block.
    pub(crate) fn follow(&mut self, ingest: &Ingest) {
        let starts = ingest.status().streamer_starts();
        if starts == self.starts {
            return;
        }
        let Some(observer) = ingest.observer() else {
            return;
        };
        if let Some(server) = &self.server {
            server.observe(observer);
            self.starts = starts;
            return;
        }
        match TelemetryServer::start_with(
            self.address,
            &self.options,
            observer,
            self.metrics.clone(),
        ) {
            Ok(server) => {
                self.server = Some(server);
                self.starts = starts;
            }
            Err(e) => warn!(error = %e, address = %self.address, "telemetry server not started"),
        }
    }

    /// Stops the server (after the streamers closed: its last answers say
    /// so).
    pub(crate) fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}
