//! Streamer types provided by this crate.

use serde::Deserialize;

use crate::block::Block;
use crate::error::StreamError;
use crate::registry::Registry;
use crate::streamer::Streamer;

pub(crate) fn register(registry: &mut Registry) {
    registry.register("log", |ctx| {
        let opts: LogConfig = ctx.options.parse()?;
        if opts.every == 0 {
            return Err(ctx
                .options
                .error("every", "expected a positive integer (at least 1), got 0")
                .into());
        }
        Ok(Box::new(LogStreamer {
            name: ctx.name.to_string(),
            every: opts.every,
        }))
    });
    crate::process::register(registry);
}

/// Options of `type = "log"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogConfig {
    /// Log one block in this many (default 1: every block).
    #[serde(default = "one")]
    every: u64,
}

fn one() -> u64 {
    1
}

/// `type = "log"`: logs one line per block (or per `every` blocks) with the
/// height, record count, bytes and app hash, through `tracing` at info
/// level: a way to watch a node stream without writing anything.
struct LogStreamer {
    name: String,
    every: u64,
}

impl Streamer for LogStreamer {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        if block.height().is_multiple_of(self.every) {
            tracing::info!(
                streamer = %self.name,
                height = block.height(),
                records = block.stores().map(|s| s.len()).sum::<usize>(),
                bytes = block.encoded_len(),
                app_hash = %statestream_store::to_hex(&block.commit_info().app_hash),
                "block"
            );
        }
        Ok(())
    }
}
