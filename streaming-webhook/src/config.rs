//! The options of `type = "webhook"`, their checks, and the constructor
//! registered for the type.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use statestream_config::StreamerOptions;
use statestream_core::StreamerContext;
use ureq::http::{HeaderName, HeaderValue, Method, Uri};

use crate::error::Error;
use crate::redact;
use crate::sign::Secret;
use crate::streamer::WebhookStreamer;
use crate::template::{Escape, KeyPattern, Scope, Template, Vars};
use statestream_core::Action;

/// The streamer type name this crate registers.
pub const WEBHOOK_TYPE: &str = "webhook";

/// One request per change, or one per block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Batch {
    /// One request per change (default).
    #[default]
    Change,
    /// One request per block, its envelope listing the block's changes.
    Block,
}

/// What happens when every attempt of the retry schedule failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnExhausted {
    /// The block is not delivered: the node stops when
    /// `stop-node-on-error = true`, else the block is attempted again later
    /// from the start of the schedule (default).
    #[default]
    Halt,
    /// The request (headers and body) is written to a file in
    /// `dead_letter_dir` and delivery goes on with the next change.
    #[serde(alias = "dead_letter")]
    DeadLetter,
}

/// Overrides for one action (`[streamers.<name>.actions.create]`,
/// `.update`, `.delete`). Keys not given keep the streamer's own.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionOverride {
    /// The URL for changes of this action (templated). Default: `url`.
    #[serde(default)]
    pub url: Option<String>,
    /// The HTTP method for changes of this action. Default: `method`.
    #[serde(default)]
    pub method: Option<String>,
    /// Headers added to (or replacing, by name) the streamer's `headers`
    /// for changes of this action (values templated). Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// The per-action tables: `create`, `update` and `delete`; any other name is
/// an error.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actions {
    /// Changes that create their key. Default: no override.
    #[serde(default)]
    pub create: Option<ActionOverride>,
    /// Changes that set a key that existed. Default: no override.
    #[serde(default)]
    pub update: Option<ActionOverride>,
    /// Deletes. Default: no override.
    #[serde(default)]
    pub delete: Option<ActionOverride>,
}

/// The options of a `[streamers.<name>]` table with `type = "webhook"` (the
/// common keys `type`, `keys`, `delivery`, `queue` and `stop-node-on-error`
/// are read by `statestream-config`). Keys may be written with hyphens or
/// underscores. See `docs/webhook.md`.
///
/// Templates (`url`, `headers` values, `data` strings) may use `{store}`,
/// `{key}`, `{height}`, `{action}` and the wildcards of `key_pattern`;
/// `{{` and `}}` are literal braces.
///
/// ```toml
/// [streamers.hook]
/// type = "webhook"
/// keys = ["bank"]
/// url = "https://example.com/hooks/{store}"
/// key_pattern = "balance/{id}"
/// data = { service = "bank", id = "{id}" }
/// secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
///
/// [streamers.hook.actions.delete]
/// method = "DELETE"
/// url = "https://example.com/hooks/{store}/{key}"
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoint, `http://` or `https://` (templated; values are
    /// percent-encoded). Required.
    pub url: String,
    /// The HTTP method: `POST`, `PUT`, `PATCH` or `DELETE` (any case).
    /// Default `"POST"`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Headers sent with every request (values templated). The
    /// `webhook-*` headers, `host`, `content-length` and
    /// `transfer-encoding` are the streamer's. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Only keys matching this pattern are sent; its `{name}` wildcards
    /// (each one path segment: one or more characters other than `/`)
    /// become template variables. Default: every key.
    #[serde(default)]
    pub key_pattern: Option<String>,
    /// `"change"`: one request per change; `"block"`: one per block.
    /// Default `"change"`.
    #[serde(default)]
    pub batch: Batch,
    /// The body is a JSON envelope; `false`: the body is the raw value
    /// (empty for a delete). Default `true`.
    #[serde(default = "yes")]
    pub envelope: bool,
    /// The envelope (or with `envelope = false`, the body) carries the
    /// value. Default `true`.
    #[serde(default = "yes")]
    pub document: bool,
    /// Extra fields, templated, sent as the envelope's `data` object.
    /// Needs `envelope = true`. Default: none.
    #[serde(default)]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
    /// A signing secret, `whsec_<base64>`. Default: none.
    #[serde(default)]
    pub secret: Option<String>,
    /// Several signing secrets (one signature each, for key rotation);
    /// not together with `secret`. Default: none. Without any secret no
    /// `webhook-signature` header is sent.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Status codes that mean delivered. Default `[]`: any 2xx.
    #[serde(default)]
    pub success: Vec<i64>,
    /// Status codes that mean "drop this one and go on" (logged).
    /// Default `[]`.
    #[serde(default)]
    pub discard: Vec<i64>,
    /// Delay before each attempt, in milliseconds (the first is usually
    /// 0): its length is the number of attempts. Each delay gets up to
    /// ±10% jitter; a `Retry-After` on 429 or 503 lengthens the next one.
    /// Default `[0, 5000, 300000, 1800000, 7200000, 18000000, 36000000]`
    /// (0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h).
    #[serde(default = "default_schedule")]
    pub retry_schedule_ms: Vec<u64>,
    /// Timeout of one attempt, connection to end of the response headers,
    /// in milliseconds. Default 15000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// `"halt"` or `"dead-letter"`. Default `"halt"`.
    #[serde(default)]
    pub on_exhausted: OnExhausted,
    /// Where dead letters are written (one file per request); a relative
    /// path is under the node's home. Default `"data/webhook-dead"`.
    #[serde(default = "default_dead_letter_dir")]
    pub dead_letter_dir: PathBuf,
    /// Per-action overrides. Default: none.
    #[serde(default)]
    pub actions: Actions,
}

