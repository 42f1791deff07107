//! The app hash: one SHA-256 chain per store, combined per block.
//!
//! `h_s(N) = SHA-256(h_s(N-1) || records of store s in block N)`, with the
//! records in their canonical encoding (exactly the bytes of a data file) and
//! `h_s(0)` = 32 zero bytes; `app_hash(N) = SHA-256(for each store in name
//! order: name || h_s(N))`. A reader holding a store's records for every
//! block can recompute its chain and prove nothing was lost or altered.

use sha2::{Digest, Sha256};

/// A 32-byte SHA-256 digest.
pub type Hash = [u8; 32];

/// `h_s(0)`: the hash of a store before its first block.
pub const ZERO_HASH: Hash = [0; 32];

/// One link of a store's chain: `SHA-256(prev || records)`.
pub fn chain_store_hash(prev: &Hash, records: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(records);
    h.finalize().into()
}

/// The app hash over per-store hashes, which must be in store-name order.
pub fn app_hash<'a>(stores: impl IntoIterator<Item = (&'a str, &'a Hash)>) -> Hash {
    let mut h = Sha256::new();
    for (name, hash) in stores {
        h.update(name.as_bytes());
        h.update(hash);
    }
    h.finalize().into()
}

/// Lowercase hex of bytes (for logs and JSON).
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}
