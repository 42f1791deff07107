//! `subscriptions_changes_per_s`: 100 subscriptions, each with its own
//! receiver (a local keep-alive HTTP/1.1 server answering 200 at once),
//! `batch = "block"`, blocks of 1,000 changes: changes delivered per
//! second, measured twice:
//! - catch-up: the subscriptions are paused while the blocks commit, then
//!   resumed; from the resume until every receiver has every block (the
//!   delivery alone, from the change log);
//! - live: the blocks commit while the subscriptions deliver; from the
//!   first commit until every receiver has every block (the commits share
//!   the machine with the delivery).
//!
//! Next to them, the same 100 receivers fed the same bodies by 100 plain
//! clients (ureq, one thread each). The ratio subscriptions/plain is what
//! the engine costs (envelopes, signatures, cursors); the target is at
//! least 0.7.
//!
//! Then the memory of 1,000 idle subscriptions (their filter matches no
//! change) while 10,000 blocks commit: the resident set size after every
//! 2,000 blocks, which should stay flat.
//!
//! `cargo bench -p statestream-subscriptions --bench subscriptions`
//! (environment: `SUBS_BENCH_BLOCKS`, default 20; `SUBS_BENCH_IDLE_BLOCKS`,
//! default 10000).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use statestream::store::{KvStore, MultiStore, StoreKey, StoreOptions};
use statestream::{BlockMeta, DeliveryManager};
use statestream_subscriptions::{
    Caller, Engine, EngineOptions, SUBSCRIPTIONS_TABLE, SubscriptionSpec,
};

const SUBSCRIPTIONS: usize = 100;
const CHANGES: usize = 1000;
const IDLE: usize = 1000;

/// A receiver: counts requests; keeps the bodies when asked.
struct Receiver {
    url: String,
    requests: Arc<AtomicU64>,
    bodies: Option<Arc<Mutex<Vec<Vec<u8>>>>>,
}

fn receiver(keep: bool) -> Receiver {
    let requests = Arc::new(AtomicU64::new(0));
    let bodies = keep.then(|| Arc::new(Mutex::new(Vec::new())));
    let url = {
        let requests = Arc::clone(&requests);
        let bodies = bodies.clone();
        statestream_test_support::http_sink::start(move |body| {
            requests.fetch_add(1, Ordering::Relaxed);
            if let Some(b) = &bodies {
                b.lock().expect("lock").push(body);
            }
        })
    };
    Receiver {
        url,
        requests,
        bodies,
    }
}

/// Resident set size, in MiB.
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spec(v: serde_json::Value) -> SubscriptionSpec {
    SubscriptionSpec::from_json(v.to_string().as_bytes()).expect("spec")
}