impl std::fmt::Debug for ActionOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionOverride")
            .field("url", &self.url.as_deref().map(redact::url))
            .field("method", &self.method)
            .field("headers", &redacted_headers(&self.headers))
            .finish()
    }
}

impl std::fmt::Debug for Actions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actions")
            .field("create", &self.create)
            .field("update", &self.update)
            .field("delete", &self.delete)
            .finish()
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets or header values (they often hold tokens).
        f.debug_struct("WebhookConfig")
            .field("url", &redact::url(&self.url))
            .field("method", &self.method)
            .field("headers", &redacted_headers(&self.headers))
            .field("key_pattern", &self.key_pattern)
            .field("batch", &self.batch)
            .field("envelope", &self.envelope)
            .field("document", &self.document)
            .field("data", &self.data)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secrets", &vec!["<redacted>"; self.secrets.len()])
            .field("success", &self.success)
            .field("discard", &self.discard)
            .field("retry_schedule_ms", &self.retry_schedule_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("on_exhausted", &self.on_exhausted)
            .field("dead_letter_dir", &self.dead_letter_dir)
            .field("actions", &self.actions)
            .finish()
    }
}

fn redacted_headers(h: &BTreeMap<String, String>) -> Vec<&str> {
    h.keys().map(String::as_str).collect()
}

fn default_method() -> String {
    "POST".to_string()
}

fn yes() -> bool {
    true
}

/// 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h: Svix's schedule, about a day
/// and a half in all.
fn default_schedule() -> Vec<u64> {
    vec![
        0, 5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000,
    ]
}

fn default_timeout_ms() -> u64 {
    15_000
}

fn default_dead_letter_dir() -> PathBuf {
    PathBuf::from("data/webhook-dead")
}

/// Headers the streamer writes itself.
const RESERVED_HEADERS: [&str; 6] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "host",
    "content-length",
    "transfer-encoding",
];

/// The methods a webhook may use: the ones that carry a body.
const METHODS: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

/// The longest schedule entry and timeout accepted: a day.
const MAX_DELAY_MS: u64 = 86_400_000;

