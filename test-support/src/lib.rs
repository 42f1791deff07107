//! Test helpers shared by statestream's crates. The crate root, [`waits`],
//! [`postgres`], [`tls`] and [`http_sink`] have no dependency of their own (a streamer
//! crate's tests can use them without pulling in the store); [`node`], a
//! store and a delivery manager built from an `app.toml`, is behind the
//! `node` feature.
//!
//! A test that needs an external tool (`nats-server`, `python3` with a
//! package, a PostgreSQL server) asks [`require`] first:
//!
//! - when the tool is there, the test runs;
//! - when it is missing and the environment variable `CI` is set, the test
//!   fails with a message that names the tool and how to install it
//!   (`scripts/test` installs them all);
//! - otherwise the test is reported as skipped, on the terminal (past the
//!   test harness's output capture, so it is never an unexplained "ok").
//!
//! ```
//! if !statestream_test_support::require("doc_example", "true", true, "coreutils") {
//!     return;
//! }
//! ```

pub mod http_sink;
#[cfg(feature = "node")]
pub mod node;
pub mod postgres;
pub mod tls;
pub mod waits;

pub use waits::{PATIENCE, wait_exit, wait_for, wait_for_within};

use std::io::Write;
use std::process::Command;

/// Whether test `test` can run, given whether `tool` is `available`; see
/// the crate documentation. `install` says how to get the tool.
///
/// # Panics
///
/// When the tool is missing and `CI` is set: a test that cannot run must
/// not pass there.
pub fn require(test: &str, tool: &str, available: bool, install: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {tool} is required under CI but is missing (install: {install})");
    }
    // Straight to the process's stderr: libtest captures only the print
    // macros, so this line shows even for a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {tool} is missing (install: {install})"
    );
    false
}

/// Whether `python3` can import every module of `modules`.
pub fn python_has(modules: &[&str]) -> bool {
    let script = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    Command::new("python3")
        .args(["-c", &script])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// [`require`] for `python3` with `modules` (Python package names in
/// `packages`, for the message).
pub fn require_python(test: &str, modules: &[&str], packages: &str) -> bool {
    require(
        test,
        &format!("python3 with {packages}"),
        python_has(modules),
        "scripts/test installs it into a virtual environment under target/",
    )
}
