//! The write listener contract (see `WriteListener`).

use statestream_store::{CommitInput, KvStore, MultiStore};

use crate::util::{Event, Recorder, key, keys, rec, records};

fn store_with_recorder() -> (MultiStore, crate::util::Log) {
    let mut store = MultiStore::in_memory(&keys(&["bank", "acc", "gov"])).expect("open");
    let (recorder, log) = Recorder::new();
    let all = store.stores().to_vec();
    store.add_listener(&all, recorder).expect("add listener");
    (store, log)
}

#[test]
fn listener_nothing_observed_before_root_flush() {
    let (mut store, log) = store_with_recorder();
    let bank = key("bank");
    let mut outer = store.cache();
    outer.set(&bank, b"a", b"1").expect("set");
    {
        let mut inner = outer.cache();
        inner.set(&bank, b"b", b"2").expect("set");
        inner.delete(&bank, b"c").expect("delete");
        assert!(log.events().is_empty(), "inner cache writes observed");
        inner.write().expect("write inner");
    }
    // Flushed into the outer cache, still not at the root.
    assert!(log.events().is_empty(), "writes observed before the root");
    outer.write().expect("write outer");
    assert_eq!(
        log.writes(),
        vec![
            rec("bank", b"a", Some(b"1")),
            rec("bank", b"b", Some(b"2")),
            rec("bank", b"c", None),
        ]
    );
}

#[test]
fn listener_dropped_cache_never_observed() {
    let (mut store, log) = store_with_recorder();
    let bank = key("bank");
    {
        let mut tx = store.cache();
        tx.set(&bank, b"dropped", b"1").expect("set");
    }
    {
        let mut tx = store.cache();
        tx.set(&bank, b"discarded", b"1").expect("set");
        tx.discard();
    }
    {
        // A nested cache written back into a parent that is then dropped.
        let mut outer = store.cache();
        let mut inner = outer.cache();
        inner.set(&bank, b"nested", b"1").expect("set");
        inner.write().expect("write inner");
        drop(outer);
    }
    assert!(log.events().is_empty(), "{:?}", log.events());
    let cs = store.commit_block(CommitInput::new()).expect("commit");
    assert!(cs.is_empty(), "{cs:?}");
    assert_eq!(store.get(&bank, b"dropped").expect("get"), None);
    assert_eq!(store.get(&bank, b"nested").expect("get"), None);
}

#[test]
fn listener_nested_caches_observed_once() {
    let (mut store, log) = store_with_recorder();
    let (acc, bank) = (key("acc"), key("bank"));
    {
        let mut l1 = store.cache();
        l1.set(&bank, b"l1", b"1").expect("set");
        {
            let mut l2 = l1.cache();
            l2.set(&bank, b"l2", b"2").expect("set");
            {
                let mut l3 = l2.cache();
                l3.set(&acc, b"l3", b"3").expect("set");
                l3.write().expect("write l3");
            }
            l2.write().expect("write l2");
        }
        l1.write().expect("write l1");
    }
    assert_eq!(
        log.writes(),
        vec![
            rec("acc", b"l3", Some(b"3")),
            rec("bank", b"l1", Some(b"1")),
            rec("bank", b"l2", Some(b"2")),
        ]
    );
    let cs = store.commit_block(CommitInput::new()).expect("commit");
    assert_eq!(records(&cs), log.writes());
}

