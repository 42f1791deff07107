//! `keys` filters, through the full path: app.toml -> `AppConfig::parse` ->
//! `resolve` -> `DeliveryManager::builder()...start` with a registry whose `"record"`
//! type hands out recorders.

use statestream::{Delivery, DeliveryManager, Error, Registry};
use statestream_config::{ConfigError, StreamerOptions, StreamerSpec};
use statestream_tests::{
    Expect, STORES, Slots, TempHome, commit_workload, memory_store, recorder, start_from_config,
};

/// Runs one recorder named `rec` with `keys` (and `delivery`) for 4 blocks
/// and checks it saw exactly `stores`.
fn run_filter(keys: &str, delivery: &str, stores: &[&str]) {
    let home = TempHome::new();
    let mut store = memory_store();
    let slots = Slots::new();
    let (rec, handle) = recorder(
        "rec",
        Expect::new().start(1).blocks(1..=4).close().stores(stores),
    );
    slots.put("rec", rec);
    let text = format!(
        "[store]\nstreamers = [\"rec\"]\n\n[streamers.rec]\ntype = \"record\"\nkeys = {keys}\ndelivery = \"{delivery}\"\n"
    );
    let mut manager = start_from_config(&text, &mut store, &slots.registry(), home.path()).unwrap();
    let written = commit_workload(&mut manager, &mut store, 1..=4);
    manager.close(&mut store).unwrap();
    handle.with_expect(|e| e.written(&written, stores)).verify();
    let seen = slots.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].stores, stores);
}

#[test]
fn filters_star_is_every_store() {
    run_filter("[\"*\"]", "sync", &STORES);
    run_filter("[\"*\"]", "async", &STORES);
}

#[test]
fn filters_subset_is_only_those_stores() {
    // Listed out of order: resolved in name order.
    run_filter("[\"gov\", \"acc\"]", "sync", &["acc", "gov"]);
    run_filter("[\"bank\"]", "async", &["bank"]);
}

#[test]
fn filters_empty_keys_turns_the_streamer_off() {
    let home = TempHome::new();
    let mut store = memory_store();
    let slots = Slots::new();
    let (off, off_handle) = recorder("off", Expect::new());
    let (on, on_handle) = recorder("on", Expect::new().start(1).blocks(1..=3).close());
    slots.put("off", off).put("on", on);
    let text = r#"
[store]
streamers = ["off", "on"]

[streamers.off]
type = "record"
keys = []

[streamers.on]
type = "record"
keys = ["bank"]
"#;
    let mut manager = start_from_config(text, &mut store, &slots.registry(), home.path()).unwrap();
    let names: Vec<_> = manager.stats().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["on"]);
    let written = commit_workload(&mut manager, &mut store, 1..=3);
    manager.close(&mut store).unwrap();
    assert!(slots.unclaimed("off"), "the off streamer is never built");
    off_handle.verify();
    on_handle
        .with_expect(|e| e.written(&written, &["bank"]))
        .verify();
    assert_eq!(
        store.cursor("off").unwrap(),
        None,
        "an off streamer has no cursor"
    );
}

#[test]
fn filters_unknown_store_is_an_error() {
    let home = TempHome::new();
    let mut store = memory_store();
    let slots = Slots::new();
    let (rec, handle) = recorder("rec", Expect::new());
    slots.put("rec", rec);
    let text = "[store]\nstreamers = [\"rec\"]\n\n[streamers.rec]\ntype = \"record\"\nkeys = [\"bank\", \"nope\"]\n";
    let err = start_from_config(text, &mut store, &slots.registry(), home.path()).unwrap_err();
    assert!(
        matches!(&err, Error::Config(ConfigError::Key { key, line: Some(6), .. }) if key == "keys"),
        "{err:?}"
    );
    let msg = err.to_string();
    for needle in [
        "app.toml",
        "[streamers.rec]",
        "`keys`",
        "(line 6)",
        "nope",
        "acc, bank, gov",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    assert!(slots.unclaimed("rec"));
    handle.verify();

    // A spec built in code with an unknown store is refused by the manager.
    let spec = StreamerSpec {
        name: "rec".into(),
        type_name: "record".into(),
        stores: vec!["bank".into(), "nope".into()],
        delivery: Delivery::Sync,
        queue: 1,
        stop_node_on_error: true,
        options: StreamerOptions::default(),
    };
    let err = DeliveryManager::builder()
        .configured(&[spec], &slots.registry(), home.path())
        .start(&mut store)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Store(statestream_store::Error::UnknownStore { store, .. }) if store == "nope"),
        "{err:?}"
    );
    assert!(slots.unclaimed("rec"));
}

#[test]
fn filters_two_instances_of_one_type() {
    let home = TempHome::new();
    let mut store = memory_store();
    let slots = Slots::new();
    let (a, ha) = recorder(
        "left",
        Expect::new()
            .start(1)
            .blocks(1..=5)
            .close()
            .stores(&["bank"]),
    );
    let (b, hb) = recorder(
        "right",
        Expect::new()
            .start(1)
            .blocks(1..=5)
            .close()
            .stores(&["acc", "gov"]),
    );
    slots.put("left", a).put("right", b);
    let text = r#"
[store]
streamers = ["left", "right"]

[streamers.left]
type = "record"
keys = ["bank"]
delivery = "sync"

[streamers.right]
type = "record"
keys = ["gov", "acc"]
delivery = "async"
queue = 2
"#;
    let mut registry = Registry::new();
    slots.register(&mut registry, "record");
    let mut manager = start_from_config(text, &mut store, &registry, home.path()).unwrap();
    let written = commit_workload(&mut manager, &mut store, 1..=5);
    manager.close(&mut store).unwrap();
    ha.with_expect(|e| e.written(&written, &["bank"])).verify();
    hb.with_expect(|e| e.written(&written, &["acc", "gov"]))
        .verify();
    // Each has its own cursor.
    assert_eq!(store.cursor("left").unwrap(), Some(5));
    assert_eq!(store.cursor("right").unwrap(), Some(5));
}
