//! Exactly once into PostgreSQL: runs `statestream node` with a postgres
//! streamer and a file streamer, SIGKILLs it at random moments (every
//! other run with the store without fsync, so that a crash also rolls the
//! node back below blocks the database already holds), restarts it, and checks at the end that
//! `blocks` holds every height once, that `changes` equals the block files
//! record for record, and that `state` equals the node's store.
//!
//! The kill schedule is seeded (`STATESTREAM_CRASH_SEED`, default: the
//! current time) and printed, so a failing run can be reproduced.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use statestream_store::{KvStore, MultiStore, Order, StoreOptions};

mod common;
use common::{BIN, SplitMix, run_json, seed};

/// Kills; the issue asks for at least 10.
const KILLS: u32 = 12;

type Change = (u64, String, Vec<u8>, Option<Vec<u8>>);

fn db_max_height(c: &mut postgres::Client) -> u64 {
    let exists: bool = c
        .query_one("SELECT to_regclass('statestream.blocks') IS NOT NULL", &[])
        .expect("look for blocks")
        .get(0);
    if !exists {
        return 0;
    }
    c.query_one(
        "SELECT coalesce(max(height), 0) FROM statestream.blocks",
        &[],
    )
    .expect("max height")
    .get::<_, i64>(0) as u64
}

#[test]
fn postgres_exactly_once_under_sigkill() {
    let Some(server) =
        statestream_test_support::postgres::start("postgres_exactly_once_under_sigkill")
    else {
        return;
    };
    postgres::Client::connect(&server.url("postgres"), postgres::NoTls)
        .and_then(|mut c| c.batch_execute("CREATE DATABASE statestream"))
        .expect("create the database");
    let url = server.url("statestream");

    let seed = seed();
    println!("postgres crash test: seed {seed} (set STATESTREAM_CRASH_SEED={seed} to repeat)");
    let mut rng = SplitMix(seed);
    let home = tempfile::tempdir().expect("temp home");
    let home_s = home.path().to_str().expect("utf-8 temp path").to_string();
    let config_path = home.path().join("app.toml");
    std::fs::write(
        &config_path,
        format!(
            "[store]\nstreamers = [\"pg\", \"file\"]\n\n\
             [streamers.pg]\ntype = \"postgres\"\nkeys = [\"*\"]\nurl = \"{url}\"\n\n\
             [streamers.file]\nkeys = [\"*\"]\nwrite_dir = \"data/streaming\"\noutput-metadata = true\n"
        ),
    )
    .expect("write app.toml");
    let base: Vec<String> = [
        "node",
        "--home",
        &home_s,
        "--config",
        config_path.to_str().expect("utf-8"),
        "--writes-per-block",
        "50",
    ]
    .map(str::to_string)
    .to_vec();

    let mut client =
        postgres::Client::connect(&url, postgres::NoTls).expect("connect to the database");
    for kill in 0..KILLS {
        let mut child = Command::new(BIN)
            .args(&base)
            .args(["--blocks", "1000000"])
            // Every other run without fsync: its crash also rolls the
            // store back below blocks the database holds.
            .args(if kill % 2 == 0 {
                &["--no-fsync"][..]
            } else {
                &[]
            })
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the node");
        std::thread::sleep(Duration::from_millis(150 + rng.next() % 600));
        child.kill().expect("SIGKILL the node");
        let status = child.wait().expect("reap the node");
        assert!(
            !status.success(),
            "kill {kill}: the node exited on its own: {status}"
        );
    }
    let db_max = db_max_height(&mut client);
    println!("postgres crash test: {KILLS} kills, the database holds up to {db_max}");

    // Finish cleanly, past every height the database or the files hold
    // (the store may have rolled back below them; the blocks after its
    // last durable commit are re-executed identically).
    let dir = home.path().join("data/streaming");
    let blocks = statestream_file::BlockDir::open(&dir, "", Default::default())
        .expect("open the block files");
    let max_file = blocks
        .heights()
        .expect("list block files")
        .last()
        .copied()
        .unwrap_or(0);
    let mut flags: Vec<&str> = base.iter().map(String::as_str).collect();
    flags.extend(["--blocks", "1", "--json"]);
    let mut last = run_json(&flags);
    let height = last["height"].as_u64().expect("height");
    let top = max_file.max(db_max);
    if top > height {
        let more = (top - height + 1).to_string();
        let mut flags: Vec<&str> = base.iter().map(String::as_str).collect();
        flags.extend(["--blocks", more.as_str(), "--json"]);
        last = run_json(&flags);
    }
    let height = last["height"].as_u64().expect("height");
    println!("postgres crash test: final height {height}");
    assert!(height > 1, "the node made no progress");

    // blocks: every height once; the cursor at the end.
    let heights: Vec<u64> = client
        .query("SELECT height FROM statestream.blocks ORDER BY height", &[])
        .expect("read blocks")
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect();
    assert_eq!(
        heights,
        (1..=height).collect::<Vec<_>>(),
        "heights in blocks"
    );
    let cursor: i64 = client
        .query_one(
            "SELECT height FROM statestream.cursors WHERE streamer = 'pg'",
            &[],
        )
        .expect("the cursor")
        .get(0);
    assert_eq!(cursor as u64, height);

    // changes: the block files, record for record.
    let blocks = statestream_file::BlockDir::open(&dir, "", Default::default())
        .expect("open the block files");
    let mut want: Vec<Change> = Vec::new();
    for h in 1..=height {
        let file = blocks.open_block(h).expect("a block file per height");
        for r in file.records() {
            let r = r.expect("a record");
            want.push((
                h,
                r.store.to_string(),
                r.key.to_vec(),
                r.value.map(<[u8]>::to_vec),
            ));
        }
    }
    want.sort();
    let got: Vec<Change> = client
        .query(
            "SELECT height, store, key, value, deleted FROM statestream.changes \
             ORDER BY height, store, key",
            &[],
        )
        .expect("read changes")
        .iter()
        .map(|r| {
            let value: Option<Vec<u8>> = r.get(3);
            assert_eq!(r.get::<_, bool>(4), value.is_none());
            (r.get::<_, i64>(0) as u64, r.get(1), r.get(2), value)
        })
        .collect();
    assert_eq!(got.len(), want.len(), "number of rows in changes");
    assert!(got == want, "changes differs from the block files");

    // state: the node's store.
    let store = MultiStore::open_existing(
        &home.path().join("data/store.redb"),
        StoreOptions::default(),
    )
    .expect("open the node's store");
    let mut want_state: BTreeMap<(String, Vec<u8>), Vec<u8>> = BTreeMap::new();
    for key in store.stores().to_vec() {
        for kv in store.iter(&key, Order::Ascending).expect("iterate") {
            let (k, v) = kv.expect("read");
            want_state.insert((key.name().to_string(), k), v);
        }
    }
    let got_state: BTreeMap<(String, Vec<u8>), Vec<u8>> = client
        .query("SELECT store, key, value FROM statestream.state", &[])
        .expect("read state")
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    assert_eq!(got_state.len(), want_state.len(), "number of rows in state");
    assert!(got_state == want_state, "state differs from the store");
}
