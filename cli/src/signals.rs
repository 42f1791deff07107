//! The signals of every long-running command (`node`, `relay`,
//! `ingest-files`), on a thread of their own.
//!
//! - SIGINT and SIGTERM (what systemd, Docker and Kubernetes send): `stop`
//!   runs once; the command stops after the block in hand. A second one
//!   exits at once with [`EXIT_SECOND_SIGNAL`](crate::node::EXIT_SECOND_SIGNAL):
//!   nothing committed is lost, the change log covers what the streamers
//!   had not delivered yet.
//! - SIGHUP: the TLS listeners re-read their certificates, as daemons
//!   reload on it; open connections keep theirs.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Installs the handlers; `second` says what an immediate exit keeps.
pub fn watch(stop: impl Fn() + Send + 'static, second: &'static str) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("cannot install the signal handlers")?;
    let stopping = AtomicBool::new(false);
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    let outcome = statestream_net::reload_all();
                    tracing::info!(
                        reloaded = outcome.reloaded,
                        failed = outcome.failed,
                        "SIGHUP: TLS certificates re-read"
                    );
                    continue;
                }
                if stopping.swap(true, Ordering::SeqCst) {
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "statestream: second signal: exiting at once ({second})"
                    );
                    std::process::exit(i32::from(crate::node::EXIT_SECOND_SIGNAL));
                }
                stop();
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
