//! `statestream init`: writes a commented default `HOME/config/app.toml`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::node::HOME_CONFIG;

/// The built-in default configuration, every key written out at its default
/// value with a comment, in the style of the Cosmos SDK's app.toml template;
/// then every other built-in streamer type as a commented-out example table.
/// The node runs on it when there is neither `--config` nor
/// `HOME/config/app.toml`.
pub const TEMPLATE: &str = r##"###############################################################################
###                     State Streaming (statestream)                       ###
###############################################################################

# statestream reads only [store] streamers, the [streamers.<name>] tables and
# [telemetry] of this file; every other table belongs to the rest of the
# node. Each key below is written at its default value. Every key may be
# spelled with `-` or `_` (output-metadata or output_metadata). As in the
# Cosmos SDK, a boolean may also be a string ("true", "false", "1", "0", ...)
# and an integer a decimal string. The keys are documented in docs/config.md.

[store]

# streamers lists the [streamers.<name>] tables that run, in this order. A
# table that is not listed here is disabled.
streamers = ["file"]

[streamers]

[streamers.file]

# keys lists the stores whose changes the streamer receives: ["*"] for every
# store, store names such as ["bank", "acc"], or [] to turn the streamer off.
keys = ["*"]

# type is the streamer type: "file", "log", "process", "nats", or a type the
# application registered. Its default is the table name, so two tables of one
# type can run side by side.
type = "file"

# write_dir is the directory the block files go to; a relative path is under
# the node's home. It is created when missing.
write_dir = "data/streaming"

# prefix is put in front of every file name, followed by "-":
# prefix = "bank" writes bank-block-N-data. Empty: no prefix.
prefix = ""

# output-metadata also writes block-N-meta files (block time, transactions,
# commit info, store hashes, length and CRC-32C of the data), which
# `statestream verify` checks.
output-metadata = true

# stop-node-on-error: true stops the node before its next block when a block
# cannot be delivered; false logs the error and delivers the block again
# later. Either way no block is skipped.
stop-node-on-error = true

# fsync: true makes each block's files durable before the next block; false
# syncs them in the background, and the streamer's cursor only covers synced
# blocks, so a power loss costs a rewrite, never a block.
fsync = false

# delivery: "async" delivers on the streamer's own thread through a bounded
# queue, so commits never wait (a streamer that falls behind catches up from
# the store's change log); "sync" delivers inside the commit.
delivery = "async"

# queue is how many blocks are buffered in memory for an async streamer.
queue = 64

###############################################################################
###                  Other streamer types (examples, disabled)              ###
###############################################################################

# To run one: remove the leading "# " of its table and add its name to
# [store] streamers above.

# type = "log": one log line per block (height, records, bytes, app hash).
# [streamers.log]
# type = "log"
# keys = ["*"]
# every = 1                          # log one block in this many

# type = "process": a program in any language, fed the blocks on its stdin
# (docs/plugin-protocol.md). The program is run as it is, with no shell.
# working_dir (default: the node's current directory; a relative path is
# under the node's home) sets its working directory.
# [streamers.indexer]
# type = "process"
# keys = ["*"]
# command = ["python3", "examples/plugins/indexer.py", "index.jsonl"]
# env = {}                           # its environment variables (of the node's
#                                    # own it gets only PATH, HOME, LANG, ...)
# timeout_ms = 10000                 # to read and acknowledge one block
# handshake_timeout_ms = 10000       # to answer the handshake
# close_timeout_ms = 5000            # to exit at shutdown
# restart_backoff_ms = 100           # first pause before a restart
# restart_backoff_max_ms = 10000     # longest pause between restarts
# max_frame_bytes = 67108864         # largest block sent; raise the plugin's too

# type = "nats": one message per block to a NATS JetStream stream
# (docs/nats.md), on the official async-nats client. Several servers of a
# cluster: url = "nats://a:4222,nats://b:4222". TLS: tls:// URLs,
# tls_ca_file, tls_cert_file + tls_key_file, tls_required. Authentication:
# token, user and password, creds_file (.creds) or nkey_seed_file.
# [streamers.nats]
# type = "nats"
# keys = ["*"]
# url = "nats://127.0.0.1:4222"
# stream = "statestream"
# subject = "statestream"            # blocks go to <subject>.blocks
# connect_timeout_ms = 5000
# request_timeout_ms = 5000
# create_stream = true               # create the stream when missing
# duplicate_window_ms = 120000       # deduplication window of that stream
# replicas = 1                       # replicas of that stream
# tls_required = false               # refuse a connection without TLS

