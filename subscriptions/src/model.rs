//! A subscription as a consumer writes it (Flare's fields, plus filter,
//! start, retry, rate limit, batch and the disable thresholds), its checks,
//! and the record kept in the node's store.

use std::collections::BTreeMap;
use std::net::{IpAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};
use statestream_core::{Action, StoreKey};
use statestream_webhook::{ActionOverride, Actions, Batch, WebhookConfig, WebhookPlan};

use crate::error::Error;

/// The retry schedule when none is given: 0, 1 s, 5 s, 30 s, 2 min.
pub const DEFAULT_SCHEDULE_MS: [u64; 5] = [0, 1_000, 5_000, 30_000, 120_000];
/// Consecutive failed blocks before a subscription is disabled, when not
/// given.
pub const DEFAULT_DISABLE_AFTER_FAILURES: u32 = 10;
/// Seconds of only failures before a subscription is disabled, when not
/// given: a day.
pub const DEFAULT_DISABLE_AFTER_SECONDS: u64 = 86_400;

/// What a consumer sends to create a subscription (`POST
/// /v1/subscriptions`); every field but `endpoint.url` is optional. Unknown
/// fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Where changes go.
    pub endpoint: EndpointSpec,
    /// Which status codes mean delivered, and which mean "drop it".
    #[serde(default)]
    pub delivery: DeliverySpec,
    /// What the body carries.
    #[serde(default)]
    pub content: ContentSpec,
    /// Extra fields of the envelope, templated like the `webhook`
    /// streamer's `data` (`{store}`, `{key}`, `{height}`, `{action}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
    /// Which changes are delivered.
    #[serde(default)]
    pub filter: FilterSpec,
    /// The first height delivered: `"latest"` (the next block) or
    /// `{"height": H}`.
    #[serde(default)]
    pub start: StartSpec,
    /// The retry schedule of one request.
    #[serde(default)]
    pub retry: RetrySpec,
    /// Requests per second at most (none: no limit). Waiting for the limit
    /// is not a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_s: Option<f64>,
    /// `"change"`: one request per change; `"block"`: one per block.
    #[serde(default, with = "batch_name")]
    pub batch: Batch,
    /// Consecutive failed blocks (each one's retry schedule exhausted)
    /// before the subscription is disabled.
    #[serde(default = "default_failures")]
    pub disable_after_failures: u32,
    /// Seconds of only failures before the subscription is disabled.
    #[serde(default = "default_seconds")]
    pub disable_after_seconds: u64,
    /// A set that writes the value the key already had (as this
    /// subscription last saw it) is not delivered.
    #[serde(default)]
    pub skip_unchanged: bool,
}

fn default_failures() -> u32 {
    DEFAULT_DISABLE_AFTER_FAILURES
}

fn default_seconds() -> u64 {
    DEFAULT_DISABLE_AFTER_SECONDS
}

mod batch_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use statestream_webhook::Batch;

    pub(super) fn serialize<S: Serializer>(b: &Batch, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match b {
            Batch::Block => "block",
            _ => "change",
        })
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Batch, D::Error> {
        Batch::deserialize(d)
    }
}

/// `endpoint`: the URL (templated), method and headers, and per-action
/// overrides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// `http://` or `https://`, templated (`{store}`, `{key}`, `{height}`,
    /// `{action}`).
    pub url: String,
    /// `POST` (default), `PUT`, `PATCH` or `DELETE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Headers sent with every request (values templated).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Overrides for `create`, `update`, `delete` (batch = "change").
    #[serde(default, skip_serializing_if = "ActionsSpec::is_empty")]
    pub actions: ActionsSpec,
}

/// `endpoint.actions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<ActionSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<ActionSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<ActionSpec>,
}

impl ActionsSpec {
    fn is_empty(&self) -> bool {
        self.create.is_none() && self.update.is_none() && self.delete.is_none()
    }
}

/// One action's override.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// `delivery`: status codes (`200`) or classes (`"2xx"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySpec {
    /// Delivered (default: any 2xx).
    #[serde(default)]
    pub success: Vec<StatusSpec>,
    /// Dropped and logged; delivery goes on (410 here: a 410 is dropped
    /// rather than disabling the subscription).
    #[serde(default)]
    pub discard: Vec<StatusSpec>,
}

/// A status code or a class of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StatusSpec {
    /// One code, 100-599.
    Code(i64),
    /// `"1xx"` to `"5xx"`, or a code written as a string.
    Text(String),
}

impl StatusSpec {
    fn codes(&self, field: &str) -> Result<Vec<i64>, Error> {
        let bad = |s: &dyn std::fmt::Display| {
            Error::invalid(
                field,
                format!("{s} is neither a status code (100-599) nor a class such as \"2xx\""),
            )
        };
        match self {
            StatusSpec::Code(c) if (100..=599).contains(c) => Ok(vec![*c]),
            StatusSpec::Code(c) => Err(bad(c)),
            StatusSpec::Text(t) => {
                let lower = t.to_ascii_lowercase();
                if let Some(d) = lower.strip_suffix("xx")
                    && let Ok(d) = d.parse::<i64>()
                    && (1..=5).contains(&d)
                {
                    return Ok((d * 100..d * 100 + 100).collect());
                }
                match t.parse::<i64>() {
                    Ok(c) if (100..=599).contains(&c) => Ok(vec![c]),
                    _ => Err(bad(&format!("{t:?}"))),
                }
            }
        }
    }
}

