//! `statestream-nats`: a statestream streamer that publishes every committed
//! block to a NATS JetStream stream (`type = "nats"`), and the reader side
//! that rebuilds the state from the stream.
//!
//! - [`NatsStreamerConfig`]: the options of `type = "nats"` (see
//!   `docs/nats.md`); it builds the streamer. The `statestream` facade
//!   registers the type (cargo feature `nats`, on by default).
//! - [`NatsStreamer`]: one message per block on `<subject>.blocks`, the
//!   payload a protobuf `BlockFrame` (the plugin protocol's frame), headers
//!   `Nats-Msg-Id: <stream>-<height>` (JetStream deduplicates a block sent
//!   again) and `Statestream-Height`; blocks over the server's
//!   `max_payload` are split into parts. `on_block` returns only after the
//!   server's acknowledgement.
//! - [`Client`]: a small synchronous NATS client (no async runtime) with
//!   the JetStream calls the streamer and the reader need.
//! - [`StreamReader`] and [`replay_stream`]: read the blocks back in order
//!   and rebuild the state; the app hash must equal the node's.
//!
//! ```no_run
//! use statestream::{DeliveryManager, Registry};
//! use statestream_config::AppConfig;
//! use statestream_store::{MultiStore, StoreKey};
//!
//! let text = r#"
//! [store]
//! streamers = ["nats"]
//!
//! [streamers.nats]
//! type = "nats"
//! keys = ["*"]
//! url = "nats://127.0.0.1:4222"
//! stream = "statestream"
//! subject = "statestream"
//! "#;
//! let config = AppConfig::parse(text, std::path::Path::new("app.toml"))?;
//! let specs = config.resolve(&["bank"])?;
//! let registry = Registry::with_builtins();
//!
//! let bank = StoreKey::new("bank")?;
//! let mut store = MultiStore::in_memory(&[bank.clone()])?;
//! let mut manager = DeliveryManager::start(&mut store, &specs, &registry, std::path::Path::new("."))?;
//! // ... write to `store`, then:
//! manager.commit(&mut store, Default::default())?;
//! manager.close(&mut store)?;
//!
//! // Elsewhere: rebuild the state from the stream.
//! let mut client = statestream_nats::Client::connect(&statestream_nats::ConnectOptions::new(
//!     "nats://127.0.0.1:4222",
//! ))?;
//! let replay = statestream_nats::replay_stream(&mut client, "statestream", "statestream")?;
//! println!("height {} app hash {}", replay.height, statestream_core::to_hex(&replay.app_hash));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod client;
mod config;
mod error;
mod jetstream;
mod replay;
mod streamer;

/// Fuzzing seam, compiled only with the `fuzzing` feature (which `fuzz/`
/// enables for `fuzz_targets/nats_protocol.rs`): [`connect_script`](fuzzing::connect_script)
/// gives a [`Client`] whose server is a byte string, so everything the
/// client parses from a server runs on arbitrary bytes. Not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::client::connect_script;
}

pub use client::{Client, ConnectOptions, DEFAULT_PORT, Message, ServerInfo};
pub use config::{NATS_TYPE, NatsStreamerConfig};
pub use error::{NatsError, Result};
pub use jetstream::{PubAck, StoredMessage, StreamConfigInfo, StreamInfo, StreamSpec, StreamState};
pub use replay::{Replay, StreamBlock, StreamReader, replay_stream};
pub use streamer::{HEADER_HEIGHT, HEADER_MSG_ID, HEADER_PART, NatsStreamer};
