//! `statestream replay`: rebuilds a store from block files.
//!
//! The new store has the stores named in the first meta file's store hashes
//! (or, without meta files, the stores seen in the records). Each block's
//! records are applied (set or delete) and committed; after each block with
//! a meta file, the hash of every streamed store must equal the meta file's,
//! and for an unfiltered stream (every store streamed) the app hash must
//! equal the commit's: the rebuilt state is then the node's, provably.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use statestream_core::to_hex;
use statestream_store::{CommitInfo, KvStore, MultiStore, StoreKey, StoreOptions};

use crate::blocks::DirArgs;

const STORE_PATH: &str = "data/store.redb";

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    dir: DirArgs,

    /// The home of the new store (HOME2/data/store.redb); it must not hold
    /// any block yet.
    #[arg(long, value_name = "HOME2")]
    into: PathBuf,

    /// Print {"height", "app_hash", ...} as the last line of stdout.
    #[arg(long)]
    json: bool,
}

/// What a replay did.
pub(crate) struct Replayed {
    pub(crate) blocks: usize,
    pub(crate) records: u64,
    /// Payload bytes of the data files replayed.
    pub(crate) bytes: u64,
    path: PathBuf,
    info: CommitInfo,
    names: Vec<String>,
    hashes_checked: u64,
    app_hash_checked: u64,
}

pub fn run(args: ReplayArgs, quiet: bool) -> Result<ExitCode> {
    let started = Instant::now();
    let r = replay(&args.dir, &args.into, quiet)?;
    let hash = to_hex(&r.info.app_hash);
    if !quiet || args.json {
        println!(
            "replayed {} blocks, {} records into {}; height {}, app hash {hash}",
            r.blocks,
            r.records,
            r.path.display(),
            r.info.version
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "height": r.info.version,
                "app_hash": hash,
                "blocks": r.blocks,
                "records": r.records,
                "stores": r.names,
                "store_hashes_checked": r.hashes_checked,
                "app_hashes_checked": r.app_hash_checked,
                "elapsed_ms": started.elapsed().as_millis() as u64,
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Replays the blocks of `args` into a new store in `into`, checking the
/// hashes; `quiet` hides the progress bar.
pub(crate) fn replay(args: &DirArgs, into: &Path, quiet: bool) -> Result<Replayed> {
    let dir = args.open()?;
    let heights = args.heights(&dir)?;
    if heights[0] != 1 {
        bail!(
            "{}: replay needs every block from height 1, the first block here is {}",
            args.dir.display(),
            heights[0]
        );
    }
    for (i, &h) in heights.iter().enumerate() {
        let expected = i as u64 + 1;
        if h != expected {
            bail!(
                "{}: block {expected} is missing",
                dir.data_path(expected).display()
            );
        }
    }

    let names: Vec<String> = {
        let first = dir.open_block(1)?;
        match first.meta() {
            Some(meta) if !meta.store_hashes.is_empty() => meta
                .store_hashes
                .iter()
                .map(|s| s.store_key.clone())
                .collect(),
            _ => {
                let mut seen = BTreeSet::new();
                for &h in &heights {
                    for r in dir.open_block(h)?.records() {
                        seen.insert(r?.store.to_string());
                    }
                }
                seen.into_iter().collect()
            }
        }
    };
    if names.is_empty() {
        bail!("{}: the blocks name no store", args.dir.display());
    }
    let keys = names
        .iter()
        .map(|n| StoreKey::new(n).with_context(|| format!("store name {n:?}")))
        .collect::<Result<Vec<_>>>()?;

    std::fs::create_dir_all(into.join("data"))
        .with_context(|| format!("cannot create {}", into.display()))?;
    let path = into.join(STORE_PATH);
    let mut store = MultiStore::open(
        &path,
        &keys,
        StoreOptions {
            fsync: false,
            ..StoreOptions::default()
        },
    )
    .with_context(|| format!("cannot open the store {}", path.display()))?;
    if store.version() != 0 {
        bail!(
            "{}: the store already holds {} blocks; replay into a new home",
            path.display(),
            store.version()
        );
    }

    let progress = (!quiet && heights.len() >= 500 && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(heights.len() as u64);
        if let Ok(style) = ProgressStyle::with_template("replay {bar:40} {pos}/{len} blocks") {
            bar.set_style(style);
        }
        bar
    });
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut hashes_checked = 0u64;
    let mut app_hash_checked = 0u64;
    for &height in &heights {
        let block = dir.open_block(height)?;
        bytes += block.payload().len() as u64;
        for r in block.records() {
            let r = r?;
            let key = keys.iter().find(|k| k.name() == r.store).with_context(|| {
                format!(
                    "{}: store {:?} is not among the stores of block 1 ({})",
                    block.data_path().display(),
                    r.store,
                    names.join(", ")
                )
            })?;
            match r.value {
                Some(v) => store.set(key, r.key, v)?,
                None => store.delete(key, r.key)?,
            }
            records += 1;
        }
        let info = store.commit()?;
        if let Some(meta) = block.meta() {
            for s in &meta.streamed_stores {
                let Some(key) = keys.iter().find(|k| k.name() == s) else {
                    continue;
                };
                let want = meta.store_hashes.iter().find(|h| &h.store_key == s);
                if let Some(want) = want
                    && store.store_hash(key)?[..] != want.hash[..]
                {
                    bail!(
                        "{}: after replaying block {height}, store {s} has hash {}, the meta file says {}",
                        block.data_path().display(),
                        to_hex(&store.store_hash(key)?),
                        to_hex(&want.hash)
                    );
                }
                hashes_checked += 1;
            }
            let unfiltered = meta.streamed_stores.len() == meta.store_hashes.len();
            if let (true, Some(commit)) = (unfiltered, &meta.commit) {
                if info.app_hash[..] != commit.app_hash[..] {
                    bail!(
                        "{}: after replaying block {height}, the app hash is {}, the meta file says {}",
                        block.data_path().display(),
                        to_hex(&info.app_hash),
                        to_hex(&commit.app_hash)
                    );
                }
                app_hash_checked += 1;
            }
        }
        if let Some(bar) = &progress {
            bar.inc(1);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let info = store.last_commit();
    store.close()?;
    Ok(Replayed {
        blocks: heights.len(),
        records,
        bytes,
        path,
        info,
        names,
        hashes_checked,
        app_hash_checked,
    })
}
