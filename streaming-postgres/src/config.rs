//! The options of `type = "postgres"`, which build the streamer.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use statestream_config::{ConfigError, StreamerOptions};
use statestream_core::{StoreKey, StreamerContext};

use crate::connect::{ConnectSettings, describe_target};
use crate::schema::{MAX_SCHEMA_LEN, check_schema_name};
use crate::streamer::PostgresStreamer;

/// The streamer type name this crate registers.
pub const POSTGRES_TYPE: &str = "postgres";

/// The environment variable read for the password when neither the URL nor
/// `password_file` gives one (as libpq does).
pub const PASSWORD_ENV: &str = "PGPASSWORD";

/// Which tables the streamer fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tables {
    /// `changes`: every record of every block (the history).
    Changes,
    /// `state`: the current value of every key.
    State,
    /// Both `changes` and `state`.
    Both,
}

impl Tables {
    /// Whether the `changes` table is written.
    pub fn changes(self) -> bool {
        matches!(self, Tables::Changes | Tables::Both)
    }

    /// Whether the `state` table is written.
    pub fn state(self) -> bool {
        matches!(self, Tables::State | Tables::Both)
    }
}

/// Whether and how the connection is encrypted (TLS by rustls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, plain otherwise.
    Prefer,
    /// TLS or no connection.
    Require,
}

/// The options of a `[streamers.<name>]` table with `type = "postgres"`
/// (the common keys `type`, `keys`, `delivery`, `queue` and
/// `stop-node-on-error` are read by `statestream-config`). Keys may be
/// written with hyphens or underscores.
///
/// ```toml
/// [streamers.pg]
/// type = "postgres"
/// keys = ["*"]
/// url = "postgresql://statestream@127.0.0.1:5432/statestream"
/// schema = "statestream"
/// tables = "both"
/// create_schema = true
/// notify = true
/// tls = "prefer"
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresStreamerConfig {
    /// The server and database: a URL (`postgresql://user:password@host:port/db`)
    /// or a libpq key=value string (`host=... user=... dbname=...`).
    /// Default `"postgresql://statestream@127.0.0.1:5432/statestream"`.
    #[serde(default = "default_url")]
    pub url: String,
    /// The schema holding the tables; also names the NOTIFY channel
    /// `statestream_<schema>`. Lower-case letters, digits and `_`, starting
    /// with a letter or `_`, at most 51 bytes. Default `"statestream"`.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// `"changes"` (the history), `"state"` (the current state) or
    /// `"both"`. The `blocks` and `cursors` tables are always written.
    /// Default `"both"`.
    #[serde(default = "default_tables")]
    pub tables: Tables,
    /// Create the schema and the tables when they are missing. With
    /// `false` they must exist. Either way existing tables are checked
    /// column by column. Default `true`.
    #[serde(default = "yes")]
    pub create_schema: bool,
    /// `NOTIFY statestream_<schema>, '<height>'` in each block's
    /// transaction (delivered to listeners when it commits). Default `true`.
    #[serde(default = "yes")]
    pub notify: bool,
    /// `"disable"`, `"prefer"` (TLS when the server offers it) or
    /// `"require"`. Without `ca_file` the server's certificate is not
    /// verified (libpq's `require`); with it, the chain must lead to
    /// `ca_file`, or the certificate be one of `ca_file`'s own (pinned),
    /// and name the host (libpq's `verify-full`). Default
    /// `"prefer"`.
    #[serde(default = "default_tls")]
    pub tls: TlsMode,
    /// PEM file of the certificate authorities to verify the server's
    /// certificate with, or of the server's own self-signed certificate
    /// (relative paths are under the node's home). Default: none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A file holding the password (its first line; relative paths are
    /// under the node's home), when the URL has none. Without either, the
    /// environment variable `PGPASSWORD` is used when set. Default: none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Timeout of the TCP connection and the login, in milliseconds.
    /// Default 5000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The session's `statement_timeout` and `lock_timeout`, in
    /// milliseconds: a statement that runs (or waits for a lock held by
    /// another session) longer fails, and the block is tried again. At
    /// least 1. Default 30000.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
}

impl std::fmt::Debug for PostgresStreamerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password a URL may hold.
        let url = match postgres::Config::from_str(&self.url) {
            Ok(c) => describe_target(&c),
            Err(_) => "<unparsed>".to_string(),
        };
        f.debug_struct("PostgresStreamerConfig")
            .field("url", &url)
            .field("schema", &self.schema)
            .field("tables", &self.tables)
            .field("create_schema", &self.create_schema)
            .field("notify", &self.notify)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("password_file", &self.password_file)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .finish()
    }
}

fn default_url() -> String {
    "postgresql://statestream@127.0.0.1:5432/statestream".to_string()
}

fn default_schema() -> String {
    "statestream".to_string()
}

fn default_tables() -> Tables {
    Tables::Both
}

fn default_tls() -> TlsMode {
    TlsMode::Prefer
}

