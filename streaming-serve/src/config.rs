//! The options of `type = "serve"`, which build the streamer.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use serde::Deserialize;
use statestream_config::{ConfigError, StreamerOptions};
use statestream_core::{BoxError, PUSH_BLOCK_BYTES, StreamerContext};
use statestream_net::TlsFiles;

use crate::streamer::ServeStreamer;

/// The streamer type name this crate registers.
pub const SERVE_TYPE: &str = "serve";

/// The options of a `[streamers.<name>]` table with `type = "serve"` (the
/// common keys `type`, `keys`, `delivery`, `queue` and
/// `stop-node-on-error` are read by `statestream-config`). Keys may be
/// written with hyphens or underscores. Every default is in
/// `docs/serve.md`.
///
/// ```toml
/// [streamers.serve]
/// type = "serve"
/// keys = ["*"]
/// grpc_address = "127.0.0.1:9090"
/// http_address = "127.0.0.1:8080"
/// token = ""
/// retain_blocks = 10000
/// heartbeat_ms = 10000
/// max_subscribers = 1024
/// max_filter_entries = 4096
/// max_snapshots = 4
/// push_updates = false
/// max_push_bytes = 67108864
/// max_push_value_bytes = 1048576
/// value_types = { bank = "int" }
/// max_connection_ms = 0
/// cors_origins = []
/// max_connections = 256
/// header_timeout_ms = 10000
/// allowed_hosts = []
/// max_concurrent_streams = 128
/// tls_cert_file = "tls/server.pem"
/// tls_key_file = "tls/server-key.pem"
/// tls_client_ca_file = "tls/clients-ca.pem"
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The gRPC listen address, `host:port` (port 0: any free port; the
    /// bound address is logged and [`ServeStreamer::grpc_address`] tells
    /// it). Default: [`DEFAULT_GRPC_ADDRESS`] (loopback only) when
    /// `http_address` is not set either; when only `http_address` is set,
    /// no gRPC server.
    #[serde(default)]
    pub grpc_address: Option<String>,
    /// The HTTP (Server-Sent Events) listen address, `host:port` (port 0:
    /// any free port; [`ServeStreamer::http_address`] tells it). Default:
    /// none (no HTTP server).
    #[serde(default)]
    pub http_address: Option<String>,
    /// How long one SSE connection may stay open, in milliseconds; the
    /// stream then ends at a block boundary and the client resumes by
    /// `Last-Event-ID`. Default 0: unlimited.
    #[serde(default)]
    pub max_connection_ms: u64,
    /// Origins allowed to read the HTTP endpoints from a browser (CORS),
    /// e.g. `["https://app.example"]`, or `["*"]`. Default empty: no CORS
    /// headers.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// When not empty, every call needs `authorization: Bearer <token>`
    /// (the health service excepted). Default `""`: no token.
    #[serde(default)]
    pub token: String,
    /// How many of the latest blocks the change log keeps for subscribers
    /// resuming by height. Default [`DEFAULT_RETAIN_BLOCKS`].
    #[serde(default = "default_retain_blocks")]
    pub retain_blocks: u64,
    /// Heartbeat interval of idle subscriptions, in milliseconds. Default
    /// [`DEFAULT_HEARTBEAT_MS`].
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Subscriptions open at once, over every front-end. Default
    /// [`DEFAULT_MAX_SUBSCRIBERS`].
    #[serde(default = "default_max_subscribers")]
    pub max_subscribers: usize,
    /// Stores, prefixes and keys one request's filter may name together
    /// (every front-end); more is refused as an invalid argument naming
    /// the limit. Default [`DEFAULT_MAX_FILTER_ENTRIES`].
    #[serde(default = "default_max_filter_entries")]
    pub max_filter_entries: usize,
    /// One-shot snapshots (`GET /snapshot`, `DataService.Sync`) read at
    /// once, over every front-end; more are refused (HTTP 503 with
    /// `Retry-After`, gRPC `RESOURCE_EXHAUSTED`). Default
    /// [`DEFAULT_MAX_SNAPSHOTS`].
    #[serde(default = "default_max_snapshots")]
    pub max_snapshots: usize,
    /// Accept `PushUpdate`. Default `false`.
    #[serde(default)]
    pub push_updates: bool,
    /// Bytes of pushed keys and values waiting for the next blocks beyond
    /// which a `PushUpdate` is refused (`RESOURCE_EXHAUSTED`). Default
    /// [`DEFAULT_MAX_PUSH_BYTES`].
    #[serde(default = "default_max_push_bytes")]
    pub max_push_bytes: usize,
    /// Bytes of one pushed write's key and value beyond which it is
    /// refused (`INVALID_ARGUMENT`); at most
    /// [`PUSH_BLOCK_BYTES`](statestream_core::PUSH_BLOCK_BYTES). Default
    /// [`DEFAULT_MAX_PUSH_VALUE_BYTES`].
    #[serde(default = "default_max_push_value_bytes")]
    pub max_push_value_bytes: usize,
    /// Per store, the `value_type` datastream clients see. Default
    /// [`DEFAULT_VALUE_TYPE`] for every store.
    #[serde(default)]
    pub value_types: BTreeMap<String, String>,
    /// Connections open at once, per listener (gRPC and HTTP each); one
    /// more is closed as soon as it is accepted. Default
    /// [`DEFAULT_MAX_CONNECTIONS`].
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a client has to send its first bytes and a whole HTTP/1
    /// request head, in milliseconds (also how long an idle HTTP/1
    /// keep-alive connection stays open, and how long an HTTP/2 client
    /// has to answer a keep-alive ping). Default
    /// [`DEFAULT_HEADER_TIMEOUT_MS`].
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Host names (or IP addresses) requests may name beyond `localhost`,
    /// `127.0.0.1`, `[::1]` and the bound address; any other gets `421`.
    /// `["*"]`: any host. Default empty.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// HTTP/2 (every gRPC call, health `Watch` included): streams one
    /// connection may have open at once. Default
    /// [`DEFAULT_MAX_CONCURRENT_STREAMS`].
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// PEM certificate (then any intermediates) both listeners serve TLS
    /// with; set with `tls_key_file`. Relative to the node's home.
    /// Re-read on SIGHUP. Default: none (plain TCP).
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    /// PEM private key of `tls_cert_file`. Default: none.
    #[serde(default)]
    pub tls_key_file: Option<String>,
    /// PEM CA certificates: when set, every client must present a
    /// certificate signed by one of them (or listed in the file itself)
    /// (mTLS); its subject's CN names the credential it may use. Needs
    /// `tls_cert_file`. Default: none.
    #[serde(default)]
    pub tls_client_ca_file: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            grpc_address: None,
            http_address: None,
            max_connection_ms: 0,
            cors_origins: Vec::new(),
            token: String::new(),
            retain_blocks: default_retain_blocks(),
            heartbeat_ms: default_heartbeat_ms(),
            max_subscribers: default_max_subscribers(),
            max_filter_entries: default_max_filter_entries(),
            max_snapshots: default_max_snapshots(),
            push_updates: false,
            max_push_bytes: default_max_push_bytes(),
            max_push_value_bytes: default_max_push_value_bytes(),
            value_types: BTreeMap::new(),
            max_connections: default_max_connections(),
            header_timeout_ms: default_header_timeout_ms(),
            allowed_hosts: Vec::new(),
            max_concurrent_streams: default_max_concurrent_streams(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
        }
    }
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("grpc_address", &self.grpc_address)
            .field("http_address", &self.http_address)
            .field("max_connection_ms", &self.max_connection_ms)
            .field("cors_origins", &self.cors_origins)
            .field("token", &if self.token.is_empty() { "" } else { "<set>" })
            .field("retain_blocks", &self.retain_blocks)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("max_subscribers", &self.max_subscribers)
            .field("max_filter_entries", &self.max_filter_entries)
            .field("max_snapshots", &self.max_snapshots)
            .field("push_updates", &self.push_updates)
            .field("max_push_bytes", &self.max_push_bytes)
            .field("max_push_value_bytes", &self.max_push_value_bytes)
            .field("value_types", &self.value_types)
            .field("max_connections", &self.max_connections)
            .field("header_timeout_ms", &self.header_timeout_ms)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_client_ca_file", &self.tls_client_ca_file)
            .finish()
    }
}

