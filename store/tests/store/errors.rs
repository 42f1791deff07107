//! Errors: unknown store, empty key, invalid store key.

use std::ops::Bound::Unbounded;

use statestream_store::{Error, KvStore, MultiStore, Order, StoreKey};

use crate::util::{Recorder, key, keys};

#[test]
fn errors_unknown_store() {
    let mut store = MultiStore::in_memory(&keys(&["bank"])).expect("open");
    let other = key("other");
    let unknown = |r: Result<(), Error>| {
        let err = r.expect_err("unknown store");
        assert!(
            matches!(&err, Error::UnknownStore { store, .. } if store == "other"),
            "{err}"
        );
    };
    unknown(store.get(&other, b"k").map(drop));
    unknown(store.has(&other, b"k").map(drop));
    unknown(store.set(&other, b"k", b"v"));
    unknown(store.delete(&other, b"k"));
    unknown(store.iter(&other, Order::Ascending).map(drop));
    unknown(
        store
            .range(&other, Unbounded, Unbounded, Order::Descending)
            .map(drop),
    );
    unknown(store.prefix(&other, b"k", Order::Ascending).map(drop));
    unknown(store.store_hash(&other).map(drop));
    let (recorder, _) = Recorder::new();
    unknown(store.add_listener(&[key("bank"), other.clone()], recorder));
    {
        let mut tx = store.cache();
        unknown(tx.set(&other, b"k", b"v"));
        unknown(tx.delete(&other, b"k"));
        unknown(tx.get(&other, b"k").map(drop));
        unknown(tx.iter(&other, Order::Descending).map(drop));
        unknown(tx.prefix(&other, b"", Order::Ascending).map(drop));
        tx.write().expect("write nothing");
    }
    let err = store.commit().map(drop);
    assert!(err.is_ok(), "{err:?}");
    assert_eq!(store.change_log().read(1).expect("read").len(), 0);
}

#[test]
fn errors_empty_key() {
    let mut store = MultiStore::in_memory(&keys(&["bank"])).expect("open");
    let bank = key("bank");
    let empty = |r: Result<(), Error>| {
        let err = r.expect_err("empty key");
        assert!(
            matches!(&err, Error::EmptyKey { store } if store == "bank"),
            "{err}"
        );
    };
    empty(store.set(&bank, b"", b"v"));
    empty(store.delete(&bank, b""));
    {
        let mut tx = store.cache();
        empty(tx.set(&bank, b"", b"v"));
        empty(tx.delete(&bank, b""));
        let mut inner = tx.cache();
        empty(inner.set(&bank, b"", b"v"));
    }
    let cs = store
        .commit_block(statestream_store::CommitInput::new())
        .expect("commit");
    assert!(cs.is_empty());
}

#[test]
fn errors_invalid_store_key() {
    let long = "s".repeat(129);
    for name in [
        "",
        "bank/x",
        "with space",
        "ünïcode",
        "tab\t",
        long.as_str(),
    ] {
        let err = StoreKey::new(name).expect_err("invalid");
        assert!(
            matches!(err, statestream_core::Error::InvalidStoreKey { .. }),
            "{name:?}: {err}"
        );
        let err = name.parse::<StoreKey>().expect_err("invalid");
        assert!(
            matches!(err, statestream_core::Error::InvalidStoreKey { .. }),
            "{name:?}: {err}"
        );
    }
    let max = "s".repeat(128);
    for name in ["a", "A-Z_0.9", max.as_str()] {
        assert_eq!(StoreKey::new(name).expect("valid").name(), name);
    }
}

#[test]
fn errors_duplicate_store_key() {
    let err = MultiStore::in_memory(&keys(&["bank", "acc", "bank"])).expect_err("duplicate");
    assert!(
        matches!(&err, Error::DuplicateStoreKey(name) if name == "bank"),
        "{err}"
    );
}

#[test]
fn errors_change_log_height_not_kept() {
    let mut store = MultiStore::in_memory(&keys(&["bank"])).expect("open");
    let err = store.change_log().read(1).expect_err("nothing committed");
    assert!(
        matches!(err, Error::NotInChangeLog { height: 1, .. }),
        "{err}"
    );
    store.commit().expect("commit");
    let err = store.change_log().read(2).expect_err("future");
    assert!(
        matches!(err, Error::NotInChangeLog { height: 2, .. }),
        "{err}"
    );
    let err = store.change_log().read(0).expect_err("zero");
    assert!(
        matches!(err, Error::NotInChangeLog { height: 0, .. }),
        "{err}"
    );
}
