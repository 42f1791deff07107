//! Logs go to stderr through `tracing`: `-q`, `-v`, `-vv` or `RUST_LOG` set
//! the level, `--log-format` the format, `NO_COLOR` turns colours off.

use tracing_subscriber::EnvFilter;

/// The format of log lines (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event (timestamp, level, fields), for log
    /// collectors.
    Json,
}

/// The levels from the quietest up.
const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// The level for a command whose default is `default_level`: `error` with
/// `--quiet`, one step more verbose per `-v`.
pub fn level(default_level: &str, quiet: bool, verbose: u8) -> &'static str {
    if quiet {
        return LEVELS[0];
    }
    let base = LEVELS
        .iter()
        .position(|level| *level == default_level)
        .unwrap_or(1);
    LEVELS[(base + usize::from(verbose)).min(LEVELS.len() - 1)]
}

/// Whether log lines may carry ANSI colours: only on a terminal, and never
/// when `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
fn use_colour() -> bool {
    let no_colour = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    !no_colour && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// Installs the stderr subscriber. `RUST_LOG` wins when set and valid;
/// otherwise the level is `level`.
pub fn init(level: &str, format: LogFormat) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new(level))
        }
        _ => EnvFilter::new(level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(use_colour()).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logging_levels() {
        assert_eq!(level("info", false, 0), "info");
        assert_eq!(level("info", false, 1), "debug");
        assert_eq!(level("info", false, 2), "trace");
        assert_eq!(level("info", false, 9), "trace");
        assert_eq!(level("warn", false, 0), "warn");
        assert_eq!(level("warn", false, 1), "info");
        assert_eq!(level("warn", true, 0), "error");
    }
}
