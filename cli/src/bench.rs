//! `statestream bench`: what streaming costs, measured against the store
//! alone and against raw I/O, side by side in one run.
//!
//! Every comparison runs its two variants in the same process, alternating
//! round by round (and swapping which goes first every other round, so
//! neither always runs on a warmer cache), and reports the median over the
//! rounds of the per-round ratio. The first [`WARM_UP`] rounds are not
//! counted.
//! `--json` prints one object per line: `name`, `value`, `unit`, and for
//! comparisons `ratio` (this variant's time or cost over the baseline's:
//! for throughputs, this variant's throughput over the baseline's) and
//! `baseline` (the baseline's value, in the same unit); comparisons over
//! rounds also give `ratio_q1` and `ratio_q3`, the quartiles of the
//! per-round ratio, so that a difference can be told from the noise. `docs/performance.md`
//! has the figures and what each measures.

use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use statestream::{
    Block, BlockMeta, Delivery, DeliveryManager, StoreSelection, StreamerContext, StreamerSetup,
};
use statestream_config::StreamerOptions;
use statestream_file::{BlockDir, FileStreamer, FileStreamerConfig, ReadOptions};
use statestream_store::{CommitInput, KvStore, MultiStore, StoreKey, StoreOptions};

#[path = "bench_serve.rs"]
mod serve;

#[path = "bench_postgres.rs"]
mod pg;

#[path = "bench_cosmos.rs"]
mod cosmos;

#[path = "bench_relay.rs"]
mod relay;

use crate::blocks::DirArgs;
use crate::workload::Rng;
use crate::{replay, verify};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Print one JSON object per figure: name, value, unit, and for
    /// comparisons ratio and baseline (and ratio_q1, ratio_q3: the
    /// quartiles of the per-round ratio).
    #[arg(long)]
    json: bool,

    /// Small sizes and few rounds: checks that every workload runs, in
    /// seconds; the figures mean little.
    #[arg(long)]
    quick: bool,

    /// Run only these figures (comma-separated names, as printed, or the
    /// name of a figure that prints several lines: `serve_latency_ms`),
    /// e.g. `--only reader_vs_raw,verify_mb_s`.
    #[arg(long, value_delimiter = ',', value_name = "NAMES",
          value_parser = clap::builder::PossibleValuesParser::new(only_names()))]
    only: Vec<String>,

    /// A PostgreSQL database for `postgres_rows_per_s` (it creates and
    /// drops the schemas bench_stream, bench_plain and
    /// bench_plain_changes); without it, the URL in the environment
    /// variable STATESTREAM_BENCH_POSTGRES; without either that figure is
    /// skipped. A command line is visible to every user of the machine
    /// (`ps`): give a URL holding a password through the variable, or the
    /// password through PGPASSWORD.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
}

/// Where `--postgres` is read from when it is not given.
const POSTGRES_ENV: &str = "STATESTREAM_BENCH_POSTGRES";

/// Every figure, in the order they run, with the names of the lines it
/// prints when they are not its own name (one per case it measures).
const FIGURES: [(&str, &[&str]); 18] = [
    ("commit_overhead_async", &[]),
    ("commit_overhead_sync", &[]),
    ("writer_vs_raw", &[]),
    ("reader_vs_raw", &[]),
    ("verify_mb_s", &[]),
    ("replay_mb_s", &[]),
    ("node_peak_rss_mb", &[]),
    ("serve_commit_overhead", &[]),
    (
        "serve_latency_ms",
        &[
            "serve_latency_ms_p50_10",
            "serve_latency_ms_p99_10",
            "serve_latency_ms_p50_100",
            "serve_latency_ms_p99_100",
            "serve_latency_ms_p50_100_credentials",
            "serve_latency_ms_p99_100_credentials",
        ],
    ),
    ("snapshot_vs_scan", &[]),
    ("serve_stalled_rss_mb", &[]),
    ("sse_commit_overhead", &[]),
    (
        "sse_latency_ms",
        &[
            "sse_latency_ms_p50",
            "sse_latency_ms_p99",
            "sse_latency_ms_p50_credentials",
            "sse_latency_ms_p99_credentials",
        ],
    ),
    ("postgres_rows_per_s", &[]),
    (
        "cosmos_plugin_commit_ms",
        &["cosmos_plugin_commit_ms_p50", "cosmos_plugin_commit_ms_p99"],
    ),
    (
        "relay_latency_ms",
        &["relay_latency_ms_p50", "relay_latency_ms_p99"],
    ),
    ("relay_node_cpu_ratio", &[]),
    (
        "relay_idle_subscriber_kib",
        &[
            "relay_idle_subscriber_kib_1000",
            "relay_idle_subscriber_kib_10000",
        ],
    ),
];

