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
