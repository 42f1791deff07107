//! The `Streamer` impls that let runtime-chosen sets compose:
//! `Box<dyn Streamer>`, `Vec<S>`, `Option<S>`, driven by the delivery
//! manager.

use std::sync::{Arc, Mutex};

use statestream::{Delivery, DeliveryManager, Error, Streamer, StreamerSetup};
use statestream_tests::{
    Call, Expect, Fail, Journal, Recorder, STORES, commit_workload, keys, memory_store, recorder,
};

fn run(streamer: impl Streamer + 'static, delivery: Delivery, blocks: u64) {
    let mut store = memory_store();
    let all = keys(&STORES);
    let setup = StreamerSetup::new("s", &all)
        .delivery(delivery)
        .stop_node_on_error(false);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(streamer))
        .start(&mut store)
        .unwrap();
    commit_workload(&mut manager, &mut store, 1..=blocks);
    manager.close(&mut store).unwrap();
}

#[test]
fn streamer_box_dyn_forwards_every_hook() {
    let (rec, handle) = recorder("boxed", Expect::new().start(1).blocks(1..=3).close());
    // A box of a box: the outer one is `impl Streamer for Box<dyn Streamer>`.
    let boxed: Box<dyn Streamer> = Box::new(rec);
    run(boxed, Delivery::Sync, 3);
    handle.verify();
}

#[test]
fn streamer_vec_calls_every_element_in_order() {
    let journal: Journal = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    let mut list: Vec<Recorder> = Vec::new();
    for name in ["first", "second", "third"] {
        let (rec, handle) = recorder(name, Expect::new().start(1).blocks(1..=3).close());
        list.push(rec.journal(&journal));
        handles.push(handle);
    }
    run(list, Delivery::Async, 3);
    for h in &handles {
        h.verify();
    }
    // Call by call, every element in list order before the next call.
    let mut expected = Vec::new();
    for call in [
        Call::Start(1),
        Call::Block(1),
        Call::Block(2),
        Call::Block(3),
        Call::Close,
    ] {
        for name in ["first", "second", "third"] {
            expected.push((name.to_string(), call));
        }
    }
    assert_eq!(*journal.lock().unwrap(), expected);
}

#[test]
fn streamer_vec_first_error_stops_the_block_and_it_is_retried() {
    // `second` fails block 2 once: `first` has delivered it and gets it
    // again (streamers must be idempotent per height); `third` gets it once.
    let (a, ha) = recorder("first", Expect::new());
    let (b, hb) = recorder(
        "second",
        Expect::new()
            .start(1)
            .blocks(1..=4)
            .close()
            .failed_attempts(&[2]),
    );
    let (c, hc) = recorder("third", Expect::new().start(1).blocks(1..=4).close());
    run(vec![a, b.fail(2, Fail::Times(1)), c], Delivery::Sync, 4);
    hb.verify();
    hc.verify();
    let again = [1, 2, 2, 3, 4].map(Call::Block);
    let mut want = vec![Call::Start(1)];
    want.extend(again);
    want.push(Call::Close);
    assert_eq!(ha.calls(), want);
}

#[test]
fn streamer_vec_empty_accepts_everything() {
    run(Vec::<Recorder>::new(), Delivery::Sync, 3);
}

#[test]
fn streamer_option_none_is_a_no_op() {
    let mut store = memory_store();
    let all = keys(&STORES);
    let setup = StreamerSetup::new("none", &all).delivery(Delivery::Sync);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(Option::<Recorder>::None))
        .start(&mut store)
        .unwrap();
    commit_workload(&mut manager, &mut store, 1..=3);
    let s = manager.stats().remove(0);
    assert_eq!((s.delivered_height, s.errors), (3, 0));
    manager.close(&mut store).unwrap();
    assert_eq!(store.cursor("none").unwrap(), Some(3));
}

#[test]
fn streamer_option_some_forwards_every_hook() {
    let (rec, handle) = recorder("some", Expect::new().start(1).blocks(1..=3).close());
    run(Some(rec), Delivery::Async, 3);
    handle.verify();
}

#[test]
fn streamer_option_some_forwards_errors() {
    let (rec, handle) = recorder("some", Expect::new().start(1).blocks(1..=2));
    let mut store = memory_store();
    let all = keys(&STORES);
    let setup = StreamerSetup::new("some", &all).delivery(Delivery::Sync);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(Some(rec.fail(3, Fail::Always))))
        .start(&mut store)
        .unwrap();
    commit_workload(&mut manager, &mut store, 1..=2);
    statestream_tests::workload(&mut store, 3);
    let err = manager
        .commit(&mut store, statestream_tests::meta_for(3))
        .unwrap_err();
    assert!(matches!(err, Error::Halted { height: 3, .. }), "{err:?}");
    drop(manager);
    handle.verify();
}

/// The recorder's own check must catch what is wrong, or every test above
/// would pass vacuously.
#[test]
fn streamer_recorder_verify_reports_a_clear_diff() {
    let verify_message = |expect: Expect, run_it: &dyn Fn(Recorder)| -> Option<String> {
        let (rec, handle) = recorder("probe", expect);
        run_it(rec);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle.verify()))
            .err()
            .map(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "non-string panic".into())
            })
    };
    let three = |rec: Recorder| run(rec, Delivery::Sync, 3);

    // Right expectations: no panic.
    assert_eq!(
        verify_message(Expect::new().start(1).blocks(1..=3).close(), &three),
        None
    );

    // A missing block.
    let msg = verify_message(Expect::new().start(1).blocks(1..=4).close(), &three).unwrap();
    assert!(msg.contains("recorder \"probe\""), "{msg}");
    assert!(
        msg.contains("> block(4)") && msg.contains("| close"),
        "{msg}"
    );

    // Wrong records.
    let msg = verify_message(
        Expect::new()
            .start(1)
            .blocks(1..=3)
            .close()
            .records(2, vec![("bank".into(), b"k".to_vec(), None)]),
        &three,
    )
    .unwrap();
    assert!(msg.contains("block 2: records differ"), "{msg}");
    assert!(msg.contains("expected bank/k deleted"), "{msg}");

    // Wrong stores, wrong metadata, unexpected failures.
    let msg = verify_message(
        Expect::new()
            .start(1)
            .blocks(1..=3)
            .close()
            .stores(&["bank"])
            .meta(1, statestream::BlockMeta::default())
            .failed_attempts(&[2]),
        &three,
    )
    .unwrap();
    assert!(msg.contains("stores differ"), "{msg}");
    assert!(msg.contains("block 1: metadata differs"), "{msg}");
    assert!(msg.contains("failed attempts differ"), "{msg}");
}