/// What `--only` accepts: every figure and every line a figure prints.
fn only_names() -> Vec<&'static str> {
    FIGURES
        .iter()
        .flat_map(|(figure, lines)| std::iter::once(*figure).chain(lines.iter().copied()))
        .collect()
}

const KEY_LEN: usize = 32;
const VALUE_LEN: usize = 100;
const STORE_NAMES: [&str; 4] = ["acc", "bank", "gov", "staking"];

/// How much each workload does.
struct Sizes {
    /// Counted rounds of every comparison (odd: the median is a round's).
    rounds: usize,
    /// Writes per block (1,000 in the full run).
    writes: usize,
    /// Blocks per variant per round of the commit comparisons.
    commit_blocks: u64,
    /// Blocks of the corpus the writer, reader, verify and replay read.
    corpus_blocks: u64,
    /// Rounds of replay (slow: it commits every block again).
    replay_rounds: usize,
    /// The node runs of the memory figure: fewer and more blocks.
    rss_blocks: (u64, u64),
}

const FULL: Sizes = Sizes {
    rounds: 21,
    writes: 1_000,
    commit_blocks: 32,
    corpus_blocks: 200,
    replay_rounds: 3,
    rss_blocks: (2_000, 10_000),
};

const QUICK: Sizes = Sizes {
    rounds: 3,
    writes: 200,
    commit_blocks: 2,
    corpus_blocks: 6,
    replay_rounds: 1,
    rss_blocks: (40, 120),
};

/// The slow streamer of the memory figure: this long per block, with a
/// queue of this many blocks (the node commits a block much faster).
const SLOW_MS: u64 = 1;
const SLOW_QUEUE: usize = 2;

/// One line of the report.
struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
    /// This variant's time or cost over the baseline's; for throughputs,
    /// this variant's throughput over the baseline's.
    ratio: Option<f64>,
    /// For comparisons measured over rounds: the first and third quartiles
    /// of the per-round ratio (the middle half of the rounds lies between).
    ratio_quartiles: Option<(f64, f64)>,
    baseline: Option<f64>,
}