fn default_connect_timeout_ms() -> u64 {
    5000
}

fn default_statement_timeout_ms() -> u64 {
    30_000
}

/// The largest `statement_timeout_ms`: PostgreSQL's settings are 32-bit.
const MAX_STATEMENT_TIMEOUT_MS: u64 = i32::MAX as u64;

/// TCP keepalives, unless the URL sets libpq's parameter of the same
/// name: a server that vanished (a partition, a powered-off host) is
/// noticed after about a minute instead of the system's two hours.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVES_RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged before the connection is
/// dropped (Linux), unless the URL sets `tcp_user_timeout`.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

fn yes() -> bool {
    true
}

impl Default for PostgresStreamerConfig {
    fn default() -> Self {
        PostgresStreamerConfig {
            url: default_url(),
            schema: default_schema(),
            tables: default_tables(),
            create_schema: true,
            notify: true,
            tls: default_tls(),
            ca_file: None,
            password_file: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            statement_timeout_ms: default_statement_timeout_ms(),
        }
    }
}

impl PostgresStreamerConfig {
    /// Checks the options and resolves what they name (the URL, the
    /// password, the CA file) into connection settings. `home` is the
    /// directory relative paths are under. `Err((key, message))` names the
    /// bad key.
    pub(crate) fn settings(
        &self,
        home: &std::path::Path,
    ) -> Result<ConnectSettings, (&'static str, String)> {
        check_schema_name(&self.schema).map_err(|m| ("schema", m))?;
        if self.connect_timeout_ms == 0 {
            return Err(("connect_timeout_ms", "must be at least 1".into()));
        }
        if !(1..=MAX_STATEMENT_TIMEOUT_MS).contains(&self.statement_timeout_ms) {
            return Err((
                "statement_timeout_ms",
                format!("must be between 1 and {MAX_STATEMENT_TIMEOUT_MS}"),
            ));
        }
        let mut config = postgres::Config::from_str(&self.url).map_err(|e| {
            (
                "url",
                format!("not a PostgreSQL URL or key=value connection string: {e}"),
            )
        })?;
        if config.get_hosts().is_empty() {
            return Err(("url", "names no host".into()));
        }
        if config.get_user().is_none() {
            return Err(("url", "names no user".into()));
        }
        if let Some(file) = &self.password_file {
            if config.get_password().is_some() {
                return Err((
                    "password_file",
                    "the URL has a password already: give one or the other".into(),
                ));
            }
            let path = home.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                (
                    "password_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let password = text.lines().next().unwrap_or("");
            if password.is_empty() {
                return Err(("password_file", format!("{} is empty", path.display())));
            }
            config.password(password);
        } else if config.get_password().is_none()
            && let Ok(password) = std::env::var(PASSWORD_ENV)
            && !password.is_empty()
        {
            config.password(password);
        }
        config.connect_timeout(Duration::from_millis(self.connect_timeout_ms));
        // What the URL sets stays; the rest gets values that notice a dead
        // server in about a minute.
        config.keepalives(true);
        let set_in_url = |name: &str| self.url.contains(name);
        if !set_in_url("keepalives_idle") {
            config.keepalives_idle(KEEPALIVES_IDLE);
        }
        if !set_in_url("keepalives_interval") {
            config.keepalives_interval(KEEPALIVES_INTERVAL);
        }
        if !set_in_url("keepalives_retries") {
            config.keepalives_retries(KEEPALIVES_RETRIES);
        }
        if !set_in_url("tcp_user_timeout") {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        config.ssl_mode(match self.tls {
            TlsMode::Disable => postgres::config::SslMode::Disable,
            TlsMode::Prefer => postgres::config::SslMode::Prefer,
            TlsMode::Require => postgres::config::SslMode::Require,
        });
        if config.get_application_name().is_none() {
            config.application_name("statestream");
        }
        let ca = match &self.ca_file {
            Some(_) if self.tls == TlsMode::Disable => {
                return Err(("ca_file", "is set but tls = \"disable\"".into()));
            }
            Some(file) => Some(home.join(file)),
            None => None,
        };
        let tls = match self.tls {
            TlsMode::Disable => None,
            _ => Some(crate::connect::tls_config(ca.as_deref()).map_err(|e| ("ca_file", e))?),
        };
        Ok(ConnectSettings::new(
            config,
            tls,
            ca,
            Duration::from_millis(self.statement_timeout_ms),
        ))
    }

    /// Checks the options as [`build`](PostgresStreamerConfig::build)
    /// does, naming the bad key of `options` (the table they were parsed
    /// from): it reads `password_file` and `ca_file` but connects to
    /// nothing.
    pub fn validate(
        &self,
        ctx: &StreamerContext<'_>,
        options: &StreamerOptions,
    ) -> Result<(), ConfigError> {
        self.settings(ctx.home)
            .map(drop)
            .map_err(|(key, message)| options.error(key, message))
    }

    /// Where the streamer `name` writes the changes of `stores`, one key
    /// per server of `url` (host, port, database): its cursor row, and per
    /// store the rows of each table it fills. Streamers sharing a schema
    /// share no key as long as they fill different stores' rows (the
    /// `blocks` rows are meant to be shared). Empty when `url` does not
    /// parse ([`validate`](PostgresStreamerConfig::validate) reports that).
    pub fn destinations(&self, name: &str, stores: &[StoreKey]) -> Vec<String> {
        let Ok(config) = postgres::Config::from_str(&self.url) else {
            return Vec::new();
        };
        let ports = config.get_ports();
        let database = config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or_default();
        let schema = &self.schema;
        let mut out = Vec::new();
        for (i, host) in config.get_hosts().iter().enumerate() {
            let port = match ports {
                [] => 5432,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(5432),
            };
            let host = match host {
                postgres::config::Host::Tcp(h) => h.to_ascii_lowercase(),
                #[cfg(unix)]
                postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            let at = format!("PostgreSQL {host}:{port}/{database}, schema {schema}");
            out.push(format!("{at}, cursor row {name:?}"));
            for (table, written) in [
                ("changes", self.tables.changes()),
                ("state", self.tables.state()),
            ] {
                if written {
                    out.extend(stores.iter().map(|store| {
                        format!("{at}, table {table} rows of store {:?}", store.name())
                    }));
                }
            }
        }
        out
    }

    /// Checks the options and builds the streamer. It connects in
    /// `on_start`; a server that cannot be reached then is tried again at
    /// each block (a node starts while its database is down, its blocks
    /// wait in the change log), while any other failure (a refused login,
    /// a missing database, a conflicting table) stops the start.
    /// `options` is the table it was parsed from, for errors that name it.
    pub fn build(
        &self,
        ctx: &StreamerContext<'_>,
        options: &StreamerOptions,
    ) -> Result<PostgresStreamer, ConfigError> {
        // The checks of `validate`, keeping what they resolved.
        let settings = self
            .settings(ctx.home)
            .map_err(|(key, message)| options.error(key, message))?;
        Ok(PostgresStreamer::new(
            ctx.name,
            ctx.shutdown.clone(),
            settings,
            self.schema.clone(),
            self.tables,
            self.create_schema,
            self.notify,
        ))
    }
}

const _: () = assert!(MAX_SCHEMA_LEN + "statestream_".len() <= 63);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, schema: &str, tables: Tables) -> PostgresStreamerConfig {
        PostgresStreamerConfig {
            url: url.to_string(),
            schema: schema.to_string(),
            tables,
            ..PostgresStreamerConfig::default()
        }
    }

    fn stores(names: &[&str]) -> Vec<StoreKey> {
        names
            .iter()
            .map(|n| StoreKey::new(n).expect("store name"))
            .collect()
    }

    fn shares(
        a: (&PostgresStreamerConfig, &str, &[&str]),
        b: (&PostgresStreamerConfig, &str, &[&str]),
    ) -> bool {
        let b = b.0.destinations(b.1, &stores(b.2));
        a.0.destinations(a.1, &stores(a.2))
            .iter()
            .any(|d| b.contains(d))
    }

    #[test]
    fn destinations_are_cursor_rows_and_store_rows_per_schema() {
        let url = "postgresql://u:secret@DB.example:5433/app";
        let both = config(url, "s", Tables::Both);
        assert!(
            both.destinations("pg", &stores(&["bank"]))
                .iter()
                .all(|d| d.contains("db.example:5433/app, schema s") && !d.contains("secret")),
            "{:?}",
            both.destinations("pg", &stores(&["bank"]))
        );
        // One store into one schema twice: the same rows.
        assert!(shares(
            (&both, "a", &["bank"]),
            (&both, "b", &["acc", "bank"])
        ));
        // The same name in one schema: one cursor row.
        assert!(shares((&both, "a", &["bank"]), (&both, "a", &["acc"])));
        // Other stores, another table, another schema, another database:
        // allowed side by side.
        assert!(!shares((&both, "a", &["bank"]), (&both, "b", &["acc"])));
        let changes = config(url, "s", Tables::Changes);
        let state = config(url, "s", Tables::State);
        assert!(!shares(
            (&changes, "a", &["bank"]),
            (&state, "b", &["bank"])
        ));
        assert!(!shares(
            (&both, "a", &["bank"]),
            (&config(url, "t", Tables::Both), "b", &["bank"])
        ));
        let other_db = config("postgresql://u@db.example:5433/other", "s", Tables::Both);
        assert!(!shares(
            (&both, "a", &["bank"]),
            (&other_db, "b", &["bank"])
        ));
        // The database defaults to the user's name, as in libpq.
        let implicit = config("host=db.example port=5433 user=app", "s", Tables::Both);
        assert!(shares((&both, "a", &["bank"]), (&implicit, "b", &["bank"])));
    }
}
