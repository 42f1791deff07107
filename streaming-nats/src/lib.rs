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
//!   The client is the official `async-nats` (TLS, token, user/password,
//!   nkey and `.creds` authentication, clusters with discovery,
//!   reconnection), on a small tokio runtime the streamer owns: nothing
//!   async appears in this crate's API.
//! - [`StreamReader`], [`replay_stream`] and [`replay_stream_into`]: read
//!   the blocks back in order (an ordered consumer) and rebuild the state,
//!   in memory or into a [`ReplaySink`] of the application's; the hash
//!   chains are recomputed from the records and must equal the node's.
//!   They take the same options as the streamer.
//! - [`BlockFollower`]: follows the stream live from a given height (the
//!   start found by a binary search over the stream's sequences), through
//!   server restarts, each height once; a height the stream no longer
//!   holds is [`NatsError::HeightGone`]. A relay's JetStream upstream:
//!   [`upstream_config`] reads its URL (`nats://host:port?stream=NAME`)
//!   with the `[relay.nats]` options ([`NatsUpstreamOptions`]).
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
//! let mut manager = DeliveryManager::builder()
//!     .configured(&specs, &registry, std::path::Path::new("."))
//!     .start(&mut store)?;
//! // ... write to `store`, then:
//! manager.commit(&mut store, Default::default())?;
//! manager.close(&mut store)?;
//!
//! // Elsewhere: rebuild the state from the stream.
//! let replay = statestream_nats::replay_stream(&statestream_nats::NatsStreamerConfig {
//!     url: "nats://127.0.0.1:4222".into(),
//!     ..Default::default()
//! })?;
//! println!("height {} app hash {}", replay.height, statestream_core::to_hex(&replay.app_hash));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod config;
mod conn;
mod error;
mod follow;
mod replay;
mod streamer;
mod upstream;
mod url;

/// Fuzzing seam, compiled only with the `fuzzing` feature (which `fuzz/`
/// enables for `fuzz_targets/nats_blocks.rs`): [`assemble`](fuzzing::assemble)
/// runs the reader's checks and reassembly (everything this crate parses
/// from what a stream stores; the NATS protocol itself is the client
/// crate's) on arbitrary messages. Not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use crate::replay::{Assembler, RawMessage};

    /// One stored message: sequence, `Statestream-Height` and
    /// `Statestream-Part` headers, payload.
    pub type Message<'a> = (u64, Option<&'a str>, Option<&'a str>, &'a [u8]);

    /// Feeds `messages` to the reader's assembler, in order, until the
    /// first error; returns the heights of the blocks it completed.
    pub fn assemble<'a>(
        stream: &str,
        messages: impl IntoIterator<Item = Message<'a>>,
    ) -> crate::Result<Vec<u64>> {
        let mut a = Assembler::new(stream);
        let mut heights = Vec::new();
        for (seq, height, part, payload) in messages {
            let raw = RawMessage {
                seq,
                height,
                part,
                payload,
            };
            if let Some(b) = a.push(raw)? {
                heights.push(b.height);
            }
        }
        Ok(heights)
    }
}

pub use config::{NATS_TYPE, NatsStreamerConfig};
pub use error::{NatsError, Result};
pub use follow::{BlockFollower, StreamHeights};
pub use replay::{
    Replay, ReplaySink, ReplayState, StreamBlock, StreamReader, replay_stream, replay_stream_into,
};
pub use streamer::{HEADER_HEIGHT, HEADER_MSG_ID, HEADER_PART, NatsStreamer};
pub use upstream::{NatsUpstreamOptions, display_upstream, is_nats_upstream, upstream_config};
