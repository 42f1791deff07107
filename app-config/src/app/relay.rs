//! `[relay]`: `statestream relay`'s upstreams and policies (see
//! docs/relay.md). Read with the rest of app.toml, so `statestream config
//! check` checks it like every other table.

use std::collections::BTreeSet;

use super::{DeTable, DeValue, Parser, Value, integer, not_a_bool, parse_bool};
use crate::error::ConfigError;

/// `[relay] max_upstream_lag_blocks`'s default.
pub const DEFAULT_MAX_UPSTREAM_LAG_BLOCKS: u64 = 100;
/// `[relay] ready_lag_blocks`'s default.
pub const DEFAULT_READY_LAG_BLOCKS: u64 = 10;
/// The largest lag either key takes: far beyond any change log a node
/// retains, and well inside every integer type on the way.
pub const MAX_LAG_BLOCKS: u64 = 1 << 40;

/// The `[relay]` table, read by `statestream relay`:
///
/// ```toml
/// [relay]
/// upstreams = ["http://node-a.example:9090", "http://node-b.example:9090"]
/// token_file = ""
/// tls_ca_file = ""
/// stores = []
/// max_upstream_lag_blocks = 100
/// ready_lag_blocks = 10
/// resnapshot = true
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayConfig {
    /// `upstreams`: `statestream.v1.StateStream` endpoints of one chain,
    /// in order of preference (at least one).
    pub upstreams: Vec<String>,
    /// `token_file`: the bearer token for the upstreams is read from this
    /// file (relative: under the home); empty: none.
    pub token_file: String,
    /// `tls_ca_file`: the CA file for `https://` upstreams; empty: none.
    pub tls_ca_file: String,
    /// `stores`: the stores replicated; empty: every store the upstream
    /// streams.
    pub stores: Vec<String>,
    /// `max_upstream_lag_blocks`: an upstream whose head trails the best
    /// known head by more is left for the next.
    pub max_upstream_lag_blocks: u64,
    /// `ready_lag_blocks`: clients are served once the relay is within
    /// this many blocks of its upstream's head.
    pub ready_lag_blocks: u64,
    /// `resnapshot`: when the upstream no longer retains the next height,
    /// take a fresh snapshot (`false`: halt).
    pub resnapshot: bool,
    /// `[relay.nats]`: how the relay connects to its JetStream upstreams
    /// (`nats://` and `tls://` in `upstreams`).
    pub nats: RelayNatsConfig,
}

/// `[relay.nats]`: the `nats` streamer's authentication, TLS and timeout
/// keys (docs/nats.md), for a relay's JetStream upstreams. Their combinations
/// (one authentication method, a certificate with its key) are checked by
/// `statestream relay` and `statestream config check` with the streamer's
/// own rules.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayNatsConfig {
    /// `token`: token authentication.
    pub token: Option<String>,
    /// `user`: user/password authentication (with `password`).
    pub user: Option<String>,
    /// `password`: the password of `user`.
    pub password: Option<String>,
    /// `creds_file`: a NATS credentials file (relative: under the home).
    pub creds_file: Option<String>,
    /// `nkey_seed_file`: a file holding an nkey seed.
    pub nkey_seed_file: Option<String>,
    /// `tls_ca_file`: the CAs that verify the server's certificate.
    pub tls_ca_file: Option<String>,
    /// `tls_cert_file`: a client certificate (with `tls_key_file`).
    pub tls_cert_file: Option<String>,
    /// `tls_key_file`: the private key of `tls_cert_file`.
    pub tls_key_file: Option<String>,
    /// `tls_required`: refuse a connection that is not TLS.
    pub tls_required: bool,
    /// `connect_timeout_ms`: timeout of the connection and handshake.
    pub connect_timeout_ms: u64,
    /// `request_timeout_ms`: timeout of each JetStream request.
    pub request_timeout_ms: u64,
}

/// `[relay.nats]`'s timeouts when not set, in milliseconds (the `nats`
/// streamer's).
const DEFAULT_NATS_TIMEOUT_MS: u64 = 5000;
/// The longest timeout `[relay.nats]` takes: one hour.
const MAX_NATS_TIMEOUT_MS: u64 = 3_600_000;

impl Default for RelayNatsConfig {
    fn default() -> RelayNatsConfig {
        RelayNatsConfig {
            token: None,
            user: None,
            password: None,
            creds_file: None,
            nkey_seed_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            connect_timeout_ms: DEFAULT_NATS_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_NATS_TIMEOUT_MS,
        }
    }
}

impl std::fmt::Debug for RelayNatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("RelayNatsConfig")
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