# type = "webhook": an HTTP request per change (or per block) with a
# delivery policy and Standard Webhooks signatures (docs/webhook.md).
# [streamers.hook]
# type = "webhook"
# keys = ["*"]
# url = "http://127.0.0.1:8080/hooks/{store}"
# method = "POST"
# batch = "change"                   # or "block": one request per block
# envelope = true                    # false: the body is the raw value
# document = true                    # the envelope carries the value
# secrets = []                       # "whsec_..." secrets: signatures
# retry_schedule_ms = [0, 5000, 300000, 1800000, 7200000, 18000000, 36000000]
# timeout_ms = 15000
# on_exhausted = "halt"              # or "dead-letter" (dead_letter_dir)

# type = "postgres": each block and this streamer's cursor in one SQL
# transaction, so every block is in the database exactly once
# (docs/postgres.md). Password: in the URL, password_file or PGPASSWORD.
# [streamers.pg]
# type = "postgres"
# keys = ["*"]
# url = "postgresql://statestream@127.0.0.1:5432/statestream"
# schema = "statestream"
# tables = "both"                    # "changes", "state" or "both"
# create_schema = true               # create the schema and tables when missing
# notify = true                      # NOTIFY statestream_<schema>, '<height>'
# tls = "prefer"                     # "disable", "prefer" or "require"

# type = "serve": consumers subscribe over gRPC (snapshot, resume by height,
# live blocks; statestream's own service and datastream's DataService) and
# over HTTP server-sent events (docs/serve.md).
# [streamers.serve]
# type = "serve"
# keys = ["*"]
# grpc_address = "127.0.0.1:9090"    # loopback unless other machines subscribe
# http_address = "127.0.0.1:8080"    # server-sent events: GET /stream, /snapshot
# token = ""                         # set: every call needs "Bearer <token>"
# retain_blocks = 10000              # history kept for resuming by height
# heartbeat_ms = 10000
# max_subscribers = 1024
# push_updates = false               # accept PushUpdate writes
###############################################################################
###                          Telemetry (disabled)                           ###
###############################################################################

# address is where the node serves GET /metrics (Prometheus), GET /status
# (JSON) and GET /healthz; unset: off. Port 0 lets the system choose one (the
# node logs it). Keep it on loopback unless other machines must reach it: it
# has no authentication. Metrics and alerts: docs/operations.md.
# The listener closes a connection beyond max_connections at once, and a
# client that has not sent a request head within header_timeout_ms; it
# answers 421 to a Host header other than localhost, 127.0.0.1, [::1], the
# address's IP and allowed_hosts (against DNS rebinding).
# [telemetry]
# address = "127.0.0.1:9100"
# max_connections = 256
# header_timeout_ms = 10000
# allowed_hosts = []
"##;

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The node's home: writes HOME/config/app.toml (directories created
    /// when missing).
    #[arg(long, value_name = "DIR")]
    home: PathBuf,

    /// Overwrite an existing HOME/config/app.toml.
    #[arg(long)]
    force: bool,
}

