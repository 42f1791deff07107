//! The telemetry server against a real `DeliveryManager`, on a port the
//! system chooses, read with a real HTTP client and an independent parser
//! of the Prometheus text format.

#![cfg(feature = "telemetry")]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use statestream::config::AppConfig;
use statestream::store::{KvStore, MultiStore, StoreKey};
use statestream::{
    Block, BlockMeta, Delivery, DeliveryManager, Error, Registry, StreamError, Streamer,
    StreamerSetup, TelemetryOptions, TelemetryServer,
};
use statestream_test_support::wait_for;

/// How long any wait may take before the test fails; nothing asserts a
/// duration.
const PATIENCE: Duration = Duration::from_secs(60);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Status code and body of `GET path`.
fn get(server: &TelemetryServer, path: &str) -> (u16, String, String) {
    let url = format!("http://{}{path}", server.local_addr());
    let mut response = agent().get(&url).call().expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.body_mut().read_to_string().expect("body");
    (status, content_type, body)
}

fn json(server: &TelemetryServer, path: &str) -> (u16, Value) {
    let (code, content_type, body) = get(server, path);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    (code, serde_json::from_str(&body).expect("JSON body"))
}

/// Parsed samples: (name, sorted labels) -> value.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// `GET /metrics`, parsed: (name, labels) -> value; histograms by their
/// `_count` and `_sum`.
fn metrics(server: &TelemetryServer) -> Samples {
    let (code, content_type, body) = get(server, "/metrics");
    assert_eq!(code, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("the Prometheus text format");
    let mut out = BTreeMap::new();
    for sample in scrape.samples {
        let mut labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => {
                out.insert((sample.metric, labels), v);
            }
            prometheus_parse::Value::Histogram(buckets) => {
                let count = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
                out.insert((format!("{}_bucket_max", sample.metric), labels), count);
            }
            _ => {}
        }
    }
    out
}

fn value(m: &Samples, name: &str, streamer: Option<&str>) -> f64 {
    let labels: Vec<(String, String)> = streamer
        .map(|s| vec![("streamer".to_owned(), s.to_owned())])
        .unwrap_or_default();
    *m.get(&(name.to_owned(), labels))
        .unwrap_or_else(|| panic!("no {name} {streamer:?} in {m:#?}"))
}

/// Counts blocks in a metric of its own (the registration hook), and fails
/// the block at `fail_at`.
struct Counting {
    blocks: prometheus::IntCounter,
    fail_at: Option<u64>,
}

impl Streamer for Counting {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        if Some(block.height()) == self.fail_at {
            return Err(StreamError::msg("the disk is on fire"));
        }
        self.blocks.inc();
        Ok(())
    }
}

const CONFIG: &str = r#"
[store]
streamers = ["live", "fragile"]

[streamers.live]
type = "counting"
keys = ["*"]

[streamers.fragile]
type = "counting"
keys = ["bank"]
delivery = "sync"
fail_at = 7

[telemetry]
address = "127.0.0.1:0"
"#;

fn registry() -> Registry {
    let mut registry = Registry::new();
    let metrics = registry.metrics().clone();
    registry.register("counting", move |ctx, options| {
        #[derive(serde::Deserialize)]
        struct Options {
            fail_at: Option<u64>,
        }
        let options: Options = options.parse()?;
        let blocks = prometheus::IntCounter::with_opts(
            prometheus::Opts::new("counting_blocks_total", "Blocks a counting streamer saw.")
                .const_label("streamer", ctx.name),
        )?;
        metrics.register(Box::new(blocks.clone()))?;
        Ok(Box::new(Counting {
            blocks,
            fail_at: options.fail_at,
        }))
    });
    registry
}

