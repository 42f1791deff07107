//! The built-in streamer types: `log` and `process` of this crate, and the
//! type of each streamer crate enabled by its cargo feature.

use serde::Deserialize;
use statestream_config::StreamerOptions;
use statestream_core::{Block, BoxError, StreamError, Streamer};

use crate::process::ProcessStreamerConfig;
use crate::registry::Registry;

/// Registers every built-in type of this build, each with its validator:
/// the type's own checks of its options, and where it writes, with no
/// effect outside the process (see [`Registry::register_with_validator`]).
pub(crate) fn register(registry: &mut Registry) {
    registry.register_with_validator(
        "log",
        |_, options| {
            LogConfig::parse(options)?;
            Ok(Vec::new())
        },
        |ctx, options| {
            let opts = LogConfig::parse(options)?;
            Ok(Box::new(LogStreamer {
                name: ctx.name.to_string(),
                every: opts.every,
            }))
        },
    );
    // Every other type's config is the factory: parse the options into it,
    // then validate it, or build with the context.
    registry.register_with_validator(
        "process",
        |ctx, options| {
            let config: ProcessStreamerConfig = options.parse()?;
            config.validate(ctx, options)?;
            Ok(Vec::new())
        },
        |ctx, options| {
            let config: ProcessStreamerConfig = options.parse()?;
            Ok(Box::new(config.build(ctx, options)?))
        },
    );
    #[cfg(feature = "file")]
    registry.register_with_validator(
        statestream_file::FILE_TYPE,
        |ctx, options| {
            let config: statestream_file::FileStreamerConfig = options.parse()?;
            config.validate(ctx, options)?;
            Ok(vec![config.destination(ctx.home)])
        },
        |ctx, options| {
            let config: statestream_file::FileStreamerConfig = options.parse()?;
            Ok(Box::new(config.build(ctx, options)?))
        },
    );
    #[cfg(feature = "nats")]
    registry.register_with_validator(
        statestream_nats::NATS_TYPE,
        |_, options| {
            let config: statestream_nats::NatsStreamerConfig = options.parse()?;
            config.validate(options)?;
            Ok(config.destinations())
        },
        |ctx, options| {
            let config: statestream_nats::NatsStreamerConfig = options.parse()?;
            Ok(Box::new(config.build(ctx, options)?))
        },
    );
    #[cfg(feature = "postgres")]
    registry.register_with_validator(
        statestream_postgres::POSTGRES_TYPE,
        |ctx, options| {
            let config: statestream_postgres::PostgresStreamerConfig = options.parse()?;
            config.validate(ctx, options)?;
            Ok(config.destinations(ctx.name, ctx.stores))
        },
        |ctx, options| {
            let config: statestream_postgres::PostgresStreamerConfig = options.parse()?;
            Ok(Box::new(config.build(ctx, options)?))
        },
    );
    #[cfg(feature = "webhook")]
    registry.register_with_validator(
        statestream_webhook::WEBHOOK_TYPE,
        |ctx, options| {
            let config: statestream_webhook::WebhookConfig = options.parse()?;
            config.validate(ctx, options)?;
            Ok(Vec::new())
        },
        |ctx, options| {
            let config: statestream_webhook::WebhookConfig = options.parse()?;
            Ok(Box::new(config.build(ctx, options)?))
        },
    );
    #[cfg(feature = "serve")]
    {
        // With telemetry, the streamer's counters go on the node's
        // `/metrics`.
        #[cfg(feature = "telemetry")]
        let metrics = registry.metrics().clone();
        registry.register_with_validator(
            statestream_serve::SERVE_TYPE,
            |ctx, options| {
                let config: statestream_serve::ServeConfig = options.parse()?;
                config.validate(ctx, options)?;
                Ok(Vec::new())
            },
            move |ctx, options| {
                let config: statestream_serve::ServeConfig = options.parse()?;
                let streamer = config.build(ctx, options)?;
                #[cfg(feature = "telemetry")]
                crate::register_serve_metrics(&metrics, ctx.name, streamer.handle().metrics())?;
                #[cfg(feature = "telemetry")]
                if let Some(credentials) = ctx.reader.and_then(statestream_access::installed) {
                    crate::serve_metrics::register_credential_metrics(&metrics, credentials)?;
                }
                Ok(Box::new(streamer))
            },
        );
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

impl LogConfig {
    fn parse(options: &StreamerOptions) -> Result<LogConfig, BoxError> {
        let opts: LogConfig = options.parse()?;
        if opts.every == 0 {
            return Err(options
                .error("every", "expected a positive integer (at least 1), got 0")
                .into());
        }
        Ok(opts)
    }
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