pub fn run(args: InitArgs, quiet: bool) -> Result<ExitCode> {
    let path = args.home.join(HOME_CONFIG);
    if !args.force && (path.exists() || path.is_symlink()) {
        bail!(
            "{}: the file exists; `statestream init --force` overwrites it",
            path.display()
        );
    }
    let dir = path
        .parent()
        .context("the config path has no parent directory")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    // Written under a temporary name and renamed: an interrupted init leaves
    // no half-written app.toml for the node to read.
    let mut file = tempfile::Builder::new()
        .prefix(".app.toml.")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write to {}", dir.display()))?;
    file.write_all(TEMPLATE.as_bytes())
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.persist(&path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if !quiet {
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use statestream::StreamerContext;
    use statestream_config::AppConfig;
    use statestream_store::StoreKey;

    use super::*;
    use crate::workload::STORE_NAMES;

    /// The commented-out example tables of the template, uncommented: (table
    /// name, its lines).
    fn examples() -> Vec<(String, String)> {
        let mut examples: Vec<(String, String)> = Vec::new();
        // Whether the lines read are inside an example table; a line that
        // is not commented out ends it.
        let mut open = false;
        for line in TEMPLATE.lines() {
            let Some(code) = line.strip_prefix("# ") else {
                open = false;
                continue;
            };
            if let Some(name) = code
                .strip_prefix("[streamers.")
                .and_then(|rest| rest.strip_suffix(']'))
            {
                examples.push((name.to_owned(), format!("{code}\n")));
                open = true;
            } else if open && let Some((_, table)) = examples.last_mut() {
                table.push_str(code);
                table.push('\n');
            }
        }
        examples
    }

    #[test]
    fn init_template_is_the_default_with_every_key_commented() {
        let config = AppConfig::parse(TEMPLATE, Path::new("app.toml")).unwrap();
        assert!(config.warnings().is_empty());
        let specs = config.resolve(&STORE_NAMES).unwrap();
        let [spec] = specs.as_slice() else {
            panic!("one streamer expected, got {specs:?}");
        };
        assert_eq!(spec.type_name, "file");
        assert_eq!(spec.queue, statestream_config::DEFAULT_QUEUE);
        assert_eq!(spec.delivery, statestream_config::Delivery::Async);
        assert!(spec.stop_node_on_error);
        let file: statestream_file::FileStreamerConfig = spec.options.parse().unwrap();
        assert_eq!(file, statestream_file::FileStreamerConfig::default());

        // Every key of the default table is written out, each after a comment.
        let lines: Vec<&str> = TEMPLATE.lines().collect();
        for key in [
            "streamers",
            "keys",
            "type",
            "write_dir",
            "prefix",
            "output-metadata",
            "stop-node-on-error",
            "fsync",
            "delivery",
            "queue",
        ] {
            let at = lines
                .iter()
                .position(|line| line.starts_with(&format!("{key} = ")))
                .unwrap_or_else(|| panic!("`{key}` is not written out"));
            assert!(lines[at - 1].starts_with("# "), "`{key}` has no comment");
        }
    }

    #[test]
    fn init_telemetry_example_parses() {
        let at = TEMPLATE.find("# [telemetry]\n").unwrap();
        let text: String = TEMPLATE[at..]
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .collect::<Vec<_>>()
            .join("\n");
        let config = AppConfig::parse(&text, Path::new("app.toml")).unwrap();
        assert_eq!(
            config.telemetry().unwrap().address,
            "127.0.0.1:9100".parse().unwrap()
        );
        // Written at the listener's defaults.
        let telemetry = config.telemetry().unwrap();
        assert_eq!(
            telemetry.max_connections,
            Some(statestream_net::DEFAULT_MAX_CONNECTIONS)
        );
        assert_eq!(
            telemetry
                .header_timeout_ms
                .map(std::time::Duration::from_millis),
            Some(statestream_net::DEFAULT_HEADER_TIMEOUT)
        );
        assert!(telemetry.allowed_hosts.is_empty());
        let default = AppConfig::parse(TEMPLATE, Path::new("app.toml")).unwrap();
        assert!(default.telemetry().is_none());
    }

    #[test]
    fn init_examples_cover_every_other_type_and_parse() {
        let examples = examples();
        let registry = crate::node::registry();
        let mut covered: Vec<String> = Vec::new();
        let home = tempfile::tempdir().unwrap();
        for (name, table) in &examples {
            let text = format!("[store]\nstreamers = [\"{name}\"]\n\n{table}");
            let config = AppConfig::parse(&text, Path::new("example")).unwrap();
            let specs = config.resolve(&STORE_NAMES).unwrap();
            let spec = &specs[0];
            match spec.type_name.as_str() {
                // Parsed, not built: building it would listen on its port.
                "serve" => {
                    let serve: statestream_serve::ServeConfig = spec.options.parse().unwrap();
                    let expected = statestream_serve::ServeConfig {
                        grpc_address: Some("127.0.0.1:9090".into()),
                        http_address: Some("127.0.0.1:8080".into()),
                        ..statestream_serve::ServeConfig::default()
                    };
                    assert_eq!(serve, expected);
                }
                "nats" => {
                    let nats: statestream_nats::NatsStreamerConfig = spec.options.parse().unwrap();
                    assert_eq!(nats, statestream_nats::NatsStreamerConfig::default());
                }
                "process" => {
                    let process: statestream::ProcessStreamerConfig = spec.options.parse().unwrap();
                    assert!(!process.command.is_empty());
                }
                _ => {
                    let stores: Vec<StoreKey> = STORE_NAMES
                        .iter()
                        .map(|s| StoreKey::new(s).unwrap())
                        .collect();
                    let ctx = StreamerContext {
                        name: name.as_str(),
                        stores: &stores,
                        all_stores: &stores,
                        home: home.path(),
                        reader: None,
                        shutdown: &statestream_core::Shutdown::default(),
                        push: None,
                    };
                    registry
                        .build(&spec.type_name, &ctx, &spec.options)
                        .unwrap();
                }
            }
            covered.push(spec.type_name.clone());
        }
        for type_name in registry.types() {
            assert!(
                type_name == "file" || covered.iter().any(|c| c == type_name),
                "built-in type `{type_name}` has no example table in the template"
            );
        }
    }
}
