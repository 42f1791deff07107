//! Commit throughput: blocks of 1,000 writes (32-byte keys, 100-byte
//! values) spread over 4 stores, in memory, on disk with fsync and on disk
//! without fsync.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use statestream_store::{KvStore, MultiStore, StoreKey, StoreOptions};

const WRITES_PER_BLOCK: u64 = 1_000;
const KEY_LEN: usize = 32;
const VALUE_LEN: usize = 100;

/// splitmix64: a cheap deterministic generator, so keys land all over the
/// btree as real hashed keys would.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_be_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

fn stores() -> Vec<StoreKey> {
    ["acc", "bank", "gov", "staking"]
        .iter()
        .map(|n| StoreKey::new(n).expect("valid store name"))
        .collect()
}

/// Writes one block of random keys and commits it.
fn commit_block(store: &mut MultiStore, stores: &[StoreKey], rng: &mut SplitMix64) {
    let mut key = [0u8; KEY_LEN];
    let mut value = [0u8; VALUE_LEN];
    {
        let mut tx = store.cache();
        for i in 0..WRITES_PER_BLOCK {
            rng.fill(&mut key);
            rng.fill(&mut value);
            let s = &stores[(i % stores.len() as u64) as usize];
            tx.set(s, &key, &value).expect("set");
        }
        tx.write().expect("write back");
    }
    black_box(store.commit().expect("commit"));
}

fn bench_commit(c: &mut Criterion) {
    let stores = stores();
    // The stores keep the state of earlier iterations, so later blocks insert
    // into a growing btree, as a node does.
    let mut group = c.benchmark_group("commit_1000_writes");
    group.throughput(Throughput::Elements(WRITES_PER_BLOCK));

    {
        let mut store = MultiStore::in_memory(&stores).expect("open in memory");
        let mut rng = SplitMix64(1);
        group.bench_function("in_memory", |b| {
            b.iter(|| commit_block(&mut store, &stores, &mut rng));
        });
    }

    for (name, fsync) in [("disk_fsync", true), ("disk_no_fsync", false)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = MultiStore::open(
            &dir.path().join("bench.redb"),
            &stores,
            StoreOptions {
                fsync,
                ..StoreOptions::default()
            },
        )
        .expect("open on disk");
        let mut rng = SplitMix64(2);
        group.bench_function(name, |b| {
            b.iter(|| commit_block(&mut store, &stores, &mut rng));
        });
        store.close().expect("close");
    }
    group.finish();
}

criterion_group!(benches, bench_commit);
criterion_main!(benches);
