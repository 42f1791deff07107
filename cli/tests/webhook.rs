//! The webhook streamer in the real node: SIGKILLed while a delivery waits
//! for its retry, then restarted, nothing is lost. Every change of the
//! webhook's stores that the block files hold reached the receiver with a
//! 2xx at least once, and once per `webhook-id` after deduplication (every
//! attempt of one id carried the same bytes).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../../streaming-webhook/tests/it/receiver.rs"]
mod receiver;

use receiver::{Receiver, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_statestream");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// (height, store, key as the envelope writes it) of every change of
/// `store` in the block files of `dir`.
fn changes_in_files(dir: &Path, store: &str) -> BTreeSet<(u64, String, String)> {
    let out = Command::new(BIN)
        .args(["dump", p(dir), "--json", "--store", store])
        .output()
        .expect("dump runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            (
                v["height"].as_u64().expect("height"),
                v["store"].as_str().expect("store").to_string(),
                // The demo's keys are printable: the envelope writes them as
                // they are.
                v["key_utf8"].as_str().expect("printable key").to_string(),
            )
        })
        .collect()
}

#[test]
fn webhook_node_sigkill_mid_retry_then_restart_loses_nothing() {
    let down = Arc::new(AtomicBool::new(true));
    // webhook-id -> the bodies answered 2xx.
    let delivered: Arc<Mutex<BTreeMap<String, Vec<Vec<u8>>>>> = Arc::default();
    let rx = {
        let down = Arc::clone(&down);
        let delivered = Arc::clone(&delivered);
        Receiver::start(move |req, _| {
            if down.load(Ordering::SeqCst) {
                return Reply::status(500);
            }
            req.verify(SECRET).expect("the signature verifies");
            delivered
                .lock()
                .unwrap()
                .entry(req.id().to_string())
                .or_default()
                .push(req.body.clone());
            Reply::status(200)
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let config = tmp.path().join("app.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nstreamers = [\"file\", \"hook\"]\n\n[streamers.file]\nkeys = [\"*\"]\n\n\
             [streamers.hook]\ntype = \"webhook\"\nkeys = [\"bank\"]\nurl = \"{}/{{store}}\"\n\
             secret = \"{SECRET}\"\nretry_schedule_ms = [0, 20, 50, 100, 200]\n\
             stop-node-on-error = false\n",
            rx.url()
        ),
    )
    .unwrap();

    // First run: the receiver fails every request; the node keeps
    // committing while the webhook retries, and is killed mid-retry.
    let mut node = Command::new(BIN)
        .args(["node", "--home", p(&home), "--config", p(&config)])
        .args(["--blocks", "0", "--block-time-ms", "10", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the node starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.requests().len() < 5 {
        assert!(Instant::now() < deadline, "no webhook attempts");
        std::thread::sleep(Duration::from_millis(10));
    }
    node.kill().expect("SIGKILL");
    node.wait().expect("reaped");
    assert!(delivered.lock().unwrap().is_empty());

    // Second run: the receiver is back; the node redelivers from its cursor
    // and closes cleanly, which delivers everything committed. (The store
    // fsyncs its commits, so the kill lost none: every block file is of a
    // committed block.)
    down.store(false, Ordering::SeqCst);
    let out = Command::new(BIN)
        .args(["node", "--home", p(&home), "--config", p(&config)])
        .args(["--blocks", "5"])
        .output()
        .expect("the node runs");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");

    let want = changes_in_files(&home.join("data/streaming"), "bank");
    assert!(!want.is_empty());
    let delivered = delivered.lock().unwrap();
    let mut got = BTreeSet::new();
    for (id, bodies) in delivered.iter() {
        assert!(
            bodies.windows(2).all(|w| w[0] == w[1]),
            "{id}: attempts with different bodies"
        );
        let v: serde_json::Value = serde_json::from_slice(&bodies[0]).expect("JSON envelope");
        assert_eq!(v["id"], id.as_str());
        let change = (
            v["height"].as_u64().expect("height"),
            v["store"].as_str().expect("store").to_string(),
            v["key"].as_str().expect("key").to_string(),
        );
        assert!(got.insert(change.clone()), "{change:?} under two ids");
    }
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}\n{log}");
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        extra.is_empty(),
        "delivered but in no block file: {extra:?}"
    );
}

/// A running node whose stderr is read on a thread (so a chatty node
/// cannot block on the pipe).
struct Node {
    child: Child,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Node {
    fn spawn(home: &Path, config: &Path, blocks: u64) -> Node {
        let mut child = Command::new(BIN)
            .args(["node", "--home", p(home), "--config", p(config)])
            .args(["--blocks", &blocks.to_string(), "--block-time-ms", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the node starts");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let reader = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text);
            text
        });
        Node {
            child,
            stderr: Some(reader),
        }
    }

    fn log(&mut self) -> Vec<u8> {
        self.stderr
            .take()
            .map(|r| r.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Waits for the node to exit; kills it (and fails, with its log) at
    /// `deadline`.
    fn wait(mut self, deadline: Instant) -> Output {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the node did not exit in time:\n{}",
                    String::from_utf8_lossy(&self.log())
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output {
            status,
            stdout: Vec::new(),
            stderr: self.log(),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A failed assertion must not leave the node running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the node to its end, killing it (and failing) if it has not exited
/// within `limit`.
fn run_node(home: &Path, config: &Path, blocks: u64, limit: Duration) -> Output {
    Node::spawn(home, config, blocks).wait(Instant::now() + limit)
}

#[test]
fn webhook_node_short_runs_with_a_flaky_receiver_each_exit_0_and_deliver_everything() {
    // The first attempt of every third block is answered 500; the retry
    // succeeds. Heights answered 2xx are collected.
    let delivered: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let rx = {
        let delivered = Arc::clone(&delivered);
        let mut tried = HashSet::new();
        Receiver::start(move |req, _| {
            let height: u64 = req.json()["height"].as_u64().expect("height");
            if tried.insert(req.id().to_string()) && height.is_multiple_of(3) {
                return Reply::status(500);
            }
            delivered.lock().unwrap().insert(height);
            Reply::status(200)
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let config = tmp.path().join("app.toml");
    let write_config = |drain_ms: u64| {
        std::fs::write(
            &config,
            format!(
                "[store]\nstreamers = [\"hook\"]\nshutdown_timeout_ms = {drain_ms}\n\n\
                 [streamers.hook]\ntype = \"webhook\"\nkeys = [\"*\"]\nbatch = \"block\"\n\
                 url = \"{}/\"\nsecret = \"{SECRET}\"\nretry_schedule_ms = [0, 300]\n\
                 stop-node-on-error = true\n",
                rx.url()
            ),
        )
        .unwrap();
    };
    // Short drains: a run ends while retries are still due, and each run
    // exits 0 all the same (a stop is not a failure), leaving the rest to
    // the next run.
    write_config(200);
    let mut committed = 0;
    let mut interrupted = 0;
    for run in 1..=3 {
        let out = run_node(&home, &config, 30, Duration::from_secs(60));
        committed += 30;
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "run {run}: {log}");
        assert!(!log.contains("failed at height"), "run {run}: {log}");
        if log.contains("delivery interrupted by the shutdown") {
            assert!(log.contains("resumes_at="), "run {run}: {log}");
            interrupted += 1;
        }
    }
    // The retries outlast the short drains: stops did cut deliveries.
    assert!(interrupted > 0, "no run was stopped mid-retry");
    // A run with a drain long enough for every retry: everything
    // committed so far reaches the receiver.
    write_config(60_000);
    let out = run_node(&home, &config, 1, Duration::from_secs(120));
    committed += 1;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let delivered = delivered.lock().unwrap().clone();
    let missing: Vec<u64> = (1..=committed).filter(|h| !delivered.contains(h)).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}\n{log}");
}

/// A TCP listener that accepts connections and never answers; stopped (and
/// its connections closed) when dropped.
struct Blackhole {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Blackhole {
    fn start() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        held.push(conn);
                    }
                }
            })
        };
        Blackhole {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn webhook_node_blackholed_endpoint_with_a_full_queue_stops_within_the_drain_limit() {
    let hole = Blackhole::start();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let config = tmp.path().join("app.toml");
    // Each request waits for its whole timeout (a minute); the queue is
    // full well before the node stops. Retrying once per queued block at
    // close would take a request timeout per queued block, minutes in all;
    // the limit below is one request timeout.
    std::fs::write(
        &config,
        format!(
            "[store]\nstreamers = [\"hook\"]\nshutdown_timeout_ms = 1000\n\n\
             [streamers.hook]\ntype = \"webhook\"\nkeys = [\"*\"]\nbatch = \"block\"\n\
             url = \"http://{}/\"\ntimeout_ms = 60000\nretry_schedule_ms = [0, 10]\n\
             queue = 2\nstop-node-on-error = false\n",
            hole.addr
        ),
    )
    .unwrap();
    // The limit is far below 30 request timeouts, far above the drain.
    let out = run_node(&home, &config, 30, Duration::from_secs(60));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("queue full"), "the queue never filled: {log}");
    assert!(log.contains("drain limit reached"), "{log}");
    assert!(log.contains("resumes_at=1"), "{log}");
}

#[test]
fn webhook_node_sigterm_mid_retry_exits_0_and_the_next_run_delivers_the_rest() {
    // Every first attempt fails; the retry, a minute later, would succeed.
    let delivered: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let rx = {
        let delivered = Arc::clone(&delivered);
        let mut tried = HashSet::new();
        Receiver::start(move |req, _| {
            if tried.insert(req.id().to_string()) {
                return Reply::status(500);
            }
            let height = req.json()["height"].as_u64().expect("height");
            delivered.lock().unwrap().insert(height);
            Reply::status(200)
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let config = tmp.path().join("app.toml");
    let write_config = |schedule: &str| {
        std::fs::write(
            &config,
            format!(
                "[store]\nstreamers = [\"hook\"]\nshutdown_timeout_ms = 300\n\n\
                 [streamers.hook]\ntype = \"webhook\"\nkeys = [\"*\"]\nbatch = \"block\"\n\
                 url = \"{}/\"\nretry_schedule_ms = {schedule}\nstop-node-on-error = true\n",
                rx.url()
            ),
        )
        .unwrap();
    };
    write_config("[0, 60000]");
    let deadline = Instant::now() + Duration::from_secs(60);
    let node = Node::spawn(&home, &config, 0);
    while rx.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no webhook attempt within a minute"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let term = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let out = node.wait(deadline);
    let (status, log) = (out.status, String::from_utf8_lossy(&out.stderr));
    assert!(status.success(), "{status:?}: {log}");
    assert!(
        log.contains("delivery interrupted by the shutdown"),
        "{log}"
    );
    assert!(log.contains("resumes_at=1"), "{log}");
    assert!(delivered.lock().unwrap().is_empty());

    // The next run, with a short retry, delivers everything from block 1.
    write_config("[0, 10]");
    let out = run_node(&home, &config, 1, Duration::from_secs(60));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let cursors = Command::new(BIN)
        .args(["cursors", "--home", p(&home), "--json"])
        .output()
        .expect("cursors runs");
    assert!(cursors.status.success(), "{cursors:?}");
    let v: serde_json::Value = serde_json::from_slice(&cursors.stdout).expect("JSON");
    let height = v["height"].as_u64().expect("height");
    assert_eq!(v["cursors"][0]["name"], "hook", "{v}");
    assert_eq!(v["cursors"][0]["height"], height, "{v}");
    let delivered = delivered.lock().unwrap().clone();
    assert_eq!(
        delivered,
        (1..=height).collect::<BTreeSet<u64>>(),
        "not every committed block reached the receiver"
    );
}
