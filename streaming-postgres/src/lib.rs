//! `statestream-postgres`: a statestream streamer that writes every
//! committed block into PostgreSQL tables (`type = "postgres"`), each block
//! and the streamer's cursor in one SQL transaction, so that every block is
//! in the database exactly once.
//!
//! - [`PostgresStreamerConfig`]: the options of `type = "postgres"` (see
//!   `docs/postgres.md`); it builds the streamer. The `statestream` facade
//!   registers the type (cargo feature `postgres`, on by default).
//! - [`PostgresStreamer`]: per block one transaction: a `blocks` row, the
//!   `changes` rows (binary `COPY`), the `state` upserts and deletes, the
//!   streamer's row in `cursors`, and `NOTIFY statestream_<schema>,
//!   '<height>'`. At start it reads its cursor from the database and skips
//!   the blocks at or below it.
//! - [`create_statements`]: the tables' `CREATE` statements, for databases
//!   where the streamer may not create them (`create_schema = false`).
//! - [`rows_per_s`]: the `postgres_rows_per_s` benchmark (the streamer
//!   next to a plain bulk load of the same rows), shared by the example of
//!   that name and `statestream bench --postgres URL`.
//!
//! The client is the synchronous `postgres` crate (it runs on the
//! streamer's worker thread), TLS by rustls.
//!
//! ```no_run
//! use statestream::{DeliveryManager, Registry};
//! use statestream_config::AppConfig;
//! use statestream_store::{MultiStore, StoreKey};
//!
//! let text = r#"
//! [store]
//! streamers = ["pg"]
//!
//! [streamers.pg]
//! type = "postgres"
//! keys = ["*"]
//! url = "postgresql://statestream@127.0.0.1:5432/statestream"
//! schema = "statestream"
//! tables = "both"
//! "#;
//! let config = AppConfig::parse(text, std::path::Path::new("app.toml"))?;
//! let specs = config.resolve(&["bank"])?;
//! let registry = Registry::with_builtins();
//!
//! let bank = StoreKey::new("bank")?;
//! let mut store = MultiStore::in_memory(&[bank.clone()])?;
//! let mut manager = DeliveryManager::builder()
//!     .configured(&specs, &registry, std::path::Path::new("."))
//!     .start(&mut store)?;
//! // ... write to `store`, then:
//! manager.commit(&mut store, Default::default())?;
//! manager.close(&mut store)?;
//! // SELECT key, value FROM statestream.state WHERE store = 'bank';
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod bench;
mod cancel;
mod config;
mod connect;
mod error;
mod schema;
mod streamer;

pub use bench::{RowsPerSecond, Spread, rows_per_s};
pub use config::{PASSWORD_ENV, POSTGRES_TYPE, PostgresStreamerConfig, Tables, TlsMode};
pub use error::{PostgresError, Result};
pub use schema::{CHANNEL_PREFIX, create_statements};
pub use streamer::PostgresStreamer;
