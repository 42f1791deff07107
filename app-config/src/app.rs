//! The `app.toml` model: `[store] streamers` and the `[streamers.<name>]` tables.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::error::ConfigError;
use crate::lenient::{not_a_bool, parse_bool, parse_integer};
use crate::options::{Spelling, StreamerOptions};
use crate::text::{LineIndex, check_name, describe, normalise_key};

mod relay;

pub use relay::{
    DEFAULT_MAX_UPSTREAM_LAG_BLOCKS, DEFAULT_READY_LAG_BLOCKS, MAX_LAG_BLOCKS, RelayConfig,
    RelayNatsConfig,
};

/// Blocks buffered in memory per asynchronous streamer when `queue` is not set.
pub const DEFAULT_QUEUE: usize = 64;

/// The largest accepted `queue`: a bound on the memory one streamer may hold.
pub const MAX_QUEUE: usize = 1_000_000;

/// `[store] shutdown_timeout_ms` when it is not set: how long, at shutdown,
/// asynchronous streamers may go on delivering (and retrying) before their
/// waits are cut short. A few seconds: enough for a short retry, short
/// enough for a service manager's stop timeout.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 5_000;

/// The largest accepted `shutdown_timeout_ms`: an hour.
pub const MAX_SHUTDOWN_TIMEOUT_MS: u64 = 3_600_000;

/// How blocks reach a streamer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Delivery {
    /// Inside commit: the commit waits for the streamer (`delivery = "sync"`).
    Sync,
    /// On the streamer's own thread, through a bounded queue; a slow streamer
    /// falls behind and catches up from the change log (`delivery = "async"`,
    /// the default).
    #[default]
    Async,
}

impl Delivery {
    /// The spelling used in `app.toml`: `"sync"` or `"async"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Sync => "sync",
            Delivery::Async => "async",
        }
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One enabled streamer, resolved against the node's stores: everything the
/// registry needs to build it and the delivery manager needs to run it.
#[derive(Debug, Clone)]
pub struct StreamerSpec {
    /// The table name: `file` for `[streamers.file]`. Unique; names the cursor.
    pub name: String,
    /// The streamer type (`type`), defaulting to the table name.
    pub type_name: String,
    /// The stores the streamer sees: sorted, without duplicates, never empty.
    pub stores: Vec<String>,
    /// `delivery`, default [`Delivery::Async`].
    pub delivery: Delivery,
    /// `queue`: blocks buffered in memory when asynchronous, default [`DEFAULT_QUEUE`].
    pub queue: usize,
    /// `stop-node-on-error`, default `true`.
    pub stop_node_on_error: bool,
    /// Every other key of the table, for the streamer to parse.
    pub options: StreamerOptions,
}

/// The streaming part of a node's `app.toml`, validated.
///
/// Only `[store] streamers` and the `[streamers.<name>]` tables are read;
/// every other table and every other key of `[store]` belongs to the rest of
/// the node and is ignored.
#[derive(Debug, Clone)]
pub struct AppConfig {
    origin: PathBuf,
    /// The streamers listed in `[store] streamers`, in list order.
    streamers: Vec<Entry>,
    /// Problems that do not stop the node, already logged at warn level.
    warnings: Vec<String>,
    /// `[telemetry]`, when it sets an address.
    telemetry: Option<TelemetryConfig>,
    /// `[store] shutdown_timeout_ms`.
    shutdown_timeout: Duration,
    /// `[cosmos]`: `statestream cosmos-plugin`'s and `ingest-files`' settings.
    cosmos: CosmosConfig,
    /// `[relay]`: `statestream relay`'s settings, when the table is there.
    relay: Option<RelayConfig>,
    /// `[admin]`, when it sets an address.
    admin: Option<AdminConfig>,
}

/// The `[admin]` table: the admin API (credentials) on a listener of its
/// own.
///
/// ```toml partial
/// [admin]
/// address = "127.0.0.1:9300"             # unset: no admin API
/// token_file = "config/admin-token"      # the admin token; relative: to the home
/// tls_cert_file = "tls/admin.pem"         # optional: HTTPS
/// tls_key_file = "tls/admin-key.pem"
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdminConfig {
    /// `address`: an IP address and a port (port 0: the system chooses).
    pub address: SocketAddr,
    /// The 1-based line of `address`.
    pub line: Option<usize>,
    /// `token_file`: the file holding the admin token (surrounding
    /// whitespace is not part of it); relative paths are under the home.
    pub token_file: PathBuf,
    /// `allowed_hosts`: `Host` names accepted beyond loopback and the
    /// bound address.
    pub allowed_hosts: Vec<String>,
    /// `tls_cert_file`, `tls_key_file`, `tls_client_ca_file`, as written
    /// (relative paths under the home): HTTPS, and mTLS with a client CA.
    pub tls: Option<ListenerTls>,
}

/// The `[cosmos]` table, read by `statestream cosmos-plugin` and
/// `statestream ingest-files`:
///
/// ```toml
/// [cosmos]
/// on_gap = "continue"   # or "halt"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CosmosConfig {
    /// `on_gap`: what the plugin does when the chain's next block is not
    /// the next height (the chain committed blocks while the plugin was
    /// down). The gap is recorded either way.
    pub on_gap: GapPolicy,
}

