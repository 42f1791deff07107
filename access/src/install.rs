//! The registry of a node's home, for the streamers built in the same
//! process: the delivery manager, which owns the store, opens the registry
//! and installs it for the home directory; a `serve` streamer (given the
//! home in its context) finds it there. The installation ends when its
//! guard is dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::registry::Registry;

fn installed_map() -> &'static Mutex<HashMap<PathBuf, Registry>> {
    static MAP: OnceLock<Mutex<HashMap<PathBuf, Registry>>> = OnceLock::new();
    MAP.get_or_init(Default::default)
}

fn key(home: &Path) -> PathBuf {
    home.canonicalize().unwrap_or_else(|_| home.to_path_buf())
}

/// Keeps a registry installed for a home until dropped.
#[derive(Debug)]
pub struct Installation {
    home: PathBuf,
    registry: Registry,
}

impl Installation {
    /// The installed registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Drop for Installation {
    fn drop(&mut self) {
        let mut map = installed_map().lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&self.home);
    }
}

/// Installs `registry` as the credentials of the node whose home is
/// `home` (replacing an earlier one).
pub fn install(home: &Path, registry: Registry) -> Installation {
    let home = key(home);
    installed_map()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(home.clone(), registry.clone());
    Installation { home, registry }
}

/// The credentials installed for `home`, if any.
pub fn installed(home: &Path) -> Option<Registry> {
    installed_map()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key(home))
        .cloned()
}
