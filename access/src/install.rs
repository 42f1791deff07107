//! The registry of a node for the streamers built in the same process:
//! the delivery manager, which owns the store, opens the registry and
//! installs it under the state reader it hands its streamers; a `serve`
//! streamer (given that reader in its context) finds it there. Keyed by
//! the reader rather than the home directory, so that two nodes in one
//! process (tests, tools) never see each other's credentials. The
//! installation keeps the reader alive and ends when its guard is
//! dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::registry::Registry;

fn installed_map() -> &'static Mutex<HashMap<usize, Registry>> {
    static MAP: OnceLock<Mutex<HashMap<usize, Registry>>> = OnceLock::new();
    MAP.get_or_init(Default::default)
}

/// The address of what `anchor` points to: unique while it lives.
fn key<T: ?Sized>(anchor: &Arc<T>) -> usize {
    Arc::as_ptr(anchor).cast::<()>() as usize
}

/// Keeps a registry installed until dropped.
pub struct Installation {
    key: usize,
    registry: Registry,
    /// Holds the anchor, so that its address is not reused while the
    /// registry is installed under it.
    _anchor: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Installation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installation")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
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
        map.remove(&self.key);
    }
}

/// Installs `registry` as the credentials of the streamers given
/// `anchor` (the delivery manager's state reader).
pub fn install<T: ?Sized + Send + Sync + 'static>(
    anchor: &Arc<T>,
    registry: Registry,
) -> Installation {
    let key = key(anchor);
    installed_map()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, registry.clone());
    Installation {
        key,
        registry,
        _anchor: Box::new(Arc::clone(anchor)),
    }
}

/// The credentials installed under `anchor`, if any.
pub fn installed<T: ?Sized>(anchor: &Arc<T>) -> Option<Registry> {
    installed_map()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key(anchor))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installations_are_per_anchor_and_end_with_their_guard() {
        let a: Arc<dyn Send + Sync> = Arc::new(1u8);
        let b: Arc<dyn Send + Sync> = Arc::new(2u8);
        let guard = install(&a, Registry::in_memory());
        assert!(installed(&a).is_some());
        assert!(installed(&b).is_none());
        drop(guard);
        assert!(installed(&a).is_none());
    }
}
