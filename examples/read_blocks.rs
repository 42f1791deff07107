//! Reads the block files a file streamer wrote, with `statestream_file::BlockDir`.
//!
//! ```text
//! statestream node --home /tmp/demo
//! cargo run -p statestream-examples --example read_blocks /tmp/demo/data/streaming [PREFIX]
//! ```
//!
//! Prints one line per block and per record (the logic is
//! `statestream_examples::read_blocks`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("read_blocks: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        anyhow::bail!("usage: read_blocks DIR [PREFIX]");
    };
    let prefix = args
        .next()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let summary = statestream_examples::read_blocks(&dir, &prefix, &mut std::io::stdout().lock())?;
    eprintln!(
        "{} blocks, {} records, last app hash {}",
        summary.blocks,
        summary.records,
        summary.last_app_hash.as_deref().unwrap_or("-")
    );
    Ok(())
}
