use std::collections::BTreeMap;
use std::path::Path;

use statestream_config::{StreamerOptions, StreamerSpec};
use statestream_core::{BoxError, Shutdown, StoreKey, Streamer, StreamerContext};

use crate::error::{Error, Result};

type Constructor = dyn Fn(&StreamerContext<'_>, &StreamerOptions) -> Result<Box<dyn Streamer>, BoxError>
    + Send
    + Sync;

type Validator =
    dyn Fn(&StreamerContext<'_>, &StreamerOptions) -> Result<Vec<String>, BoxError> + Send + Sync;

/// A registered type: how to build it and, when given, how to check its
/// options without building it.
struct Type {
    build: Box<Constructor>,
    validate: Option<Box<Validator>>,
}

/// Maps streamer type names (`type` in app.toml) to constructors.
///
/// A constructor is given the instance's [`StreamerContext`] (its name,
/// stores, the node's home and read access to the store) and its
/// type-specific options, which it parses with its own config type
/// (`options.parse::<YourConfig>()`). A type may also have a validator
/// ([`register_with_validator`](Registry::register_with_validator)), which
/// [`validate`](Registry::validate) runs: `statestream config check`, and
/// [`DeliveryManager::builder`](crate::DeliveryManager::builder) before it
/// builds anything.
pub struct Registry {
    types: BTreeMap<String, Type>,
    /// Where streamers register metrics of their own (the hook for a
    /// streamer type's counters: subscribers, bytes sent, ...).
    #[cfg(feature = "telemetry")]
    metrics: prometheus::Registry,
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
            #[cfg(feature = "telemetry")]
            metrics: prometheus::Registry::new(),
        }
    }

    /// The metrics registry of the streamers this registry builds (cargo
    /// feature `telemetry`). A constructor that wants metrics of its own
    /// captures a clone and registers them when it builds its streamer:
    ///
    /// ```
    /// use statestream::{Block, Registry, StreamError, Streamer};
    ///
    /// struct Counting(prometheus::IntCounter);
    /// impl Streamer for Counting {
    ///     fn on_block(&mut self, _block: &Block) -> Result<(), StreamError> {
    ///         self.0.inc();
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let mut registry = Registry::with_builtins();
    /// let metrics = registry.metrics().clone();
    /// registry.register("counting", move |ctx, _options| {
    ///     let blocks = prometheus::IntCounter::with_opts(
    ///         prometheus::Opts::new("counting_blocks_total", "Blocks seen.")
    ///             .const_label("streamer", ctx.name),
    ///     )?;
    ///     metrics.register(Box::new(blocks.clone()))?;
    ///     Ok(Box::new(Counting(blocks)))
    /// });
    /// ```
    ///
    /// Hand the same registry to
    /// [`TelemetryServer::start`](crate::TelemetryServer::start): `GET
    /// /metrics` renders the node's metrics and these together. Names
    /// starting with `statestream_` are the node's.
    #[cfg(feature = "telemetry")]
    pub fn metrics(&self) -> &prometheus::Registry {
        &self.metrics
    }

    /// A registry with every built-in streamer type this build enables:
    /// `log` and `process` always, and each streamer crate's type behind
    /// its cargo feature of the same name (`file`, `nats`, `postgres`,
    /// `serve`, `webhook`; all on by default).
    pub fn with_builtins() -> Registry {
        let mut r = Registry::new();
        crate::builtin::register(&mut r);
        r
    }

    /// Registers (or replaces) a type. Without a validator,
    /// [`validate`](Registry::validate) checks only that the type is known;
    /// its options are checked when it is built.
    pub fn register<F>(&mut self, type_name: &str, constructor: F) -> &mut Registry
    where
        F: Fn(&StreamerContext<'_>, &StreamerOptions) -> Result<Box<dyn Streamer>, BoxError>
            + Send
            + Sync
            + 'static,
    {
        self.insert(type_name, None, Box::new(constructor))
    }

    /// Registers (or replaces) a type with a validator: a check of the
    /// options that binds no port, creates no file or directory, starts no
    /// program and connects to nothing (it may read the files the options
    /// name). The context it gets has no read access to the store
    /// (`reader` and `push` are `None`).
    ///
    /// The validator returns where the streamer writes: keys equal for two
    /// streamers exactly when they would write the same place (a directory
    /// and file prefix, a stream, a table's rows), written so that they can
    /// be shown in an error (`block files "/n/data/streaming" with prefix
    /// ""`). [`validate`](Registry::validate) refuses two streamers with a
    /// key in common, naming both. Return none for a streamer that writes
    /// nowhere another one could.
    pub fn register_with_validator<V, F>(
        &mut self,
        type_name: &str,
        validate: V,
        constructor: F,
    ) -> &mut Registry
    where
        V: Fn(&StreamerContext<'_>, &StreamerOptions) -> Result<Vec<String>, BoxError>
            + Send
            + Sync
            + 'static,
        F: Fn(&StreamerContext<'_>, &StreamerOptions) -> Result<Box<dyn Streamer>, BoxError>
            + Send
            + Sync
            + 'static,
    {
        self.insert(type_name, Some(Box::new(validate)), Box::new(constructor))
    }

    fn insert(
        &mut self,
        type_name: &str,
        validate: Option<Box<Validator>>,
        build: Box<Constructor>,
    ) -> &mut Registry {
        self.types
            .insert(type_name.to_string(), Type { build, validate });
        self
    }

    /// Checks every streamer of `specs` without building any: its type is
    /// registered, its type's validator accepts its options, and no two of
    /// them write the same place. `all_stores` are the node's stores and
    /// `home` the directory relative paths are under, as the streamers
    /// would be built with. Returns every error found (empty: valid), in
    /// the order of `specs`, each conflict after the streamers'.
    pub fn validate(
        &self,
        specs: &[StreamerSpec],
        all_stores: &[StoreKey],
        home: &Path,
    ) -> Vec<Error> {
        let shutdown = Shutdown::new();
        let mut errors = Vec::new();
        // (destination, streamer) of every streamer whose options are valid.
        let mut written: Vec<(String, &str)> = Vec::new();
        for spec in specs {
            let Some(entry) = self.types.get(&spec.type_name) else {
                errors.push(self.unknown_type_error(&spec.name, &spec.type_name, &spec.options));
                continue;
            };
            let Some(validate) = &entry.validate else {
                continue;
            };
            let stores = match spec
                .stores
                .iter()
                .map(|s| StoreKey::new(s))
                .collect::<std::result::Result<Vec<_>, _>>()
            {
                Ok(stores) => stores,
                Err(e) => {
                    errors.push(e.into());
                    continue;
                }
            };
            let ctx = StreamerContext {
                name: &spec.name,
                stores: &stores,
                all_stores,
                home,
                reader: None,
                shutdown: &shutdown,
                push: None,
            };
            match validate(&ctx, &spec.options) {
                Ok(destinations) => {
                    let mut conflicts: Vec<&str> = Vec::new();
                    for destination in destinations {
                        match written.iter().find(|(d, _)| *d == destination) {
                            Some((_, first)) if !conflicts.contains(first) => {
                                conflicts.push(first);
                                errors.push(Error::SameDestination {
                                    first: first.to_string(),
                                    second: spec.name.clone(),
                                    destination,
                                });
                            }
                            Some(_) => {}
                            None => written.push((destination, &spec.name)),
                        }
                    }
                }
                Err(source) => errors.push(Error::Invalid {
                    streamer: spec.name.clone(),
                    type_name: spec.type_name.clone(),
                    source,
                }),
            }
        }
        errors
    }

    /// Whether `type_name` is registered.
    pub fn contains(&self, type_name: &str) -> bool {
        self.types.contains_key(type_name)
    }

    /// The registered type names, sorted.
    pub fn types(&self) -> Vec<&str> {
        self.types.keys().map(String::as_str).collect()
    }

    /// The registered type names as an error message lists them.
    fn known(&self) -> String {
        if self.types.is_empty() {
            "none registered".to_string()
        } else {
            self.types().join(", ")
        }
    }

    /// Builds one instance of `type_name`.
    pub fn build(
        &self,
        type_name: &str,
        ctx: &StreamerContext<'_>,
        options: &StreamerOptions,
    ) -> Result<Box<dyn Streamer>> {
        let entry = self
            .types
            .get(type_name)
            .ok_or_else(|| Error::UnknownType {
                streamer: ctx.name.to_string(),
                type_name: type_name.to_string(),
                known: self.known(),
            })?;
        (entry.build)(ctx, options).map_err(|source| Error::Build {
            streamer: ctx.name.to_string(),
            type_name: type_name.to_string(),
            source,
        })
    }

    /// The configuration error for a `type` no constructor is registered
    /// for: it names the file, the table, the key and the line, as for
    /// every other bad key.
    pub(crate) fn unknown_type_error(
        &self,
        name: &str,
        type_name: &str,
        options: &StreamerOptions,
    ) -> Error {
        Error::Config(options.clone().with_name(name.to_string()).error(
            "type",
            format!(
                "unknown type \"{type_name}\" (known types: {})",
                self.known()
            ),
        ))
    }
}
