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
            print_block(&mut out, &block?)?;
            out.flush()?;
        }
    } else {
        if heights.is_empty() {
            args.dir.heights(&dir)?;
        }
        warn_gaps(&from_on, "the other blocks are printed");
        for &h in &from_on {
            print_block(&mut out, &dir.open_block(h)?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_block(out: &mut impl Write, block: &BlockFile) -> Result<()> {
    let mut records = 0u64;
    for r in block.records() {
        r?;
        records += 1;
    }
    let (time, app_hash, txs) = match block.meta() {
        Some(m) => (
            m.time_seconds.to_string(),
            m.commit
                .as_ref()
                .map_or_else(|| "-".to_string(), |c| to_hex(&c.app_hash)),
            m.txs.len().to_string(),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    writeln!(
        out,
        "height={} records={records} bytes={} txs={txs} time={time} app_hash={app_hash}",
        block.height(),
        block.payload().len(),
    )?;
    Ok(())
}
