//! A JetStream stream as a relay's upstream: the upstream URL
//! (`nats://host:port?stream=NAME`) and the connection options of
//! `[relay.nats]`, turned into the options the follower takes.

use serde::Deserialize;

use crate::config::NatsStreamerConfig;
use crate::error::{NatsError, Result};
use crate::url::{parse_servers, redact_url};

/// Whether an upstream URL names a JetStream stream (`nats://` or
/// `tls://`) rather than a `StateStream` endpoint (`http://`, `https://`).
pub fn is_nats_upstream(url: &str) -> bool {
    let url = url.trim_start();
    url.starts_with("nats://") || url.starts_with("tls://")
}

/// An upstream URL as logs and status pages show it: the servers without
/// their credentials, then the query.
pub fn display_upstream(url: &str) -> String {
    match url.trim().split_once('?') {
        Some((servers, query)) => format!("{}?{query}", redact_url(servers)),
        None => redact_url(url.trim()),
    }
}

/// The connection options of `[relay.nats]`: the `nats` streamer's
/// authentication, TLS and timeout keys, with the same meaning and
/// defaults (see `docs/nats.md`). Relative paths are relative to the
/// relay's home.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsUpstreamOptions {
    /// Token authentication. Default: none.
    #[serde(default)]
    pub token: Option<String>,
    /// User name for user/password authentication. Default: none.
    #[serde(default)]
    pub user: Option<String>,
    /// Password of `user`. Default: none.
    #[serde(default)]
    pub password: Option<String>,
    /// A NATS credentials file (`.creds`). Default: none.
    #[serde(default, alias = "creds-file")]
    pub creds_file: Option<String>,
    /// A file holding an nkey seed. Default: none.
    #[serde(default, alias = "nkey-seed-file")]
    pub nkey_seed_file: Option<String>,
    /// PEM file of the CAs that verify the server's certificate (or the
    /// server's own, pinned). Default: the system's store.
    #[serde(default, alias = "tls-ca-file")]
    pub tls_ca_file: Option<String>,
    /// PEM client certificate (with `tls_key_file`). Default: none.
    #[serde(default, alias = "tls-cert-file")]
    pub tls_cert_file: Option<String>,
    /// PEM private key of `tls_cert_file`. Default: none.
    #[serde(default, alias = "tls-key-file")]
    pub tls_key_file: Option<String>,
    /// Refuse a connection that is not TLS. Default `false`.
    #[serde(default, alias = "tls-required")]
    pub tls_required: bool,
    /// Timeout of the TCP connection and the handshake, in milliseconds.
    /// Default 5000.
    #[serde(default = "default_timeout_ms", alias = "connect-timeout-ms")]
    pub connect_timeout_ms: u64,
    /// Timeout of each JetStream request, in milliseconds. Default 5000.
    #[serde(default = "default_timeout_ms", alias = "request-timeout-ms")]
    pub request_timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    NatsStreamerConfig::default().connect_timeout_ms
}

impl Default for NatsUpstreamOptions {
    fn default() -> Self {
        let d = NatsStreamerConfig::default();
        NatsUpstreamOptions {
            token: None,
            user: None,
            password: None,
            creds_file: None,
            nkey_seed_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            connect_timeout_ms: d.connect_timeout_ms,
            request_timeout_ms: d.request_timeout_ms,
        }
    }
}

impl std::fmt::Debug for NatsUpstreamOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("NatsUpstreamOptions")
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
            .finish()
    }
}

impl NatsUpstreamOptions {
    /// Checks the options as the `nats` streamer checks the same keys;
    /// `Err((key, message))` names the bad key. Reads no file.
    pub fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        self.streamer_config(NatsStreamerConfig::default().url, None, None)
            .check()
    }

    fn streamer_config(
        &self,
        url: String,
        stream: Option<String>,
        subject: Option<String>,
    ) -> NatsStreamerConfig {
        let d = NatsStreamerConfig::default();
        NatsStreamerConfig {
            url,
            stream: stream.unwrap_or(d.stream),
            subject: subject.unwrap_or(d.subject),
            token: self.token.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            creds_file: self.creds_file.clone(),
            nkey_seed_file: self.nkey_seed_file.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
            tls_cert_file: self.tls_cert_file.clone(),
            tls_key_file: self.tls_key_file.clone(),
            tls_required: self.tls_required,
            connect_timeout_ms: self.connect_timeout_ms,
            request_timeout_ms: self.request_timeout_ms,
            // A reader never creates a stream.
            create_stream: false,
            ..d
        }
    }
}

