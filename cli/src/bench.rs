//! `statestream bench`: how fast the demo node commits and streams.
//!
//! Runs the demo workload in a fresh home (a temporary directory unless
//! `--home` is given), then reads the written blocks back, and reports
//! blocks, records and bytes per second for both.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use statestream_file::{BlockDir, ReadOptions};
use statestream_store::to_hex;

use crate::node::{self, NodeArgs};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Blocks to commit.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    blocks: u64,

    /// Writes the transactions of one block make.
    #[arg(long, value_name = "K", default_value_t = 64)]
    writes_per_block: usize,

    /// An app.toml (default: the node's built-in one, a file streamer).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Where to run (must not hold a store yet); default: a temporary
    /// directory, removed afterwards.
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,

    /// fsync every commit, as the node does by default (the benchmark
    /// does not, unless told).
    #[arg(long)]
    fsync: bool,

    /// One JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs, quiet: bool) -> Result<ExitCode> {
    let tmp;
    let home = match &args.home {
        Some(h) => {
            if h.join("data/store.redb").exists() {
                bail!(
                    "{}: already holds a store; bench needs a new home",
                    h.display()
                );
            }
            h.clone()
        }
        None => {
            tmp = tempfile_dir()?;
            tmp.path().to_path_buf()
        }
    };
    let node_args = NodeArgs::bench(
        home.clone(),
        args.config.clone(),
        args.blocks,
        args.writes_per_block,
        args.fsync,
    );
    let summary = node::execute(&node_args, quiet)?;
    let commit_secs = summary.elapsed.as_secs_f64().max(1e-9);

    // Read back what the default file streamer wrote (when it is there).
    let dir = home.join("data/streaming");
    let read = if dir.is_dir() {
        let started = Instant::now();
        let blocks = BlockDir::open(&dir, "", ReadOptions::default())?;
        let (mut n, mut bytes, mut records) = (0u64, 0u64, 0u64);
        for h in blocks.heights()? {
            let b = blocks.open_block(h)?;
            bytes += b.payload().len() as u64;
            for r in b.records() {
                r?;
                records += 1;
            }
            n += 1;
        }
        Some((n, records, bytes, started.elapsed().as_secs_f64().max(1e-9)))
    } else {
        None
    };

    let mut out = std::io::stdout().lock();
    let blocks = summary.committed;
    writeln!(
        out,
        "commit+stream: {blocks} blocks, {} records in {:.3} s: {:.0} blocks/s, {:.0} records/s",
        summary.records,
        commit_secs,
        blocks as f64 / commit_secs,
        summary.records as f64 / commit_secs
    )?;
    if let Some((n, records, bytes, secs)) = read {
        writeln!(
            out,
            "read back: {n} blocks, {records} records, {bytes} bytes in {secs:.3} s: {:.0} blocks/s, {:.1} MiB/s",
            n as f64 / secs,
            bytes as f64 / secs / (1024.0 * 1024.0)
        )?;
    }
    if args.json {
        let v = serde_json::json!({
            "height": summary.info.version,
            "app_hash": to_hex(&summary.info.app_hash),
            "blocks": blocks,
            "records": summary.records,
            "commit_ms": summary.elapsed.as_millis() as u64,
            "blocks_per_sec": blocks as f64 / commit_secs,
            "records_per_sec": summary.records as f64 / commit_secs,
            "read_blocks": read.map(|r| r.0),
            "read_bytes": read.map(|r| r.2),
            "read_ms": read.map(|r| (r.3 * 1000.0) as u64),
        });
        writeln!(out, "{v}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("statestream-bench-")
        .tempdir()?)
}
