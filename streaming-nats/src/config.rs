//! The options of `type = "nats"`, which build the streamer.

use std::time::Duration;

use serde::Deserialize;
use statestream_config::{ConfigError, StreamerOptions};
use statestream_core::StreamerContext;

use crate::client::ConnectOptions;
use crate::streamer::NatsStreamer;

/// The streamer type name this crate registers.
pub const NATS_TYPE: &str = "nats";

/// The options of a `[streamers.<name>]` table with `type = "nats"` (the
/// common keys `type`, `keys`, `delivery`, `queue` and `stop-node-on-error`
/// are read by `statestream-config`). Keys may be written with hyphens or
/// underscores.
///
/// ```toml
/// [streamers.nats]
/// type = "nats"
/// keys = ["*"]
/// url = "nats://127.0.0.1:4222"
/// stream = "statestream"
/// subject = "statestream"
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsStreamerConfig {
    /// The server: `nats://host:port` (`host:port` and `host` work too;
    /// the port defaults to 4222). Several servers of a cluster may be
    /// listed, separated by commas: they are tried in order on every
    /// (re)connection. Credentials may be written in the URL
    /// (`nats://user:password@host`, `nats://token@host`). No TLS.
    /// Default `"nats://127.0.0.1:4222"`.
    #[serde(default = "default_url")]
    pub url: String,
    /// The JetStream stream that stores the blocks. Default
    /// `"statestream"`.
    #[serde(default = "default_name")]
    pub stream: String,
    /// Blocks are published on `<subject>.blocks`. Default
    /// `"statestream"`.
    #[serde(default = "default_name")]
    pub subject: String,
    /// Token authentication. Default: none.
    #[serde(default)]
    pub token: Option<String>,
    /// User name for user/password authentication. Default: none.
    #[serde(default)]
    pub user: Option<String>,
    /// Password of `user`. Default: none.
    #[serde(default)]
    pub password: Option<String>,
    /// Timeout of the TCP connection and the handshake, in milliseconds.
    /// Default 5000.
    #[serde(default = "default_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Timeout of each JetStream request, including the wait for a
    /// block's publish acknowledgement, in milliseconds. Default 5000.
    #[serde(default = "default_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Create the stream when it does not exist (file storage, subject
    /// `<subject>.blocks`). With `false`, a missing stream is a delivery
    /// error. Default `true`.
    #[serde(default = "yes")]
    pub create_stream: bool,
    /// Deduplication window of a stream created by the streamer, in
    /// milliseconds: a block published again within it (same
    /// `Nats-Msg-Id`) is not stored twice. Default 120000 (2 minutes).
    #[serde(default = "default_duplicate_window_ms")]
    pub duplicate_window_ms: u64,
    /// Replicas of a stream created by the streamer (in a JetStream
    /// cluster). Default 1.
    #[serde(default = "one")]
    pub replicas: u32,
}

impl std::fmt::Debug for NatsStreamerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("NatsStreamerConfig")
            .field("url", &crate::client::redact_url(&self.url))
            .field("stream", &self.stream)
            .field("subject", &self.subject)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("create_stream", &self.create_stream)
            .field("duplicate_window_ms", &self.duplicate_window_ms)
            .field("replicas", &self.replicas)
            .finish()
    }
}

fn default_url() -> String {
    "nats://127.0.0.1:4222".to_string()
}

fn default_name() -> String {
    "statestream".to_string()
}

fn default_timeout_ms() -> u64 {
    5000
}

fn default_duplicate_window_ms() -> u64 {
    120_000
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

impl Default for NatsStreamerConfig {
    fn default() -> Self {
        NatsStreamerConfig {
            url: default_url(),
            stream: default_name(),
            subject: default_name(),
            token: None,
            user: None,
            password: None,
            connect_timeout_ms: default_timeout_ms(),
            request_timeout_ms: default_timeout_ms(),
            create_stream: true,
            duplicate_window_ms: default_duplicate_window_ms(),
            replicas: 1,
        }
    }
}

impl NatsStreamerConfig {
    /// The subject blocks are published on: `<subject>.blocks`.
    pub fn blocks_subject(&self) -> String {
        blocks_subject(&self.subject)
    }

    /// The connection options these settings describe.
    pub fn connect_options(&self) -> ConnectOptions {
        let mut o = ConnectOptions::new(&self.url);
        o.token = self.token.clone();
        o.user = self.user.clone();
        o.password = self.password.clone();
        o.connect_timeout = Duration::from_millis(self.connect_timeout_ms);
        o.request_timeout = Duration::from_millis(self.request_timeout_ms);
        o
    }

    /// Checks the options; `Err((key, message))` names the bad key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Err(e) = self.connect_options().validate() {
            return Err(("url", e.to_string()));
        }
        check_stream_name(&self.stream).map_err(|m| ("stream", m))?;
        check_subject(&self.subject).map_err(|m| ("subject", m))?;
        if self.token.is_some() && (self.user.is_some() || self.password.is_some()) {
            return Err((
                "token",
                "give either token or user and password, not both".into(),
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            let key = if self.user.is_some() {
                "user"
            } else {
                "password"
            };
            return Err((key, "user and password go together".into()));
        }
        for (key, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            if v == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err(("replicas", "must be between 1 and 5".into()));
        }
        Ok(())
    }

    /// Checks the options and builds the streamer. Nothing connects yet:
    /// the first block connects, so a node starts even while the server is
    /// down (its blocks wait in the change log).
    /// `options` is the table it was parsed from, for errors that name it.
    pub fn build(
        &self,
        ctx: &StreamerContext<'_>,
        options: &StreamerOptions,
    ) -> Result<NatsStreamer, ConfigError> {
        self.check()
            .map_err(|(key, message)| options.error(key, message))?;
        Ok(NatsStreamer::new(ctx.name, self.clone()))
    }
}

/// `<subject>.blocks`.
pub(crate) fn blocks_subject(subject: &str) -> String {
    format!("{subject}.blocks")
}

/// A JetStream stream name: no whitespace, `.`, `*`, `>`, path separators.
fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the stream name is empty".into());
    }
    if name.len() > 255 {
        return Err("the stream name is longer than 255 bytes".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(*c))
    {
        return Err(format!("stream name {name:?} may not contain {c:?}"));
    }
    Ok(())
}

/// A subject prefix: dot-separated non-empty tokens, no wildcards or
/// whitespace.
fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("the subject is empty".into());
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return Err(format!("subject {subject:?} has an empty token"));
        }
        if token == "*" || token == ">" || token.contains(['*', '>']) {
            return Err(format!("subject {subject:?} may not contain wildcards"));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("subject {subject:?} may not contain whitespace"));
        }
    }
    if subject.starts_with('$') {
        return Err(format!(
            "subject {subject:?} may not start with '$' (reserved by NATS)"
        ));
    }
    Ok(())
}
