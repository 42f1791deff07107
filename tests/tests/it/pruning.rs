//! Change log pruning: nothing is kept below the lowest cursor, and a
//! lagging streamer's blocks are kept.

use statestream::{Delivery, DeliveryManager, StreamerSetup};
use statestream_store::MultiStore;
use statestream_tests::{
    Expect, Fail, STORES, commit_workload, keys, memory_store, recorder, wait_for,
};

/// The lowest persisted cursor of `names`.
fn lowest_cursor(store: &MultiStore, names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| store.cursor(n).unwrap().expect("the cursor is persisted"))
        .min()
        .unwrap()
}

#[test]
fn pruning_keeps_nothing_below_the_lowest_cursor_and_everything_a_lagging_streamer_needs() {
    let mut store = memory_store();
    let all = keys(&STORES);
    let (fast, fast_handle) = recorder("fast", Expect::new().start(1).blocks(1..=9).close());
    let (slow, slow_handle) = recorder(
        "slow",
        Expect::new()
            .start(1)
            .blocks(1..=9)
            .close()
            .failed_attempts(&[3, 3, 3, 3, 3]),
    );
    let slow = slow.fail(3, Fail::Always);
    let mut manager = DeliveryManager::builder()
        .streamers(vec![
            (
                StreamerSetup::new("fast", &all).delivery(Delivery::Sync),
                Box::new(fast),
            ),
            (
                StreamerSetup::new("slow", &all)
                    .delivery(Delivery::Sync)
                    .stop_node_on_error(false),
                Box::new(slow),
            ),
        ])
        .start(&mut store)
        .unwrap();
    let log = store.change_log();
    let mut written = commit_workload(&mut manager, &mut store, 1..=2);
    for h in 3..=7 {
        written.extend(commit_workload(&mut manager, &mut store, h..=h));
        let low = lowest_cursor(&store, &["fast", "slow"]);
        let (lo, hi) = log.bounds().unwrap().unwrap();
        assert_eq!(hi, h);
        assert_eq!(
            lo,
            low + 1,
            "after block {h}: nothing below the lowest cursor {low}"
        );
        // Everything the lagging streamer still needs is there.
        for needed in 3..=h {
            assert!(log.get(needed).unwrap().is_some(), "block {needed} kept");
        }
    }
    assert_eq!(slow_handle.heights(), [1, 2]);
    assert_eq!(fast_handle.last_height(), 7);

    // The lagging streamer recovers: it catches up, and the log is pruned.
    slow_handle.heal();
    written.extend(commit_workload(&mut manager, &mut store, 8..=9));
    assert_eq!(slow_handle.last_height(), 9);
    // The log keeps exactly what lies above the cursors persisted with the
    // last commit (cursors cover flushed blocks only, so they may trail).
    let low = lowest_cursor(&store, &["fast", "slow"]);
    assert!(low <= 8, "cursor {low}");
    assert_eq!(log.bounds().unwrap(), Some((low + 1, 9)));
    manager.close(&mut store).unwrap();
    // Close flushes and persists every cursor.
    assert_eq!(lowest_cursor(&store, &["fast", "slow"]), 9);
    fast_handle
        .with_expect(|e| e.written(&written, &STORES))
        .verify();
    slow_handle
        .with_expect(|e| e.written(&written, &STORES))
        .verify();
}

#[test]
fn pruning_follows_an_async_streamer() {
    let mut store = memory_store();
    let all = keys(&STORES);
    let (rec, handle) = recorder("rec", Expect::new().start(1).blocks(1..=8).close());
    let mut manager = DeliveryManager::builder()
        .streamer(
            StreamerSetup::new("rec", &all).delivery(Delivery::Async),
            Box::new(rec),
        )
        .start(&mut store)
        .unwrap();
    let log = store.change_log();
    let mut written = commit_workload(&mut manager, &mut store, 1..=6);
    wait_for("block 6 delivered", || handle.last_height() == 6);
    // An idle worker flushes its streamer: the cursor covers block 6.
    wait_for("block 6 flushed", || manager.stats()[0].durable_height == 6);
    // The next commits carry the cursor: the log is pruned below it.
    written.extend(commit_workload(&mut manager, &mut store, 7..=8));
    let low = lowest_cursor(&store, &["rec"]);
    assert!(low >= 6, "cursor {low}");
    let (lo, hi) = log.bounds().unwrap().unwrap();
    assert_eq!((lo, hi), (low + 1, 8));
    manager.close(&mut store).unwrap();
    handle
        .with_expect(|e| e.written(&written, &STORES))
        .verify();
}
