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

use statestream_store::{CommitInput, KvStore, MultiStore, StoreKey, StoreOptions};

const WRITES_PER_BLOCK: usize = 1_000;
const KEY_LEN: usize = 32;
const VALUE_LEN: usize = 100;
/// Blocks committed before timing starts (the files grow to their size).
const WARM_UP: u64 = 100;

/// splitmix64, as in the commit bench.
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

fn write_block(store: &mut MultiStore, stores: &[StoreKey], rng: &mut SplitMix64) {
    let mut key = [0u8; KEY_LEN];
    let mut value = [0u8; VALUE_LEN];
    let mut tx = store.cache();
    for i in 0..WRITES_PER_BLOCK {
        rng.fill(&mut key);
        rng.fill(&mut value);
        tx.set(&stores[i % stores.len()], &key, &value)
            .expect("set");
    }
    tx.write().expect("write back");
}

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
    let stores: Vec<StoreKey> = ["acc", "bank", "gov", "staking"]
        .iter()
        .map(|n| StoreKey::new(n).expect("valid store name"))
        .collect();
    println!("blocks of {WRITES_PER_BLOCK} writes, {blocks} per store after {WARM_UP} untimed");
    for held in [1, 10, 40] {
        let (prompt, holding) = compare(&stores, held, blocks);
        println!(
            "holding {held:>2} blocks: {holding:.3} ms/block, pruning at once: {prompt:.3} ms/block, ratio {:.3}",
            holding / prompt
        );
    }
}
