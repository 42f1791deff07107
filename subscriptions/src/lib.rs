//! `statestream-subscriptions`: webhook subscriptions that consumers
//! create, change and remove while the node runs (Flare's model: the
//! service does not need to know who consumes it).
//!
//! - [`SubscriptionSpec`]: what a consumer sends (Flare's `endpoint`,
//!   `delivery`, `content`, `data`, plus `filter`, `start`, `retry`,
//!   `rate_limit_per_s`, `batch`, `disable_after_failures`,
//!   `disable_after_seconds`, `skip_unchanged`); unknown fields, a URL that
//!   is not http(s), a malformed template and (for a credential's
//!   subscription) a private address are refused with the field and why.
//! - [`Engine`]: subscriptions are records in the store's `subscriptions`
//!   table ([`statestream_store::Records`]); each active one is a streamer
//!   added to the running delivery manager
//!   ([`statestream::RuntimeHandle`]) with its own cursor and worker, so a
//!   slow or dead endpoint delays nobody else. After a restart each
//!   resumes from its cursor. Delivery is at least once, the cursor
//!   advancing only after success or discard; requests, `webhook-id`s,
//!   bodies and Standard Webhooks signatures are the `webhook` streamer's
//!   ([`statestream_webhook::WebhookPlan`]).
//! - Pause and resume; a subscription whose blocks keep failing
//!   (`disable_after_failures` consecutive failed blocks, or
//!   `disable_after_seconds` of only failures, or a 410) is `disabled`
//!   with the reason and the height, and `resume` continues from there,
//!   losing nothing. A rate limit per subscription (waiting is not a
//!   failure). A bounded attempt log; replay of a height range with the
//!   same ids and bytes; a signed test event; secret rotation with a grace
//!   period (two signatures in `webhook-signature`).
//! - [`Engine::collector`]: metrics per subscription;
//!   [`Engine::status`]: the list `/status` shows.
//!
//! See `docs/subscriptions.md`.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod api;
mod deliver;
mod engine;
mod error;
mod metrics;
mod model;

pub use deliver::Attempt;
pub use engine::{
    Caller, Engine, EngineOptions, ID_PREFIX, ReplaySummary, SUBSCRIPTIONS_TABLE,
    SubscriptionStatus, SubscriptionView,
};
pub use error::{Error, Result};
pub use metrics::SubscriptionCollector;
pub use model::{
    ActionName, ActionSpec, ActionsSpec, ContentSpec, DEFAULT_DISABLE_AFTER_FAILURES,
    DEFAULT_DISABLE_AFTER_SECONDS, DEFAULT_SCHEDULE_MS, DeliverySpec, Disabled, EndpointSpec,
    FilterSpec, RetrySpec, StartSpec, State, StatusSpec, SubscriptionSpec,
};
