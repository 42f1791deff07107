//! Blocks arrive in order exactly once, and the replay rebuilds the state.

use std::sync::Arc;

use statestream_core::{Block, StoreSelection, Streamer};
use statestream_nats::{
    NatsStreamer, NatsStreamerConfig, ReplaySink, StreamReader, replay_stream, replay_stream_into,
};
use statestream_store::{KvStore, MultiStore, Order, StoreOptions};

use crate::{
    app_toml, assert_exactly_once, commit_block, manager, memory_store, raw_messages, server,
    store_keys, wait_delivered,
};

#[test]
fn delivery_async_blocks_arrive_in_order_exactly_once() -> anyhow::Result<()> {
    let Some(server) = server::start("delivery_async_blocks_arrive_in_order_exactly_once") else {
        return Ok(());
    };
    let mut store = memory_store();
    let mut m = manager(&mut store, &app_toml(&server.url(), ""))?;
    for b in 1..=25 {
        commit_block(&mut m, &mut store, b)?;
    }
    wait_delivered(&m, 25);
    m.close(&mut store)?;

    let client = server.client();
    assert_exactly_once(&client, "statestream", 25);

    let blocks: Vec<_> = StreamReader::open(&server.reader_config("statestream", "statestream"))?
        .collect::<Result<_, _>>()?;
    assert_eq!(blocks.len(), 25);
    assert!(blocks.iter().all(|b| b.parts == 1));

    let replay = replay_stream(&server.reader_config("statestream", "statestream"))?;
    assert_eq!(replay.height, 25);
    assert_eq!(replay.blocks, 25);
    assert_eq!(replay.duplicates, 0);
    assert_eq!(replay.app_hash, store.last_commit().app_hash);
    // The rebuilt state is the node's, key by key.
    for key in store_keys() {
        let node: Vec<(Vec<u8>, Vec<u8>)> = store
            .iter(&key, Order::Ascending)?
            .collect::<Result<_, _>>()?;
        let replayed: Vec<(Vec<u8>, Vec<u8>)> = replay
            .state
            .iter(key.name())
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(replayed, node, "store {key}");
    }

    // A sink of the application's sees every record and block, in order.
    #[derive(Default)]
    struct Count {
        records: u64,
        blocks: Vec<u64>,
    }
    impl ReplaySink for Count {
        fn apply(
            &mut self,
            _height: u64,
            _record: &statestream_core::Record<'_>,
        ) -> Result<(), statestream_core::BoxError> {
            self.records += 1;
            Ok(())
        }
        fn end_block(&mut self, height: u64) -> Result<(), statestream_core::BoxError> {
            self.blocks.push(height);
            Ok(())
        }
    }
    let counted = replay_stream_into(
        &server.reader_config("statestream", "statestream"),
        Count::default(),
    )?;
    assert_eq!(counted.state.records, replay.records);
    assert_eq!(counted.state.blocks, (1..=25).collect::<Vec<_>>());
    assert_eq!(counted.app_hash, replay.app_hash);

    // The example consumer prints the same app hash.
    let example = example_binary("nats_replay");
    if !example.is_file() {
        // `cargo test --test it` alone does not build the examples.
        eprintln!("{} is not built: example check skipped", example.display());
        return Ok(());
    }
    let out = std::process::Command::new(&example)
        .args(["--url", &server.url(), "--json"])
        .output()?;
    assert!(
        out.status.success(),
        "{}: {}",
        example.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(printed["height"], 25);
    assert_eq!(
        printed["app_hash"],
        statestream_core::to_hex(&store.last_commit().app_hash)
    );
    Ok(())
}

/// An example of this package; `cargo test` builds the examples next to
/// the test binaries' directory.
fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn delivery_sync_custom_stream_and_subject() -> anyhow::Result<()> {
    let Some(server) = server::start("delivery_sync_custom_stream_and_subject") else {
        return Ok(());
    };
    let mut store = memory_store();
    let toml = app_toml(
        &server.url(),
        "stream = \"chain-a\"\nsubject = \"chains.a\"\ndelivery = \"sync\"",
    );
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=20 {
        commit_block(&mut m, &mut store, b)?;
        // Sync: the block is acknowledged when commit returns.
        assert_eq!(m.stats()[0].delivered_height, b);
    }
    m.close(&mut store)?;

    let client = server.client();
    let info = client.stream_info("chain-a")?.expect("stream created");
    assert_eq!(info.config.subjects, vec!["chains.a.blocks".to_string()]);
    assert_eq!(
        info.config.duplicate_window,
        std::time::Duration::from_secs(120)
    );
    let raw = raw_messages(&client, "chain-a", "chains.a");
    assert_eq!(
        raw.iter().map(|r| r.height).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    assert!(
        raw.iter()
            .all(|r| r.msg_id == format!("chain-a-{}", r.height))
    );
    let replay = replay_stream(&server.reader_config("chain-a", "chains.a"))?;
    assert_eq!(replay.app_hash, store.last_commit().app_hash);
    Ok(())
}

#[test]
fn delivery_republished_height_is_deduplicated() -> anyhow::Result<()> {
    let Some(server) = server::start("delivery_republished_height_is_deduplicated") else {
        return Ok(());
    };
    let mut store = memory_store();
    let mut m = manager(&mut store, &app_toml(&server.url(), "delivery = \"sync\""))?;
    for b in 1..=20 {
        commit_block(&mut m, &mut store, b)?;
    }
    m.close(&mut store)?;
    let client = server.client();
    assert_exactly_once(&client, "statestream", 20);

    // JetStream itself drops a message whose Nats-Msg-Id it has seen.
    let ack = client.publish(
        "statestream.blocks",
        &[
            ("Nats-Msg-Id", "statestream-7"),
            ("Statestream-Height", "7"),
        ],
        b"not a frame",
    )?;
    assert!(ack.duplicate, "{ack:?}");
    assert_eq!(ack.sequence, 7);
    assert_exactly_once(&client, "statestream", 20);

    // A new streamer (as after a node crash) given an already published
    // block again stores nothing new (the change log keeps only the last
    // block: every earlier one was delivered).
    let config = NatsStreamerConfig {
        url: server.url(),
        ..NatsStreamerConfig::default()
    };
    let mut streamer = NatsStreamer::new("nats", config);
    let selection = StoreSelection::all(&store_keys());
    let changes = Arc::new(store.change_log().read(20)?);
    let block = Block::from_change_set(changes, &selection)?;
    streamer.on_block(&block)?;
    streamer.on_close()?;
    assert_exactly_once(&client, "statestream", 20);
    Ok(())
}

#[test]
fn delivery_node_crash_redelivers_without_duplicates() -> anyhow::Result<()> {
    let Some(server) = server::start("delivery_node_crash_redelivers_without_duplicates") else {
        return Ok(());
    };
    let home = tempfile::tempdir()?;
    let path = home.path().join("store.redb");
    let toml = app_toml(&server.url(), "delivery = \"sync\"");
    {
        let mut store = MultiStore::open(&path, &store_keys(), StoreOptions::default())?;
        let mut m = manager(&mut store, &toml)?;
        for b in 1..=12 {
            commit_block(&mut m, &mut store, b)?;
        }
        // A crash: no close, so the cursor of the last block delivered is
        // not saved and the block is delivered again on the next start.
        drop(m);
        drop(store);
    }
    let mut store = MultiStore::open(&path, &store_keys(), StoreOptions::default())?;
    assert_eq!(store.version(), 12);
    assert!(store.cursor("nats")?.is_some_and(|c| c < 12));
    let mut m = manager(&mut store, &toml)?;
    for b in 13..=20 {
        commit_block(&mut m, &mut store, b)?;
    }
    m.close(&mut store)?;

    let client = server.client();
    assert_exactly_once(&client, "statestream", 20);
    let replay = replay_stream(&server.reader_config("statestream", "statestream"))?;
    assert_eq!(replay.app_hash, store.last_commit().app_hash);
    Ok(())
}

#[test]
fn delivery_async_many_blocks_wait_for_acks() -> anyhow::Result<()> {
    let Some(server) = server::start("delivery_async_many_blocks_wait_for_acks") else {
        return Ok(());
    };
    let mut store = memory_store();
    // A small queue: the streamer falls behind and catches up from the
    // change log, still in order and exactly once.
    let mut m = manager(&mut store, &app_toml(&server.url(), "queue = 2"))?;
    for b in 1..=200 {
        commit_block(&mut m, &mut store, b)?;
    }
    wait_delivered(&m, 200);
    m.close(&mut store)?;
    let client = server.client();
    assert_exactly_once(&client, "statestream", 200);
    let replay = replay_stream(&server.reader_config("statestream", "statestream"))?;
    assert_eq!(replay.height, 200);
    assert_eq!(replay.app_hash, store.last_commit().app_hash);
    Ok(())
}
