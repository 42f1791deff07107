//! The `app.toml` streaming configuration of statestream.
//!
//! A node enables streamers the way the Cosmos SDK does (ADR-038): `[store]
//! streamers` lists the enabled `[streamers.<name>]` tables, and each table
//! says which stores the streamer sees (`keys`). This crate reads those tables
//! and validates the keys every streamer has (`type`, `keys`, `delivery`,
//! `queue`, `stop-node-on-error`). Every other key is a type-specific option:
//! it is handed, untouched but normalised to snake_case, to the streamer as
//! [`StreamerOptions`], and the streamer's own serde config type parses it.
//! The crate knows no streamer type.
//!
//! Every error names the file, the table, the key as the user spelled it and
//! its line, whether it is found here or by a streamer parsing its options.
//!
//! Values are read as the Cosmos SDK reads them, so that an app.toml made
//! from Cosmos's own template runs unchanged: a boolean may be a string Go's
//! `strconv.ParseBool` accepts (`stop-node-on-error = "true"`), an integer a
//! decimal string (`queue = "64"`), for the common keys and for every option
//! of every streamer type. A `[streaming.abci]` table (Cosmos's go-plugin
//! listeners) is recognised and reported by [`AppConfig::warnings`].
//!
//! ```
//! use std::path::Path;
//!
//! use serde::Deserialize;
//! use statestream_config::{AppConfig, Delivery};
//!
//! let text = r#"
//! [store]
//! streamers = ["file"]
//!
//! [streamers.file]
//! keys = ["*"]
//! write_dir = "data/streaming"
//! output-metadata = true
//! delivery = "sync"
//! "#;
//! let config = AppConfig::parse(text, Path::new("config/app.toml"))?;
//! let specs = config.resolve(&["bank", "acc"])?;
//! assert_eq!(specs[0].type_name, "file");
//! assert_eq!(specs[0].stores, ["acc", "bank"]);
//! assert_eq!(specs[0].delivery, Delivery::Sync);
//!
//! // The streamer parses its own options.
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct FileOptions {
//!     write_dir: String,
//!     #[serde(default)]
//!     output_metadata: bool,
//! }
//! let options: FileOptions = specs[0].options.parse()?;
//! assert_eq!(options.write_dir, "data/streaming");
//! assert!(options.output_metadata);
//! # Ok::<(), statestream_config::ConfigError>(())
//! ```

mod app;
mod error;
mod lenient;
mod options;
mod text;

pub use crate::app::{
    AdminConfig, AppConfig, CosmosConfig, DEFAULT_MAX_UPSTREAM_LAG_BLOCKS, DEFAULT_QUEUE,
    DEFAULT_READY_LAG_BLOCKS, DEFAULT_SHUTDOWN_TIMEOUT_MS, Delivery, GapPolicy, ListenerTls,
    MAX_LAG_BLOCKS, MAX_QUEUE, MAX_SHUTDOWN_TIMEOUT_MS, RelayConfig, RelayNatsConfig, StreamerSpec,
    TelemetryConfig,
};
pub use crate::error::ConfigError;
pub use crate::options::StreamerOptions;
