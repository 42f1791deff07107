//! `postgres_rows_per_s`: rows per second the postgres streamer writes
//! (blocks of 1,000 writes, `tables = "both"`), and the ratio to a plain
//! bulk load of the same rows by the same client (binary `COPY` into a
//! table shaped like `changes`, one transaction per block).
//!
//! ```sh
//! cargo run --release -p statestream-postgres --example postgres_rows_per_s -- \
//!     postgresql://user:password@127.0.0.1:5432/db [blocks]
//! ```
//!
//! It drops and recreates the schemas `bench_stream` and `bench_plain`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use statestream::{Block, StoreSelection, Streamer, StreamerContext};
use statestream_config::StreamerOptions;
use statestream_postgres::{PostgresStreamerConfig, Tables};
use statestream_store::{KvStore, MultiStore, StoreKey};

const WRITES: u64 = 1000;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .context("usage: postgres_rows_per_s URL [blocks]")?;
    let blocks: u64 = args.next().map(|b| b.parse()).transpose()?.unwrap_or(200);

    // The blocks: 1,000 writes each over two stores, some deletes, values
    // of 16 to 200 bytes.
    let stores = vec![StoreKey::new("acc")?, StoreKey::new("bank")?];
    let mut store = MultiStore::in_memory(&stores)?;
    let mut sets = Vec::new();
    for b in 1..=blocks {
        for i in 0..WRITES {
            let s = &stores[(i % 2) as usize];
            let key = format!("key-{:06}", (b * 7919 + i * 104_729) % 50_000);
            if i % 10 == 9 {
                store.delete(s, key.as_bytes())?;
            } else {
                store.set(
                    s,
                    key.as_bytes(),
                    &vec![b as u8; 16 + (i as usize * 31) % 185],
                )?;
            }
        }
        store.commit()?;
        sets.push(Arc::new(store.change_log().read(b)?));
    }
    let selection = StoreSelection::all(&stores);
    let blocks: Vec<Block> = sets
        .into_iter()
        .map(|cs| Block::from_change_set(cs, &selection))
        .collect::<Result<_, _>>()?;
    let rows: u64 = blocks.iter().map(|b| b.records().count() as u64).sum();

    let mut admin = postgres::Client::connect(&url, postgres::NoTls)?;
    admin.batch_execute(
        "DROP SCHEMA IF EXISTS bench_stream CASCADE; DROP SCHEMA IF EXISTS bench_plain CASCADE; \
         CREATE SCHEMA bench_plain; \
         CREATE TABLE bench_plain.changes (height bigint NOT NULL, store text NOT NULL, \
         key bytea NOT NULL, value bytea, deleted boolean NOT NULL, PRIMARY KEY (height, store, key))",
    )?;

    // The streamer.
    let config = PostgresStreamerConfig {
        url: url.clone(),
        schema: "bench_stream".into(),
        tables: Tables::Both,
        ..PostgresStreamerConfig::default()
    };
    let ctx = StreamerContext {
        name: "bench",
        stores: &stores,
        all_stores: &stores,
        home: std::path::Path::new("."),
        reader: None,
        shutdown: &statestream_core::Shutdown::default(),
        push: None,
    };
    let options = StreamerOptions::from_table(Default::default()).with_name("bench");
    let mut streamer = config.build(&ctx, &options)?;
    streamer.on_start(1)?;
    let start = Instant::now();
    for b in &blocks {
        streamer.on_block(b)?;
    }
    let stream_s = start.elapsed().as_secs_f64();
    streamer.on_close()?;

    // The plain bulk load: same client, same rows, one transaction per
    // block.
    let types = [Type::INT8, Type::TEXT, Type::BYTEA, Type::BYTEA, Type::BOOL];
    let copy = admin.prepare(
        "COPY bench_plain.changes (height, store, key, value, deleted) FROM STDIN (FORMAT binary)",
    )?;
    let start = Instant::now();
    for b in &blocks {
        let h = b.height() as i64;
        let mut tx = admin.transaction()?;
        let mut w = BinaryCopyInWriter::new(tx.copy_in(&copy)?, &types);
        for r in b.records() {
            let deleted = r.value.is_none();
            let row: [&(dyn ToSql + Sync); 5] = [&h, &r.store, &r.key, &r.value, &deleted];
            w.write(&row)?;
        }
        w.finish()?;
        tx.commit()?;
    }
    let plain_s = start.elapsed().as_secs_f64();

    let stream_rate = rows as f64 / stream_s;
    let plain_rate = rows as f64 / plain_s;
    println!(
        "postgres_rows_per_s: {:.0} rows/s (tables = \"both\", {} blocks, {rows} records)",
        stream_rate,
        blocks.len()
    );
    println!("plain bulk load (COPY, one transaction per block): {plain_rate:.0} rows/s");
    println!("ratio: {:.2}", stream_rate / plain_rate);
    admin.batch_execute(
        "DROP SCHEMA IF EXISTS bench_stream CASCADE; DROP SCHEMA IF EXISTS bench_plain CASCADE",
    )?;
    Ok(())
}
