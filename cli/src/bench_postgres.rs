//! `postgres_rows_per_s` in `statestream bench`: the postgres streamer's
//! rows per second next to a plain bulk load of the same rows by the same
//! client ([`statestream_postgres::rows_per_s`], which the example
//! `postgres_rows_per_s` runs too). It needs a server: `--postgres URL`;
//! without one the figure is skipped with a message.

use std::sync::Arc;

use anyhow::{Context, Result};
use statestream::{Block, StoreSelection};
use statestream_store::{KvStore, MultiStore, StoreKey};

use super::{Figure, Sizes};

/// Blocks per side per round (the first round is not counted).
const BLOCKS_PER_ROUND: (u64, u64) = (10, 2);

/// The figure, or `None` (and a message on stderr) without `url`.
pub(super) fn rows_per_s(sizes: &Sizes, quick: bool, url: Option<&str>) -> Result<Option<Figure>> {
    let Some(url) = url else {
        eprintln!(
            "postgres_rows_per_s: skipped (needs a PostgreSQL database it may create schemas \
             in: --postgres URL, or STATESTREAM_BENCH_POSTGRES=URL, with a URL such as \
             postgresql://user@host:port/database)"
        );
        return Ok(None);
    };
    let per_round = if quick {
        BLOCKS_PER_ROUND.1
    } else {
        BLOCKS_PER_ROUND.0
    };
    let stores = vec![StoreKey::new("acc")?, StoreKey::new("bank")?];
    let blocks = blocks(
        &stores,
        per_round * (sizes.rounds as u64 + 1),
        sizes.writes as u64,
    )?;
    let r = statestream_postgres::rows_per_s(url, &stores, &blocks, sizes.rounds)
        .context("postgres_rows_per_s")?;
    Ok(Some(Figure {
        name: "postgres_rows_per_s",
        value: r.stream.median,
        unit: "rows/s",
        ratio: Some(r.ratio.median),
        ratio_quartiles: Some((r.ratio.q1, r.ratio.q3)),
        baseline: Some(r.plain.median),
    }))
}

/// The example's workload: `writes` per block over two stores, keys from
/// 50,000 per store (so most sets update a key), one write in ten a
/// delete, values of 16 to 200 bytes.
fn blocks(stores: &[StoreKey], n: u64, writes: u64) -> Result<Vec<Block>> {
    let mut store = MultiStore::in_memory(stores)?;
    let mut sets = Vec::new();
    for b in 1..=n {
        for i in 0..writes {
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
    let selection = StoreSelection::all(stores);
    Ok(sets
        .into_iter()
        .map(|cs| Block::from_change_set(cs, &selection))
        .collect::<Result<_, _>>()?)
}
