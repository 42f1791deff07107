//! The chained app hash.

use statestream_core::{ZERO_HASH, app_hash, chain_store_hash, encode_record};
use statestream_store::{CommitInfo, Hash, KvStore, MultiStore};

use crate::util::{key, keys};

const STORES: [&str; 3] = ["bank", "acc", "gov"];

/// A write of a block: store, key, value (`None` = delete).
type Write<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

fn fresh() -> MultiStore {
    MultiStore::in_memory(&keys(&STORES)).expect("open")
}

fn apply(store: &mut MultiStore, writes: &[Write<'_>]) -> CommitInfo {
    {
        let mut tx = store.cache();
        for (s, k, v) in writes {
            match v {
                Some(v) => tx.set(&key(s), k, v).expect("set"),
                None => tx.delete(&key(s), k).expect("delete"),
            }
        }
        tx.write().expect("write");
    }
    store.commit().expect("commit")
}

fn hash_of(writes: &[Write<'_>]) -> Hash {
    apply(&mut fresh(), writes).app_hash
}

const BASE: &[Write<'static>] = &[
    ("bank", b"alice", Some(b"10")),
    ("bank", b"bob", None),
    ("acc", b"alice", Some(b"1")),
];

#[test]
fn app_hash_is_deterministic() {
    let blocks: [&[Write<'_>]; 3] = [
        BASE,
        &[("gov", b"p1", Some(b"yes")), ("bank", b"alice", None)],
        &[],
    ];
    let mut a = fresh();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = MultiStore::open(
        &dir.path().join("b.redb"),
        &keys(&["gov", "acc", "bank"]),
        Default::default(),
    )
    .expect("open");
    for block in blocks {
        let ia = apply(&mut a, block);
        let ib = apply(&mut b, block);
        assert_eq!(ia, ib);
        for s in a.stores().to_vec() {
            assert_eq!(
                a.store_hash(&s).expect("hash"),
                b.store_hash(&s).expect("hash")
            );
        }
    }
}

#[test]
fn app_hash_ignores_write_order_within_a_block() {
    let in_order = hash_of(BASE);
    // Reversed, with overwrites that end in the same final writes, and
    // direct root writes mixed with a nested cache.
    let mut store = fresh();
    let (acc, bank) = (key("acc"), key("bank"));
    store.set(&acc, b"alice", b"0").expect("set");
    store.set(&bank, b"bob", b"7").expect("set");
    {
        let mut tx = store.cache();
        tx.set(&acc, b"alice", b"1").expect("set");
        {
            let mut inner = tx.cache();
            inner.delete(&bank, b"bob").expect("delete");
            inner.set(&bank, b"alice", b"9").expect("set");
            inner.write().expect("write");
        }
        tx.set(&bank, b"alice", b"10").expect("set");
        tx.write().expect("write");
    }
    assert_eq!(store.commit().expect("commit").app_hash, in_order);
    let reversed: Vec<_> = BASE.iter().rev().copied().collect();
    assert_eq!(hash_of(&reversed), in_order);
}

#[test]
fn app_hash_differs_on_any_content_change() {
    let variants: Vec<Vec<Write<'_>>> = vec![
        BASE.to_vec(),
        // Another value.
        vec![
            ("bank", b"alice", Some(b"11")),
            ("bank", b"bob", None),
            ("acc", b"alice", Some(b"1")),
        ],
        // Another key.
        vec![
            ("bank", b"alicf", Some(b"10")),
            ("bank", b"bob", None),
            ("acc", b"alice", Some(b"1")),
        ],
        // Another store.
        vec![
            ("bank", b"alice", Some(b"10")),
            ("bank", b"bob", None),
            ("gov", b"alice", Some(b"1")),
        ],
        // Set instead of delete (with an empty value).
        vec![
            ("bank", b"alice", Some(b"10")),
            ("bank", b"bob", Some(b"")),
            ("acc", b"alice", Some(b"1")),
        ],
        // Delete instead of set.
        vec![
            ("bank", b"alice", None),
            ("bank", b"bob", None),
            ("acc", b"alice", Some(b"1")),
        ],
        // One record fewer.
        vec![
            ("bank", b"alice", Some(b"10")),
            ("acc", b"alice", Some(b"1")),
        ],
        // Empty block.
        vec![],
    ];
    let hashes: Vec<Hash> = variants.iter().map(|v| hash_of(v)).collect();
    for i in 0..hashes.len() {
        for j in i + 1..hashes.len() {
            assert_ne!(hashes[i], hashes[j], "variants {i} and {j}");
        }
    }
}

#[test]
fn app_hash_chains_across_blocks_as_specified() {
    let mut store = fresh();
    let names = ["acc", "bank", "gov"];
    let mut prev: Vec<Hash> = vec![ZERO_HASH; 3];
    let blocks: [&[Write<'_>]; 3] = [BASE, &[("gov", b"x", Some(b"y"))], &[]];
    for (i, block) in blocks.iter().enumerate() {
        let info = apply(&mut store, block);
        let cs = store.change_log().read(i as u64 + 1).expect("read");
        let mut now = Vec::new();
        for (n, (name, sc)) in names.iter().zip(cs.stores()).enumerate() {
            assert_eq!(sc.store().name(), *name);
            // The encoded bytes are the canonical records, in key order.
            let mut want = Vec::new();
            let mut own: Vec<_> = block.iter().filter(|(s, _, _)| s == name).collect();
            own.sort_by_key(|(_, k, _)| *k);
            for (s, k, v) in own {
                encode_record(&mut want, s, k, *v);
            }
            assert_eq!(sc.encoded(), want.as_slice(), "store {name}");
            let h = chain_store_hash(&prev[n], sc.encoded());
            assert_eq!(sc.hash(), &h);
            assert_eq!(store.store_hash(&key(name)).expect("hash"), h);
            now.push(h);
        }
        let want = app_hash(names.iter().copied().zip(now.iter()));
        assert_eq!(info.app_hash, want, "block {}", i + 1);
        prev = now;
    }
}

#[test]
fn app_hash_of_a_block_depends_on_earlier_blocks() {
    let mut a = fresh();
    let mut b = fresh();
    apply(&mut a, BASE);
    apply(&mut b, &[("bank", b"alice", Some(b"10"))]);
    let second: &[Write<'_>] = &[("gov", b"same", Some(b"block"))];
    let ia = apply(&mut a, second);
    let ib = apply(&mut b, second);
    assert_eq!(ia.version, ib.version);
    assert_ne!(ia.app_hash, ib.app_hash);
    // Even a store untouched in both blocks differs only if its history does.
    assert_eq!(
        a.store_hash(&key("gov")).expect("hash"),
        b.store_hash(&key("gov")).expect("hash")
    );
    assert_ne!(
        a.store_hash(&key("bank")).expect("hash"),
        b.store_hash(&key("bank")).expect("hash")
    );
    // Same content at another height gives another hash too.
    let mut c = fresh();
    apply(&mut c, &[]);
    let ic = apply(&mut c, BASE);
    assert_ne!(ic.app_hash, hash_of(BASE));
}
