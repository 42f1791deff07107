//! Random operation sequences over nested caches against a `BTreeMap`
//! model: every read, every iteration, every listener call and every change
//! set is checked.

use std::collections::BTreeMap;
use std::ops::Bound;

use proptest::prelude::*;
use statestream_core::{ZERO_HASH, app_hash, chain_store_hash, encode_record};
use statestream_store::{Cache, CommitInput, Hash, KvStore, MultiStore, Order, StoreKey};

use crate::util::{Log, Rec, Recorder, collect, records};

/// Declared out of name order on purpose; the model works on sorted indexes.
const STORE_NAMES: [&str; 3] = ["bank", "acc", "gov.v2"];
const SORTED: [&str; 3] = ["acc", "bank", "gov.v2"];

/// A small key space with shared prefixes and 0xff bytes.
const KEYS: [&[u8]; 8] = [
    &[0x00],
    &[0x01],
    &[0x01, 0x00],
    &[0x01, 0xff],
    &[0x02, 0x03],
    &[0x10],
    &[0xff],
    &[0xff, 0x01],
];
const PREFIXES: [&[u8]; 5] = [&[], &[0x01], &[0x01, 0xff], &[0xff], &[0x03]];

#[derive(Debug, Clone)]
enum Op {
    Set(usize, usize, Vec<u8>),
    Delete(usize, usize),
    Get(usize, usize),
    Iter(usize, Order),
    Prefix(usize, usize, Order),
    Range(usize, Bound<usize>, Bound<usize>, Order),
    Push,
    WriteBack,
    Drop,
    /// Commit; open caches are first written back (`true`) or dropped.
    Commit(bool),
}

fn order() -> impl Strategy<Value = Order> {
    prop_oneof![Just(Order::Ascending), Just(Order::Descending)]
}

