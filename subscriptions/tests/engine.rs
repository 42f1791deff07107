//! The subscription engine on a real delivery manager and store, with real
//! HTTP receivers on loopback ports: filters and start heights, restart,
//! disable and resume, replay, secrets, bad input, ownership.

#[path = "../../streaming-webhook/tests/it/receiver.rs"]
#[allow(dead_code)]
mod receiver;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use receiver::{Received, Receiver, Reply};
use serde_json::json;
use statestream::store::{KvStore, MultiStore, StoreKey};
use statestream::{BlockMeta, DeliveryManager};
use statestream_subscriptions::{
    Caller, Engine, EngineOptions, Error, SUBSCRIPTIONS_TABLE, State, SubscriptionSpec,
};
use statestream_test_support::wait_for;

fn key(name: &str) -> StoreKey {
    StoreKey::new(name).expect("store name")
}

struct Node {
    store: MultiStore,
    manager: Option<DeliveryManager>,
    engine: Engine,
}

impl Node {
    fn open(path: &Path) -> Node {
        Node::open_with(path, EngineOptions::default())
    }

    fn open_with(path: &Path, options: EngineOptions) -> Node {
        let mut store = if path.exists() {
            MultiStore::open_existing(path, Default::default()).expect("reopen")
        } else {
            MultiStore::open(path, &[key("bank"), key("users")], Default::default()).expect("open")
        };
        let manager = DeliveryManager::builder().start(&mut store).expect("start");
        let engine = Engine::start(
            store.records(SUBSCRIPTIONS_TABLE),
            manager.runtime(),
            options,
        )
        .expect("engine");
        Node {
            store,
            manager: Some(manager),
            engine,
        }
    }

    /// One block: `writes` as (store, key, value or None for a delete).
    fn block(&mut self, writes: &[(&str, &str, Option<&str>)]) -> u64 {
        for (s, k, v) in writes {
            match v {
                Some(v) => self.store.set(&key(s), k.as_bytes(), v.as_bytes()),
                None => self.store.delete(&key(s), k.as_bytes()),
            }
            .expect("write");
        }
        let manager = self.manager.as_mut().expect("running");
        manager
            .commit(&mut self.store, BlockMeta::default())
            .expect("commit")
            .version
    }

    /// A block that writes `n`-th values under both stores.
    fn busy_block(&mut self) -> u64 {
        let h = self.store.version() + 1;
        let v = format!("{{\"n\": {h}}}");
        self.block(&[
            ("bank", &format!("balance/{}", h % 3), Some(&v)),
            ("bank", &format!("audit/{h}"), Some(&v)),
            ("users", &format!("user/{}", h % 2), Some(&v)),
        ])
    }

    fn close(mut self) {
        self.engine.close();
        if let Some(m) = self.manager.take() {
            m.close(&mut self.store).expect("close manager");
        }
        self.store.close().expect("close store");
    }
}

fn spec(v: serde_json::Value) -> SubscriptionSpec {
    SubscriptionSpec::from_json(v.to_string().as_bytes()).expect("valid spec")
}

/// (store, key, height) of every change a receiver got, from the
/// per-change envelopes.
fn changes(got: &[Received]) -> BTreeSet<(String, String, u64)> {
    got.iter()
        .map(|r| {
            let j = r.json();
            (
                j["store"].as_str().expect("store").to_owned(),
                j["key"].as_str().expect("key").to_owned(),
                j["height"].as_u64().expect("height"),
            )
        })
        .collect()
}

/// What the change log says a filter should deliver from `from` to `to`.
fn expected(
    store: &MultiStore,
    from: u64,
    to: u64,
    keep: impl Fn(&str, &str) -> bool,
) -> BTreeSet<(String, String, u64)> {
    let log = store.change_log();
    let mut out = BTreeSet::new();
    for h in from..=to {
        let cs = log.read(h).expect("block in the change log");
        for rec in cs.records() {
            let k = String::from_utf8(rec.key.to_vec()).expect("utf-8 key");
            if keep(rec.store, &k) {
                out.insert((rec.store.to_owned(), k, h));
            }
        }
    }
    out
}

