//! `statestream verify`: proves a block directory whole.
//!
//! Checks, block by block, stopping at the first problem:
//! - heights are contiguous (a gap names the first missing block);
//! - every data file is complete (its length header matches its size) and,
//!   when it has a meta file, the meta file's own checksum holds (when it has
//!   one) and the payload's length and CRC-32C match it;
//! - the records decode and are strictly ordered by (store, key): no key
//!   twice in a block;
//! - with a meta file: the commit version is the height, the store hashes
//!   give the commit's app hash, and for every streamed store, `SHA-256(the
//!   store's hash after the previous block || the store's records)` is the
//!   store's hash after this block.
//!
//! The hash chain runs through blocks without a meta file: their records
//! carry each streamed store's hash on (from the last meta file's hashes, or
//! from the zero hash at height 1), and the next meta file's hashes confirm
//! them, so a block without a meta file is verified by the next block with
//! one. Height 1 starts from the zero hash; the first meta file of a
//! directory that starts later is taken as the anchor. A block no later
//! meta file confirms (a data file without a meta file at the end of the
//! directory, or before the anchor) is unverifiable: `verify` fails on it,
//! naming it, after checking everything else.
//!
//! Meta files without a checksum of their own (written before statestream
//! wrote one, or by another writer) are accepted and listed: their other
//! fields (block time, transactions) are then not verified.
//!
//! Exit codes: 0 when every check passed, [`EXIT_INVALID`] when the blocks
//! are not whole or cannot be shown whole (the data is at fault),
//! [`EXIT_CANNOT_RUN`] when the check could not be made (a missing
//! directory, no block files, a file that cannot be read: the command or the
//! system is at fault), as `diff` and `cmp` do.

use std::collections::{BTreeMap, BTreeSet};
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

/// Exit code when a check failed: the blocks are not whole, or some of them
/// cannot be shown to be.
pub const EXIT_INVALID: u8 = 1;

/// Exit code when the check could not be made (the same as a usage error).
pub const EXIT_CANNOT_RUN: u8 = 2;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    dir: DirArgs,

    /// Print one JSON object on stdout: {"ok", "heights": {"first", "last",
    /// "count"}, "blocks", "records", "bytes", "chained_links",
    /// "without_meta", "unverifiable", "unverifiable_heights",
    /// "meta_without_checksum", "meta_without_checksum_heights", "problem":
    /// null or {"kind": "invalid", "unverifiable" or "cannot_run", "file",
    /// "offset", "height", "message"}}; the "*_heights" are lists of
    /// [first, last] ranges.
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
    /// The blocks no meta file confirms, in height order.
    unverifiable: Vec<u64>,
    /// Why the first of them cannot be verified.
    unverifiable_reason: Option<String>,
    /// The blocks whose meta file has no checksum of its own.
    meta_without_checksum: Vec<u64>,
    /// The heights of the directory: first, last and how many.
    heights: Option<(u64, u64, usize)>,
}

