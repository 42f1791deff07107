//! Tests of the webhook streamer against a real HTTP receiver on a
//! loopback port, driven through `statestream::DeliveryManager`.

mod config;
mod delivery;
mod python;
mod receiver;
mod secrets;
mod templates;

use statestream::{BlockMeta, DeliveryManager};
use statestream_store::{KvStore, MultiStore, StoreKey};
pub use statestream_test_support::node::{manager, manager_in, memory_store, store_keys};

/// A secret in the Standard Webhooks form.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// An app.toml with one webhook streamer `hook`; `extra` lines go in its
/// table (after `url`), `tables` after it.
pub fn app_toml(url: &str, extra: &str) -> String {
    format!(
        "[store]\nstreamers = [\"hook\"]\n\n[streamers.hook]\ntype = \"webhook\"\nkeys = [\"*\"]\n\
         url = \"{url}\"\n{extra}\n"
    )
}

/// A block time: 2023-11-14T22:13:20Z plus `height` seconds.
pub fn meta(height: u64) -> BlockMeta {
    BlockMeta {
        time_seconds: 1_700_000_000 + height as i64,
        ..BlockMeta::default()
    }
}

/// Commits one block after `write`.
pub fn commit(
    manager: &mut DeliveryManager,
    store: &mut MultiStore,
    write: impl FnOnce(&mut MultiStore, &[StoreKey]),
) -> anyhow::Result<u64> {
    let keys = store_keys();
    write(store, &keys);
    let h = store.version() + 1;
    manager.commit(store, meta(h))?;
    Ok(h)
}

/// Block `b` of the standard workload: two sets in `bank` (one a JSON
/// value), one in `acc` (not JSON), and from block 2 a delete.
pub fn write_block(store: &mut MultiStore, keys: &[StoreKey], b: u64) {
    let (acc, bank) = (&keys[0], &keys[1]);
    store
        .set(
            bank,
            format!("balance/u{b}").as_bytes(),
            format!("{{\"amount\": {b}}}").as_bytes(),
        )
        .unwrap();
    store.set(bank, b"total", b.to_string().as_bytes()).unwrap();
    store
        .set(acc, format!("a{b}").as_bytes(), b"plain text")
        .unwrap();
    if b >= 2 {
        store.delete(acc, format!("a{}", b - 1).as_bytes()).unwrap();
    }
}

/// The (store, key, action) of every change of blocks `1..=n` of the
/// standard workload, in delivery order: each block creates `a<b>` and
/// `balance/u<b>`, deletes `a<b-1>`, and updates `total` (created by
/// block 1).
pub fn expected_changes(n: u64) -> Vec<(u64, String, String, String)> {
    let mut out = Vec::new();
    for b in 1..=n {
        let mut acc = vec![(format!("a{b}"), "create")];
        if b >= 2 {
            acc.push((format!("a{}", b - 1), "delete"));
        }
        acc.sort();
        for (k, a) in acc {
            out.push((b, "acc".to_string(), k, a.to_string()));
        }
        out.push((b, "bank".into(), format!("balance/u{b}"), "create".into()));
        let total = if b == 1 { "create" } else { "update" };
        out.push((b, "bank".into(), "total".into(), total.into()));
    }
    out
}