#[test]
fn subscriptions_get_exactly_their_filter_from_their_start_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.redb");
    let mut node = Node::open(&path);
    // Every block stays in the change log for the expectations: a
    // subscription that starts at 1 and is paused holds it.
    let anchor = node
        .engine
        .create(
            Caller::Admin,
            spec(json!({"endpoint": {"url": "http://127.0.0.1:9/never"}, "start": {"height": 1}})),
        )
        .expect("anchor");
    node.engine.pause(Caller::Admin, &anchor.id).expect("pause");
    for _ in 0..3 {
        node.busy_block();
    }
    let (all, bank_balance, users_creates) = (Receiver::ok(), Receiver::ok(), Receiver::ok());
    // Created from another thread while blocks commit.
    let engine = node.engine.clone();
    let urls = (all.url(), bank_balance.url(), users_creates.url());
    let creator = std::thread::spawn(move || {
        let a = engine
            .create(
                Caller::Admin,
                spec(json!({"endpoint": {"url": urls.0}, "start": {"height": 2}})),
            )
            .expect("create all");
        let b = engine
            .create(
                Caller::Admin,
                spec(json!({
                    "endpoint": {"url": format!("{}/bank/{{key}}", urls.1)},
                    "filter": {"stores": ["bank"], "prefixes": ["balance/"]},
                    "start": {"height": 3}
                })),
            )
            .expect("create bank");
        let c = engine
            .create(
                Caller::Admin,
                spec(json!({
                    "endpoint": {"url": urls.2},
                    "filter": {"stores": ["users"], "actions": ["create"]},
                    "data": {"who": "users-{action}"},
                })),
            )
            .expect("create users");
        (a, b, c)
    });
    for _ in 0..5 {
        node.busy_block();
    }
    let (a, b, c) = creator.join().expect("creator thread");
    assert_eq!(a.state, State::Active);
    assert!(
        a.secret.as_deref().is_some_and(|s| s.starts_with("whsec_")),
        "the secret is shown at creation"
    );
    for _ in 0..4 {
        node.busy_block();
    }
    let top = node.store.version();
    let want_a = expected(&node.store, 2, top, |_, _| true);
    let want_b = expected(&node.store, 3, top, |s, k| {
        s == "bank" && k.starts_with("balance/")
    });
    // Users: created, so its start is the next block after its creation;
    // only keys created from there on (user/0 and user/1 exist by then).
    wait_for("the first two subscriptions to catch up", || {
        changes(&all.requests()).len() >= want_a.len()
            && changes(&bank_balance.requests()).len() >= want_b.len()
    });
    assert_eq!(changes(&all.requests()), want_a, "everything from 2 on");
    assert_eq!(
        changes(&bank_balance.requests()),
        want_b,
        "bank balance/ from 3 on"
    );
    assert!(
        changes(&users_creates.requests()).is_empty(),
        "users creates nothing new: user/0 and user/1 only get updates"
    );
    node.block(&[("users", "user/new", Some("{}"))]);
    let got = users_creates.wait_for(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["action"], "create");
    assert_eq!(got[0].json()["data"]["who"], "users-create");
    for r in all.requests().iter().chain(&bank_balance.requests()) {
        let secret = if r.path.starts_with("/bank/") {
            b.secret.as_deref()
        } else {
            a.secret.as_deref()
        };
        r.verify(secret.expect("secret"))
            .expect("a Standard Webhooks signature");
        assert!(r.id().starts_with("sub_"), "{}", r.id());
    }
    assert!(
        bank_balance
            .requests()
            .iter()
            .all(|r| r.path.starts_with("/bank/balance%2F")),
        "templated URL"
    );

    // Restart: the subscriptions come back and resume from their cursors.
    let before = changes(&all.requests()).len();
    node.close();
    let mut node = Node::open(&path);
    let listed = node.engine.list(Caller::Admin).expect("list");
    assert_eq!(listed.len(), 4, "every subscription is back");
    assert!(
        listed.iter().all(|v| v.secret.is_none()),
        "no secret in a list"
    );
    for _ in 0..3 {
        node.busy_block();
    }
    let top = node.store.version();
    let want_a = expected(&node.store, 2, top, |_, _| true);
    wait_for("delivery after the restart", || {
        changes(&all.requests()).len() >= want_a.len()
    });
    assert!(want_a.len() > before);
    assert_eq!(
        changes(&all.requests()),
        want_a,
        "nothing lost over the restart"
    );
    let c_after = node.engine.get(Caller::Admin, &c.id).expect("get");
    assert_eq!(c_after.state, State::Active);
    node.close();
}