/// The gRPC address when neither `grpc_address` nor `http_address` is set.
pub const DEFAULT_GRPC_ADDRESS: &str = "127.0.0.1:9090";

/// The resolved listen addresses (at least one is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addresses {
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
}

/// The default `retain_blocks`.
pub const DEFAULT_RETAIN_BLOCKS: u64 = 10_000;
/// The default `heartbeat_ms`.
pub const DEFAULT_HEARTBEAT_MS: u64 = 10_000;
/// The default `max_subscribers`.
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 1024;
/// The default `max_filter_entries`.
pub const DEFAULT_MAX_FILTER_ENTRIES: usize = 4096;
/// The default `max_snapshots`.
pub const DEFAULT_MAX_SNAPSHOTS: usize = 4;

/// The default `max_push_bytes`.
pub const DEFAULT_MAX_PUSH_BYTES: usize = 64 << 20;
/// The default `max_push_value_bytes`.
pub const DEFAULT_MAX_PUSH_VALUE_BYTES: usize = 1 << 20;

fn default_max_push_bytes() -> usize {
    DEFAULT_MAX_PUSH_BYTES
}
fn default_max_push_value_bytes() -> usize {
    DEFAULT_MAX_PUSH_VALUE_BYTES
}

/// The default `max_connections` (as `[telemetry]`'s).
pub const DEFAULT_MAX_CONNECTIONS: usize = statestream_net::DEFAULT_MAX_CONNECTIONS;
/// The largest `max_connections`.
pub const MAX_CONNECTIONS: usize = 1 << 20;
/// The default `header_timeout_ms` (as `[telemetry]`'s).
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// The largest `header_timeout_ms`: one hour.
pub const MAX_HEADER_TIMEOUT_MS: u64 = 3_600_000;
/// The default `max_concurrent_streams`.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = statestream_net::DEFAULT_MAX_CONCURRENT_STREAMS;
/// The largest `max_concurrent_streams`.
pub const MAX_CONCURRENT_STREAMS: u32 = 1 << 20;

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_header_timeout_ms() -> u64 {
    DEFAULT_HEADER_TIMEOUT_MS
}
fn default_max_concurrent_streams() -> u32 {
    DEFAULT_MAX_CONCURRENT_STREAMS
}
fn default_retain_blocks() -> u64 {
    DEFAULT_RETAIN_BLOCKS
}
fn default_heartbeat_ms() -> u64 {
    DEFAULT_HEARTBEAT_MS
}
fn default_max_subscribers() -> usize {
    DEFAULT_MAX_SUBSCRIBERS
}
fn default_max_filter_entries() -> usize {
    DEFAULT_MAX_FILTER_ENTRIES
}
fn default_max_snapshots() -> usize {
    DEFAULT_MAX_SNAPSHOTS
}

