//! What the offline tools share: the block directory arguments, opening it,
//! and showing keys and values.

use std::path::PathBuf;

use anyhow::{Result, bail};
use statestream_core::{Record, to_hex};
use statestream_file::{BlockDir, ReadOptions};

/// The block directory and how to read it.
#[derive(Debug, Clone, clap::Args)]
pub struct DirArgs {
    /// The directory of block files (a file streamer's write_dir).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// The file streamer's prefix (files named P-block-N-data).
    #[arg(long, value_name = "P", default_value = "")]
    pub prefix: String,

    /// Map files into memory instead of reading them (faster on large
    /// files; the files must not change while they are read).
    #[arg(long)]
    pub mmap: bool,
}

impl DirArgs {
    /// Opens the directory; a missing one is an error naming it.
    pub fn open(&self) -> Result<BlockDir> {
        match std::fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{}: not a directory", self.dir.display()),
            Err(e) => bail!(
                "{}: cannot open the block directory: {e}",
                self.dir.display()
            ),
        }
        Ok(BlockDir::open(
            &self.dir,
            &self.prefix,
            ReadOptions::default().mmap(self.mmap),
        )?)
    }

    /// The heights in the directory; none is an error (a wrong directory or
    /// prefix, most likely).
    pub fn heights(&self, dir: &BlockDir) -> Result<Vec<u64>> {
        let heights = dir.heights()?;
        if heights.is_empty() {
            bail!(
                "{}: no block files{}",
                self.dir.display(),
                if self.prefix.is_empty() {
                    String::new()
                } else {
                    format!(" with prefix {:?}", self.prefix)
                }
            );
        }
        Ok(heights)
    }
}

/// The heights missing between the first and the last of `heights`
/// (sorted), as inclusive ranges.
fn gaps(heights: &[u64]) -> Vec<(u64, u64)> {
    heights
        .windows(2)
        .filter(|w| w[1] > w[0] + 1)
        .map(|w| (w[0] + 1, w[1] - 1))
        .collect()
}

/// Warns on stderr, in one line, about the heights missing between the
/// first and the last of `heights` (sorted): a tool that prints what is
/// there must not let a hole pass for a complete range. `then` says what
/// the tool does about it.
pub fn warn_gaps(heights: &[u64], then: &str) {
    let gaps = gaps(heights);
    if gaps.is_empty() {
        return;
    }
    const SHOWN: usize = 5;
    let missing: u64 = gaps.iter().map(|(a, b)| b - a + 1).sum();
    let mut ranges: Vec<String> = gaps
        .iter()
        .take(SHOWN)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if gaps.len() > SHOWN {
        ranges.push(format!("and {} more ranges", gaps.len() - SHOWN));
    }
    eprintln!(
        "statestream: warning: {missing} heights have no block file: {}; {then}",
        ranges.join(", ")
    );
}

/// `bytes` as text when they are UTF-8 without control characters.
pub fn printable(bytes: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(bytes).ok()?;
    (!s.chars().any(char::is_control)).then_some(s)
}

/// `bytes` for a human: quoted text when printable, else `0x` and hex.
pub fn show(bytes: &[u8]) -> String {
    match printable(bytes) {
        Some(s) => format!("{s:?}"),
        None => format!("0x{}", to_hex(bytes)),
    }
}

/// One record as a JSON object: bytes as lowercase hex, plus their text
/// (`key_utf8`, `value_utf8`) when printable.
pub fn record_json(height: u64, r: &Record<'_>) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    o.insert("height".into(), height.into());
    o.insert("store".into(), r.store.into());
    o.insert("key".into(), to_hex(r.key).into());
    if let Some(s) = printable(r.key) {
        o.insert("key_utf8".into(), s.into());
    }
    match r.value {
        Some(v) => {
            o.insert("value".into(), to_hex(v).into());
            if let Some(s) = printable(v) {
                o.insert("value_utf8".into(), s.into());
            }
        }
        None => {
            o.insert("value".into(), serde_json::Value::Null);
        }
    }
    o.insert("delete".into(), r.is_delete().into());
    serde_json::Value::Object(o)
}
