//! `statestream ingest-files` following a directory that a Cosmos SDK
//! v0.46/v0.47 file streamer writes. The writer here is the SDK's: the meta
//! file, then the data file, each opened under its final name, truncated,
//! given its 8-byte length and then its payload (not atomic). Downstream,
//! the replica's file streamer must hold exactly the blocks' net changes.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, p};
use prost::Message as _;
use serde_json::Value;

/// One deadline for the whole test.
const DEADLINE: Duration = Duration::from_secs(240);

// Cosmos's messages, with the fields the SDK's file streamer writes (field
// numbers as in the SDK and CometBFT v0.37).

#[derive(Clone, PartialEq, prost::Message)]
struct StoreKvPair {
    #[prost(string, tag = "1")]
    store_key: String,
    #[prost(bool, tag = "2")]
    delete: bool,
    #[prost(bytes = "vec", tag = "3")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Header {
    #[prost(string, tag = "2")]
    chain_id: String,
    #[prost(int64, tag = "3")]
    height: i64,
    #[prost(message, optional, tag = "4")]
    time: Option<prost_types::Timestamp>,
    #[prost(bytes = "vec", tag = "11")]
    app_hash: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RequestBeginBlock {
    #[prost(bytes = "vec", tag = "1")]
    hash: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    header: Option<Header>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(string, tag = "1")]
    kind: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResponseBeginBlock {
    #[prost(message, repeated, tag = "1")]
    events: Vec<Event>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RequestDeliverTx {
    #[prost(bytes = "vec", tag = "1")]
    tx: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResponseDeliverTx {
    #[prost(uint32, tag = "1")]
    code: u32,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DeliverTx {
    #[prost(message, optional, tag = "1")]
    request: Option<RequestDeliverTx>,
    #[prost(message, optional, tag = "2")]
    response: Option<ResponseDeliverTx>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RequestEndBlock {
    #[prost(int64, tag = "1")]
    height: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResponseCommit {
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
    #[prost(int64, tag = "3")]
    retain_height: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CosmosBlockMetadata {
    #[prost(message, optional, tag = "1")]
    request_begin_block: Option<RequestBeginBlock>,
    #[prost(message, optional, tag = "2")]
    response_begin_block: Option<ResponseBeginBlock>,
    #[prost(message, repeated, tag = "3")]
    deliver_txs: Vec<DeliverTx>,
    #[prost(message, optional, tag = "4")]
    request_end_block: Option<RequestEndBlock>,
    #[prost(message, optional, tag = "6")]
    response_commit: Option<ResponseCommit>,
}

const STORES: [&str; 4] = ["acc", "bank", "distribution", "staking"];

/// The chain's block `height`: its writes (per store in the order the
/// chain made them, with repeated keys and deletes, stores in name order as
/// the SDK's file streamer writes them), its time and app hash.
struct ChainBlock {
    height: u64,
    writes: Vec<(String, Vec<u8>, Option<Vec<u8>>)>,
    time: i64,
    app_hash: Vec<u8>,
    txs: usize,
}

fn chain_block(height: u64) -> ChainBlock {
    let mut writes = Vec::new();
    // Every fifth block changes nothing.
    if height % 5 != 3 {
        for (i, store) in STORES.iter().enumerate() {
            let n = (height as usize + i) % 4 + 1;
            for j in (0..n).rev() {
                let key = format!("{store}/{}", (height as usize * 7 + j * 3) % 11).into_bytes();
                writes.push((
                    store.to_string(),
                    key.clone(),
                    Some(format!("{store}-{height}-{j}").into_bytes()),
                ));
                // The same key again in the block: the last write wins.
                if j == 0 {
                    writes.push((
                        store.to_string(),
                        key,
                        Some(format!("{store}-{height}-last").into_bytes()),
                    ));
                }
            }
            if height.is_multiple_of(3) {
                let key = format!("{store}/{}", (height as usize * 5) % 11).into_bytes();
                writes.push((store.to_string(), key, None));
            }
        }
    }
    ChainBlock {
        height,
        writes,
        time: 1_700_000_000 + height as i64 * 6,
        app_hash: format!("iavl-root-{height:08}-xxxxxxxxxxxxxxx").into_bytes(),
        txs: (height % 3) as usize,
    }
}

impl ChainBlock {
    fn meta(&self) -> Vec<u8> {
        let h = i64::try_from(self.height).unwrap();
        CosmosBlockMetadata {
            request_begin_block: Some(RequestBeginBlock {
                hash: vec![0xab; 32],
                header: Some(Header {
                    chain_id: "testchain-1".into(),
                    height: h,
                    time: Some(prost_types::Timestamp {
                        seconds: self.time,
                        nanos: 250_000_000,
                    }),
                    app_hash: vec![0xcd; 32],
                }),
            }),
            response_begin_block: Some(ResponseBeginBlock {
                events: vec![Event {
                    kind: "mint".into(),
                }],
            }),
            deliver_txs: (0..self.txs)
                .map(|i| DeliverTx {
                    request: Some(RequestDeliverTx {
                        tx: format!("tx-{}-{i}", self.height).into_bytes(),
                    }),
                    response: Some(ResponseDeliverTx {
                        code: 0,
                        data: vec![i as u8; 3],
                    }),
                })
                .collect(),
            request_end_block: Some(RequestEndBlock { height: h }),
            response_commit: Some(ResponseCommit {
                data: self.app_hash.clone(),
                retain_height: 0,
            }),
        }
        .encode_to_vec()
    }

    fn data(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (store, key, value) in &self.writes {
            StoreKvPair {
                store_key: store.clone(),
                delete: value.is_none(),
                key: key.clone(),
                value: value.clone().unwrap_or_default(),
            }
            .encode_length_delimited(&mut out)
            .unwrap();
        }
        out
    }

    /// The block's net change as `dump --json` prints it.
    fn expected(&self) -> Vec<(u64, String, String, Value)> {
        let mut net = BTreeMap::new();
        for (store, key, value) in &self.writes {
            net.insert((store.clone(), key.clone()), value.clone());
        }
        net.into_iter()
            .map(|((store, key), value)| {
                (
                    self.height,
                    store,
                    hex(&key),
                    value.map_or(Value::Null, |v| Value::from(hex(&v))),
                )
            })
            .collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The SDK's `writeLengthPrefixedFile`: final name, truncate, the length,
/// then the payload. Returns the open file when told to stop after `cut`
/// bytes (a writer caught in the middle).
fn write_length_prefixed(path: &Path, payload: &[u8], cut: Option<usize>) -> Option<File> {
    let mut bytes = (payload.len() as u64).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    let mut f = File::create(path).unwrap();
    match cut {
        None => {
            f.write_all(&bytes).unwrap();
            None
        }
        Some(cut) => {
            f.write_all(&bytes[..cut]).unwrap();
            f.flush().unwrap();
            Some(f)
        }
    }
}

/// The chain's file streamer (`prefix = "chain"`).
struct Writer {
    dir: PathBuf,
}

impl Writer {
    fn path(&self, height: u64, kind: &str) -> PathBuf {
        self.dir.join(format!("chain-block-{height}-{kind}"))
    }

    fn write(&self, height: u64) {
        let b = chain_block(height);
        write_length_prefixed(&self.path(height, "meta"), &b.meta(), None);
        write_length_prefixed(&self.path(height, "data"), &b.data(), None);
    }

    /// Writes the meta file, then the data file up to `cut` bytes;
    /// returns the data file and the bytes still to write.
    fn write_partly(&self, height: u64, cut: usize) -> (File, Vec<u8>) {
        let b = chain_block(height);
        write_length_prefixed(&self.path(height, "meta"), &b.meta(), None);
        let data = b.data();
        let mut whole = (data.len() as u64).to_be_bytes().to_vec();
        whole.extend_from_slice(&data);
        assert!(cut < whole.len());
        let f = write_length_prefixed(&self.path(height, "data"), &data, Some(cut)).unwrap();
        (f, whole[cut..].to_vec())
    }
}

/// A running `statestream ingest-files`, killed if the test fails.
struct Follower {
    child: Option<Child>,
}

impl Follower {
    fn start(chain: &Path, home: &Path, log: &Path) -> Follower {
        Follower::start_with(chain, home, log, &["--prefix", "chain"])
    }

    fn start_with(chain: &Path, home: &Path, log: &Path, extra: &[&str]) -> Follower {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["ingest-files", p(chain), "--home", p(home)])
            .args(extra)
            .args(["--poll-ms", "20"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        Follower { child: Some(child) }
    }

    /// SIGTERM, then the exit status and stdout (which must be empty).
    fn stop(self, deadline: Instant) -> (std::process::ExitStatus, String) {
        let child = self.child.as_ref().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        self.exit(deadline)
    }

    /// Waits for the process to exit by itself: its status and stdout.
    fn exit(mut self, deadline: Instant) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ingest-files did not exit before the deadline");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        (status, out)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait(deadline: Instant, what: &str, mut cond: impl FnMut() -> bool) {
    let left = deadline.saturating_duration_since(Instant::now());
    statestream_test_support::wait_for_within(what, left, &mut cond);
}

fn dump(dir: &Path) -> Vec<(u64, String, String, Value)> {
    let out = Command::new(BIN)
        .args(["dump", p(dir), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "dump: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["height"].as_u64().unwrap(),
                v["store"].as_str().unwrap().to_string(),
                v["key"].as_str().unwrap().to_string(),
                v["value"].clone(),
            )
        })
        .collect()
}

#[test]
fn ingest_files_follows_a_cosmos_file_streamer_through_torn_files_and_a_restart() {
    let deadline = Instant::now() + DEADLINE;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let chain = tmp.path().join("chain");
    let log = tmp.path().join("ingest.log");
    std::fs::create_dir_all(&chain).unwrap();
    let out = Command::new(BIN)
        .args(["init", "--home", p(&home)])
        .output()
        .unwrap();
    assert!(out.status.success(), "init: {out:?}");
    let files = home.join("data/streaming");
    let has = |h: u64| files.join(format!("block-{h}-meta")).exists();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let writer = Writer { dir: chain.clone() };

    // The chain was at 1000 when its streamer was turned on: the replica
    // starts there.
    for h in 1000..=1004 {
        writer.write(h);
    }
    let follower = Follower::start(&chain, &home, &log);
    for h in 1005..=1009 {
        writer.write(h);
    }
    wait(deadline, "block 1009 downstream", || has(1009));

    // The writer stopped inside the data file's payload, then inside its
    // length prefix: the block is waited for, not read.
    let (mut torn, rest) = writer.write_partly(1010, 20);
    wait(
        deadline,
        "ingest-files to see the torn block-1010-data",
        || log_text().contains("chain-block-1010-data is being written (20 of"),
    );
    assert!(!files.join("block-1010-data").exists());
    torn.write_all(&rest).unwrap();
    drop(torn);
    let (mut torn, rest) = writer.write_partly(1011, 3);
    wait(
        deadline,
        "ingest-files to see the torn block-1011-data",
        || log_text().contains("chain-block-1011-data is being written (3 of 8 bytes)"),
    );
    // Block 1010 was taken once whole (the file streamer writes its files
    // as it delivers, maybe after the commit); 1011 is not.
    wait(deadline, "block 1010 downstream", || has(1010));
    assert!(!files.join("block-1011-data").exists());
    torn.write_all(&rest).unwrap();
    drop(torn);
    for h in 1012..=1014 {
        writer.write(h);
    }
    wait(deadline, "block 1014 downstream", || has(1014));
    let (status, stdout) = follower.stop(deadline);
    assert!(status.success(), "{status}; log:\n{}", log_text());
    assert_eq!(stdout, "", "ingest-files wrote on stdout");

    // Blocks written while it was down are taken at the next start, which
    // resumes after the replica's height.
    for h in 1015..=1019 {
        writer.write(h);
    }
    let follower = Follower::start(&chain, &home, &log);
    wait(deadline, "block 1019 downstream", || has(1019));
    let (status, _) = follower.stop(deadline);
    let text = log_text();
    assert!(status.success(), "{status}; log:\n{text}");
    assert!(text.contains("replica_height=1014"), "{text}");
    assert!(!text.contains("ERROR"), "{text}");

    let expected: Vec<_> = (1000..=1019)
        .flat_map(|h| chain_block(h).expected())
        .collect();
    assert!(expected.len() > 100);
    assert_eq!(dump(&files), expected);
    let out = Command::new(BIN)
        .args(["verify", p(&files)])
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "verify: {report}");
    assert!(report.contains("20 blocks"), "{report}");

    // The chain's app hash, time and transactions from the meta files.
    for h in [1000, 1010, 1011, 1019] {
        let bytes = std::fs::read(files.join(format!("block-{h}-meta"))).unwrap();
        let meta = statestream_core::proto::BlockMetadata::decode(&bytes[8..]).unwrap();
        let b = chain_block(h);
        assert_eq!(meta.height, h);
        assert_eq!(meta.source_app_hash, b.app_hash, "block {h}");
        assert_eq!((meta.time_seconds, meta.time_nanos), (b.time, 250_000_000));
        assert_eq!(meta.txs.len(), b.txs, "block {h}");
        // The rest of Cosmos's metadata, as Cosmos encodes it.
        let kept = CosmosBlockMetadata::decode(meta.begin_block.as_slice()).unwrap();
        let mut sent = CosmosBlockMetadata::decode(b.meta().as_slice()).unwrap();
        sent.deliver_txs.clear();
        assert_eq!(kept, sent, "block {h}");
        assert_ne!(meta.commit.unwrap().app_hash, b.app_hash);
    }
}

fn try_get(address: &str, path: &str) -> Option<String> {
    ureq::get(&format!("http://{address}{path}"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()
}

fn get(address: &str, path: &str) -> String {
    try_get(address, path).unwrap_or_else(|| panic!("GET http://{address}{path} failed"))
}

fn init(home: &Path, extra: &str) {
    let out = Command::new(BIN)
        .args(["init", "--home", p(home)])
        .output()
        .unwrap();
    assert!(out.status.success(), "init: {out:?}");
    let config = home.join("config/app.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(extra);
    std::fs::write(config, text).unwrap();
}

/// Block files a statestream node wrote, with blocks 4 and 5 gone: taken
/// with their app hash as the source's; the gap is recorded and shown on
/// `/status` and `/metrics`, or refused with `on_gap = "halt"`.
#[test]
fn ingest_files_takes_statestream_files_and_shows_gaps_on_status() {
    let deadline = Instant::now() + DEADLINE;
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("node");
    init(&node, "");
    let out = Command::new(BIN)
        .args(["node", "--home", p(&node), "--blocks", "8", "--seed", "7"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "node: {out:?}");
    let source = node.join("data/streaming");
    for h in [4, 5] {
        for kind in ["data", "meta"] {
            std::fs::remove_file(source.join(format!("block-{h}-{kind}"))).unwrap();
        }
    }

    let replica = tmp.path().join("replica");
    init(
        &replica,
        "\n[telemetry]\naddress = \"127.0.0.1:0\"\nallowed_hosts = [\"replica.example\"]\n",
    );
    let log = tmp.path().join("replica.log");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let files = replica.join("data/streaming");
    let follower = Follower::start_with(&source, &replica, &log, &[]);
    wait(deadline, "block 8 in the replica's files", || {
        files.join("block-8-meta").exists()
    });
    // The streamers start again past the gap and after the block that
    // showed a new store; the telemetry server stays, on the address it
    // logged once, and shows the new ones.
    let listening = || {
        log_text()
            .lines()
            .filter(|l| l.contains("telemetry server listening"))
            .filter_map(|l| l.split("address=").nth(1)?.split_whitespace().next())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let mut address = String::new();
    let mut status = Value::Null;
    wait(deadline, "/status at height 8", || {
        let Some(first) = listening().into_iter().next() else {
            return false;
        };
        address = first;
        status = try_get(&address, "/status")
            .and_then(|body| serde_json::from_str(&body).ok())
            .unwrap_or(Value::Null);
        status["ingest"]["height"] == 8
    });
    let gap = serde_json::json!({"first_missing": 4, "last_missing": 5});
    assert_eq!(status["ingest"]["height"], 8, "{status}");
    assert_eq!(
        status["ingest"]["gaps"],
        serde_json::json!([gap]),
        "{status}"
    );
    assert_eq!(status["ingest"]["gaps_total"], 1, "{status}");
    assert_eq!(status["ingest"]["last_gap"], gap, "{status}");
    // The home's [telemetry] options apply, as on a node.
    let named = ureq::get(&format!("http://{address}/healthz"))
        .header("Host", "replica.example")
        .call()
        .expect("a host in allowed_hosts is answered");
    assert_eq!(named.status().as_u16(), 200);
    let metrics = get(&address, "/metrics");
    assert!(
        metrics.contains("statestream_ingest_gaps_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("statestream_ingest_gaps_recorded 1"),
        "{metrics}"
    );
    assert!(metrics.contains("statestream_ingest_height 8"), "{metrics}");
    assert_eq!(listening(), [address.clone()], "one telemetry server");
    let (status, _) = follower.stop(deadline);
    assert!(status.success(), "{status}; log:\n{}", log_text());
    assert!(log_text().contains("blocks missing from the directory"));

    // The same records; the source's own app hash kept as the source's.
    assert_eq!(dump(&files), dump(&source));
    for h in [1, 6, 8] {
        let read = |dir: &Path| {
            let bytes = std::fs::read(dir.join(format!("block-{h}-meta"))).unwrap();
            statestream_core::proto::BlockMetadata::decode(&bytes[8..]).unwrap()
        };
        let (theirs, ours) = (read(&source), read(&files));
        assert_eq!(ours.source_app_hash, theirs.commit.unwrap().app_hash);
        assert_eq!(ours.time_seconds, theirs.time_seconds);
        assert_eq!(ours.txs, theirs.txs);
    }

    // With on_gap = "halt" the block past the gap is refused: the command
    // stops with an error naming the missing heights.
    let halting = tmp.path().join("halting");
    init(&halting, "\n[cosmos]\non_gap = \"halt\"\n");
    let log = tmp.path().join("halting.log");
    let (status, _) = Follower::start_with(&source, &halting, &log, &[]).exit(deadline);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("heights 4..=5 were never received"), "{text}");
    assert!(halting.join("data/streaming/block-3-meta").exists());
    assert!(!halting.join("data/streaming/block-6-data").exists());
}

/// Bad input is an error naming the file, never a panic: a block file
/// longer than its length prefix, a record that does not decode, a meta
/// file that is neither Cosmos's nor statestream's; and a prefix that is
/// not a file-name fragment.
#[test]
fn ingest_files_refuses_bad_files_naming_them() {
    let deadline = Instant::now() + DEADLINE;
    let tmp = tempfile::tempdir().unwrap();
    let framed = |payload: &[u8]| {
        let mut b = (payload.len() as u64).to_be_bytes().to_vec();
        b.extend_from_slice(payload);
        b
    };
    let mut longer = framed(b"");
    longer.push(0);
    // (name, data file, meta file, what the error says)
    type Case = (&'static str, Vec<u8>, Option<Vec<u8>>, &'static str);
    let cases: [Case; 3] = [
        (
            "longer",
            longer,
            None,
            "more than its length prefix announces",
        ),
        (
            "record",
            framed(&[0x05, 0x0a, 0x09, b'a', b'c', b'c']),
            None,
            "a record does not decode",
        ),
        (
            "meta",
            framed(b""),
            Some(framed(&[0x0a, 0x7f])),
            "not a block's metadata",
        ),
    ];
    for (name, data, meta, message) in cases {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("block-9-data"), data).unwrap();
        if let Some(meta) = meta {
            std::fs::write(dir.join("block-9-meta"), meta).unwrap();
        }
        let log = tmp.path().join(format!("{name}.log"));
        let home = tmp.path().join(format!("{name}-home"));
        let (status, stdout) = Follower::start_with(&dir, &home, &log, &[]).exit(deadline);
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(1), "{name}: {text}");
        assert_eq!(stdout, "", "{name}");
        assert!(
            text.contains(&format!("{}", dir.join("block-9").display())),
            "{name}: {text}"
        );
        assert!(text.contains(message), "{name}: {text}");
        assert!(
            !text.contains("panicked") && !text.contains("internal error"),
            "{name}: {text}"
        );
    }
    let out = Command::new(BIN)
        .args([
            "ingest-files",
            p(tmp.path()),
            "--home",
            p(&tmp.path().join("h")),
        ])
        .args(["--prefix", "a/b"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("prefix"), "{err}");
}
