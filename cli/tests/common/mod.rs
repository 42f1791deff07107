//! What several of the CLI's test binaries share: the binary, paths as
//! arguments, bounded waits, a seeded generator, `statestream … --json`,
//! and a running `statestream` process with its log ([`Proc`]).
//! Each test binary uses a part of it.
#![allow(dead_code)]

// Not every test binary uses both.
#[allow(unused_imports)]
pub use statestream_test_support::{PATIENCE, wait_for};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

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

/// A running `statestream` process, killed when dropped (also when a test
/// fails), with its stderr lines kept.
pub struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `statestream ARGS` with `RUST_LOG=info`.
    pub fn start(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start statestream");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        Proc { child, log }
    }

    /// Starts the demo node in `home`, a block every 20 ms until stopped,
    /// with `extra` arguments (`--config FILE`, `--seed S`).
    pub fn node(home: &Path, extra: &[&str]) -> Proc {
        let mut args = vec![
            "node",
            "--home",
            p(home),
            "--blocks",
            "0",
            "--block-time-ms",
            "20",
        ];
        args.extend_from_slice(extra);
        Proc::start(&args)
    }

    /// The process id (to signal it).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The log so far, one string.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The `address=` of the last log line containing `marker`, waited
    /// for.
    pub fn address(&self, marker: &str) -> String {
        self.field(marker, "address")
    }

    /// The value of `key=` in the last log line containing `marker`,
    /// waited for.
    pub fn field(&self, marker: &str, key: &str) -> String {
        let mut found = None;
        let prefix = format!("{key}=");
        wait_for(&format!("a log line with {marker:?} and its {key}"), || {
            let log = self.log.lock().unwrap();
            found = log.iter().rev().find(|l| l.contains(marker)).and_then(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(&prefix))
                    .map(str::to_owned)
            });
            found.is_some()
        });
        found.unwrap_or_default()
    }

    /// SIGTERM, then the exit status (a clean stop exits 0). A process
    /// that does not exit in time fails the test and is killed.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        statestream_test_support::wait_exit(
            &mut self.child,
            "statestream to exit after SIGTERM",
            PATIENCE,
        )
    }

    /// SIGKILL, at once.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status once it exits by itself (waited for).
    pub fn exited(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        wait_for("the process to exit", || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        // The reader thread sees the end of stderr once the process is gone.
        std::thread::sleep(std::time::Duration::from_millis(100));
        status.expect("exited")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
