//! What several of the CLI's test binaries share: the binary, paths as
//! arguments, bounded waits, a seeded generator, and `statestream … --json`.
//! Each test binary uses a part of it.
#![allow(dead_code)]

// Not every test binary uses both.
#[allow(unused_imports)]
pub use statestream_test_support::{PATIENCE, wait_for};
use std::path::Path;
use std::process::{Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_statestream");

/// A temp path as a command argument.
pub fn p(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// SplitMix64: the kill moments of the crash tests, reproducible by seed.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `STATESTREAM_CRASH_SEED`, else the clock.
pub fn seed() -> u64 {
    match std::env::var("STATESTREAM_CRASH_SEED") {
        Ok(s) => s.parse().expect("STATESTREAM_CRASH_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// Runs `statestream ARGS`, which must succeed without a panic, and parses
/// the last line of its stdout as JSON.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run statestream");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "statestream {args:?} failed: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic in {args:?}: {stderr}");
    let last = stdout.lines().last().expect("a JSON line on stdout");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad JSON {last:?}: {e}"))
}
