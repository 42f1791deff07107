//! `statestream node`: the demo node.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use statestream::to_hex;
use statestream::{
    Block, DeliveryManager, PushQueue, Registry, StreamError, Streamer, StreamerStats,
    TelemetryOptions, TelemetryServer,
};
use statestream_config::{AppConfig, StreamerSpec};
use statestream_serve::{SERVE_TYPE, ServeConfig};
use statestream_store::{CommitInfo, MultiStore, StoreKey, StoreOptions, WriteListener};

use crate::workload::{self, STORE_NAMES, Stores};

/// The configuration used without `--config` when `HOME/config/app.toml`
/// does not exist, and what `statestream init` writes: one file streamer,
/// every store, `HOME/data/streaming`, with metadata files.
pub const DEFAULT_APP_TOML: &str = crate::init::TEMPLATE;

/// Where a node's home keeps its app.toml.
pub const HOME_CONFIG: &str = "config/app.toml";

/// Exit code of a node stopped at once by a second signal.
pub const EXIT_SECOND_SIGNAL: u8 = 130;

/// Where the configuration comes from: `--config FILE`, else
/// `HOME/config/app.toml` when it exists, else the built-in default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config FILE`.
    Flag(PathBuf),
    /// `HOME/config/app.toml`.
    Home(PathBuf),
    /// [`DEFAULT_APP_TOML`].
    BuiltIn,
}

impl ConfigSource {
    /// Looks the configuration up for a node whose home is `home`.
    pub fn locate(config: Option<&Path>, home: &Path) -> ConfigSource {
        if let Some(path) = config {
            return ConfigSource::Flag(path.to_owned());
        }
        let path = home.join(HOME_CONFIG);
        if path.exists() {
            ConfigSource::Home(path)
        } else {
            ConfigSource::BuiltIn
        }
    }

    /// The file read, or `<built-in default>`.
    pub fn origin(&self) -> &Path {
        match self {
            ConfigSource::Flag(path) | ConfigSource::Home(path) => path,
            ConfigSource::BuiltIn => Path::new("<built-in default>"),
        }
    }

    /// Why this configuration, in words, for the first log line.
    pub fn describe(&self) -> &'static str {
        match self {
            ConfigSource::Flag(_) => "configuration from --config",
            ConfigSource::Home(_) => "configuration from HOME/config/app.toml",
            ConfigSource::BuiltIn => {
                "no --config and no HOME/config/app.toml: built-in default configuration \
                 (`statestream init` writes it to HOME/config/app.toml)"
            }
        }
    }

    /// Reads and validates the configuration.
    pub fn load(&self) -> Result<AppConfig, statestream_config::ConfigError> {
        match self {
            ConfigSource::Flag(path) | ConfigSource::Home(path) => AppConfig::from_file(path),
            ConfigSource::BuiltIn => AppConfig::parse(DEFAULT_APP_TOML, self.origin()),
        }
    }
}

/// The file in HOME that keeps the workload's seed, so that a node resumed
/// without `--seed` runs the same workload.
const SEED_FILE: &str = "demo-seed";

/// Where the store lives under HOME.
pub const STORE_PATH: &str = "data/store.redb";

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's home: the store is HOME/data/store.redb, relative paths
    /// of app.toml are under it. Created when missing.
    #[arg(long, value_name = "DIR")]
    home: PathBuf,

    /// The app.toml to read. Default: HOME/config/app.toml when it exists,
    /// else the built-in default (one file streamer on every store writing
    /// to HOME/data/streaming; `statestream init` writes it out).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// How many blocks to commit in this run (after the last committed
    /// one); 0: until stopped by SIGINT or SIGTERM.
    #[arg(long, value_name = "N", default_value_t = 10)]
    blocks: u64,

    /// Commit one block every MS milliseconds; 0: as fast as the node can.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    block_time_ms: u64,

    /// Writes the transactions of one block make (at least; a block also
    /// has a few writes of its own).
    #[arg(long, value_name = "K", default_value_t = 16)]
    writes_per_block: usize,

    /// Seed of the workload. Kept in HOME/demo-seed on the first run; a
    /// later run must use the same seed (or none).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,

    /// Print one JSON object (height, app_hash, blocks, records, ...) as
    /// the last line of stdout.
    #[arg(long)]
    json: bool,

    /// Do not fsync every commit (faster; a crash rolls the store back to
    /// its last durable commit and the node re-executes the blocks after
    /// it, identically). The default fsyncs every commit. Refused with a
    /// `serve` streamer that has `push_updates = true`: a pusher is
    /// answered once its write is committed, and a crash could undo that
    /// commit.
    #[arg(long)]
    no_fsync: bool,

    /// Megabytes of the store's page cache. It bounds the node's memory
    /// when a streamer lags and the change log grows.
    #[arg(long, value_name = "MB", default_value_t = 256)]
    cache_mb: usize,

    /// Check every page checksum of the store when opening it (reads the
    /// whole file): a damaged store is then reported as such instead of
    /// possibly crashing the storage engine.
    #[arg(long)]
    verify_store: bool,

    /// Registers a streamer type `slow` that sleeps this many milliseconds
    /// per block and writes nothing: `statestream bench` runs the node with
    /// it to show that a streamer slower than the node does not make the
    /// node's memory grow.
    #[arg(long, value_name = "MS", hide = true)]
    slow_streamer_ms: Option<u64>,
}

