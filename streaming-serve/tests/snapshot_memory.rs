//! Concurrent one-shot snapshots over a large state, within a memory
//! bound. A test binary of its own: the bound is on the process's resident
//! memory, which tests running beside it in one process would move.

// The shared node of the `serve` tests; this test uses part of it.
#[allow(dead_code)]
#[path = "serve/util.rs"]
mod util;

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use statestream::BlockMeta;
use statestream_serve::proto::datastream::{DataRequest, data_service_client::DataServiceClient};
use statestream_store::{KvStore, StoreKey};

use crate::util::*;

const HTTP: &str = "http_address = \"127.0.0.1:0\"\n";

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

    // Measured before anything was read: memory a process freed usually
    // stays resident, and would hide what the snapshots take.
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
    let read: Vec<_> = readers
        .into_iter()
        .map(|r| r.join().expect("a reader failed"))
        .collect();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    assert!(
        growth < GROWTH_BOUND_KIB,
        "four concurrent snapshots of {} KiB grew the process by {growth} KiB (bound {GROWTH_BOUND_KIB} KiB)",
        KEYS * VALUE_BYTES / 1024
    );

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

    for (first, total, end) in read {
        assert_eq!(first, head, "the start of a concurrent snapshot");
        assert_eq!(total, len, "the length of a concurrent snapshot");
        assert_eq!(end, tail, "the end of a concurrent snapshot");
    }

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
