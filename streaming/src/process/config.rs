//! The options of `type = "process"` and the plugin's environment.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use statestream_config::ConfigError;

use statestream_config::StreamerOptions;
use statestream_core::StreamerContext;
use statestream_core::plugin::MAX_FRAME_LEN;

use super::ProcessStreamer;

/// The variables of the node's environment a plugin inherits (with every
/// `LC_*`): what programs need to run (find programs, a home, the locale,
/// the time zone, a temporary directory). Every other variable of the node
/// is withheld, since it may be a secret meant for the node alone
/// (`PGPASSWORD`, a token); a plugin gets what else it needs from `env`.
pub const PLUGIN_INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
];

/// The smallest `max_frame_bytes`.
pub(super) const MIN_FRAME_BYTES: u64 = 1024;
/// The largest `max_frame_bytes`: protobuf runtimes refuse messages of
/// 2 GiB and more.
pub(super) const MAX_FRAME_BYTES: u64 = i32::MAX as u64;

/// Options of `type = "process"`.
///
/// ```toml
/// [streamers.indexer]
/// type = "process"
/// command = ["python3", "examples/plugins/indexer.py", "index.jsonl"]
/// keys = ["bank"]
/// timeout_ms = 10000
/// handshake_timeout_ms = 10000
/// close_timeout_ms = 5000
/// restart_backoff_ms = 100
/// restart_backoff_max_ms = 10000
/// max_frame_bytes = 67108864
/// working_dir = "plugins"
/// env = { INDEX_LEVEL = "full" }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProcessStreamerConfig {
    /// The program and its arguments, passed as they are (no shell, no
    /// expansion). Required, non-empty. A program name without `/` is looked
    /// up in `PATH`; a relative program path with `/` is relative to the
    /// plugin's working directory (see `working_dir`).
    pub command: Vec<String>,
    /// How long the plugin may take to read one block's frame and
    /// acknowledge it, in milliseconds, counted from when the node starts
    /// handing the frame over. Past it the plugin is killed and the block
    /// fails. Default 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long the plugin may take to read `Hello` and answer it after it
    /// is started, in milliseconds. Default 10000.
    #[serde(default = "default_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// At shutdown, how long the plugin may take to exit once its stdin is
    /// closed, in milliseconds, before it is killed. Default 5000.
    #[serde(default = "default_close_timeout_ms")]
    pub close_timeout_ms: u64,
    /// The pause before restarting a plugin that failed, in milliseconds;
    /// it doubles with each consecutive failure up to
    /// `restart_backoff_max_ms` and is reset by an acknowledged block.
    /// Default 100.
    #[serde(default = "default_restart_backoff_ms")]
    pub restart_backoff_ms: u64,
    /// The longest pause between restarts, in milliseconds. Default 10000.
    #[serde(default = "default_timeout_ms")]
    pub restart_backoff_max_ms: u64,
    /// The largest block frame sent to the plugin, in bytes of the
    /// `BlockFrame` message (its length prefix not counted). A block over
    /// it is not sent: its delivery fails with an error naming its height
    /// and size. Raise it together with the plugin's own limit
    /// ([`plugin::serve_with_max_frame_len`]). From 1024 to 2147483647;
    /// default 67108864 ([`MAX_FRAME_LEN`], 64 MiB).
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: u64,
    /// Environment variables set for the plugin. The plugin does not
    /// inherit the node's environment: only [`PLUGIN_INHERITED_ENV`] and `LC_*`
    /// are passed on, and these are set on top (they may override them).
    /// Default: none.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The plugin's working directory; a relative path is under the node's
    /// home. Default: the node's current directory (taken when the
    /// streamer is built).
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_close_timeout_ms() -> u64 {
    5_000
}

fn default_restart_backoff_ms() -> u64 {
    100
}

fn default_max_frame_bytes() -> u64 {
    MAX_FRAME_LEN as u64
}

