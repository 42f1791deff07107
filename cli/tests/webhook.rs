//! The webhook streamer in the real node: SIGKILLed while a delivery waits
//! for its retry, then restarted, nothing is lost. Every change of the
//! webhook's stores that the block files hold reached the receiver with a
//! 2xx at least once, and once per `webhook-id` after deduplication (every
//! attempt of one id carried the same bytes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
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
