use std::collections::BTreeMap;

use statestream_config::StreamerOptions;
use statestream_core::{BoxError, Streamer, StreamerContext};

use crate::error::{Error, Result};

type Constructor = dyn Fn(&StreamerContext<'_>, &StreamerOptions) -> Result<Box<dyn Streamer>, BoxError>
    + Send
    + Sync;

/// Maps streamer type names (`type` in app.toml) to constructors.
///
/// A constructor is given the instance's [`StreamerContext`] (its name,
/// stores, the node's home and read access to the store) and its
/// type-specific options, which it parses with its own config type
/// (`options.parse::<YourConfig>()`).
pub struct Registry {
    types: BTreeMap<String, Box<Constructor>>,
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
    /// `webhook`; all on by default).
    pub fn with_builtins() -> Registry {
        let mut r = Registry::new();
        crate::builtin::register(&mut r);
        r
    }

    /// Registers (or replaces) a type.
    pub fn register<F>(&mut self, type_name: &str, constructor: F) -> &mut Registry
    where
        F: Fn(&StreamerContext<'_>, &StreamerOptions) -> Result<Box<dyn Streamer>, BoxError>
            + Send
            + Sync
            + 'static,
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
        let ctor = self
            .types
            .get(type_name)
            .ok_or_else(|| Error::UnknownType {
                streamer: ctx.name.to_string(),
                type_name: type_name.to_string(),
                known: self.known(),
            })?;
        ctor(ctx, options).map_err(|source| Error::Build {
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