fn bound() -> impl Strategy<Value = Bound<usize>> {
    prop_oneof![
        Just(Bound::Unbounded),
        (0..KEYS.len()).prop_map(Bound::Included),
        (0..KEYS.len()).prop_map(Bound::Excluded),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..SORTED.len();
    let k = 0..KEYS.len();
    prop_oneof![
        5 => (s.clone(), k.clone(), 0u8..4).prop_map(|(s, k, v)| Op::Set(s, k, vec![v; usize::from(v)])),
        3 => (s.clone(), k.clone()).prop_map(|(s, k)| Op::Delete(s, k)),
        2 => (s.clone(), k).prop_map(|(s, k)| Op::Get(s, k)),
        1 => (s.clone(), order()).prop_map(|(s, o)| Op::Iter(s, o)),
        1 => (s.clone(), 0..PREFIXES.len(), order()).prop_map(|(s, p, o)| Op::Prefix(s, p, o)),
        1 => (s, bound(), bound(), order()).prop_map(|(s, a, b, o)| Op::Range(s, a, b, o)),
        2 => Just(Op::Push),
        2 => Just(Op::WriteBack),
        1 => Just(Op::Drop),
        1 => any::<bool>().prop_map(Op::Commit),
    ]
}

type Layer = BTreeMap<(usize, Vec<u8>), Option<Vec<u8>>>;

/// The model: committed state, then a stack of layers; `layers[0]` is the
/// root's pending writes (the block's net changes).
struct Model {
    committed: BTreeMap<(usize, Vec<u8>), Vec<u8>>,
    layers: Vec<Layer>,
    /// What the listener must have seen since the last commit.
    observed: Vec<Rec>,
    hashes: [Hash; 3],
    height: u64,
}

impl Model {
    fn new() -> Model {
        Model {
            committed: BTreeMap::new(),
            layers: vec![Layer::new()],
            observed: Vec::new(),
            hashes: [ZERO_HASH; 3],
            height: 0,
        }
    }

    fn write(&mut self, s: usize, k: &[u8], v: Option<Vec<u8>>) {
        if self.layers.len() == 1 {
            self.observed
                .push((SORTED[s].to_string(), k.to_vec(), v.clone()));
        }
        let top = self.layers.last_mut().expect("root layer");
        top.insert((s, k.to_vec()), v);
    }

    fn get(&self, s: usize, k: &[u8]) -> Option<Vec<u8>> {
        let at = (s, k.to_vec());
        for layer in self.layers.iter().rev() {
            if let Some(v) = layer.get(&at) {
                return v.clone();
            }
        }
        self.committed.get(&at).cloned()
    }

    fn view(&self, s: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut view: BTreeMap<Vec<u8>, Vec<u8>> = self
            .committed
            .iter()
            .filter(|((st, _), _)| *st == s)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        for layer in &self.layers {
            for ((st, k), v) in layer {
                if *st != s {
                    continue;
                }
                match v {
                    Some(v) => view.insert(k.clone(), v.clone()),
                    None => view.remove(k),
                };
            }
        }
        view
    }

    fn push(&mut self) {
        self.layers.push(Layer::new());
    }

    fn pop(&mut self, write_back: bool) {
        assert!(self.layers.len() > 1, "model popped the root");
        let top = self.layers.pop().expect("a cache layer");
        if write_back {
            // Iterates by (store index, key): store name, then key.
            for ((s, k), v) in top {
                self.write(s, &k, v);
            }
        }
    }

    /// The expected change set of the block, and commits it in the model.
    fn commit(&mut self) -> (Vec<Rec>, Hash) {
        assert_eq!(self.layers.len(), 1);
        let pending = std::mem::take(&mut self.layers[0]);
        let mut recs = Vec::new();
        let mut encoded: [Vec<u8>; 3] = Default::default();
        for ((s, k), v) in pending {
            encode_record(&mut encoded[s], SORTED[s], &k, v.as_deref());
            recs.push((SORTED[s].to_string(), k.clone(), v.clone()));
            match v {
                Some(v) => self.committed.insert((s, k), v),
                None => self.committed.remove(&(s, k)),
            };
        }
        for (h, e) in self.hashes.iter_mut().zip(&encoded) {
            *h = chain_store_hash(h, e);
        }
        self.height += 1;
        self.observed.clear();
        (
            recs,
            app_hash(SORTED.iter().copied().zip(self.hashes.iter())),
        )
    }
}

/// How a cache level ended.
enum Exit {
    WriteBack,
    Drop,
    Commit(bool),
    End,
}

struct Harness {
    stores: Vec<StoreKey>,
    log: Log,
}

fn key_bound(b: Bound<usize>) -> Bound<&'static [u8]> {
    match b {
        Bound::Included(i) => Bound::Included(KEYS[i]),
        Bound::Excluded(i) => Bound::Excluded(KEYS[i]),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn in_bounds(k: &[u8], start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    let lo = match start {
        Bound::Included(s) => k >= s,
        Bound::Excluded(s) => k > s,
        Bound::Unbounded => true,
    };
    let hi = match end {
        Bound::Included(e) => k <= e,
        Bound::Excluded(e) => k < e,
        Bound::Unbounded => true,
    };
    lo && hi
}

fn ordered(mut v: Vec<(Vec<u8>, Vec<u8>)>, order: Order) -> Vec<(Vec<u8>, Vec<u8>)> {
    if order == Order::Descending {
        v.reverse();
    }
    v
}

impl Harness {
    /// Applies a data op (set, delete, get, iterate) to `kv`, checking
    /// every read against the model.
    fn data_op(&self, kv: &mut dyn KvStore, model: &mut Model, op: &Op) {
        match op {
            Op::Set(s, k, v) => {
                kv.set(&self.stores[*s], KEYS[*k], v).expect("set");
                model.write(*s, KEYS[*k], Some(v.clone()));
            }
            Op::Delete(s, k) => {
                kv.delete(&self.stores[*s], KEYS[*k]).expect("delete");
                model.write(*s, KEYS[*k], None);
            }
            Op::Get(s, k) => {
                let got = kv.get(&self.stores[*s], KEYS[*k]).expect("get");
                assert_eq!(got, model.get(*s, KEYS[*k]), "get {s} {:02x?}", KEYS[*k]);
                let has = kv.has(&self.stores[*s], KEYS[*k]).expect("has");
                assert_eq!(has, got.is_some());
            }
            Op::Iter(s, o) => {
                let got = collect(kv.iter(&self.stores[*s], *o).expect("iter"));
                let want = ordered(model.view(*s).into_iter().collect(), *o);
                assert_eq!(got, want, "iter {s} {o:?}");
            }
            Op::Prefix(s, p, o) => {
                let got = collect(
                    kv.prefix(&self.stores[*s], PREFIXES[*p], *o)
                        .expect("prefix"),
                );
                let want = model
                    .view(*s)
                    .into_iter()
                    .filter(|(k, _)| k.starts_with(PREFIXES[*p]))
                    .collect();
                assert_eq!(
                    got,
                    ordered(want, *o),
                    "prefix {s} {:02x?} {o:?}",
                    PREFIXES[*p]
                );
            }
            Op::Range(s, a, b, o) => {
                let (start, end) = (key_bound(*a), key_bound(*b));
                let got = collect(kv.range(&self.stores[*s], start, end, *o).expect("range"));
                let want = model
                    .view(*s)
                    .into_iter()
                    .filter(|(k, _)| in_bounds(k, start, end))
                    .collect();
                assert_eq!(got, ordered(want, *o), "range {s} {start:?}..{end:?} {o:?}");
            }
            Op::Push | Op::WriteBack | Op::Drop | Op::Commit(_) => {
                unreachable!("structural ops are handled by the level loops")
            }
        }
    }

    /// Runs ops on a cache level until it is written back, dropped, or the
    /// ops run out.
    fn run_cache(
        &self,
        cache: &mut Cache<'_>,
        model: &mut Model,
        ops: &mut std::slice::Iter<'_, Op>,
    ) -> Exit {
        while let Some(op) = ops.next() {
            match op {
                Op::Push => {
                    model.push();
                    let mut child = cache.cache();
                    let exit = self.run_cache(&mut child, model, ops);
                    match exit {
                        Exit::WriteBack | Exit::Commit(true) => {
                            child.write().expect("write back");
                            model.pop(true);
                        }
                        Exit::Drop | Exit::Commit(false) | Exit::End => {
                            drop(child);
                            model.pop(false);
                        }
                    }
                    match exit {
                        Exit::Commit(_) | Exit::End => return exit,
                        Exit::WriteBack | Exit::Drop => {}
                    }
                }
                Op::WriteBack => return Exit::WriteBack,
                Op::Drop => return Exit::Drop,
                Op::Commit(flush) => return Exit::Commit(*flush),
                _ => self.data_op(cache, model, op),
            }
        }
        Exit::End
    }

    fn commit(&self, store: &mut MultiStore, model: &mut Model) {
        assert_eq!(self.log.writes(), model.observed, "listener before commit");
        let (want, hash) = model.commit();
        let cs = store.commit_block(CommitInput::new()).expect("commit");
        assert_eq!(cs.height(), model.height);
        assert_eq!(records(&cs), want, "change set of block {}", model.height);
        assert_eq!(
            cs.commit_info().app_hash,
            hash,
            "app hash of block {}",
            model.height
        );
        let logged = store.change_log().read(model.height).expect("change log");
        assert_eq!(&logged, &*cs);
        self.log.clear();
    }

    fn run_root(&self, store: &mut MultiStore, model: &mut Model, ops: &[Op]) {
        let mut ops = ops.iter();
        while let Some(op) = ops.next() {
            match op {
                Op::Push => {
                    model.push();
                    let mut cache = store.cache();
                    let exit = self.run_cache(&mut cache, model, &mut ops);
                    match exit {
                        Exit::WriteBack | Exit::Commit(true) => {
                            cache.write().expect("write back");
                            model.pop(true);
                        }
                        Exit::Drop | Exit::Commit(false) | Exit::End => {
                            drop(cache);
                            model.pop(false);
                        }
                    }
                    // Writes reach the listener exactly when they reach the root.
                    assert_eq!(
                        self.log.writes(),
                        model.observed,
                        "listener after write-back"
                    );
                    if let Exit::Commit(_) = exit {
                        self.commit(store, model);
                    }
                }
                // Nothing to write back or drop at the root.
                Op::WriteBack | Op::Drop => {}
                Op::Commit(_) => self.commit(store, model),
                _ => self.data_op(store, model, op),
            }
        }
        // Whatever is left pending ends the sequence with a last commit.
        self.commit(store, model);
    }
}

fn run(ops: &[Op]) {
    let declared: Vec<StoreKey> = STORE_NAMES
        .iter()
        .map(|n| StoreKey::new(n).expect("valid"))
        .collect();
    let mut store = MultiStore::in_memory(&declared).expect("open");
    let stores = store.stores().to_vec();
    assert_eq!(
        stores.iter().map(StoreKey::name).collect::<Vec<_>>(),
        SORTED
    );
    let (recorder, log) = Recorder::new();
    store.add_listener(&stores, recorder).expect("listener");
    let harness = Harness { stores, log };
    let mut model = Model::new();
    harness.run_root(&mut store, &mut model, ops);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn model_random_ops_over_nested_caches(ops in prop::collection::vec(op(), 1..40)) {
        run(&ops);
    }
}

#[test]
fn model_fixed_sequence() {
    run(&[
        Op::Set(1, 0, vec![1]),
        Op::Push,
        Op::Delete(1, 0),
        Op::Set(0, 7, vec![]),
        Op::Push,
        Op::Set(1, 0, vec![2, 2]),
        Op::Iter(1, Order::Descending),
        Op::WriteBack,
        Op::Prefix(1, 0, Order::Ascending),
        Op::Commit(true),
        Op::Range(1, Bound::Excluded(0), Bound::Included(7), Order::Descending),
        Op::Push,
        Op::Delete(1, 0),
        Op::Drop,
        Op::Get(1, 0),
    ]);
}