type StoreAndKey = (String, Vec<u8>);

/// The streamer type `--slow-streamer-ms` registers.
const SLOW_TYPE: &str = "slow";

/// A streamer that only takes its time: it sleeps for `pause` per block.
struct SlowStreamer {
    pause: Duration,
}

impl Streamer for SlowStreamer {
    fn on_block(&mut self, _block: &Block) -> std::result::Result<(), StreamError> {
        std::thread::sleep(self.pause);
        Ok(())
    }
}

/// Counts a block's records: the distinct (store, key) pairs written to the
/// root between two commits, which is the size of the block's change set.
#[derive(Clone, Default)]
struct RecordCounter {
    keys: Arc<Mutex<BTreeSet<StoreAndKey>>>,
    total: Arc<AtomicU64>,
}

impl WriteListener for RecordCounter {
    fn on_write(&mut self, store: &StoreKey, key: &[u8], _value: Option<&[u8]>) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.insert((store.name().to_string(), key.to_vec()));
        }
    }

    fn on_commit(&mut self, _info: &CommitInfo) {
        if let Ok(mut keys) = self.keys.lock() {
            self.total.fetch_add(keys.len() as u64, Ordering::Relaxed);
            keys.clear();
        }
    }
}

/// What a run of the node did.
pub struct Summary {
    pub first: u64,
    pub committed: u64,
    pub info: CommitInfo,
    pub records: u64,
    pub elapsed: Duration,
    pub seed: u64,
    stats: Vec<StreamerStats>,
    cursors: Vec<(String, u64)>,
}

