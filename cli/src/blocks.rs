//! What the offline tools share: the block directory arguments, opening it,
//! and showing keys and values.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use statestream_core::{Record, to_hex};
use statestream_file::{BlockDir, ReadOptions};

/// The block directory and how to read it.
#[derive(Debug, Clone, clap::Args)]
pub struct DirArgs {
    /// The directory of block files (a file streamer's write_dir).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// The file streamer's prefix (files named P-block-N-data; "" for
    /// block-N-data). Without it: the one prefix whose files the directory
    /// holds (several: an error naming them).
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,

    /// Map files into memory instead of reading them (faster on large
    /// files; the files must not change while they are read).
    #[arg(long)]
    pub mmap: bool,
}

impl DirArgs {
    /// Opens the directory; a missing one is an error naming it. Without
    /// `--prefix`, reads the blocks of the one prefix the directory holds
    /// (see [`find_prefix`]).
    pub fn open(&self) -> Result<BlockDir> {
        match std::fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{}: not a directory", self.dir.display()),
            Err(e) => bail!(
                "{}: cannot open the block directory: {e}",
                self.dir.display()
            ),
        }
        let prefix = match &self.prefix {
            Some(p) => p.clone(),
            None => find_prefix(&self.dir)?,
        };
        Ok(BlockDir::open(
            &self.dir,
            &prefix,
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
                if dir.prefix().is_empty() {
                    String::new()
                } else {
                    format!(" with prefix {:?}", dir.prefix())
                }
            );
        }
        Ok(heights)
    }
}

/// The prefix to read `dir` with when none was given: the one prefix whose
/// data files the directory holds, said on stderr when it is not the empty
/// one (a directory of `P-block-N-data` files is read as such instead of
/// looking empty); the empty prefix when the directory holds no block file
/// yet (`tail --follow` waits for one); several are an error naming them.
/// Every offline tool (`verify`, `dump`, `stats`, `tail`, `replay`) reads
/// its directory through this.
fn find_prefix(dir: &Path) -> Result<String> {
    let mut prefixes = BlockDir::prefixes(dir)?;
    match prefixes.len() {
        0 => Ok(String::new()),
        1 => {
            let prefix = prefixes.remove(0);
            if !prefix.is_empty() {
                eprintln!(
                    "statestream: note: {} holds the blocks of prefix {prefix:?} only ({prefix}-block-N-data): reading those, as with --prefix {}",
                    dir.display(),
                    shell_word(&prefix)
                );
            }
            Ok(prefix)
        }
        _ => {
            let listed: Vec<String> = prefixes
                .iter()
                .map(|p| {
                    if p.is_empty() {
                        "\"\" (block-N-data)".to_string()
                    } else {
                        format!("{p:?} ({p}-block-N-data)")
                    }
                })
                .collect();
            bail!(
                "{}: block files of {} prefixes: {}; choose one with --prefix",
                dir.display(),
                prefixes.len(),
                listed.join(", ")
            )
        }
    }
}

/// `s` as one word for a POSIX shell: as it is when it holds only
/// characters no shell treats specially, else single-quoted.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.,:+=@%/".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
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
    let missing: u64 = gaps.iter().map(|(a, b)| b - a + 1).sum();
    eprintln!(
        "statestream: warning: {missing} heights have no block file: {}; {then}",
        show_ranges(&gaps)
    );
}

/// Inclusive height ranges for a human: `1-20, 25`, the first few only.
pub fn show_ranges(ranges: &[(u64, u64)]) -> String {
    const SHOWN: usize = 5;
    let mut shown: Vec<String> = ranges
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
    if ranges.len() > SHOWN {
        shown.push(format!("and {} more ranges", ranges.len() - SHOWN));
    }
    shown.join(", ")
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
