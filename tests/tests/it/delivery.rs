//! Delivery: what a streamer receives, sync and async, and that commits never
//! wait for a slow asynchronous streamer.

use std::time::Duration;

use statestream::{Delivery, DeliveryManager, StreamerSetup};
use statestream_tests::{
    Expect, Gate, STORES, commit_workload, keys, memory_store, recorder, wait_for,
};

fn change_set_equals_what_was_written(delivery: Delivery) {
    let mut store = memory_store();
    let all = keys(&STORES);
    // Expectations are stated before anything runs, except the records,
    // which come from the workload's model as it writes.
    let (rec, handle) = recorder("rec", Expect::new().start(1).blocks(1..=6).close());
    let setup = StreamerSetup::new("rec", &all).delivery(delivery);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(rec))
        .start(&mut store)
        .unwrap();
    let written = commit_workload(&mut manager, &mut store, 1..=6);
    manager.close(&mut store).unwrap();

    let handle = handle.with_expect(|e| e.written(&written, &STORES).stores(&STORES));
    handle.verify();
    // The model is not trivially empty: every block has sets and deletes.
    for (h, recs) in &written {
        assert!(recs.iter().any(|r| r.2.is_none()), "block {h} has a delete");
        assert!(recs.iter().any(|r| r.2.is_some()), "block {h} has a set");
    }
    // The change log holds the same records.
    let log = store.change_log();
    for (h, recs) in &written {
        if let Some(cs) = log.get(*h).unwrap() {
            let got: Vec<_> = cs
                .records()
                .map(|r| {
                    (
                        r.store.to_string(),
                        r.key.to_vec(),
                        r.value.map(<[u8]>::to_vec),
                    )
                })
                .collect();
            assert_eq!(&got, recs, "change log of block {h}");
        }
    }
}

#[test]
fn delivery_sync_change_set_equals_what_was_written() {
    change_set_equals_what_was_written(Delivery::Sync);
}

#[test]
fn delivery_async_change_set_equals_what_was_written() {
    change_set_equals_what_was_written(Delivery::Async);
}

#[test]
fn delivery_block_carries_commit_info_and_store_hashes() {
    let mut store = memory_store();
    let all = keys(&STORES);
    let (rec, handle) = recorder("rec", Expect::new().start(1).blocks(1..=3).close());
    let setup = StreamerSetup::new("rec", &all[1..2]).delivery(Delivery::Sync);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(rec))
        .start(&mut store)
        .unwrap();
    let mut infos = Vec::new();
    for h in 1..=3 {
        statestream_tests::workload(&mut store, h);
        infos.push(
            manager
                .commit(&mut store, statestream_tests::meta_for(h))
                .unwrap(),
        );
    }
    manager.close(&mut store).unwrap();
    handle.verify();
    let got: Vec<_> = handle.delivered().iter().map(|d| d.commit).collect();
    assert_eq!(got, infos);
    assert_eq!(store.last_commit(), infos[2]);
}

#[test]
fn delivery_slow_async_streamer_never_blocks_commits() {
    const BLOCKS: u64 = 50;
    let mut store = memory_store();
    let all = keys(&STORES);
    let gate = Gate::closed();
    let (rec, handle) = recorder("slow", Expect::new().start(1).blocks(1..=BLOCKS).close());
    let rec = rec.sleep_per_block(Duration::from_millis(20)).gate(&gate);
    let setup = StreamerSetup::new("slow", &all)
        .delivery(Delivery::Async)
        .queue(1);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(rec))
        .start(&mut store)
        .unwrap();

    // The streamer is held at its gate: it cannot deliver anything until the
    // loop is over. If a commit waited for it, this loop would never end.
    let written = commit_workload(&mut manager, &mut store, 1..=BLOCKS);
    let stats = manager.stats();
    assert_eq!(stats.len(), 1);
    let s = &stats[0];
    assert_eq!(s.delivered_height, 0, "{s:?}");
    assert_eq!(s.lag, BLOCKS, "{s:?}");
    assert!(s.queue_depth <= 1, "{s:?}");
    // Queue 1 and at most one block in the streamer's hands: every other
    // block could not be queued.
    assert!(s.fell_behind >= BLOCKS - 2, "{s:?}");
    assert!(handle.heights().is_empty());

    gate.open();
    // Some progress happens in the background before shutdown.
    wait_for("the slow streamer to deliver a few blocks", || {
        manager.stats()[0].delivered_height >= 3
    });
    manager.close(&mut store).unwrap();
    let handle = handle.with_expect(|e| e.written(&written, &STORES));
    handle.verify();
    assert_eq!(handle.heights(), (1..=BLOCKS).collect::<Vec<_>>());
    assert_eq!(store.cursor("slow").unwrap(), Some(BLOCKS));
}

#[test]
fn delivery_async_stats_reach_zero_lag() {
    let mut store = memory_store();
    let all = keys(&STORES);
    let (rec, handle) = recorder("rec", Expect::new().start(1).blocks(1..=5).close());
    let setup = StreamerSetup::new("rec", &all)
        .delivery(Delivery::Async)
        .queue(2);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(rec))
        .start(&mut store)
        .unwrap();
    let written = commit_workload(&mut manager, &mut store, 1..=5);
    wait_for("lag 0", || manager.stats()[0].lag == 0);
    let s = manager.stats().remove(0);
    assert_eq!(s.name, "rec");
    assert_eq!(s.delivery, Delivery::Async);
    assert_eq!(s.delivered_height, 5);
    assert_eq!(s.queue_depth, 0);
    assert_eq!(s.errors, 0);
    assert_eq!(s.last_error, None);
    manager.close(&mut store).unwrap();
    handle
        .with_expect(|e| e.written(&written, &STORES))
        .verify();
}

#[test]
fn delivery_sync_and_async_side_by_side_share_blocks() {
    let mut store = memory_store();
    let all = keys(&STORES);
    let (a, ha) = recorder("a", Expect::new().start(1).blocks(1..=4).close());
    let (b, hb) = recorder("b", Expect::new().start(1).blocks(1..=4).close());
    let mut manager = DeliveryManager::builder()
        .streamers(vec![
            (
                StreamerSetup::new("a", &all).delivery(Delivery::Sync),
                Box::new(a),
            ),
            (
                StreamerSetup::new("b", &all[..1]).delivery(Delivery::Async),
                Box::new(b),
            ),
        ])
        .start(&mut store)
        .unwrap();
    let written = commit_workload(&mut manager, &mut store, 1..=4);
    manager.close(&mut store).unwrap();
    ha.with_expect(|e| e.written(&written, &STORES)).verify();
    hb.with_expect(|e| e.written(&written, &STORES[..1]).stores(&STORES[..1]))
        .verify();
}

#[test]
fn delivery_duplicate_names_are_an_error() {
    let mut store = memory_store();
    let all = keys(&STORES);
    let (a, _) = recorder("a", Expect::new());
    let (b, _) = recorder("b", Expect::new());
    let err = DeliveryManager::builder()
        .streamers(vec![
            (StreamerSetup::new("same", &all), Box::new(a)),
            (StreamerSetup::new("same", &all), Box::new(b)),
        ])
        .start(&mut store)
        .unwrap_err();
    assert!(err.to_string().contains("same"), "{err}");
}