#[test]
fn failing_endpoint_is_disabled_alone_and_resume_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::open(&dir.path().join("node.redb"));
    let down = Arc::new(AtomicBool::new(true));
    let dead = {
        let down = Arc::clone(&down);
        Receiver::start(move |_, _| {
            if down.load(Ordering::Acquire) {
                Reply::status(503)
            } else {
                Reply::status(200)
            }
        })
    };
    let healthy = Receiver::ok();
    let d = node
        .engine
        .create(
            Caller::Admin,
            spec(json!({
                "endpoint": {"url": dead.url()},
                "retry": {"schedule_ms": [0, 10]},
                "disable_after_failures": 3,
                "batch": "block",
            })),
        )
        .expect("create");
    let h = node
        .engine
        .create(
            Caller::Admin,
            spec(json!({"endpoint": {"url": healthy.url()}, "batch": "block"})),
        )
        .expect("create");
    let first = node.busy_block();
    wait_for("the failing subscription to be disabled", || {
        node.engine
            .get(Caller::Admin, &d.id)
            .is_ok_and(|v| v.state == State::Disabled)
    });
    let disabled = node.engine.get(Caller::Admin, &d.id).expect("get");
    let why = disabled.disabled.expect("disabled details");
    assert_eq!(
        why.height, first,
        "stopped at the block it could not deliver"
    );
    assert!(why.reason.contains("status 503"), "{}", why.reason);
    let failed = node
        .engine
        .attempts(Caller::Admin, &d.id, true, 100)
        .expect("attempts");
    assert!(failed.len() >= 6, "3 blocks x 2 attempts: {}", failed.len());
    assert!(
        failed
            .iter()
            .all(|a| a.status == Some(503) && a.height == first)
    );
    for _ in 0..4 {
        node.busy_block();
    }
    let top = node.store.version();
    wait_for("the healthy one to keep up", || {
        healthy.requests().len() as u64 > top - first
    });
    let status = node.engine.status().expect("status");
    let ds = status.iter().find(|s| s.id == d.id).expect("listed");
    assert_eq!(ds.state, State::Disabled);
    assert_eq!(ds.lag_blocks, top - (first - 1));
    // On /status and /metrics.
    let observer = node.manager.as_ref().expect("running").observer();
    observer.add_section("subscriptions", node.engine.status_section());
    let json = serde_json::to_value(observer.status()).expect("status JSON");
    let listed = json["subscriptions"]
        .as_array()
        .expect("a subscriptions list");
    assert!(
        listed
            .iter()
            .any(|s| s["id"] == d.id.as_str() && s["state"] == "disabled"),
        "{json}"
    );
    let registry = prometheus::Registry::new();
    registry
        .register(Box::new(node.engine.collector().expect("collector")))
        .expect("register");
    let families = registry.gather();
    let state = families
        .iter()
        .find(|f| f.name() == "statestream_subscription_state")
        .expect("state metric");
    let disabled_one = state.get_metric().iter().any(|m| {
        let labels: Vec<(&str, &str)> = m
            .get_label()
            .iter()
            .map(|l| (l.name(), l.value()))
            .collect();
        labels.contains(&("subscription", d.id.as_str()))
            && labels.contains(&("state", "disabled"))
            && m.get_gauge().get_value() == 1.0
    });
    assert!(disabled_one, "{state:?}");
    down.store(false, Ordering::Release);
    node.engine.resume(Caller::Admin, &d.id).expect("resume");
    wait_for("the resumed one to catch up", || {
        node.engine
            .get(Caller::Admin, &d.id)
            .is_ok_and(|v| v.cursor == top)
    });
    let heights: BTreeSet<u64> = dead
        .requests()
        .iter()
        .filter(|r| r.header("webhook-id").is_some())
        .map(|r| r.json()["height"].as_u64().expect("height"))
        .collect();
    assert_eq!(heights, (first..=top).collect(), "nothing lost");
    assert_eq!(
        healthy
            .requests()
            .iter()
            .map(|r| r.json()["height"].as_u64().expect("height"))
            .collect::<Vec<_>>(),
        (first..=top).collect::<Vec<_>>(),
        "the healthy one got every block once, in order"
    );
    let _ = h;
    node.close();
}