pub fn run(args: NodeArgs, quiet: bool) -> Result<ExitCode> {
    let summary = execute(&args, quiet)?;
    print_summary(&summary, quiet, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the node: commits `args.blocks` blocks (fewer, or with 0 until then,
/// when SIGINT or SIGTERM arrives), closes the streamers and the store.
pub fn execute(args: &NodeArgs, quiet: bool) -> Result<Summary> {
    let started = Instant::now();
    let source = ConfigSource::locate(args.config.as_deref(), &args.home);
    // The first log line: which configuration the node runs on.
    tracing::info!(config = %source.origin().display(), "{}", source.describe());
    // Before any file or socket is opened: the listeners' connections and
    // the streamers' files share one descriptor table.
    match statestream_net::raise_nofile_limit() {
        Ok(limit) => tracing::info!(soft = limit.after, hard = limit.hard, "{limit}"),
        Err(error) => tracing::warn!(%error, "open file limit left as it is"),
    }
    let config = source.load()?;
    let specs = config.resolve(&STORE_NAMES)?;
    if args.no_fsync {
        refuse_push_without_fsync(&specs)?;
    }

    std::fs::create_dir_all(args.home.join("data"))
        .with_context(|| format!("cannot create the home directory {}", args.home.display()))?;
    let seed = resolve_seed(&args.home, args.seed)?;

    let stores = Stores::new()?;
    let store_path = args.home.join(STORE_PATH);
    let mut store = MultiStore::open(
        &store_path,
        &stores.all(),
        StoreOptions {
            fsync: !args.no_fsync,
            cache_size: args.cache_mb.max(1) << 20,
            verify_on_open: args.verify_store,
        },
    )
    .with_context(|| format!("cannot open the store {}", store_path.display()))?;
    let counter = RecordCounter::default();
    store.add_listener(&stores.all(), Box::new(counter.clone()))?;

    let mut registry = registry();
    if let Some(ms) = args.slow_streamer_ms {
        let pause = Duration::from_millis(ms);
        registry.register(SLOW_TYPE, move |_, _| Ok(Box::new(SlowStreamer { pause })));
    }
    // Pushed writes (a `serve` streamer's PushUpdate) are applied in the
    // next block; attached before the servers start, so none is refused.
    let push = PushQueue::new();
    push.attach();
    let mut manager = DeliveryManager::builder()
        .configured(&specs, &registry, &args.home)
        .push_queue(push.clone())
        .shutdown_timeout(config.shutdown_timeout())
        .start(&mut store)?;
    // After the streamers, so that it serves their metrics from the first
    // scrape; stopped after the manager closed, so that the last scrape
    // can see the final state.
    // Run-time subscriptions resume before the first block; their metrics
    // and status are served from the first scrape.
    let subscriptions = crate::admin::start_subscriptions(&store, &manager, &registry)?;
    let telemetry = start_telemetry(&config, &args.home, &manager, &registry)?;
    let admin = crate::admin::start_admin(
        &config,
        &args.home,
        manager.credentials(),
        Some(&subscriptions),
    )?;

    let stop = Arc::new(AtomicBool::new(false));
    // Wakes the wait between paced blocks when a signal arrives.
    let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
    {
        let stop = Arc::clone(&stop);
        crate::signals::watch(
            move || {
                stop.store(true, Ordering::SeqCst);
                let _ = wake.try_send(());
            },
            "committed blocks are in the store; the streamers catch up at the next start",
        )?;
    }

    let first = store.version() + 1;
    tracing::info!(
        home = %args.home.display(),
        config = %config.origin().display(),
        streamers = specs.len(),
        seed,
        from = first,
        blocks = args.blocks,
        "node started"
    );
    let progress = progress_bar(args.blocks, quiet);
    let block_time = Duration::from_millis(args.block_time_ms);
    let mut committed = 0u64;
    let mut result = Ok(());
    while args.blocks == 0 || committed < args.blocks {
        let block_started = Instant::now();
        if stop.load(Ordering::SeqCst) {
            tracing::info!(
                height = store.version(),
                "signal received: stopping after the last committed block"
            );
            break;
        }
        let height = store.version() + 1;
        let mut pushed = push.drain();
        // `commit_pushed` answers the pushers with the height once the
        // block committed, also when a streamer then halts the node.
        let step = workload::run_block(&mut store, &stores, seed, height, args.writes_per_block)
            .and_then(|mut meta| {
                workload::apply_pushed(&mut store, &stores, &mut pushed, &mut meta)?;
                Ok(manager.commit_pushed(&mut store, meta, pushed)?)
            });
        match step {
            Ok(info) => {
                committed += 1;
                tracing::debug!(height = info.version, app_hash = %to_hex(&info.app_hash), "committed");
                if let Some(p) = &progress {
                    p.inc(1);
                }
            }
            Err(e) => {
                result = Err(e.context(format!("block {height}")));
                break;
            }
        }
        // Pace the blocks; a signal ends the wait early.
        if let Some(rest) = block_time.checked_sub(block_started.elapsed())
            && !rest.is_zero()
            && !stop.load(Ordering::SeqCst)
        {
            let _ = woken.recv_timeout(rest);
        }
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }

    // No credential or subscription changes once the streamers close.
    if let Some(server) = admin {
        server.stop();
    }
    subscriptions.close();
    let stats = manager.stats();
    let closed = manager.close(&mut store);
    let info = store.last_commit();
    let cursors = store.cursors().unwrap_or_default();
    let store_closed = store.close();
    if let Some(server) = telemetry {
        server.stop();
    }
    // The first error wins: a failed block explains a failed close.
    result?;
    closed?;
    store_closed?;

    Ok(Summary {
        first,
        committed,
        info,
        records: counter.total.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        seed,
        stats,
        cursors,
    })
}

/// With `--no-fsync`, no `serve` streamer may accept `PushUpdate`: a pusher
/// is answered once the block holding its write is committed, and a crash
/// rolls the store back to its last durable commit, losing a write that was
/// acknowledged (and that the streamers, NATS or PostgreSQL, may already
/// hold: the re-executed block would differ from theirs).
fn refuse_push_without_fsync(specs: &[StreamerSpec]) -> Result<()> {
    for spec in specs.iter().filter(|s| s.type_name == SERVE_TYPE) {
        // A table the serve type refuses is reported when it is built.
        let Ok(serve) = spec.options.parse::<ServeConfig>() else {
            continue;
        };
        if serve.push_updates {
            return Err(spec
                .options
                .error(
                    "push_updates",
                    "is true, which --no-fsync does not allow: a pushed write is \
                     acknowledged once committed, and without fsync a crash can undo that \
                     commit; run the node without --no-fsync, or set push_updates = false",
                )
                .into());
        }
    }
    Ok(())
}

/// Starts the telemetry server when `[telemetry] address` is set; the
/// address it bound is logged (with port 0, the one the system chose).
fn start_telemetry(
    config: &AppConfig,
    home: &Path,
    manager: &DeliveryManager,
    registry: &Registry,
) -> Result<Option<TelemetryServer>> {
    let Some(telemetry) = config.telemetry() else {
        return Ok(None);
    };
    let options = TelemetryOptions::from_config_in(telemetry, home);
    options
        .check_tls()
        .with_context(|| format!("{}: [telemetry]", config.origin().display()))?;
    let server = TelemetryServer::start_with(
        telemetry.address,
        &options,
        manager.observer(),
        registry.metrics().clone(),
    )
    .with_context(|| {
        let line = telemetry
            .line
            .map_or(String::new(), |line| format!(" (line {line})"));
        format!(
            "{}: [telemetry] key `address`{line}",
            config.origin().display()
        )
    })?;
    Ok(Some(server))
}

/// The streamer types of the demo node: every built-in type of the
/// `statestream` build (`log`, `process`, and the streamer crates its cargo
/// features enable).
pub fn registry() -> Registry {
    Registry::with_builtins()
}

fn print_summary(summary: &Summary, quiet: bool, json: bool) -> Result<()> {
    let Summary {
        first,
        committed,
        info,
        records,
        elapsed,
        seed,
        stats,
        cursors,
    } = summary;
    let (first, committed, records, seed) = (*first, *committed, *records, *seed);
    let elapsed_ms = elapsed.as_millis() as u64;
    let hash = to_hex(&info.app_hash);
    let mut out = std::io::stdout().lock();
    if !quiet || json {
        if committed > 0 {
            writeln!(
                out,
                "committed {committed} blocks ({first}..={}), {records} records; height {}, app hash {hash}",
                info.version, info.version
            )?;
        } else {
            writeln!(
                out,
                "committed no block; height {}, app hash {hash}",
                info.version
            )?;
        }
        for s in stats {
            let delivered = cursors
                .iter()
                .find(|(n, _)| *n == s.name)
                .map_or(s.delivered_height, |(_, h)| *h);
            writeln!(
                out,
                "streamer {}: delivered up to {delivered}, {} errors",
                s.name, s.errors
            )?;
        }
    }
    if json {
        let streamers: Vec<_> = stats
            .iter()
            .map(|s| {
                let delivered = cursors
                    .iter()
                    .find(|(n, _)| *n == s.name)
                    .map_or(s.delivered_height, |(_, h)| *h);
                serde_json::json!({
                    "name": s.name,
                    "delivery": s.delivery.as_str(),
                    "delivered_height": delivered,
                    "errors": s.errors,
                    "fell_behind": s.fell_behind,
                    "caught_up": s.caught_up,
                    "last_error": s.last_error,
                })
            })
            .collect();
        let summary = serde_json::json!({
            "height": info.version,
            "app_hash": hash,
            "blocks": committed,
            "first_height": if committed > 0 { first } else { info.version },
            "records": records,
            "elapsed_ms": elapsed_ms,
            "seed": seed,
            "streamers": streamers,
        });
        writeln!(out, "{summary}")?;
    }
    Ok(())
}

/// The seed of this home: the one stored in HOME/demo-seed, or `given`
/// (default 0) for a new home, which is then stored. A `given` seed that
/// differs from the stored one is an error: the blocks already committed
/// came from the stored one.
fn resolve_seed(home: &Path, given: Option<u64>) -> Result<u64> {
    let path = home.join(SEED_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored: u64 = text
                .trim()
                .parse()
                .with_context(|| format!("{}: not a seed (a decimal u64)", path.display()))?;
            if let Some(g) = given
                && g != stored
            {
                bail!(
                    "this home was created with --seed {stored} (kept in {}); run with the same seed, or use a new --home",
                    path.display()
                );
            }
            Ok(stored)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed = given.unwrap_or(0);
            std::fs::write(&path, format!("{seed}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(seed)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn progress_bar(len: u64, quiet: bool) -> Option<ProgressBar> {
    // `--blocks 0` has no end to show progress towards.
    if len == 0 || quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} blocks {per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ```toml blocks of docs/config.md that hold a `[store]` table.
    fn documented_configs() -> Vec<String> {
        let doc = include_str!("../../docs/config.md");
        doc.split("```toml\n")
            .skip(1)
            .filter_map(|rest| rest.split("```").next())
            .filter(|block| block.contains("[store]"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn node_documented_configs_parse_and_build() {
        let configs = documented_configs();
        assert!(configs.len() >= 2);
        // Every documented whole config resolves against the demo node's
        // stores (`config check` runs each through every type's checks too).
        for text in &configs {
            let config = AppConfig::parse(text, Path::new("docs/config.md")).unwrap();
            config.resolve(&STORE_NAMES).unwrap();
        }
        // The built-in default is one file streamer with its defaults.
        let config = AppConfig::parse(DEFAULT_APP_TOML, Path::new("default")).unwrap();
        let specs = config.resolve(&STORE_NAMES).unwrap();
        assert_eq!(specs.len(), 1);
        let file: statestream_file::FileStreamerConfig = specs[0].options.parse().unwrap();
        assert_eq!(file, statestream_file::FileStreamerConfig::default());
    }
}
