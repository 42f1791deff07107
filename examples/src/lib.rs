//! The logic of statestream's runnable examples, as functions that the
//! examples' `main`s call and the tests run.
//!
//! - [`JsonLinesStreamer`]: a streamer type an application defines and
//!   registers itself (`type = "jsonl"`): one JSON line per record, to a
//!   file. [`custom_streamer_demo`] builds it from an `app.toml` text, next
//!   to the file streamer, and commits a few blocks
//!   (`examples/custom_streamer.rs`).
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

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;
use statestream::{Block, BlockMeta, DeliveryManager, Registry, StreamError, Streamer, Tx};
use statestream_config::AppConfig;
use statestream_file::{BlockDir, ReadOptions};
use statestream_store::{KvStore, MultiStore, StoreKey, to_hex};

/// The options of `type = "jsonl"`. The deserialized config is the factory:
/// unknown keys are errors that name the file, table, key and line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonLinesConfig {
    /// The file to write; a relative path is under the node's home.
    /// Default `"data/changes.jsonl"`.
    #[serde(default = "default_path")]
    pub path: PathBuf,
}

fn default_path() -> PathBuf {
    PathBuf::from("data/changes.jsonl")
}

/// Writes every record of every block as one JSON line:
/// `{"height":7,"store":"bank","key":"616c696365","value":"3130","delete":false}`
/// (bytes as lowercase hex, `value` null for a delete).
///
/// Idempotent per height, as the `Streamer` contract asks: on start it drops
/// the lines of the heights it is about to receive again, so a block
/// delivered twice after a crash appears once.
#[derive(Debug)]
pub struct JsonLinesStreamer {
    path: PathBuf,
    file: Option<File>,
}

impl JsonLinesStreamer {
    /// A streamer appending to `path`.
    pub fn new(path: PathBuf) -> JsonLinesStreamer {
        JsonLinesStreamer { path, file: None }
    }
}

/// The height of one of our lines.
fn line_height(line: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()?
        .get("height")?
        .as_u64()
}

impl Streamer for JsonLinesStreamer {
    fn on_start(&mut self, next_height: u64) -> Result<(), StreamError> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Keep the lines of the blocks before `next_height` only.
        let kept: Vec<String> = match File::open(&self.path) {
            Ok(f) => BufReader::new(f)
                .lines()
                .collect::<std::io::Result<Vec<_>>>()?
                .into_iter()
                .filter(|l| line_height(l).is_some_and(|h| h < next_height))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut file = File::create(&self.path)?;
        for line in kept {
            writeln!(file, "{line}")?;
        }
        drop(file);
        self.file = Some(OpenOptions::new().append(true).open(&self.path)?);
        Ok(())
    }

    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| StreamError::msg("on_block before on_start"))?;
        let mut lines = String::new();
        for r in block.records() {
            let line = serde_json::json!({
                "height": block.height(),
                "store": r.store,
                "key": to_hex(r.key),
                "value": r.value.map(to_hex),
                "delete": r.is_delete(),
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        // One write per block, then a sync: the block is delivered once
        // this returns.
        file.write_all(lines.as_bytes())?;
        file.sync_data()?;
        Ok(())
    }
}

/// Registers `type = "jsonl"` in an application's registry.
pub fn register_json_lines(registry: &mut Registry) {
    registry.register("jsonl", |ctx| {
        let config: JsonLinesConfig = ctx.options.parse()?;
        let path = if config.path.is_absolute() {
            config.path
        } else {
            ctx.home.join(config.path)
        };
        Ok(Box::new(JsonLinesStreamer::new(path)))
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
    statestream_file::register(&mut registry);
    register_json_lines(&mut registry);

    std::fs::create_dir_all(home.join("data"))?;
    let mut store = MultiStore::open(
        &home.join("data/store.redb"),
        &[acc.clone(), bank.clone()],
        Default::default(),
    )?;
    let mut manager = DeliveryManager::start(&mut store, &specs, &registry, home)?;
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