/// The default `value_type`.
pub const DEFAULT_VALUE_TYPE: &str = "bytes";

impl ServeConfig {
    /// Checks the options against the streamer's stores; returns the
    /// resolved listen address.
    pub(crate) fn check(
        &self,
        ctx: &StreamerContext<'_>,
    ) -> Result<Addresses, (&'static str, String)> {
        let grpc = match (&self.grpc_address, &self.http_address) {
            (Some(a), _) => Some(resolve_address(a).map_err(|m| ("grpc_address", m))?),
            (None, None) => {
                Some(resolve_address(DEFAULT_GRPC_ADDRESS).map_err(|m| ("grpc_address", m))?)
            }
            (None, Some(_)) => None,
        };
        let http = match &self.http_address {
            Some(a) => Some(resolve_address(a).map_err(|m| ("http_address", m))?),
            None => None,
        };
        if grpc.is_some() && grpc == http && grpc.is_some_and(|a| a.port() != 0) {
            return Err((
                "http_address",
                "grpc_address and http_address are the same address; give each its own port".into(),
            ));
        }
        for origin in &self.cors_origins {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && !origin.chars().any(|c| c.is_control() || c.is_whitespace()));
            if !ok {
                return Err((
                    "cors_origins",
                    format!(
                        "{origin:?} is not an origin: expected \"*\" or scheme://host[:port] without a path (e.g. \"https://app.example\")"
                    ),
                ));
            }
        }
        // Limits that must be positive: (key, value, what it counts).
        let positive = [
            ("retain_blocks", self.retain_blocks, "blocks"),
            ("heartbeat_ms", self.heartbeat_ms, "milliseconds"),
            (
                "max_subscribers",
                self.max_subscribers as u64,
                "subscribers",
            ),
            (
                "max_filter_entries",
                self.max_filter_entries as u64,
                "filter entries",
            ),
            ("max_snapshots", self.max_snapshots as u64, "snapshots"),
        ];
        if let Some((key, _, what)) = positive.iter().find(|(_, value, _)| *value == 0) {
            return Err((
                *key,
                format!("expected a positive number of {what} (at least 1), got 0"),
            ));
        }
        if self.max_push_value_bytes == 0 || self.max_push_value_bytes > PUSH_BLOCK_BYTES {
            return Err((
                "max_push_value_bytes",
                format!(
                    "expected 1 to {PUSH_BLOCK_BYTES} bytes (what one block carries of pushed writes), got {}",
                    self.max_push_value_bytes
                ),
            ));
        }
        if self.max_push_bytes < self.max_push_value_bytes {
            return Err((
                "max_push_bytes",
                format!(
                    "expected at least max_push_value_bytes ({}) bytes, got {}",
                    self.max_push_value_bytes, self.max_push_bytes
                ),
            ));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err((
                "max_connections",
                format!(
                    "expected a number of connections from 1 to {MAX_CONNECTIONS}, got {}",
                    self.max_connections
                ),
            ));
        }
        if !(1..=MAX_HEADER_TIMEOUT_MS).contains(&self.header_timeout_ms) {
            return Err((
                "header_timeout_ms",
                format!(
                    "expected milliseconds from 1 to {MAX_HEADER_TIMEOUT_MS}, got {}",
                    self.header_timeout_ms
                ),
            ));
        }
        if !(1..=MAX_CONCURRENT_STREAMS).contains(&self.max_concurrent_streams) {
            return Err((
                "max_concurrent_streams",
                format!(
                    "expected a number of streams from 1 to {MAX_CONCURRENT_STREAMS}, got {}",
                    self.max_concurrent_streams
                ),
            ));
        }
        for host in &self.allowed_hosts {
            check_allowed_host(host).map_err(|m| ("allowed_hosts", m))?;
        }
        if self
            .token
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err((
                "token",
                "the token may not contain whitespace or control characters (it is sent in a header)".into(),
            ));
        }
        self.tls_files(ctx.home)?;
        for (store, value_type) in &self.value_types {
            if !ctx.stores.iter().any(|s| s.name() == store) {
                let streamed: Vec<&str> = ctx.stores.iter().map(|s| s.name()).collect();
                return Err((
                    "value_types",
                    format!(
                        "store {store:?} is not streamed by this streamer (its stores: {})",
                        streamed.join(", ")
                    ),
                ));
            }
            if value_type.is_empty() {
                return Err((
                    "value_types",
                    format!("the value type of {store:?} is empty"),
                ));
            }
        }
        Ok(Addresses { grpc, http })
    }

    /// The TLS files of both listeners, resolved against the node's home
    /// and read (each exists and parses, the key goes with the
    /// certificate); `None` without `tls_cert_file`.
    pub(crate) fn tls_files(
        &self,
        home: &Path,
    ) -> Result<Option<TlsFiles>, (&'static str, String)> {
        let resolve = |p: &str| home.join(p);
        let (cert, key) = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => (resolve(cert), resolve(key)),
            (None, None) => {
                if self.tls_client_ca_file.is_some() {
                    return Err((
                        "tls_client_ca_file",
                        "client certificates need TLS: set tls_cert_file and tls_key_file too"
                            .into(),
                    ));
                }
                return Ok(None);
            }
            (Some(_), None) => {
                return Err((
                    "tls_cert_file",
                    "set tls_key_file too: a certificate needs its private key".into(),
                ));
            }
            (None, Some(_)) => {
                return Err((
                    "tls_key_file",
                    "set tls_cert_file too: a key without a certificate serves nothing".into(),
                ));
            }
        };
        let mut files = TlsFiles::new(cert, key);
        if let Some(ca) = &self.tls_client_ca_file {
            files = files.client_ca_file(resolve(ca));
        }
        files
            .check()
            .map_err(|(file, error)| (file.key(), error.to_string()))?;
        Ok(Some(files))
    }

    /// Checks the options as [`build`](ServeConfig::build) does (the
    /// addresses resolve, `value_types` names stores of `ctx.stores`, ...),
    /// naming the bad key of `options`, without binding anything or
    /// needing read access to the store.
    pub fn validate(
        &self,
        ctx: &StreamerContext<'_>,
        options: &StreamerOptions,
    ) -> Result<(), ConfigError> {
        self.check(ctx)
            .map(drop)
            .map_err(|(key, message)| options.error(key, message))
    }

    /// Checks the options, binds the listen address and starts the server.
    /// Errors name the key (bad options) or say why the address cannot be
    /// bound (in use, not local, no permission).
    pub fn build(
        &self,
        ctx: &StreamerContext<'_>,
        options: &StreamerOptions,
    ) -> Result<ServeStreamer, BoxError> {
        let addresses = self
            .check(ctx)
            .map_err(|(key, message)| -> ConfigError { options.error(key, message) })?;
        Ok(ServeStreamer::start(ctx, self.clone(), addresses)?)
    }
}