#[test]
fn telemetry_metrics_status_and_health_until_a_halt() {
    let config = AppConfig::parse(CONFIG, Path::new("app.toml")).expect("config");
    let (bank, acc) = (
        StoreKey::new("bank").expect("name"),
        StoreKey::new("acc").expect("name"),
    );
    let mut store = MultiStore::in_memory(&[bank.clone(), acc.clone()]).expect("store");
    let specs = config.resolve(&["bank", "acc"]).expect("resolve");
    let registry = registry();
    let home = tempfile::tempdir().expect("home");
    let mut manager = DeliveryManager::builder()
        .configured(&specs, &registry, home.path())
        .start(&mut store)
        .expect("start");
    let address = config.telemetry().expect("telemetry is on").address;
    let server = TelemetryServer::start(address, manager.observer(), registry.metrics().clone())
        .expect("server");
    assert_ne!(server.local_addr().port(), 0, "the bound port is read back");

    for h in 1..=6u64 {
        store.set(&bank, b"k", &h.to_be_bytes()).expect("set");
        store.set(&acc, &h.to_be_bytes(), b"v").expect("set");
        manager
            .commit(&mut store, BlockMeta::default())
            .expect("commit");
    }
    // A sync streamer is flushed by commits (at most every 50 ms); the
    // async one by its own thread once idle.
    wait_for("the async streamer to flush block 6", || {
        manager
            .stats()
            .iter()
            .all(|s| s.delivered_height == 6 && (s.name != "live" || s.durable_height == 6))
    });
    let fragile_flushed = manager.stats()[1].durable_height as f64;

    let m = metrics(&server);
    assert_eq!(value(&m, "statestream_committed_height", None), 6.0);
    assert_eq!(value(&m, "statestream_halted", None), 0.0);
    assert_eq!(
        value(&m, "statestream_commit_duration_seconds_count", None),
        6.0
    );
    assert_eq!(
        value(&m, "statestream_commit_duration_seconds_bucket_max", None),
        6.0
    );
    assert!(value(&m, "statestream_commit_duration_seconds_sum", None) > 0.0);
    assert!(value(&m, "statestream_change_log_blocks", None) >= 1.0);
    assert!(value(&m, "statestream_change_log_bytes", None) > 0.0);
    for s in ["live", "fragile"] {
        assert_eq!(
            value(&m, "statestream_streamer_delivered_height", Some(s)),
            6.0
        );
        let flushed = if s == "live" { 6.0 } else { fragile_flushed };
        assert_eq!(
            value(&m, "statestream_streamer_flushed_height", Some(s)),
            flushed
        );
        assert_eq!(value(&m, "statestream_streamer_lag_blocks", Some(s)), 0.0);
        assert_eq!(value(&m, "statestream_streamer_queue_depth", Some(s)), 0.0);
        assert_eq!(value(&m, "statestream_streamer_errors_total", Some(s)), 0.0);
        assert_eq!(
            value(&m, "statestream_streamer_fell_behind_total", Some(s)),
            0.0
        );
        assert_eq!(value(&m, "statestream_streamer_halted", Some(s)), 0.0);
        // The streamer's own metric, registered through the hook.
        assert_eq!(value(&m, "counting_blocks_total", Some(s)), 6.0);
    }
    let info = m
        .keys()
        .filter(|(name, _)| name == "statestream_streamer_info")
        .map(|(_, labels)| labels.clone())
        .collect::<Vec<_>>();
    assert!(info.contains(&vec![
        ("delivery".to_owned(), "sync".to_owned()),
        ("streamer".to_owned(), "fragile".to_owned()),
        ("type".to_owned(), "counting".to_owned()),
    ]));

    let (code, status) = json(&server, "/status");
    assert_eq!(code, 200);
    assert_eq!(status["state"], "committing");
    assert_eq!(status["committed_height"], 6);
    assert_eq!(status["commit_duration"]["count"], 6);
    // A node has no source: no ingest section.
    assert!(status.get("ingest").is_none(), "{status}");
    let streamers = status["streamers"].as_array().expect("streamers");
    assert_eq!(streamers.len(), 2);
    assert_eq!(streamers[0]["name"], "live");
    assert_eq!(streamers[0]["type"], "counting");
    assert_eq!(streamers[0]["delivery"], "async");
    assert_eq!(streamers[0]["state"], "running");
    assert_eq!(streamers[0]["delivered_height"], 6);
    assert_eq!(streamers[1]["delivery"], "sync");
    assert_eq!(streamers[1]["error"], Value::Null);

    let (code, health) = json(&server, "/healthz");
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["state"], "committing");

    // Block 7 fails the sync streamer, which stops the node.
    manager
        .commit(&mut store, BlockMeta::default())
        .expect_err("block 7 halts");
    let (code, health) = json(&server, "/healthz");
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["state"], "halted");
    assert_eq!(health["streamer"], "fragile");
    assert!(
        health["error"]
            .as_str()
            .is_some_and(|e| e.contains("the disk is on fire")),
        "{health}"
    );
    let (_, status) = json(&server, "/status");
    assert_eq!(status["state"], "halted");
    assert_eq!(status["streamers"][1]["state"], "halted");
    assert_eq!(status["streamers"][1]["halted_at"], 7);
    assert_eq!(status["streamers"][1]["delivered_height"], 6);
    let m = metrics(&server);
    assert_eq!(value(&m, "statestream_halted", None), 1.0);
    assert_eq!(
        value(&m, "statestream_streamer_halted", Some("fragile")),
        1.0
    );
    assert_eq!(
        value(&m, "statestream_streamer_errors_total", Some("fragile")),
        1.0
    );
    assert_eq!(value(&m, "statestream_committed_height", None), 7.0);
    assert_eq!(
        value(&m, "statestream_streamer_lag_blocks", Some("fragile")),
        1.0
    );

    let closed = manager.close(&mut store);
    assert!(
        matches!(closed, Err(Error::Halted { ref streamer, height: 7, .. }) if streamer == "fragile"),
        "{closed:?}"
    );
    // The server outlives the manager: it reports the last state.
    let (code, health) = json(&server, "/healthz");
    assert_eq!(code, 503, "{health}");
    server.stop();
}

