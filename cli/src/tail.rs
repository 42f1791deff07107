//! `statestream tail`: one line per block, optionally following new blocks.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use statestream_core::to_hex;
use statestream_file::BlockFile;

use crate::blocks::{DirArgs, warn_gaps};

/// Without `--from`, start this many blocks before the last one.
const LAST_BLOCKS: u64 = 10;

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    dir: DirArgs,

    /// Keep waiting for new blocks (until interrupted).
    #[arg(long, short)]
    follow: bool,

    /// First height to print (default: the last 10 blocks).
    #[arg(long, value_name = "H")]
    from: Option<u64>,

    /// How often to look for new blocks with --follow, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    poll_ms: u64,

    /// One JSON object per block: {"height", "records", "bytes", "txs",
    /// "time", "app_hash", "store_hashes", "source_app_hash"} (hashes in
    /// hex, store_hashes by store); the last five are null for a block
    /// without a meta file.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TailArgs) -> Result<ExitCode> {
    let dir = args.dir.open()?;
    let heights = dir.heights()?;
    let from = match (args.from, heights.last()) {
        (Some(from), _) => from,
        (None, Some(&last)) => last.saturating_sub(LAST_BLOCKS - 1).max(heights[0]),
        (None, None) => 1,
    };
    let mut out = std::io::stdout().lock();
    let from_on: Vec<u64> = heights.iter().copied().filter(|&h| h >= from).collect();
    if args.follow {
        // Following waits for each height in turn: say so when one that is
        // missing already has later blocks after it (`from` itself
        // included).
        let mut probe = from_on.clone();
        if from > 0 && from_on.first().is_some_and(|&first| first > from) {
            probe.insert(0, from - 1);
        }
        warn_gaps(
            &probe,
            "--follow waits at the first of them until it appears",
        );
        for block in dir.follow(from, Duration::from_millis(args.poll_ms.max(1))) {
            print_block(&mut out, &block?, args.json)?;
            out.flush()?;
        }
    } else {
        if heights.is_empty() {
            args.dir.heights(&dir)?;
        }
        warn_gaps(&from_on, "the other blocks are printed");
        for &h in &from_on {
            print_block(&mut out, &dir.open_block(h)?, args.json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_block(out: &mut impl Write, block: &BlockFile, json: bool) -> Result<()> {
    let mut records = 0u64;
    for r in block.records() {
        r?;
        records += 1;
    }
    let meta = block.meta();
    let app_hash = meta.and_then(|m| m.commit.as_ref().map(|c| to_hex(&c.app_hash)));
    if json {
        let line = serde_json::json!({
            "height": block.height(),
            "records": records,
            "bytes": block.payload().len(),
            "txs": meta.map(|m| m.txs.len()),
            "time": meta.map(|m| m.time_seconds),
            "app_hash": app_hash,
            "store_hashes": meta.map(|m| {
                m.store_hashes
                    .iter()
                    .map(|h| (h.store_key.clone(), serde_json::Value::from(to_hex(&h.hash))))
                    .collect::<serde_json::Map<_, _>>()
            }),
            "source_app_hash": meta.map(|m| to_hex(&m.source_app_hash)),
        });
        writeln!(out, "{line}")?;
        return Ok(());
    }
    let (time, txs) = match meta {
        Some(m) => (m.time_seconds.to_string(), m.txs.len().to_string()),
        None => ("-".into(), "-".into()),
    };
    writeln!(
        out,
        "height={} records={records} bytes={} txs={txs} time={time} app_hash={}",
        block.height(),
        block.payload().len(),
        app_hash.as_deref().unwrap_or("-"),
    )?;
    Ok(())
}
