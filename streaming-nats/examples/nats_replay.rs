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
//! `--token`, `--user`, `--password`, `--creds-file`, `--nkey-seed-file`,
//! `--tls-ca-file`, `--tls-cert-file`, `--tls-key-file`, `--tls-required`
//! (as the keys of app.toml), `--json`.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use statestream_core::to_hex;
use statestream_nats::{NatsStreamerConfig, replay_stream};

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
            "--creds-file" => config.creds_file = Some(value()?),
            "--nkey-seed-file" => config.nkey_seed_file = Some(value()?),
            "--tls-ca-file" => config.tls_ca_file = Some(value()?),
            "--tls-cert-file" => config.tls_cert_file = Some(value()?),
            "--tls-key-file" => config.tls_key_file = Some(value()?),
            "--tls-required" => config.tls_required = true,
            "--json" => json = true,
            "-h" | "--help" => {
                println!(
                    "usage: nats_replay [--url URL] [--stream NAME] [--subject SUBJECT] \
                     [--token T | --user U --password P | --creds-file F | --nkey-seed-file F] \
                     [--tls-ca-file F] [--tls-cert-file F --tls-key-file F] [--tls-required] [--json]"
                );
                return Ok(ExitCode::SUCCESS);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if let Err((key, message)) = config.check() {
        bail!("--{key}: {message}");
    }
    let replay = replay_stream(&config)?;
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
