//! Commit throughput: blocks of 1,000 writes (32-byte keys, 100-byte
//! values) spread over 4 stores, in memory, on disk with fsync and on disk
//! without fsync.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use statestream_store::{MultiStore, StoreKey, StoreOptions};

mod common;

use common::{SplitMix64, WRITES_PER_BLOCK, stores, write_block};

/// Writes one block of random keys and commits it.
fn commit_block(store: &mut MultiStore, stores: &[StoreKey], rng: &mut SplitMix64) {
    write_block(store, stores, rng);
    black_box(store.commit().expect("commit"));
}

fn bench_commit(c: &mut Criterion) {
    let stores = stores();
    // The stores keep the state of earlier iterations, so later blocks insert
    // into a growing btree, as a node does.
    let mut group = c.benchmark_group("commit_1000_writes");
    group.throughput(Throughput::Elements(WRITES_PER_BLOCK as u64));

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