fn main() {
    // `cargo bench` passes `--bench`; a test run passes nothing to run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let blocks = env("SUBS_BENCH_BLOCKS", 20);
    let idle_blocks = env("SUBS_BENCH_IDLE_BLOCKS", 10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let bank = StoreKey::new("bank").expect("name");
    let idle = StoreKey::new("idle").expect("name");
    let options = StoreOptions {
        fsync: false,
        ..StoreOptions::default()
    };
    let mut store = MultiStore::open(
        &dir.path().join("bench.redb"),
        &[bank.clone(), idle.clone()],
        options,
    )
    .expect("store");
    let mut manager = DeliveryManager::builder().start(&mut store).expect("start");
    let engine = Engine::start(
        store.records(SUBSCRIPTIONS_TABLE),
        manager.runtime(),
        EngineOptions::default(),
    )
    .expect("engine");

    let receivers: Vec<Receiver> = (0..SUBSCRIPTIONS).map(|i| receiver(i == 0)).collect();
    let ids: Vec<String> = receivers
        .iter()
        .map(|r| {
            engine
                .create(
                    Caller::Admin,
                    spec(json!({
                        "endpoint": {"url": format!("{}/hooks", r.url)},
                        "batch": "block",
                        "filter": {"stores": ["bank"]},
                    })),
                )
                .expect("create")
                .id
        })
        .collect();
    let commit_blocks = |store: &mut MultiStore, manager: &mut DeliveryManager, from: u64| {
        for b in from..from + blocks {
            for i in 0..CHANGES {
                store
                    .set(
                        &bank,
                        format!("balance/u{i:04}").as_bytes(),
                        format!(
                            "{{\"amount\": {}, \"denom\": \"stake\"}}",
                            b * 1000 + i as u64
                        )
                        .as_bytes(),
                    )
                    .expect("set");
            }
            manager.commit(store, BlockMeta::default()).expect("commit");
        }
    };
    // Each receiver has every block once it counted that many requests (an
    // atomic read: polling the engine would take CPU from the delivery).
    let wait_delivered = |requests_each: u64| {
        let deadline = Instant::now() + Duration::from_secs(600);
        while receivers
            .iter()
            .any(|r| r.requests.load(Ordering::Relaxed) < requests_each)
        {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {requests_each} requests on every receiver"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let delivered = (SUBSCRIPTIONS as u64 * blocks * CHANGES as u64) as f64;

    // Catch-up: paused while the blocks commit, then resumed.
    for id in &ids {
        engine.pause(Caller::Admin, id).expect("pause");
    }
    commit_blocks(&mut store, &mut manager, 0);
    let started = Instant::now();
    for id in &ids {
        engine.resume(Caller::Admin, id).expect("resume");
    }
    wait_delivered(blocks);
    let catch_up_rate = delivered / started.elapsed().as_secs_f64();

    // Live: the blocks commit while the subscriptions deliver.
    let started = Instant::now();
    commit_blocks(&mut store, &mut manager, blocks);
    let committed = started.elapsed();
    wait_delivered(2 * blocks);
    let elapsed = started.elapsed();
    let top = store.version();
    for id in &ids {
        let cursor = engine.get(Caller::Admin, id).map_or(0, |v| v.cursor);
        assert!(cursor + 1 >= top, "{id}: cursor {cursor}, top {top}");
    }
    let subs_rate = delivered / elapsed.as_secs_f64();
    let requests: u64 = receivers
        .iter()
        .map(|r| r.requests.load(Ordering::Relaxed))
        .sum();
    assert_eq!(
        requests,
        SUBSCRIPTIONS as u64 * 2 * blocks,
        "one request per block each"
    );
    // The same bodies, sent by plain clients.
    let bodies = receivers[0]
        .bodies
        .as_ref()
        .map(|b| b.lock().expect("lock")[..blocks as usize].to_vec())
        .unwrap_or_default();
    let bodies = Arc::new(bodies);
    let started = Instant::now();
    let threads: Vec<_> = receivers
        .iter()
        .map(|r| {
            let url = format!("{}/hooks", r.url);
            let bodies = Arc::clone(&bodies);
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                for body in bodies.iter() {
                    agent
                        .post(&url)
                        .header("content-type", "application/json")
                        .send(body.as_slice())
                        .expect("plain request");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("plain client");
    }
    let plain_rate = delivered / started.elapsed().as_secs_f64();
    println!(
        "subscriptions_changes_per_s ({SUBSCRIPTIONS} subscriptions, {blocks} blocks of \
         {CHANGES} changes, batch = \"block\"): plain requests of the same bodies \
         {plain_rate:.0} changes/s; catch-up {catch_up_rate:.0} changes/s, ratio {:.2}; live \
         {subs_rate:.0} changes/s, ratio {:.2} (the commits took {:.0} ms of {:.0} ms) \
         (target >= 0.7)",
        catch_up_rate / plain_rate,
        subs_rate / plain_rate,
        committed.as_secs_f64() * 1000.0,
        elapsed.as_secs_f64() * 1000.0,
    );
    for id in &ids {
        engine.delete(Caller::Admin, id).expect("delete");
    }
    let sink = receiver(false);
    for _ in 0..IDLE {
        engine
            .create(
                Caller::Admin,
                spec(json!({
                    "endpoint": {"url": format!("{}/hooks", sink.url)},
                    "filter": {"stores": ["bank"], "prefixes": ["never/"]},
                })),
            )
            .expect("create idle");
    }
    let mut samples = vec![(0u64, rss_mib())];
    for b in 1..=idle_blocks {
        store
            .set(&idle, b"tick", b.to_string().as_bytes())
            .expect("set");
        manager
            .commit(&mut store, BlockMeta::default())
            .expect("commit");
        if b % 2000 == 0 {
            samples.push((b, rss_mib()));
        }
    }
    println!(
        "idle subscriptions ({IDLE}) memory, RSS MiB after N blocks: {}",
        samples
            .iter()
            .map(|(b, m)| format!("{b}: {m:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    engine.close();
    manager.close(&mut store).expect("close");
}
