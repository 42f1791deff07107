//! Delivery: the tables hold each block once, equal to the store.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use statestream_postgres::PostgresStreamerConfig;
use statestream_store::StoreKey;

use crate::*;

#[test]
fn delivery_tables_equal_the_store() {
    let Some((_srv, url)) = server("delivery_tables_equal_the_store") else {
        return;
    };
    let mut store = memory_store();
    let mut m = manager(&mut store, &app_toml(&url, "delivery = \"sync\"")).expect("start");
    let n = 40;
    let mut log = Vec::new();
    for b in 1..=n {
        commit_block(&mut m, &mut store, b, &mut log).expect("commit");
    }
    m.close(&mut store).expect("close");
    let mut c = connect(&url);
    assert_eq!(
        db_heights(&mut c, "statestream"),
        (1..=n).collect::<Vec<_>>()
    );
    assert_eq!(db_changes(&mut c, "statestream"), sorted(log.clone()));
    assert_eq!(db_state(&mut c, "statestream"), expected_state(&store));
    assert_eq!(db_cursor(&mut c, "statestream", "pg"), Some(n));

    // Block times and app hashes.
    let row = c
        .query_one(
            "SELECT extract(epoch FROM time)::numeric::text, app_hash FROM statestream.blocks WHERE height = 7",
            &[],
        )
        .expect("block 7");
    assert_eq!(row.get::<_, String>(0), "1700000007.123456");
    let hash: Vec<u8> = row.get(1);
    let hash7: Vec<u8> = c
        .query_one(
            "SELECT app_hash FROM statestream.blocks WHERE height = 40",
            &[],
        )
        .expect("block 40")
        .get(0);
    assert_eq!(hash.len(), 32);
    assert_eq!(hash7, store.last_commit().app_hash.to_vec());
    // A state row's height is the block that last set it.
    let h: i64 = c
        .query_one(
            "SELECT height FROM statestream.state WHERE store = 'bank' AND key = 'acct-5'",
            &[],
        )
        .expect("acct-5")
        .get(0);
    assert_eq!(h, 40);
}

#[test]
fn delivery_changes_only_and_state_only() {
    let Some((_srv, url)) = server("delivery_changes_only_and_state_only") else {
        return;
    };
    let mut store = memory_store();
    let toml = format!(
        "[store]\nstreamers = [\"hist\", \"cur\"]\n\n\
         [streamers.hist]\ntype = \"postgres\"\nkeys = [\"*\"]\nurl = \"{url}\"\nschema = \"hist\"\ntables = \"changes\"\ndelivery = \"sync\"\n\n\
         [streamers.cur]\ntype = \"postgres\"\nkeys = [\"bank\", \"gov\"]\nurl = \"{url}\"\nschema = \"cur\"\ntables = \"state\"\ndelivery = \"sync\"\n"
    );
    let mut m = manager(&mut store, &toml).expect("start");
    let n = 25;
    let mut log = Vec::new();
    for b in 1..=n {
        commit_block(&mut m, &mut store, b, &mut log).expect("commit");
    }
    m.close(&mut store).expect("close");
    let mut c = connect(&url);
    assert_eq!(db_changes(&mut c, "hist"), sorted(log.clone()));
    let tables: Vec<String> = c
        .query(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables \
             WHERE table_schema IN ('hist', 'cur') ORDER BY 1",
            &[],
        )
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "cur.blocks",
            "cur.cursors",
            "cur.state",
            "hist.blocks",
            "hist.changes",
            "hist.cursors"
        ]
    );
    let want: Vec<StateRow> = expected_state(&store)
        .into_iter()
        .filter(|(s, _, _)| s != "acc")
        .collect();
    assert_eq!(db_state(&mut c, "cur"), want);
    assert_eq!(db_cursor(&mut c, "cur", "cur"), Some(n));
    assert_eq!(db_cursor(&mut c, "hist", "hist"), Some(n));
}

