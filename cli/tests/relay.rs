//! The hashes `serve` puts on each block and snapshot (what a relay checks),
//! and `statestream relay` end to end: real processes (the `statestream`
//! binary as node and relays) on real sockets, on ports the OS chose.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BIN, Proc, SplitMix, p, seed, wait_for};
use statestream_serve::proto::v1::{
    self, state_stream_client::StateStreamClient, subscribe_response::Message,
};
use statestream_test_support::tls::{certificate_authority, signed_certificate};

/// A node with a file streamer (meta files: the reference) and a `serve`
/// streamer.
const NODE_TOML: &str = r#"
[store]
streamers = ["file", "serve"]

[streamers.file]
keys = ["*"]
write_dir = "data/streaming"

[streamers.serve]
type = "serve"
keys = ["*"]
grpc_address = "127.0.0.1:0"
heartbeat_ms = 200
"#;

/// Writes `toml` as HOME/config/app.toml.
fn home_with(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let home = dir.join(name);
    std::fs::create_dir_all(home.join("config")).unwrap();
    std::fs::write(home.join("config/app.toml"), toml).unwrap();
    home
}

/// `statestream node` until stopped, one block every 20 ms.
fn start_node(home: &Path) -> (Proc, String) {
    let node = Proc::node(home, &[]);
    let address = node.address("serve: gRPC listening");
    (node, format!("http://{address}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One block's hashes as `statestream tail --json` shows its meta file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hashes {
    app_hash: String,
    stores: BTreeMap<String, String>,
    source_app_hash: String,
}

/// `statestream tail DIR --json --from 1`: the hashes by height.
fn file_hashes(dir: &Path) -> BTreeMap<u64, Hashes> {
    let out = Command::new(BIN)
        .args(["tail", p(dir), "--json", "--from", "1"])
        .output()
        .expect("run statestream tail");
    assert!(out.status.success(), "{out:?}");
    let mut all = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let stores = v["store_hashes"]
            .as_object()
            .expect("store_hashes")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        all.insert(
            v["height"].as_u64().unwrap(),
            Hashes {
                app_hash: v["app_hash"].as_str().unwrap().to_owned(),
                stores,
                source_app_hash: v["source_app_hash"].as_str().unwrap().to_owned(),
            },
        );
    }
    all
}

/// `statestream tail DIR --json --from 1`: the block times by height.
fn file_times(dir: &Path) -> BTreeMap<u64, i64> {
    let out = Command::new(BIN)
        .args(["tail", p(dir), "--json", "--from", "1"])
        .output()
        .expect("run statestream tail");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (v["height"].as_u64().unwrap(), v["time"].as_i64().unwrap())
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn grpc_hashes(app_hash: &[u8], stores: &[v1::StoreHash], source: &[u8]) -> Hashes {
    Hashes {
        app_hash: hex(app_hash),
        stores: stores
            .iter()
            .map(|s| (s.store.clone(), hex(&s.hash)))
            .collect(),
        source_app_hash: hex(source),
    }
}

#[test]
fn serve_block_and_snapshot_hashes_equal_the_nodes_block_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let home = home_with(dir.path(), "node", NODE_TOML);
    let (node, address) = start_node(&home);
    wait_for("the node's block 5", || {
        home.join("data/streaming/block-5-meta").exists()
    });
    // A subscriber from a snapshot, with a filter of one store: the hashes
    // are of every streamed store all the same.
    let (snapshot, blocks) = runtime().block_on(async {
        let mut c = StateStreamClient::connect(address).await.unwrap();
        let request = v1::SubscribeRequest {
            filter: Some(v1::Filter {
                stores: vec!["bank".into()],
                prefixes: vec![],
            }),
            start: Some(v1::subscribe_request::Start::Snapshot(v1::StartSnapshot {})),
        };
        let mut stream = c.subscribe(request).await.unwrap().into_inner();
        let mut snapshot = None;
        let mut blocks = BTreeMap::new();
        while blocks.len() < 5 {
            let m = stream.message().await.unwrap().expect("the stream goes on");
            match m.message {
                Some(Message::Snapshot(chunk)) => {
                    if chunk.end {
                        snapshot = Some((
                            chunk.height,
                            grpc_hashes(
                                &chunk.app_hash,
                                &chunk.store_hashes,
                                &chunk.source_app_hash,
                            ),
                        ));
                    } else {
                        assert!(chunk.app_hash.is_empty() && chunk.store_hashes.is_empty());
                    }
                }
                Some(Message::Block(b)) if b.end => {
                    blocks.insert(
                        b.height,
                        grpc_hashes(&b.app_hash, &b.store_hashes, &b.source_app_hash),
                    );
                }
                Some(Message::Block(b)) => {
                    assert!(b.app_hash.is_empty() && b.store_hashes.is_empty());
                }
                _ => {}
            }
        }
        (snapshot.expect("a snapshot's last chunk"), blocks)
    });
    assert!(node.stop().success());
    let files = file_hashes(&home.join("data/streaming"));
    let (height, hashes) = snapshot;
    assert_eq!(hashes, files[&height], "the snapshot's hashes at {height}");
    assert!(!hashes.app_hash.is_empty() && hashes.stores.len() > 1);
    assert!(hashes.source_app_hash.is_empty(), "a node's own blocks");
    for (h, hashes) in &blocks {
        assert_eq!(hashes, &files[h], "block {h}'s hashes");
    }
}

/// A relay's app.toml: file and serve streamers (gRPC and SSE), telemetry,
/// and `[relay]` with `upstreams` and `extra` keys.
fn relay_toml(upstreams: &[&str], extra: &str) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("{u:?}")).collect();
    format!(
        r#"
[store]
streamers = ["file", "serve"]

[streamers.file]
keys = ["*"]
write_dir = "data/streaming"

[streamers.serve]
type = "serve"
keys = ["*"]
grpc_address = "127.0.0.1:0"
http_address = "127.0.0.1:0"
heartbeat_ms = 200

[telemetry]
address = "127.0.0.1:0"

[relay]
upstreams = [{}]
{extra}
"#,
        list.join(", ")
    )
}

