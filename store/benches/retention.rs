//! What holding blocks in the change log costs the store's commits.
//!
//! Two stores on disk (fsync off) get the same blocks of 1,000 writes
//! (32-byte keys, 100-byte values, 4 stores), committed alternately block
//! by block on this one thread. One prunes its change log to the last block
//! at every commit, as a node without streamers does; the other keeps the
//! last `N` blocks, as a node does for a streamer whose flushed cursor is
//! `N` blocks behind. Only the commit calls are timed. Prints, for each `N`,
//! both stores' milliseconds per block and the ratio.
//!
//! `cargo bench -p statestream-store --bench retention [-- BLOCKS]`

use std::time::Instant;

use statestream_store::{CommitInput, MultiStore, StoreKey, StoreOptions};

mod common;

use common::{SplitMix64, WRITES_PER_BLOCK, stores, write_block};

/// Blocks committed before timing starts (the files grow to their size).
const WARM_UP: u64 = 100;

/// Milliseconds per block of the store that prunes at once and of the one
/// that keeps `held` blocks.
fn compare(stores: &[StoreKey], held: u64, blocks: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions {
        fsync: false,
        ..StoreOptions::default()
    };
    let open = |name: &str| {
        MultiStore::open(&dir.path().join(name), stores, options.clone()).expect("open")
    };
    let (mut prompt, mut holding) = (open("prompt.redb"), open("holding.redb"));
    let (mut rng_prompt, mut rng_holding) = (SplitMix64(1), SplitMix64(1));
    let (mut t_prompt, mut t_holding) = (0.0, 0.0);
    for h in 1..=WARM_UP + blocks {
        // Which store goes first swaps every block.
        for turn in 0..2 {
            let first = h % 2 == 0;
            let is_prompt = (turn == 0) == first;
            let (store, rng, keep) = if is_prompt {
                (&mut prompt, &mut rng_prompt, 1)
            } else {
                (&mut holding, &mut rng_holding, held)
            };
            write_block(store, stores, rng);
            let input = CommitInput::new().prune_below((h + 1).saturating_sub(keep));
            let started = Instant::now();
            store.commit_block(input).expect("commit");
            let secs = started.elapsed().as_secs_f64();
            if h > WARM_UP {
                if is_prompt {
                    t_prompt += secs;
                } else {
                    t_holding += secs;
                }
            }
        }
    }
    let ms = |secs: f64| secs * 1e3 / blocks as f64;
    (ms(t_prompt), ms(t_holding))
}

fn main() {
    // `cargo bench` passes `--bench`; a number is the blocks per store.
    let blocks = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000);
    let stores = stores();
    println!("blocks of {WRITES_PER_BLOCK} writes, {blocks} per store after {WARM_UP} untimed");
    for held in [1, 10, 40] {
        let (prompt, holding) = compare(&stores, held, blocks);
        println!(
            "holding {held:>2} blocks: {holding:.3} ms/block, pruning at once: {prompt:.3} ms/block, ratio {:.3}",
            holding / prompt
        );
    }
}