/// Why verification did not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The blocks are not whole.
    Invalid,
    /// Every check passed, but some blocks cannot be shown whole: no meta
    /// file confirms them.
    Unverifiable,
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
            Kind::Invalid | Kind::Unverifiable => "verify failed",
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
                | E::MetaCrc { path, .. }
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
                Kind::Invalid | Kind::Unverifiable => EXIT_INVALID,
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
                "; {} blocks have no meta file (no CRC check for them; their records are checked through the hash chain to the next meta file)",
                totals.without_meta
            ));
        }
        println!("{line}");
        if !totals.meta_without_checksum.is_empty() {
            println!(
                "not verified: {} meta files have no checksum of their own (heights {}): written before statestream wrote one, or by another writer; their block time, transactions and other fields are not checked",
                totals.meta_without_checksum.len(),
                show_ranges(&totals.meta_without_checksum)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sorted heights as inclusive `[first, last]` ranges.
fn ranges(heights: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &h in heights {
        match out.last_mut() {
            Some((_, last)) if h == *last + 1 => *last = h,
            _ => out.push((h, h)),
        }
    }
    out
}

/// Sorted heights for a human: `1-20, 25`, the first ranges only.
fn show_ranges(heights: &[u64]) -> String {
    crate::blocks::show_ranges(&ranges(heights))
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
                    Kind::Unverifiable => "unverifiable",
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
        "unverifiable": totals.unverifiable.len(),
        "unverifiable_heights": ranges(&totals.unverifiable),
        "meta_without_checksum": totals.meta_without_checksum.len(),
        "meta_without_checksum_heights": ranges(&totals.meta_without_checksum),
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
    if let Some(&first) = totals.unverifiable.first() {
        let file = dir.data_path(first);
        let reason = totals.unverifiable_reason.clone().unwrap_or_default();
        let mut message = format!(
            "{}: block {first} cannot be verified: {reason}",
            file.display()
        );
        if totals.unverifiable.len() > 1 {
            message.push_str(&format!(
                "; {} blocks cannot be verified in all (heights {})",
                totals.unverifiable.len(),
                show_ranges(&totals.unverifiable)
            ));
        }
        return Err(Box::new(Failure {
            kind: Kind::Unverifiable,
            error: anyhow::Error::msg(message),
            file: Some(file),
            offset: None,
            height: Some(first),
            totals,
        }));
    }
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

    let mut chain = Chain::default();
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
        if last_height.is_none() && height == 1 {
            chain.start_at_zero();
        }
        last_height = Some(height);
        let block = dir.open_block(height)?;
        totals.records += check_records(&block)?;
        totals.bytes += block.payload().len() as u64;
        totals.blocks += 1;
        if block.meta().is_some() {
            if !block.meta_has_checksum() {
                totals.meta_without_checksum.push(height);
            }
            let checked = check_meta(&block, &dir.meta_path(height), &chain, dir)?;
            totals.chained_links += checked.links;
            if let Err((heights, reason)) = chain.confirm(&block, checked) {
                totals.unverifiable_reason.get_or_insert(reason);
                totals.unverifiable.extend(heights);
            }
        } else {
            totals.without_meta += 1;
            chain.carry(&block)?;
        }
        if let Some(bar) = &progress {
            bar.inc(1);
        }
    }
    if !chain.pending.is_empty() {
        let reason = match chain.last_meta {
            Some(last) => format!(
                "it has no meta file, and no block after it has one (the last block with one is {last}): nothing confirms its records through the hash chain"
            ),
            None => "no block of the directory has a meta file (written with output-metadata = false?): the records decode and are in order, but nothing shows them whole".to_string(),
        };
        // Blocks are found unverifiable in height order: a reason found
        // earlier is about an earlier block.
        totals.unverifiable_reason.get_or_insert(reason);
        totals.unverifiable.append(&mut chain.pending);
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

/// What the hash chain knows after the blocks checked so far.
#[derive(Debug, Default)]
struct Chain {
    /// Each store's hash after the last block, where known.
    hashes: BTreeMap<String, Hash>,
    /// The hash after the last block of every store not in `hashes`, when
    /// known: from height 1 up to the first meta file, every store without
    /// records so far has the zero hash chained with empty strings.
    untouched: Option<Hash>,
    /// The stores the last meta file lists as streamed, which a block
    /// without a meta file carries on; `None` before any meta file (any
    /// store).
    streamed: Option<BTreeSet<String>>,
    /// The last block with a meta file.
    last_meta: Option<u64>,
    /// The blocks without a meta file since the last with one, for the next
    /// meta file to confirm.
    pending: Vec<u64>,
    /// The stores with records in the pending blocks.
    pending_stores: BTreeSet<String>,
    /// Why the pending blocks cannot be confirmed, once that is known.
    unconfirmable: Option<String>,
}

/// What [`check_meta`] found: every store's hash after the block, how many
/// chain links it checked, and the streamed stores whose previous hash was
/// not known (the block anchors their chains).
struct MetaChecked {
    hashes: BTreeMap<String, Hash>,
    links: u64,
    anchored: Vec<String>,
    streamed: BTreeSet<String>,
}

impl Chain {
    /// The directory starts at height 1: every store's chain starts from
    /// the zero hash.
    fn start_at_zero(&mut self) {
        self.untouched = Some(ZERO_HASH);
    }

    /// The hash of `store` after the last block, when known.
    fn previous(&self, store: &str) -> Option<&Hash> {
        self.hashes.get(store).or(self.untouched.as_ref())
    }

    /// Carries every streamed store's hash through a block without a meta
    /// file: its records, or an empty string for a store without any.
    fn carry(&mut self, block: &BlockFile) -> Result<()> {
        if self.last_meta.is_none() && self.untouched.is_none() {
            self.unconfirmable.get_or_insert_with(|| {
                "it has no meta file, and neither has any block before it in a directory that does not start at height 1: nothing gives the store hashes its records follow".to_string()
            });
        }
        let segments = block.store_segments()?;
        let payload = block.payload();
        let mut next = BTreeMap::new();
        for (store, range) in &segments {
            if let Some(streamed) = &self.streamed
                && !streamed.contains(store)
            {
                let last = self.last_meta.unwrap_or_default();
                self.unconfirmable.get_or_insert_with(|| {
                    format!(
                        "it has no meta file and holds records of store {store}, which the last meta file (block {last}) does not list as streamed"
                    )
                });
                continue;
            }
            self.pending_stores.insert(store.clone());
            if let Some(prev) = self.previous(store) {
                next.insert(
                    store.clone(),
                    chain_store_hash(prev, &payload[range.clone()]),
                );
            }
        }
        for (store, hash) in &self.hashes {
            let carried = self.streamed.as_ref().is_none_or(|s| s.contains(store));
            if carried && !segments.iter().any(|(s, _)| s == store) {
                next.insert(store.clone(), chain_store_hash(hash, &[]));
            }
        }
        self.hashes = next;
        self.untouched = self.untouched.map(|h| chain_store_hash(&h, &[]));
        self.pending.push(block.height());
        Ok(())
    }

    /// Takes block `block`'s meta file (checked by [`check_meta`]) as the
    /// chain's new start. Its hashes confirm the pending blocks when every
    /// store they touched is streamed and was linked; otherwise returns the
    /// pending blocks, which cannot be verified, and why.
    fn confirm(
        &mut self,
        block: &BlockFile,
        checked: MetaChecked,
    ) -> std::result::Result<(), (Vec<u64>, String)> {
        let pending = std::mem::take(&mut self.pending);
        let stores = std::mem::take(&mut self.pending_stores);
        let unconfirmable = self.unconfirmable.take();
        let height = block.height();
        let result = if pending.is_empty() {
            Ok(())
        } else if let Some(reason) = unconfirmable {
            Err((pending, reason))
        } else if let Some(store) = checked.anchored.first() {
            Err((
                pending,
                format!(
                    "it has no meta file, and the hash of store {store} before it is not known: block {height}'s meta file cannot confirm it"
                ),
            ))
        } else if let Some(store) = stores.iter().find(|s| !checked.streamed.contains(*s)) {
            Err((
                pending,
                format!(
                    "it has no meta file and holds records of store {store}, which block {height}'s meta file does not list as streamed"
                ),
            ))
        } else {
            Ok(())
        };
        self.hashes = checked.hashes;
        self.untouched = None;
        self.streamed = Some(checked.streamed);
        self.last_meta = Some(height);
        result
    }
}

/// Checks a block's meta file against its data and the hash chain (see
/// [`Chain`]); returns what the chain needs from it.
fn check_meta(
    block: &BlockFile,
    meta_path: &Path,
    chain: &Chain,
    dir: &statestream_file::BlockDir,
) -> Result<MetaChecked> {
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
    let mut anchored = Vec::new();
    for store in &meta.streamed_stores {
        let Some(expected) = hashes.get(store) else {
            bad!(meta_path, height, "streamed store {store} has no hash");
        };
        let prev = if height == 1 {
            Some(&ZERO_HASH)
        } else {
            chain.previous(store)
        };
        // Without a previous hash this block is the chain's anchor.
        let Some(prev) = prev else {
            anchored.push(store.clone());
            continue;
        };
        let records = segments
            .iter()
            .find(|(s, _)| s == store)
            .map_or(&[][..], |(_, range)| &payload[range.clone()]);
        let got = chain_store_hash(prev, records);
        if &got != expected {
            // The blocks since the last meta file have no CRC and no hashes
            // of their own: the damage is in one of them (this block's data
            // and meta file passed their checksums).
            if let (Some(&first), Some(&last)) = (chain.pending.first(), chain.pending.last()) {
                let since = chain.last_meta.map_or("the zero hash".to_string(), |m| {
                    format!("the hash after block {m}")
                });
                let which = if first == last {
                    format!("block {first} has no meta file: its data file was altered or replaced")
                } else {
                    format!(
                        "blocks {first} to {last} have no meta file: one of their data files was altered or replaced"
                    )
                };
                bad!(
                    dir.data_path(first),
                    first,
                    "hash chain broken for store {store} at block {height}: {since} and the records of blocks {first} to {height} give {}, block {height}'s meta file says {}; {which}",
                    to_hex(&got),
                    to_hex(expected)
                );
            }
            bad!(
                block.data_path(),
                height,
                "hash chain broken for store {store}: the previous hash and this block's records give {}, the meta file says {}",
                to_hex(&got),
                to_hex(expected)
            );
        }
        links += 1 + chain.pending.len() as u64;
    }
    Ok(MetaChecked {
        hashes,
        links,
        anchored,
        streamed: meta.streamed_stores.iter().cloned().collect(),
    })
}