impl ProcessStreamerConfig {
    /// A configuration running `command` with every other option at its
    /// default.
    pub fn new<I, S>(command: I) -> ProcessStreamerConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ProcessStreamerConfig {
            command: command.into_iter().map(Into::into).collect(),
            timeout_ms: default_timeout_ms(),
            handshake_timeout_ms: default_timeout_ms(),
            close_timeout_ms: default_close_timeout_ms(),
            restart_backoff_ms: default_restart_backoff_ms(),
            restart_backoff_max_ms: default_timeout_ms(),
            max_frame_bytes: default_max_frame_bytes(),
            env: BTreeMap::new(),
            working_dir: None,
        }
    }

    /// Checks the options as [`build`](ProcessStreamerConfig::build) does
    /// (the program exists, `working_dir` is a directory, the timeouts),
    /// starting nothing.
    pub fn validate(
        &self,
        ctx: &StreamerContext<'_>,
        opts: &StreamerOptions,
    ) -> Result<(), ConfigError> {
        // Building starts nothing (the plugin starts with the first block),
        // so the checks are build's own.
        self.clone().build(ctx, opts).map(drop)
    }

    /// Checks the options and builds the streamer. The plugin is not started
    /// yet (it starts with the first block), but its program must exist.
    /// Errors name the option, its table, file and line.
    pub fn build(
        self,
        ctx: &StreamerContext<'_>,
        opts: &StreamerOptions,
    ) -> Result<ProcessStreamer, ConfigError> {
        let Some(program) = self.command.first() else {
            return Err(opts.error(
                "command",
                "must name the program to run: a non-empty array of strings, \
                 e.g. [\"python3\", \"plugin.py\"]",
            ));
        };
        if program.is_empty() {
            return Err(opts.error("command", "the program (first element) is empty"));
        }
        for (key, value) in [
            ("timeout_ms", self.timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("close_timeout_ms", self.close_timeout_ms),
        ] {
            if value == 0 {
                return Err(opts.error(key, "must be at least 1 (milliseconds)"));
            }
        }
        if !(MIN_FRAME_BYTES..=MAX_FRAME_BYTES).contains(&self.max_frame_bytes) {
            return Err(opts.error(
                "max_frame_bytes",
                format!(
                    "must be from {MIN_FRAME_BYTES} to {MAX_FRAME_BYTES} (bytes), not {}",
                    self.max_frame_bytes
                ),
            ));
        }
        let max_frame = usize::try_from(self.max_frame_bytes)
            .map_err(|_| opts.error("max_frame_bytes", "is more than this machine can address"))?;
        for (name, value) in &self.env {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(opts.error(
                    "env",
                    format!("{name:?} is not a variable name (empty, or holds '=' or NUL)"),
                ));
            }
            if value.contains('\0') {
                return Err(opts.error("env", format!("the value of {name} holds a NUL byte")));
            }
        }
        if self.restart_backoff_max_ms < self.restart_backoff_ms {
            return Err(opts.error(
                "restart_backoff_max_ms",
                format!(
                    "must not be below restart_backoff_ms ({} ms)",
                    self.restart_backoff_ms
                ),
            ));
        }
        let cwd = match &self.working_dir {
            Some(dir) => ctx.home.join(dir),
            None => std::env::current_dir().map_err(|e| {
                opts.error(
                    "working_dir",
                    format!("not set, and the current directory is unreadable: {e}"),
                )
            })?,
        };
        if !cwd.is_dir() {
            return Err(opts.error(
                "working_dir",
                format!("{} is not a directory", cwd.display()),
            ));
        }
        let program_path = resolve_program(program, &cwd, self.env.get("PATH").map(String::as_str))
            .map_err(|msg| opts.error("command", msg))?;
        Ok(ProcessStreamer {
            name: ctx.name.to_string(),
            stores: ctx.stores.iter().map(|s| s.name().to_string()).collect(),
            program: program_path,
            shown: program.clone(),
            args: self.command[1..].to_vec(),
            env: self.env,
            cwd,
            timeout: Duration::from_millis(self.timeout_ms),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            close_timeout: Duration::from_millis(self.close_timeout_ms),
            backoff_min: Duration::from_millis(self.restart_backoff_ms),
            backoff_max: Duration::from_millis(self.restart_backoff_max_ms),
            backoff: Duration::from_millis(self.restart_backoff_ms),
            not_before: None,
            max_frame,
            shutdown: ctx.shutdown.clone(),
            plugin: None,
        })
    }
}

/// The path to start for `program`: a path with `/` is taken relative to
/// `cwd`; a bare name is looked up in `PATH` (the plugin's, if `env` sets
/// one) and left as is for the OS to find.
pub(super) fn resolve_program(
    program: &str,
    cwd: &Path,
    path_var: Option<&str>,
) -> Result<PathBuf, String> {
    if program.contains('/') || program.contains(std::path::MAIN_SEPARATOR) {
        let path = cwd.join(program);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "program \"{program}\" not found: {} is not a file",
                path.display()
            ))
        }
    } else {
        let path_var = match path_var {
            Some(p) => Some(std::ffi::OsString::from(p)),
            None => std::env::var_os("PATH"),
        };
        let found = path_var
            .as_deref()
            .map(|p| std::env::split_paths(p).any(|dir| dir.join(program).is_file()))
            .unwrap_or(false);
        if found {
            Ok(PathBuf::from(program))
        } else {
            Err(format!("program \"{program}\" not found in PATH"))
        }
    }
}

/// The plugin's environment: the variables of `node` (the node's
/// environment) named in [`PLUGIN_INHERITED_ENV`] or starting with `LC_`, then
/// `extra` (the `env` option), which may override them.
pub(super) fn plugin_env(
    node: impl Iterator<Item = (OsString, OsString)>,
    extra: &BTreeMap<String, String>,
) -> Vec<(OsString, OsString)> {
    let inherited = |name: &OsStr| {
        name.to_str()
            .is_some_and(|n| PLUGIN_INHERITED_ENV.contains(&n) || n.starts_with("LC_"))
    };
    let mut vars: BTreeMap<OsString, OsString> = node.filter(|(name, _)| inherited(name)).collect();
    for (name, value) in extra {
        vars.insert(name.into(), value.into());
    }
    vars.into_iter().collect()
}
