//! The error policy: `stop-node-on-error` true and false, sync and async.

use statestream::{BlockMeta, Delivery, DeliveryManager, Error, StreamerSetup};
use statestream_tests::{
    Expect, Fail, STORES, commit_without_manager, commit_workload, keys, memory_store, meta_for,
    recorder, wait_for, workload,
};

#[test]
fn errors_sync_stop_node_on_error_halts_at_the_failing_block() {
    let mut store = memory_store();
    let all = keys(&STORES);
    let (rec, handle) = recorder(
        "rec",
        Expect::new()
            .start(1)
            .blocks(1..=2)
            .close()
            .failed_attempts(&[3]),
    );
    let rec = rec.fail(3, Fail::Always);
    let setup = StreamerSetup::new("rec", &all)
        .delivery(Delivery::Sync)
        .stop_node_on_error(true);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(rec))
        .start(&mut store)
        .unwrap();
    let mut written = commit_workload(&mut manager, &mut store, 1..=2);

    // Block 3: committed, but its commit call reports the halt.
    written.insert(3, workload(&mut store, 3));
    let err = manager.commit(&mut store, meta_for(3)).unwrap_err();
    assert!(
        matches!(&err, Error::Halted { streamer, height: 3, message }
            if streamer == "rec" && message.contains("injected failure")),
        "{err:?}"
    );
    assert!(err.to_string().contains("stop-node-on-error"), "{err}");
    assert_eq!(store.version(), 3, "the failing block is committed");
    let cs = store
        .change_log()
        .get(3)
        .unwrap()
        .expect("block 3 is in the change log");
    assert_eq!(cs.height(), 3);

    // Every later commit fails too, and commits nothing.
    for _ in 0..3 {
        let err = manager
            .commit(&mut store, BlockMeta::default())
            .unwrap_err();
        assert!(matches!(err, Error::Halted { height: 3, .. }), "{err:?}");
        assert_eq!(store.version(), 3);
    }
    let stats = manager.stats();
    assert_eq!(stats[0].delivered_height, 2);
    assert_eq!(stats[0].errors, 1);
    // close() reports the halt (after persisting the cursors).
    let closed = manager.close(&mut store);
    assert!(matches!(closed, Err(Error::Halted { .. })), "{closed:?}");
    handle.verify();
    assert_eq!(store.cursor("rec").unwrap(), Some(2));

    // Restart with a working streamer: it gets exactly the missing block 3
    // (from the change log), then live blocks.
    let (rec, handle) = recorder(
        "rec",
        Expect::new()
            .start(3)
            .blocks(3..=5)
            .close()
            .failed_attempts(&[]),
    );
    let setup = StreamerSetup::new("rec", &all)
        .delivery(Delivery::Sync)
        .stop_node_on_error(true);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(rec))
        .start(&mut store)
        .unwrap();
    assert_eq!(handle.heights(), [3], "caught up before any new block");
    written.extend(commit_workload(&mut manager, &mut store, 4..=5));
    manager.close(&mut store).unwrap();
    handle
        .with_expect(|e| e.written(&written, &STORES))
        .verify();
}