#[test]
fn replay_sends_the_same_ids_and_bytes_and_refuses_pruned_heights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::open(&dir.path().join("node.redb"));
    let r = Receiver::ok();
    let s = node
        .engine
        .create(Caller::Admin, spec(json!({"endpoint": {"url": r.url()}})))
        .expect("create");
    for _ in 0..4 {
        node.busy_block();
    }
    let top = node.store.version();
    wait_for("delivery", || {
        node.engine
            .get(Caller::Admin, &s.id)
            .is_ok_and(|v| v.cursor == top)
    });
    // The change log keeps only what a cursor needs: a commit after the
    // delivery prunes below the cursor.
    node.engine.pause(Caller::Admin, &s.id).expect("pause");
    node.busy_block();
    let err = node
        .engine
        .replay(Caller::Admin, &s.id, 1, top)
        .expect_err("pruned heights");
    assert!(
        matches!(err, Error::NotRetained { first_missing: 1, last_missing, .. } if last_missing == top),
        "{err}"
    );
    assert!(err.to_string().contains("no longer retained"), "{err}");
    assert_eq!(err.http_status(), 400);
    node.engine.resume(Caller::Admin, &s.id).expect("resume");
    node.busy_block();
    let top = node.store.version();
    wait_for("delivery", || {
        node.engine
            .get(Caller::Admin, &s.id)
            .is_ok_and(|v| v.cursor == top)
    });
    // Paused: its cursor holds the last blocks while we replay them.
    node.engine.pause(Caller::Admin, &s.id).expect("pause");
    let once: Vec<(String, Vec<u8>)> = r
        .requests()
        .iter()
        .filter(|q| q.json()["height"].as_u64().is_some_and(|h| h + 1 >= top))
        .map(|q| (q.id().to_owned(), q.body.clone()))
        .collect();
    assert_eq!(once.len(), 6, "two blocks of three changes");
    let before = r.requests().len();
    let summary = node
        .engine
        .replay(Caller::Admin, &s.id, top - 1, top)
        .expect("replay");
    assert_eq!(summary.requests as usize, once.len());
    assert_eq!(summary.delivered as usize, once.len());
    let again: Vec<(String, Vec<u8>)> = r.requests()[before..]
        .iter()
        .map(|q| (q.id().to_owned(), q.body.clone()))
        .collect();
    assert_eq!(again, once, "the same webhook-ids and bytes");
    let s2 = s;
    let err = node
        .engine
        .replay(Caller::Admin, &s2.id, top, top + 5)
        .expect_err("future heights");
    assert!(err.to_string().contains("not delivered yet"), "{err}");
    node.close();
}

#[test]
fn rotated_secret_signs_beside_the_old_one_and_test_event_is_signed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::open(&dir.path().join("node.redb"));
    let r = Receiver::ok();
    let s = node
        .engine
        .create(Caller::Admin, spec(json!({"endpoint": {"url": r.url()}})))
        .expect("create");
    let old = s.secret.clone().expect("secret");
    let attempt = node.engine.test(Caller::Admin, &s.id).expect("test event");
    assert_eq!(attempt.status, Some(200));
    let got = r.wait_for(1);
    assert_eq!(got[0].json()["type"], "statestream.test");
    got[0].verify(&old).expect("the test event is signed");
    let rotated = node
        .engine
        .rotate_secret(Caller::Admin, &s.id)
        .expect("rotate");
    let new = rotated.secret.expect("the new secret is shown");
    assert_ne!(new, old);
    node.busy_block();
    let got = r.wait_for(2);
    let last = got.last().expect("a delivery");
    let sig = last.header("webhook-signature").expect("signature");
    assert_eq!(
        sig.split(' ').count(),
        2,
        "two signatures during the grace: {sig}"
    );
    last.verify(&old).expect("the old secret still verifies");
    last.verify(&new).expect("the new secret verifies");
    node.close();
}

