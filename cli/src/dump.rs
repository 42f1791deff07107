//! `statestream dump`: the records of block files, as text or JSON lines.

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use anyhow::Result;

use crate::blocks::{DirArgs, record_json, show, warn_gaps};

#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    #[command(flatten)]
    dir: DirArgs,

    /// First height to print.
    #[arg(long, value_name = "H")]
    from: Option<u64>,

    /// Last height to print.
    #[arg(long, value_name = "H")]
    to: Option<u64>,

    /// Only the records of this store (repeat for several).
    #[arg(long, value_name = "S")]
    store: Vec<String>,

    /// One JSON object per record: {"height", "store", "key", "key_utf8"?,
    /// "value", "value_utf8"?, "delete"}, bytes as lowercase hex.
    #[arg(long)]
    json: bool,
}

pub fn run(args: DumpArgs) -> Result<ExitCode> {
    if let (Some(from), Some(to)) = (args.from, args.to)
        && from > to
    {
        // A usage error (exit 2), like clap's own.
        let _ = writeln!(
            std::io::stderr().lock(),
            "statestream: error: --from {from} is above --to {to}: the range selects no block"
        );
        return Ok(ExitCode::from(2));
    }
    let dir = args.dir.open()?;
    let heights = args.dir.heights(&dir)?;
    let from = args.from.unwrap_or(0);
    let to = args.to.unwrap_or(u64::MAX);
    let selected: Vec<u64> = heights
        .iter()
        .copied()
        .filter(|&h| h >= from && h <= to)
        .collect();
    warn_gaps(&selected, "the other blocks are printed");
    let mut out = BufWriter::new(std::io::stdout().lock());
    for &height in &selected {
        let block = dir.open_block(height)?;
        for record in block.records() {
            let record = record?;
            if !args.store.is_empty() && !args.store.iter().any(|s| s == record.store) {
                continue;
            }
            if args.json {
                writeln!(out, "{}", record_json(height, &record))?;
            } else {
                match record.value {
                    Some(v) => writeln!(
                        out,
                        "{height} {} set {} = {}",
                        record.store,
                        show(record.key),
                        show(v)
                    )?,
                    None => writeln!(out, "{height} {} delete {}", record.store, show(record.key))?,
                }
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