const NATS_KEYS: &str = "`token`, `user`, `password`, `creds_file`, `nkey_seed_file`, \
                         `tls_ca_file`, `tls_cert_file`, `tls_key_file`, `tls_required`, \
                         `connect_timeout_ms` and `request_timeout_ms`";

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            upstreams: Vec::new(),
            token_file: String::new(),
            tls_ca_file: String::new(),
            stores: Vec::new(),
            max_upstream_lag_blocks: DEFAULT_MAX_UPSTREAM_LAG_BLOCKS,
            ready_lag_blocks: DEFAULT_READY_LAG_BLOCKS,
            resnapshot: true,
            nats: RelayNatsConfig::default(),
        }
    }
}

const KEYS: &str = "`upstreams`, `token_file`, `tls_ca_file`, `stores`, \
                    `max_upstream_lag_blocks`, `ready_lag_blocks`, `resnapshot` and the table \
                    `[relay.nats]`";

impl Parser<'_> {
    /// Reads `[relay]`.
    pub(super) fn relay(&self, table: &DeTable<'_>) -> Result<RelayConfig, ConfigError> {
        const TABLE: &str = "[relay]";
        let mut config = RelayConfig::default();
        let mut upstreams_seen = false;
        for (key, value) in table.iter() {
            let spelled = key.get_ref().as_ref();
            let error = |message: String| self.key_error(TABLE, spelled, key.span(), message);
            match spelled.replace('-', "_").as_str() {
                "upstreams" => {
                    upstreams_seen = true;
                    config.upstreams = self.strings(value).map_err(error)?;
                    if config.upstreams.is_empty() {
                        return Err(error(
                            "expected at least one upstream, such as \
                             [\"http://node-a.example:9090\"]"
                                .to_owned(),
                        ));
                    }
                    let mut seen = BTreeSet::new();
                    for u in &config.upstreams {
                        check_upstream(u).map_err(error)?;
                        if !seen.insert(u.as_str()) {
                            return Err(error(format!("{u:?} is listed twice")));
                        }
                    }
                }
                "token_file" => config.token_file = self.string(value).map_err(error)?,
                "tls_ca_file" => config.tls_ca_file = self.string(value).map_err(error)?,
                "stores" => {
                    config.stores = self.strings(value).map_err(error)?;
                    let mut seen = BTreeSet::new();
                    for s in &config.stores {
                        if s.is_empty() || s == "*" {
                            return Err(error(format!(
                                "{s:?} is not a store name: list store names, or [] for every \
                                 store the upstream streams"
                            )));
                        }
                        if !seen.insert(s.as_str()) {
                            return Err(error(format!("store {s:?} is listed twice")));
                        }
                    }
                }
                "max_upstream_lag_blocks" => {
                    config.max_upstream_lag_blocks = self.lag(value, 1).map_err(error)?;
                }
                "ready_lag_blocks" => {
                    config.ready_lag_blocks = self.lag(value, 0).map_err(error)?;
                }
                "resnapshot" => {
                    config.resnapshot = match value.get_ref() {
                        DeValue::Boolean(b) => *b,
                        DeValue::String(s) => {
                            parse_bool(s).ok_or_else(|| error(not_a_bool(&self.describe(value))))?
                        }
                        _ => return Err(error(not_a_bool(&self.describe(value)))),
                    };
                }
                "nats" => match value.get_ref() {
                    DeValue::Table(t) => config.nats = self.relay_nats(t)?,
                    _ => return Err(self.not_a_table("[relay.nats]", key, value)),
                },
                _ => {
                    return Err(error(format!(
                        "unknown key; statestream reads {KEYS} in [relay]"
                    )));
                }
            }
        }
        if !upstreams_seen {
            return Err(ConfigError::Table {
                path: self.origin.to_owned(),
                table: TABLE.to_owned(),
                line: None,
                message: "`upstreams` is required: the StateStream endpoints to follow, such as \
                          [\"http://node-a.example:9090\"]"
                    .to_owned(),
            });
        }
        Ok(config)
    }

    /// Reads `[relay.nats]`.
    fn relay_nats(&self, table: &DeTable<'_>) -> Result<RelayNatsConfig, ConfigError> {
        const TABLE: &str = "[relay.nats]";
        let mut c = RelayNatsConfig::default();
        for (key, value) in table.iter() {
            let spelled = key.get_ref().as_ref();
            let error = |message: String| self.key_error(TABLE, spelled, key.span(), message);
            let text = || self.string(value).map(Some).map_err(error);
            match spelled.replace('-', "_").as_str() {
                "token" => c.token = text()?,
                "user" => c.user = text()?,
                "password" => c.password = text()?,
                "creds_file" => c.creds_file = text()?,
                "nkey_seed_file" => c.nkey_seed_file = text()?,
                "tls_ca_file" => c.tls_ca_file = text()?,
                "tls_cert_file" => c.tls_cert_file = text()?,
                "tls_key_file" => c.tls_key_file = text()?,
                "tls_required" => {
                    c.tls_required = match value.get_ref() {
                        DeValue::Boolean(b) => *b,
                        DeValue::String(s) => {
                            parse_bool(s).ok_or_else(|| error(not_a_bool(&self.describe(value))))?
                        }
                        _ => return Err(error(not_a_bool(&self.describe(value)))),
                    };
                }
                name @ ("connect_timeout_ms" | "request_timeout_ms") => {
                    let ms = match integer(value) {
                        Some(n) if (1..=i128::from(MAX_NATS_TIMEOUT_MS)).contains(&n) => {
                            u64::try_from(n).unwrap_or(DEFAULT_NATS_TIMEOUT_MS)
                        }
                        _ => {
                            return Err(error(format!(
                                "expected milliseconds, an integer from 1 to \
                                 {MAX_NATS_TIMEOUT_MS}, got {}",
                                self.describe(value)
                            )));
                        }
                    };
                    if name == "connect_timeout_ms" {
                        c.connect_timeout_ms = ms;
                    } else {
                        c.request_timeout_ms = ms;
                    }
                }
                _ => {
                    return Err(error(format!(
                        "unknown key; statestream reads {NATS_KEYS} in [relay.nats]"
                    )));
                }
            }
        }
        Ok(c)
    }

    fn string(&self, value: &Value<'_>) -> Result<String, String> {
        value
            .get_ref()
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("expected a string, got {}", self.describe(value)))
    }

    fn strings(&self, value: &Value<'_>) -> Result<Vec<String>, String> {
        let DeValue::Array(items) = value.get_ref() else {
            return Err(format!(
                "expected an array of strings, got {}",
                self.describe(value)
            ));
        };
        items
            .iter()
            .map(|item| {
                item.get_ref().as_str().map(str::to_owned).ok_or_else(|| {
                    format!(
                        "expected an array of strings, got {} in the array",
                        self.describe(item)
                    )
                })
            })
            .collect()
    }

    /// A block count from `min` to [`MAX_LAG_BLOCKS`].
    fn lag(&self, value: &Value<'_>, min: u64) -> Result<u64, String> {
        let described = self.describe(value);
        match integer(value) {
            Some(n) if n >= i128::from(min) && n <= i128::from(MAX_LAG_BLOCKS) => {
                u64::try_from(n).map_err(|_| format!("expected blocks, got {described}"))
            }
            _ => Err(format!(
                "expected a number of blocks, an integer from {min} to {MAX_LAG_BLOCKS}, got \
                 {described}"
            )),
        }
    }
}

