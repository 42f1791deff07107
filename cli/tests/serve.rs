//! The demo node with a `serve` streamer, end to end: `--blocks 0` until
//! SIGTERM, `PushUpdate` applied in the next block (files, subscriptions,
//! app hash), `statestream subscribe` with `--cursor-file`; the SSE
//! stream (`put`, then `patch`/`delete`) equal to the block files.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use statestream_serve::proto::v1::{self, state_stream_client::StateStreamClient};

const BIN: &str = env!("CARGO_BIN_EXE_statestream");

const APP_TOML: &str = r#"
[store]
streamers = ["file", "serve"]

[streamers.file]
keys = ["*"]
write_dir = "data/streaming"

[streamers.serve]
type = "serve"
keys = ["*"]
grpc_address = "127.0.0.1:0"
push_updates = true
heartbeat_ms = 200
"#;

/// A running node and the address its serve streamer bound.
struct Node {
    child: Child,
    address: String,
}

fn start_node(home: &Path) -> Node {
    start_node_with(home, APP_TOML, "serve: gRPC listening")
}

/// Starts a node with `app_toml`; `address` is the one logged on the
/// line containing `marker`.
fn start_node_with(home: &Path, app_toml: &str, marker: &'static str) -> Node {
    let config = home.join("app.toml");
    std::fs::create_dir_all(home).unwrap();
    std::fs::write(&config, app_toml).unwrap();
    let mut child = Command::new(BIN)
        .args(["node", "--home"])
        .arg(home)
        .arg("--config")
        .arg(&config)
        .args(["--blocks", "0", "--block-time-ms", "20"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent
                && line.contains(marker)
                && let Some(rest) = line.split("address=").nth(1)
            {
                let address = rest.split_whitespace().next().unwrap().to_string();
                let _ = tx.send(address);
                sent = true;
            }
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the node logs the serve streamer's address");
    Node { child, address }
}

fn stop_node(mut node: Node) {
    // SIGTERM: a clean stop after the current block.
    let pid = node.child.id() as libc::pid_t;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = node.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `statestream subscribe ADDR ARGS` until a JSON `end` line at or
/// after `height`, then kills it; returns the JSON lines.
fn subscribe_until(address: &str, args: &[&str], height: u64) -> Vec<serde_json::Value> {
    let mut child = Command::new(BIN)
        .args(["subscribe", address, "--json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let done = v["type"] == "end" && v["height"].as_u64().unwrap() >= height;
        lines.push(v);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

/// Runs `statestream subscribe ADDR --json ARGS --cursor-file CURSOR`,
/// reading its lines, until CURSOR holds `height` or more (a height is
/// saved once its lines are read and a later block's are written), then
/// kills it; returns the JSON lines.
fn subscribe_until_saved(
    address: &str,
    args: &[&str],
    cursor: &Path,
    height: u64,
) -> Vec<serde_json::Value> {
    let mut child = Command::new(BIN)
        .args(["subscribe", address, "--json"])
        .args(args)
        .arg("--cursor-file")
        .arg(cursor)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let saved = || {
        std::fs::read_to_string(cursor)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        lines.push(serde_json::from_str(&line.unwrap()).unwrap());
        if saved().is_some_and(|s| s >= height) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn serve_node_push_update_reaches_files_subscribers_and_the_app_hash() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let node = start_node(&home);
    let rt = runtime();
    let address = format!("http://{}", node.address);
    let (height, refused) = rt.block_on(async {
        let mut c = StateStreamClient::connect(address).await.unwrap();
        let height = c
            .push_update(v1::PushUpdateRequest {
                store: "tmp".into(),
                key: b"pushed/greeting".to_vec(),
                value: b"hello".to_vec(),
                delete: false,
            })
            .await
            .unwrap()
            .into_inner()
            .height;
        let refused = c
            .push_update(v1::PushUpdateRequest {
                store: "bank".into(),
                key: b"supply".to_vec(),
                value: b"oops".to_vec(),
                delete: false,
            })
            .await
            .unwrap_err();
        (height, refused)
    });
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("tmp"), "{}", refused.message());

    // A subscriber from that height sees the pushed value in block `height`.
    let lines = subscribe_until(&node.address, &["--from", &height.to_string()], height);
    assert!(lines.iter().any(|v| v["height"] == height
        && v["store"] == "tmp"
        && v["key"] == "pushed/greeting"
        && v["value"] == "hello"));

    // --cursor-file: a second run resumes after the first one's cursor.
    let cursor = dir.path().join("cursor");
    let c = cursor.to_str().unwrap();
    let first = subscribe_until_saved(&node.address, &["--snapshot"], &cursor, height + 3);
    assert_eq!(first[0]["type"], "snapshot");
    let saved: u64 = std::fs::read_to_string(&cursor)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(saved >= height + 3);
    let second = subscribe_until(
        &node.address,
        &["--snapshot", "--cursor-file", c],
        saved + 2,
    );
    assert_eq!(second[0]["height"], saved + 1, "{:?}", second[0]);
    assert_ne!(second[0]["type"], "snapshot");
    stop_node(node);

    // In the block files, and the files verify (hash chains, app hash).
    let blocks = home.join("data/streaming");
    let dump = Command::new(BIN)
        .args(["dump", "--json"])
        .arg(&blocks)
        .output()
        .unwrap();
    assert!(dump.status.success());
    let text = String::from_utf8(dump.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("pushed/greeting") && l.contains(&format!("\"height\":{height}"))),
        "the pushed write is not in block {height}'s file"
    );
    let verify = Command::new(BIN)
        .arg("verify")
        .arg(&blocks)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
}

/// One change as `statestream dump --json` and `?encoding=hex` write it:
/// store, key in hex, value in hex (`None`: deleted).
type Change = (String, String, Option<String>);

/// The state by store and key (hex), values in hex.
type State = BTreeMap<(String, String), String>;

/// Follows `GET url` with LaunchDarkly's SSE client until `blocks`
/// blocks past its put have ended: the put's height and state, then each
/// block's changes.
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
            // The client keeps the last id: a block's events carry the
            // previous block's until its last one, which carries its own.
            let id: Option<u64> = ev.id.map(|i| i.parse().unwrap());
            if ev.event_type == "put" {
                let h = data["height"].as_u64().unwrap();
                assert_eq!(id, Some(h));
                let mut state = State::new();
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

#[test]
fn serve_node_sse_put_then_patches_match_the_block_files() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let node = start_node_with(
        &home,
        "[store]\nstreamers = [\"file\", \"serve\"]\n\n[streamers.file]\nkeys = [\"*\"]\n\
         write_dir = \"data/streaming\"\n\n[streamers.serve]\ntype = \"serve\"\nkeys = [\"*\"]\n\
         http_address = \"127.0.0.1:0\"\n",
        "serve: HTTP (SSE) listening",
    );
    // Let a few blocks commit first, so that the put has history behind it.
    std::thread::sleep(Duration::from_millis(200));
    let url = format!("http://{}/stream?encoding=hex", node.address);
    let (put_height, put_state, _) = sse_until(&url, 0);
    let (start, state, blocks) = sse_until(&url, 10);
    assert!(start >= put_height);
    stop_node(node);

    // The block files, as `statestream dump --json` decodes them.
    let dump = Command::new(BIN)
        .args(["dump", "--json"])
        .arg(home.join("data/streaming"))
        .output()
        .unwrap();
    assert!(dump.status.success());
    let mut files: BTreeMap<u64, Vec<Change>> = BTreeMap::new();
    for line in String::from_utf8(dump.stdout).unwrap().lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let value =
            (!r["delete"].as_bool().unwrap()).then(|| r["value"].as_str().unwrap().to_owned());
        files
            .entry(r["height"].as_u64().unwrap())
            .or_default()
            .push((
                r["store"].as_str().unwrap().to_owned(),
                r["key"].as_str().unwrap().to_owned(),
                value,
            ));
    }
    // The puts: the state the files give at their heights.
    let state_at = |height: u64| {
        let mut s = State::new();
        for (_, changes) in files.range(..=height) {
            for (store, key, value) in changes {
                match value {
                    Some(v) => s.insert((store.clone(), key.clone()), v.clone()),
                    None => s.remove(&(store.clone(), key.clone())),
                };
            }
        }
        s
    };
    assert_eq!(put_state, state_at(put_height), "the put at {put_height}");
    assert_eq!(state, state_at(start), "the put at {start}");
    // The patches and deletes: each block's records, in the same order
    // (a block that changed nothing has no events).
    let last = blocks.last().expect("blocks").0;
    assert!(last >= start + 10);
    let expected: Vec<(u64, Vec<Change>)> = files
        .range(start + 1..=last)
        .filter(|(_, changes)| !changes.is_empty())
        .map(|(h, changes)| (*h, changes.clone()))
        .collect();
    assert_eq!(blocks, expected);
}
