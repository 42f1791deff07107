//! Restarts: a streamer whose cursor is behind the committed height is
//! caught up from the change log, in order, before live blocks; a new
//! streamer starts with the next block. On-disk stores.

use statestream::{Delivery, DeliveryManager, Error, StreamerSetup};
use statestream_tests::{
    Expect, STORES, TempHome, commit_without_manager, commit_workload, keys, recorder, wait_for,
};

fn cursor_behind_committed_height(delivery: Delivery) {
    let home = TempHome::new();
    let all = keys(&STORES);
    let setup = || StreamerSetup::new("rec", &all).delivery(delivery);

    // Run 1: blocks 1..=4 delivered.
    let mut store = home.open_store();
    let (rec, handle) = recorder("rec", Expect::new().start(1).blocks(1..=4).close());
    let mut manager = DeliveryManager::builder()
        .streamer(setup(), Box::new(rec))
        .start(&mut store)
        .unwrap();
    let mut written = commit_workload(&mut manager, &mut store, 1..=4);
    manager.close(&mut store).unwrap();
    handle
        .with_expect(|e| e.written(&written, &STORES))
        .verify();
    assert_eq!(store.cursor("rec").unwrap(), Some(4));

    // Run 2: blocks 5..=8 committed without the streamer (the node ran, but
    // the streamer did not get them, e.g. it crashed first).
    written.extend(commit_without_manager(&mut store, 5..=8));
    store.close().unwrap();

    // Run 3: the streamer is back. It gets exactly 5..=8, in order, from the
    // change log, then live blocks 9..=11.
    let mut store = home.open_store();
    assert_eq!(store.version(), 8);
    assert_eq!(store.cursor("rec").unwrap(), Some(4));
    let (rec, handle) = recorder("rec", Expect::new().start(5).blocks(5..=11).close());
    let mut manager = DeliveryManager::builder()
        .streamer(setup(), Box::new(rec))
        .start(&mut store)
        .unwrap();
    written.extend(commit_workload(&mut manager, &mut store, 9..=11));
    wait_for("every block to be delivered", || {
        manager.stats()[0].delivered_height == 11
    });
    let s = manager.stats().remove(0);
    manager.close(&mut store).unwrap();
    handle
        .with_expect(|e| e.written(&written, &STORES))
        .verify();
    // At least the missing blocks came from the change log.
    assert!(s.caught_up >= 4, "{s:?}");
    assert_eq!(store.cursor("rec").unwrap(), Some(11));
    store.close().unwrap();
}

#[test]
fn restart_sync_cursor_behind_gets_exactly_the_missing_blocks() {
    cursor_behind_committed_height(Delivery::Sync);
}

#[test]
fn restart_async_cursor_behind_gets_exactly_the_missing_blocks() {
    cursor_behind_committed_height(Delivery::Async);
}

#[test]
fn restart_after_a_crash_without_close_resumes_from_the_persisted_cursor() {
    let home = TempHome::new();
    let all = keys(&STORES);
    let setup = || StreamerSetup::new("rec", &all).delivery(Delivery::Sync);
    let mut store = home.open_store();
    let (rec, handle) = recorder("rec", Expect::new().start(1).blocks(1..=5));
    let mut manager = DeliveryManager::builder()
        .streamer(setup(), Box::new(rec))
        .start(&mut store)
        .unwrap();
    let mut written = commit_workload(&mut manager, &mut store, 1..=5);
    // No close: the cursor persisted is the one that rode along with the
    // last commit (4); block 5 is delivered again after the restart.
    drop(manager);
    drop(store);
    handle.verify();

    let mut store = home.open_store();
    let persisted = store.cursor("rec").unwrap().unwrap();
    assert!(persisted <= 5);
    let (rec, handle) = recorder(
        "rec",
        Expect::new()
            .start(persisted + 1)
            .blocks(persisted + 1..=7)
            .close(),
    );
    let mut manager = DeliveryManager::builder()
        .streamer(setup(), Box::new(rec))
        .start(&mut store)
        .unwrap();
    written.extend(commit_workload(&mut manager, &mut store, 6..=7));
    manager.close(&mut store).unwrap();
    handle
        .with_expect(|e| e.written(&written, &STORES))
        .verify();
}

