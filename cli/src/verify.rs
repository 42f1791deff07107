//! `statestream verify`: proves a block directory whole.
//!
//! Checks, block by block, stopping at the first problem:
//! - heights are contiguous (a gap names the first missing block);
//! - every data file is complete (its length header matches its size) and,
//!   when it has a meta file, its payload's length and CRC-32C match it;
//! - the records decode and are strictly ordered by (store, key): no key
//!   twice in a block;
//! - with a meta file: the commit version is the height, the store hashes
//!   give the commit's app hash, and for every streamed store, `SHA-256(the
//!   store's hash after the previous block || the store's records)` is the
//!   store's hash after this block. The previous hashes come from the
//!   previous block's meta file; height 1 starts from the zero hash; the
//!   first block of a directory that starts later (or follows a block
//!   without a meta file) is taken as the anchor.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use statestream_core::{ZERO_HASH, app_hash, chain_store_hash, to_hex};
use statestream_file::BlockFile;
use statestream_store::{Hash, StoreKey};

use crate::blocks::{DirArgs, show};

/// Show a progress bar from this many blocks on.
const PROGRESS_FROM: usize = 500;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    dir: DirArgs,
}

#[derive(Debug, Default)]
pub(crate) struct Totals {
    blocks: u64,
    records: u64,
    /// Payload bytes of the data files.
    pub(crate) bytes: u64,
    without_meta: u64,
    chained_links: u64,
}

pub fn run(args: VerifyArgs, quiet: bool) -> Result<ExitCode> {
    let totals = verify(&args.dir, quiet).context("verify failed")?;
    if !quiet {
        let mut line = format!(
            "ok: {} blocks, {} records, {} payload bytes; {} store hash links checked",
            totals.blocks, totals.records, totals.bytes, totals.chained_links
        );
        if totals.without_meta > 0 {
            line.push_str(&format!(
                "; {} blocks have no meta file (no CRC or hash check for them)",
                totals.without_meta
            ));
        }
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Verifies the directory; `quiet` hides the progress bar.
pub(crate) fn verify(args: &DirArgs, quiet: bool) -> Result<Totals> {
    let dir = args.open()?;
    let heights = args.heights(&dir)?;
    let progress = (!quiet && heights.len() >= PROGRESS_FROM && std::io::stderr().is_terminal())
        .then(|| {
            let bar = ProgressBar::new(heights.len() as u64);
            if let Ok(style) = ProgressStyle::with_template("verify {bar:40} {pos}/{len} blocks") {
                bar.set_style(style);
            }
            bar
        });

    let mut totals = Totals::default();
    // Every store's hash after the previous block, when it had a meta file.
    let mut previous: Option<BTreeMap<String, Hash>> = None;
    let mut last_height: Option<u64> = None;
    for &height in &heights {
        if let Some(p) = last_height
            && height != p + 1
        {
            bail!(
                "{}: block {} is missing (the heights jump from {p} to {height})",
                dir.data_path(p + 1).display(),
                p + 1
            );
        }
        last_height = Some(height);
        let block = dir.open_block(height)?;
        totals.records += check_records(&block)?;
        totals.bytes += block.payload().len() as u64;
        totals.blocks += 1;
        previous = match block.meta() {
            Some(_) => {
                let (hashes, links) =
                    check_meta(&block, &dir.meta_path(height), previous.as_ref())?;
                totals.chained_links += links;
                Some(hashes)
            }
            None => {
                totals.without_meta += 1;
                None
            }
        };
        if let Some(bar) = &progress {
            bar.inc(1);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    Ok(totals)
}

/// Decodes every record and checks that it could have come from a store
/// (a valid store name, a non-empty key) and the (store, key) order; returns
/// how many.
fn check_records(block: &BlockFile) -> Result<u64> {
    let path = block.data_path();
    let mut last: Option<(&str, &[u8])> = None;
    let mut n = 0u64;
    for record in block.records() {
        let r = record?;
        if last.is_none_or(|(store, _)| store != r.store)
            && let Err(e) = StoreKey::new(r.store)
        {
            bail!("{}: record {n}: {e}", path.display());
        }
        if r.key.is_empty() {
            bail!(
                "{}: record {n} (store {}) has an empty key",
                path.display(),
                r.store
            );
        }
        if let Some((store, key)) = last {
            let ord = (store, key).cmp(&(r.store, r.key));
            if ord != std::cmp::Ordering::Less {
                bail!(
                    "{}: record {n} ({} {}) {} the record before it ({store} {})",
                    path.display(),
                    r.store,
                    show(r.key),
                    if ord.is_eq() {
                        "repeats"
                    } else {
                        "is ordered before"
                    },
                    show(key),
                );
            }
        }
        last = Some((r.store, r.key));
        n += 1;
    }
    Ok(n)
}

/// Checks a block's meta file against its data and the previous block's
/// hashes; returns every store's hash after the block and how many chain
/// links were checked.
fn check_meta(
    block: &BlockFile,
    meta_path: &Path,
    previous: Option<&BTreeMap<String, Hash>>,
) -> Result<(BTreeMap<String, Hash>, u64)> {
    let meta = block.meta().context("no metadata")?;
    let at = meta_path.display();
    let height = block.height();
    let commit = meta
        .commit
        .as_ref()
        .with_context(|| format!("{at}: the metadata has no commit info"))?;
    if commit.version != height {
        bail!(
            "{at}: the commit version is {}, the height {height}",
            commit.version
        );
    }

    let mut hashes = BTreeMap::new();
    let mut last_name: Option<&str> = None;
    for sh in &meta.store_hashes {
        if last_name.is_some_and(|l| l >= sh.store_key.as_str()) {
            bail!(
                "{at}: store hashes are not in store-name order at {:?}",
                sh.store_key
            );
        }
        last_name = Some(&sh.store_key);
        let hash: Hash = sh.hash.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!(
                "{at}: the hash of store {} is {} bytes, not 32",
                sh.store_key,
                sh.hash.len()
            )
        })?;
        hashes.insert(sh.store_key.clone(), hash);
    }
    let computed = app_hash(hashes.iter().map(|(n, h)| (n.as_str(), h)));
    if computed[..] != commit.app_hash[..] {
        bail!(
            "{at}: app hash mismatch: the store hashes give {}, the commit says {}",
            to_hex(&computed),
            to_hex(&commit.app_hash)
        );
    }

    let segments = block.store_segments()?;
    for (store, _) in &segments {
        if !meta.streamed_stores.iter().any(|s| s == store) {
            bail!(
                "{}: holds records of store {store}, which the meta file does not list as streamed",
                block.data_path().display()
            );
        }
    }
    let payload = block.payload();
    let mut links = 0;
    for store in &meta.streamed_stores {
        let expected = hashes
            .get(store)
            .with_context(|| format!("{at}: streamed store {store} has no hash"))?;
        let prev = if height == 1 {
            Some(&ZERO_HASH)
        } else {
            previous.and_then(|p| p.get(store))
        };
        // Without a previous hash this block is the chain's anchor.
        let Some(prev) = prev else { continue };
        let records = segments
            .iter()
            .find(|(s, _)| s == store)
            .map_or(&[][..], |(_, range)| &payload[range.clone()]);
        let got = chain_store_hash(prev, records);
        if &got != expected {
            bail!(
                "{}: hash chain broken for store {store}: the previous hash and this block's records give {}, the meta file says {}",
                block.data_path().display(),
                to_hex(&got),
                to_hex(expected)
            );
        }
        links += 1;
    }
    Ok((hashes, links))
}
