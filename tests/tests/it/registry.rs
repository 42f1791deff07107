//! The registry: built-ins, application types, the constructor's context,
//! unknown types.

use std::path::Path;

use statestream::{Error, Registry, StreamerContext};
use statestream_config::StreamerOptions;
use statestream_tests::{
    Expect, SeenContext, Slots, TempHome, commit_workload, keys, memory_store, recorder,
    start_from_config,
};

#[test]
fn registry_with_builtins_contains_log() {
    let r = Registry::with_builtins();
    assert!(r.contains("log"));
    assert!(r.types().contains(&"log"));
    assert!(!r.contains("record"));
    assert!(Registry::new().types().is_empty());
}

#[test]
fn registry_log_streamer_runs_from_config() {
    let home = TempHome::new();
    let mut store = memory_store();
    let text = "[store]\nstreamers = [\"watch\"]\n[streamers.watch]\ntype = \"log\"\nkeys = [\"*\"]\nevery = 2\ndelivery = \"sync\"\n";
    let mut manager =
        start_from_config(text, &mut store, &Registry::with_builtins(), home.path()).unwrap();
    commit_workload(&mut manager, &mut store, 1..=3);
    let s = manager.stats().remove(0);
    assert_eq!(
        (s.name.as_str(), s.delivered_height, s.errors),
        ("watch", 3, 0)
    );
    manager.close(&mut store).unwrap();
}

#[test]
fn registry_unknown_type_lists_the_known_types() {
    let slots = Slots::new();
    let registry = slots.registry();
    let stores = keys(&["bank"]);
    let options = StreamerOptions::default();
    let ctx = StreamerContext {
        name: "mine",
        stores: &stores,
        all_stores: &stores,
        home: Path::new("/tmp/home"),
        reader: None,
        shutdown: &statestream_core::Shutdown::default(),
        push: None,
    };
    let err = registry
        .build("nosuch", &ctx, &options)
        .err()
        .expect("unknown type fails");
    assert!(
        matches!(&err, Error::UnknownType { streamer, type_name, known }
            if streamer == "mine" && type_name == "nosuch"
                && known.split(", ").any(|t| t == "log")
                && known.split(", ").any(|t| t == "record")),
        "{err:?}"
    );
    let msg = err.to_string();
    for needle in ["mine", "nosuch", "log", "record"] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }

    let err = Registry::new()
        .build("nosuch", &ctx, &options)
        .err()
        .expect("unknown type fails");
    assert!(err.to_string().contains("none registered"), "{err}");
}

#[test]
fn registry_unknown_type_from_config_names_the_file_and_key() {
    let home = TempHome::new();
    let mut store = memory_store();
    let text =
        "[store]\nstreamers = [\"mine\"]\n\n[streamers.mine]\ntype = \"nosuch\"\nkeys = [\"*\"]\n";
    let err =
        start_from_config(text, &mut store, &Slots::new().registry(), home.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::Config(statestream_config::ConfigError::Key { key, line: Some(5), .. }) if key == "type"),
        "{err:?}"
    );
    for needle in [
        "app.toml",
        "[streamers.mine]",
        "`type`",
        // The key's own line, not the table's.
        "(line 5)",
        "nosuch",
        "log",
        "record",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
}

#[test]
fn registry_custom_type_gets_name_stores_options_and_home() {
    let home = TempHome::new();
    let mut store = memory_store();
    let slots = Slots::new();
    let (rec, handle) = recorder(
        "mine",
        Expect::new()
            .start(1)
            .blocks(1..=3)
            .close()
            .stores(&["bank", "gov"]),
    );
    slots.put("mine", rec);
    let text = r#"
[store]
streamers = ["mine"]

[streamers.mine]
type = "record"
keys = ["gov", "bank"]
delivery = "sync"
queue = 3
stop-node-on-error = false
write-dir = "out"
output_metadata = true
env = { MY-VAR = "x" }
"#;
    let mut manager = start_from_config(text, &mut store, &slots.registry(), home.path()).unwrap();
    let mut options = toml::Table::new();
    options.insert("write_dir".into(), "out".into());
    options.insert("output_metadata".into(), true.into());
    let mut env = toml::Table::new();
    env.insert("MY-VAR".into(), "x".into());
    options.insert("env".into(), env.into());
    assert_eq!(
        slots.seen(),
        [SeenContext {
            name: "mine".into(),
            stores: vec!["bank".into(), "gov".into()],
            options,
            home: home.path().to_path_buf(),
        }]
    );
    let written = commit_workload(&mut manager, &mut store, 1..=3);
    manager.close(&mut store).unwrap();
    handle
        .with_expect(|e| e.written(&written, &["bank", "gov"]))
        .verify();
}

#[test]
fn registry_constructor_error_is_a_build_error() {
    let home = TempHome::new();
    let mut store = memory_store();
    let mut registry = Registry::new();
    registry.register("broken", |_, options| {
        Err(options.error("path", "cannot be written").into())
    });
    let text = "[store]\nstreamers = [\"b\"]\n\n[streamers.b]\ntype = \"broken\"\nkeys = [\"*\"]\npath = \"/nope\"\n";
    let err = start_from_config(text, &mut store, &registry, home.path()).unwrap_err();
    assert!(
        matches!(&err, Error::Build { streamer, type_name, .. } if streamer == "b" && type_name == "broken"),
        "{err:?}"
    );
    let msg = err.to_string();
    for needle in [
        "app.toml",
        "[streamers.b]",
        "`path`",
        "(line 7)",
        "cannot be written",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    // Nothing was started: the store has no cursor for it.
    assert_eq!(store.cursor("b").unwrap(), None);
}
