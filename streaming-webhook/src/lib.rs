//! `statestream-webhook`: a statestream streamer that pushes every
//! committed change to HTTP endpoints (`type = "webhook"`), with Flare's
//! delivery policy and Standard Webhooks signatures.
//!
//! - [`WebhookConfig`]: the options of `type = "webhook"` (see
//!   `docs/webhook.md`); it builds the streamer. The `statestream` facade
//!   registers the type (cargo feature `webhook`, on by default). Retry
//!   waits end when the node shuts down (the context's `Shutdown`): the
//!   block is delivered again at the next start.
//! - [`WebhookStreamer`]: one request per change (or per block with
//!   `batch = "block"`), a JSON envelope (`id`, `action`, `store`, `key`,
//!   `height`, `time`, `document`, `data`) or the raw value, the headers
//!   `webhook-id` (`<streamer>-<height>-<index>`, the same on every
//!   attempt), `webhook-timestamp` and `webhook-signature` (`v1,<base64
//!   HMAC-SHA256>` per `whsec_` secret). Every attempt of a delivery sends
//!   the same body bytes.
//! - [`WebhookPlan`] ([`WebhookConfig::check`]): the same requests, ids,
//!   bodies, signatures and policy for a caller that runs its own delivery
//!   loop (the run-time subscriptions of `statestream-subscriptions`).
//! - Delivery policy, per request: a `success` status (default any 2xx)
//!   is delivered, a `discard` status is dropped and logged, 410 stops the
//!   streamer, anything else (3xx included: redirects are not followed,
//!   timeouts, connection errors) is retried on `retry_schedule_ms` with
//!   jitter, honouring `Retry-After` on 429 and 503. When the schedule is
//!   exhausted, `on_exhausted = "halt"` fails the block (the node stops
//!   with `stop-node-on-error = true`), `"dead-letter"` writes the request
//!   to a file and goes on. `on_block` returns only when every change of
//!   the block is delivered, discarded or dead-lettered, so the cursor
//!   never passes an undelivered change: delivery is at least once, and
//!   receivers deduplicate by `webhook-id`.
//!
//! ```no_run
//! use statestream::{BlockMeta, DeliveryManager, Registry};
//! use statestream_config::AppConfig;
//! use statestream_store::{KvStore, MultiStore, StoreKey};
//!
//! let text = r#"
//! [store]
//! streamers = ["hook"]
//!
//! [streamers.hook]
//! type = "webhook"
//! keys = ["bank"]
//! url = "http://127.0.0.1:8080/hooks/{store}"
//! secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
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
//! store.set(&bank, b"balance/alice", br#"{"amount": 10}"#)?;
//! manager.commit(&mut store, BlockMeta::default())?;
//! // At shutdown: a retry wait in progress ends, the block stays for the
//! // next start.
//! manager.close(&mut store)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod address;
mod config;
mod dead_letter;
mod delivery;
mod envelope;
mod error;
mod policy;
mod redact;
mod request;
mod sign;
mod streamer;
mod template;

pub use address::is_public_address;
pub use config::{ActionOverride, Actions, Batch, OnExhausted, WEBHOOK_TYPE, WebhookConfig};
pub use delivery::{
    AttemptOutcome, InvalidOption, RESPONSE_BODY_LIMIT, WebhookPlan, WebhookRequest,
};
pub use envelope::rfc3339;
pub use error::Error;
pub use policy::{Verdict, jitter};
pub use request::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
pub use sign::{Secret, signature_header};
pub use streamer::WebhookStreamer;