#[test]
fn listener_cache_write_back_ordered_by_store_then_key() {
    let (mut store, log) = store_with_recorder();
    let (acc, bank, gov) = (key("acc"), key("bank"), key("gov"));
    // Direct root writes arrive in call order.
    store.set(&gov, b"z", b"root").expect("set");
    store.set(&acc, b"y", b"root").expect("set");
    {
        let mut tx = store.cache();
        tx.set(&gov, b"b", b"1").expect("set");
        tx.set(&bank, b"z", b"2").expect("set");
        tx.delete(&acc, b"m").expect("delete");
        tx.set(&bank, b"a", b"3").expect("set");
        tx.set(&acc, b"\x00", b"4").expect("set");
        tx.set(&gov, b"a", b"5").expect("set");
        tx.write().expect("write");
    }
    assert_eq!(
        log.writes(),
        vec![
            rec("gov", b"z", Some(b"root")),
            rec("acc", b"y", Some(b"root")),
            rec("acc", b"\x00", Some(b"4")),
            rec("acc", b"m", None),
            rec("bank", b"a", Some(b"3")),
            rec("bank", b"z", Some(b"2")),
            rec("gov", b"a", Some(b"5")),
            rec("gov", b"b", Some(b"1")),
        ]
    );
    // The change set is ordered by store then key whatever the arrival order.
    let cs = store.commit_block(CommitInput::new()).expect("commit");
    assert_eq!(
        records(&cs),
        vec![
            rec("acc", b"\x00", Some(b"4")),
            rec("acc", b"m", None),
            rec("acc", b"y", Some(b"root")),
            rec("bank", b"a", Some(b"3")),
            rec("bank", b"z", Some(b"2")),
            rec("gov", b"a", Some(b"5")),
            rec("gov", b"b", Some(b"1")),
            rec("gov", b"z", Some(b"root")),
        ]
    );
}

#[test]
fn listener_deletes_carry_no_value() {
    let (mut store, log) = store_with_recorder();
    let bank = key("bank");
    store.set(&bank, b"k", b"v").expect("set");
    store.commit().expect("commit");
    log.clear();
    store.delete(&bank, b"k").expect("delete");
    // A delete of a missing key is still a recorded write.
    store.delete(&bank, b"missing").expect("delete");
    {
        let mut tx = store.cache();
        tx.set(&bank, b"t", b"x").expect("set");
        tx.delete(&bank, b"t").expect("delete");
        tx.write().expect("write");
    }
    assert_eq!(
        log.writes(),
        vec![
            rec("bank", b"k", None),
            rec("bank", b"missing", None),
            rec("bank", b"t", None),
        ]
    );
    let cs = store.commit_block(CommitInput::new()).expect("commit");
    assert!(cs.records().all(|r| r.is_delete() && r.value.is_none()));
    assert_eq!(cs.len(), 3);
    // Deletes stay deletes in the change log too.
    let logged = store.change_log().read(2).expect("read");
    assert_eq!(records(&logged), log.writes());
    assert_eq!(store.get(&bank, b"k").expect("get"), None);
}

#[test]
fn listener_set_then_delete_of_new_key_is_a_delete_record() {
    let (mut store, log) = store_with_recorder();
    let (acc, bank) = (key("acc"), key("bank"));
    // On the root: both writes are observed, the change set keeps the delete.
    store.set(&bank, b"new", b"1").expect("set");
    store.delete(&bank, b"new").expect("delete");
    // In a cache: only the last write per key leaves the cache.
    {
        let mut tx = store.cache();
        tx.set(&acc, b"new", b"1").expect("set");
        tx.delete(&acc, b"new").expect("delete");
        tx.write().expect("write");
    }
    assert_eq!(
        log.writes(),
        vec![
            rec("bank", b"new", Some(b"1")),
            rec("bank", b"new", None),
            rec("acc", b"new", None),
        ]
    );
    let cs = store.commit_block(CommitInput::new()).expect("commit");
    assert_eq!(
        records(&cs),
        vec![rec("acc", b"new", None), rec("bank", b"new", None)]
    );
}

#[test]
fn listener_overwrites_in_one_block_yield_one_record() {
    let (mut store, log) = store_with_recorder();
    let bank = key("bank");
    store.set(&bank, b"k", b"1").expect("set");
    store.set(&bank, b"k", b"22").expect("set");
    store.delete(&bank, b"k").expect("delete");
    {
        let mut tx = store.cache();
        tx.set(&bank, b"k", b"333").expect("set");
        tx.set(&bank, b"k", b"4").expect("set");
        tx.write().expect("write");
    }
    // Shorter last value after a longer one (the builder reuses buffers).
    store.set(&bank, b"k", b"5").expect("set");
    assert_eq!(log.writes().len(), 5);
    let cs = store.commit_block(CommitInput::new()).expect("commit");
    assert_eq!(records(&cs), vec![rec("bank", b"k", Some(b"5"))]);
    assert_eq!(store.get(&bank, b"k").expect("get"), Some(b"5".to_vec()));
}

