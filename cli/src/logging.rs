//! Logs go to stderr through `tracing`; `RUST_LOG` sets the level.

use tracing_subscriber::EnvFilter;

/// Installs the stderr subscriber. `RUST_LOG` wins when set; otherwise the
/// level is `default_level` (`error` with `--quiet`).
pub fn init(default_level: &str, quiet: bool) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new(default_level))
        }
        _ => EnvFilter::new(if quiet { "error" } else { default_level }),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