/// `content`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentSpec {
    /// A JSON envelope (default); `false`: the raw value.
    #[serde(default = "yes")]
    pub envelope: bool,
    /// The value is carried (default).
    #[serde(default = "yes")]
    pub document: bool,
}

impl Default for ContentSpec {
    fn default() -> Self {
        ContentSpec {
            envelope: true,
            document: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// `filter`: empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// Store names.
    #[serde(default)]
    pub stores: Vec<String>,
    /// Key prefixes (a key matches when it starts with one of them).
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// `create`, `update`, `delete`.
    #[serde(default)]
    pub actions: Vec<ActionName>,
}

/// An action in a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionName {
    Create,
    Update,
    Delete,
}

impl ActionName {
    fn matches(self, a: Action) -> bool {
        matches!(
            (self, a),
            (ActionName::Create, Action::Create)
                | (ActionName::Update, Action::Update)
                | (ActionName::Delete, Action::Delete)
        )
    }
}

/// `start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StartSpec {
    /// `"latest"`: the next block.
    #[default]
    #[serde(with = "latest")]
    Latest,
    /// `{"height": H}`: from block H, which the change log must still keep.
    At {
        /// The first height delivered.
        height: u64,
    },
}

mod latest {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("latest")
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        let s = String::deserialize(d)?;
        if s == "latest" {
            Ok(())
        } else {
            Err(serde::de::Error::custom(format!(
                "start: {s:?} is neither \"latest\" nor {{\"height\": H}}"
            )))
        }
    }
}

/// `retry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// The delay before each attempt, in milliseconds (its length is the
    /// number of attempts).
    #[serde(default = "default_schedule")]
    pub schedule_ms: Vec<u64>,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            schedule_ms: default_schedule(),
        }
    }
}

fn default_schedule() -> Vec<u64> {
    DEFAULT_SCHEDULE_MS.to_vec()
}

/// Which changes a subscription delivers, checked.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub(crate) stores: Vec<StoreKey>,
    prefixes: Vec<Vec<u8>>,
    actions: Vec<ActionName>,
}

impl Filter {
    pub(crate) fn keeps(&self, key: &[u8], action: Action) -> bool {
        (self.prefixes.is_empty() || self.prefixes.iter().any(|p| key.starts_with(p)))
            && (self.actions.is_empty() || self.actions.iter().any(|a| a.matches(action)))
    }
}

/// Whether a host may be called: a subscription owned by a credential may
/// not reach the node's own network unless the operator allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    Any,
    PublicOnly,
}

impl SubscriptionSpec {
    /// Parses a JSON body: unknown fields and wrong types are refused with
    /// the serde message (which names the field).
    pub fn from_json(body: &[u8]) -> Result<SubscriptionSpec, Error> {
        serde_json::from_slice(body).map_err(|e| Error::invalid("body", e.to_string()))
    }

    /// The `webhook` options this subscription sends with.
    pub(crate) fn webhook_config(&self) -> Result<WebhookConfig, Error> {
        let mut config = WebhookConfig {
            url: self.endpoint.url.clone(),
            headers: self.endpoint.headers.clone(),
            batch: self.batch,
            envelope: self.content.envelope,
            document: self.content.document,
            data: self.data.clone(),
            retry_schedule_ms: self.retry.schedule_ms.clone(),
            ..WebhookConfig::default()
        };
        if let Some(m) = &self.endpoint.method {
            config.method = m.clone();
        }
        let codes = |list: &[StatusSpec], field: &str| -> Result<Vec<i64>, Error> {
            let mut out = Vec::new();
            for s in list {
                out.extend(s.codes(field)?);
            }
            out.sort_unstable();
            out.dedup();
            Ok(out)
        };
        config.success = codes(&self.delivery.success, "delivery.success")?;
        config.discard = codes(&self.delivery.discard, "delivery.discard")?;
        let over = |a: &Option<ActionSpec>| {
            a.as_ref().map(|a| ActionOverride {
                url: a.url.clone(),
                method: a.method.clone(),
                headers: a.headers.clone(),
            })
        };
        config.actions = Actions {
            create: over(&self.endpoint.actions.create),
            update: over(&self.endpoint.actions.update),
            delete: over(&self.endpoint.actions.delete),
        };
        Ok(config)
    }

