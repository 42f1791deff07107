//! The options of `type = "file"`, which build the streamer.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use statestream_config::StreamerOptions;
use statestream_core::StreamerContext;

use crate::error::Error;
use crate::layout;
use crate::writer::FileStreamer;

/// The streamer type name this crate registers.
pub const FILE_TYPE: &str = "file";

/// The options of a `[streamers.<name>]` table with `type = "file"` (the
/// common keys `type`, `keys`, `delivery`, `queue` and `stop-node-on-error`
/// are read by `statestream-config`). Keys may be written with hyphens or
/// underscores (`output-metadata`, `write_dir`, as the Cosmos SDK spells
/// them).
///
/// ```toml
/// [streamers.file]
/// keys = ["*"]
/// write_dir = "data/streaming"
/// prefix = ""
/// output-metadata = true
/// fsync = false
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStreamerConfig {
    /// Directory the block files are written to; a relative path is under
    /// the node's home. Created when missing. Default `"data/streaming"`.
    #[serde(default = "default_write_dir")]
    pub write_dir: PathBuf,
    /// Put in front of every file name, followed by `-` (`P-block-N-data`);
    /// empty means no prefix and no dash. Must be a plain file-name fragment
    /// (no `/`, `\`, `..`, NUL or control characters, at most 128 bytes).
    /// Default `""`.
    #[serde(default)]
    pub prefix: String,
    /// Also write `block-N-meta` files. Default `true`.
    #[serde(default = "yes")]
    pub output_metadata: bool,
    /// fsync every file before renaming it into place, and the directory
    /// after. Default `false`: files are synced in batches by `on_flush`, and
    /// the node's cursor only covers flushed blocks, so files lost in a power
    /// loss are written again at the next start.
    #[serde(default)]
    pub fsync: bool,
}

fn default_write_dir() -> PathBuf {
    PathBuf::from("data/streaming")
}

fn yes() -> bool {
    true
}

impl Default for FileStreamerConfig {
    fn default() -> Self {
        FileStreamerConfig {
            write_dir: default_write_dir(),
            prefix: String::new(),
            output_metadata: true,
            fsync: false,
        }
    }
}

impl FileStreamerConfig {
    /// Checks the options as [`build`](FileStreamerConfig::build) does,
    /// without creating or writing anything: the prefix, and that
    /// `write_dir`, when it exists, is a directory. `options` is the table
    /// it was parsed from, for errors that name it.
    pub fn validate(
        &self,
        ctx: &StreamerContext<'_>,
        options: &StreamerOptions,
    ) -> Result<(), Error> {
        if let Err(reason) = layout::check_prefix(&self.prefix) {
            return Err(options
                .error(
                    "prefix",
                    format!("unsafe prefix {:?}: {reason}", self.prefix),
                )
                .into());
        }
        let dir = self.dir(ctx.home);
        if dir.exists() && !dir.is_dir() {
            return Err(options
                .error("write_dir", format!("{} is not a directory", dir.display()))
                .into());
        }
        Ok(())
    }

    /// Where this streamer writes, as a key equal for two configurations
    /// exactly when their files would overwrite each other: the absolute
    /// `write_dir` (symbolic links of its existing part resolved) and the
    /// prefix. Reads the file system, writes nothing.
    pub fn destination(&self, home: &Path) -> String {
        format!(
            "block files {:?} with prefix {:?}",
            normalise(&self.dir(home)),
            self.prefix
        )
    }

    /// `write_dir`, relative to `home` unless absolute.
    fn dir(&self, home: &Path) -> PathBuf {
        if self.write_dir.is_absolute() {
            self.write_dir.clone()
        } else {
            home.join(&self.write_dir)
        }
    }

    /// Builds the streamer: checks the options
    /// ([`validate`](FileStreamerConfig::validate)), creates `write_dir`
    /// when missing (relative to `ctx.home`), checks that it is writable and
    /// removes the temporary files a previous run of this prefix left.
    /// `options` is the table it was parsed from, for errors that name it.
    pub fn build(
        &self,
        ctx: &StreamerContext<'_>,
        options: &StreamerOptions,
    ) -> Result<FileStreamer, Error> {
        self.validate(ctx, options)?;
        FileStreamer::create(
            self.dir(ctx.home),
            self.prefix.clone(),
            self.output_metadata,
            self.fsync,
            ctx.name,
        )
    }
}

/// `path` made absolute, without `.` and `..`, and with the symbolic links
/// of its longest existing ancestor resolved, so that two spellings of one
/// directory compare equal (as far as the file system tells before the
/// directory exists).
fn normalise(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut lexical = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                lexical.pop();
            }
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.as_path();
    let mut missing = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return missing.iter().rev().fold(real, |p, name| p.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            _ => return lexical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(write_dir: &str, prefix: &str) -> FileStreamerConfig {
        FileStreamerConfig {
            write_dir: PathBuf::from(write_dir),
            prefix: prefix.to_string(),
            ..FileStreamerConfig::default()
        }
    }

    #[cfg(unix)]
    #[test]
    fn destination_is_one_key_per_directory_and_prefix() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(home.join("data")).expect("mkdir");
        std::os::unix::fs::symlink(home.join("data"), tmp.path().join("link")).expect("symlink");
        let base = config("data/streaming", "").destination(&home);
        for same in [
            config("data/streaming/", ""),
            config("./data/x/../streaming", ""),
            config(home.join("data/streaming").to_str().expect("utf-8"), ""),
            config(
                tmp.path().join("link/streaming").to_str().expect("utf-8"),
                "",
            ),
        ] {
            assert_eq!(same.destination(&home), base, "{same:?}");
        }
        for other in [config("data/streaming", "p"), config("data/other", "")] {
            assert_ne!(other.destination(&home), base, "{other:?}");
        }
    }
}
