//! `statestream stats`: per-store counts and a per-block size histogram.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use crate::blocks::DirArgs;

/// Upper bounds (exclusive) of the payload-size buckets, in bytes; a last
/// bucket holds the larger blocks.
const BUCKETS: [u64; 7] = [1, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 1 << 20];

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    dir: DirArgs,

    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default)]
struct StoreStats {
    records: u64,
    sets: u64,
    deletes: u64,
    bytes: u64,
    blocks: u64,
}

pub fn run(args: StatsArgs) -> Result<ExitCode> {
    let dir = args.dir.open()?;
    let heights = args.dir.heights(&dir)?;
    let mut stores: BTreeMap<String, StoreStats> = BTreeMap::new();
    let mut histogram = [0u64; BUCKETS.len() + 1];
    let mut bytes = 0u64;
    let mut records = 0u64;
    let mut largest = (0u64, 0u64);
    for &h in &heights {
        let block = dir.open_block(h)?;
        let size = block.payload().len() as u64;
        bytes += size;
        if size > largest.1 || largest.0 == 0 {
            largest = (h, size);
        }
        let bucket = BUCKETS
            .iter()
            .position(|&b| size < b)
            .unwrap_or(BUCKETS.len());
        histogram[bucket] += 1;
        for (store, range) in block.store_segments()? {
            let s = stores.entry(store).or_default();
            s.bytes += range.len() as u64;
            s.blocks += 1;
        }
        for r in block.records() {
            let r = r?;
            records += 1;
            let s = stores.entry(r.store.to_string()).or_default();
            s.records += 1;
            if r.is_delete() {
                s.deletes += 1;
            } else {
                s.sets += 1;
            }
        }
    }
    let (first, last) = (heights[0], heights[heights.len() - 1]);
    // Heights absent between the first and the last (verify names them).
    let missing = (last - first + 1) - heights.len() as u64;
    let label = |i: usize| match i {
        0 => "0 B".to_string(),
        _ if i == BUCKETS.len() => format!(">= {}", human(BUCKETS[i - 1])),
        _ => format!("< {}", human(BUCKETS[i])),
    };

    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "blocks": heights.len(),
            "first_height": first,
            "last_height": last,
            "missing_heights": missing,
            "records": records,
            "bytes": bytes,
            "largest_block": {"height": largest.0, "bytes": largest.1},
            "stores": stores.iter().map(|(name, s)| serde_json::json!({
                "store": name,
                "records": s.records,
                "sets": s.sets,
                "deletes": s.deletes,
                "bytes": s.bytes,
                "blocks": s.blocks,
            })).collect::<Vec<_>>(),
            "histogram": histogram.iter().enumerate().map(|(i, n)| serde_json::json!({
                "bucket": label(i),
                "below_bytes": BUCKETS.get(i),
                "blocks": n,
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{v}")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{} blocks ({first}..={last}), {records} records, {bytes} payload bytes; largest block {} ({} bytes)",
        heights.len(),
        largest.0,
        largest.1
    )?;
    if missing > 0 {
        writeln!(
            out,
            "warning: {missing} heights between {first} and {last} have no block file (statestream verify names the first)"
        )?;
    }
    writeln!(
        out,
        "{:<16} {:>10} {:>10} {:>10} {:>12} {:>8}",
        "store", "records", "sets", "deletes", "bytes", "blocks"
    )?;
    for (name, s) in &stores {
        writeln!(
            out,
            "{name:<16} {:>10} {:>10} {:>10} {:>12} {:>8}",
            s.records, s.sets, s.deletes, s.bytes, s.blocks
        )?;
    }
    writeln!(out, "block payload sizes:")?;
    let max = histogram.iter().copied().max().unwrap_or(0).max(1);
    for (i, &n) in histogram.iter().enumerate() {
        let bar = "#".repeat(((n * 40).div_ceil(max)) as usize);
        writeln!(out, "  {:>10} {n:>8} {bar}", label(i))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}
