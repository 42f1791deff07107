//! The hashes `serve` puts on each block and snapshot (what a relay checks),
//! and `statestream relay` end to end: real processes (the `statestream`
//! binary as node and relays) on real sockets, on ports the OS chose.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::{BIN, p, wait_for};
use statestream_serve::proto::v1::{
    self, state_stream_client::StateStreamClient, subscribe_response::Message,
};

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

/// A running `statestream` process, killed when dropped (also when a test
/// fails), with its stderr lines kept.
struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `statestream ARGS` with `RUST_LOG=info`.
    fn start(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start statestream");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        Proc { child, log }
    }

    /// The `address=` of the first log line containing `marker`, waited
    /// for.
    fn address(&self, marker: &str) -> String {
        let mut found = None;
        wait_for(
            &format!("a log line with {marker:?} and its address"),
            || {
                let log = self.log.lock().unwrap();
                found = log.iter().find(|l| l.contains(marker)).and_then(|l| {
                    l.split("address=")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .map(str::to_owned)
                });
                found.is_some()
            },
        );
        found.unwrap_or_default()
    }

    /// SIGTERM, then the exit status (a clean stop exits 0).
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.child.wait().expect("wait for statestream")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `toml` as HOME/config/app.toml.
fn home_with(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let home = dir.join(name);
    std::fs::create_dir_all(home.join("config")).unwrap();
    std::fs::write(home.join("config/app.toml"), toml).unwrap();
    home
}

/// `statestream node` until stopped, one block every 20 ms.
fn start_node(home: &Path) -> (Proc, String) {
    let node = Proc::start(&[
        "node",
        "--home",
        p(home),
        "--blocks",
        "0",
        "--block-time-ms",
        "20",
    ]);
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
        file_hashes(&home.join("data/streaming")).contains_key(&5)
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
