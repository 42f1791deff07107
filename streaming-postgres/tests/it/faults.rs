//! PostgreSQL restarted mid-stream: the node keeps committing, the
//! streamer reconnects and resumes, every block lands once.

use std::time::Duration;

use crate::*;

#[test]
fn faults_server_restarted_mid_stream() {
    let Some((mut srv, url)) = server("faults_server_restarted_mid_stream") else {
        return;
    };
    let mut store = memory_store();
    let toml = app_toml(&url, "stop-node-on-error = false\nqueue = 4");
    let mut m = manager(&mut store, &toml).expect("start");
    let mut b = 0;
    let mut log = Vec::new();
    for round in 0..3 {
        for _ in 0..15 {
            b += 1;
            commit_block(&mut m, &mut store, b, &mut log).expect("commits never stop");
        }
        // Stop the server under the streamer, the node goes on.
        if round == 1 {
            srv.crash();
        } else {
            srv.stop();
        }
        for _ in 0..15 {
            b += 1;
            commit_block(&mut m, &mut store, b, &mut log)
                .expect("commits go on while the server is down");
        }
        srv.start();
    }
    let n = b;
    wait_for_within("the streamer to catch up", Duration::from_secs(120), || {
        m.stats()[0].delivered_height >= n
    });
    assert!(m.stats()[0].errors > 0, "the outage was not noticed");
    m.close(&mut store).expect("close");
    let mut c = connect(&url);
    assert_eq!(
        db_heights(&mut c, "statestream"),
        (1..=n).collect::<Vec<_>>()
    );
    assert_eq!(db_changes(&mut c, "statestream"), sorted(log));
    assert_eq!(db_state(&mut c, "statestream"), expected_state(&store));
    assert_eq!(db_cursor(&mut c, "statestream", "pg"), Some(n));
}

/// Sessions of the streamer (`application_name = statestream`) waiting for
/// a lock.
fn waiting_for_a_lock(client: &mut postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'statestream' AND wait_event_type = 'Lock'",
            &[],
        )
        .expect("read pg_stat_activity")
        .get(0)
}

/// A table locked by another session while the node stops: the statement
/// waiting for the lock is cancelled and `close` ends (the statement
/// timeout is ten minutes: only the cancel can end it); after the lock is
/// released a restart writes every block exactly once.
#[test]
fn faults_locked_table_does_not_hold_up_stop() {
    let Some((_srv, url)) = server("faults_locked_table_does_not_hold_up_stop") else {
        return;
    };
    for (i, stop_node_on_error) in [false, true].into_iter().enumerate() {
        let schema = format!("locked{i}");
        let toml = app_toml(
            &url,
            &format!(
                "schema = \"{schema}\"\nstop-node-on-error = {stop_node_on_error}\n\
                 statement_timeout_ms = 600000"
            ),
        );
        let mut store = memory_store();
        let mut log = Vec::new();
        let mut m = manager(&mut store, &toml).expect("start");
        commit_block(&mut m, &mut store, 1, &mut log).expect("commit block 1");
        wait_for_within("block 1 in the database", Duration::from_secs(60), || {
            m.stats()[0].delivered_height >= 1
        });

        let mut locker = connect(&url);
        locker
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {schema}.cursors IN ACCESS EXCLUSIVE MODE"
            ))
            .expect("lock the cursors table");
        for b in 2..=3 {
            commit_block(&mut m, &mut store, b, &mut log)
                .expect("commits go on while the table is locked");
        }
        let mut watch = connect(&url);
        wait_for_within(
            "the streamer to wait for the lock",
            Duration::from_secs(60),
            || waiting_for_a_lock(&mut watch) >= 1,
        );

        // Stop the node: `close` runs on its own thread so that a hang is
        // a failure with a message rather than a test that never ends.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let closed = m.close(&mut store).map_err(|e| e.to_string());
            let _ = tx.send((closed, store));
        });
        let (closed, mut store) = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "close did not end within 60 s while {schema}.cursors was locked \
                 (stop-node-on-error = {stop_node_on_error})"
                )
            });
        if !stop_node_on_error {
            closed.expect("close with stop-node-on-error = false");
        }
        locker.batch_execute("ROLLBACK").expect("release the lock");
        assert_eq!(
            db_cursor(&mut watch, &schema, "pg"),
            Some(1),
            "nothing was written while the table was locked"
        );

        let m = manager(&mut store, &toml).expect("restart");
        wait_for_within(
            "blocks 2 and 3 after the restart",
            Duration::from_secs(60),
            || m.stats()[0].delivered_height >= 3,
        );
        m.close(&mut store).expect("close after the restart");
        assert_eq!(db_heights(&mut watch, &schema), [1, 2, 3]);
        assert_eq!(db_changes(&mut watch, &schema), sorted(log));
        assert_eq!(db_state(&mut watch, &schema), expected_state(&store));
        assert_eq!(db_cursor(&mut watch, &schema, "pg"), Some(3));
    }
}

/// A lock held longer than `statement_timeout_ms` fails the attempt with
/// PostgreSQL's lock timeout (the node goes on); once it is released the
/// block is written.
#[test]
fn faults_lock_timeout_fails_the_attempt_and_retries() {
    let Some((_srv, url)) = server("faults_lock_timeout_fails_the_attempt_and_retries") else {
        return;
    };
    let toml = app_toml(
        &url,
        "stop-node-on-error = false\nstatement_timeout_ms = 200",
    );
    let mut store = memory_store();
    let mut log = Vec::new();
    let mut m = manager(&mut store, &toml).expect("start");
    let observer = m.observer();
    commit_block(&mut m, &mut store, 1, &mut log).expect("commit block 1");
    wait_for_within("block 1 in the database", Duration::from_secs(60), || {
        m.stats()[0].delivered_height >= 1
    });
    let mut locker = connect(&url);
    locker
        .batch_execute("BEGIN; LOCK TABLE statestream.cursors IN ACCESS EXCLUSIVE MODE")
        .expect("lock the cursors table");
    commit_block(&mut m, &mut store, 2, &mut log).expect("commit block 2");
    // Both timeouts are the same: PostgreSQL reports whichever timer fires
    // first.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let last = observer.status().streamers[0].last_error.clone();
        if last
            .as_deref()
            .is_some_and(|e| e.contains("SQLSTATE 55P03") || e.contains("SQLSTATE 57014"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for a delivery error naming the lock or statement timeout \
             (last error: {last:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(m.stats()[0].delivered_height, 1);
    locker.batch_execute("ROLLBACK").expect("release the lock");
    wait_for_within("block 2 after the lock", Duration::from_secs(60), || {
        m.stats()[0].delivered_height >= 2
    });
    m.close(&mut store).expect("close");
    let mut c = connect(&url);
    assert_eq!(db_heights(&mut c, "statestream"), [1, 2]);
    assert_eq!(db_changes(&mut c, "statestream"), sorted(log));
}
