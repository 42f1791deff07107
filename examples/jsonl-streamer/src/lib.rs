//! A streamer crate as a third party writes one: it depends on
//! `statestream-core` alone (no store, no runtime, no TOML), implements
//! [`Streamer`], and gives its options as a serde type that the
//! application's registry parses (`examples/src/lib.rs` registers it as
//! `type = "jsonl"`).
//!
//! ```
//! use std::sync::Arc;
//! use statestream_core::{
//!     Block, BlockMeta, ChangeSet, StoreChanges, StoreKey, StoreSelection, Streamer, ZERO_HASH,
//! };
//! use statestream_example_jsonl::JsonLinesStreamer;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("changes.jsonl");
//! let mut streamer = JsonLinesStreamer::new(path.clone());
//! streamer.on_start(1)?;
//!
//! let bank = StoreKey::new("bank")?;
//! let mut changes = StoreChanges::new(bank.clone());
//! changes.push(b"alice", Some(b"10"), true);
//! let meta = BlockMeta::default();
//! let cs = ChangeSet::seal(1, meta.encode_app_meta(), vec![changes], &[ZERO_HASH]);
//! streamer.on_block(&Block::new(Arc::new(cs), Arc::new(meta), &StoreSelection::all(&[bank])))?;
//!
//! let text = std::fs::read_to_string(&path)?;
//! assert_eq!(
//!     text,
//!     "{\"delete\":false,\"height\":1,\"key\":\"616c696365\",\"store\":\"bank\",\"value\":\"3130\"}\n"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use serde::Deserialize;
use statestream_core::{Block, StreamError, Streamer, to_hex};

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
