//! The options of `type = "nats"`, which build the streamer.

use std::time::Duration;

use serde::Deserialize;
use statestream_config::{ConfigError, StreamerOptions};
use statestream_core::StreamerContext;

use std::path::Path;

use crate::conn::{Settings, resolve};
use crate::streamer::NatsStreamer;
use crate::url::{parse_servers, redact_url};

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
    /// The server: `nats://host:port` or `tls://host:port` (`host:port`
    /// and `host` work too; the port defaults to 4222). Several servers of
    /// a cluster may be listed, separated by commas: they are tried in
    /// order, and the servers the cluster announces are added for
    /// reconnections. Credentials may be written in the URL
    /// (`nats://user:password@host`, `nats://token@host`). A `tls://`
    /// address makes TLS mandatory. Default `"nats://127.0.0.1:4222"`.
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
    /// A NATS credentials file (`.creds`: the user JWT and its nkey seed,
    /// as `nsc` writes it). Relative paths are relative to the node's
    /// home. Default: none.
    #[serde(default)]
    pub creds_file: Option<String>,
    /// A file holding an nkey seed (a line starting with `SU`): nkey
    /// authentication. Relative to the node's home. Default: none.
    #[serde(default)]
    pub nkey_seed_file: Option<String>,
    /// PEM file of the certificate authorities that verify the server's
    /// certificate, or of the server's own certificate, accepted as pinned
    /// (the exact certificate, within its validity period, naming the
    /// host: the one-line self-signed certificate). Without it, the
    /// system's certificate store. Relative to the node's home. Default:
    /// none.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// PEM client certificate for TLS client authentication (with
    /// `tls_key_file`). Relative to the node's home. Default: none.
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    /// PEM private key of `tls_cert_file`. Default: none.
    #[serde(default)]
    pub tls_key_file: Option<String>,
    /// Refuse a connection that is not TLS, whatever the server offers.
    /// Default `false` (TLS when the server requires it or the address is
    /// `tls://`).
    #[serde(default)]
    pub tls_required: bool,
    /// Timeout of the TCP connection and the handshake, in milliseconds;
    /// also how long a block waits for a lost connection to come back
    /// before its delivery fails. Default 5000.
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
            .field("url", &redact_url(&self.url))
            .field("stream", &self.stream)
            .field("subject", &self.subject)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("creds_file", &self.creds_file)
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_required", &self.tls_required)
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
            creds_file: None,
            nkey_seed_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
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

    /// The connection settings, paths resolved against `home`.
    pub(crate) fn settings(&self, home: Option<&Path>) -> crate::Result<Settings> {
        let path = |p: &Option<String>| p.as_deref().map(|p| resolve(home, p));
        Ok(Settings {
            url: self.url.clone(),
            servers: parse_servers(&self.url)?,
            token: self.token.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            creds_file: path(&self.creds_file),
            nkey_seed_file: path(&self.nkey_seed_file),
            tls_ca_file: path(&self.tls_ca_file),
            tls_cert_file: path(&self.tls_cert_file),
            tls_key_file: path(&self.tls_key_file),
            tls_required: self.tls_required,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            name: "statestream".to_string(),
        })
    }

    /// Checks the options; `Err((key, message))` names the bad key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Err(e) = parse_servers(&self.url) {
            return Err(("url", e.to_string()));
        }
        for (key, value) in [
            ("creds_file", &self.creds_file),
            ("nkey_seed_file", &self.nkey_seed_file),
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err((key, "the path is empty".into()));
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            let key = if self.tls_cert_file.is_some() {
                "tls_cert_file"
            } else {
                "tls_key_file"
            };
            return Err((key, "tls_cert_file and tls_key_file go together".into()));
        }
        let methods = [
            ("creds_file", self.creds_file.is_some()),
            ("nkey_seed_file", self.nkey_seed_file.is_some()),
            ("token", self.token.is_some()),
            ("user", self.user.is_some() || self.password.is_some()),
        ];
        let given: Vec<&str> = methods.iter().filter(|m| m.1).map(|m| m.0).collect();
        if given.len() > 1 && given != ["token", "user"] {
            return Err((
                given[0],
                format!(
                    "give one authentication method, not {}",
                    given.join(" and ")
                ),
            ));
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

    /// Checks the options as [`build`](NatsStreamerConfig::build) does,
    /// naming the bad key of `options` (the table they were parsed from).
    /// Connects to nothing and reads no file.
    pub fn validate(&self, options: &StreamerOptions) -> Result<(), ConfigError> {
        self.check()
            .map_err(|(key, message)| options.error(key, message))
    }

    /// Where this streamer writes, one key per server of `url`: its
    /// stream, and its subject, on that server (host and port as written,
    /// credentials left out). Two streamers sharing a key would publish into
    /// one stream (or one subject) of one server. Empty when `url` does not
    /// parse ([`check`](NatsStreamerConfig::check) reports that).
    pub fn destinations(&self) -> Vec<String> {
        let Ok(servers) = parse_servers(&self.url) else {
            return Vec::new();
        };
        servers
            .iter()
            .flat_map(|server| {
                let at = if server.host.contains(':') {
                    format!("[{}]:{}", server.host.to_ascii_lowercase(), server.port)
                } else {
                    format!("{}:{}", server.host.to_ascii_lowercase(), server.port)
                };
                [
                    format!("NATS stream {:?} on {at}", self.stream),
                    format!("NATS subject {:?} on {at}", self.blocks_subject()),
                ]
            })
            .collect()
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
        self.validate(options)?;
        Ok(NatsStreamer::with_context(
            ctx.name,
            self.clone(),
            Some(ctx.home),
            ctx.shutdown.clone(),
        ))
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

#[cfg(test)]
mod tests {
    use super::NatsStreamerConfig;

    fn config(url: &str, stream: &str, subject: &str) -> NatsStreamerConfig {
        NatsStreamerConfig {
            url: url.to_string(),
            stream: stream.to_string(),
            subject: subject.to_string(),
            ..NatsStreamerConfig::default()
        }
    }

    fn shares(a: &NatsStreamerConfig, b: &NatsStreamerConfig) -> bool {
        let b = b.destinations();
        a.destinations().iter().any(|d| b.contains(d))
    }

    #[test]
    fn destinations_are_stream_and_subject_per_server() {
        let base = config("nats://127.0.0.1:4222", "s", "x");
        assert_eq!(
            base.destinations(),
            [
                "NATS stream \"s\" on 127.0.0.1:4222",
                "NATS subject \"x.blocks\" on 127.0.0.1:4222"
            ]
        );
        // Credentials, scheme and the other servers of a cluster do not
        // make another place.
        assert!(shares(
            &base,
            &config("tls://u:p@127.0.0.1:4222,nats://b:4222", "s", "x")
        ));
        // One stream on one server with another subject, or one subject
        // into another stream: still one place.
        assert!(shares(&base, &config("127.0.0.1", "s", "y")));
        assert!(shares(&base, &config("127.0.0.1", "t", "x")));
        // Another server, or another stream and subject.
        assert!(!shares(&base, &config("127.0.0.1:4223", "s", "x")));
        assert!(!shares(&base, &config("127.0.0.1", "t", "y")));
    }
}