/// `[cosmos] on_gap`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum GapPolicy {
    /// `"continue"` (the default): record the gap and go on.
    #[default]
    Continue,
    /// `"halt"`: record the gap and answer the chain an error (a chain with
    /// `stop-node-on-err = true` stops).
    Halt,
}

/// The keys of the Cosmos SDK's own `[telemetry]` table (its app.toml
/// template, v0.45 to v0.50), which statestream leaves alone.
const COSMOS_TELEMETRY_KEYS: &[&str] = &[
    "service-name",
    "enabled",
    "enable-hostname",
    "enable-hostname-label",
    "enable-service-label",
    "prometheus-retention-time",
    "global-labels",
    "metrics-sink",
    "statsd-addr",
    "datadog-hostname",
];

/// The `[telemetry]` table: where the node serves its metrics and status
/// (`GET /metrics`, `GET /status`, `GET /healthz`), and what a client of
/// that listener may hold.
///
/// ```toml
/// [telemetry]
/// address = "127.0.0.1:9100"   # unset: off
/// max_connections = 256         # open connections at once
/// header_timeout_ms = 10000     # to send a request head
/// allowed_hosts = []            # Host names beyond loopback and the address
/// tls_cert_file = "tls/telemetry.pem"        # optional: HTTPS
/// tls_key_file = "tls/telemetry-key.pem"
/// tls_client_ca_file = "tls/scrapers-ca.pem" # optional: mTLS
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// `address`: an IP address and a port. Port 0 lets the operating system
    /// choose one (the node logs the address it bound). Nothing is served
    /// unless it is set; it is whatever the operator writes, so the metrics
    /// are reachable beyond the machine only when a non-loopback address is
    /// written here.
    pub address: SocketAddr,
    /// The 1-based line of `address`, for errors found later (binding).
    pub line: Option<usize>,
    /// `max_connections`: connections open at once; one more is closed as
    /// soon as it is accepted. `None`: the server's default (256).
    pub max_connections: Option<usize>,
    /// `header_timeout_ms`: how long a client has to send a request head
    /// (and how long a keep-alive connection may idle). `None`: the
    /// server's default (10000).
    pub header_timeout_ms: Option<u64>,
    /// `allowed_hosts`: `Host` names accepted beyond `localhost`,
    /// `127.0.0.1`, `[::1]` and the bound address; `"*"` accepts any.
    pub allowed_hosts: Vec<String>,
    /// `tls_cert_file` and `tls_key_file`, as written (relative paths are
    /// under the node's home): the server serves HTTPS with them. Both or
    /// neither (checked here; the files are read by the server and by
    /// `statestream config check`).
    pub tls: Option<ListenerTls>,
}

/// A listener's TLS files (`[telemetry]`, `[admin]`), as written in
/// app.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerTls {
    /// `tls_cert_file`: the PEM certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// `tls_key_file`: its PEM private key.
    pub key_file: PathBuf,
    /// `tls_client_ca_file`: when set, clients must present a certificate
    /// signed by one of its certificates (mTLS).
    pub client_ca_file: Option<PathBuf>,
}

/// The TLS keys of a listener's table, each with its key as spelled and
/// its span, collected while the table is read (the pairs are checked at
/// its end).
#[derive(Default)]
struct TlsKeys {
    cert: Option<(PathBuf, String, Range<usize>)>,
    key: Option<(PathBuf, String, Range<usize>)>,
    client_ca: Option<(PathBuf, String, Range<usize>)>,
}

/// The largest `[telemetry] max_connections`.
const MAX_TELEMETRY_CONNECTIONS: i128 = 1 << 20;

/// The largest `[telemetry] header_timeout_ms`: one hour.
const MAX_HEADER_TIMEOUT_MS: i128 = 3_600_000;

/// One listed streamer, before resolution against the node's stores.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    type_name: String,
    keys: Keys,
    keys_line: Option<usize>,
    delivery: Delivery,
    queue: usize,
    stop_node_on_error: bool,
    options: StreamerOptions,
}

/// The value of `keys`.
#[derive(Debug, Clone)]
enum Keys {
    /// `["*"]`: every store of the node.
    All,
    /// `[]`: the streamer is off.
    Off,
    /// Named stores, checked for syntax and duplicates, not yet for existence.
    Names(Vec<String>),
}