#[test]
fn errors_sync_without_stop_catches_up_at_the_next_commit() {
    let mut store = memory_store();
    let all = keys(&STORES);
    let (rec, handle) = recorder(
        "rec",
        Expect::new()
            .start(1)
            .blocks(1..=7)
            .close()
            .failed_attempts(&[3, 5, 5]),
    );
    let rec = rec.fail(3, Fail::Times(1)).fail(5, Fail::Times(2));
    let setup = StreamerSetup::new("rec", &all)
        .delivery(Delivery::Sync)
        .stop_node_on_error(false);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(rec))
        .start(&mut store)
        .unwrap();
    let mut written = commit_workload(&mut manager, &mut store, 1..=3);
    // Block 3 failed; the commit succeeded and the error is counted.
    assert_eq!(handle.heights(), [1, 2]);
    let s = manager.stats().remove(0);
    assert_eq!((s.delivered_height, s.lag, s.errors), (2, 1, 1), "{s:?}");
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("height 3"),
        "{s:?}"
    );

    // The next commit delivers block 3 again (from the change log) before 4.
    written.extend(commit_workload(&mut manager, &mut store, 4..=4));
    assert_eq!(handle.heights(), [1, 2, 3, 4]);
    let s = manager.stats().remove(0);
    assert_eq!((s.delivered_height, s.lag, s.errors), (4, 0, 1), "{s:?}");
    assert_eq!(s.caught_up, 1, "{s:?}");

    // Block 5 fails twice: at its own commit and at 6's catch-up; block 6
    // is not delivered before 5.
    written.extend(commit_workload(&mut manager, &mut store, 5..=6));
    assert_eq!(handle.heights(), [1, 2, 3, 4]);
    let s = manager.stats().remove(0);
    assert_eq!((s.delivered_height, s.lag, s.errors), (4, 2, 3), "{s:?}");
    written.extend(commit_workload(&mut manager, &mut store, 7..=7));
    assert_eq!(handle.heights(), [1, 2, 3, 4, 5, 6, 7]);
    manager.close(&mut store).unwrap();

    handle
        .with_expect(|e| e.written(&written, &STORES))
        .verify();
}

#[test]
fn errors_async_stop_node_on_error_halts_a_later_commit() {
    let mut store = memory_store();
    let all = keys(&STORES);
    // The worker stops at the failure and closes its streamer.
    let (rec, handle) = recorder(
        "rec",
        Expect::new()
            .start(1)
            .blocks(1..=2)
            .close()
            .failed_attempts(&[3]),
    );
    let rec = rec.fail(3, Fail::Always);
    let setup = StreamerSetup::new("rec", &all)
        .delivery(Delivery::Async)
        .stop_node_on_error(true);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(rec))
        .start(&mut store)
        .unwrap();
    let mut written = commit_workload(&mut manager, &mut store, 1..=3);

    // The failure surfaces at some later commit: commit empty blocks until
    // one errors.
    let mut err = None;
    wait_for("a commit to report the halt", || {
        match manager.commit(&mut store, BlockMeta::default()) {
            Ok(_) => false,
            Err(e) => {
                err = Some(e);
                true
            }
        }
    });
    let err = err.unwrap();
    assert!(
        matches!(&err, Error::Halted { streamer, height: 3, .. } if streamer == "rec"),
        "{err:?}"
    );
    let committed = store.version();
    assert!(committed >= 3);
    // Later commits fail too and commit nothing.
    let again = manager
        .commit(&mut store, BlockMeta::default())
        .unwrap_err();
    assert!(
        matches!(again, Error::Halted { height: 3, .. }),
        "{again:?}"
    );
    assert_eq!(store.version(), committed);
    assert_eq!(manager.stats()[0].errors, 1);
    // close() reports the halt (after persisting the cursors).
    let closed = manager.close(&mut store);
    assert!(matches!(closed, Err(Error::Halted { .. })), "{closed:?}");
    handle.verify();
    assert_eq!(store.cursor("rec").unwrap(), Some(2));

    // After a restart a working streamer resumes at 3 and gets every block
    // that was committed, including the empty ones.
    let (rec, handle) = recorder(
        "rec",
        Expect::new()
            .start(3)
            .blocks(3..=committed + 2)
            .close()
            .failed_attempts(&[]),
    );
    let setup = StreamerSetup::new("rec", &all).delivery(Delivery::Async);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(rec))
        .start(&mut store)
        .unwrap();
    written.extend(commit_workload(
        &mut manager,
        &mut store,
        committed + 1..=committed + 2,
    ));
    manager.close(&mut store).unwrap();
    let handle = handle.with_expect(|e| e.written(&written, &STORES));
    handle.verify();
    for d in handle.delivered() {
        if !written.contains_key(&d.height) {
            assert!(
                d.records.is_empty(),
                "block {} was committed empty",
                d.height
            );
            assert_eq!(d.meta, BlockMeta::default());
        }
    }
}

