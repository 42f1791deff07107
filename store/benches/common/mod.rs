//! What the store's benches share: the block shape and the key generator.

use statestream_store::{KvStore, MultiStore, StoreKey};

/// Writes per block, and their key and value sizes.
pub const WRITES_PER_BLOCK: usize = 1_000;
pub const KEY_LEN: usize = 32;
pub const VALUE_LEN: usize = 100;

/// splitmix64: a cheap deterministic generator, so keys land all over the
/// btree as real hashed keys would.
pub struct SplitMix64(pub u64);

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

/// The four stores of the benches.
pub fn stores() -> Vec<StoreKey> {
    ["acc", "bank", "gov", "staking"]
        .iter()
        .map(|n| StoreKey::new(n).expect("valid store name"))
        .collect()
}

/// Writes one block of random keys through a cache layer (as a
/// transaction does); the caller commits.
pub fn write_block(store: &mut MultiStore, stores: &[StoreKey], rng: &mut SplitMix64) {
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