fn new_streamer_starts_with_the_next_block(delivery: Delivery) {
    let home = TempHome::new();
    let all = keys(&STORES);
    let mut store = home.open_store();
    let (old, old_handle) = recorder("old", Expect::new().start(1).blocks(1..=3).close());
    let mut manager = DeliveryManager::builder()
        .streamer(StreamerSetup::new("old", &all), Box::new(old))
        .start(&mut store)
        .unwrap();
    let mut written = commit_workload(&mut manager, &mut store, 1..=3);
    manager.close(&mut store).unwrap();
    old_handle
        .with_expect(|e| e.written(&written, &STORES))
        .verify();
    store.close().unwrap();

    let mut store = home.open_store();
    let (new, handle) = recorder("new", Expect::new().start(4).blocks(4..=6).close());
    let (old, old_handle) = recorder("old", Expect::new().start(4).blocks(4..=6).close());
    let mut manager = DeliveryManager::builder()
        .streamers(vec![
            (StreamerSetup::new("old", &all), Box::new(old)),
            (
                StreamerSetup::new("new", &all).delivery(delivery),
                Box::new(new),
            ),
        ])
        .start(&mut store)
        .unwrap();
    // The new streamer's cursor is persisted at once.
    assert_eq!(store.cursor("new").unwrap(), Some(3));
    written.extend(commit_workload(&mut manager, &mut store, 4..=6));
    manager.close(&mut store).unwrap();
    handle
        .with_expect(|e| e.written(&written, &STORES))
        .verify();
    old_handle
        .with_expect(|e| e.written(&written, &STORES))
        .verify();
}

#[test]
fn restart_new_sync_streamer_on_existing_store_starts_with_the_next_block() {
    new_streamer_starts_with_the_next_block(Delivery::Sync);
}

#[test]
fn restart_new_async_streamer_on_existing_store_starts_with_the_next_block() {
    new_streamer_starts_with_the_next_block(Delivery::Async);
}

#[test]
fn restart_streamer_left_out_of_the_config_loses_pruned_blocks_with_a_clear_error() {
    // The change log is pruned below the lowest cursor of the *configured*
    // streamers: while a streamer is left out, its blocks are not kept, and
    // bringing it back is an explicit error rather than a silent gap.
    let home = TempHome::new();
    let all = keys(&STORES);
    let mut store = home.open_store();
    let (rec, handle) = recorder("rec", Expect::new().start(1).blocks(1..=3).close());
    let mut manager = DeliveryManager::builder()
        .streamer(StreamerSetup::new("rec", &all), Box::new(rec))
        .start(&mut store)
        .unwrap();
    commit_workload(&mut manager, &mut store, 1..=3);
    manager.close(&mut store).unwrap();
    handle.verify();

    let mut manager = DeliveryManager::builder()
        .streamers(Vec::new())
        .start(&mut store)
        .unwrap();
    commit_workload(&mut manager, &mut store, 4..=6);
    manager.close(&mut store).unwrap();

    let (rec, handle) = recorder("rec", Expect::new());
    let err = DeliveryManager::builder()
        .streamer(StreamerSetup::new("rec", &all), Box::new(rec))
        .start(&mut store)
        .unwrap_err();
    assert!(
        matches!(&err, Error::CursorPruned { streamer, .. } if streamer == "rec"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("no longer in the change log"), "{msg}");
    assert!(
        msg.contains("new name"),
        "the message says what to do: {msg}"
    );
    assert!(
        msg.contains("statestream cursors --home HOME --delete rec"),
        "{msg}"
    );
    // Deleting the cursor, as the message offers, lets it start anew.
    assert!(store.delete_cursor("rec").unwrap());
    // It starts with the next block, 7; closed at once (a drop could race
    // with its worker's start).
    let (rec, handle2) = recorder("rec", Expect::new().start(7).close());
    let manager = DeliveryManager::builder()
        .streamer(StreamerSetup::new("rec", &all), Box::new(rec))
        .start(&mut store)
        .unwrap();
    manager.close(&mut store).unwrap();
    handle2.verify();
    handle.verify();
}
