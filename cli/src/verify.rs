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

//!
//! Exit codes: 0 when every check passed, [`EXIT_INVALID`] when the blocks
//! are not whole (the data is at fault), [`EXIT_CANNOT_RUN`] when the check
//! could not be made (a missing directory, no block files, a file that cannot
//! be read: the command or the system is at fault), as `diff` and `cmp` do.

use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use statestream_core::{ZERO_HASH, app_hash, chain_store_hash, to_hex};
use statestream_file::BlockFile;
use statestream_store::{Hash, StoreKey};

use crate::blocks::{DirArgs, show};

/// Show a progress bar from this many blocks on.
const PROGRESS_FROM: usize = 500;

/// Exit code when a check failed: the blocks are not whole.
pub const EXIT_INVALID: u8 = 1;

/// Exit code when the check could not be made (the same as a usage error).
pub const EXIT_CANNOT_RUN: u8 = 2;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    dir: DirArgs,

    /// Print one JSON object on stdout: {"ok", "heights": {"first", "last",
    /// "count"}, "blocks", "records", "bytes", "chained_links",
    /// "without_meta", "problem": null or {"kind": "invalid" or
    /// "cannot_run", "file", "offset", "height", "message"}}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Totals {
    blocks: u64,
    records: u64,
    /// Payload bytes of the data files.
    pub(crate) bytes: u64,
    without_meta: u64,
    chained_links: u64,
    /// The heights of the directory: first, last and how many.
    heights: Option<(u64, u64, usize)>,
}

/// Why verification did not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The blocks are not whole.
    Invalid,
    /// The check could not be made.
    CannotRun,
}

/// The first problem found, with what was checked before it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: Kind,
    error: anyhow::Error,
    /// The file at fault, and the byte offset in it when known.
    file: Option<PathBuf>,
    offset: Option<u64>,
    height: Option<u64>,
    totals: Totals,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::Invalid => "verify failed",
            Kind::CannotRun => "verify could not run",
        };
        write!(f, "{what}: {}", crate::chain(&self.error))
    }
}

impl std::error::Error for Failure {}

impl Failure {
    fn cannot_run(error: anyhow::Error, totals: &Totals) -> Failure {
        Failure {
            kind: Kind::CannotRun,
            error,
            file: None,
            offset: None,
            height: None,
            totals: totals.clone(),
        }
    }

    /// Classifies an error met while checking the blocks: one the reader or
    /// a check found in the data, or an I/O error (the check could not be
    /// made).
    fn classify(error: anyhow::Error, totals: &Totals) -> Failure {
        use statestream_file::Error as E;
        let (kind, file, offset) = if let Some(bad) = error.downcast_ref::<Bad>() {
            (Kind::Invalid, Some(bad.file.clone()), None)
        } else if let Some(e) = error.downcast_ref::<E>() {
            match e {
                // A directory where a block file belongs is a fault of the
                // block directory; other I/O errors (permissions, a failing
                // disk) keep the check from being made.
                E::Io { path, source, .. } => {
                    let kind = match source.kind() {
                        std::io::ErrorKind::IsADirectory
                        | std::io::ErrorKind::InvalidData
                        | std::io::ErrorKind::UnexpectedEof => Kind::Invalid,
                        _ => Kind::CannotRun,
                    };
                    (kind, Some(path.clone()), None)
                }
                E::BadRecord { path, offset, .. } | E::Order { path, offset, .. } => {
                    (Kind::Invalid, Some(path.clone()), Some(*offset))
                }
                E::TruncatedHeader { path, .. } | E::HeaderLength { path, .. } => {
                    (Kind::Invalid, Some(path.clone()), Some(0))
                }
                E::BadMeta { path, .. } => (Kind::Invalid, Some(path.clone()), Some(8)),
                E::MissingBlock { path, .. }
                | E::MetaHeight { path, .. }
                | E::PayloadLength { path, .. }
                | E::Crc { path, .. } => (Kind::Invalid, Some(path.clone()), None),
                _ => (Kind::Invalid, None, None),
            }
        } else {
            (Kind::Invalid, None, None)
        };
        let height = error
            .downcast_ref::<E>()
            .and_then(E::height)
            .or_else(|| error.downcast_ref::<Bad>().map(|bad| bad.height));
        Failure {
            kind,
            error,
            file,
            offset,
            height,
            totals: totals.clone(),
        }
    }
}

/// A problem a check of this module found in a block's files.
#[derive(Debug)]
struct Bad {
    file: PathBuf,
    height: u64,
    message: String,
}

impl fmt::Display for Bad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

impl std::error::Error for Bad {}

/// Returns early with a [`Bad`] about `file` of block `height`.
macro_rules! bad {
    ($file:expr, $height:expr, $($message:tt)*) => {
        return Err(anyhow::Error::new(Bad {
            file: $file.to_path_buf(),
            height: $height,
            message: format!($($message)*),
        }))
    };
}