#[test]
fn telemetry_stopped_manager_is_unhealthy_and_unknown_paths_are_404() {
    let bank = StoreKey::new("bank").expect("name");
    let mut store = MultiStore::in_memory(std::slice::from_ref(&bank)).expect("store");
    let manager = DeliveryManager::builder()
        .start(&mut store)
        .expect("manager");
    let server = TelemetryServer::start(
        "127.0.0.1:0".parse().expect("address"),
        manager.observer(),
        prometheus::Registry::new(),
    )
    .expect("server");
    let (code, _) = json(&server, "/healthz");
    assert_eq!(code, 200);
    let (code, _, _) = get(&server, "/nothing");
    assert_eq!(code, 404);
    manager.close(&mut store).expect("close");
    let (code, health) = json(&server, "/healthz");
    assert_eq!(code, 503);
    assert_eq!(health["state"], "stopped");

    // A second server on the same address is a clear error, not a panic.
    let taken = server.local_addr();
    let err = TelemetryServer::start(
        taken,
        DeliveryManager::builder()
            .start(&mut store)
            .expect("manager")
            .observer(),
        prometheus::Registry::new(),
    )
    .expect_err("the address is taken");
    assert!(err.to_string().contains(&taken.to_string()), "{err}");
    server.stop();
}

/// Sections of the status: under their name or at the top level, with a
/// health verdict; the server follows a new observer (streamers started
/// again) on the same address, with the sections of the new one.
#[test]
fn telemetry_sections_with_health_and_a_new_observer_on_the_same_server() {
    use statestream::StatusSection;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let bank = StoreKey::new("bank").expect("name");
    let mut store = MultiStore::in_memory(std::slice::from_ref(&bank)).expect("store");
    let manager = DeliveryManager::builder()
        .start(&mut store)
        .expect("manager");
    let sick = Arc::new(AtomicBool::new(false));
    let verdict = Arc::clone(&sick);
    let section = StatusSection::new(Arc::new(
        || serde_json::json!({ "upstream": "http://a", "lag_blocks": 3, "state": "not mine" }),
    ))
    .with_health(Arc::new(move || {
        verdict
            .load(Ordering::SeqCst)
            .then(|| "not ready: 3 blocks behind".to_owned())
    }))
    .top_level();
    let observer = manager.observer();
    observer.add_status_section("relay", section.clone());
    observer.add_section("extra", Arc::new(|| serde_json::json!({ "n": 1 })));
    let server = TelemetryServer::start(
        "127.0.0.1:0".parse().expect("address"),
        observer,
        prometheus::Registry::new(),
    )
    .expect("server");
    let (code, status) = json(&server, "/status");
    assert_eq!(code, 200);
    assert_eq!(status["upstream"], "http://a", "{status}");
    assert_eq!(status["lag_blocks"], 3, "{status}");
    assert_eq!(status["extra"]["n"], 1, "{status}");
    assert!(status.get("relay").is_none(), "{status}");
    // A section cannot take the status's own fields.
    assert_eq!(status["state"], "committing", "{status}");
    let (code, _) = json(&server, "/healthz");
    assert_eq!(code, 200);
    sick.store(true, Ordering::SeqCst);
    let (code, health) = json(&server, "/healthz");
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["error"], "not ready: 3 blocks behind", "{health}");
    sick.store(false, Ordering::SeqCst);

    // The streamers are started again: the same server shows the new
    // manager's observer (and only its sections).
    let address = server.local_addr();
    manager.close(&mut store).expect("close");
    let (code, health) = json(&server, "/healthz");
    assert_eq!(code, 503, "{health}");
    let mut manager = DeliveryManager::builder()
        .start(&mut store)
        .expect("manager again");
    let observer = manager.observer();
    observer.add_status_section("relay", section);
    server.observe(observer);
    manager
        .commit(&mut store, BlockMeta::default())
        .expect("commit");
    assert_eq!(server.local_addr(), address);
    let (code, status) = json(&server, "/status");
    assert_eq!(code, 200);
    assert_eq!(status["state"], "committing", "{status}");
    assert_eq!(status["committed_height"], 1, "{status}");
    assert_eq!(status["upstream"], "http://a", "{status}");
    assert!(status.get("extra").is_none(), "{status}");
    let (code, _) = json(&server, "/healthz");
    assert_eq!(code, 200);
    let m = metrics(&server);
    assert_eq!(value(&m, "statestream_committed_height", None), 1.0);
    server.stop();
    manager.close(&mut store).expect("close");
}