#[test]
fn errors_async_without_stop_retries_until_delivered() {
    let mut store = memory_store();
    let all = keys(&STORES);
    let (rec, handle) = recorder(
        "rec",
        Expect::new()
            .start(1)
            .blocks(1..=5)
            .close()
            .failed_attempts(&[2, 2]),
    );
    let rec = rec.fail(2, Fail::Times(2));
    let setup = StreamerSetup::new("rec", &all)
        .delivery(Delivery::Async)
        .stop_node_on_error(false);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(rec))
        .start(&mut store)
        .unwrap();
    let written = commit_workload(&mut manager, &mut store, 1..=5);
    wait_for("every block to be delivered", || {
        manager.stats()[0].delivered_height == 5
    });
    let s = manager.stats().remove(0);
    assert_eq!(s.errors, 2, "{s:?}");
    assert!(s.last_error.is_some());
    manager.close(&mut store).unwrap();
    handle
        .with_expect(|e| e.written(&written, &STORES))
        .verify();
}

#[test]
fn errors_start_failure_of_sync_streamer_fails_start() {
    let mut store = memory_store();
    let all = keys(&STORES);
    commit_without_manager(&mut store, 1..=3);
    let (rec, handle) = recorder("rec", Expect::new().start(4));
    let setup = StreamerSetup::new("rec", &all).delivery(Delivery::Sync);
    let err = DeliveryManager::builder()
        .streamer(setup, Box::new(rec.fail_start()))
        .start(&mut store)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Lifecycle { streamer, action: "start", .. } if streamer == "rec"),
        "{err:?}"
    );
    handle.verify();
}

#[test]
fn errors_start_failure_of_async_streamer_halts() {
    let mut store = memory_store();
    let all = keys(&STORES);
    commit_without_manager(&mut store, 1..=3);
    let (rec, handle) = recorder("rec", Expect::new().start(4));
    let setup = StreamerSetup::new("rec", &all).delivery(Delivery::Async);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(rec.fail_start()))
        .start(&mut store)
        .unwrap();
    let mut err = None;
    wait_for("a commit to report the halt", || {
        match manager.commit(&mut store, BlockMeta::default()) {
            Ok(_) => false,
            Err(e) => {
                err = Some(e);
                true
            }
        }
    });
    let err = err.unwrap();
    assert!(matches!(err, Error::Halted { height: 4, .. }), "{err:?}");
    // close() reports the halt (after persisting the cursors).
    let closed = manager.close(&mut store);
    assert!(matches!(closed, Err(Error::Halted { .. })), "{closed:?}");
    handle.verify();
}

#[test]
fn errors_async_without_stop_failing_streamer_does_not_hold_up_close() {
    let mut store = memory_store();
    let all = keys(&STORES);
    let (rec, handle) = recorder("rec", Expect::new().start(1).blocks(1..=2).close());
    let rec = rec.fail(3, Fail::Always);
    let setup = || {
        StreamerSetup::new("rec", &all)
            .delivery(Delivery::Async)
            .stop_node_on_error(false)
    };
    let mut manager = DeliveryManager::builder()
        .streamer(setup(), Box::new(rec))
        .start(&mut store)
        .unwrap();
    let mut written = commit_workload(&mut manager, &mut store, 1..=5);
    wait_for("block 3 to fail twice", || {
        handle.failed_attempts().len() >= 2
    });
    // Commits go on while it fails.
    written.extend(commit_workload(&mut manager, &mut store, 6..=7));
    let s = manager.stats().remove(0);
    assert_eq!(s.delivered_height, 2, "{s:?}");
    assert!(s.errors >= 2, "{s:?}");
    // Shutdown gives up on the failing block instead of retrying forever.
    manager.close(&mut store).unwrap();
    handle.verify();
    assert!(handle.failed_attempts().iter().all(|&h| h == 3));
    assert_eq!(store.cursor("rec").unwrap(), Some(2));

    // Nothing was skipped: after a restart it resumes at 3.
    let (rec, handle) = recorder("rec", Expect::new().start(3).blocks(3..=8).close());
    let mut manager = DeliveryManager::builder()
        .streamer(setup(), Box::new(rec))
        .start(&mut store)
        .unwrap();
    written.extend(commit_workload(&mut manager, &mut store, 8..=8));
    manager.close(&mut store).unwrap();
    handle
        .with_expect(|e| e.written(&written, &STORES))
        .verify();
}
