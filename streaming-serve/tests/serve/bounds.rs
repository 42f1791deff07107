//! Bounded work per request: filter sizes, one-shot snapshots.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use statestream::BlockMeta;
use statestream_store::{KvStore, StoreKey};

use statestream_serve::proto::datastream::{DataRequest, data_service_client::DataServiceClient};
use statestream_serve::proto::v1::{self, subscribe_request::Start};

use crate::util::*;

const HTTP: &str = "http_address = \"127.0.0.1:0\"\n";

fn prefixes(n: usize) -> Vec<v1::KeyPrefix> {
    (0..n)
        .map(|i| v1::KeyPrefix {
            store: STORES[i % STORES.len()].to_string(),
            prefix: format!("zz{i:05}").into_bytes(),
        })
        .collect()
}

fn filtered(start: Start, prefixes: Vec<v1::KeyPrefix>) -> v1::SubscribeRequest {
    v1::SubscribeRequest {
        filter: Some(v1::Filter {
            stores: Vec::new(),
            prefixes,
        }),
        start: Some(start),
    }
}

fn assert_names_the_limit(what: &str, status: &tonic::Status) {
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{what}: {status:?}"
    );
    assert!(
        status.message().contains("max_filter_entries"),
        "{what}: {}",
        status.message()
    );
}

#[test]
fn a_filter_over_max_filter_entries_is_refused_on_every_front_end() {
    let mut node = Node::in_memory(&format!("{HTTP}max_filter_entries = 3"));
    node.commit();
    let rt = runtime();
    let address = node.address();
    rt.block_on(async {
        let mut c = client(&address).await;
        let err = c
            .subscribe(filtered(Start::Live(v1::StartLive {}), prefixes(4)))
            .await
            .unwrap_err();
        assert_names_the_limit("Subscribe", &err);
        let snapshot = c
            .snapshot(v1::SnapshotRequest {
                filter: Some(v1::Filter {
                    stores: vec!["a".into()],
                    prefixes: prefixes(3),
                }),
            })
            .await;
        let err = match snapshot {
            Err(e) => e,
            Ok(s) => s
                .into_inner()
                .message()
                .await
                .expect_err("Snapshot answered an oversized filter"),
        };
        assert_names_the_limit("Snapshot", &err);
        // At the limit is fine.
        c.subscribe(filtered(Start::Live(v1::StartLive {}), prefixes(3)))
            .await
            .expect("a filter at the limit is accepted");

        let mut d = DataServiceClient::connect(address.clone()).await.unwrap();
        let four = DataRequest {
            keys: vec!["a".into(), "b/k0*".into(), "c/k001".into(), "c/k002".into()],
        };
        let err = d.sync(four.clone()).await.unwrap_err();
        assert_names_the_limit("DataService.Sync", &err);
        let err = match d.subscribe(four).await {
            Err(e) => e,
            Ok(s) => s
                .into_inner()
                .message()
                .await
                .expect_err("DataService.Subscribe answered an oversized filter"),
        };
        assert_names_the_limit("DataService.Subscribe", &err);
    });

    let http = node.handle.http_address().expect("HTTP is on");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    for path in ["/snapshot", "/stream", "/stream/ping"] {
        let url = format!("http://{http}{path}?prefix=a/x1&prefix=a/x2&stores=b&prefix=c/x3");
        let mut r = agent.get(&url).call().unwrap();
        assert_eq!(r.status().as_u16(), 400, "{path}");
        let body = r.body_mut().read_to_string().unwrap();
        assert!(body.contains("max_filter_entries"), "{path}: {body}");
    }
    node.close();
}

#[test]
fn fifty_thousand_prefixes_are_answered_while_another_client_keeps_receiving_blocks() {
    let mut node = Node::in_memory("max_filter_entries = 60000");
    node.commit();
    let rt = runtime();
    let address = node.address();
    let last = 30;
    // The unfiltered client, following every block.
    let plain = rt.spawn({
        let address = address.clone();
        async move {
            let mut c = client(&address).await;
            let mut s = c
                .subscribe(subscribe_request(Start::FromHeight(2)))
                .await
                .unwrap()
                .into_inner();
            let mut r = Received::default();
            read_until(&mut s, &mut r, last).await;
            r
        }
    });
    // 50,000 prefixes that select nothing, and `k` in every store, which
    // selects every key the blocks write: each record is looked up among
    // all of them.
    let mut big = prefixes(50_000);
    for s in STORES {
        big.push(v1::KeyPrefix {
            store: s.to_string(),
            prefix: b"k".to_vec(),
        });
    }
    let mut heavy = Vec::new();
    for _ in 0..2 {
        let address = address.clone();
        let big = big.clone();
        heavy.push(rt.spawn(async move {
            let mut c = client(&address).await;
            let mut s = c
                .subscribe(filtered(Start::FromHeight(2), big))
                .await
                .unwrap()
                .into_inner();
            let mut r = Received::default();
            read_until(&mut s, &mut r, last).await;
            r
        }));
    }
    for _ in 2..=last {
        node.commit();
        std::thread::sleep(Duration::from_millis(20));
    }
    let expected: Vec<_> = (2..=last).map(|h| (h, node.changes(h))).collect();
    // read_until holds each read to one overall deadline.
    let r = rt.block_on(plain).unwrap();
    assert_eq!(r.blocks, expected, "the unfiltered client");
    for h in heavy {
        let r = rt.block_on(h).unwrap();
        assert_eq!(r.blocks, expected, "a 50,000-prefix client");
    }
    node.close();
}