/// The metric families `/metrics` declares (`# TYPE` lines).
fn exported_families(server: &TelemetryServer) -> Vec<String> {
    let (_, _, body) = get(server, "/metrics");
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Every metric name (`statestream_*`, `serve_*`) in `text`.
fn names_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in text.match_indices(['s']) {
        let tail = &text[at..];
        if !(tail.starts_with("statestream_") || tail.starts_with("serve_")) {
            continue;
        }
        // The start of a word: not the `serve_` of `observe_`.
        if text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        // A prefix alone (`statestream_`) names no metric.
        if !tail[..end].ends_with('_') {
            names.push(tail[..end].to_owned());
        }
    }
    names
}

/// The family a sample name belongs to (a histogram's series end in
/// `_bucket`, `_sum`, `_count`).
fn family_of<'a>(name: &'a str, exported: &[String]) -> Option<&'a str> {
    [name]
        .into_iter()
        .chain(
            ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s)),
        )
        .find(|n| exported.iter().any(|e| e == n))
}

#[cfg(feature = "serve")]
#[test]
fn telemetry_docs_list_every_metric_and_the_dashboard_and_alerts_use_only_them() {
    // A node with a `serve` streamer of the built-in type: its metrics are
    // on `/metrics` as on a real node's.
    let config = AppConfig::parse(
        "[store]\nstreamers = [\"serve\"]\n\n[streamers.serve]\ntype = \"serve\"\n\
         keys = [\"*\"]\nhttp_address = \"127.0.0.1:0\"\nmax_subscribers = 7\n",
        Path::new("app.toml"),
    )
    .expect("config");
    let bank = StoreKey::new("bank").expect("name");
    let mut store = MultiStore::in_memory(std::slice::from_ref(&bank)).expect("store");
    let specs = config.resolve(&["bank"]).expect("resolve");
    let registry = Registry::with_builtins();
    let home = tempfile::tempdir().expect("home");
    let mut manager = DeliveryManager::builder()
        .configured(&specs, &registry, home.path())
        .start(&mut store)
        .expect("start");
    manager
        .commit(&mut store, BlockMeta::default())
        .expect("commit");
    // With an ingest pipeline's counters, as a replica's server has them
    // (their rows are in the document too).
    let observer = manager.observer();
    observer.add_status_section(
        statestream::INGEST_SECTION,
        std::sync::Arc::new(statestream::IngestStatus::default()).section(),
    );
    let server = TelemetryServer::start(
        "127.0.0.1:0".parse().expect("address"),
        observer,
        registry.metrics().clone(),
    )
    .expect("server");
    let exported = exported_families(&server);
    assert!(exported.len() >= 19, "{exported:?}");
    assert!(
        exported
            .iter()
            .any(|e| e == "statestream_ingest_gaps_total"),
        "{exported:?}"
    );
    for name in [
        "serve_subscribers",
        "serve_messages_sent_total",
        "serve_bytes_sent_total",
        "serve_slow_disconnects_total",
        "serve_max_subscribers",
    ] {
        assert!(exported.iter().any(|e| e == name), "{name}: {exported:?}");
    }
    let m = metrics(&server);
    assert_eq!(value(&m, "serve_max_subscribers", Some("serve")), 7.0);

    // Every exported metric has its row in the tables of
    // docs/operations.md, and every name the document uses is exported.
    let operations = include_str!("../../docs/operations.md");
    for name in &exported {
        assert!(
            operations.contains(&format!("| `{name}` |")),
            "docs/operations.md does not describe {name}"
        );
    }
    // Families with a child per credential or per subscription are
    // exported once one exists (their own tests check them:
    // `credential_metrics_are_labelled_by_credential`, the subscriptions
    // crate's engine tests); this node has neither.
    let per_consumer = ["serve_credential_", "statestream_subscription_"];
    for name in names_in(operations) {
        if per_consumer.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        assert!(
            family_of(&name, &exported).is_some(),
            "docs/operations.md names {name}, which /metrics does not export"
        );
    }
    // The alert rules there (the YAML block).
    let alerts: Vec<&str> = operations
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    let alerted: Vec<String> = alerts.iter().flat_map(|e| names_in(e)).collect();
    for name in [
        "statestream_halted",
        "statestream_streamer_lag_blocks",
        "serve_slow_disconnects_total",
        "serve_subscribers",
        "serve_max_subscribers",
    ] {
        assert!(alerted.iter().any(|a| a == name), "no alert on {name}");
    }

    let dashboard: Value =
        serde_json::from_str(include_str!("../../docs/grafana/statestream.json"))
            .expect("the dashboard is valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 5);
    let mut used = Vec::new();
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            used.extend(names_in(target["expr"].as_str().expect("expr")));
        }
    }
    for name in [
        "statestream_committed_height",
        "statestream_commit_duration_seconds",
        "statestream_streamer_lag_blocks",
        "statestream_streamer_queue_depth",
        "statestream_streamer_errors_total",
        "serve_subscribers",
        "serve_messages_sent_total",
        "serve_bytes_sent_total",
        "serve_slow_disconnects_total",
    ] {
        assert!(
            used.iter().any(|u| u.starts_with(name)),
            "no panel shows {name}"
        );
    }
    for name in &used {
        assert!(
            family_of(name, &exported).is_some(),
            "the dashboard uses {name}, which /metrics does not export"
        );
    }
    manager.close(&mut store).expect("close");
    server.stop();
}

