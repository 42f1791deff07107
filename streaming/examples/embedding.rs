//! The embedding example of the README ("Use it in your node"), verbatim
//! between the markers: `cargo test` compiles it, and
//! `cli/tests/docs.rs` checks that the README still shows these lines.
//! Run it (`cargo run -p statestream --example embedding`) to commit one
//! block in a temporary home with a file streamer.

// README example: begin
use std::path::Path;

use statestream::config::AppConfig;
use statestream::store::{KvStore, MultiStore, StoreOptions};
use statestream::{BlockMeta, DeliveryManager, Registry, StoreKey};

fn run_node(home: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let stores = [StoreKey::new("acc")?, StoreKey::new("bank")?];
    let mut store = MultiStore::open(
        &home.join("data/store.redb"),
        &stores,
        StoreOptions::default(),
    )?;
    let config = AppConfig::from_file(&home.join("config/app.toml"))?;
    let specs = config.resolve(&["acc", "bank"])?;
    let registry = Registry::with_builtins();
    let mut streaming = DeliveryManager::builder()
        .configured(&specs, &registry, home)
        .shutdown_timeout(config.shutdown_timeout()) // [store] shutdown_timeout_ms
        .start(&mut store)?;

    // per block: write through caches, then commit through the manager
    let mut tx = store.cache();
    tx.set(&stores[1], b"alice", b"10")?;
    tx.write()?;
    let _info = streaming.commit(&mut store, BlockMeta::default())?;

    // at shutdown
    streaming.close(&mut store)?;
    store.close()?;
    Ok(())
}
// README example: end

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let home = tempfile::tempdir()?;
    std::fs::create_dir_all(home.path().join("config"))?;
    std::fs::create_dir_all(home.path().join("data"))?;
    std::fs::write(
        home.path().join("config/app.toml"),
        "[store]\nstreamers = [\"file\"]\n[streamers.file]\nkeys = [\"*\"]\n",
    )?;
    run_node(home.path())?;
    let written = home.path().join("data/streaming/block-1-data");
    println!("{} exists: {}", written.display(), written.exists());
    Ok(())
}