/// Two streamers of different stores in one schema: each has its cursor
/// row, the `blocks` rows are shared (each height once), and together
/// they hold every change.
#[test]
fn delivery_two_streamers_share_a_schema() {
    let Some((_srv, url)) = server("delivery_two_streamers_share_a_schema") else {
        return;
    };
    let mut store = memory_store();
    let toml = format!(
        "[store]\nstreamers = [\"one\", \"two\"]\n\n\
         [streamers.one]\ntype = \"postgres\"\nkeys = [\"acc\"]\nurl = \"{url}\"\ndelivery = \"sync\"\n\n\
         [streamers.two]\ntype = \"postgres\"\nkeys = [\"bank\", \"gov\"]\nurl = \"{url}\"\ndelivery = \"sync\"\n"
    );
    let mut m = manager(&mut store, &toml).expect("start");
    let n = 12;
    let mut log = Vec::new();
    for b in 1..=n {
        commit_block(&mut m, &mut store, b, &mut log).expect("commit");
    }
    m.close(&mut store).expect("close");
    let mut c = connect(&url);
    assert_eq!(
        db_heights(&mut c, "statestream"),
        (1..=n).collect::<Vec<_>>()
    );
    assert_eq!(db_cursor(&mut c, "statestream", "one"), Some(n));
    assert_eq!(db_cursor(&mut c, "statestream", "two"), Some(n));
    assert_eq!(db_changes(&mut c, "statestream"), sorted(log));
    assert_eq!(db_state(&mut c, "statestream"), expected_state(&store));
}

/// A node whose own cursor is behind the database's delivers blocks the
/// database holds: they are skipped, not written twice; the first block
/// above the database's cursor is written.
#[test]
fn delivery_blocks_at_or_below_the_database_cursor_are_skipped() {
    let Some((_srv, url)) = server("delivery_blocks_at_or_below_the_database_cursor_are_skipped")
    else {
        return;
    };
    let mut store = memory_store();
    let mut m = manager(&mut store, &app_toml(&url, "delivery = \"sync\"")).expect("start");
    let mut log = Vec::new();
    let mut sets = Vec::new();
    for b in 1..=12 {
        commit_block(&mut m, &mut store, b, &mut log).expect("commit");
        sets.push(std::sync::Arc::new(
            store.change_log().read(b).expect("read"),
        ));
    }
    m.close(&mut store).expect("close");

    // A second instance of the streamer under the same name, as after a
    // crash that lost the node's cursor: it is handed blocks 1..=15.
    for b in 13..=15 {
        write_block(&mut store, b).expect("write");
        store.commit().expect("commit without streaming");
        record(&store, b, &mut log);
        sets.push(std::sync::Arc::new(
            store.change_log().read(b).expect("read"),
        ));
    }
    let config = PostgresStreamerConfig {
        url: url.clone(),
        ..PostgresStreamerConfig::default()
    };
    let stores = store_keys();
    let ctx = statestream::StreamerContext {
        name: "pg",
        stores: &stores,
        all_stores: &stores,
        home: std::path::Path::new("."),
        reader: None,
        shutdown: &statestream_core::Shutdown::default(),
        push: None,
    };
    let options =
        statestream_config::StreamerOptions::from_table(Default::default()).with_name("pg");
    let mut s = config.build(&ctx, &options).expect("build");
    use statestream::Streamer;
    s.on_start(1).expect("start");
    assert_eq!(s.cursor(), Some(12));
    let selection = statestream::StoreSelection::all(&stores);
    for cs in &sets {
        let block = statestream::Block::from_change_set(cs.clone(), &selection).expect("block");
        s.on_block(&block).expect("deliver");
    }
    s.on_close().expect("close");
    let mut c = connect(&url);
    assert_eq!(
        db_heights(&mut c, "statestream"),
        (1..=15).collect::<Vec<_>>()
    );
    assert_eq!(db_changes(&mut c, "statestream"), sorted(log.clone()));
    assert_eq!(db_state(&mut c, "statestream"), expected_state(&store));
    let _ = StoreKey::new("x");
}

/// A listening connection receives `statestream_<schema>` with the height
/// of each block, once each, in order.
#[test]
fn delivery_notify_per_block() {
    let Some((_srv, url)) = server("delivery_notify_per_block") else {
        return;
    };
    let mut listener = connect(&url);
    listener
        .batch_execute("LISTEN statestream_feed")
        .expect("listen");
    let mut store = memory_store();
    let toml = app_toml(&url, "schema = \"feed\"");
    let mut m = manager(&mut store, &toml).expect("start");
    let n = 20;
    let mut log = Vec::new();
    for b in 1..=n {
        commit_block(&mut m, &mut store, b, &mut log).expect("commit");
    }
    let mut got = Vec::new();
    let mut notifications = listener.notifications();
    let mut iter = notifications.timeout_iter(Duration::from_secs(60));
    while got.len() < n as usize {
        let note = iter
            .next()
            .expect("read a notification")
            .unwrap_or_else(|| panic!("no notification after {got:?}"));
        assert_eq!(note.channel(), "statestream_feed");
        got.push(note.payload().parse::<u64>().expect("a height"));
    }
    assert_eq!(got, (1..=n).collect::<Vec<_>>());
    m.close(&mut store).expect("close");
}