impl AppConfig {
    /// Reads and validates the file at `path`.
    pub fn from_file(path: &Path) -> Result<AppConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        AppConfig::parse(&text, path)
    }

    /// Validates `text`; `origin` is the file name used in errors (any
    /// descriptive path, such as `<built-in>`, for text that is not in a file).
    pub fn parse(text: &str, origin: &Path) -> Result<AppConfig, ConfigError> {
        Parser {
            origin,
            index: LineIndex::new(text),
        }
        .parse(text)
    }

    /// The names of the streamers listed in `[store] streamers`, in list
    /// order. This includes streamers turned off with `keys = []`, which
    /// [`AppConfig::resolve`] leaves out.
    pub fn streamer_names(&self) -> Vec<&str> {
        self.streamers
            .iter()
            .map(|entry| entry.name.as_str())
            .collect()
    }

    /// Resolves `keys` against the node's stores and returns the streamers to
    /// run, in `[store] streamers` order. `["*"]` becomes every store; a
    /// streamer with `keys = []` is off, left out and logged; a store name
    /// that is not in `stores` is an error listing the known stores.
    pub fn resolve(&self, stores: &[&str]) -> Result<Vec<StreamerSpec>, ConfigError> {
        let mut known: Vec<&str> = stores.to_vec();
        known.sort_unstable();
        known.dedup();
        let mut specs = Vec::with_capacity(self.streamers.len());
        for entry in &self.streamers {
            let stores = match &entry.keys {
                Keys::Off => {
                    tracing::info!(
                        streamer = %entry.name,
                        file = %self.origin.display(),
                        "streamer is off: its `keys` is empty"
                    );
                    continue;
                }
                Keys::All if known.is_empty() => {
                    return Err(self.keys_error(entry, "`*` matches no store: the node has none"));
                }
                Keys::All => known.iter().map(|store| (*store).to_owned()).collect(),
                Keys::Names(names) => {
                    if let Some(unknown) = names
                        .iter()
                        .find(|name| known.binary_search(&name.as_str()).is_err())
                    {
                        let message = format!(
                            "unknown store `{unknown}`; the node's stores are: {}",
                            if known.is_empty() {
                                "(none)".to_owned()
                            } else {
                                known.join(", ")
                            }
                        );
                        return Err(self.keys_error(entry, message));
                    }
                    let mut names = names.clone();
                    names.sort_unstable();
                    names
                }
            };
            specs.push(StreamerSpec {
                name: entry.name.clone(),
                type_name: entry.type_name.clone(),
                stores,
                delivery: entry.delivery,
                queue: entry.queue,
                stop_node_on_error: entry.stop_node_on_error,
                options: entry.options.clone(),
            });
        }
        Ok(specs)
    }

    /// What the configuration holds that statestream recognises but does not
    /// run (a `[streaming.abci]` table), one message each naming the file
    /// and line. They are also logged at warn level when the file is parsed.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The file this configuration was read from (or the `origin` given to
    /// [`AppConfig::parse`]).
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// `[store] shutdown_timeout_ms` (default
    /// [`DEFAULT_SHUTDOWN_TIMEOUT_MS`]): at shutdown, how long asynchronous
    /// streamers may go on delivering before their waits are cut short and
    /// the rest is left to the change log.
    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }

    /// `[admin]`: `None` when the table or its `address` is absent (no
    /// admin API).
    pub fn admin(&self) -> Option<&AdminConfig> {
        self.admin.as_ref()
    }

    /// `[telemetry]`: `None` when the table or its `address` is absent
    /// (telemetry off).
    pub fn telemetry(&self) -> Option<&TelemetryConfig> {
        self.telemetry.as_ref()
    }

    /// Every store named in a streamer's `keys` (not `["*"]`), sorted: a
    /// replica that discovers its stores from its blocks creates these at
    /// start, so that the streamers naming them can start before the
    /// stores are first written.
    pub fn named_stores(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .streamers
            .iter()
            .filter_map(|e| match &e.keys {
                Keys::Names(names) => Some(names.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// `[cosmos]` (defaults when the table is absent).
    pub fn cosmos(&self) -> &CosmosConfig {
        &self.cosmos
    }

    /// `[relay]`, when the file has the table.
    pub fn relay(&self) -> Option<&RelayConfig> {
        self.relay.as_ref()
    }

    fn keys_error(&self, entry: &Entry, message: impl Into<String>) -> ConfigError {
        ConfigError::Key {
            path: self.origin.clone(),
            table: streamer_table(&entry.name),
            key: "keys".to_owned(),
            line: entry.keys_line,
            message: message.into(),
        }
    }
}

/// How a streamer's table is named in errors.
fn streamer_table(name: &str) -> String {
    format!("[streamers.{name}]")
}

type Key<'i> = Spanned<std::borrow::Cow<'i, str>>;
type Value<'i> = Spanned<DeValue<'i>>;

/// The state of one parse: the file name and the text's line index.
struct Parser<'a> {
    origin: &'a Path,
    index: LineIndex<'a>,
}

impl Parser<'_> {
    fn parse(&self, text: &str) -> Result<AppConfig, ConfigError> {
        let root = DeTable::parse(text).map_err(|error| {
            let offset = error.span().map_or(text.len(), |span| span.start);
            let (line, column) = self.index.line_column(offset);
            ConfigError::Syntax {
                path: self.origin.to_owned(),
                line,
                column,
                message: error.message().to_owned(),
            }
        })?;
        let root = root.get_ref();
        let warnings: Vec<String> = self.abci_warning(root).into_iter().collect();
        for warning in &warnings {
            tracing::warn!("{warning}");
        }

        let (listed, shutdown_timeout) = match find(root, "store") {
            None => (
                Vec::new(),
                Duration::from_millis(DEFAULT_SHUTDOWN_TIMEOUT_MS),
            ),
            Some((key, value)) => match value.get_ref() {
                DeValue::Table(store) => {
                    (self.listed_streamers(store)?, self.shutdown_timeout(store)?)
                }
                _ => return Err(self.not_a_table("[store]", key, value)),
            },
        };

        let tables: Vec<(&Key<'_>, &Value<'_>)> = match find(root, "streamers") {
            None => Vec::new(),
            Some((key, value)) => match value.get_ref() {
                DeValue::Table(tables) => tables.iter().collect(),
                _ => return Err(self.not_a_table("[streamers]", key, value)),
            },
        };

        for (key, _) in &tables {
            let name = key.get_ref();
            if !listed.iter().any(|(listed, _)| listed == name) {
                tracing::info!(
                    streamer = %name,
                    file = %self.origin.display(),
                    "streamer is disabled: [streamers.{name}] is not listed in [store] streamers"
                );
            }
        }

        let mut streamers = Vec::with_capacity(listed.len());
        for (name, list_span) in &listed {
            let Some((key, value)) = tables.iter().find(|(key, _)| key.get_ref() == name) else {
                return Err(self.key_error(
                    "[store]",
                    "streamers",
                    list_span.clone(),
                    format!("streamer `{name}` is listed but there is no [streamers.{name}] table"),
                ));
            };
            let DeValue::Table(table) = value.get_ref() else {
                return Err(self.key_error(
                    "[streamers]",
                    name,
                    key.span(),
                    format!("expected a table, got {}", self.describe(value)),
                ));
            };
            streamers.push(self.streamer(name, key.span(), table)?);
        }

        let telemetry = match find(root, "telemetry") {
            None => None,
            Some((key, value)) => match value.get_ref() {
                DeValue::Table(table) => self.telemetry(table)?,
                _ => return Err(self.not_a_table("[telemetry]", key, value)),
            },
        };

        let cosmos = match find(root, "cosmos") {
            None => CosmosConfig::default(),
            Some((key, value)) => match value.get_ref() {
                DeValue::Table(table) => self.cosmos(table)?,
                _ => return Err(self.not_a_table("[cosmos]", key, value)),
            },
        };

        let relay = match find(root, "relay") {
            None => None,
            Some((key, value)) => match value.get_ref() {
                DeValue::Table(table) => Some(self.relay(table)?),
                _ => return Err(self.not_a_table("[relay]", key, value)),
            },
        };

        let admin = match find(root, "admin") {
            None => None,
            Some((key, value)) => match value.get_ref() {
                DeValue::Table(table) => self.admin(table, key.span())?,
                _ => return Err(self.not_a_table("[admin]", key, value)),
            },
        };

        Ok(AppConfig {
            origin: self.origin.to_owned(),
            streamers,
            warnings,
            telemetry,
            shutdown_timeout,
            cosmos,
            relay,
            admin,
        })
    }

    /// Reads `[store] shutdown_timeout_ms` (or `shutdown-timeout-ms`).
    fn shutdown_timeout(&self, store: &DeTable<'_>) -> Result<Duration, ConfigError> {
        let found: Vec<_> = store
            .iter()
            .filter(|(key, _)| normalise_key(key.get_ref()) == "shutdown_timeout_ms")
            .collect();
        let (key, value) = match found.as_slice() {
            [] => return Ok(Duration::from_millis(DEFAULT_SHUTDOWN_TIMEOUT_MS)),
            [one] => *one,
            [_, (key, _), ..] => {
                return Err(self.key_error(
                    "[store]",
                    key.get_ref(),
                    key.span(),
                    "`shutdown_timeout_ms` is given twice (in its two spellings)".to_owned(),
                ));
            }
        };
        let described = self.describe(value);
        match integer(value).and_then(|n| u64::try_from(n).ok()) {
            Some(ms) if ms <= MAX_SHUTDOWN_TIMEOUT_MS => Ok(Duration::from_millis(ms)),
            _ => Err(self.key_error(
                "[store]",
                key.get_ref(),
                key.span(),
                format!(
                    "expected milliseconds, an integer from 0 to {MAX_SHUTDOWN_TIMEOUT_MS}, got {described}"
                ),
            )),
        }
    }

    /// Reads `[admin]`: `address`, `token_file`, `allowed_hosts`. An
    /// address without a token file is refused: the admin API always
    /// requires its token.
    fn admin(
        &self,
        table: &DeTable<'_>,
        span: std::ops::Range<usize>,
    ) -> Result<Option<AdminConfig>, ConfigError> {
        const TABLE: &str = "[admin]";
        let mut address = None;
        let mut token_file = None;
        let mut allowed_hosts = Vec::new();
        let mut tls_keys = TlsKeys::default();
        for (key, value) in table.iter() {
            let spelled = key.get_ref().as_ref();
            let error = |message: String| self.key_error(TABLE, spelled, key.span(), message);
            match spelled.replace('-', "_").as_str() {
                "address" => {
                    let parsed = value
                        .get_ref()
                        .as_str()
                        .and_then(|text| text.trim().parse::<SocketAddr>().ok());
                    let Some(addr) = parsed else {
                        return Err(error(format!(
                            "expected an IP address and a port such as \"127.0.0.1:9300\", got {}",
                            self.describe(value)
                        )));
                    };
                    address = Some((addr, self.index.line(key.span().start)));
                }
                "token_file" => match value.get_ref().as_str() {
                    Some(path) if !path.trim().is_empty() => {
                        token_file = Some(PathBuf::from(path));
                    }
                    _ => {
                        return Err(error(format!(
                            "expected the path of the file holding the admin token, got {}",
                            self.describe(value)
                        )));
                    }
                },
                "allowed_hosts" => {
                    allowed_hosts = self.allowed_hosts(value).map_err(error)?;
                }
                name @ ("tls_cert_file" | "tls_key_file" | "tls_client_ca_file") => {
                    self.tls_key(&mut tls_keys, name, spelled, key.span(), value)
                        .map_err(error)?;
                }
                _ => {
                    return Err(error(
                        "unknown key; [admin] has `address` (such as \"127.0.0.1:9300\"), \
                         `token_file`, `allowed_hosts`, `tls_cert_file`, `tls_key_file` and \
                         `tls_client_ca_file`"
                            .to_owned(),
                    ));
                }
            }
        }
        let tls = self.tls_config(TABLE, tls_keys)?;
        let Some((address, line)) = address else {
            return Ok(None);
        };
        let Some(token_file) = token_file else {
            return Err(self.key_error(
                TABLE,
                "address",
                span,
                "the admin API needs `token_file`, the file holding its token".to_owned(),
            ));
        };
        Ok(Some(AdminConfig {
            address,
            line: Some(line),
            token_file,
            allowed_hosts,
            tls,
        }))
    }

    /// Reads `[cosmos]`: `on_gap` is its only key.
    fn cosmos(&self, table: &DeTable<'_>) -> Result<CosmosConfig, ConfigError> {
        const TABLE: &str = "[cosmos]";
        let mut config = CosmosConfig::default();
        for (key, value) in table.iter() {
            let spelled = key.get_ref().as_ref();
            let error = |message: String| self.key_error(TABLE, spelled, key.span(), message);
            if spelled != "on_gap" {
                return Err(error(
                    "unknown key; statestream reads one key of [cosmos], `on_gap` \
                     (\"continue\" or \"halt\")"
                        .to_owned(),
                ));
            }
            config.on_gap = match value.get_ref().as_str() {
                Some("continue") => GapPolicy::Continue,
                Some("halt") => GapPolicy::Halt,
                _ => {
                    return Err(error(format!(
                        "expected \"continue\" or \"halt\", got {}",
                        self.describe(value)
                    )));
                }
            };
        }
        Ok(config)
    }

    /// One of `tls_cert_file`, `tls_key_file`, `tls_client_ca_file`
    /// (`name`): a non-empty path.
    fn tls_key(
        &self,
        keys: &mut TlsKeys,
        name: &str,
        spelled: &str,
        span: Range<usize>,
        value: &Value<'_>,
    ) -> Result<(), String> {
        let path = value
            .get_ref()
            .as_str()
            .filter(|text| !text.trim().is_empty())
            .ok_or_else(|| {
                format!(
                    "expected the path of a PEM file, got {}",
                    self.describe(value)
                )
            })?;
        let slot = match name {
            "tls_cert_file" => &mut keys.cert,
            "tls_key_file" => &mut keys.key,
            _ => &mut keys.client_ca,
        };
        *slot = Some((PathBuf::from(path), spelled.to_owned(), span));
        Ok(())
    }

    /// The TLS files of `table`: a certificate and its key, or neither (a
    /// client CA needs both).
    fn tls_config(&self, table: &str, keys: TlsKeys) -> Result<Option<ListenerTls>, ConfigError> {
        let TlsKeys {
            cert,
            key,
            client_ca,
        } = keys;
        match (cert, key) {
            (Some((cert_file, ..)), Some((key_file, ..))) => Ok(Some(ListenerTls {
                cert_file,
                key_file,
                client_ca_file: client_ca.map(|(path, ..)| path),
            })),
            (Some((_, spelled, span)), None) => Err(self.key_error(
                table,
                &spelled,
                span,
                "set tls_key_file too: a certificate needs its private key".to_owned(),
            )),
            (None, Some((_, spelled, span))) => Err(self.key_error(
                table,
                &spelled,
                span,
                "set tls_cert_file too: a key without a certificate serves nothing".to_owned(),
            )),
            (None, None) => match client_ca {
                Some((_, spelled, span)) => Err(self.key_error(
                    table,
                    &spelled,
                    span,
                    "client certificates need TLS: set tls_cert_file and tls_key_file too"
                        .to_owned(),
                )),
                None => Ok(None),
            },
        }
    }

    /// Reads `[telemetry]`: `address`, `max_connections`,
    /// `header_timeout_ms` and `allowed_hosts`. The Cosmos SDK's app.toml
    /// has a `[telemetry]` table of its own (its keys are in
    /// [`COSMOS_TELEMETRY_KEYS`]): those are left to the application, so an
    /// existing Cosmos app.toml runs unchanged; any other key is an error.
    fn telemetry(&self, table: &DeTable<'_>) -> Result<Option<TelemetryConfig>, ConfigError> {
        const TABLE: &str = "[telemetry]";
        let mut address = None;
        let mut max_connections = None;
        let mut header_timeout_ms = None;
        let mut allowed_hosts = Vec::new();
        let mut tls_keys = TlsKeys::default();
        for (key, value) in table.iter() {
            let spelled = key.get_ref().as_ref();
            let error = |message: String| self.key_error(TABLE, spelled, key.span(), message);
            if COSMOS_TELEMETRY_KEYS.contains(&spelled) {
                continue;
            }
            // As every statestream key: `-` or `_`.
            match spelled.replace('-', "_").as_str() {
                "address" => {
                    let parsed = value
                        .get_ref()
                        .as_str()
                        .and_then(|text| text.trim().parse::<SocketAddr>().ok());
                    let Some(addr) = parsed else {
                        return Err(error(format!(
                            "expected an IP address and a port such as \"127.0.0.1:9100\" \
                             (\"127.0.0.1:0\": a port the system chooses), got {}",
                            self.describe(value)
                        )));
                    };
                    address = Some((addr, self.index.line(key.span().start)));
                }
                "max_connections" => {
                    let n = self
                        .bounded_integer(value, MAX_TELEMETRY_CONNECTIONS)
                        .map_err(error)?;
                    max_connections = Some(
                        usize::try_from(n)
                            .map_err(|_| error(format!("too large for this machine: {n}")))?,
                    );
                }
                "header_timeout_ms" => {
                    let n = self
                        .bounded_integer(value, MAX_HEADER_TIMEOUT_MS)
                        .map_err(error)?;
                    header_timeout_ms = Some(n);
                }
                "allowed_hosts" => {
                    allowed_hosts = self.allowed_hosts(value).map_err(error)?;
                }
                name @ ("tls_cert_file" | "tls_key_file" | "tls_client_ca_file") => {
                    self.tls_key(&mut tls_keys, name, spelled, key.span(), value)
                        .map_err(error)?;
                }
                _ => {
                    return Err(error(
                        "unknown key; statestream reads `address` (such as \"127.0.0.1:9100\"), \
                         `max_connections`, `header_timeout_ms`, `allowed_hosts`, \
                         `tls_cert_file`, `tls_key_file` and `tls_client_ca_file` in \
                         [telemetry], and leaves the Cosmos SDK's own keys (`enabled`, \
                         `service-name`, ...) to the application"
                            .to_owned(),
                    ));
                }
            }
        }
        let tls = self.tls_config(TABLE, tls_keys)?;
        Ok(address.map(|(address, line)| TelemetryConfig {
            address,
            line: Some(line),
            max_connections,
            header_timeout_ms,
            allowed_hosts,
            tls,
        }))
    }

    /// An integer from 1 to `max` (a decimal string counts, as Cosmos
    /// reads them); the error is the message only.
    fn bounded_integer(&self, value: &Value<'_>, max: i128) -> Result<u64, String> {
        let described = self.describe(value);
        let number = match value.get_ref() {
            DeValue::Integer(_) => toml::Value::deserialize(ValueDeserializer::from(value.clone()))
                .ok()
                .and_then(|converted| converted.as_integer())
                .map(i128::from),
            DeValue::String(text) => parse_integer(text),
            _ => None,
        }
        .ok_or_else(|| format!("expected a positive integer, got {described}"))?;
        if number < 1 {
            return Err(format!(
                "expected a positive integer (at least 1), got {described}"
            ));
        }
        if number > max {
            return Err(format!("must be at most {max}, got {described}"));
        }
        u64::try_from(number).map_err(|_| format!("must be at most {max}, got {described}"))
    }

    /// Reads `allowed_hosts`: host names or IP addresses, without a port
    /// or a path; the error is the message only.
    fn allowed_hosts(&self, value: &Value<'_>) -> Result<Vec<String>, String> {
        let DeValue::Array(items) = value.get_ref() else {
            return Err(format!(
                "expected an array of host names such as [\"metrics.example.org\"], got {}",
                self.describe(value)
            ));
        };
        let mut hosts = Vec::new();
        for item in items.iter() {
            let Some(host) = item.get_ref().as_str() else {
                return Err(format!(
                    "expected an array of host names (strings), got {} in the array",
                    self.describe(item)
                ));
            };
            let bracketed_v6 = host.starts_with('[') && host.ends_with(']');
            let plain = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            let ip = host.parse::<std::net::IpAddr>().is_ok();
            if host != "*" && !plain && !ip && !bracketed_v6 {
                return Err(format!(
                    "{host:?} is not a host name: write a name or an IP address without a \
                     scheme, port or path (such as \"metrics.example.org\"), or \"*\" for any"
                ));
            }
            hosts.push(host.to_owned());
        }
        Ok(hosts)
    }

    /// The warning about `[streaming.abci]`, the Cosmos SDK v0.47+ table of
    /// ABCI listener plugins (go-plugin): it belongs in the chain's
    /// app.toml, where it launches `statestream cosmos-plugin`; recognised
    /// here so that a Cosmos app.toml given to statestream is not silently
    /// half-read.
    fn abci_warning(&self, root: &DeTable<'_>) -> Option<String> {
        let (_, streaming) = find(root, "streaming")?;
        let DeValue::Table(streaming) = streaming.get_ref() else {
            return None;
        };
        let (key, _) = find(streaming, "abci")?;
        Some(format!(
            "{}: [streaming.abci] (line {}): this table is ignored here: it belongs in a Cosmos \
             chain's app.toml, where it launches statestream as the chain's ABCI listener \
             plugin (COSMOS_SDK_ABCI=\"statestream cosmos-plugin --home DIR\", see \
             docs/cosmos.md); statestream's own out-of-process streamers are \
             `type = \"process\"` in a [streamers.<name>] table listed in [store] streamers \
             (see docs/plugin-protocol.md)",
            self.origin.display(),
            self.index.line(key.span().start)
        ))
    }

    /// Reads `[store] streamers`: the names, each with the span of the `streamers` key.
    fn listed_streamers(
        &self,
        store: &DeTable<'_>,
    ) -> Result<Vec<(String, Range<usize>)>, ConfigError> {
        let Some((key, value)) = find(store, "streamers") else {
            return Ok(Vec::new());
        };
        let error = |message: String| self.key_error("[store]", "streamers", key.span(), message);
        let DeValue::Array(items) = value.get_ref() else {
            return Err(error(format!(
                "expected an array of streamer names such as [\"file\"], got {}",
                self.describe(value)
            )));
        };
        let mut names: Vec<(String, Range<usize>)> = Vec::new();
        for item in items.iter() {
            let Some(name) = item.get_ref().as_str() else {
                return Err(error(format!(
                    "expected an array of streamer names (strings), got {} in the array",
                    self.describe(item)
                )));
            };
            check_name(name).map_err(|reason| error(format!("streamer name: {reason}")))?;
            if names.iter().any(|(listed, _)| listed == name) {
                return Err(error(format!("streamer `{name}` is listed twice")));
            }
            names.push((name.to_owned(), key.span()));
        }
        Ok(names)
    }

    /// Reads one listed `[streamers.<name>]` table.
    fn streamer(
        &self,
        name: &str,
        name_span: Range<usize>,
        table: &DeTable<'_>,
    ) -> Result<Entry, ConfigError> {
        let table_name = streamer_table(name);
        let table_line = Some(self.index.line(name_span.start));

        let mut type_name = None;
        let mut keys = None;
        let mut delivery = Delivery::default();
        let mut queue = DEFAULT_QUEUE;
        let mut stop_node_on_error = true;
        let mut values = toml::Table::new();
        let mut spellings: BTreeMap<String, Spelling> = BTreeMap::new();

        // Source order, so that a second spelling of a key is the one blamed.
        let mut entries: Vec<(&Key<'_>, &Value<'_>)> = table.iter().collect();
        entries.sort_by_key(|(key, _)| key.span().start);

        // Spelling conflicts first, so that they are reported before any
        // problem with the values of the two spellings.
        for (key, _) in &entries {
            let spelled = key.get_ref().as_ref();
            let canonical = normalise_key(spelled);
            if let Some(first) = spellings.get(&canonical) {
                let first_line = first.line.map_or(String::new(), |l| format!(" (line {l})"));
                return Err(self.key_error(
                    &table_name,
                    spelled,
                    key.span(),
                    format!(
                        "`{}`{first_line} and `{spelled}` are two spellings of the same key; \
                         keep one",
                        first.spelled
                    ),
                ));
            }
            let line = Some(self.index.line(key.span().start));
            spellings.insert(
                canonical,
                Spelling {
                    spelled: spelled.to_owned(),
                    line,
                },
            );
        }

        for (key, value) in entries {
            let spelled = key.get_ref().as_ref();
            let canonical = normalise_key(spelled);
            let line = self.index.line(key.span().start);
            let error = |message: String| self.key_error(&table_name, spelled, key.span(), message);
            match canonical.as_str() {
                "type" => match value.get_ref().as_str() {
                    Some(type_str) if !type_str.trim().is_empty() => {
                        type_name = Some(type_str.to_owned());
                    }
                    _ => {
                        return Err(error(format!(
                            "expected a non-empty string naming the streamer type, got {}",
                            self.describe(value)
                        )));
                    }
                },
                "keys" => keys = Some((self.keys(value).map_err(error)?, Some(line))),
                "delivery" => {
                    delivery = match value.get_ref().as_str() {
                        Some("sync") => Delivery::Sync,
                        Some("async") => Delivery::Async,
                        _ => {
                            return Err(error(format!(
                                "expected one of \"sync\", \"async\", got {}",
                                self.describe(value)
                            )));
                        }
                    }
                }
                "queue" => queue = self.queue(value).map_err(error)?,
                "stop_node_on_error" => {
                    // As Cosmos reads it: a boolean, or a string Go's
                    // strconv.ParseBool accepts (its template writes "true").
                    let flag = match value.get_ref() {
                        DeValue::Boolean(flag) => Some(*flag),
                        DeValue::String(text) => parse_bool(text),
                        _ => None,
                    };
                    match flag {
                        Some(flag) => stop_node_on_error = flag,
                        None => return Err(error(not_a_bool(&self.describe(value)))),
                    }
                }
                _ => {
                    // Only the top-level key is normalised: nested tables may be
                    // data (environment variables, headers) whose keys must stay.
                    let converted =
                        toml::Value::deserialize(ValueDeserializer::from(value.clone()))
                            .map_err(|e| error(format!("invalid value: {}", e.message())))?;
                    values.insert(canonical, converted);
                }
            }
        }

        let Some((keys, keys_line)) = keys else {
            return Err(ConfigError::Key {
                path: self.origin.to_owned(),
                table: table_name,
                key: "keys".to_owned(),
                line: table_line,
                message: "missing: every streamer needs `keys`: store names, [\"*\"] for all \
                          stores, or [] to turn it off"
                    .to_owned(),
            });
        };

        // Only the type-specific keys are the streamer's to report on, and
        // `type`: an unknown type is found later, by the registry, and its
        // error must point at the key's own line, not the table's.
        spellings.retain(|canonical, _| values.contains_key(canonical) || canonical == "type");
        let options = StreamerOptions::from_parts(
            self.origin.to_owned(),
            name.to_owned(),
            table_line,
            values,
            spellings,
        );
        Ok(Entry {
            name: name.to_owned(),
            type_name: type_name.unwrap_or_else(|| name.to_owned()),
            keys,
            keys_line,
            delivery,
            queue,
            stop_node_on_error,
            options,
        })
    }

    /// Reads `keys`; the error is the message only.
    fn keys(&self, value: &Value<'_>) -> Result<Keys, String> {
        let DeValue::Array(items) = value.get_ref() else {
            return Err(format!(
                "expected an array of store names such as [\"*\"] or [\"bank\", \"acc\"], got {}",
                self.describe(value)
            ));
        };
        let mut names: Vec<String> = Vec::new();
        for item in items.iter() {
            let Some(name) = item.get_ref().as_str() else {
                return Err(format!(
                    "expected an array of store names (strings), got {} in the array",
                    self.describe(item)
                ));
            };
            if names.iter().any(|listed| listed == name) {
                return Err(format!("store `{name}` is listed twice"));
            }
            if name != "*" {
                check_name(name).map_err(|reason| format!("store name: {reason}"))?;
            }
            names.push(name.to_owned());
        }
        Ok(match names.as_slice() {
            [] => Keys::Off,
            [all] if all == "*" => Keys::All,
            _ if names.iter().any(|name| name == "*") => {
                return Err("`*` (every store) cannot be combined with store names".to_owned());
            }
            _ => Keys::Names(names),
        })
    }

    /// Reads `queue`; the error is the message only.
    fn queue(&self, value: &Value<'_>) -> Result<usize, String> {
        let described = self.describe(value);
        let number = integer(value)
            .ok_or_else(|| format!("expected a positive integer, got {described}"))?;
        match usize::try_from(number) {
            Ok(0) | Err(_) if number < 1 => Err(format!(
                "expected a positive integer (at least 1), got {described}"
            )),
            Ok(queue) if queue <= MAX_QUEUE => Ok(queue),
            _ => Err(format!("must be at most {MAX_QUEUE}, got {described}")),
        }
    }

    fn describe(&self, value: &Value<'_>) -> String {
        describe(
            value.get_ref().type_str(),
            &self.index.excerpt(value.span()),
        )
    }

    fn key_error(
        &self,
        table: &str,
        key: &str,
        span: Range<usize>,
        message: String,
    ) -> ConfigError {
        ConfigError::Key {
            path: self.origin.to_owned(),
            table: table.to_owned(),
            key: key.to_owned(),
            line: Some(self.index.line(span.start)),
            message,
        }
    }

    fn not_a_table(&self, table: &str, key: &Key<'_>, value: &Value<'_>) -> ConfigError {
        ConfigError::Table {
            path: self.origin.to_owned(),
            table: table.to_owned(),
            line: Some(self.index.line(key.span().start)),
            message: format!("expected a table, got {}", self.describe(value)),
        }
    }
}

/// An integer value of a common key: a TOML integer, or as Cosmos reads it,
/// a decimal string is the integer it spells.
fn integer(value: &Value<'_>) -> Option<i128> {
    match value.get_ref() {
        DeValue::Integer(_) => toml::Value::deserialize(ValueDeserializer::from(value.clone()))
            .ok()
            .and_then(|converted| converted.as_integer())
            .map(i128::from),
        DeValue::String(text) => parse_integer(text),
        _ => None,
    }
}

/// The entry of `table` whose key is exactly `name`.
fn find<'t, 'i>(table: &'t DeTable<'i>, name: &str) -> Option<(&'t Key<'i>, &'t Value<'i>)> {
    table.iter().find(|(key, _)| key.get_ref() == name)
}
