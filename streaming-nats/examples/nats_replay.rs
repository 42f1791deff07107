//! Reads the blocks a `type = "nats"` streamer published to JetStream,
//! rebuilds the state in memory block by block, and prints the final height
//! and app hash (which must equal the node's).
//!
//! ```sh
//! cargo run -p statestream-nats --example nats_replay -- \
//!     --url nats://127.0.0.1:4222 --stream statestream --subject statestream
//! ```
//!
//! Options: `--url`, `--stream`, `--subject` (defaults as in app.toml),
//! `--token`, `--user`, `--password`, `--json`.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use statestream_core::to_hex;
use statestream_nats::{Client, NatsStreamerConfig, replay_stream};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nats_replay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let mut config = NatsStreamerConfig::default();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => config.url = value()?,
            "--stream" => config.stream = value()?,
            "--subject" => config.subject = value()?,
            "--token" => config.token = Some(value()?),
            "--user" => config.user = Some(value()?),
            "--password" => config.password = Some(value()?),
            "--json" => json = true,
            "-h" | "--help" => {
                println!(
                    "usage: nats_replay [--url URL] [--stream NAME] [--subject SUBJECT] \
                     [--token T | --user U --password P] [--json]"
                );
                return Ok(ExitCode::SUCCESS);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if let Err((key, message)) = config.check() {
        bail!("--{key}: {message}");
    }
    let mut client = Client::connect(&config.connect_options())?;
    let replay = replay_stream(&mut client, &config.stream, &config.subject)?;
    let hash = to_hex(&replay.app_hash);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "height": replay.height,
                "app_hash": hash,
                "blocks": replay.blocks,
                "records": replay.records,
                "duplicates_skipped": replay.duplicates,
            })
        );
    } else {
        println!(
            "replayed {} blocks, {} records; height {}, app hash {hash}",
            replay.blocks, replay.records, replay.height
        );
    }
    Ok(ExitCode::SUCCESS)
}
