//! A node's store and delivery manager as the streamer crates' tests build
//! them: an in-memory store of [`STORES`] and a manager whose streamers
//! come from an `app.toml`, through the registry, as `statestream node`
//! builds them. Behind the `node` feature, so that the crates this one
//! would pull in (the facade, the store) stay out of the tests that need
//! only the tools of the crate root.

use std::path::Path;

use statestream::{DeliveryManager, Registry};
use statestream_config::AppConfig;
use statestream_store::{MultiStore, StoreKey};

/// The stores of the test node, in name order.
pub const STORES: [&str; 3] = ["acc", "bank", "gov"];

/// [`STORES`] as keys.
pub fn store_keys() -> Vec<StoreKey> {
    STORES
        .iter()
        .map(|s| StoreKey::new(s).expect("valid store name"))
        .collect()
}

/// An empty in-memory store of [`STORES`].
pub fn memory_store() -> MultiStore {
    MultiStore::in_memory(&store_keys()).expect("in-memory store")
}

/// A manager over `store` with the streamers of the app.toml text `toml`
/// (resolved against [`STORES`]), built by the registry of every built-in
/// type, with `home` as the node's home directory.
pub fn manager_in(
    store: &mut MultiStore,
    toml: &str,
    home: &Path,
) -> anyhow::Result<DeliveryManager> {
    let config = AppConfig::parse(toml, Path::new("app.toml"))?;
    let specs = config.resolve(&STORES)?;
    Ok(DeliveryManager::builder()
        .configured(&specs, &Registry::with_builtins(), home)
        .start(store)?)
}

/// [`manager_in`] with the current directory as the home.
pub fn manager(store: &mut MultiStore, toml: &str) -> anyhow::Result<DeliveryManager> {
    manager_in(store, toml, Path::new("."))
}
