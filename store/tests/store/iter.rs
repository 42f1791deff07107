//! Range and prefix iteration on the root and through nested caches.

use std::ops::Bound::{self, Excluded, Included, Unbounded};

use statestream_store::{KvStore, MultiStore, Order};

use crate::util::{collect, collect_keys, key, keys};

/// A range's start and end bounds.
type KeyRange<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// A range and the keys it must yield in ascending order.
type RangeCase<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>, Vec<Vec<u8>>);

fn committed_store() -> MultiStore {
    let mut store = MultiStore::in_memory(&keys(&["bank", "acc"])).expect("open");
    let bank = key("bank");
    for k in [&b"a"[..], b"b", b"c", b"d", b"e"] {
        store.set(&bank, k, &[k[0], b'0']).expect("set");
    }
    store.set(&key("acc"), b"other", b"x").expect("set");
    store.commit().expect("commit");
    store
}

fn ks(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|k| k.as_bytes().to_vec()).collect()
}

fn rev(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.reverse();
    v
}

#[test]
fn iter_root_forward_and_reverse() {
    let mut store = committed_store();
    let bank = key("bank");
    // Root pending writes over the committed state.
    store.set(&bank, b"bb", b"new").expect("set");
    store.set(&bank, b"c", b"c1").expect("set");
    store.delete(&bank, b"d").expect("delete");
    let want = ks(&["a", "b", "bb", "c", "e"]);
    assert_eq!(
        collect_keys(store.iter(&bank, Order::Ascending).expect("iter")),
        want
    );
    assert_eq!(
        collect_keys(store.iter(&bank, Order::Descending).expect("iter")),
        rev(want)
    );
    let pairs = collect(
        store
            .range(&bank, Included(b"b"), Excluded(b"d"), Order::Ascending)
            .expect("range"),
    );
    assert_eq!(
        pairs,
        vec![
            (b"b".to_vec(), b"b0".to_vec()),
            (b"bb".to_vec(), b"new".to_vec()),
            (b"c".to_vec(), b"c1".to_vec()),
        ]
    );
    // Other stores are not mixed in.
    assert_eq!(
        collect_keys(store.iter(&key("acc"), Order::Ascending).expect("iter")),
        ks(&["other"])
    );
}

#[test]
fn iter_range_bounds_on_root_and_caches() {
    let mut store = committed_store();
    let bank = key("bank");
    store.set(&bank, b"ba", b"root").expect("set");
    let cases: Vec<RangeCase<'_>> = vec![
        (
            Included(b"b"),
            Included(b"d"),
            ks(&["b", "ba", "bc", "c", "d"]),
        ),
        (Excluded(b"b"), Excluded(b"d"), ks(&["ba", "bc", "c"])),
        (Unbounded, Excluded(b"c"), ks(&["a", "b", "ba", "bc"])),
        (Excluded(b"c"), Unbounded, ks(&["d", "e"])),
        (Included(b"0"), Included(b"a"), ks(&["a"])),
        (Included(b"f"), Unbounded, vec![]),
    ];
    let mut outer = store.cache();
    outer.set(&bank, b"bc", b"outer").expect("set");
    let inner = outer.cache();
    for (start, end, want) in cases {
        for order in [Order::Ascending, Order::Descending] {
            let want = match order {
                Order::Ascending => want.clone(),
                Order::Descending => rev(want.clone()),
            };
            let got = collect_keys(inner.range(&bank, start, end, order).expect("range"));
            assert_eq!(got, want, "{start:?}..{end:?} {order:?}");
        }
    }
}

#[test]
fn iter_through_nested_caches_with_pending_deletes() {
    let mut store = committed_store();
    let bank = key("bank");
    store.delete(&bank, b"a").expect("delete");
    store.set(&bank, b"f", b"root").expect("set");
    let mut l1 = store.cache();
    l1.delete(&bank, b"b").expect("delete");
    l1.set(&bank, b"f", b"l1").expect("set");
    l1.set(&bank, b"g", b"l1").expect("set");
    {
        let mut l2 = l1.cache();
        // A deleted committed key, a deleted root-pending key, a deleted
        // l1-pending key, a key that was never there, and a revived key.
        l2.delete(&bank, b"c").expect("delete");
        l2.delete(&bank, b"f").expect("delete");
        l2.delete(&bank, b"g").expect("delete");
        l2.delete(&bank, b"zz").expect("delete");
        l2.set(&bank, b"b", b"back").expect("set");
        l2.set(&bank, b"0", b"l2").expect("set");
        let want = ks(&["0", "b", "d", "e"]);
        assert_eq!(
            collect_keys(l2.iter(&bank, Order::Ascending).expect("iter")),
            want
        );
        assert_eq!(
            collect_keys(l2.iter(&bank, Order::Descending).expect("iter")),
            rev(want)
        );
        assert_eq!(l2.get(&bank, b"b").expect("get"), Some(b"back".to_vec()));
        assert_eq!(l2.get(&bank, b"c").expect("get"), None);
        assert!(!l2.has(&bank, b"f").expect("has"));
        // The parent does not see the child's writes yet.
        drop(l2);
    }
    let want = ks(&["c", "d", "e", "f", "g"]);
    assert_eq!(
        collect_keys(l1.iter(&bank, Order::Ascending).expect("iter")),
        want
    );
    assert_eq!(
        collect_keys(l1.iter(&bank, Order::Descending).expect("iter")),
        rev(want)
    );
    assert_eq!(l1.get(&bank, b"f").expect("get"), Some(b"l1".to_vec()));
    drop(l1);
    assert_eq!(
        collect_keys(store.iter(&bank, Order::Ascending).expect("iter")),
        ks(&["b", "c", "d", "e", "f"])
    );
}