pub fn run(args: VerifyArgs, quiet: bool) -> Result<ExitCode> {
    let outcome = verify(&args.dir, quiet);
    if args.json {
        println!("{}", json(&outcome));
    }
    let totals = match outcome {
        Ok(totals) => totals,
        Err(failure) => {
            crate::report(&failure.to_string());
            return Ok(ExitCode::from(match failure.kind {
                Kind::Invalid => EXIT_INVALID,
                Kind::CannotRun => EXIT_CANNOT_RUN,
            }));
        }
    };
    if !quiet && !args.json {
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

/// The outcome as one JSON object (see `--json`).
fn json(outcome: &std::result::Result<Totals, Box<Failure>>) -> serde_json::Value {
    let (totals, problem) = match outcome {
        Ok(totals) => (totals, serde_json::Value::Null),
        Err(failure) => (
            &failure.totals,
            serde_json::json!({
                "kind": match failure.kind {
                    Kind::Invalid => "invalid",
                    Kind::CannotRun => "cannot_run",
                },
                "file": failure.file.as_ref().map(|f| f.display().to_string()),
                "offset": failure.offset,
                "height": failure.height,
                "message": crate::chain(&failure.error),
            }),
        ),
    };
    let heights = totals.heights.map(
        |(first, last, count)| serde_json::json!({ "first": first, "last": last, "count": count }),
    );
    serde_json::json!({
        "ok": outcome.is_ok(),
        "heights": heights,
        "blocks": totals.blocks,
        "records": totals.records,
        "bytes": totals.bytes,
        "chained_links": totals.chained_links,
        "without_meta": totals.without_meta,
        "problem": problem,
    })
}

/// Verifies the directory; `quiet` hides the progress bar.
pub(crate) fn verify(args: &DirArgs, quiet: bool) -> std::result::Result<Totals, Box<Failure>> {
    let mut totals = Totals::default();
    let opened = args.open().and_then(|dir| Ok((args.heights(&dir)?, dir)));
    let (heights, dir) = opened.map_err(|e| Box::new(Failure::cannot_run(e, &totals)))?;
    if let (Some(&first), Some(&last)) = (heights.first(), heights.last()) {
        totals.heights = Some((first, last, heights.len()));
    }
    check_blocks(&dir, &heights, quiet, &mut totals)
        .map_err(|e| Box::new(Failure::classify(e, &totals)))?;
    Ok(totals)
}

/// Checks the blocks at `heights`, counting into `totals`; stops at the first problem.
fn check_blocks(
    dir: &statestream_file::BlockDir,
    heights: &[u64],
    quiet: bool,
    totals: &mut Totals,
) -> Result<()> {
    let progress = (!quiet && heights.len() >= PROGRESS_FROM && std::io::stderr().is_terminal())
        .then(|| {
            let bar = ProgressBar::new(heights.len() as u64);
            if let Ok(style) = ProgressStyle::with_template("verify {bar:40} {pos}/{len} blocks") {
                bar.set_style(style);
            }
            bar
        });

    // Every store's hash after the previous block, when it had a meta file.
    let mut previous: Option<BTreeMap<String, Hash>> = None;
    let mut last_height: Option<u64> = None;
    for &height in heights {
        if let Some(p) = last_height
            && height != p + 1
        {
            bad!(
                dir.data_path(p + 1),
                p + 1,
                "block {} is missing (the heights jump from {p} to {height})",
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
    Ok(())
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
            bad!(path, block.height(), "record {n}: {e}");
        }
        if r.key.is_empty() {
            bad!(
                path,
                block.height(),
                "record {n} (store {}) has an empty key",
                r.store
            );
        }
        if let Some((store, key)) = last {
            let ord = (store, key).cmp(&(r.store, r.key));
            if ord != std::cmp::Ordering::Less {
                bad!(
                    path,
                    block.height(),
                    "record {n} ({} {}) {} the record before it ({store} {})",
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
    let height = block.height();
    let Some(commit) = meta.commit.as_ref() else {
        bad!(meta_path, height, "the metadata has no commit info");
    };
    if commit.version != height {
        bad!(
            meta_path,
            height,
            "the commit version is {}, the height {height}",
            commit.version
        );
    }

    let mut hashes = BTreeMap::new();
    let mut last_name: Option<&str> = None;
    for sh in &meta.store_hashes {
        if last_name.is_some_and(|l| l >= sh.store_key.as_str()) {
            bad!(
                meta_path,
                height,
                "store hashes are not in store-name order at {:?}",
                sh.store_key
            );
        }
        last_name = Some(&sh.store_key);
        let Ok(hash) = Hash::try_from(sh.hash.as_slice()) else {
            bad!(
                meta_path,
                height,
                "the hash of store {} is {} bytes, not 32",
                sh.store_key,
                sh.hash.len()
            );
        };
        hashes.insert(sh.store_key.clone(), hash);
    }
    let computed = app_hash(hashes.iter().map(|(n, h)| (n.as_str(), h)));
    if computed[..] != commit.app_hash[..] {
        bad!(
            meta_path,
            height,
            "app hash mismatch: the store hashes give {}, the commit says {}",
            to_hex(&computed),
            to_hex(&commit.app_hash)
        );
    }

    let segments = block.store_segments()?;
    for (store, _) in &segments {
        if !meta.streamed_stores.iter().any(|s| s == store) {
            bad!(
                block.data_path(),
                height,
                "holds records of store {store}, which the meta file does not list as streamed"
            );
        }
    }
    let payload = block.payload();
    let mut links = 0;
    for store in &meta.streamed_stores {
        let Some(expected) = hashes.get(store) else {
            bad!(meta_path, height, "streamed store {store} has no hash");
        };
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
            bad!(
                block.data_path(),
                height,
                "hash chain broken for store {store}: the previous hash and this block's records give {}, the meta file says {}",
                to_hex(&got),
                to_hex(expected)
            );
        }
        links += 1;
    }
    Ok((hashes, links))
}
