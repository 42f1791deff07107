//! Writer throughput against plain `std::fs::write` of the same bytes, and
//! reader records/s with mmap against buffered reads.
//!
//! `cargo bench -p statestream-file --bench file -- --measurement-time 3 --warm-up-time 1`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use statestream_config::StreamerOptions;
use statestream_core::{
    Block, BlockMeta, ChangeSet, StoreChanges, StoreKey, StoreSelection, Streamer, StreamerContext,
    ZERO_HASH,
};
use statestream_file::{BlockDir, FileStreamer, FileStreamerConfig, ReadOptions};

const RECORDS: usize = 1_000;

/// One block of [`RECORDS`] sets (32-byte keys, 100-byte values) over four
/// stores.
fn big_block() -> Block {
    let stores: Vec<StoreKey> = ["acc", "bank", "gov", "staking"]
        .iter()
        .map(|s| StoreKey::new(s).expect("valid store name"))
        .collect();
    let mut changes: Vec<StoreChanges> = stores.iter().cloned().map(StoreChanges::new).collect();
    // Keys are zero-padded, so each store's keys come in ascending order.
    for i in 0..RECORDS {
        let key = format!("{i:032}");
        changes[i % stores.len()].push(key.as_bytes(), Some(&[i as u8; 100]), true);
    }
    let meta = BlockMeta::default();
    let hashes = vec![ZERO_HASH; stores.len()];
    let cs = ChangeSet::seal(1, meta.encode_app_meta(), changes, &hashes);
    Block::new(Arc::new(cs), Arc::new(meta), &StoreSelection::all(&stores))
}

fn streamer(dir: &Path, output_metadata: bool) -> FileStreamer {
    let options = StreamerOptions::default();
    let config = FileStreamerConfig {
        write_dir: dir.to_path_buf(),
        output_metadata,
        ..FileStreamerConfig::default()
    };
    let ctx = StreamerContext {
        name: "bench",
        stores: &[],
        all_stores: &[],
        home: dir,
        reader: None,
        shutdown: &statestream_core::Shutdown::default(),
        push: None,
    };
    config.build(&ctx, &options).expect("streamer builds")
}

fn writer(c: &mut Criterion) {
    let block = big_block();
    let mut bytes = (block.encoded_len() as u64).to_be_bytes().to_vec();
    for seg in block.encoded() {
        bytes.extend_from_slice(seg);
    }
    let mut group = c.benchmark_group("writer");
    group.throughput(Throughput::Bytes(bytes.len() as u64));

    let dir = tempfile::tempdir().expect("temp dir");
    let mut data_only = streamer(dir.path(), false);
    group.bench_function("on_block_data_only", |b| {
        b.iter(|| data_only.on_block(black_box(&block)).expect("written"))
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let mut with_meta = streamer(dir.path(), true);
    group.bench_function("on_block_with_meta", |b| {
        b.iter(|| with_meta.on_block(black_box(&block)).expect("written"))
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("block-1-data");
    group.bench_function("std_fs_write", |b| {
        b.iter(|| std::fs::write(&path, black_box(&bytes)).expect("written"))
    });
    group.finish();
}

fn reader(c: &mut Criterion) {
    let block = big_block();
    let dir = tempfile::tempdir().expect("temp dir");
    streamer(dir.path(), true)
        .on_block(&block)
        .expect("written");
    let mut group = c.benchmark_group("reader");
    group.throughput(Throughput::Elements(RECORDS as u64));
    for (name, options) in [
        ("records_buffered", ReadOptions::default()),
        ("records_mmap", ReadOptions::default().mmap(true)),
    ] {
        let bd = BlockDir::open(dir.path(), "", options).expect("dir opens");
        group.bench_function(name, |b| {
            b.iter(|| {
                let file = bd.open_block(1).expect("block opens");
                let mut n = 0usize;
                for r in file.records() {
                    n += black_box(r.expect("record").key.len());
                }
                n
            })
        });
    }
    group.finish();
}

criterion_group!(benches, writer, reader);
criterion_main!(benches);
