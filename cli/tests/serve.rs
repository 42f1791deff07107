//! The demo node with a `serve` streamer, end to end: `--blocks 0` until
//! SIGTERM, `PushUpdate` applied in the next block (files, subscriptions,
//! app hash), `statestream subscribe` with `--cursor-file`.

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
    let config = home.join("app.toml");
    std::fs::create_dir_all(home).unwrap();
    std::fs::write(&config, APP_TOML).unwrap();
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
            if !sent && let Some(rest) = line.split("address=").nth(1) {
                let address = rest.split_whitespace().next().unwrap().to_string();
                let _ = tx.send(address);
                sent = true;
            }
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the node logs its gRPC address");
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
    let first = subscribe_until(
        &node.address,
        &["--snapshot", "--cursor-file", c],
        height + 3,
    );
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