/// The follower's options for the upstream `url`
/// (`nats://host:port?stream=NAME`, also `tls://`, several servers of a
/// cluster separated by commas before the `?`, and optionally
/// `&subject=SUBJECT`: the `nats` streamer's `subject`, which
/// [`BlockFollower`](crate::BlockFollower) otherwise finds in the
/// stream's subjects) with the connection options of `[relay.nats]`.
/// Checked as `config check` does; errors show the URL without
/// credentials.
pub fn upstream_config(url: &str, options: &NatsUpstreamOptions) -> Result<NatsStreamerConfig> {
    let bad = |reason: String| NatsError::BadUrl {
        url: redact_url(url),
        reason,
    };
    let (servers, query) = url
        .trim()
        .split_once('?')
        .ok_or_else(|| bad("a JetStream upstream names its stream: add ?stream=NAME".into()))?;
    let (mut stream, mut subject) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("stream", v)) if stream.is_none() => stream = Some(v.to_string()),
            Some(("subject", v)) if subject.is_none() => subject = Some(v.to_string()),
            Some(("stream" | "subject", _)) => {
                return Err(bad(format!("{pair:?} is given twice")));
            }
            _ => {
                return Err(bad(format!(
                    "unknown parameter {pair:?} (stream=NAME and subject=SUBJECT are known)"
                )));
            }
        }
    }
    if stream.is_none() {
        return Err(bad(
            "a JetStream upstream names its stream: add ?stream=NAME".into(),
        ));
    }
    parse_servers(servers)?;
    let config = options.streamer_config(servers.to_string(), stream, subject);
    config.check().map_err(|(key, message)| match key {
        "url" | "stream" | "subject" => bad(format!("{key}: {message}")),
        _ => bad(format!("[relay.nats] {key}: {message}")),
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_parse() {
        let o = NatsUpstreamOptions {
            token: Some("secret".into()),
            ..Default::default()
        };
        let c = upstream_config("nats://h:4222,tls://g?stream=chain", &o).unwrap();
        assert_eq!(c.url, "nats://h:4222,tls://g");
        assert_eq!(
            (c.stream.as_str(), c.subject.as_str()),
            ("chain", "statestream")
        );
        assert_eq!(c.token.as_deref(), Some("secret"));
        assert!(!c.create_stream);
        let c = upstream_config("nats://h?stream=chain&subject=a.b", &o).unwrap();
        assert_eq!(c.blocks_subject(), "a.b.blocks");
        assert!(is_nats_upstream("tls://h?stream=s"));
        assert_eq!(
            display_upstream("nats://u:pw@h:1,tok@g?stream=s"),
            "nats://<redacted>@h:1,<redacted>@g?stream=s"
        );
        assert!(!is_nats_upstream("http://h:9090"));
    }

    #[test]
    fn upstream_urls_refused_say_why_without_secrets() {
        let o = NatsUpstreamOptions::default();
        for (url, want) in [
            ("nats://u:pw@h", "add ?stream=NAME"),
            ("nats://u:pw@h?subject=x", "add ?stream=NAME"),
            ("nats://u:pw@h?stream=a&stream=b", "given twice"),
            ("nats://u:pw@h?stream=a&x=1", "unknown parameter \"x=1\""),
            ("nats://u:pw@h?stream=a.b", "stream:"),
            ("ws://u:pw@h?stream=a", "not supported"),
        ] {
            let err = upstream_config(url, &o).unwrap_err().to_string();
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains("pw"), "{url}: {err}");
        }
        let o = NatsUpstreamOptions {
            user: Some("u".into()),
            ..Default::default()
        };
        let err = upstream_config("nats://h?stream=a", &o)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[relay.nats] user: user and password go together"),
            "{err}"
        );
        assert_eq!(o.check().unwrap_err().0, "user");
    }
}
