//! Run-time subscriptions in the real node, through `statestream
//! subscriptions` and the admin API: three subscriptions created while
//! blocks commit, each with its own receiver, get exactly the changes of
//! their filter from their start height, as the block files hold them,
//! across a SIGTERM and a SIGKILL restart; a credential cannot subscribe
//! outside its scopes (403) nor see the operator's subscriptions (404);
//! bad input is a clear 400 with nothing created.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../../streaming-webhook/tests/it/receiver.rs"]
mod receiver;

use receiver::{Received, Receiver};
use serde_json::{Value, json};

mod common;

use common::{BIN, Proc, p};
const ADMIN_TOKEN: &str = "the-admin-token";

const APP_TOML: &str = r#"
[store]
streamers = ["file"]

[streamers.file]
keys = ["*"]
write_dir = "data/streaming"

[admin]
address = "127.0.0.1:0"
token_file = "admin-token"
"#;

/// A running node, killed if the test fails before stopping it.
struct Node {
    proc: Proc,
    admin: String,
}

impl Node {
    fn start(home: &Path) -> Node {
        let config = home.join("app.toml");
        let proc = Proc::node(home, &["--config", p(&config)]);
        Node {
            admin: format!("http://{}", proc.address("admin API listening")),
            proc,
        }
    }

    /// SIGTERM (a clean stop, waited for) or SIGKILL.
    fn signal(self, signal: libc::c_int) {
        if signal == libc::SIGKILL {
            self.proc.kill();
        } else {
            let status = self.proc.stop();
            assert!(status.success(), "{status:?}");
        }
    }

    /// `statestream subscriptions ARGS --admin URL --json` with `token`:
    /// the answer, or the failure's stderr.
    fn cli(&self, token: &str, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(BIN)
            .arg("subscriptions")
            .args(args)
            .args(["--admin", &self.admin, "--json"])
            .env("STATESTREAM_ADMIN_TOKEN", token)
            .output()
            .expect("run statestream subscriptions");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))
    }

    fn create(&self, token: &str, dir: &Path, name: &str, doc: Value) -> Result<Value, String> {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, doc.to_string()).expect("write the subscription");
        self.cli(
            token,
            &["create", "--file", file.to_str().expect("UTF-8 path")],
        )
    }

    /// Waits until every subscription's cursor is at least `height`.
    fn wait_cursors(&self, ids: &[&str], height: u64) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let list = self.cli(ADMIN_TOKEN, &["list"]).expect("list");
            let behind: Vec<String> = list["subscriptions"]
                .as_array()
                .expect("a list")
                .iter()
                .filter(|s| ids.contains(&s["id"].as_str().unwrap_or("")))
                .filter(|s| s["cursor"].as_u64().unwrap_or(0) < height)
                .map(|s| format!("{} at {}", s["id"], s["cursor"]))
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the subscriptions to reach {height}: {behind:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn height(&self) -> u64 {
        // Any subscription "latest" answers its start: the next block.
        self.cli(ADMIN_TOKEN, &["list"])
            .expect("list")
            .get("subscriptions")
            .and_then(Value::as_array)
            .and_then(|l| l.iter().filter_map(|s| s["cursor"].as_u64()).max())
            .unwrap_or(0)
    }
}