#[test]
fn bad_input_is_refused_clearly_and_nothing_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::open(&dir.path().join("node.redb"));
    let unknown = SubscriptionSpec::from_json(
        br#"{"endpoint": {"url": "http://example.com"}, "colour": "blue"}"#,
    )
    .expect_err("unknown field");
    assert!(unknown.to_string().contains("colour"), "{unknown}");
    let nested = SubscriptionSpec::from_json(
        br#"{"endpoint": {"url": "http://example.com", "verb": "PUT"}}"#,
    )
    .expect_err("unknown nested field");
    assert!(nested.to_string().contains("verb"), "{nested}");
    let cases = [
        (
            json!({"endpoint": {"url": "ftp://example.com/x"}}),
            Caller::Admin,
            "endpoint.url",
            "only http and https",
        ),
        (
            json!({"endpoint": {"url": "http://example.com/{nope"}}),
            Caller::Admin,
            "endpoint.url",
            "",
        ),
        (
            json!({"endpoint": {"url": "http://example.com/{colour}"}}),
            Caller::Admin,
            "endpoint.url",
            "colour",
        ),
        (
            json!({"endpoint": {"url": "http://127.0.0.1:8080/"}}),
            Caller::Credential("wallet"),
            "endpoint.url",
            "private address",
        ),
        (
            json!({"endpoint": {"url": "http://[::1]:8080/"}}),
            Caller::Credential("wallet"),
            "endpoint.url",
            "private address",
        ),
        (
            json!({"endpoint": {"url": "http://10.1.2.3/"}}),
            Caller::Credential("wallet"),
            "endpoint.url",
            "private address",
        ),
        (
            json!({"endpoint": {"url": "http://example.com"}, "filter": {"stores": ["nope"]}}),
            Caller::Admin,
            "filter.stores",
            "unknown store",
        ),
        (
            json!({"endpoint": {"url": "http://example.com"}, "delivery": {"success": ["7xx"]}}),
            Caller::Admin,
            "delivery.success",
            "7xx",
        ),
        (
            json!({"endpoint": {"url": "http://example.com"}, "rate_limit_per_s": 0}),
            Caller::Admin,
            "rate_limit_per_s",
            "positive",
        ),
        (
            json!({"endpoint": {"url": "http://example.com"}, "retry": {"schedule_ms": []}}),
            Caller::Admin,
            "retry.schedule_ms",
            "empty",
        ),
    ];
    for (body, caller, field, words) in cases {
        let err = node
            .engine
            .create(caller, spec(body.clone()))
            .expect_err("refused");
        assert_eq!(err.http_status(), 400, "{body}: {err}");
        let text = err.to_string();
        assert!(text.starts_with(field), "{body}: {text}");
        assert!(text.contains(words), "{body}: {text}");
    }
    assert!(
        node.engine.list(Caller::Admin).expect("list").is_empty(),
        "nothing created"
    );
    assert!(
        node.store
            .records(SUBSCRIPTIONS_TABLE)
            .list()
            .expect("records")
            .is_empty()
    );
    node.close();
}

#[test]
fn a_credential_sees_only_its_own_subscriptions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::open(&dir.path().join("node.redb"));
    let url = "http://127.0.0.1:9/";
    let mine = node
        .engine
        .create(Caller::Admin, spec(json!({"endpoint": {"url": url}})))
        .expect("operator's");
    let err = node
        .engine
        .get(Caller::Credential("wallet"), &mine.id)
        .expect_err("not theirs");
    assert_eq!(err.http_status(), 404);
    for r in [
        node.engine
            .pause(Caller::Credential("wallet"), &mine.id)
            .err(),
        node.engine
            .delete(Caller::Credential("wallet"), &mine.id)
            .err(),
        node.engine
            .rotate_secret(Caller::Credential("wallet"), &mine.id)
            .err(),
    ] {
        assert_eq!(r.map(|e| e.http_status()), Some(404));
    }
    assert!(
        node.engine
            .list(Caller::Credential("wallet"))
            .expect("list")
            .is_empty()
    );
    assert_eq!(node.engine.list(Caller::Admin).expect("list").len(), 1);
    node.close();
}