impl Figure {
    fn print(&self, json: bool) -> Result<()> {
        let mut out = std::io::stdout().lock();
        if json {
            let mut v = serde_json::json!({
                "name": self.name,
                "value": round3(self.value),
                "unit": self.unit,
            });
            if let Some(r) = self.ratio {
                v["ratio"] = serde_json::json!(round3(r));
            }
            if let Some((q1, q3)) = self.ratio_quartiles {
                v["ratio_q1"] = serde_json::json!(round3(q1));
                v["ratio_q3"] = serde_json::json!(round3(q3));
            }
            if let Some(b) = self.baseline {
                v["baseline"] = serde_json::json!(round3(b));
            }
            writeln!(out, "{v}")?;
        } else {
            write!(out, "{:<24} {:>10.3} {}", self.name, self.value, self.unit)?;
            if let (Some(r), Some(b)) = (self.ratio, self.baseline) {
                write!(out, " (baseline {b:.3} {}, ratio {r:.3}", self.unit)?;
                if let Some((q1, q3)) = self.ratio_quartiles {
                    write!(out, ", middle half of the rounds {q1:.3}-{q3:.3}")?;
                }
                write!(out, ")")?;
            }
            writeln!(out)?;
        }
        out.flush()?;
        Ok(())
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub fn run(args: BenchArgs, _quiet: bool) -> Result<ExitCode> {
    let sizes = if args.quick { &QUICK } else { &FULL };
    // A figure runs when it, or one of its lines, is asked for; a line is
    // printed when it, or its figure, is.
    let asked = |name: &str| args.only.iter().any(|n| n == name);
    let wanted = |figure: &str| {
        args.only.is_empty()
            || asked(figure)
            || FIGURES
                .iter()
                .any(|(f, lines)| *f == figure && lines.iter().any(|l| asked(l)))
    };
    let shown = |figure: &str, line: &str| args.only.is_empty() || asked(figure) || asked(line);
    let tmp = tempfile::Builder::new()
        .prefix("statestream-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let tmp = tmp.path();
    let stores = bench_stores()?;

    for (delivery, name) in [
        (Delivery::Async, "commit_overhead_async"),
        (Delivery::Sync, "commit_overhead_sync"),
    ] {
        if wanted(name) {
            commit_overhead(sizes, &stores, delivery, tmp)?.print(args.json)?;
        }
    }

    if [
        "writer_vs_raw",
        "reader_vs_raw",
        "verify_mb_s",
        "replay_mb_s",
    ]
    .iter()
    .any(|n| wanted(n))
    {
        let corpus = Corpus::build(sizes, &stores, &tmp.join("corpus"))?;
        if wanted("writer_vs_raw") {
            writer_vs_raw(sizes, &corpus, &tmp.join("writer"))?.print(args.json)?;
        }
        if wanted("reader_vs_raw") {
            reader_vs_raw(sizes, &corpus)?.print(args.json)?;
        }
        if wanted("verify_mb_s") {
            verify_mb_s(sizes, &corpus)?.print(args.json)?;
        }
        if wanted("replay_mb_s") {
            replay_mb_s(sizes, &corpus, &tmp.join("replay"))?.print(args.json)?;
        }
    }
    if wanted("node_peak_rss_mb") {
        node_peak_rss(sizes, &tmp.join("node"))?.print(args.json)?;
    }
    if wanted("serve_commit_overhead") {
        serve::commit_overhead(sizes, &stores, &tmp.join("serve"), serve::Front::Grpc)?
            .print(args.json)?;
    }
    if wanted("serve_latency_ms") {
        for f in serve::latency(sizes, &stores, serve::Front::Grpc)? {
            if shown("serve_latency_ms", f.name) {
                f.print(args.json)?;
            }
        }
    }
    if wanted("snapshot_vs_scan") {
        serve::snapshot_vs_scan(sizes, &stores)?.print(args.json)?;
    }
    if wanted("serve_stalled_rss_mb") {
        serve::stalled_rss(sizes, &stores, &tmp.join("stalled"))?.print(args.json)?;
    }
    if wanted("sse_commit_overhead") {
        serve::commit_overhead(sizes, &stores, &tmp.join("sse"), serve::Front::Sse)?
            .print(args.json)?;
    }
    if wanted("sse_latency_ms") {
        for f in serve::latency(sizes, &stores, serve::Front::Sse)? {
            if shown("sse_latency_ms", f.name) {
                f.print(args.json)?;
            }
        }
    }
    let postgres = args.postgres.clone().or_else(|| {
        std::env::var(POSTGRES_ENV)
            .ok()
            .filter(|url| !url.is_empty())
    });
    if wanted("postgres_rows_per_s")
        && let Some(f) = pg::rows_per_s(sizes, args.quick, postgres.as_deref())?
    {
        f.print(args.json)?;
    }
    if wanted("cosmos_plugin_commit_ms") {
        for f in cosmos::commit_ms(sizes, &stores, &tmp.join("cosmos"))? {
            f.print(args.json)?;
        }
    }
    if wanted("relay_latency_ms") || wanted("relay_node_cpu_ratio") {
        // One run gives both: the same relay, clients and blocks.
        let (latency, cpu) = relay::latency_and_cpu(sizes, &stores, &tmp.join("relay"))?;
        if wanted("relay_latency_ms") {
            for f in latency {
                if shown("relay_latency_ms", f.name) {
                    f.print(args.json)?;
                }
            }
        }
        if wanted("relay_node_cpu_ratio") {
            cpu.print(args.json)?;
        }
    }
    if wanted("relay_idle_subscriber_kib") {
        for f in relay::idle_subscribers(sizes, &stores, &tmp.join("relay-idle"))? {
            if shown("relay_idle_subscriber_kib", f.name) {
                f.print(args.json)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_stores() -> Result<Vec<StoreKey>> {
    STORE_NAMES
        .iter()
        .map(|n| StoreKey::new(n).with_context(|| format!("store name {n:?}")))
        .collect()
}

/// Writes and commits `blocks` blocks through `manager`; the seconds spent
/// in `commit` (the writes are not timed).
fn timed_managed_commits(
    manager: &mut DeliveryManager,
    store: &mut MultiStore,
    stores: &[StoreKey],
    rng: &mut Rng,
    writes: usize,
    blocks: u64,
) -> Result<f64> {
    let mut secs = 0.0;
    for _ in 0..blocks {
        write_block(store, stores, rng, writes)?;
        let started = Instant::now();
        manager.commit(store, BlockMeta::default())?;
        secs += started.elapsed().as_secs_f64();
    }
    Ok(secs)
}

/// The same blocks committed on the store alone, pruned as the delivery
/// manager prunes with no streamer behind (the change log keeps the last
/// block only): the baseline of the commit overheads.
fn timed_store_commits(
    store: &mut MultiStore,
    stores: &[StoreKey],
    rng: &mut Rng,
    writes: usize,
    blocks: u64,
) -> Result<f64> {
    let meta = BlockMeta::default().encode_app_meta();
    let mut secs = 0.0;
    for _ in 0..blocks {
        write_block(store, stores, rng, writes)?;
        let started = Instant::now();
        let input = CommitInput::new()
            .app_meta(meta.clone())
            .prune_below(store.version() + 1);
        store.commit_block(input)?;
        secs += started.elapsed().as_secs_f64();
    }
    Ok(secs)
}

/// Writes one block of `writes` random sets, spread over the stores,
/// through a cache layer (as a transaction does); the caller commits.
fn write_block(
    store: &mut MultiStore,
    stores: &[StoreKey],
    rng: &mut Rng,
    writes: usize,
) -> Result<()> {
    let mut key = [0u8; KEY_LEN];
    let mut value = [0u8; VALUE_LEN];
    let mut tx = store.cache();
    for i in 0..writes {
        rng.fill(&mut key);
        rng.fill(&mut value);
        tx.set(&stores[i % stores.len()], &key, &value)?;
    }
    tx.write()?;
    Ok(())
}

fn file_streamer(dir: &Path, stores: &[StoreKey]) -> Result<FileStreamer> {
    let options = StreamerOptions::default();
    let config = FileStreamerConfig {
        write_dir: dir.to_path_buf(),
        ..FileStreamerConfig::default()
    };
    let ctx = StreamerContext {
        name: "file",
        stores,
        all_stores: stores,
        home: dir,
        reader: None,
        shutdown: &statestream_core::Shutdown::default(),
        push: None,
    };
    Ok(config.build(&ctx, &options)?)
}

/// The `p`-quantile of `v` (not empty; `p` in 0..=1), interpolated
/// linearly between the two nearest values: `quantile(v, 0.5)` is the
/// median.
fn quantile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = p * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// What [`alternate`] measured: the medians of the variant's and the
/// baseline's seconds, and the median and quartiles of the per-round ratio
/// (variant over baseline).
struct Alternated {
    a: f64,
    b: f64,
    ratio: f64,
    /// The middle half of the per-round ratios: how far one round's
    /// ratio strays, to tell a difference from this machine's noise.
    ratio_quartiles: (f64, f64),
}

impl Alternated {
    /// The same for throughputs: the baseline's time over the variant's.
    fn inverted(&self) -> (f64, (f64, f64)) {
        let (q1, q3) = self.ratio_quartiles;
        (1.0 / self.ratio, (1.0 / q3, 1.0 / q1))
    }
}

/// Rounds of a comparison that are run but not counted: the first rounds
/// on a new store grow its file, which later rounds do not.
const WARM_UP: usize = 2;

/// Runs `a` (the variant) and `b` (the baseline) alternately, [`WARM_UP`]
/// rounds and `rounds` counted ones; each returns the seconds it measured.
/// Returns the medians of `a`'s and `b`'s seconds and the median and
/// quartiles of the per-round ratio `a / b`.
fn alternate(
    rounds: usize,
    mut a: impl FnMut(usize) -> Result<f64>,
    mut b: impl FnMut(usize) -> Result<f64>,
) -> Result<Alternated> {
    let (mut ta, mut tb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..WARM_UP + rounds {
        let (sa, sb) = if round % 2 == 0 {
            let sa = a(round)?;
            (sa, b(round)?)
        } else {
            let sb = b(round)?;
            (a(round)?, sb)
        };
        if round >= WARM_UP {
            ta.push(sa);
            tb.push(sb);
            ratios.push(sa / sb.max(1e-12));
        }
    }
    Ok(Alternated {
        a: median(&ta),
        b: median(&tb),
        ratio: median(&ratios),
        ratio_quartiles: (quantile(&ratios, 0.25), quantile(&ratios, 0.75)),
    })
}

/// `commit_overhead_async` / `commit_overhead_sync`: the time of the commit
/// call with one file streamer (through the delivery manager) over the
/// store's own commit (pruning the change log as a node without streamers
/// does), both on disk without fsync, same blocks. The writes
/// of a block are not timed (they are the same either way). After every
/// round of the streamed variant the async streamer is let catch up,
/// untimed, so that its worker does not run into the baseline's round.
fn commit_overhead(
    sizes: &Sizes,
    stores: &[StoreKey],
    delivery: Delivery,
    tmp: &Path,
) -> Result<Figure> {
    let (name, label) = match delivery {
        Delivery::Sync => ("commit_overhead_sync", "sync"),
        _ => ("commit_overhead_async", "async"),
    };
    let alone_dir = tmp.join(format!("commit-{label}-alone"));
    let streamed_dir = tmp.join(format!("commit-{label}-streamed"));
    for d in [&alone_dir, &streamed_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let options = StoreOptions {
        fsync: false,
        ..StoreOptions::default()
    };
    let mut alone = MultiStore::open(&alone_dir.join("store.redb"), stores, options.clone())?;
    let mut streamed = MultiStore::open(&streamed_dir.join("store.redb"), stores, options)?;
    let streamer = file_streamer(&streamed_dir.join("streaming"), stores)?;
    let setup = StreamerSetup::new("file", stores).delivery(delivery);
    let mut manager = DeliveryManager::builder()
        .streamer(setup, Box::new(streamer))
        .start(&mut streamed)?;
    // Both stores get the same blocks.
    let (mut rng_alone, mut rng_streamed) = (Rng::new(7), Rng::new(7));
    let blocks = sizes.commit_blocks;

    let m = alternate(
        sizes.rounds,
        |_| {
            let secs = timed_managed_commits(
                &mut manager,
                &mut streamed,
                stores,
                &mut rng_streamed,
                sizes.writes,
                blocks,
            )?;
            wait_delivered(&manager, streamed.version())?;
            Ok(secs)
        },
        |_| timed_store_commits(&mut alone, stores, &mut rng_alone, sizes.writes, blocks),
    )?;
    manager.close(&mut streamed)?;
    streamed.close()?;
    alone.close()?;
    let per_block_ms = |secs: f64| secs * 1000.0 / blocks as f64;
    Ok(Figure {
        name,
        value: per_block_ms(m.a),
        unit: "ms/block",
        ratio: Some(m.ratio),
        ratio_quartiles: Some(m.ratio_quartiles),
        baseline: Some(per_block_ms(m.b)),
    })
}

/// Waits until every streamer of `manager` delivered `height`, and an async
/// one also flushed it (its idle worker flushes at once), so that none of
/// its work, the batched file sync included, runs into the next round. (A
/// sync streamer is flushed inside `commit`, timed.)
fn wait_delivered(manager: &DeliveryManager, height: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let behind = |s: &statestream::StreamerStats| {
        s.delivered_height < height || (s.delivery == Delivery::Async && s.durable_height < height)
    };
    while manager.stats().iter().any(behind) {
        if Instant::now() > deadline {
            bail!("the streamer did not deliver block {height} within a minute");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// The blocks the file workloads write and read: committed on an in-memory
/// store (so their hashes chain from height 1), and written once by a file
/// streamer to `dir`.
struct Corpus {
    stores: Vec<StoreKey>,
    blocks: Vec<Block>,
    dir: PathBuf,
    /// Every file the streamer wrote (name, bytes), in name order.
    files: Vec<(String, Vec<u8>)>,
    /// Bytes of all files (data and meta).
    file_bytes: u64,
    /// Payload bytes of the data files.
    payload_bytes: u64,
}

impl Corpus {
    fn build(sizes: &Sizes, stores: &[StoreKey], dir: &Path) -> Result<Corpus> {
        let mut store = MultiStore::in_memory(stores)?;
        let selection = StoreSelection::all(stores);
        let meta = Arc::new(BlockMeta::default());
        let mut rng = Rng::new(11);
        let mut blocks = Vec::new();
        for _ in 0..sizes.corpus_blocks {
            write_block(&mut store, stores, &mut rng, sizes.writes)?;
            let changes =
                store.commit_block(CommitInput::new().app_meta(meta.encode_app_meta()))?;
            blocks.push(Block::new(changes, Arc::clone(&meta), &selection));
        }
        let mut streamer = file_streamer(dir, stores)?;
        for b in &blocks {
            statestream::Streamer::on_block(&mut streamer, b)?;
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push((name, std::fs::read(entry.path())?));
        }
        files.sort();
        let file_bytes = files.iter().map(|(_, b)| b.len() as u64).sum();
        let payload_bytes = blocks.iter().map(|b| b.encoded_len() as u64).sum();
        Ok(Corpus {
            stores: stores.to_vec(),
            blocks,
            dir: dir.to_path_buf(),
            files,
            file_bytes,
            payload_bytes,
        })
    }

    fn dir_args(&self) -> DirArgs {
        DirArgs {
            dir: self.dir.clone(),
            prefix: Some(String::new()),
            mmap: false,
        }
    }
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-12)
}

/// `writer_vs_raw`: the file streamer writing the corpus (data and meta
/// files, through temporary names and renames, fsync off) against
/// `fs::write` of the same bytes to files of the same names. Each round
/// writes into a new directory; removing it is not timed.
fn writer_vs_raw(sizes: &Sizes, corpus: &Corpus, tmp: &Path) -> Result<Figure> {
    // Every round writes to a new directory, and all are removed only at
    // the end: on ext4 without a journal, creating a file skips over every
    // inode deleted in the last minutes, one lookup each, so files removed
    // round by round made the later rounds of both variants mostly that
    // scan (a third of all samples in a profile), and the ratio told more
    // about what ran before than about the writer.
    let round_dir = |round: usize, what: &str| tmp.join(format!("{what}-{round}"));
    // What the figure leaves on disk before it ends, for the error that a
    // full temporary directory would otherwise give without a reason.
    let needed_mb = (2 * (WARM_UP + sizes.rounds)) as u64 * corpus.file_bytes / 1_000_000;
    let space = |e: anyhow::Error| {
        e.context(format!(
            "writer_vs_raw keeps every round's files until it ends (~{needed_mb} MB in {});              free space there or set TMPDIR to a larger file system",
            tmp.display()
        ))
    };
    let m = alternate(
        sizes.rounds,
        |round| {
            let dir = round_dir(round, "streamer");
            let mut streamer = file_streamer(&dir, &corpus.stores).map_err(space)?;
            let started = Instant::now();
            for b in &corpus.blocks {
                statestream::Streamer::on_block(&mut streamer, b).map_err(|e| space(e.into()))?;
            }
            Ok(started.elapsed().as_secs_f64())
        },
        |round| {
            let dir = round_dir(round, "raw");
            std::fs::create_dir_all(&dir).map_err(|e| space(e.into()))?;
            let started = Instant::now();
            for (name, bytes) in &corpus.files {
                std::fs::write(dir.join(name), bytes).map_err(|e| space(e.into()))?;
            }
            Ok(started.elapsed().as_secs_f64())
        },
    )?;
    std::fs::remove_dir_all(tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    let (ratio, quartiles) = m.inverted();
    Ok(Figure {
        name: "writer_vs_raw",
        value: mb_s(corpus.file_bytes, m.a),
        unit: "MB/s",
        ratio: Some(ratio),
        ratio_quartiles: Some(quartiles),
        baseline: Some(mb_s(corpus.file_bytes, m.b)),
    })
}

/// `reader_vs_raw`: the reader (list the directory, open every block: read
/// the data and meta files, check lengths and CRC, decode the metadata;
/// decode every record) against listing the directory and reading every
/// file with `fs::read`, both from the page cache (the corpus was just
/// written and read). Throughput is payload bytes per second for both.
fn reader_vs_raw(sizes: &Sizes, corpus: &Corpus) -> Result<Figure> {
    let m = alternate(
        sizes.rounds,
        |_| {
            let started = Instant::now();
            let dir = BlockDir::open(&corpus.dir, "", ReadOptions::default())?;
            let mut bytes = 0u64;
            for h in dir.heights()? {
                let block = dir.open_block(h)?;
                for r in block.records() {
                    black_box(r?);
                }
                bytes += block.payload().len() as u64;
            }
            let secs = started.elapsed().as_secs_f64();
            if bytes != corpus.payload_bytes {
                bail!(
                    "the reader read {bytes} payload bytes, the corpus has {}",
                    corpus.payload_bytes
                );
            }
            Ok(secs)
        },
        |_| {
            let started = Instant::now();
            let mut bytes = 0u64;
            for entry in std::fs::read_dir(&corpus.dir)? {
                bytes += black_box(std::fs::read(entry?.path())?).len() as u64;
            }
            let secs = started.elapsed().as_secs_f64();
            if bytes != corpus.file_bytes {
                bail!("read {bytes} bytes, the corpus has {}", corpus.file_bytes);
            }
            Ok(secs)
        },
    )?;
    let (ratio, quartiles) = m.inverted();
    Ok(Figure {
        name: "reader_vs_raw",
        value: mb_s(corpus.payload_bytes, m.a),
        unit: "MB/s",
        ratio: Some(ratio),
        ratio_quartiles: Some(quartiles),
        baseline: Some(mb_s(corpus.payload_bytes, m.b)),
    })
}

/// `verify_mb_s`: `statestream verify` over the corpus, payload bytes per
/// second, median of the rounds.
fn verify_mb_s(sizes: &Sizes, corpus: &Corpus) -> Result<Figure> {
    let args = corpus.dir_args();
    let mut rates = Vec::new();
    for round in 0..=sizes.rounds {
        let started = Instant::now();
        let totals = verify::verify(&args, true)?;
        let secs = started.elapsed().as_secs_f64();
        if round > 0 {
            rates.push(mb_s(totals.bytes, secs));
        }
    }
    Ok(Figure {
        name: "verify_mb_s",
        value: median(&rates),
        unit: "MB/s",
        ratio: None,
        ratio_quartiles: None,
        baseline: None,
    })
}

/// `replay_mb_s`: `statestream replay` of the corpus into a new store (on
/// disk, fsync off, as replay does), payload bytes per second, median of
/// the rounds.
fn replay_mb_s(sizes: &Sizes, corpus: &Corpus, tmp: &Path) -> Result<Figure> {
    let args = corpus.dir_args();
    let mut rates = Vec::new();
    for round in 0..sizes.replay_rounds {
        let into = tmp.join(format!("home-{round}"));
        let started = Instant::now();
        let replayed = replay::replay(&args, &into, true)?;
        let secs = started.elapsed().as_secs_f64();
        if replayed.blocks as u64 != sizes.corpus_blocks {
            bail!(
                "replayed {} blocks of {}",
                replayed.blocks,
                sizes.corpus_blocks
            );
        }
        rates.push(mb_s(replayed.bytes, secs));
        std::fs::remove_dir_all(&into)?;
    }
    Ok(Figure {
        name: "replay_mb_s",
        value: median(&rates),
        unit: "MB/s",
        ratio: None,
        ratio_quartiles: None,
        baseline: None,
    })
}

/// The store cache of the `node_peak_rss_mb` runs, in MB.
const RSS_CACHE_MB: usize = 4;

/// `node_peak_rss_mb`: the peak resident memory (VmHWM) of `statestream
/// node` with one async streamer much slower than the node (a sleep per
/// block, a queue of two), over the larger number of blocks; the ratio is
/// the peak over the larger number over the peak over the smaller one (1.0:
/// memory does not grow with the number of blocks).
fn node_peak_rss(sizes: &Sizes, tmp: &Path) -> Result<Figure> {
    std::fs::create_dir_all(tmp)?;
    let config = tmp.join("app.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nstreamers = [\"slow\"]\n\n[streamers.slow]\ntype = \"slow\"\nkeys = [\"*\"]\n\
             delivery = \"async\"\nqueue = {SLOW_QUEUE}\nstop-node-on-error = true\n"
        ),
    )?;
    let exe = std::env::current_exe().context("cannot find the statestream binary")?;
    let (small, large) = sizes.rss_blocks;
    let mut peaks = [0u64; 2];
    // One run each, smaller first: a peak is a count of pages, not a
    // timing, and varies little from run to run.
    for (i, blocks) in [small, large].into_iter().enumerate() {
        let home = tmp.join(format!("home-{blocks}"));
        peaks[i] = node_peak_kb(&exe, &home, &config, blocks)?;
        std::fs::remove_dir_all(&home)?;
    }
    let mb = |kb: u64| kb as f64 * 1024.0 / 1e6;
    Ok(Figure {
        name: "node_peak_rss_mb",
        value: mb(peaks[1]),
        unit: "MB",
        ratio: Some(peaks[1] as f64 / peaks[0].max(1) as f64),
        ratio_quartiles: None,
        baseline: Some(mb(peaks[0])),
    })
}

/// Runs the node for `blocks` blocks and returns its peak VmHWM in kB,
/// read from /proc while it runs (the peak only grows, so the last reading
/// before it exits is its peak up to then).
fn node_peak_kb(exe: &Path, home: &Path, config: &Path, blocks: u64) -> Result<u64> {
    let mut child = Command::new(exe)
        .arg("--quiet")
        .arg("node")
        .arg("--home")
        .arg(home)
        .arg("--config")
        .arg(config)
        .args(["--blocks", &blocks.to_string()])
        .args(["--writes-per-block", "64", "--no-fsync"])
        // The store's page cache is what a lagging streamer's growing change
        // log fills; a small one shows the plateau within the smaller run.
        .args(["--cache-mb", &RSS_CACHE_MB.to_string()])
        .args(["--slow-streamer-ms", &SLOW_MS.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start statestream node")?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_path)
            && let Some(kb) = vm_hwm_kb(&text)
        {
            peak = peak.max(kb);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        bail!("statestream node failed ({status}): {}", err.trim());
    }
    if peak == 0 {
        bail!("could not read VmHWM of statestream node from {status_path}");
    }
    Ok(peak)
}

fn vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_between_the_nearest_values() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(median(&v), 2.5);
        assert_eq!(quantile(&v, 0.25), 1.75);
        assert_eq!(quantile(&v, 0.75), 3.25);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert_eq!(median(&[7.0]), 7.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn inverted_quartiles_stay_in_order() {
        let m = Alternated {
            a: 2.0,
            b: 1.0,
            ratio: 2.0,
            ratio_quartiles: (1.0, 4.0),
        };
        assert_eq!(m.inverted(), (0.5, (0.25, 1.0)));
    }
}
