//! `statestream cursors`: the streamers' cursors a node's store holds, and
//! deleting one that is no longer wanted.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use statestream_store::{MultiStore, StoreOptions};

use crate::node::STORE_PATH;

#[derive(Debug, clap::Args)]
pub struct CursorsArgs {
    /// The node's home (the store is HOME/data/store.redb). The node must
    /// not be running.
    #[arg(long, value_name = "DIR")]
    home: PathBuf,

    /// Delete this streamer's cursor (repeat for several): a streamer of
    /// that name configured later starts with the next block, as a new one
    /// does, instead of asking for blocks the change log no longer holds.
    #[arg(long, value_name = "NAME")]
    delete: Vec<String>,

    /// One JSON object: height, change_log (first, last or null), deleted
    /// (the names given to --delete), cursors (name, height, behind).
    #[arg(long)]
    json: bool,
}

pub fn run(args: CursorsArgs) -> Result<ExitCode> {
    let path = args.home.join(STORE_PATH);
    if !path.is_file() {
        bail!("{}: no store (is --home a node's home?)", path.display());
    }
    let mut store = match MultiStore::open_existing(&path, StoreOptions::default()) {
        Ok(store) => store,
        Err(statestream_store::Error::InUse { .. }) => {
            bail!(
                "{}: a running node holds the store: stop it first",
                path.display()
            )
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot open the store at {}", path.display()));
        }
    };
    let cursors = store.cursors()?;
    if let Some(unknown) = args
        .delete
        .iter()
        .find(|n| !cursors.iter().any(|(c, _)| c == *n))
    {
        let known: Vec<&str> = cursors.iter().map(|(n, _)| n.as_str()).collect();
        bail!(
            "no cursor named {unknown:?} (the store holds: {}); nothing was deleted",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    }
    for name in &args.delete {
        store.delete_cursor(name)?;
    }
    let height = store.version();
    let log = store.change_log().bounds()?;
    let cursors = store.cursors()?;
    store.close()?;

    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::json!({
            "height": height,
            "change_log": log.map(|(first, last)| serde_json::json!({"first": first, "last": last})),
            "deleted": args.delete,
            "cursors": cursors.iter().map(|(name, h)| serde_json::json!({
                "name": name,
                "height": h,
                "behind": height.saturating_sub(*h),
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{json}")?;
        return Ok(ExitCode::SUCCESS);
    }
    for name in &args.delete {
        writeln!(out, "deleted the cursor {name:?}")?;
    }
    match log {
        Some((first, last)) => writeln!(
            out,
            "committed height {height}; change log holds blocks {first}..={last}"
        )?,
        None => writeln!(out, "committed height {height}; change log empty")?,
    }
    if cursors.is_empty() {
        writeln!(out, "no cursors")?;
    }
    for (name, h) in &cursors {
        writeln!(
            out,
            "{name:<24} height {h:>10}  behind {:>8}",
            height.saturating_sub(*h)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
