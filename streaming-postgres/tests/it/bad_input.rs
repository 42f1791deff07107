//! Bad input: each one clear error.

use std::net::TcpListener;

use crate::{app_toml, commit_block, connect, manager, memory_store, server};

/// The error that stops the start of a manager with `toml`.
fn start_error(store: &mut statestream_store::MultiStore, toml: &str, what: &str) -> String {
    match manager(store, toml) {
        Ok(_) => panic!("{what}: the start succeeded"),
        Err(e) => e.to_string(),
    }
}

/// A loopback port where nothing listens.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

/// An unreachable server does not stop the start (the node runs while its
/// database is down), but each delivery fails with an error that says so;
/// with `stop-node-on-error = true` the node stops on it.
#[test]
fn bad_input_unreachable_server() {
    let url = format!(
        "postgresql://statestream:pw@127.0.0.1:{}/statestream",
        closed_port()
    );
    let toml = app_toml(&url, "delivery = \"sync\"\nstop-node-on-error = true");
    let mut store = memory_store();
    let mut m = manager(&mut store, &toml).expect("starts while the server is down");
    let e = commit_block(&mut m, &mut store, 1, &mut Vec::new())
        .expect_err("delivery to a closed port")
        .to_string();
    assert!(
        e.contains("cannot reach PostgreSQL at statestream@127.0.0.1:"),
        "{e}"
    );
    assert!(e.to_lowercase().contains("refused"), "{e}");
    assert!(!e.contains(":pw@"), "the password leaked: {e}");
}

#[test]
fn bad_input_wrong_password() {
    let Some((srv, _)) = server("bad_input_wrong_password") else {
        return;
    };
    let url = format!(
        "postgresql://statestream:wrong@127.0.0.1:{}/statestream",
        srv.port()
    );
    let mut store = memory_store();
    let e = start_error(
        &mut store,
        &app_toml(&url, "delivery = \"sync\""),
        "a wrong password fails the start",
    );
    assert!(e.contains("cannot connect to PostgreSQL"), "{e}");
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(e.contains("28P01"), "{e}");
    assert!(!e.contains("wrong"), "the password leaked: {e}");
}

#[test]
fn bad_input_missing_database() {
    let Some((srv, _)) = server("bad_input_missing_database") else {
        return;
    };
    let mut store = memory_store();
    let e = start_error(
        &mut store,
        &app_toml(&srv.url("nosuchdb"), "delivery = \"sync\""),
        "a missing database fails the start",
    );
    assert!(e.contains("database \"nosuchdb\" does not exist"), "{e}");
    assert!(e.contains("3D000"), "{e}");
}

#[test]
fn bad_input_conflicting_table() {
    let Some((_srv, url)) = server("bad_input_conflicting_table") else {
        return;
    };
    let mut c = connect(&url);
    c.batch_execute(
        "CREATE SCHEMA statestream; \
         CREATE TABLE statestream.changes (height bigint, store text, key bytea, val bytea, deleted boolean)",
    )
    .expect("create a conflicting table");
    let mut store = memory_store();
    let e = start_error(
        &mut store,
        &app_toml(&url, "delivery = \"sync\""),
        "a conflicting table fails the start",
    );
    assert!(
        e.contains("table statestream.changes, column value: missing"),
        "{e}"
    );
    let created: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'statestream'",
            &[],
        )
        .expect("count tables")
        .get(0);
    assert_eq!(created, 1, "a conflict must create nothing");

    // A column of another type.
    c.batch_execute(
        "DROP TABLE statestream.changes; \
         CREATE TABLE statestream.state (store text, key text, value bytea, height bigint)",
    )
    .expect("create another conflicting table");
    let e = start_error(
        &mut store,
        &app_toml(&url, "delivery = \"sync\""),
        "a conflicting table fails the start",
    );
    assert!(
        e.contains("table statestream.state, column key: has type text, expected bytea"),
        "{e}"
    );
}

#[test]
fn bad_input_missing_tables_without_create_schema() {
    let Some((_srv, url)) = server("bad_input_missing_tables_without_create_schema") else {
        return;
    };
    let mut store = memory_store();
    let e = start_error(
        &mut store,
        &app_toml(&url, "create_schema = false\ndelivery = \"sync\""),
        "missing tables fail the start",
    );
    assert!(
        e.contains("table statestream.blocks does not exist and create_schema = false"),
        "{e}"
    );

    // Created by hand from the published statements, they are accepted.
    let mut c = connect(&url);
    for sql in
        statestream_postgres::create_statements("statestream", statestream_postgres::Tables::Both)
    {
        c.batch_execute(&sql).expect("create");
    }
    let mut m = manager(
        &mut store,
        &app_toml(&url, "create_schema = false\ndelivery = \"sync\""),
    )
    .expect("the tables exist now");
    commit_block(&mut m, &mut store, 1, &mut Vec::new()).expect("block 1");
    m.close(&mut store).expect("close");
}
