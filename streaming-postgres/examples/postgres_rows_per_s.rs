//! `postgres_rows_per_s`: the rows per second the postgres streamer writes
//! (blocks of 1,000 writes over two stores, one in ten a delete, values of
//! 16 to 200 bytes, `tables = "both"`), next to a plain bulk load of the
//! same rows by the same client. It runs
//! [`statestream_postgres::rows_per_s`], which `statestream bench
//! --postgres URL` runs too:
//!
//! - the streamer, block by block: per block one transaction with the
//!   `changes` rows, the `state` upserts and deletes, the `blocks` and
//!   `cursors` rows and the `NOTIFY`;
//! - the plain load: per block one transaction of two binary `COPY`s, the
//!   records into a table shaped like `changes` and the sets into a table
//!   shaped like `state` (primary key `(store, key, height)`);
//! - the changes-only load (the baseline before the `state` rows were
//!   counted): per block one transaction of one binary `COPY` of the
//!   records.
//!
//! Rows are `changes` rows (records) plus `state` rows (sets); deletes and
//! the `blocks` and `cursors` rows are not counted. The changes-only ratio
//! counts the records alone on both sides. The three sides take the same
//! blocks in every round, in an order that rotates round by round; the
//! first round is not counted. It prints the median and the spread over
//! the rounds; `docs/performance.md` has the figures.
//!
//! ```sh
//! cargo run --release -p statestream-postgres --example postgres_rows_per_s -- \
//!     postgresql://user:password@127.0.0.1:5432/db [blocks] [rounds]
//! ```
//!
//! `blocks` (default 200) are counted, split over `rounds` (default 10);
//! one more round of as many blocks runs first. It drops and recreates the
//! schemas `bench_stream`, `bench_plain` and `bench_plain_changes`.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use statestream::{Block, StoreSelection};
use statestream_postgres::{Spread, rows_per_s};
use statestream_store::{KvStore, MultiStore, StoreKey};

const WRITES: u64 = 1000;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .context("usage: postgres_rows_per_s URL [blocks] [rounds]")?;
    let counted: u64 = args.next().map(|b| b.parse()).transpose()?.unwrap_or(200);
    let rounds: u64 = args.next().map(|b| b.parse()).transpose()?.unwrap_or(10);
    if rounds == 0 || counted < rounds {
        bail!("need at least one block per round ({counted} blocks, {rounds} rounds)");
    }
    let per_round = counted / rounds;
    let blocks = per_round * (rounds + 1);

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

    let r = rows_per_s(&url, &stores, &blocks, rounds as usize)?;
    let show = |s: &Spread, digits: usize| {
        format!(
            "{:.digits$} (middle half {:.digits$}-{:.digits$}, range {:.digits$}-{:.digits$})",
            s.median, s.q1, s.q3, s.min, s.max
        )
    };
    println!(
        "{} rounds of {} blocks; per round {} changes rows + {} state rows ({} state deletes, not counted)",
        r.rounds, r.blocks_per_round, r.changes_rows, r.state_rows, r.state_deletes
    );
    println!("postgres_rows_per_s (changes + state rows, medians over the rounds):");
    println!("  streamer:   {} rows/s", show(&r.stream, 0));
    println!("  plain load: {} rows/s", show(&r.plain, 0));
    println!("  ratio:      {}", show(&r.ratio, 3));
    println!("changes rows only (the earlier definition):");
    println!("  streamer:   {} rows/s", show(&r.stream_changes, 0));
    println!("  plain load: {} rows/s", show(&r.plain_changes, 0));
    println!("  ratio:      {}", show(&r.ratio_changes_only, 3));
    Ok(())
}