    /// Every check: the webhook options (URL, method, headers, templates,
    /// codes, schedule), the filter against the node's stores, the rate
    /// limit, the thresholds, and where the URLs lead.
    pub(crate) fn check(
        &self,
        id: &str,
        stores: &[StoreKey],
        reach: Reach,
    ) -> Result<(WebhookPlan, Filter), Error> {
        let config = self.webhook_config()?;
        let plan = config
            .check(id)
            .map_err(|e| Error::invalid(&field_of(e.key), e.message))?;
        let filter = self.filter(stores)?;
        if let Some(r) = self.rate_limit_per_s
            && !(r.is_finite() && r > 0.0)
        {
            return Err(Error::invalid(
                "rate_limit_per_s",
                format!("{r} is not a positive number of requests per second"),
            ));
        }
        if self.disable_after_failures == 0 {
            return Err(Error::invalid(
                "disable_after_failures",
                "must be at least 1".to_owned(),
            ));
        }
        if self.disable_after_seconds == 0 {
            return Err(Error::invalid(
                "disable_after_seconds",
                "must be at least 1".to_owned(),
            ));
        }
        if let StartSpec::At { height: 0 } = self.start {
            return Err(Error::invalid(
                "start.height",
                "heights start at 1".to_owned(),
            ));
        }
        if reach == Reach::PublicOnly {
            let mut urls = vec![("endpoint.url", &self.endpoint.url)];
            for (name, a) in [
                ("endpoint.actions.create.url", &self.endpoint.actions.create),
                ("endpoint.actions.update.url", &self.endpoint.actions.update),
                ("endpoint.actions.delete.url", &self.endpoint.actions.delete),
            ] {
                if let Some(u) = a.as_ref().and_then(|a| a.url.as_ref()) {
                    urls.push((name, u));
                }
            }
            for (field, url) in urls {
                check_public(field, url)?;
            }
        }
        Ok((plan, filter))
    }

    pub(crate) fn filter(&self, stores: &[StoreKey]) -> Result<Filter, Error> {
        let chosen = if self.filter.stores.is_empty() {
            stores.to_vec()
        } else {
            let mut chosen = Vec::new();
            for s in &self.filter.stores {
                let key = StoreKey::new(s)
                    .ok()
                    .filter(|k| stores.contains(k))
                    .ok_or_else(|| {
                        Error::invalid(
                            "filter.stores",
                            format!(
                                "unknown store {s:?} (the stores: {})",
                                stores
                                    .iter()
                                    .map(StoreKey::name)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    })?;
                chosen.push(key);
            }
            chosen.sort();
            chosen.dedup();
            chosen
        };
        Ok(Filter {
            stores: chosen,
            prefixes: self
                .filter
                .prefixes
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            actions: self.filter.actions.clone(),
        })
    }
}

/// The request field a webhook option comes from.
fn field_of(key: &str) -> String {
    match key {
        "url" => "endpoint.url",
        "method" => "endpoint.method",
        "headers" => "endpoint.headers",
        "actions" => "endpoint.actions",
        "success" => "delivery.success",
        "discard" => "delivery.discard",
        "envelope" => "content.envelope",
        "retry_schedule_ms" => "retry.schedule_ms",
        other => other,
    }
    .to_owned()
}

/// The host of an `http(s)` URL template's literal origin.
fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    Some(host_port.rsplit_once(':').map_or(host_port, |(h, _)| h))
}

/// Refuses a URL whose host is, or resolves to, a loopback, private,
/// link-local or unspecified address. Redirects are never followed, so a
/// public endpoint cannot send the node there either.
fn check_public(field: &str, url: &str) -> Result<(), Error> {
    let Some(host) = host_of(url) else {
        return Ok(()); // the URL check has already refused it
    };
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match (host, 80).to_socket_addrs() {
            Ok(a) => a.map(|a| a.ip()).collect(),
            Err(e) => {
                return Err(Error::invalid(
                    field,
                    format!("host {host:?} does not resolve: {e}"),
                ));
            }
        },
    };
    if let Some(ip) = addrs
        .iter()
        .find(|ip| !statestream_webhook::is_public_address(ip))
    {
        return Err(Error::invalid(
            field,
            format!("host {host:?} is a private address ({ip}): only public endpoints are allowed"),
        ));
    }
    Ok(())
}

/// `active`, `paused` or `disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Delivering.
    Active,
    /// Paused by its owner; its cursor holds what it has not delivered.
    Paused,
    /// Disabled after lasting failure (or a 410); `resume` continues.
    Disabled,
}

impl State {
    /// The name in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Paused => "paused",
            State::Disabled => "disabled",
        }
    }
}

/// Why and where a subscription was disabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disabled {
    /// The last failure.
    pub reason: String,
    /// The height it stopped at (not delivered).
    pub height: u64,
    /// When, RFC 3339.
    pub at: String,
}

/// A signing secret and, once rotated out, when it stops signing.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredSecret {
    pub(crate) secret: String,
    /// Unix seconds; none: current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires_at: Option<u64>,
}

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSecret")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The record in the store's `subscriptions` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) id: String,
    /// The credential that owns it; none: the operator (admin token).
    pub(crate) owner: Option<String>,
    pub(crate) spec: SubscriptionSpec,
    pub(crate) state: State,
    #[serde(default)]
    pub(crate) disabled: Option<Disabled>,
    pub(crate) secrets: Vec<StoredSecret>,
    /// RFC 3339.
    pub(crate) created_at: String,
    /// The first height it was to deliver.
    pub(crate) start_height: u64,
}