/// An upstream is `http://host:port` or `https://host:port` (a
/// `statestream.v1.StateStream` endpoint, a `serve` streamer's
/// `grpc_address`).
fn check_upstream(u: &str) -> Result<(), String> {
    if u.starts_with("nats://") || u.starts_with("tls://") {
        // A JetStream stream a node's `nats` streamer writes; the servers
        // and the stream name are checked by the relay (and `config
        // check`) with the streamer's own rules.
        let query = u.split_once('?').map(|(_, q)| q).unwrap_or_default();
        if !query
            .split('&')
            .any(|p| p.strip_prefix("stream=").is_some_and(|s| !s.is_empty()))
        {
            return Err(format!(
                "{u:?} names no stream: write nats://HOST:PORT?stream=NAME (the JetStream \
                 stream a node's nats streamer writes)"
            ));
        }
        return Ok(());
    }
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .ok_or_else(|| {
            format!(
                "{u:?} is not an upstream: write http://HOST:PORT or https://HOST:PORT (a serve \
                 streamer's grpc_address), or nats://HOST:PORT?stream=NAME (a JetStream stream)"
            )
        })?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) || authority.is_empty() {
        return Err(format!(
            "{u:?} is not an upstream: write http://HOST:PORT without a path, query or user"
        ));
    }
    let port = authority
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty() && !p.contains(']'));
    match port.map(str::parse::<u16>) {
        Some(Ok(p)) if p != 0 => Ok(()),
        _ => Err(format!(
            "{u:?} has no port: write http://HOST:PORT (a serve streamer's grpc_address)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::check_upstream;

    #[test]
    fn upstreams_are_http_endpoints_with_a_port() {
        for ok in [
            "http://127.0.0.1:9090",
            "https://node-a.example:443",
            "http://[::1]:9090/",
            "nats://127.0.0.1:4222?stream=chain",
            "tls://a:4222,tls://b:4222?subject=x&stream=chain",
        ] {
            assert_eq!(check_upstream(ok), Ok(()), "{ok}");
        }
        for bad in [
            "node:9090",
            "http://node",
            "http://node:0",
            "http://node:9090/path",
            "http://user@node:9090",
            "grpc://node:9090",
            "http://[::1]",
            "nats://127.0.0.1:4222",
            "nats://127.0.0.1:4222?stream=",
        ] {
            assert!(check_upstream(bad).is_err(), "{bad}");
        }
    }
}