/// A running relay and the addresses it logged.
struct Relay {
    proc: Proc,
    grpc: String,
    http: String,
    telemetry: String,
}

fn start_relay(home: &Path) -> Relay {
    let proc = Proc::start(&["relay", "--home", p(home)]);
    let grpc = format!("http://{}", proc.address("serve: gRPC listening"));
    let http = proc.address("serve: HTTP (SSE) listening");
    let telemetry = proc.address("telemetry server listening");
    Relay {
        proc,
        grpc,
        http,
        telemetry,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Status, `Retry-After` and body of `GET http://address/path`.
fn get(address: &str, path: &str) -> (u16, Option<String>, String) {
    let mut response = agent()
        .get(&format!("http://{address}{path}"))
        .call()
        .expect("request");
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.body_mut().read_to_string().expect("body");
    (response.status().as_u16(), retry, body)
}

/// The relay's `/status`.
fn status(relay: &Relay) -> serde_json::Value {
    let (code, _, body) = get(&relay.telemetry, "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("a JSON status")
}

/// Waits until the relay's `/status` satisfies `cond`.
fn wait_status(relay: &Relay, what: &str, mut cond: impl FnMut(&serde_json::Value) -> bool) {
    wait_for(what, || {
        // The server stays up while the streamers start again (after a
        // snapshot): a refused connection fails the test.
        let mut response = agent()
            .get(&format!("http://{}/status", relay.telemetry))
            .call()
            .expect("the relay's /status answers");
        let body = response.body_mut().read_to_string().unwrap_or_default();
        response.status() == 200 && serde_json::from_str(&body).is_ok_and(|v| cond(&v))
    });
}

/// One change as `statestream dump --json` shows it: store, key, value
/// (hex; `None`: deleted).
type Change = (String, String, Option<String>);

/// `statestream dump --json DIR`: each block's changes by height.
fn dump(dir: &Path) -> BTreeMap<u64, Vec<Change>> {
    let out = Command::new(BIN)
        .args(["dump", "--json", p(dir)])
        .output()
        .expect("run statestream dump");
    assert!(out.status.success(), "{out:?}");
    let mut blocks: BTreeMap<u64, Vec<Change>> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let value =
            (!r["delete"].as_bool().unwrap()).then(|| r["value"].as_str().unwrap().to_owned());
        blocks
            .entry(r["height"].as_u64().unwrap())
            .or_default()
            .push((
                r["store"].as_str().unwrap().to_owned(),
                r["key"].as_str().unwrap().to_owned(),
                value,
            ));
    }
    blocks
}

/// A state by (store, key hex), values in hex.
type State = BTreeMap<(String, String), String>;

/// The state the blocks give at `height`, by (store, key hex).
fn state_at(blocks: &BTreeMap<u64, Vec<Change>>, height: u64) -> State {
    let mut s = BTreeMap::new();
    for (_, changes) in blocks.range(..=height) {
        for (store, key, value) in changes {
            match value {
                Some(v) => s.insert((store.clone(), key.clone()), v.clone()),
                None => s.remove(&(store.clone(), key.clone())),
            };
        }
    }
    s
}

/// `statestream verify DIR` passes.
fn verify(dir: &Path) {
    let out = Command::new(BIN)
        .args(["verify", p(dir)])
        .output()
        .expect("run statestream verify");
    assert!(
        out.status.success(),
        "verify {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Follows `address` over gRPC from `from` (inclusive), reconnecting to
/// what `address` gives at each attempt, until block `until`: every whole
/// block's changes by height (each height once: a block is taken when its
/// last message arrives, and a resumed stream starts after it).
fn grpc_blocks(address: impl Fn() -> String, from: u64, until: u64) -> BTreeMap<u64, Vec<Change>> {
    let rt = runtime();
    let mut blocks: BTreeMap<u64, Vec<Change>> = BTreeMap::new();
    let mut next = from;
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while next <= until {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out following {} up to block {until} (at {next})",
            address()
        );
        let got: Result<(), String> = rt.block_on(async {
            let mut c = StateStreamClient::connect(address())
                .await
                .map_err(|e| e.to_string())?;
            let request = v1::SubscribeRequest {
                filter: None,
                start: Some(v1::subscribe_request::Start::FromHeight(next)),
            };
            // Not ready yet (UNAVAILABLE) or not listening: try again.
            // Never OUT_OF_RANGE: a relay that lost blocks in a crash (it
            // commits without an fsync per block) waits for them.
            let mut stream = match c.subscribe(request).await {
                Ok(r) => r.into_inner(),
                Err(s) if s.code() == tonic::Code::OutOfRange => {
                    panic!("{} refused to resume at {next}: {s:?}", address())
                }
                Err(s) => return Err(s.to_string()),
            };
            let mut pending: Vec<Change> = Vec::new();
            while next <= until {
                let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
                    .await
                    .map_err(|_| "no message in 30 s".to_owned())?
                    .map_err(|s| s.to_string())?
                    .ok_or("the stream ended")?;
                let Some(Message::Block(b)) = m.message else {
                    continue;
                };
                assert_eq!(b.height, next, "no gap, no duplicate");
                for c in b.changes {
                    let deleted = c.op == v1::Op::Delete as i32;
                    pending.push((c.store, hex(&c.key), (!deleted).then(|| hex(&c.value))));
                }
                if b.end {
                    blocks.insert(next, std::mem::take(&mut pending));
                    next += 1;
                }
            }
            Ok(())
        });
        if got.is_err() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    blocks
}

/// The node's blocks from its file streamer, waited for up to `height`.
fn node_blocks(home: &Path, height: u64) -> BTreeMap<u64, Vec<Change>> {
    let dir = home.join("data/streaming");
    wait_for(&format!("the node's block file {height}"), || {
        dir.join(format!("block-{height}-meta")).exists()
    });
    dump(&dir)
}

/// Blocks of `blocks` in `range`, with empty ones for heights without a
/// record (the files hold no record for them; a stream sends them empty).
fn span(blocks: &BTreeMap<u64, Vec<Change>>, from: u64, to: u64) -> BTreeMap<u64, Vec<Change>> {
    (from..=to)
        .map(|h| (h, blocks.get(&h).cloned().unwrap_or_default()))
        .collect()
}

/// node -> relay -> relay: a datastream client and an SSE client of the
/// last relay see what the node's block files hold; the relays' own files
/// verify.
#[test]
fn relay_chain_serves_datastream_and_sse_equal_to_the_nodes_files() {
    use statestream_serve::proto::datastream::{
        DataRequest, data_service_client::DataServiceClient,
    };
    let dir = tempfile::tempdir().unwrap();
    let node_home = home_with(dir.path(), "node", NODE_TOML);
    let (node, node_address) = start_node(&node_home);
    let first = home_with(dir.path(), "relay1", &relay_toml(&[&node_address], ""));
    let first = start_relay(&first);
    let second_home = home_with(dir.path(), "relay2", &relay_toml(&[&first.grpc], ""));
    let second = start_relay(&second_home);
    wait_status(&second, "the second relay to be ready", |s| {
        s["ready"] == true
    });

    // Datastream: the state, then one response per block that changed
    // something.
    let grpc = second.grpc.clone();
    let (initial, updates) = runtime().block_on(async move {
        let mut d = DataServiceClient::connect(grpc).await.unwrap();
        let mut stream = d
            .subscribe(DataRequest { keys: vec![] })
            .await
            .unwrap()
            .into_inner();
        let mut initial = BTreeMap::new();
        for (key, data) in stream.message().await.unwrap().unwrap().data {
            initial.insert(key, hex(&data.value));
        }
        let mut updates = Vec::new();
        while updates.len() < 15 {
            let r = stream.message().await.unwrap().expect("the stream goes on");
            let mut block = BTreeMap::new();
            for (k, d) in r.data {
                let value = (d.value_type != statestream_serve::DELETED).then(|| hex(&d.value));
                block.insert(k, value);
            }
            updates.push(block);
        }
        (initial, updates)
    });
    // SSE: the put, then each block's events.
    let url = format!("http://{}/stream?encoding=hex", second.http);
    let (put_height, put_state, sse) = sse_until(&url, 10);

    let relay2_status = status(&second);
    assert_eq!(relay2_status["upstream"], first.grpc.as_str());
    assert!(relay2_status["diverged"].is_null());
    let last = sse.last().expect("blocks").0.max(put_height + 10);
    let files = node_blocks(&node_home, last + 20);
    assert!(node.stop().success());

    // The datastream state is the node's at some height, and its updates
    // are the node's next blocks that changed something.
    let as_data = |s: &State| -> BTreeMap<String, String> {
        s.iter()
            .map(|((store, key), v)| {
                let key = String::from_utf8(hex_decode(key)).unwrap();
                (format!("{store}/{key}"), v.clone())
            })
            .collect()
    };
    let start = (0..=last + 20)
        .find(|&h| as_data(&state_at(&files, h)) == initial)
        .expect("the datastream state is the node's at one height");
    let expected: Vec<BTreeMap<String, Option<String>>> = files
        .range(start + 1..)
        .filter(|(_, c)| !c.is_empty())
        .take(updates.len())
        .map(|(_, changes)| {
            changes
                .iter()
                .map(|(store, key, v)| {
                    let key = String::from_utf8(hex_decode(key)).unwrap();
                    (format!("{store}/{key}"), v.clone())
                })
                .collect()
        })
        .collect();
    assert_eq!(updates, expected, "the datastream updates from {start}");

    assert_eq!(
        put_state,
        state_at(&files, put_height),
        "the SSE put at {put_height}"
    );
    let expected_sse: Vec<(u64, Vec<Change>)> = files
        .range(put_height + 1..=sse.last().unwrap().0)
        .filter(|(_, c)| !c.is_empty())
        .map(|(h, c)| (*h, c.clone()))
        .collect();
    assert_eq!(sse, expected_sse, "the SSE blocks");

    // Each relay's own block files verify and hold the node's blocks.
    let second_files = second_home.join("data/streaming");
    assert!(second.proc.stop().success());
    assert!(first.proc.stop().success());
    verify(&second_files);
    let relayed = dump(&second_files);
    let files = dump(&node_home.join("data/streaming"));
    let lo = *relayed.keys().next().unwrap();
    let hi = *relayed.keys().last().unwrap();
    let hi = hi.min(*files.keys().last().unwrap());
    assert!(hi > lo + 10, "{lo}..{hi}");
    assert_eq!(span(&relayed, lo, hi), span(&files, lo, hi));
    // The relay's own blocks carry its recomputed hashes (the node's) and
    // the node's block times.
    let node_hashes = file_hashes(&node_home.join("data/streaming"));
    let relay_hashes = file_hashes(&second_files);
    let node_times = file_times(&node_home.join("data/streaming"));
    let relay_times = file_times(&second_files);
    for h in lo..=hi {
        assert_eq!(relay_hashes[&h], node_hashes[&h], "the hashes of block {h}");
        assert_eq!(relay_times[&h], node_times[&h], "the time of block {h}");
    }
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Follows `GET url` with LaunchDarkly's SSE client until `blocks_after`
/// blocks past its put have ended: the put's height and state (by store
/// and key hex), then each block's changes.
fn sse_until(url: &str, blocks_after: u64) -> (u64, State, Vec<(u64, Vec<Change>)>) {
    use eventsource_client::{Client as _, ClientBuilder, SSE};
    use futures_util::StreamExt as _;

    let client = ClientBuilder::for_url(url).unwrap().build_http();
    let mut stream = client.stream();
    let mut put: Option<(u64, State)> = None;
    let mut blocks: Vec<(u64, Vec<Change>)> = Vec::new();
    let mut pending = Vec::new();
    runtime().block_on(async {
        loop {
            if let Some((h, _)) = &put {
                let last = blocks.last().map_or(*h, |b| b.0);
                if last >= h + blocks_after {
                    break;
                }
            }
            let next = tokio::time::timeout(Duration::from_secs(60), stream.next())
                .await
                .expect("an event within 60 s")
                .expect("the stream goes on")
                .expect("no error");
            let SSE::Event(ev) = next else { continue };
            let data: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
            let id: Option<u64> = ev.id.map(|i| i.parse().unwrap());
            if ev.event_type == "put" {
                let h = data["height"].as_u64().unwrap();
                let mut state = BTreeMap::new();
                for (store, keys) in data["data"].as_object().unwrap() {
                    for (key, entry) in keys.as_object().unwrap() {
                        let value = entry["value"].as_str().unwrap().to_owned();
                        state.insert((store.clone(), key.clone()), value);
                    }
                }
                put = Some((h, state));
                continue;
            }
            let path = data["path"].as_str().unwrap();
            let (store, key) = path[1..].split_once('/').unwrap();
            let (value, version) = match ev.event_type.as_str() {
                "patch" => (
                    Some(data["data"]["value"].as_str().unwrap().to_owned()),
                    data["data"]["version"].as_u64().unwrap(),
                ),
                "delete" => (None, data["version"].as_u64().unwrap()),
                other => panic!("unexpected event {other}"),
            };
            pending.push((store.to_owned(), key.to_owned(), value));
            if id == Some(version) {
                blocks.push((version, std::mem::take(&mut pending)));
            }
        }
    });
    let (h, state) = put.expect("a put first");
    (h, state, blocks)
}

/// The relay SIGKILLed five times while blocks commit and started again:
/// a client that resumes by height sees every block once, equal to the
/// node's; the relay's own file streamer output verifies.
#[test]
fn relay_sigkilled_five_times_resumes_without_gap_or_duplicate() {
    let seed = seed();
    eprintln!("STATESTREAM_CRASH_SEED={seed}");
    let mut rng = SplitMix(seed);
    let dir = tempfile::tempdir().unwrap();
    let node_home = home_with(dir.path(), "node", NODE_TOML);
    let (node, node_address) = start_node(&node_home);
    let home = home_with(dir.path(), "relay", &relay_toml(&[&node_address], ""));
    let relay = start_relay(&home);
    wait_status(&relay, "the relay's first height", |s| {
        s["local_height"].as_u64() > Some(0)
    });
    let first = status(&relay)["local_height"].as_u64().unwrap() + 1;
    let address = Arc::new(Mutex::new(relay.grpc.clone()));
    let mut relay = Some(relay);
    let mut seen: BTreeMap<u64, Vec<Change>> = BTreeMap::new();
    let mut next = first;
    // Restarts that resumed at or below a height the client already had:
    // the crash took blocks the relay had served but not made durable.
    let mut rolled_back = 0;
    for kill in 0..5 {
        let current = relay.take().unwrap();
        *address.lock().unwrap() = current.grpc.clone();
        // Some blocks through this relay, then a kill at a random moment.
        let until = next + 5 + rng.next() % 10;
        let a = Arc::clone(&address);
        seen.extend(grpc_blocks(move || a.lock().unwrap().clone(), next, until));
        next = until + 1;
        std::thread::sleep(Duration::from_millis(rng.next() % 200));
        current.proc.kill();
        eprintln!("kill {kill} after block {until}");
        let restarted = start_relay(&home);
        let from: u64 = restarted
            .proc
            .field("following the upstream", "from")
            .parse()
            .expect("a height");
        eprintln!("restart {kill} follows its upstream from {from}");
        if from <= until {
            rolled_back += 1;
        }
        relay = Some(restarted);
    }
    assert!(
        rolled_back > 0,
        "no restart resumed below a height its client had: the path this tests was not taken"
    );
    let last = relay.as_ref().unwrap();
    *address.lock().unwrap() = last.grpc.clone();
    let a = Arc::clone(&address);
    seen.extend(grpc_blocks(
        move || a.lock().unwrap().clone(),
        next,
        next + 20,
    ));
    let files = node_blocks(&node_home, next + 20);
    assert!(node.stop().success());
    let relay = relay.take().unwrap();
    assert!(relay.proc.stop().success(), "a clean stop");
    assert_eq!(seen, span(&files, first, next + 20));
    verify(&home.join("data/streaming"));
}

/// Two relays of one node as the upstreams of a third; the one in use is
/// killed while blocks commit: the third goes on from the other, with no
/// gap.
#[test]
fn relay_fails_over_to_the_next_upstream_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let node_home = home_with(dir.path(), "node", NODE_TOML);
    let (node, node_address) = start_node(&node_home);
    let a = start_relay(&home_with(
        dir.path(),
        "a",
        &relay_toml(&[&node_address], ""),
    ));
    let b = start_relay(&home_with(
        dir.path(),
        "b",
        &relay_toml(&[&node_address], ""),
    ));
    wait_status(&a, "relay a to be ready", |s| s["ready"] == true);
    wait_status(&b, "relay b to be ready", |s| s["ready"] == true);
    let c_home = home_with(dir.path(), "c", &relay_toml(&[&a.grpc, &b.grpc], ""));
    let c = start_relay(&c_home);
    wait_status(&c, "relay c to follow a", |s| {
        s["ready"] == true && s["upstream"] == a.grpc.as_str()
    });
    let before = status(&c)["local_height"].as_u64().unwrap();
    a.proc.kill();
    wait_status(&c, "relay c to go on from b", |s| {
        s["upstream"] == b.grpc.as_str() && s["local_height"].as_u64().unwrap_or(0) > before + 20
    });
    let after = status(&c);
    assert!(after["failovers"].as_u64() >= Some(1), "{after}");
    let upto = after["local_height"].as_u64().unwrap();
    let files = node_blocks(&node_home, upto);
    assert!(node.stop().success());
    assert!(c.proc.stop().success());
    assert!(b.proc.stop().success());
    let c_files = c_home.join("data/streaming");
    verify(&c_files);
    let relayed = dump(&c_files);
    let lo = *relayed.keys().next().unwrap();
    assert!(lo <= before + 1, "c's files start before the kill");
    assert_eq!(span(&relayed, lo, upto), span(&files, lo, upto));
}

/// A relay synced from node A, restarted with node B (other data) as its
/// upstream: it refuses B's first block, shows `diverged`, serves nothing.
#[test]
fn relay_refuses_an_upstream_of_another_chain_as_diverged() {
    let dir = tempfile::tempdir().unwrap();
    let a_home = home_with(dir.path(), "a", NODE_TOML);
    let (a, a_address) = start_node(&a_home);
    let home = home_with(dir.path(), "relay", &relay_toml(&[&a_address], ""));
    let relay = start_relay(&home);
    wait_status(&relay, "the relay to be ready", |s| s["ready"] == true);
    assert!(relay.proc.stop().success());
    assert!(a.stop().success());

    // Node B: the same stores, another seed, so other data.
    let b_home = dir.path().join("b");
    let b = Proc::node(
        &b_home,
        &[
            "--config",
            p(&a_home.join("config/app.toml")),
            "--seed",
            "99",
        ],
    );
    let b_address = format!("http://{}", b.address("serve: gRPC listening"));
    std::fs::write(home.join("config/app.toml"), relay_toml(&[&b_address], "")).unwrap();
    let relay = start_relay(&home);
    wait_status(&relay, "the relay to diverge", |s| !s["diverged"].is_null());
    let s = status(&relay);
    let height = s["diverged"]["height"].as_u64().unwrap();
    assert_eq!(s["local_height"].as_u64(), Some(height - 1), "{s}");
    assert!(s["diverged"]["store"].is_string(), "{s}");
    // Nothing is served: gRPC UNAVAILABLE, HTTP and /healthz 503.
    let refused = runtime().block_on(async {
        let mut c = StateStreamClient::connect(relay.grpc.clone())
            .await
            .unwrap();
        c.list_stores(v1::ListStoresRequest {}).await.unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("diverged"), "{refused:?}");
    let (code, retry, body) = get(&relay.http, "/snapshot");
    assert_eq!(code, 503, "{body}");
    assert!(retry.is_some());
    let (code, _, body) = get(&relay.telemetry, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("diverged"), "{body}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(&relay)["local_height"].as_u64(), Some(height - 1));
    let log = relay.proc.log();
    assert!(
        log.contains("block diverged") && log.contains(&format!("height={height}")),
        "{log}"
    );
    let exit = relay.proc.stop();
    assert!(!exit.success(), "a diverged relay exits with an error");
    assert!(b.stop().success());
}

/// A node that keeps 20 blocks: a relay down longer than that re-snapshots
/// (`OUT_OF_RANGE` below the window), and with `resnapshot = false` halts
/// with a clear error.
#[test]
fn relay_resnapshots_when_the_upstream_no_longer_retains_its_next_height() {
    let dir = tempfile::tempdir().unwrap();
    let node_toml = NODE_TOML.replace(
        "heartbeat_ms = 200",
        "heartbeat_ms = 200\nretain_blocks = 20",
    );
    let node_home = home_with(dir.path(), "node", &node_toml);
    let (node, node_address) = start_node(&node_home);
    let home = home_with(dir.path(), "relay", &relay_toml(&[&node_address], ""));
    let relay = start_relay(&home);
    wait_status(&relay, "the relay to be ready", |s| s["ready"] == true);
    let stopped_at = status(&relay)["local_height"].as_u64().unwrap();
    assert!(relay.proc.stop().success());
    node_blocks(&node_home, stopped_at + 100);

    let relay = start_relay(&home);
    wait_status(&relay, "a re-snapshot", |s| {
        s["resnapshots"] == 1 && s["ready"] == true
    });
    let now = status(&relay)["local_height"].as_u64().unwrap();
    assert!(now > stopped_at + 100, "{now}");
    assert!(relay.proc.log().contains("taking a fresh snapshot"));
    // Its subscribers asking for heights it never had: OUT_OF_RANGE (from
    // the serve streamer started again on the new state, on a new port as
    // the configured one is port 0).
    let grpc = format!("http://{}", relay.proc.address("serve: gRPC listening"));
    let refused = runtime().block_on(async {
        let mut c = StateStreamClient::connect(grpc).await.unwrap();
        let request = v1::SubscribeRequest {
            filter: None,
            start: Some(v1::subscribe_request::Start::FromHeight(stopped_at + 1)),
        };
        c.subscribe(request).await.unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    let resumed_at = status(&relay)["local_height"].as_u64().unwrap();
    assert!(relay.proc.stop().success());

    // resnapshot = false: a clear halt.
    node_blocks(&node_home, resumed_at + 100);
    std::fs::write(
        home.join("config/app.toml"),
        relay_toml(&[&node_address], "resnapshot = false"),
    )
    .unwrap();
    let mut halted = Proc::start(&["relay", "--home", p(&home)]);
    let exit = halted.exited();
    assert!(!exit.success());
    let log = halted.log();
    assert!(
        log.contains("no longer retains height") && log.contains("resnapshot = false"),
        "{log}"
    );
    assert!(node.stop().success());
}

/// A wrong upstream token: a clear error naming the upstream and the
/// refusal, never the token.
#[test]
fn relay_with_a_wrong_upstream_token_stops_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let node_toml = NODE_TOML.replace(
        "heartbeat_ms = 200",
        "heartbeat_ms = 200\ntoken = \"the-node-token-1234\"",
    );
    let node_home = home_with(dir.path(), "node", &node_toml);
    let (node, node_address) = start_node(&node_home);
    let home = home_with(
        dir.path(),
        "relay",
        &relay_toml(&[&node_address], "token_file = \"upstream-token\""),
    );
    std::fs::write(home.join("upstream-token"), "wrong-secret-5678\n").unwrap();
    let mut relay = Proc::start(&["relay", "--home", p(&home)]);
    let exit = relay.exited();
    assert!(!exit.success());
    let log = relay.log();
    assert!(
        log.contains("Unauthenticated")
            || log.contains("UNAUTHENTICATED")
            || log.contains("wrong token"),
        "{log}"
    );
    assert!(log.contains(&node_address), "{log}");
    assert!(
        !log.contains("wrong-secret-5678"),
        "the token is printed: {log}"
    );
    assert!(!log.contains("the-node-token-1234"), "{log}");
    assert!(node.stop().success());
}

/// An `https://` upstream (a node whose `serve` has a certificate): the
/// relay follows it verified against `tls_ca_file`; with another CA it
/// stops with an error naming the upstream.
#[test]
fn relay_follows_an_https_upstream_and_refuses_a_certificate_its_ca_did_not_sign() {
    if !statestream_test_support::tls::openssl(
        "relay_follows_an_https_upstream_and_refuses_a_certificate_its_ca_did_not_sign",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = certificate_authority(dir.path(), "node-ca");
    let (cert, key) = signed_certificate(
        dir.path(),
        "node-server",
        "/CN=localhost",
        "IP:127.0.0.1,DNS:localhost",
        &ca,
    );
    let other_ca = certificate_authority(dir.path(), "other-ca");
    let node_toml = NODE_TOML.replace(
        "heartbeat_ms = 200",
        &format!(
            "heartbeat_ms = 200\ntls_cert_file = {:?}\ntls_key_file = {:?}",
            p(&cert),
            p(&key)
        ),
    );
    let node_home = home_with(dir.path(), "node", &node_toml);
    let node = Proc::node(&node_home, &[]);
    let upstream = format!("https://{}", node.address("serve: gRPC listening"));

    let home = home_with(
        dir.path(),
        "relay",
        &relay_toml(&[&upstream], &format!("tls_ca_file = {:?}", p(&ca.0))),
    );
    let relay = start_relay(&home);
    wait_status(&relay, "the relay to follow the https upstream", |s| {
        s["local_height"].as_u64() > Some(3) && s["upstream"] == upstream.as_str()
    });
    assert!(relay.proc.stop().success(), "a clean stop");

    let wrong = home_with(
        dir.path(),
        "wrong-ca",
        &relay_toml(&[&upstream], &format!("tls_ca_file = {:?}", p(&other_ca.0))),
    );
    let mut refused = Proc::start(&["relay", "--home", p(&wrong)]);
    let exit = refused.exited();
    assert!(!exit.success());
    let log = refused.log();
    assert!(log.contains(&format!("upstream {upstream}")), "{log}");
    assert!(log.contains("TLS"), "{log}");

    let none = home_with(dir.path(), "no-ca", &relay_toml(&[&upstream], ""));
    let mut refused = Proc::start(&["relay", "--home", p(&none)]);
    assert!(!refused.exited().success());
    let log = refused.log();
    assert!(log.contains("needs [relay] tls_ca_file"), "{log}");
    assert!(log.contains(&upstream), "{log}");
    assert!(node.stop().success());
}

/// PushUpdate on a relay goes to the upstream with the relay's token and
/// is answered once the relay holds the block that committed it.
#[test]
fn relay_forwards_push_update_and_answers_once_it_holds_the_height() {
    let dir = tempfile::tempdir().unwrap();
    let node_toml = NODE_TOML.replace(
        "heartbeat_ms = 200",
        "heartbeat_ms = 200\npush_updates = true\ntoken = \"relay-token\"",
    );
    let node_home = home_with(dir.path(), "node", &node_toml);
    let (node, node_address) = start_node(&node_home);
    let toml = relay_toml(&[&node_address], "token_file = \"token\"").replace(
        "heartbeat_ms = 200",
        "heartbeat_ms = 200\npush_updates = true",
    );
    let home = home_with(dir.path(), "relay", &toml);
    std::fs::write(home.join("token"), "relay-token").unwrap();
    let relay = start_relay(&home);
    wait_status(&relay, "the relay to be ready", |s| s["ready"] == true);
    let (height, value) = runtime().block_on(async {
        let mut c = StateStreamClient::connect(relay.grpc.clone())
            .await
            .unwrap();
        let height = c
            .push_update(v1::PushUpdateRequest {
                store: "tmp".into(),
                key: b"pushed/through-relay".to_vec(),
                value: b"hi".to_vec(),
                delete: false,
            })
            .await
            .unwrap()
            .into_inner()
            .height;
        // Answered once the relay holds that height: its snapshot now has
        // the write.
        let mut stream = c
            .snapshot(v1::SnapshotRequest {
                filter: Some(v1::Filter {
                    stores: vec![],
                    prefixes: vec![v1::KeyPrefix {
                        store: "tmp".into(),
                        prefix: b"pushed/".to_vec(),
                    }],
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let mut value = None;
        while let Some(chunk) = stream.message().await.unwrap() {
            assert!(
                chunk.height >= height,
                "a snapshot at {} < {height}",
                chunk.height
            );
            value = chunk.entries.into_iter().next().map(|e| e.value).or(value);
        }
        (height, value)
    });
    assert_eq!(value.as_deref(), Some(&b"hi"[..]));
    let files = node_blocks(&node_home, height);
    assert!(
        files[&height].iter().any(|(s, k, v)| s == "tmp"
            && *k == hex(b"pushed/through-relay")
            && v.as_deref() == Some(hex(b"hi").as_str())),
        "block {height} of the node holds the write"
    );
    assert!(relay.proc.stop().success());
    assert!(node.stop().success());
}

/// While the relay does not know it is within `ready_lag_blocks` of its
/// upstream (here: the upstream is gone), its front-ends answer
/// UNAVAILABLE / 503 with Retry-After, never 401, whatever the token.
#[test]
fn relay_not_ready_answers_unavailable_and_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let node_home = home_with(dir.path(), "node", NODE_TOML);
    let (node, node_address) = start_node(&node_home);
    let toml = relay_toml(&[&node_address], "").replace(
        "heartbeat_ms = 200",
        "heartbeat_ms = 200\ntoken = \"clients\"",
    );
    let home = home_with(dir.path(), "relay", &toml);
    let relay = start_relay(&home);
    wait_status(&relay, "the relay to be ready", |s| s["ready"] == true);
    let (code, _, body) = get(&relay.http, "/snapshot");
    assert_eq!(code, 401, "ready: the token is checked: {body}");
    assert!(node.stop().success());
    wait_status(&relay, "the relay to be not ready", |s| s["ready"] == false);
    let (code, retry, body) = get(&relay.http, "/snapshot");
    assert_eq!(code, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(body.contains("not ready"), "{body}");
    let refused = runtime().block_on(async {
        let mut c = StateStreamClient::connect(relay.grpc.clone())
            .await
            .unwrap();
        c.list_stores(v1::ListStoresRequest {}).await.unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let (code, _, body) = get(&relay.telemetry, "/healthz");
    assert_eq!(code, 503, "{body}");
    // The gRPC health service follows the gate.
    let grpc = relay.grpc.clone();
    wait_for("gRPC health NOT_SERVING", || {
        let grpc = grpc.clone();
        runtime().block_on(async move {
            use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
            let channel = tonic::transport::Channel::from_shared(grpc)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut h = HealthClient::new(channel);
            let status = h
                .check(HealthCheckRequest {
                    service: "statestream.v1.StateStream".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            status == tonic_health::ServingStatus::NotServing as i32
        })
    });
    assert!(relay.proc.stop().success(), "a clean stop while not ready");
}

/// An upstream that stops moving (its own upstream is frozen with
/// SIGSTOP) while another goes on: the relay leaves it once it lags by
/// more than `max_upstream_lag_blocks`, with no gap, and counts it in
/// `relay_failovers_total`.
#[test]
fn relay_leaves_a_lagging_upstream_for_the_best_one() {
    let dir = tempfile::tempdir().unwrap();
    let node_home = home_with(dir.path(), "node", NODE_TOML);
    let (node, node_address) = start_node(&node_home);
    let x = start_relay(&home_with(
        dir.path(),
        "x",
        &relay_toml(&[&node_address], ""),
    ));
    wait_status(&x, "relay x to be ready", |s| s["ready"] == true);
    let a = start_relay(&home_with(dir.path(), "a", &relay_toml(&[&x.grpc], "")));
    let b = start_relay(&home_with(
        dir.path(),
        "b",
        &relay_toml(&[&node_address], ""),
    ));
    wait_status(&a, "relay a to be ready", |s| s["ready"] == true);
    wait_status(&b, "relay b to be ready", |s| s["ready"] == true);
    let c_home = home_with(
        dir.path(),
        "c",
        &relay_toml(&[&a.grpc, &b.grpc], "max_upstream_lag_blocks = 5"),
    );
    let c = start_relay(&c_home);
    wait_status(&c, "relay c to follow a", |s| {
        s["ready"] == true && s["upstream"] == a.grpc.as_str()
    });
    // x frozen: a stops moving (its stream stalls, it does not end).
    let x_pid = x.proc.id() as libc::pid_t;
    unsafe { libc::kill(x_pid, libc::SIGSTOP) };
    let before = status(&c)["local_height"].as_u64().unwrap();
    wait_status(&c, "relay c to move to b and go on", |s| {
        s["upstream"] == b.grpc.as_str() && s["local_height"].as_u64().unwrap_or(0) > before + 20
    });
    let (code, _, metrics) = get(&c.telemetry, "/metrics");
    assert_eq!(code, 200);
    let failovers = metrics
        .lines()
        .find_map(|l| l.strip_prefix("relay_failovers_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("relay_failovers_total");
    assert!(failovers >= 1.0, "{metrics}");
    let upto = status(&c)["local_height"].as_u64().unwrap();
    let files = node_blocks(&node_home, upto);
    assert!(node.stop().success());
    assert!(c.proc.stop().success());
    let c_files = c_home.join("data/streaming");
    verify(&c_files);
    let relayed = dump(&c_files);
    let lo = *relayed.keys().next().unwrap();
    assert_eq!(span(&relayed, lo, upto), span(&files, lo, upto));
    unsafe { libc::kill(x_pid, libc::SIGCONT) };
}

/// `[admin]` on a relay: its credentials are managed while it runs (no
/// restart, no `--home` offline), and its front-ends check them.
#[test]
fn relay_admin_api_manages_the_relays_credentials_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let node_home = home_with(dir.path(), "node", NODE_TOML);
    let (node, node_address) = start_node(&node_home);
    let toml = relay_toml(&[&node_address], "")
        + "\n[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"admin-token\"\n";
    let home = home_with(dir.path(), "relay", &toml);
    std::fs::write(home.join("admin-token"), "relay-admin\n").unwrap();
    let relay = start_relay(&home);
    let admin = relay.proc.address("admin API listening");
    wait_status(&relay, "the relay to be ready", |s| s["ready"] == true);

    let mut created = agent()
        .post(&format!("http://{admin}/v1/credentials"))
        .header("authorization", "Bearer relay-admin")
        .header("content-type", "application/json")
        .send(r#"{"id": "wallet", "scopes": [{"store": "*"}]}"#)
        .expect("the admin API answers");
    let body = created.body_mut().read_to_string().unwrap();
    assert_eq!(created.status().as_u16(), 201, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let secret = answer["secret"].as_str().expect("a secret").to_owned();

    let snapshot = |token: Option<&str>| {
        let mut req = agent().get(&format!("http://{}/snapshot", relay.http));
        if let Some(t) = token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        let mut r = req.call().expect("the relay answers");
        let body = r.body_mut().read_to_string().unwrap_or_default();
        (r.status().as_u16(), body)
    };
    let (code, body) = snapshot(Some(&secret));
    assert_eq!(code, 200, "the new credential reads the relay: {body}");
    let (code, _) = snapshot(Some("ss_nobody_00"));
    assert_eq!(code, 401, "an unknown credential does not");

    // Revoked through the relay's admin API: refused at once.
    let revoked = agent()
        .delete(&format!("http://{admin}/v1/credentials/wallet"))
        .header("authorization", "Bearer relay-admin")
        .call()
        .expect("the admin API answers");
    assert_eq!(revoked.status().as_u16(), 200);
    let (code, body) = snapshot(Some(&secret));
    assert_eq!(code, 401, "revoked: {body}");
    assert!(relay.proc.stop().success());
    assert!(node.stop().success());
}
