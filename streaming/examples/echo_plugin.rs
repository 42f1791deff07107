//! An out-of-process streamer written with `statestream::plugin`: it appends
//! one JSON line per record to the file named by its first argument, syncs
//! the file, then acknowledges the block.
//!
//! ```toml
//! [streamers.echo]
//! type = "process"
//! command = ["target/debug/examples/echo_plugin", "echo.jsonl"]
//! keys = ["*"]
//! ```
//!
//! Each line is `{"height":H,"store":"S","key":"<hex>","value":"<hex>"}`,
//! or `..."delete":true}` for a delete. Stdout belongs to the protocol; the
//! plugin logs to stderr, which the node logs under the streamer's name.
//!
//! For tests it misbehaves on request, once per height (a marker file next
//! to the output remembers that it did), through environment variables
//! holding a height:
//! - `ECHO_PLUGIN_CRASH_AT`: exit with status 3 before acknowledging it;
//! - `ECHO_PLUGIN_HANG_AT`: never acknowledge it (sleep);
//! - `ECHO_PLUGIN_GARBAGE_AT`: write bytes that are not an `Ack`;
//! - `ECHO_PLUGIN_WRONG_ACK_AT`: acknowledge another height;
//! - `ECHO_PLUGIN_ERROR_AT`: acknowledge it with an error;
//! - `ECHO_PLUGIN_DEAF_AT`: stop reading stdin before it, and acknowledge it
//!   and the next 100 heights at once, unread;
//!
//! and `ECHO_PLUGIN_PROTOCOL_VERSION`: claim this protocol version in the
//! handshake (always); `ECHO_PLUGIN_MAX_FRAME_BYTES`: read frames of up to
//! this many bytes (the node's `max_frame_bytes`) instead of
//! `MAX_FRAME_LEN`. At each start it writes its pid to `<output>.pid` and
//! appends the resume height of the `Hello` to `<output>.starts`.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use statestream::plugin::{PROTOCOL_VERSION, PluginIo};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_plugin: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A height given in an environment variable, if set.
fn env_height(var: &str) -> Option<u64> {
    std::env::var(var).ok().and_then(|v| v.trim().parse().ok())
}

/// True the first time it is called for (`kind`, `height`): creates the
/// marker file that makes later calls false, across restarts.
fn first_time(out: &Path, kind: &str, height: u64) -> bool {
    let mut marker = out.as_os_str().to_owned();
    marker.push(format!(".{kind}-{height}.done"));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(PathBuf::from(marker))
        .is_ok()
}

fn append(path: &Path, suffix: &str, text: &str) -> std::io::Result<()> {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    let mut f = OpenOptions::new().create(true).append(true).open(p)?;
    f.write_all(text.as_bytes())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let out_path = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .ok_or("usage: echo_plugin OUTPUT_FILE")?,
    );
    let version = env_height("ECHO_PLUGIN_PROTOCOL_VERSION")
        .map_or(PROTOCOL_VERSION, |v| u32::try_from(v).unwrap_or(u32::MAX));

    let mut io = PluginIo::stdio();
    if let Some(max) = env_height("ECHO_PLUGIN_MAX_FRAME_BYTES") {
        io.set_max_frame_len(usize::try_from(max)?);
    }
    let hello = io.handshake_as("echo", env!("CARGO_PKG_VERSION"), version)?;
    eprintln!(
        "echo_plugin: streaming {:?} of {} from height {}",
        hello.stores, hello.streamer_name, hello.resume_height
    );
    std::fs::write(
        {
            let mut p = out_path.as_os_str().to_owned();
            p.push(".pid");
            PathBuf::from(p)
        },
        std::process::id().to_string(),
    )?;
    append(&out_path, ".starts", &format!("{}\n", hello.resume_height))?;

    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)?;
    let crash_at = env_height("ECHO_PLUGIN_CRASH_AT");
    let hang_at = env_height("ECHO_PLUGIN_HANG_AT");
    let garbage_at = env_height("ECHO_PLUGIN_GARBAGE_AT");
    let wrong_ack_at = env_height("ECHO_PLUGIN_WRONG_ACK_AT");
    let error_at = env_height("ECHO_PLUGIN_ERROR_AT");
    let deaf_at = env_height("ECHO_PLUGIN_DEAF_AT");

    let mut next = hello.resume_height;
    loop {
        if deaf_at == Some(next) && first_time(&out_path, "deaf", next) {
            eprintln!("echo_plugin: acknowledging height {next} and on without reading as asked");
            for h in next..next + 101 {
                io.ack(h)?;
            }
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        let Some(block) = io.next_block()? else {
            break;
        };
        let h = block.height();
        next = h + 1;
        write_block(&mut out, &block)?;
        if crash_at == Some(h) && first_time(&out_path, "crash", h) {
            eprintln!("echo_plugin: crashing at height {h} as asked");
            std::process::exit(3);
        }
        if hang_at == Some(h) && first_time(&out_path, "hang", h) {
            eprintln!("echo_plugin: hanging at height {h} as asked");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        if garbage_at == Some(h) && first_time(&out_path, "garbage", h) {
            eprintln!("echo_plugin: writing garbage at height {h} as asked");
            // A valid length prefix followed by bytes that are no Ack.
            io.writer().write_all(&[5, 0xff, 0xff, 0xff, 0xff, 0xff])?;
            io.writer().flush()?;
            continue;
        }
        if wrong_ack_at == Some(h) && first_time(&out_path, "wrong-ack", h) {
            eprintln!("echo_plugin: acknowledging a wrong height at {h} as asked");
            io.ack(h + 1000)?;
            continue;
        }
        if error_at == Some(h) && first_time(&out_path, "error", h) {
            io.ack_error(h, "simulated failure: disk full")?;
            continue;
        }
        io.ack(h)?;
    }
    eprintln!("echo_plugin: stdin closed, exiting");
    Ok(())
}

/// Appends the block's records and makes them durable: only then may the
/// block be acknowledged.
fn write_block(
    out: &mut File,
    block: &statestream::plugin::PluginBlock,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut text = String::new();
    for record in block.records() {
        let record = record?;
        let _ = write!(
            text,
            "{{\"height\":{},\"store\":\"{}\",\"key\":\"{}\"",
            block.height(),
            record.store,
            hex(record.key)
        );
        match record.value {
            Some(v) => {
                let _ = writeln!(text, ",\"value\":\"{}\"}}", hex(v));
            }
            None => text.push_str(",\"delete\":true}\n"),
        }
    }
    out.write_all(text.as_bytes())?;
    out.sync_data()?;
    Ok(())
}