/// One `allowed_hosts` entry: a host name, an IP address (IPv6 with or
/// without brackets) or `*`, without a scheme, port or path (the same
/// rule as `[telemetry] allowed_hosts`).
fn check_allowed_host(host: &str) -> Result<(), String> {
    let bracketed_v6 = host.starts_with('[')
        && host.ends_with(']')
        && host[1..host.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    let plain = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    let ip = host.parse::<std::net::IpAddr>().is_ok();
    if host == "*" || plain || ip || bracketed_v6 {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not a host name: write a name or an IP address without a scheme, \
             port or path (such as \"node1.example.org\"), or \"*\" for any"
        ))
    }
}

/// `host:port` to one socket address (the first the name resolves to).
fn resolve_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !text.contains(':') {
        return Err(format!(
            "{text:?} is not host:port (e.g. \"127.0.0.1:9090\")"
        ));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{text:?} resolves to no address")),
        Err(e) => Err(format!("{text:?} is not a listen address (host:port): {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_allowed_host, resolve_address};

    #[test]
    fn allowed_hosts() {
        for ok in [
            "*",
            "node1.example.org",
            "localhost",
            "10.0.0.7",
            "::1",
            "[::1]",
        ] {
            assert!(check_allowed_host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "http://x", "x:8080", "x/y", "a b", "[x]"] {
            assert!(check_allowed_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses() {
        assert!(resolve_address("127.0.0.1:0").is_ok());
        assert!(resolve_address("[::1]:9090").is_ok());
        assert!(resolve_address("localhost:9090").is_ok());
        assert!(resolve_address("9090").is_err());
        assert!(resolve_address("127.0.0.1:99999").is_err());
    }
}
