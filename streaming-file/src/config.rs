//! The options of `type = "file"`, which build the streamer.

use std::path::PathBuf;

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
    /// Builds the streamer: checks the prefix, creates `write_dir` when
    /// missing (relative to `ctx.home`), checks that it is writable and
    /// removes the temporary files a previous run of this prefix left.
    /// `options` is the table it was parsed from, for errors that name it.
    pub fn build(
        &self,
        ctx: &StreamerContext<'_>,
        options: &StreamerOptions,
    ) -> Result<FileStreamer, Error> {
        if let Err(reason) = layout::check_prefix(&self.prefix) {
            return Err(options
                .error(
                    "prefix",
                    format!("unsafe prefix {:?}: {reason}", self.prefix),
                )
                .into());
        }
        let dir = if self.write_dir.is_absolute() {
            self.write_dir.clone()
        } else {
            ctx.home.join(&self.write_dir)
        };
        FileStreamer::create(
            dir,
            self.prefix.clone(),
            self.output_metadata,
            self.fsync,
            ctx.name,
        )
    }
}
