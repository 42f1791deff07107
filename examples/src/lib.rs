//! The logic of statestream's runnable examples, as functions that the
//! examples' `main`s call and the tests run.
//!
//! - [`register_json_lines`]: registers a third-party streamer type
//!   (`type = "jsonl"`, one JSON line per record, from the crate
//!   `statestream-example-jsonl` in `examples/jsonl-streamer/`, which
//!   depends on `statestream-core` alone). [`custom_streamer_demo`] builds
//!   it from an `app.toml` text, next to the file streamer, and commits a
//!   few blocks (`examples/custom_streamer.rs`).
//! - [`read_blocks`]: reads block files with [`statestream_file::BlockDir`]
//!   (`examples/read_blocks.rs`).
//!
//! ```
//! let home = tempfile::tempdir()?;
//! let lines = statestream_examples::custom_streamer_demo(home.path())?;
//! assert!(lines.iter().all(|l| l.contains(r#""store":"bank""#)));
//!
//! let mut out = Vec::new();
//! let dir = home.path().join("data/streaming");
//! let summary = statestream_examples::read_blocks(&dir, "", &mut out)?;
//! assert_eq!(summary.blocks, 3);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use statestream::to_hex;
use statestream::{BlockMeta, DeliveryManager, Registry, Tx};
use statestream_config::AppConfig;
use statestream_file::{BlockDir, ReadOptions};
use statestream_store::{KvStore, MultiStore, StoreKey};

/// Registers `type = "jsonl"` in an application's registry.
pub fn register_json_lines(registry: &mut Registry) {
    registry.register("jsonl", |ctx, options| {
        let config: statestream_example_jsonl::JsonLinesConfig = options.parse()?;
        let path = if config.path.is_absolute() {
            config.path
        } else {
            ctx.home.join(config.path)
        };
        Ok(Box::new(statestream_example_jsonl::JsonLinesStreamer::new(
            path,
        )))
    });
}

/// The `app.toml` of [`custom_streamer_demo`]: our streamer on the `bank`
/// store, next to a file streamer on every store.
pub const DEMO_APP_TOML: &str = r#"
[store]
streamers = ["changes", "file"]

[streamers.changes]
type = "jsonl"
keys = ["bank"]
path = "data/changes.jsonl"
delivery = "sync"

[streamers.file]
keys = ["*"]
write_dir = "data/streaming"
"#;

/// Builds the streamers of [`DEMO_APP_TOML`] with a registry that knows
/// `jsonl`, commits three blocks on a store in `home`, and returns the JSON
/// lines our streamer wrote.
pub fn custom_streamer_demo(home: &Path) -> Result<Vec<String>> {
    let config = AppConfig::parse(DEMO_APP_TOML, Path::new("<example app.toml>"))?;
    let bank = StoreKey::new("bank")?;
    let acc = StoreKey::new("acc")?;
    let specs = config.resolve(&["acc", "bank"])?;

    let mut registry = Registry::with_builtins();
    register_json_lines(&mut registry);

    std::fs::create_dir_all(home.join("data"))?;
    let mut store = MultiStore::open(
        &home.join("data/store.redb"),
        &[acc.clone(), bank.clone()],
        Default::default(),
    )?;
    let mut manager = DeliveryManager::builder()
        .configured(&specs, &registry, home)
        .shutdown_timeout(config.shutdown_timeout())
        .start(&mut store)?;
    let first = store.version() + 1;
    for height in first..first + 3 {
        let mut tx = store.cache();
        tx.set(&acc, b"alice", b"{\"name\":\"alice\"}")?;
        tx.set(&bank, b"alice", (100 * height).to_string().as_bytes())?;
        tx.set(&bank, b"bob", height.to_string().as_bytes())?;
        if height % 2 == 0 {
            tx.delete(&bank, b"bob")?;
        }
        tx.write()?;
        let meta = BlockMeta {
            time_seconds: 1_767_225_600 + 5 * height as i64,
            txs: vec![Tx {
                request: format!("pay alice {height}").into_bytes(),
                response: b"ok".to_vec(),
            }],
            ..BlockMeta::default()
        };
        manager.commit(&mut store, meta)?;
    }
    manager.close(&mut store)?;
    store.close()?;

    let path = home.join("data/changes.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(str::to_string).collect())
}

/// What [`read_blocks`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadSummary {
    /// Blocks read.
    pub blocks: u64,
    /// Records read.
    pub records: u64,
    /// The app hash of the last block with a meta file, in hex.
    pub last_app_hash: Option<String>,
}

/// Reads every block of `dir` (files `[prefix-]block-N-data`): prints one
/// line per block and one per record to `out`.
pub fn read_blocks(dir: &Path, prefix: &str, out: &mut dyn Write) -> Result<ReadSummary> {
    let blocks = BlockDir::open(dir, prefix, ReadOptions::default())?;
    let mut summary = ReadSummary::default();
    for height in blocks.heights()? {
        // Opening checks the file against its header and, when there is a
        // meta file, its length and CRC-32C.
        let block = blocks.open_block(height)?;
        let app_hash = block
            .meta()
            .and_then(|m| m.commit.as_ref())
            .map(|c| to_hex(&c.app_hash));
        writeln!(
            out,
            "block {height}: {} payload bytes, app hash {}",
            block.payload().len(),
            app_hash.as_deref().unwrap_or("-")
        )?;
        for record in block.records() {
            let r = record?;
            let key = String::from_utf8_lossy(r.key);
            match r.value {
                Some(v) => writeln!(out, "  {} {key} = {}", r.store, String::from_utf8_lossy(v))?,
                None => writeln!(out, "  {} {key} deleted", r.store)?,
            }
            summary.records += 1;
        }
        summary.blocks += 1;
        if app_hash.is_some() {
            summary.last_app_hash = app_hash;
        }
    }
    Ok(summary)
}