#[test]
fn skip_unchanged_rate_limit_and_patch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::open(&dir.path().join("node.redb"));
    let status = Arc::new(AtomicU16::new(200));
    let r = {
        let status = Arc::clone(&status);
        Receiver::start(move |_, _| Reply::status(status.load(Ordering::Acquire)))
    };
    let s = node
        .engine
        .create(
            Caller::Admin,
            spec(json!({
                "endpoint": {"url": r.url()},
                "skip_unchanged": true,
                "rate_limit_per_s": 20,
                "filter": {"stores": ["bank"]},
            })),
        )
        .expect("create");
    node.block(&[("bank", "a", Some("1"))]);
    node.block(&[("bank", "a", Some("1")), ("bank", "b", Some("1"))]);
    node.block(&[("bank", "a", Some("2"))]);
    node.block(&[("bank", "a", Some("2"))]);
    node.block(&[("bank", "a", None)]);
    node.block(&[("bank", "a", Some("2"))]);
    let top = node.store.version();
    wait_for("delivery", || {
        node.engine
            .get(Caller::Admin, &s.id)
            .is_ok_and(|v| v.cursor == top)
    });
    let got: Vec<(String, u64)> = r
        .requests()
        .iter()
        .map(|q| {
            let j = q.json();
            (
                j["key"].as_str().expect("key").to_owned(),
                j["height"].as_u64().expect("h"),
            )
        })
        .collect();
    let h = top - 5;
    assert_eq!(
        got,
        vec![
            ("a".into(), h),
            ("b".into(), h + 1),
            ("a".into(), h + 2),
            ("a".into(), h + 4),
            ("a".into(), h + 5),
        ],
        "sets of the value a key already had are not delivered"
    );
    // A burst beyond the limit waits rather than fails.
    let many: Vec<(String, String)> = (0..30).map(|i| (format!("k{i}"), "x".to_owned())).collect();
    let writes: Vec<(&str, &str, Option<&str>)> = many
        .iter()
        .map(|(k, v)| ("bank", k.as_str(), Some(v.as_str())))
        .collect();
    node.block(&writes);
    let top = node.store.version();
    wait_for("the rate-limited block", || {
        node.engine
            .get(Caller::Admin, &s.id)
            .is_ok_and(|v| v.cursor == top)
    });
    let st = node.engine.status().expect("status");
    let mine = st.iter().find(|x| x.id == s.id).expect("listed");
    assert!(mine.rate_limited > 0, "the limit was waited for: {mine:?}");
    assert_eq!(mine.failed, 0, "waiting is not a failure");
    // PATCH: a discard code; a start change is refused.
    let patched = node
        .engine
        .patch(
            Caller::Admin,
            &s.id,
            &json!({"delivery": {"discard": [418]}, "rate_limit_per_s": null}),
        )
        .expect("patch");
    assert_eq!(patched.spec.rate_limit_per_s, None);
    status.store(418, Ordering::Release);
    node.block(&[("bank", "c", Some("1"))]);
    let top = node.store.version();
    wait_for("a discarded delivery to advance the cursor", || {
        node.engine
            .get(Caller::Admin, &s.id)
            .is_ok_and(|v| v.cursor == top)
    });
    let err = node
        .engine
        .patch(Caller::Admin, &s.id, &json!({"start": {"height": 1}}))
        .expect_err("start is fixed");
    assert!(err.to_string().starts_with("start"), "{err}");
    let err = node
        .engine
        .patch(Caller::Admin, &s.id, &json!({"colour": 1}))
        .expect_err("unknown field");
    assert!(err.to_string().contains("colour"), "{err}");
    node.close();
}

#[test]
fn a_credentials_endpoint_is_held_to_public_addresses_at_every_connection() {
    // Made while the operator allowed private endpoints; once the node
    // runs without that, the same URL is refused at delivery (as a host
    // name that resolves to a private address later would be), and the
    // attempts say why.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.redb");
    let receiver = Receiver::ok();
    let mut node = Node::open_with(
        &path,
        EngineOptions::default().allow_private_endpoints(true),
    );
    let sub = node
        .engine
        .create(
            Caller::Credential("wallet"),
            spec(json!({
                "endpoint": {"url": receiver.url()},
                "retry": {"schedule_ms": [10]},
            })),
        )
        .expect("allowed while private endpoints are");
    node.busy_block();
    receiver.wait_for(1);
    node.close();

    let mut node = Node::open_with(&path, EngineOptions::default());
    node.busy_block();
    wait_for("a refused attempt", || {
        node.engine
            .attempts(Caller::Credential("wallet"), &sub.id, true, 10)
            .expect("attempts")
            .iter()
            .any(|a| {
                a.error
                    .as_deref()
                    .is_some_and(|e| e.contains("only public endpoints"))
            })
    });
    let test = node
        .engine
        .test(Caller::Credential("wallet"), &sub.id)
        .expect("a test event is attempted");
    assert!(
        test.error
            .as_deref()
            .is_some_and(|e| e.contains("private addresses (127.0.0.1)")),
        "{test:?}"
    );
    // The operator's own subscriptions are not held to it.
    let own = node
        .engine
        .create(
            Caller::Admin,
            spec(json!({"endpoint": {"url": receiver.url()}})),
        )
        .expect("the operator's");
    let attempt = node.engine.test(Caller::Admin, &own.id).expect("test");
    assert_eq!(attempt.status, Some(200), "{attempt:?}");
    node.close();
}
