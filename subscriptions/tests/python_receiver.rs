//! `examples/python/webhook_receiver.py` against a subscription: it
//! verifies the signatures (across a secret rotation, knowing only the
//! first secret) and deduplicates a replay by `webhook-id`.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::json;
use statestream::store::{KvStore, MultiStore, StoreKey};
use statestream::{BlockMeta, DeliveryManager};
use statestream_subscriptions::{
    Caller, Engine, EngineOptions, SUBSCRIPTIONS_TABLE, SubscriptionSpec,
};
use statestream_test_support::wait_for;

/// Kills the receiver when the test ends, however it ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn python_receiver_verifies_rotated_signatures_and_deduplicates_a_replay() {
    if !statestream_test_support::require_python(
        "python_receiver_verifies_rotated_signatures_and_deduplicates_a_replay",
        &["hmac", "http.server"],
        "its standard library",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bank = StoreKey::new("bank").expect("name");
    let mut store = MultiStore::open(
        &dir.path().join("node.redb"),
        std::slice::from_ref(&bank),
        Default::default(),
    )
    .expect("store");
    let mut manager = DeliveryManager::builder().start(&mut store).expect("start");
    let engine = Engine::start(
        store.records(SUBSCRIPTIONS_TABLE),
        manager.runtime(),
        EngineOptions::default(),
    )
    .expect("engine");
    // The receiver learns the secret only once the subscription exists:
    // create it against a placeholder (no block is committed meanwhile),
    // then point it at the receiver with a PATCH.
    let sub = engine
        .create(
            Caller::Admin,
            SubscriptionSpec::from_json(
                json!({"endpoint": {"url": "http://127.0.0.1:9/"}})
                    .to_string()
                    .as_bytes(),
            )
            .expect("spec"),
        )
        .expect("create");
    let secret = sub.secret.clone().expect("secret");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/webhook_receiver.py");
    let child = Command::new("python3")
        .arg(script)
        .args(["--port", "0", "--secret", &secret])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the receiver");
    let mut child = Kill(child);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout);
    let mut first = String::new();
    lines.read_line(&mut first).expect("first line");
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    engine
        .patch(
            Caller::Admin,
            &sub.id,
            &json!({"endpoint": {"url": format!("{url}/hooks/{{store}}")}}),
        )
        .expect("patch");
    let mut commit = |key: &str| {
        store
            .set(&bank, key.as_bytes(), b"{\"v\": 1}")
            .expect("set");
        manager
            .commit(&mut store, BlockMeta::default())
            .expect("commit")
            .version
    };
    let h1 = commit("a");
    engine
        .rotate_secret(Caller::Admin, &sub.id)
        .expect("rotate");
    let h2 = commit("b");
    wait_for("delivery of both blocks", || {
        engine
            .get(Caller::Admin, &sub.id)
            .is_ok_and(|v| v.cursor == h2)
    });
    engine
        .pause(Caller::Admin, &sub.id)
        .expect("pause holds the log");
    let replay = engine
        .replay(Caller::Admin, &sub.id, h1, h2)
        .expect("replay");
    assert_eq!(
        replay.delivered, 2,
        "the receiver answers 2xx to a duplicate"
    );
    drop(child);
    let mut rest = String::new();
    lines.read_to_string(&mut rest).expect("events");
    let events: Vec<serde_json::Value> = rest
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    let of = |e: &str| -> Vec<String> {
        events
            .iter()
            .filter(|v| v["event"] == e)
            .map(|v| v["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let accepted = of("accepted");
    assert_eq!(
        accepted,
        vec![format!("{}-{h1}-0", sub.id), format!("{}-{h2}-0", sub.id)],
        "both verified with the first secret, the second while rotated: {events:#?}"
    );
    assert_eq!(of("duplicate"), accepted, "the replay is recognised by id");
    assert!(of("rejected").is_empty(), "{events:#?}");
    manager.close(&mut store).expect("close");
}