#[test]
fn listener_blocks_in_a_row_have_only_their_own_changes() {
    let (mut store, log) = store_with_recorder();
    let (acc, bank) = (key("acc"), key("bank"));
    let mut expected = Vec::new();
    for h in 1..=4u8 {
        let mut tx = store.cache();
        tx.set(&bank, &[b'k', h], &[h]).expect("set");
        if h > 1 {
            tx.delete(&bank, &[b'k', h - 1]).expect("delete");
        }
        if h % 2 == 0 {
            tx.set(&acc, b"even", &[h]).expect("set");
        }
        tx.write().expect("write");
        let cs = store.commit_block(CommitInput::new()).expect("commit");
        assert_eq!(cs.height(), u64::from(h));
        let mut want = Vec::new();
        if h % 2 == 0 {
            want.push(rec("acc", b"even", Some(&[h])));
        }
        if h > 1 {
            want.push(rec("bank", &[b'k', h - 1], None));
        }
        want.push(rec("bank", &[b'k', h], Some(&[h])));
        assert_eq!(records(&cs), want, "block {h}");
        expected.push(want);
    }
    // Every store is present in every change set, changed or not.
    let log_handle = store.change_log();
    for (i, want) in expected.iter().enumerate() {
        let h = i as u64 + 1;
        let cs = log_handle.read(h).expect("read");
        assert_eq!(&records(&cs), want, "logged block {h}");
        let names: Vec<_> = cs.stores().iter().map(|s| s.store().name()).collect();
        assert_eq!(names, ["acc", "bank", "gov"]);
    }
    let commits: Vec<u64> = log
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Commit(info) => Some(info.version),
            Event::Write(_) => None,
        })
        .collect();
    assert_eq!(commits, [1, 2, 3, 4]);
}

#[test]
fn listener_on_subset_of_stores_sees_only_those() {
    let mut store = MultiStore::in_memory(&keys(&["bank", "acc", "gov"])).expect("open");
    let (acc, bank, gov) = (key("acc"), key("bank"), key("gov"));
    let (recorder, log) = Recorder::new();
    store
        .add_listener(&[gov.clone(), acc.clone()], recorder)
        .expect("add listener");
    let (all_recorder, all_log) = Recorder::new();
    store
        .add_listener(&[acc.clone(), bank.clone(), gov.clone()], all_recorder)
        .expect("add listener");
    store.set(&bank, b"b", b"1").expect("set");
    store.set(&acc, b"a", b"1").expect("set");
    {
        let mut tx = store.cache();
        tx.set(&bank, b"b2", b"2").expect("set");
        tx.delete(&gov, b"g").expect("delete");
        tx.write().expect("write");
    }
    assert_eq!(
        log.writes(),
        vec![rec("acc", b"a", Some(b"1")), rec("gov", b"g", None)]
    );
    assert_eq!(all_log.writes().len(), 4);
    // The change set is not filtered by listeners.
    let cs = store.commit_block(CommitInput::new()).expect("commit");
    assert_eq!(cs.len(), 4);
}

#[test]
fn listener_on_commit_receives_commit_info() {
    let (mut store, log) = store_with_recorder();
    let bank = key("bank");
    store.set(&bank, b"k", b"v").expect("set");
    let first = store.commit().expect("commit");
    let second = store
        .commit_block(CommitInput::new().app_meta(b"meta".to_vec()))
        .expect("commit")
        .commit_info();
    assert_eq!(first.version, 1);
    assert_eq!(second.version, 2);
    assert_ne!(first.app_hash, second.app_hash);
    assert_eq!(store.last_commit(), second);
    // on_commit comes after the block's writes.
    assert_eq!(
        log.events(),
        vec![
            Event::Write(rec("bank", b"k", Some(b"v"))),
            Event::Commit(first),
            Event::Commit(second),
        ]
    );
}