/// Heights recorded by a streamer, shared with the test.
type Heights = std::sync::Arc<std::sync::Mutex<Vec<u64>>>;

/// Panics in `on_block` at height `at`, `times` times; records every
/// delivered height and every `on_start`.
struct Panicky {
    at: u64,
    times: u32,
    delivered: Heights,
    starts: Heights,
}

impl Streamer for Panicky {
    fn on_start(&mut self, next: u64) -> Result<(), StreamError> {
        self.starts.lock().expect("lock").push(next);
        Ok(())
    }
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        if block.height() == self.at && self.times > 0 {
            self.times -= 1;
            panic!("the streamer's invariant broke at {}", self.at);
        }
        self.delivered.lock().expect("lock").push(block.height());
        Ok(())
    }
}

/// A manager with one `Panicky` streamer `p` (panicking at block 3) and a telemetry server.
fn panicky(
    delivery: Delivery,
    stop_node_on_error: bool,
    times: u32,
) -> (
    MultiStore,
    DeliveryManager,
    TelemetryServer,
    Heights,
    Heights,
) {
    let bank = StoreKey::new("bank").expect("name");
    let mut store = MultiStore::in_memory(std::slice::from_ref(&bank)).expect("store");
    let delivered = std::sync::Arc::default();
    let starts = std::sync::Arc::default();
    let streamer = Panicky {
        at: 3,
        times,
        delivered: std::sync::Arc::clone(&delivered),
        starts: std::sync::Arc::clone(&starts),
    };
    let setup = StreamerSetup::new("p", &[bank])
        .delivery(delivery)
        .stop_node_on_error(stop_node_on_error);
    let manager = DeliveryManager::builder()
        .streamer(setup, Box::new(streamer))
        .start(&mut store)
        .expect("manager");
    let server = TelemetryServer::start(
        "127.0.0.1:0".parse().expect("address"),
        manager.observer(),
        prometheus::Registry::new(),
    )
    .expect("server");
    (store, manager, server, delivered, starts)
}