/// The test process's resident memory (`VmRSS`, the in-process node's
/// included), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// Writes `keys` keys of `value_len` bytes into store `a`, 256 per block.
fn fill(node: &mut Node, keys: usize, value_len: usize) {
    let store = StoreKey::new("a").unwrap();
    let value = vec![b'v'; value_len];
    for block in 0..keys.div_ceil(256) {
        for i in block * 256..((block + 1) * 256).min(keys) {
            node.store
                .set(&store, format!("big{i:06}").as_bytes(), &value)
                .unwrap();
        }
        node.manager
            .as_mut()
            .unwrap()
            .commit(&mut node.store, BlockMeta::default())
            .unwrap();
    }
}

const KEYS: usize = 2048;
const VALUE_BYTES: usize = 16 * 1024;
/// What four concurrent `/snapshot`s of the whole 32 MiB state may add to
/// the process's memory: each is held a few 64 KiB pieces at a time, not
/// whole (as JSON, each would be more than the state itself).
const GROWTH_BOUND_KIB: u64 = 16 * 1024;

#[test]
fn concurrent_snapshots_stay_within_a_memory_bound_and_one_too_many_is_refused() {
    let mut node = Node::in_memory(&format!("{HTTP}max_snapshots = 4"));
    fill(&mut node, KEYS, VALUE_BYTES);
    let height = node.height();
    let http = node.handle.http_address().expect("HTTP is on");
    let url = format!("http://{http}/snapshot?stores=a");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();

    // Read alone and whole: the reference, checked key by key.
    let whole = {
        let mut r = agent.get(&url).call().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let mut bytes = Vec::new();
        r.body_mut().as_reader().read_to_end(&mut bytes).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("the body is JSON");
        assert_eq!(v["height"].as_u64(), Some(height));
        let a = v["data"]["a"].as_object().expect("store a");
        assert_eq!(a.len(), KEYS);
        let value = "v".repeat(VALUE_BYTES);
        for i in [0, 1, KEYS / 2, KEYS - 1] {
            let e = &a[&format!("big{i:06}")];
            assert_eq!(e["value"].as_str(), Some(value.as_str()), "big{i:06}");
            assert_eq!(e["version"].as_u64(), Some(height));
        }
        bytes
    };
    let (len, head, tail) = (
        whole.len(),
        whole[..1024].to_vec(),
        whole[whole.len() - 64..].to_vec(),
    );
    drop(whole);

    let baseline = rss_kib();
    // Four readers take every place: each reads its first bytes and waits.
    let go = Arc::new(Barrier::new(5));
    let (held_tx, held_rx) = mpsc::channel();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (agent, url, go, held_tx) =
                (agent.clone(), url.clone(), go.clone(), held_tx.clone());
            std::thread::spawn(move || {
                let mut r = agent.get(&url).call().unwrap();
                assert_eq!(r.status().as_u16(), 200);
                let mut reader = r.body_mut().as_reader();
                let mut first = vec![0u8; 1024];
                reader.read_exact(&mut first).unwrap();
                held_tx.send(()).unwrap();
                go.wait();
                // The rest, kept only as its length and its end.
                let mut total = first.len();
                let mut end = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = reader.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    total += n;
                    end.extend_from_slice(&buf[..n]);
                    let cut = end.len().saturating_sub(64);
                    end.drain(..cut);
                }
                (first, total, end)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..4 {
        held_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("reader {i} did not get the start of its snapshot"));
    }

    // A fifth, over max_snapshots: 503 with Retry-After; Sync is counted too.
    let mut refused = agent.get(&url).call().unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    assert!(
        refused.headers().get("retry-after").is_some(),
        "Retry-After"
    );
    let body = refused.body_mut().read_to_string().unwrap();
    assert!(body.contains("max_snapshots"), "{body}");
    let rt = runtime();
    let address = node.address();
    let err = rt.block_on(async {
        let mut d = DataServiceClient::connect(address.clone()).await.unwrap();
        d.sync(DataRequest {
            keys: vec!["b".into()],
        })
        .await
        .unwrap_err()
    });
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_snapshots"), "{}", err.message());

    // All four read to the end at once while the memory is sampled.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = std::thread::spawn({
        let (stop, peak) = (stop.clone(), peak.clone());
        move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    go.wait();
    for r in readers {
        let (first, total, end) = r.join().expect("a reader failed");
        assert_eq!(first, head, "the start of a concurrent snapshot");
        assert_eq!(total, len, "the length of a concurrent snapshot");
        assert_eq!(end, tail, "the end of a concurrent snapshot");
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    assert!(
        growth < GROWTH_BOUND_KIB,
        "four concurrent snapshots of {} KiB grew the process by {growth} KiB (bound {GROWTH_BOUND_KIB} KiB)",
        KEYS * VALUE_BYTES / 1024
    );

    // The places are free again; an answer over the gRPC message size
    // limit is refused naming it, not sent.
    wait_for("the snapshots' places to be freed", || {
        agent
            .get(format!("http://{http}/snapshot?prefix=a/none"))
            .call()
            .is_ok_and(|r| r.status().as_u16() == 200)
    });
    let err = rt.block_on(async {
        let mut d = DataServiceClient::connect(address.clone()).await.unwrap();
        d.sync(DataRequest {
            keys: vec!["a".into()],
        })
        .await
        .unwrap_err()
    });
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("message size limit"),
        "{}",
        err.message()
    );
    node.close();
}
