//! An application registers its own streamer type and runs it from app.toml.
//!
//! ```text
//! cargo run -p statestream-examples --example custom_streamer [HOME]
//! ```
//!
//! The streamer (`type = "jsonl"`, in `src/lib.rs`) writes one JSON line per
//! record to a file. This program commits a few blocks with it and prints
//! the lines. Without HOME it works in a temporary directory.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("custom_streamer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let (_tmp, home) = match std::env::args_os().nth(1) {
        Some(home) => (None, PathBuf::from(home)),
        None => {
            let tmp = tempfile::tempdir()?;
            let home = tmp.path().to_path_buf();
            (Some(tmp), home)
        }
    };
    for line in statestream_examples::custom_streamer_demo(&home)? {
        println!("{line}");
    }
    Ok(())
}
