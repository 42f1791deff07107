use std::collections::BTreeMap;
use std::path::Path;

use statestream_config::StreamerOptions;
use statestream_store::StoreKey;

use crate::error::{BoxError, Error, Result};
use crate::streamer::Streamer;

/// What a constructor receives to build one streamer instance.
#[derive(Debug, Clone, Copy)]
pub struct StreamerContext<'a> {
    /// The instance's name (its `[streamers.<name>]` table).
    pub name: &'a str,
    /// The stores it receives, resolved from `keys`, in name order.
    pub stores: &'a [StoreKey],
    /// Its type-specific options (the table minus the common keys); parse
    /// them with `options.parse::<YourConfig>()`.
    pub options: &'a StreamerOptions,
    /// The node's home directory (relative paths in options are under it).
    pub home: &'a Path,
}

type Constructor =
    dyn Fn(&StreamerContext<'_>) -> Result<Box<dyn Streamer>, BoxError> + Send + Sync;

/// Maps streamer type names (`type` in app.toml) to constructors.
pub struct Registry {
    types: BTreeMap<String, Box<Constructor>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("types", &self.types.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry {
            types: BTreeMap::new(),
        }
    }

    /// A registry with the streamer types this crate provides. The file
    /// streamer lives in `statestream-file` (it depends on this crate, so
    /// this crate cannot name it): add it with `statestream_file::register`.
    pub fn with_builtins() -> Registry {
        let mut r = Registry::new();
        crate::builtin::register(&mut r);
        r
    }

    /// Registers (or replaces) a type.
    pub fn register<F>(&mut self, type_name: &str, constructor: F) -> &mut Registry
    where
        F: Fn(&StreamerContext<'_>) -> Result<Box<dyn Streamer>, BoxError> + Send + Sync + 'static,
    {
        self.types
            .insert(type_name.to_string(), Box::new(constructor));
        self
    }

    /// Whether `type_name` is registered.
    pub fn contains(&self, type_name: &str) -> bool {
        self.types.contains_key(type_name)
    }

    /// The registered type names, sorted.
    pub fn types(&self) -> Vec<&str> {
        self.types.keys().map(String::as_str).collect()
    }

    /// Builds one instance of `type_name`.
    pub fn build(&self, type_name: &str, ctx: &StreamerContext<'_>) -> Result<Box<dyn Streamer>> {
        let ctor = self
            .types
            .get(type_name)
            .ok_or_else(|| Error::UnknownType {
                streamer: ctx.name.to_string(),
                type_name: type_name.to_string(),
                known: if self.types.is_empty() {
                    "none registered".to_string()
                } else {
                    self.types().join(", ")
                },
            })?;
        ctor(ctx).map_err(|source| Error::Build {
            streamer: ctx.name.to_string(),
            type_name: type_name.to_string(),
            source,
        })
    }
}
