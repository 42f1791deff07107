//! Stores fed by a source with heights of its own: stores added at run
//! time, a first height above 1, height gaps.

use statestream_core::ZERO_HASH;
use statestream_store::{Error, KvStore, MultiStore, StoreOptions};

use crate::util::{key, keys};

#[test]
fn a_store_added_at_run_time_starts_its_chain_then_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mut store = MultiStore::open(&path, &[], StoreOptions::default()).unwrap();
    store.add_stores(&keys(&["bank", "acc"])).unwrap();
    store.set(&key("bank"), b"alice", b"10").unwrap();
    store.commit().unwrap();
    let bank_hash = store.store_hash(&key("bank")).unwrap();
    // A store added later sorts before the others: its chain starts at
    // the next block, the others' chains go on.
    store
        .add_stores(&keys(&["staking", "authz", "bank"]))
        .unwrap();
    assert_eq!(store.store_hash(&key("authz")).unwrap(), ZERO_HASH);
    store.set(&key("authz"), b"grant", b"1").unwrap();
    let cs = store.commit_block(Default::default()).unwrap();
    let names: Vec<&str> = cs.stores().iter().map(|s| s.store().name()).collect();
    assert_eq!(names, ["acc", "authz", "bank", "staking"]);
    assert_eq!(cs.store("authz").unwrap().len(), 1);
    assert_ne!(store.store_hash(&key("bank")).unwrap(), bank_hash);
    drop(store);
    let store = MultiStore::open_existing(&path, StoreOptions::default()).unwrap();
    assert_eq!(
        store.stores(),
        keys(&["acc", "authz", "bank", "staking"]).as_slice()
    );
    assert_eq!(
        store.get(&key("authz"), b"grant").unwrap(),
        Some(b"1".to_vec())
    );
    assert_eq!(
        store.get(&key("bank"), b"alice").unwrap(),
        Some(b"10".to_vec())
    );
}

#[test]
fn the_first_height_is_free_and_a_later_jump_is_a_recorded_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mut store = MultiStore::open(&path, &keys(&["bank"]), StoreOptions::default()).unwrap();
    store.save_cursors(&[("files", 0)]).unwrap();
    assert_eq!(store.continue_at(1_200_001).unwrap(), None);
    assert_eq!(store.cursor("files").unwrap(), Some(1_200_000));
    store.set(&key("bank"), b"a", b"1").unwrap();
    assert_eq!(store.commit().unwrap().version, 1_200_001);
    assert!(matches!(
        store.continue_at(1_200_002),
        Err(Error::HeightNotAhead {
            next: 1_200_002,
            ..
        })
    ));
    store
        .save_cursors(&[("files", 1_200_001), ("slow", 1_199_999)])
        .unwrap();
    assert_eq!(
        store.continue_at(1_200_005).unwrap(),
        Some((1_200_002, 1_200_004))
    );
    assert_eq!(store.cursor("files").unwrap(), Some(1_200_004));
    assert_eq!(store.cursor("slow").unwrap(), Some(1_199_999));
    assert_eq!(store.commit().unwrap().version, 1_200_005);
    drop(store);
    let store = MultiStore::open_existing(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.version(), 1_200_005);
    assert_eq!(store.gaps().unwrap(), vec![(1_200_002, 1_200_004)]);
    let log = store.change_log();
    assert!(log.read(1_200_003).is_err());
    assert_eq!(log.read(1_200_005).unwrap().height(), 1_200_005);
}

/// A replica restored from a source's snapshot: its chains continue from
/// the source's values, whatever it held before; the pending hashes say
/// what a commit would give.
#[test]
fn a_restored_snapshot_continues_the_sources_chains_and_replaces_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let stores = keys(&["acc", "bank"]);
    // The source: five blocks.
    let mut source = MultiStore::open(
        &dir.path().join("src.redb"),
        &stores,
        StoreOptions::default(),
    )
    .unwrap();
    for h in 1..=5u8 {
        source.set(&key("bank"), &[b'k', h], &[h]).unwrap();
        source.set(&key("acc"), b"n", &[h]).unwrap();
        source.commit().unwrap();
    }
    let at_5: Vec<_> = stores
        .iter()
        .map(|s| (s.clone(), source.store_hash(s).unwrap()))
        .collect();
    // The replica held other state and two blocks of its own.
    let path = dir.path().join("replica.redb");
    let mut replica = MultiStore::open(&path, &stores, StoreOptions::default()).unwrap();
    replica.set(&key("bank"), b"stale", b"x").unwrap();
    replica.commit().unwrap();
    replica.commit().unwrap();
    replica.save_cursors(&[("file", 2)]).unwrap();
    for h in 1..=5u8 {
        replica.set(&key("bank"), &[b'k', h], &[h]).unwrap();
    }
    replica.set(&key("acc"), b"n", &[5]).unwrap();
    let gap = replica.restore_snapshot(5, &at_5).unwrap();
    assert_eq!(gap, Some((3, 5)));
    assert_eq!(replica.version(), 5);
    assert_eq!(replica.get(&key("bank"), b"stale").unwrap(), None);
    assert_eq!(replica.last_commit(), source.last_commit());
    assert_eq!(replica.cursor("file").unwrap(), Some(5));
    assert!(replica.change_log().bounds().unwrap().is_none());
    // Block 6 on both: the replica's pending hashes, then its commit,
    // equal the source's.
    for s in [&mut source, &mut replica] {
        s.set(&key("bank"), b"six", b"6").unwrap();
        s.delete(&key("acc"), b"n").unwrap();
    }
    let pending = replica.pending_hashes();
    let expected = source.commit().unwrap();
    let got = replica.commit().unwrap();
    assert_eq!(got, expected);
    assert_eq!(
        pending,
        stores
            .iter()
            .map(|s| (s.clone(), replica.store_hash(s).unwrap()))
            .collect::<Vec<_>>()
    );
    // Not at or below the committed height; not without every store.
    let err = replica.restore_snapshot(6, &at_5).unwrap_err();
    assert!(matches!(err, Error::BadSnapshot { .. }), "{err}");
    let err = replica.restore_snapshot(9, &at_5[..1]).unwrap_err();
    assert!(
        err.to_string().contains("no chain value for store bank"),
        "{err}"
    );
    drop(replica);
    let reopened = MultiStore::open_existing(&path, StoreOptions::default()).unwrap();
    assert_eq!(reopened.last_commit(), source.last_commit());
}
