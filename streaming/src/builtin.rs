//! The built-in streamer types: `log` and `process` of this crate, and the
//! type of each streamer crate enabled by its cargo feature.

use serde::Deserialize;
use statestream_core::{Block, StreamError, Streamer};

use crate::process::ProcessStreamerConfig;
use crate::registry::Registry;

/// Registers every built-in type of this build.
pub(crate) fn register(registry: &mut Registry) {
    registry.register("log", |ctx, options| {
        let opts: LogConfig = options.parse()?;
        if opts.every == 0 {
            return Err(options
                .error("every", "expected a positive integer (at least 1), got 0")
                .into());
        }
        Ok(Box::new(LogStreamer {
            name: ctx.name.to_string(),
            every: opts.every,
        }))
    });
    // Every other type's config is the factory: parse the options into it,
    // then build with the context.
    macro_rules! config_type {
        ($type_name:expr, $config:ty) => {
            registry.register($type_name, |ctx, options| {
                let config: $config = options.parse()?;
                Ok(Box::new(config.build(ctx, options)?))
            });
        };
    }
    config_type!("process", ProcessStreamerConfig);
    #[cfg(feature = "file")]
    config_type!(
        statestream_file::FILE_TYPE,
        statestream_file::FileStreamerConfig
    );
    #[cfg(feature = "nats")]
    config_type!(
        statestream_nats::NATS_TYPE,
        statestream_nats::NatsStreamerConfig
    );
    #[cfg(feature = "postgres")]
    config_type!(
        statestream_postgres::POSTGRES_TYPE,
        statestream_postgres::PostgresStreamerConfig
    );
    #[cfg(feature = "webhook")]
    config_type!(
        statestream_webhook::WEBHOOK_TYPE,
        statestream_webhook::WebhookConfig
    );
    #[cfg(all(feature = "serve", not(feature = "telemetry")))]
    config_type!(
        statestream_serve::SERVE_TYPE,
        statestream_serve::ServeConfig
    );
    // With telemetry, the streamer's counters go on the node's `/metrics`.
    #[cfg(all(feature = "serve", feature = "telemetry"))]
    {
        let metrics = registry.metrics().clone();
        registry.register(statestream_serve::SERVE_TYPE, move |ctx, options| {
            let config: statestream_serve::ServeConfig = options.parse()?;
            let streamer = config.build(ctx, options)?;
            crate::register_serve_metrics(&metrics, ctx.name, streamer.handle().metrics())?;
            Ok(Box::new(streamer))
        });
    }
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
                app_hash = %statestream_core::to_hex(&block.commit_info().app_hash),
                "block"
            );
        }
        Ok(())
    }
}