#[test]
fn iter_everything_deleted_yields_nothing() {
    let mut store = committed_store();
    let bank = key("bank");
    let mut tx = store.cache();
    for k in [&b"a"[..], b"b", b"c", b"d", b"e"] {
        tx.delete(&bank, k).expect("delete");
    }
    for order in [Order::Ascending, Order::Descending] {
        assert!(collect(tx.iter(&bank, order).expect("iter")).is_empty());
    }
}

#[test]
fn iter_prefix_with_0xff_bytes() {
    let mut store = MultiStore::in_memory(&keys(&["s"])).expect("open");
    let s = key("s");
    let all: Vec<Vec<u8>> = vec![
        vec![0x00],
        vec![0x01],
        vec![0x01, 0xfe],
        vec![0x01, 0xff],
        vec![0x01, 0xff, 0x00],
        vec![0x01, 0xff, 0xff],
        vec![0x02],
        vec![0xfe, 0xff],
        vec![0xff],
        vec![0xff, 0x00],
        vec![0xff, 0xff],
        vec![0xff, 0xff, 0x01],
    ];
    // Half committed, half pending in the root, some in a cache.
    for (i, k) in all.iter().enumerate() {
        if i % 2 == 0 {
            store.set(&s, k, b"v").expect("set");
        }
    }
    store.commit().expect("commit");
    for (i, k) in all.iter().enumerate() {
        if i % 4 == 1 {
            store.set(&s, k, b"v").expect("set");
        }
    }
    let mut tx = store.cache();
    for (i, k) in all.iter().enumerate() {
        if i % 4 == 3 {
            tx.set(&s, k, b"v").expect("set");
        }
    }
    let with_prefix =
        |p: &[u8]| -> Vec<Vec<u8>> { all.iter().filter(|k| k.starts_with(p)).cloned().collect() };
    for prefix in [
        &[][..],
        &[0x01],
        &[0x01, 0xff],
        &[0x01, 0xff, 0xff],
        &[0xff],
        &[0xff, 0xff],
        &[0xff, 0xff, 0xff],
        &[0xfe],
        &[0x03],
    ] {
        let want = with_prefix(prefix);
        for order in [Order::Ascending, Order::Descending] {
            let want = match order {
                Order::Ascending => want.clone(),
                Order::Descending => rev(want.clone()),
            };
            let got = collect_keys(tx.prefix(&s, prefix, order).expect("prefix"));
            assert_eq!(got, want, "prefix {prefix:02x?} {order:?}");
        }
    }
    // The root, without the cache's writes.
    tx.discard();
    let got = collect_keys(
        store
            .prefix(&s, &[0xff], Order::Descending)
            .expect("prefix"),
    );
    assert_eq!(got, vec![vec![0xff, 0xff], vec![0xff, 0x00], vec![0xff]]);
}

#[test]
fn iter_empty_and_inverted_ranges_are_empty() {
    let mut store = committed_store();
    let bank = key("bank");
    store.set(&bank, b"c", b"pending").expect("set");
    let cases: [KeyRange<'_>; 6] = [
        (Included(b"d"), Included(b"b")),
        (Included(b"d"), Excluded(b"b")),
        (Excluded(b"c"), Excluded(b"c")),
        (Included(b"c"), Excluded(b"c")),
        (Excluded(b"c"), Included(b"c")),
        (Excluded(b"e"), Excluded(b"a")),
    ];
    let mut tx = store.cache();
    tx.set(&bank, b"c", b"cached").expect("set");
    for (start, end) in cases {
        for order in [Order::Ascending, Order::Descending] {
            let got = collect(tx.range(&bank, start, end, order).expect("range"));
            assert!(
                got.is_empty(),
                "cache {start:?}..{end:?} {order:?}: {got:?}"
            );
        }
    }
    drop(tx);
    for (start, end) in cases {
        for order in [Order::Ascending, Order::Descending] {
            let got = collect(store.range(&bank, start, end, order).expect("range"));
            assert!(got.is_empty(), "root {start:?}..{end:?} {order:?}: {got:?}");
        }
    }
    // A single-key inclusive range is not empty.
    let got = collect_keys(
        store
            .range(&bank, Included(b"c"), Included(b"c"), Order::Descending)
            .expect("range"),
    );
    assert_eq!(got, ks(&["c"]));
}
