//! Tests of the postgres streamer against a real PostgreSQL server
//! (`statestream_test_support::postgres`).

mod bad_input;
mod config;
mod delivery;
mod faults;
mod tls;

use statestream::{BlockMeta, DeliveryManager};
use statestream_store::{KvStore, MultiStore, Order};
pub use statestream_test_support::node::{STORES, manager, manager_in, memory_store, store_keys};
use statestream_test_support::postgres::PgServer;
pub use statestream_test_support::wait_for_within;

/// A server with an empty database `statestream`; `None` when PostgreSQL
/// is not installed (the test is skipped, or fails under CI).
pub fn server(test: &str) -> Option<(PgServer, String)> {
    let server = statestream_test_support::postgres::start(test)?;
    let mut admin = connect(&server.url("postgres"));
    admin
        .batch_execute("CREATE DATABASE statestream")
        .expect("create the database");
    let url = server.url("statestream");
    Some((server, url))
}

pub fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// An app.toml with one postgres streamer `pg`; `extra` lines go in its
/// table.
pub fn app_toml(url: &str, extra: &str) -> String {
    format!(
        "[store]\nstreamers = [\"pg\"]\n\n[streamers.pg]\ntype = \"postgres\"\nkeys = [\"*\"]\n\
         url = \"{url}\"\nconnect_timeout_ms = 2000\n{extra}\n"
    )
}

/// Writes block `b`'s changes: sets and deletes over the three stores,
/// values of varied sizes, an empty value now and then.
pub fn write_block(store: &mut MultiStore, b: u64) -> statestream_store::Result<()> {
    let keys = store_keys();
    let (acc, bank, gov) = (&keys[0], &keys[1], &keys[2]);
    store.set(bank, format!("acct-{}", b % 7).as_bytes(), &b.to_be_bytes())?;
    store.set(
        acc,
        format!("k{b:04}").as_bytes(),
        &vec![b as u8; (b as usize * 37) % 300],
    )?;
    if b.is_multiple_of(3) {
        store.delete(bank, format!("acct-{}", (b + 3) % 7).as_bytes())?;
        store.delete(acc, format!("k{:04}", b / 2).as_bytes())?;
    }
    if b.is_multiple_of(2) {
        store.set(gov, format!("prop-{}", b % 5).as_bytes(), b"vote")?;
        store.set(gov, b"params\x00\xff", &b.to_le_bytes())?;
    }
    Ok(())
}

/// Writes and commits block `b`, and appends its records to `log` (read
/// from the change log at once: it is pruned as the streamers deliver).
pub fn commit_block(
    manager: &mut DeliveryManager,
    store: &mut MultiStore,
    b: u64,
    log: &mut Vec<ChangeRow>,
) -> statestream::Result<statestream_store::CommitInfo> {
    write_block(store, b)?;
    let info = manager.commit(
        store,
        BlockMeta {
            time_seconds: 1_700_000_000 + b as i64,
            time_nanos: 123_456_789,
            ..BlockMeta::default()
        },
    )?;
    record(store, b, log);
    Ok(info)
}

/// Appends the records of block `h`, from the change log, to `log`.
pub fn record(store: &MultiStore, h: u64, log: &mut Vec<ChangeRow>) {
    let cs = store
        .change_log()
        .read(h)
        .expect("the new block in the change log");
    for r in cs.records() {
        log.push((
            h,
            r.store.to_string(),
            r.key.to_vec(),
            r.value.map(<[u8]>::to_vec),
        ));
    }
}

/// One row of `changes`.
pub type ChangeRow = (u64, String, Vec<u8>, Option<Vec<u8>>);
/// One row of `state` (without its height).
pub type StateRow = (String, Vec<u8>, Vec<u8>);

/// `changes` in (height, store, key) order; a delete has no value, and
/// `deleted` must agree.
pub fn db_changes(client: &mut postgres::Client, schema: &str) -> Vec<ChangeRow> {
    client
        .query(
            &format!(
                "SELECT height, store, key, value, deleted FROM {schema}.changes \
                 ORDER BY height, store, key"
            ),
            &[],
        )
        .expect("read changes")
        .iter()
        .map(|r| {
            let value: Option<Vec<u8>> = r.get(3);
            let deleted: bool = r.get(4);
            assert_eq!(deleted, value.is_none(), "deleted and value disagree");
            (r.get::<_, i64>(0) as u64, r.get(1), r.get(2), value)
        })
        .collect()
}

/// `state` in (store, key) order.
pub fn db_state(client: &mut postgres::Client, schema: &str) -> Vec<StateRow> {
    client
        .query(
            &format!("SELECT store, key, value FROM {schema}.state ORDER BY store, key"),
            &[],
        )
        .expect("read state")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The heights of `blocks`, in order.
pub fn db_heights(client: &mut postgres::Client, schema: &str) -> Vec<u64> {
    client
        .query(
            &format!("SELECT height FROM {schema}.blocks ORDER BY height"),
            &[],
        )
        .expect("read blocks")
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect()
}

pub fn db_cursor(client: &mut postgres::Client, schema: &str, name: &str) -> Option<u64> {
    client
        .query_opt(
            &format!("SELECT height FROM {schema}.cursors WHERE streamer = $1"),
            &[&name],
        )
        .expect("read the cursor")
        .map(|r| r.get::<_, i64>(0) as u64)
}

/// `log` in the order of `changes`.
pub fn sorted(mut log: Vec<ChangeRow>) -> Vec<ChangeRow> {
    log.sort();
    log
}

/// What `state` must hold: the store's contents.
pub fn expected_state(store: &MultiStore) -> Vec<StateRow> {
    let mut out = Vec::new();
    for key in store_keys() {
        for kv in store.iter(&key, Order::Ascending).expect("iterate") {
            let (k, v) = kv.expect("read a key");
            out.push((key.name().to_string(), k, v));
        }
    }
    out
}