impl Default for WebhookConfig {
    /// The defaults, with an empty (invalid) `url`.
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            method: default_method(),
            headers: BTreeMap::new(),
            key_pattern: None,
            batch: Batch::Change,
            envelope: true,
            document: true,
            data: None,
            secret: None,
            secrets: Vec::new(),
            success: Vec::new(),
            discard: Vec::new(),
            retry_schedule_ms: default_schedule(),
            timeout_ms: default_timeout_ms(),
            on_exhausted: OnExhausted::Halt,
            dead_letter_dir: default_dead_letter_dir(),
            actions: Actions::default(),
        }
    }
}

/// Where and how one action's changes are sent.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) url: Template,
    pub(crate) method: Method,
    /// Lowercase names, in name order.
    pub(crate) headers: Vec<(HeaderName, Template)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL and header templates may hold credentials: names only.
        f.debug_struct("Endpoint")
            .field("method", &self.method)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// A `data` value with its strings parsed as templates.
#[derive(Debug, Clone)]
pub(crate) enum DataTemplate {
    Text(Template),
    List(Vec<DataTemplate>),
    Table(Vec<(String, DataTemplate)>),
    Plain(serde_json::Value),
}

impl DataTemplate {
    fn parse(value: &serde_json::Value, scope: Scope<'_>) -> Result<DataTemplate, String> {
        Ok(match value {
            serde_json::Value::String(s) => DataTemplate::Text(Template::parse(s, scope)?),
            serde_json::Value::Array(a) => DataTemplate::List(
                a.iter()
                    .map(|v| DataTemplate::parse(v, scope))
                    .collect::<Result<_, _>>()?,
            ),
            serde_json::Value::Object(o) => DataTemplate::Table(
                o.iter()
                    .map(|(k, v)| Ok((k.clone(), DataTemplate::parse(v, scope)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => DataTemplate::Plain(other.clone()),
        })
    }

    pub(crate) fn render(&self, vars: &Vars<'_>) -> serde_json::Value {
        match self {
            DataTemplate::Text(t) => serde_json::Value::String(t.render(vars, Escape::None)),
            DataTemplate::List(l) => l.iter().map(|d| d.render(vars)).collect(),
            DataTemplate::Table(t) => t
                .iter()
                .map(|(k, d)| (k.clone(), d.render(vars)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
            DataTemplate::Plain(v) => v.clone(),
        }
    }
}

/// The checked options, ready to send with.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// `webhook-id` prefix: the streamer's name.
    pub(crate) id_prefix: String,
    /// Indexed by [`action_index`].
    pub(crate) endpoints: [Endpoint; 3],
    pub(crate) key_pattern: Option<KeyPattern>,
    pub(crate) batch: Batch,
    pub(crate) envelope: bool,
    pub(crate) document: bool,
    pub(crate) data: Option<DataTemplate>,
    pub(crate) secrets: Vec<Secret>,
    pub(crate) success: Vec<u16>,
    pub(crate) discard: Vec<u16>,
    pub(crate) schedule: Vec<Duration>,
    pub(crate) timeout: Duration,
    pub(crate) on_exhausted: OnExhausted,
    /// Resolved against the node's home.
    pub(crate) dead_letter_dir: PathBuf,
}

pub(crate) fn action_index(action: Action) -> usize {
    match action {
        Action::Create => 0,
        Action::Update => 1,
        Action::Delete => 2,
    }
}

/// The `webhook-id` prefix: the streamer's name with every character but
/// `[A-Za-z0-9_-]` replaced by `_` (Standard Webhooks ids contain no `.`).
pub(crate) fn id_prefix(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Example values a template is tried with at build time.
fn sample_vars<'a>(wild: &'a [String]) -> Vars<'a> {
    Vars {
        store: "store",
        key: "key",
        height: 1,
        action: "update",
        wild,
    }
}

/// A URL template: it parses, its scheme and host are literal text, and
/// it forms a valid URL. Errors show the URL redacted.
fn check_url(text: &str, scope: Scope<'_>) -> Result<Template, String> {
    let shown = redact::url(text);
    let t = Template::parse_shown(text, &shown, scope)?;
    t.check_fixed_origin(&shown)?;
    let wild: Vec<String> = scope
        .wildcards
        .map(|w| w.iter().map(|_| "x".to_string()).collect())
        .unwrap_or_default();
    let sample = t.render(&sample_vars(&wild), Escape::Url);
    check_uri(&sample).map_err(|e| format!("{shown:?} is not a valid URL: {e}"))?;
    Ok(t)
}

/// An absolute `http` or `https` URL with a host and no `.` or `..` path
/// segment (which would send the request to another path).
pub(crate) fn check_uri(text: &str) -> Result<Uri, String> {
    let (start, end) = crate::template::path_range(text);
    if text[start..end]
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(
            "its path has a \".\" or \"..\" segment, which would send the request \
                    to another path"
                .into(),
        );
    }
    let uri: Uri = text.parse().map_err(|e| format!("{e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "scheme {other:?}: only http and https are supported"
            ));
        }
        None => return Err("it has no scheme (write http:// or https://)".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("it has no host".into());
    }
    Ok(uri)
}

fn check_method(text: &str) -> Result<Method, String> {
    let upper = text.to_ascii_uppercase();
    if !METHODS.contains(&upper.as_str()) {
        return Err(format!(
            "method {text:?} is not one of {} (a webhook carries a body)",
            METHODS.join(", ")
        ));
    }
    Method::from_bytes(upper.as_bytes()).map_err(|e| e.to_string())
}

fn check_headers(
    base: &[(HeaderName, Template)],
    extra: &BTreeMap<String, String>,
    scope: Scope<'_>,
) -> Result<Vec<(HeaderName, Template)>, String> {
    let mut out: BTreeMap<String, (HeaderName, Template)> = base
        .iter()
        .map(|(n, t)| (n.as_str().to_string(), (n.clone(), t.clone())))
        .collect();
    for (name, value) in extra {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a valid header name"))?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(format!(
                "header {name:?} is set by the streamer and cannot be configured"
            ));
        }
        let shown = redact::header(name, value);
        let t = Template::parse_shown(value, &shown, scope)
            .map_err(|e| format!("header {name:?}: {e}"))?;
        let wild: Vec<String> = scope
            .wildcards
            .map(|w| w.iter().map(|_| "x".to_string()).collect())
            .unwrap_or_default();
        let sample = t.render(&sample_vars(&wild), Escape::Header);
        HeaderValue::from_bytes(sample.as_bytes())
            .map_err(|_| format!("header {name:?}: {shown:?} is not a valid header value"))?;
        out.insert(header.as_str().to_string(), (header, t));
    }
    Ok(out.into_values().collect())
}

