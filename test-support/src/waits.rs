//! Bounded waits for a condition that another thread or process makes true.
//!
//! Every wait has one overall deadline and, when it passes, fails the test
//! with a message naming what it waited for. The deadline is generous: the
//! machines running CI are shared and noisy, and no test asserts a
//! duration (speed is for the benchmarks).

use std::time::{Duration, Instant};

/// How long one wait may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// How often a condition is polled: short enough that a wait ends soon
/// after the condition holds, long enough not to busy the shared cores.
pub const POLL: Duration = Duration::from_millis(20);

/// Waits (at most [`PATIENCE`]) until `cond` holds.
///
/// # Panics
///
/// When [`PATIENCE`] passes first: `timed out waiting for {what}`.
pub fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    wait_for_within(what, PATIENCE, cond);
}

/// Waits (at most `timeout`) until `cond` holds, polling every [`POLL`].
///
/// # Panics
///
/// When `timeout` passes first: `timed out waiting for {what}`, with the
/// timeout.
pub fn wait_for_within(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} (after {timeout:?})"
        );
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// Waits (at most `timeout`) until `child` exits, and returns its status.
///
/// # Panics
///
/// When `timeout` passes first (the child is killed and reaped, so that
/// no process outlives the test): `timed out waiting for {what}`; or
/// when its status cannot be read.
pub fn wait_exit(
    child: &mut std::process::Child,
    what: &str,
    timeout: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("read the child's status") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out waiting for {what} (after {timeout:?}); killed it");
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds() {
        let mut calls = 0;
        wait_for_within("the third call", PATIENCE, || {
            calls += 1;
            calls == 3
        });
        assert_eq!(calls, 3);
    }

    #[test]
    #[should_panic(expected = "timed out waiting for a condition that never holds")]
    fn fails_naming_what_it_waited_for() {
        wait_for_within(
            "a condition that never holds",
            Duration::from_millis(50),
            || false,
        );
    }
}