/// (height, store, key) of every change in the block files.
fn changes_in_files(dir: &Path) -> BTreeSet<(u64, String, String, bool)> {
    let out = Command::new(BIN)
        .args(["dump", dir.to_str().expect("UTF-8"), "--json"])
        .output()
        .expect("dump runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("JSON line");
            (
                v["height"].as_u64().expect("height"),
                v["store"].as_str().expect("store").to_owned(),
                v["key_utf8"].as_str().expect("printable key").to_owned(),
                v["delete"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// (height, store, key) of every change a receiver got (deduplicated).
fn received(got: &[Received]) -> BTreeSet<(u64, String, String)> {
    got.iter()
        .map(|r| {
            let j = r.json();
            (
                j["height"].as_u64().expect("height"),
                j["store"].as_str().expect("store").to_owned(),
                j["key"].as_str().expect("key").to_owned(),
            )
        })
        .collect()
}

/// `got == want`, showing only the differences.
fn same(got: &BTreeSet<(u64, String, String)>, want: &BTreeSet<(u64, String, String)>, what: &str) {
    let missing: Vec<_> = want.difference(got).take(10).collect();
    let extra: Vec<_> = got.difference(want).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, not in the files {extra:?} (got {}, want {})",
        got.len(),
        want.len()
    );
}

#[test]
fn subscriptions_in_the_node_survive_sigterm_and_sigkill_and_respect_scopes() {
    let home = tempfile::tempdir().expect("home");
    let home = home.path();
    std::fs::write(home.join("app.toml"), APP_TOML).expect("app.toml");
    std::fs::write(home.join("admin-token"), ADMIN_TOKEN).expect("token");
    let node = Node::start(home);

    // Bad input: a clear 400, nothing created.
    for (doc, words) in [
        (
            json!({"endpoint": {"url": "ftp://example.com/"}}),
            "only http and https",
        ),
        (
            json!({"endpoint": {"url": "http://example.com/{nope"}}),
            "endpoint.url",
        ),
        (
            json!({"endpoint": {"url": "http://example.com/"}, "colour": 1}),
            "colour",
        ),
    ] {
        let err = node
            .create(ADMIN_TOKEN, home, "bad", doc)
            .expect_err("refused");
        assert!(err.contains("400") && err.contains(words), "{err}");
    }
    let none = node.cli(ADMIN_TOKEN, &["list"]).expect("list");
    assert_eq!(none["subscriptions"], json!([]), "nothing created");

    let (all, bank, creates) = (Receiver::ok(), Receiver::ok(), Receiver::ok());
    let a = node
        .create(
            ADMIN_TOKEN,
            home,
            "all",
            json!({"endpoint": {"url": all.url()}}),
        )
        .expect("create all");
    std::thread::sleep(Duration::from_millis(200));
    let b = node
        .create(
            ADMIN_TOKEN,
            home,
            "bank",
            json!({"endpoint": {"url": bank.url()}, "filter": {"stores": ["bank"]}}),
        )
        .expect("create bank");
    std::thread::sleep(Duration::from_millis(200));
    let c = node
        .create(
            ADMIN_TOKEN,
            home,
            "creates",
            json!({
                "endpoint": {"url": creates.url()},
                "filter": {"stores": ["acc", "tmp"], "actions": ["create"]},
            }),
        )
        .expect("create creates");
    let ids = [
        a["id"].as_str().expect("id"),
        b["id"].as_str().expect("id"),
        c["id"].as_str().expect("id"),
    ];
    let starts = [
        a["start_height"].as_u64().expect("start"),
        b["start_height"].as_u64().expect("start"),
        c["start_height"].as_u64().expect("start"),
    ];
    assert!(
        a["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_"))
    );

    // Scopes: a credential reading bank/balances... only.
    let cred = Command::new(BIN)
        .args([
            "credentials",
            "create",
            "wallet",
            "--scope",
            "bank=balance",
            "--subscribe-webhooks",
            "--admin",
            &node.admin,
            "--json",
        ])
        .env("STATESTREAM_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("credentials create");
    assert!(cred.status.success(), "{cred:?}");
    let cred: Value = serde_json::from_slice(&cred.stdout).expect("JSON");
    let secret = cred["secret"].as_str().expect("secret").to_owned();
    let err = node
        .create(
            &secret,
            home,
            "outside",
            json!({"endpoint": {"url": "http://203.0.113.7/"}, "filter": {"stores": ["acc"]}}),
        )
        .expect_err("outside its scopes");
    assert!(err.contains("403"), "{err}");
    let err = node
        .cli(&secret, &["show", ids[0]])
        .expect_err("not its subscription");
    assert!(err.contains("404"), "{err}");
    let mine = node.cli(&secret, &["list"]).expect("list");
    assert_eq!(
        mine["subscriptions"],
        json!([]),
        "it sees none of the operator's"
    );
    // Within its scopes it may subscribe; once its credential is revoked
    // the subscription is disabled within a second, naming why: it never
    // reads more than its owner may.
    let owned = node
        .create(
            &secret,
            home,
            "owned",
            json!({
                "endpoint": {"url": "http://203.0.113.7/"},
                "filter": {"stores": ["bank"], "prefixes": ["balance"]},
                "disable_after_failures": 1000000,
            }),
        )
        .expect("within its scopes");
    let owned = owned["id"].as_str().expect("id").to_owned();
    let revoked = Command::new(BIN)
        .args(["credentials", "revoke", "wallet", "--admin", &node.admin])
        .env("STATESTREAM_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("credentials revoke");
    assert!(revoked.status.success(), "{revoked:?}");
    let mut shown = Value::Null;
    statestream_test_support::wait_for("the revoked owner's subscription disabled", || {
        shown = node.cli(ADMIN_TOKEN, &["show", &owned]).expect("show");
        shown["state"] == "disabled"
    });
    let reason = shown.to_string();
    assert!(
        reason.contains("wallet") && reason.contains("revoked"),
        "{shown}"
    );
    node.cli(ADMIN_TOKEN, &["delete", &owned]).expect("delete");

    // SIGTERM, restart, SIGKILL, restart.
    let h = node.height() + 10;
    node.wait_cursors(&ids, h);
    node.signal(libc::SIGTERM);
    let node = Node::start(home);
    let listed = node.cli(ADMIN_TOKEN, &["list"]).expect("list");
    assert_eq!(listed["subscriptions"].as_array().map(Vec::len), Some(3));
    let h = node.height() + 10;
    node.wait_cursors(&ids, h);
    node.signal(libc::SIGKILL);
    let node = Node::start(home);
    let h = node.height() + 10;
    node.wait_cursors(&ids, h);
    let shown = node.cli(ADMIN_TOKEN, &["show", ids[1]]).expect("show");
    assert_eq!(shown["state"], "active");
    let attempts = node
        .cli(ADMIN_TOKEN, &["attempts", ids[0], "--limit", "3"])
        .expect("attempts");
    assert_eq!(attempts["attempts"].as_array().map(Vec::len), Some(3));
    node.signal(libc::SIGTERM);

    let files = changes_in_files(&home.join("data/streaming"));
    let want = |start: u64, keep: &dyn Fn(&str, bool) -> bool| -> BTreeSet<(u64, String, String)> {
        files
            .iter()
            .filter(|(height, store, _, delete)| {
                *height >= start && *height <= h && keep(store, *delete)
            })
            .map(|(height, store, key, _)| (*height, store.clone(), key.clone()))
            .collect()
    };
    let upto = |got: BTreeSet<(u64, String, String)>| -> BTreeSet<(u64, String, String)> {
        got.into_iter()
            .filter(|(height, _, _)| *height <= h)
            .collect()
    };
    same(
        &upto(received(&all.requests())),
        &want(starts[0], &|_, _| true),
        "every change from its start, as the block files hold them",
    );
    same(
        &upto(received(&bank.requests())),
        &want(starts[1], &|s, _| s == "bank"),
        "bank only",
    );
    // Creates: the envelope's action says which changes created their
    // key; they are all in the files, in acc or tmp, and not deletes.
    let got_creates = upto(received(&creates.requests()));
    let files_acc_tmp = want(starts[2], &|s, delete| {
        (s == "acc" || s == "tmp") && !delete
    });
    assert!(
        got_creates.is_subset(&files_acc_tmp),
        "only acc and tmp sets"
    );
    assert!(
        creates
            .requests()
            .iter()
            .all(|r| r.json()["action"] == "create"),
        "only creates"
    );
    for r in all.requests() {
        r.verify(a["secret"].as_str().expect("secret"))
            .expect("a Standard Webhooks signature");
    }
}

#[test]
fn subscriptions_in_the_node_one_dead_endpoint_is_disabled_alone_then_catches_up_and_replays() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let home = tempfile::tempdir().expect("home");
    let home = home.path();
    std::fs::write(home.join("app.toml"), APP_TOML).expect("app.toml");
    std::fs::write(home.join("admin-token"), ADMIN_TOKEN).expect("token");
    let node = Node::start(home);
    let down = Arc::new(AtomicBool::new(true));
    let flaky = {
        let down = Arc::clone(&down);
        Receiver::start(move |_, _| {
            receiver::Reply::status(if down.load(Ordering::Acquire) {
                503
            } else {
                200
            })
        })
    };
    let healthy = Receiver::ok();
    let block = |url: String| {
        json!({"endpoint": {"url": url}, "batch": "block", "retry": {"schedule_ms": [0, 20]},
               "disable_after_failures": 3})
    };
    let h = node
        .create(ADMIN_TOKEN, home, "healthy", block(healthy.url()))
        .expect("create healthy");
    let f = node
        .create(ADMIN_TOKEN, home, "flaky", block(flaky.url()))
        .expect("create flaky");
    let (hid, fid) = (
        h["id"].as_str().expect("id").to_owned(),
        f["id"].as_str().expect("id").to_owned(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let disabled = loop {
        let shown = node.cli(ADMIN_TOKEN, &["show", &fid]).expect("show");
        if shown["state"] == "disabled" {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the disable: {shown}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stopped_at = disabled["disabled"]["height"].as_u64().expect("height");
    assert!(
        disabled["disabled"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("status 503")),
        "{disabled}"
    );
    let failed = node
        .cli(
            ADMIN_TOKEN,
            &["attempts", &fid, "--failed", "--limit", "100"],
        )
        .expect("attempts");
    assert!(
        failed["attempts"]
            .as_array()
            .is_some_and(|a| a.len() >= 6 && a.iter().all(|x| x["status"] == 503)),
        "{failed}"
    );
    // The healthy one goes on meanwhile.
    node.wait_cursors(&[&hid], stopped_at + 20);
    // A replay of what the healthy one delivered (the disabled one's cursor
    // holds those blocks): the same webhook-ids and bytes.
    let before = healthy.requests();
    let replay = node
        .cli(
            ADMIN_TOKEN,
            &[
                "replay",
                &hid,
                "--from",
                &stopped_at.to_string(),
                "--to",
                &(stopped_at + 4).to_string(),
            ],
        )
        .expect("replay");
    assert_eq!(replay["delivered"], 5, "{replay}");
    // Live deliveries go on beside the replay: only the replayed heights.
    let replayed = |r: &&Received| {
        r.json()["height"]
            .as_u64()
            .is_some_and(|h| (stopped_at..=stopped_at + 4).contains(&h))
    };
    let again: Vec<(String, Vec<u8>)> = healthy.requests()[before.len()..]
        .iter()
        .filter(replayed)
        .map(|r| (r.id().to_owned(), r.body.clone()))
        .collect();
    let first: Vec<(String, Vec<u8>)> = before
        .iter()
        .filter(|r| again.iter().any(|(id, _)| id == r.id()))
        .map(|r| (r.id().to_owned(), r.body.clone()))
        .collect();
    assert_eq!(again.len(), 5);
    assert_eq!(again, first, "the same webhook-ids and bytes");
    // Resume: it catches up completely, from the height it stopped at.
    down.store(false, Ordering::Release);
    node.cli(ADMIN_TOKEN, &["resume", &fid]).expect("resume");
    let target = node.height();
    node.wait_cursors(&[&fid], target);
    let heights: BTreeSet<u64> = flaky
        .requests()
        .iter()
        .map(|r| r.json()["height"].as_u64().expect("height"))
        .filter(|h| *h <= target)
        .collect();
    let start = f["start_height"].as_u64().expect("start");
    let blocks_with_changes: BTreeSet<u64> = (start..=target).collect();
    assert_eq!(heights, blocks_with_changes, "every block, nothing lost");
    node.signal(libc::SIGTERM);
}