fn check_codes(codes: &[i64]) -> Result<Vec<u16>, String> {
    codes
        .iter()
        .map(|&c| match u16::try_from(c) {
            Ok(c) if (100..=599).contains(&c) => Ok(c),
            _ => Err(format!("{c} is not an HTTP status code (100-599)")),
        })
        .collect()
}

impl WebhookConfig {
    /// Checks the options; `Err((key, message))` names the bad key.
    pub(crate) fn plan(
        &self,
        name: &str,
        home: &std::path::Path,
    ) -> Result<Plan, (&'static str, String)> {
        let key_pattern = match &self.key_pattern {
            Some(p) => Some(KeyPattern::parse(p).map_err(|m| ("key_pattern", m))?),
            None => None,
        };
        let per_change = self.batch == Batch::Change;
        let scope = Scope {
            per_change,
            wildcards: key_pattern.as_ref().map(KeyPattern::names),
        };
        let change_scope = Scope {
            per_change: true,
            ..scope
        };

        let url = check_url(&self.url, scope).map_err(|m| ("url", m))?;
        let method = check_method(&self.method).map_err(|m| ("method", m))?;
        let headers = check_headers(&[], &self.headers, scope).map_err(|m| ("headers", m))?;
        let base = Endpoint {
            url,
            method,
            headers,
        };
        let overrides = [
            ("create", &self.actions.create),
            ("update", &self.actions.update),
            ("delete", &self.actions.delete),
        ];
        if !per_change && overrides.iter().any(|(_, o)| o.is_some()) {
            return Err((
                "actions",
                "per-action tables need batch = \"change\" (a block request carries every \
                 action)"
                    .into(),
            ));
        }
        let mut endpoints = [base.clone(), base.clone(), base.clone()];
        for (i, (action, o)) in overrides.iter().enumerate() {
            let Some(o) = o else { continue };
            let at = |m: String| ("actions", format!("[actions.{action}]: {m}"));
            let e = &mut endpoints[i];
            if let Some(u) = &o.url {
                e.url = check_url(u, scope).map_err(|m| at(format!("url: {m}")))?;
            }
            if let Some(m) = &o.method {
                e.method = check_method(m).map_err(|m| at(format!("method: {m}")))?;
            }
            e.headers = check_headers(&base.headers, &o.headers, scope).map_err(at)?;
        }

        if self.data.is_some() && !self.envelope {
            return Err((
                "data",
                "data is sent in the envelope: it needs envelope = true".into(),
            ));
        }
        if !self.envelope && !per_change {
            return Err((
                "envelope",
                "batch = \"block\" sends a JSON envelope: it needs envelope = true".into(),
            ));
        }
        let data = match &self.data {
            Some(map) => Some(
                DataTemplate::parse(&serde_json::Value::Object(map.clone()), change_scope)
                    .map_err(|m| ("data", m))?,
            ),
            None => None,
        };

        if self.secret.is_some() && !self.secrets.is_empty() {
            return Err(("secrets", "give either secret or secrets, not both".into()));
        }
        let secrets = match &self.secret {
            Some(s) => vec![Secret::parse(s).map_err(|m| ("secret", m))?],
            None => self
                .secrets
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    Secret::parse(s).map_err(|m| ("secrets", format!("secret {}: {m}", i + 1)))
                })
                .collect::<Result<_, _>>()?,
        };

        let success = check_codes(&self.success).map_err(|m| ("success", m))?;
        let discard = check_codes(&self.discard).map_err(|m| ("discard", m))?;
        if let Some(c) = success.iter().find(|c| discard.contains(c)) {
            return Err(("discard", format!("{c} is also in success")));
        }

        if self.retry_schedule_ms.is_empty() {
            return Err((
                "retry_schedule_ms",
                "the schedule is empty: give at least one delay (e.g. [0])".into(),
            ));
        }
        if let Some(d) = self.retry_schedule_ms.iter().find(|&&d| d > MAX_DELAY_MS) {
            return Err((
                "retry_schedule_ms",
                format!("{d} ms is longer than a day ({MAX_DELAY_MS} ms)"),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_DELAY_MS {
            return Err((
                "timeout_ms",
                format!("must be between 1 and {MAX_DELAY_MS}"),
            ));
        }

        Ok(Plan {
            id_prefix: id_prefix(name),
            endpoints,
            key_pattern,
            batch: self.batch,
            envelope: self.envelope,
            document: self.document,
            data,
            secrets,
            success,
            discard,
            schedule: self
                .retry_schedule_ms
                .iter()
                .map(|&ms| Duration::from_millis(ms))
                .collect(),
            timeout: Duration::from_millis(self.timeout_ms),
            on_exhausted: self.on_exhausted,
            dead_letter_dir: home.join(&self.dead_letter_dir),
        })
    }

    /// Checks the options as [`build`](WebhookConfig::build) does, naming
    /// the bad key of `options` (the table they were parsed from), without
    /// sending anything or creating the dead-letter directory (only that it
    /// is a directory when it exists).
    pub fn validate(
        &self,
        ctx: &StreamerContext<'_>,
        options: &StreamerOptions,
    ) -> Result<(), Error> {
        let plan = self
            .plan(ctx.name, ctx.home)
            .map_err(|(key, message)| options.error(key, message))?;
        if plan.on_exhausted == OnExhausted::DeadLetter
            && plan.dead_letter_dir.exists()
            && !plan.dead_letter_dir.is_dir()
        {
            return Err(options
                .error(
                    "dead_letter_dir",
                    format!("{} is not a directory", plan.dead_letter_dir.display()),
                )
                .into());
        }
        Ok(())
    }

    /// Checks the options and builds the streamer. Nothing is sent yet;
    /// with `on_exhausted = "dead-letter"` the dead-letter directory is
    /// created, so a directory that cannot be written stops the node at
    /// start rather than at the first failure.
    /// `options` is the table it was parsed from, for errors that name it.
    /// Its retry waits end when the node shuts down (`ctx.shutdown`): the
    /// block is delivered again at the next start.
    pub fn build(
        &self,
        ctx: &StreamerContext<'_>,
        options: &StreamerOptions,
    ) -> Result<WebhookStreamer, Error> {
        let plan = self
            .plan(ctx.name, ctx.home)
            .map_err(|(key, message)| options.error(key, message))?;
        if plan.on_exhausted == OnExhausted::DeadLetter {
            crate::dead_letter::create_dir(&plan.dead_letter_dir).map_err(|source| {
                Error::DeadLetterDir {
                    path: plan.dead_letter_dir.clone(),
                    source,
                }
            })?;
        }
        Ok(WebhookStreamer::new(ctx.name, plan, ctx.shutdown.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statestream_config::StreamerOptions;

    fn parse(toml_text: &str) -> Result<WebhookConfig, String> {
        let table: toml::Table = toml_text.parse().map_err(|e| format!("{e}"))?;
        StreamerOptions::from_table(table)
            .with_name("hook")
            .parse::<WebhookConfig>()
            .map_err(|e| e.to_string())
    }

    fn plan(toml_text: &str) -> Result<Plan, String> {
        let config = parse(toml_text)?;
        config
            .plan("hook", std::path::Path::new("/home"))
            .map_err(|(k, m)| format!("{k}: {m}"))
    }

    fn err(toml_text: &str) -> String {
        match plan(toml_text) {
            Ok(_) => panic!("{toml_text} should be refused"),
            Err(e) => e,
        }
    }

    #[test]
    fn config_issue_example_parses() {
        let p = plan(
            r#"
url = "https://example.com/hooks/{store}"
method = "POST"
headers = { Authorization = "Bearer abc" }
key_pattern = "balance/{id}"
batch = "change"
envelope = true
document = true
data = { service = "bank", id = "{id}" }
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2VjcmV0"]
success = []
discard = []
retry_schedule_ms = [0, 5000, 300000, 1800000, 7200000, 18000000, 36000000]
timeout_ms = 15000
on_exhausted = "dead-letter"
dead_letter_dir = "data/webhook-dead"

[actions.delete]
method = "DELETE"
url = "https://example.com/hooks/{store}/{key}"
"#,
        )
        .unwrap();
        assert_eq!(p.endpoints[2].method, Method::DELETE);
        assert_eq!(p.endpoints[1].method, Method::POST);
        assert_eq!(p.endpoints[0].headers.len(), 1);
        assert_eq!(p.endpoints[0].headers[0].0.as_str(), "authorization");
        assert_eq!(p.secrets.len(), 2);
        assert_eq!(p.on_exhausted, OnExhausted::DeadLetter);
        assert_eq!(p.dead_letter_dir, PathBuf::from("/home/data/webhook-dead"));
        assert!(
            p.endpoints[1]
                .url
                .render(&sample_vars(&[]), Escape::Url)
                .ends_with("/hooks/store")
        );
    }

    #[test]
    fn config_defaults_are_documented() {
        let c = parse("url = \"http://127.0.0.1:9/\"").unwrap();
        let d = WebhookConfig {
            url: "http://127.0.0.1:9/".into(),
            ..WebhookConfig::default()
        };
        assert_eq!(c, d);
        assert_eq!(c.timeout_ms, 15_000);
        assert_eq!(c.retry_schedule_ms.len(), 7);
        let p = plan("url = \"http://127.0.0.1:9/\"").unwrap();
        assert!(p.success.is_empty());
        assert!(p.endpoints.iter().all(|e| e.method == Method::POST));
    }

    #[test]
    fn config_errors_name_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("url = \"not a url\"", "url: "),
            ("url = \"ftp://x/\"", "only http and https"),
            ("url = \"/relative\"", "no scheme"),
            (
                "url = \"http://x/{nope}\"",
                "unknown template variable {nope}",
            ),
            ("url = \"http://x/{id}\"", "key_pattern is not set"),
            (
                "url = \"http://x/\"\n[actions.upsert]\nmethod = \"PUT\"",
                "unknown key `upsert`",
            ),
            ("url = \"http://x/\"\nsecret = \"abc\"", "whsec_"),
            (
                "url = \"http://x/\"\nsecret = \"whsec_a\"\nsecrets = [\"whsec_b\"]",
                "not both",
            ),
            (
                "url = \"http://x/\"\nsuccess = [200, 600]",
                "600 is not an HTTP status code",
            ),
            (
                "url = \"http://x/\"\ndiscard = [99]",
                "99 is not an HTTP status code",
            ),
            (
                "url = \"http://x/\"\nsuccess = [200]\ndiscard = [200]",
                "also in success",
            ),
            (
                "url = \"http://x/\"\nretry_schedule_ms = []",
                "schedule is empty",
            ),
            ("url = \"http://x/\"\nmethod = \"GET\"", "is not one of"),
            (
                "url = \"http://x/\"\nbatch = \"block\"\n[actions.delete]\nmethod = \"PUT\"",
                "per-action",
            ),
            (
                "url = \"http://x/{key}\"\nbatch = \"block\"",
                "batch = \"block\"",
            ),
            (
                "url = \"http://x/\"\nenvelope = false\ndata = { a = 1 }",
                "needs envelope = true",
            ),
            (
                "url = \"http://x/\"\nheaders = { webhook-id = \"x\" }",
                "set by the streamer",
            ),
            (
                "url = \"http://x/\"\ndata = { a = \"{zz}\" }",
                "unknown template variable {zz}",
            ),
            ("url = \"http://x/\"\ntimeout_ms = 0", "timeout_ms"),
            (
                "url = \"http://x/\"\non_exhausted = \"drop\"",
                "unknown variant",
            ),
            ("url = \"http://x/\"\nbogus = 1", "unknown key `bogus`"),
            ("method = \"POST\"", "missing key `url`"),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn config_action_overrides_merge_headers() {
        let p = plan(
            r#"
url = "http://x/{store}"
headers = { a = "1", b = "2" }
[actions.create]
headers = { b = "3", c = "{key}" }
"#,
        )
        .unwrap();
        let names = |e: &Endpoint| {
            e.headers
                .iter()
                .map(|(n, t)| format!("{}={}", n, t.render(&sample_vars(&[]), Escape::Header)))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&p.endpoints[0]), ["a=1", "b=3", "c=key"]);
        assert_eq!(names(&p.endpoints[1]), ["a=1", "b=2"]);
    }

    #[test]
    fn config_debug_hides_secrets() {
        let c = parse("url = \"http://u:pw@x/T0/?apikey=k\"\nsecret = \"whsec_c2VjcmV0\"\nheaders = { Authorization = \"Bearer abc\" }\n[actions.delete]\nurl = \"http://u:pw@x/\"").unwrap();
        let s = format!("{c:?}");
        for secret in ["c2VjcmV0", "Bearer", "pw", "T0", "=k"] {
            assert!(!s.contains(secret), "{secret}: {s}");
        }
    }

    #[test]
    fn config_id_prefix_has_no_dots() {
        assert_eq!(id_prefix("hook"), "hook");
        assert_eq!(id_prefix("a.b c"), "a_b_c");
    }
}