fn commit_blocks(
    manager: &mut DeliveryManager,
    store: &mut MultiStore,
    n: u64,
) -> Result<(), Error> {
    let bank = StoreKey::new("bank").expect("name");
    for i in 0..n {
        store.set(&bank, b"k", &i.to_be_bytes()).expect("set");
        manager.commit(store, BlockMeta::default())?;
    }
    Ok(())
}

#[test]
fn telemetry_panicking_streamer_halts_the_node_when_stop_node_on_error() {
    let (mut store, mut manager, server, delivered, _) = panicky(Delivery::Async, true, u32::MAX);
    commit_blocks(&mut manager, &mut store, 5).expect("the panic is on the worker's thread");
    // The worker's panic is the streamer's error: the node halts.
    let deadline = Instant::now() + PATIENCE;
    let err = loop {
        match manager.commit(&mut store, BlockMeta::default()) {
            Err(e) => break e,
            Ok(_) => assert!(
                Instant::now() < deadline,
                "the panicking streamer never halted the node"
            ),
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        matches!(&err, Error::Halted { streamer, height: 3, message }
            if streamer == "p" && message.contains("panicked in on_block")
                && message.contains("invariant broke at 3")),
        "{err:?}"
    );
    assert_eq!(*delivered.lock().expect("lock"), vec![1, 2]);
    let (code, health) = json(&server, "/healthz");
    assert_eq!(code, 503, "{health}");
    let (_, status) = json(&server, "/status");
    assert_eq!(status["streamers"][0]["state"], "halted");
    assert_eq!(status["streamers"][0]["halted_at"], 3);
    assert_eq!(status["streamers"][0]["panics"], 1);
    let m = metrics(&server);
    assert_eq!(
        value(&m, "statestream_streamer_panics_total", Some("p")),
        1.0
    );
    assert_eq!(value(&m, "statestream_streamer_halted", Some("p")), 1.0);
    let closed = manager.close(&mut store);
    assert!(
        matches!(closed, Err(Error::Halted { height: 3, .. })),
        "{closed:?}"
    );
    assert!(store.cursor("p").expect("cursor").is_some_and(|c| c <= 2));
    server.stop();
}

#[test]
fn telemetry_panicking_streamer_is_restarted_from_its_cursor_otherwise() {
    let (mut store, mut manager, server, delivered, starts) = panicky(Delivery::Async, false, 2);
    commit_blocks(&mut manager, &mut store, 6).expect("no halt with stop-node-on-error = false");
    let deadline = Instant::now() + PATIENCE;
    while manager.stats()[0].delivered_height < 6 {
        assert!(
            Instant::now() < deadline,
            "the streamer was not restarted to deliver block 6: {:?}",
            manager.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Restarted twice, each time from its cursor (at most block 3).
    let starts = starts.lock().expect("lock").clone();
    assert_eq!(starts.len(), 3, "{starts:?}");
    assert!(starts[1..].iter().all(|&next| next <= 3), "{starts:?}");
    // In order and nothing skipped: blocks after the cursor may come again.
    let delivered = delivered.lock().expect("lock").clone();
    let mut seen: Vec<u64> = delivered.clone();
    seen.dedup();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (1..=6).collect::<Vec<_>>(), "{delivered:?}");
    let (_, status) = json(&server, "/status");
    assert_eq!(status["state"], "committing");
    assert_eq!(status["streamers"][0]["state"], "running");
    assert_eq!(status["streamers"][0]["panics"], 2);
    assert!(
        status["streamers"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("panicked in on_block")),
        "{status}"
    );
    let m = metrics(&server);
    assert_eq!(
        value(&m, "statestream_streamer_panics_total", Some("p")),
        2.0
    );
    assert_eq!(
        value(&m, "statestream_streamer_errors_total", Some("p")),
        2.0
    );
    manager.close(&mut store).expect("a clean close");
    assert_eq!(store.cursor("p").expect("cursor"), Some(6));
    server.stop();
}

#[test]
fn telemetry_panicking_sync_streamer_fails_its_commit_or_is_restarted() {
    // stop-node-on-error = true: the commit of block 3 reports the halt.
    let (mut store, mut manager, server, delivered, _) = panicky(Delivery::Sync, true, 1);
    commit_blocks(&mut manager, &mut store, 2).expect("blocks 1 and 2");
    let err = commit_blocks(&mut manager, &mut store, 1).expect_err("block 3 halts");
    assert!(
        matches!(&err, Error::Halted { height: 3, message, .. } if message.contains("panicked in on_block")),
        "{err:?}"
    );
    assert_eq!(*delivered.lock().expect("lock"), vec![1, 2]);
    let (_, status) = json(&server, "/status");
    assert_eq!(status["streamers"][0]["panics"], 1);
    assert!(manager.close(&mut store).is_err());
    server.stop();

    // false: block 3's commit succeeds, the next one restarts the streamer
    // from its cursor and delivers 3 and 4.
    let (mut store, mut manager, server, delivered, starts) = panicky(Delivery::Sync, false, 1);
    commit_blocks(&mut manager, &mut store, 4).expect("no halt");
    let seen = delivered.lock().expect("lock").clone();
    assert_eq!(seen.last(), Some(&4), "{seen:?}");
    assert!(seen.contains(&3), "{seen:?}");
    assert_eq!(starts.lock().expect("lock").len(), 2);
    let m = metrics(&server);
    assert_eq!(
        value(&m, "statestream_streamer_panics_total", Some("p")),
        1.0
    );
    manager.close(&mut store).expect("a clean close");
    assert_eq!(store.cursor("p").expect("cursor"), Some(4));
    server.stop();
}

/// One raw `GET /healthz` naming `host`: the status and the body. Raw, so
/// that the `Host` header is the test's, not the client's.
fn get_as(address: std::net::SocketAddr, host: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("reading the response for host {host}: {e}"));
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

#[test]
fn telemetry_foreign_host_is_421_and_allowed_hosts_adds_names() {
    let config = AppConfig::parse(
        "[telemetry]\naddress = \"127.0.0.1:0\"\nallowed_hosts = [\"metrics.internal\"]\n",
        Path::new("app.toml"),
    )
    .expect("config");
    let options = TelemetryOptions::from_config(config.telemetry().expect("telemetry"));
    let bank = StoreKey::new("bank").expect("name");
    let mut store = MultiStore::in_memory(std::slice::from_ref(&bank)).expect("store");
    let manager = DeliveryManager::builder()
        .start(&mut store)
        .expect("manager");
    let server = TelemetryServer::start_with(
        "127.0.0.1:0".parse().expect("address"),
        &options,
        manager.observer(),
        prometheus::Registry::new(),
    )
    .expect("server");
    let address = server.local_addr();
    let port = address.port();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "metrics.internal".to_owned(),
    ] {
        let (status, body) = get_as(address, &host);
        assert_eq!(status, 200, "{host}: {body}");
    }
    for host in [
        format!("rebound.attacker.example:{port}"),
        "metrics.internal.attacker.example".to_owned(),
    ] {
        let (status, body) = get_as(address, &host);
        assert_eq!(status, 421, "{host}: {body}");
        assert_eq!(body.lines().count(), 1, "{body}");
        let error: Value = serde_json::from_str(&body).expect("a JSON body");
        assert!(
            error["error"].as_str().is_some_and(|e| e.contains(&host)),
            "{body}"
        );
    }
    // Without allowed_hosts, the added name is foreign too.
    let strict = TelemetryServer::start(
        "127.0.0.1:0".parse().expect("address"),
        manager.observer(),
        prometheus::Registry::new(),
    )
    .expect("server");
    assert_eq!(get_as(strict.local_addr(), "metrics.internal").0, 421);
    strict.stop();
    server.stop();
    manager.close(&mut store).expect("close");
}
