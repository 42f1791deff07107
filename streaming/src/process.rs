//! `type = "process"`: a streamer that is a separate program, spoken to with
//! the plugin protocol ([`statestream_core::plugin`], `docs/plugin-protocol.md`).
//!
//! The node starts the program with the exact argv of `command` (never
//! through a shell), sends `Hello` on its stdin and reads `HelloAck` on its
//! stdout, then sends one `BlockFrame` per block and waits for the matching
//! `Ack`: [`Streamer::on_block`] returns `Ok` only then, so the cursor
//! advances only on acknowledgement. The plugin's stderr is logged line by
//! line under the streamer's name, each line cut at 64 KiB and at most 100
//! lines per second.
//!
//! The plugin does not inherit the node's environment, which may hold
//! secrets (`PGPASSWORD`): it gets only the variables of
//! [`PLUGIN_INHERITED_ENV`] (and `LC_*`) from it, plus those of `env`.
//!
//! Any misbehaviour (exit, crash, silence past the timeout, garbage, an ack
//! of the wrong height, a protocol version mismatch) is a [`ProcessError`]:
//! the plugin is killed and reaped, and the next `on_block` (the delivery
//! manager's retry of the same block) starts it again, no sooner than the
//! restart backoff allows, with `resume_height` set to that block. Blocks
//! that were sent but not acknowledged are therefore sent again: delivery is
//! at least once.
//!
//! Architecture invariant: reads from and writes to the plugin happen on
//! helper threads, so that no pipe operation can block the streamer past
//! its timeouts (std offers no timeout on pipes). Every wait of the
//! streamer on its plugin ends at a deadline: handing a frame over and
//! getting its answer share one (`timeout_ms`, or `handshake_timeout_ms`),
//! and a frame counts as handed over only once the plugin has read it all,
//! so a plugin that answers without reading its stdin times out.

mod stderr;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use serde::Deserialize;
use statestream_config::ConfigError;
use tracing::{info, warn};

use statestream_config::StreamerOptions;
use statestream_core::plugin::{self, FrameError, MAX_FRAME_LEN, PROTOCOL_VERSION};
use statestream_core::{Block, Shutdown, StreamError, Streamer, StreamerContext, proto};

/// How long the node waits for the exit status of a plugin that closed its
/// stdout or stdin, before killing it.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Polling step while waiting for a child to exit.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// The variables of the node's environment a plugin inherits (with every
/// `LC_*`): what programs need to run (find programs, a home, the locale,
/// the time zone, a temporary directory). Every other variable of the node
/// is withheld, since it may be a secret meant for the node alone
/// (`PGPASSWORD`, a token); a plugin gets what else it needs from `env`.
pub const PLUGIN_INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
];

/// The smallest `max_frame_bytes`.
const MIN_FRAME_BYTES: u64 = 1024;
/// The largest `max_frame_bytes`: protobuf runtimes refuse messages of
/// 2 GiB and more.
const MAX_FRAME_BYTES: u64 = i32::MAX as u64;

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
fn resolve_program(program: &str, cwd: &Path, path_var: Option<&str>) -> Result<PathBuf, String> {
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

/// Why a plugin failed. Every variant but `Rejected` means the plugin was
/// killed (or had exited) and will be started again for the next attempt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The program could not be started.
    #[error("cannot start plugin program \"{program}\": {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// The plugin exited (or was killed by a signal) while the node waited.
    #[error("{plugin} exited ({status}) instead of sending the {waiting}")]
    Exited {
        plugin: String,
        waiting: String,
        status: ExitStatus,
    },
    /// The plugin closed its stdout or stdin but did not exit.
    #[error("{plugin} closed its pipes instead of sending the {waiting}; it was killed")]
    Closed { plugin: String, waiting: String },
    /// The plugin did not answer in time.
    #[error("{plugin} timed out: no {waiting} within {timeout_ms} ms; it was killed")]
    Timeout {
        plugin: String,
        waiting: String,
        timeout_ms: u128,
    },
    /// The plugin did not read the node's frame in time (it may have
    /// answered anyway: a plugin must read every frame before answering).
    #[error(
        "{plugin} timed out: it did not read the {frame} from its stdin within {timeout_ms} ms; it was killed"
    )]
    NotReading {
        plugin: String,
        frame: String,
        timeout_ms: u128,
    },
    /// The block's frame is over `max_frame_bytes`: it was not sent, and
    /// the plugin keeps running.
    #[error(
        "height {height} is a plugin frame of {size} bytes, over the limit of {max} bytes, so it \
         was not sent; raise max_frame_bytes in [streamers.{streamer}] and the plugin's own \
         frame limit together (docs/plugin-protocol.md)"
    )]
    FrameTooLarge {
        streamer: String,
        height: u64,
        size: usize,
        max: usize,
    },
    /// The node began shutting down while the plugin waited to be
    /// restarted: it is not restarted, and the block stays in the change
    /// log for the next start.
    #[error(
        "plugin program \"{program}\" not restarted for height {height}: the node is shutting down"
    )]
    ShuttingDown { program: String, height: u64 },
    /// The plugin wrote something that is not the expected frame.
    #[error("{plugin} wrote garbage instead of the {waiting}: {source}; it was killed")]
    BadFrame {
        plugin: String,
        waiting: String,
        #[source]
        source: FrameError,
    },
    /// The plugin speaks another protocol version.
    #[error(
        "{plugin} speaks plugin protocol version {plugin_version}, the node speaks version {node_version}; it was killed"
    )]
    Version {
        plugin: String,
        plugin_version: u32,
        node_version: u32,
    },
    /// The plugin acknowledged another height than the one sent.
    #[error("{plugin} acknowledged height {got} but height {expected} was sent; it was killed")]
    WrongAck {
        plugin: String,
        expected: u64,
        got: u64,
    },
    /// The plugin reported that it failed to handle the block (`Ack.error`).
    /// It keeps running; the block is delivered again.
    #[error("{plugin} failed to handle height {height}: {message}")]
    Rejected {
        plugin: String,
        height: u64,
        message: String,
    },
    /// A thread could not be started.
    #[error("{plugin}: {what}: {source}")]
    Io {
        plugin: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// At shutdown, the plugin did not exit after its stdin was closed.
    #[error(
        "{plugin} did not exit within {timeout_ms} ms after its stdin was closed; it was killed"
    )]
    CloseTimeout { plugin: String, timeout_ms: u128 },
}

impl ProcessError {
    /// Whether the plugin was killed (or is gone) and must be restarted,
    /// after the backoff, for the next attempt.
    fn needs_restart(&self) -> bool {
        !matches!(
            self,
            ProcessError::Rejected { .. }
                | ProcessError::FrameTooLarge { .. }
                | ProcessError::ShuttingDown { .. }
        )
    }
}

/// `type = "process"`: a streamer that is a separate program. Built by
/// [`ProcessStreamerConfig::build`].
///
/// The plugin is started at the first block, with the exact argv of
/// `command` (never through a shell), in an environment of its own
/// ([`PLUGIN_INHERITED_ENV`] and `env`). The node sends `Hello` and waits for
/// `HelloAck`, then sends one `BlockFrame` per block and waits for the
/// matching `Ack`: `on_block` returns `Ok` only then, so the cursor
/// advances only on acknowledgement. A block over `max_frame_bytes` is not
/// sent ([`ProcessError::FrameTooLarge`]). The plugin's stderr is logged
/// line by line under the streamer's name.
///
/// Any misbehaviour is a [`ProcessError`]; the plugin is then killed and
/// reaped, and the next `on_block` (the delivery manager's retry of the same
/// block) starts it again, after the restart backoff (cut short when the
/// node shuts down: the block then fails), with `resume_height`
/// set to that block: blocks sent but not acknowledged are sent again (at
/// least once delivery). An `Ack` carrying an error is the exception: the
/// plugin keeps running and receives the block again. `on_close` closes the
/// plugin's stdin and waits `close_timeout_ms` for it to exit, then kills
/// it. A plugin is never left running or unreaped: dropping the streamer
/// kills it.
#[derive(Debug)]
pub struct ProcessStreamer {
    name: String,
    stores: Vec<String>,
    program: PathBuf,
    /// The program as written in `command`, for messages.
    shown: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: PathBuf,
    timeout: Duration,
    handshake_timeout: Duration,
    close_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    /// The pause before the next restart.
    backoff: Duration,
    /// No restart before this instant (set by a failure).
    not_before: Option<Instant>,
    /// `max_frame_bytes`.
    max_frame: usize,
    /// Ends the restart backoff early.
    shutdown: Shutdown,
    plugin: Option<Plugin>,
}

/// What a plugin's helper threads report.
enum Event {
    /// A frame's payload from stdout.
    Frame(Vec<u8>),
    /// Stdout ended cleanly.
    Eof,
    /// Stdout held something that is not a frame.
    ReadFailed(FrameError),
    /// The last frame handed over was written to stdin in full: the
    /// plugin has read all but what the pipe holds.
    Written,
    /// Writing a frame to stdin failed.
    WriteFailed(io::Error),
}

/// A running plugin. Dropping it kills and reaps the process.
#[derive(Debug)]
struct Plugin {
    child: Child,
    pid: u32,
    /// `plugin "name" version (pid N)`, for messages.
    label: String,
    /// Frames for the writer thread; dropping it closes the plugin's stdin.
    frames: Option<Sender<Vec<u8>>>,
    events: Receiver<Event>,
    reaped: bool,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Frame(b) => write!(f, "Frame({} bytes)", b.len()),
            Event::Eof => f.write_str("Eof"),
            Event::Written => f.write_str("Written"),
            Event::ReadFailed(e) => write!(f, "ReadFailed({e})"),
            Event::WriteFailed(e) => write!(f, "WriteFailed({e})"),
        }
    }
}

impl Plugin {
    /// Waits up to `limit` for the process to exit by itself.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped = true;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(EXIT_POLL),
                _ => return None,
            }
        }
    }

    /// Kills (if still running) and reaps the process.
    fn kill(&mut self) {
        self.frames = None;
        if !self.reaped {
            // An error means the process has already exited: wait reaps it.
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }

    /// The error for a plugin whose pipes closed: its exit status if it
    /// exits soon, otherwise [`ProcessError::Closed`].
    fn gone(&mut self, waiting: &str) -> ProcessError {
        match self.wait_exit(EXIT_GRACE) {
            Some(status) => ProcessError::Exited {
                plugin: self.label.clone(),
                waiting: waiting.to_string(),
                status,
            },
            None => ProcessError::Closed {
                plugin: self.label.clone(),
                waiting: waiting.to_string(),
            },
        }
    }

    /// Hands `payload` (the `frame`, for messages) to the plugin and waits
    /// for its answer (the `waiting`), both within `timeout`: the answer
    /// counts only once the whole frame is written, so a plugin that
    /// answers without reading its stdin times out
    /// ([`ProcessError::NotReading`]).
    fn exchange(
        &mut self,
        payload: Vec<u8>,
        frame: &str,
        waiting: &str,
        timeout: Duration,
    ) -> Result<Vec<u8>, ProcessError> {
        let mut deadline = Instant::now() + timeout;
        let not_reading = |plugin: &Plugin| ProcessError::NotReading {
            plugin: plugin.label.clone(),
            frame: frame.to_string(),
            timeout_ms: timeout.as_millis(),
        };
        // Every exchange that leaves the plugin running waited for its frame
        // to be written, so the writer thread is idle and this does not
        // wait; the deadline only guards that.
        let sent = match &self.frames {
            Some(tx) => tx.send_deadline(payload, deadline),
            None => Err(SendTimeoutError::Disconnected(payload)),
        };
        match sent {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => return Err(not_reading(self)),
            Err(SendTimeoutError::Disconnected(_)) => return Err(self.gone(waiting)),
        }
        let mut written = false;
        let mut answer = None;
        let mut write_failed = false;
        loop {
            if written && let Some(answer) = answer.take() {
                return Ok(answer);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Written) => written = true,
                // The first frame is the answer. One more before the
                // frame was read can only come from a plugin answering
                // ahead without reading: dropped, the wait for the write
                // then times out.
                Ok(Event::Frame(payload)) => {
                    answer.get_or_insert(payload);
                }
                Ok(Event::ReadFailed(source)) => {
                    return Err(ProcessError::BadFrame {
                        plugin: self.label.clone(),
                        waiting: waiting.to_string(),
                        source,
                    });
                }
                // The plugin closed its stdin, most likely by exiting: what
                // it wrote before (garbage, say) tells more than the broken
                // pipe, so read on for a short while.
                Ok(Event::WriteFailed(_)) => {
                    write_failed = true;
                    deadline = deadline.min(Instant::now() + EXIT_GRACE);
                }
                Ok(Event::Eof) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.gone(waiting));
                }
                Err(RecvTimeoutError::Timeout) if write_failed => return Err(self.gone(waiting)),
                Err(RecvTimeoutError::Timeout) if !written => return Err(not_reading(self)),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(ProcessError::Timeout {
                        plugin: self.label.clone(),
                        waiting: waiting.to_string(),
                        timeout_ms: timeout.as_millis(),
                    });
                }
            }
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.kill();
    }
}

impl ProcessStreamer {
    /// The pid of the running plugin, if one is running.
    pub fn pid(&self) -> Option<u32> {
        self.plugin.as_ref().map(|p| p.pid)
    }

    /// Starts the plugin and runs the handshake; `resume` is the next height
    /// it will receive. Waits for the restart backoff first, unless the node
    /// shuts down meanwhile.
    fn start(&mut self, resume: u64) -> Result<(), ProcessError> {
        if let Some(t) = self.not_before {
            let now = Instant::now();
            if t > now && self.shutdown.wait(t - now) {
                return Err(ProcessError::ShuttingDown {
                    program: self.shown.clone(),
                    height: resume,
                });
            }
            self.not_before = None;
        }
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .envs(plugin_env(std::env::vars_os(), &self.env))
            .current_dir(&self.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            program: self.shown.clone(),
            source,
        })?;
        let pid = child.id();
        let (stdin, stdout, stderr) = (
            child.stdin.take().expect("stdin is piped"),
            child.stdout.take().expect("stdout is piped"),
            child.stderr.take().expect("stderr is piped"),
        );
        let (frames_tx, frames_rx) = crossbeam_channel::bounded::<Vec<u8>>(1);
        let (events_tx, events_rx) = crossbeam_channel::bounded::<Event>(4);
        let mut plugin = Plugin {
            child,
            pid,
            label: format!("plugin program \"{}\" (pid {pid})", self.shown),
            frames: Some(frames_tx),
            events: events_rx,
            reaped: false,
        };
        // The plugin is killed (by drop) if a thread cannot be started.
        let threads = [
            spawn_named(format!("plugin-{}-in", self.name), {
                let events = events_tx.clone();
                move || write_loop(stdin, &frames_rx, &events)
            }),
            spawn_named(format!("plugin-{}-out", self.name), move || {
                read_loop(stdout, &events_tx)
            }),
            spawn_named(format!("plugin-{}-err", self.name), {
                let name = self.name.clone();
                move || stderr::forward(stderr, &name, pid)
            }),
        ];
        for t in threads {
            if let Err(source) = t {
                return Err(ProcessError::Io {
                    plugin: plugin.label.clone(),
                    what: "cannot start a pipe thread",
                    source,
                });
            }
        }

        let hello = proto::Hello {
            protocol_version: PROTOCOL_VERSION,
            streamer_name: self.name.clone(),
            stores: self.stores.clone(),
            resume_height: resume,
        };
        let waiting = "HelloAck";
        let payload = plugin.exchange(
            prost::Message::encode_to_vec(&hello),
            "Hello",
            waiting,
            self.handshake_timeout,
        )?;
        let ack: proto::HelloAck =
            plugin::decode_frame(&payload, "HelloAck").map_err(|source| {
                ProcessError::BadFrame {
                    plugin: plugin.label.clone(),
                    waiting: waiting.to_string(),
                    source,
                }
            })?;
        if !ack.plugin_name.is_empty() {
            plugin.label = format!(
                "plugin \"{}\" {} (pid {pid})",
                ack.plugin_name, ack.plugin_version
            );
        }
        if ack.protocol_version != PROTOCOL_VERSION {
            return Err(ProcessError::Version {
                plugin: plugin.label.clone(),
                plugin_version: ack.protocol_version,
                node_version: PROTOCOL_VERSION,
            });
        }
        info!(streamer = %self.name, plugin = %ack.plugin_name, version = %ack.plugin_version,
            pid, resume_height = resume, "plugin started");
        self.plugin = Some(plugin);
        Ok(())
    }

    /// Sends `block` and waits for its acknowledgement.
    fn deliver(&mut self, block: &Block) -> Result<(), ProcessError> {
        let height = block.height();
        let mut payload = Vec::new();
        block.encode_frame(&mut payload);
        // Checked before sending (or starting the plugin): the plugin would
        // refuse the frame, the same way at every restart.
        if payload.len() > self.max_frame {
            return Err(ProcessError::FrameTooLarge {
                streamer: self.name.clone(),
                height,
                size: payload.len(),
                max: self.max_frame,
            });
        }
        if self.plugin.is_none() {
            self.start(height)?;
        }
        let plugin = self.plugin.as_mut().expect("started above");
        let waiting = format!("ack of height {height}");
        let frame = format!("frame of height {height}");
        let payload = plugin.exchange(payload, &frame, &waiting, self.timeout)?;
        let ack: proto::Ack =
            plugin::decode_frame(&payload, "Ack").map_err(|source| ProcessError::BadFrame {
                plugin: plugin.label.clone(),
                waiting: waiting.clone(),
                source,
            })?;
        if ack.height != height {
            return Err(ProcessError::WrongAck {
                plugin: plugin.label.clone(),
                expected: height,
                got: ack.height,
            });
        }
        if !ack.error.is_empty() {
            return Err(ProcessError::Rejected {
                plugin: plugin.label.clone(),
                height,
                message: ack.error,
            });
        }
        Ok(())
    }
}

impl Streamer for ProcessStreamer {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        match self.deliver(block) {
            Ok(()) => {
                self.backoff = self.backoff_min;
                Ok(())
            }
            Err(e) => {
                if e.needs_restart() {
                    // Killed and reaped here; restarted by the next attempt,
                    // after the backoff.
                    self.plugin = None;
                    self.not_before = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(self.backoff_max);
                }
                Err(StreamError::new(e))
            }
        }
    }

    fn on_close(&mut self) -> Result<(), StreamError> {
        let Some(mut plugin) = self.plugin.take() else {
            return Ok(());
        };
        // Closing stdin tells the plugin to finish and exit.
        plugin.frames = None;
        match plugin.wait_exit(self.close_timeout) {
            Some(status) if status.success() => {
                info!(streamer = %self.name, pid = plugin.pid, "plugin exited");
                Ok(())
            }
            Some(status) => {
                warn!(streamer = %self.name, pid = plugin.pid, %status, "plugin exited with a failure status at shutdown");
                Ok(())
            }
            None => {
                plugin.kill();
                Err(StreamError::new(ProcessError::CloseTimeout {
                    plugin: plugin.label.clone(),
                    timeout_ms: self.close_timeout.as_millis(),
                }))
            }
        }
    }
}

fn spawn_named<F>(name: String, f: F) -> io::Result<()>
where
    F: FnOnce() + Send + 'static,
{
    // Detached: each thread ends when its pipe closes, which killing the
    // plugin guarantees.
    std::thread::Builder::new().name(name).spawn(f).map(drop)
}

/// Writes frames to the plugin's stdin until the sender is dropped (which
/// closes stdin) or a write fails; reports each frame written in full.
fn write_loop(stdin: ChildStdin, frames: &Receiver<Vec<u8>>, events: &Sender<Event>) {
    let mut w = BufWriter::new(stdin);
    for payload in frames.iter() {
        let event = match plugin::write_frame_bytes(&mut w, &payload).and_then(|()| w.flush()) {
            Ok(()) => Event::Written,
            Err(e) => Event::WriteFailed(e),
        };
        let failed = matches!(event, Event::WriteFailed(_));
        // A send fails once the plugin is dropped: nobody listens any more.
        if events.send(event).is_err() || failed {
            return;
        }
    }
}

/// Reads frames from the plugin's stdout until it closes or holds garbage.
fn read_loop(stdout: ChildStdout, events: &Sender<Event>) {
    let mut r = BufReader::new(stdout);
    loop {
        let mut buf = Vec::new();
        let event = match plugin::read_frame(&mut r, &mut buf, MAX_FRAME_LEN) {
            Ok(true) => Event::Frame(buf),
            Ok(false) => Event::Eof,
            Err(e) => Event::ReadFailed(e),
        };
        let last = !matches!(event, Event::Frame(_));
        // A send fails once the plugin is dropped: nobody listens any more.
        if events.send(event).is_err() || last {
            return;
        }
    }
}

/// The plugin's environment: the variables of `node` (the node's
/// environment) named in [`PLUGIN_INHERITED_ENV`] or starting with `LC_`, then
/// `extra` (the `env` option), which may override them.
fn plugin_env(
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

#[cfg(test)]
mod tests {
    use super::*;
    use statestream_config::AppConfig;
    use statestream_core::StoreKey;

    fn build(table: &str) -> Result<ProcessStreamer, String> {
        let text = format!(
            "[store]\nstreamers = [\"p\"]\n[streamers.p]\ntype = \"process\"\nkeys = [\"bank\"]\n{table}"
        );
        let config = AppConfig::parse(&text, Path::new("app.toml")).map_err(|e| e.to_string())?;
        let specs = config.resolve(&["bank"]).map_err(|e| e.to_string())?;
        let stores = [StoreKey::new("bank").unwrap()];
        let home = std::env::temp_dir();
        let ctx = StreamerContext {
            name: "p",
            stores: &stores,
            all_stores: &stores,
            home: &home,
            reader: None,
            shutdown: &statestream_core::Shutdown::default(),
            push: None,
        };
        let options = &specs[0].options;
        let config: ProcessStreamerConfig = options.parse().map_err(|e| e.to_string())?;
        config.build(&ctx, options).map_err(|e| e.to_string())
    }

    #[test]
    fn process_documented_config_parses() {
        let s = build(
            "command = [\"sh\", \"-c\", \"exit 0\"]\ntimeout_ms = 10000\n\
             handshake_timeout_ms = 10000\nclose-timeout-ms = 5000\nrestart_backoff_ms = 100\n\
             restart_backoff_max_ms = 10000\nmax_frame_bytes = 67108864\n\
             env = { INDEX_LEVEL = \"full\" }\n",
        )
        .unwrap();
        assert_eq!(s.max_frame, 64 << 20);
        assert_eq!(s.args, ["-c", "exit 0"]);
        assert_eq!(s.env["INDEX_LEVEL"], "full");
        assert_eq!(s.close_timeout, Duration::from_millis(5000));
        assert_eq!(s.stores, ["bank"]);
    }

    #[test]
    fn process_defaults() {
        let s = build("command = [\"sh\"]\n").unwrap();
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert_eq!(s.handshake_timeout, Duration::from_secs(10));
        assert_eq!(s.close_timeout, Duration::from_secs(5));
        assert_eq!(s.backoff_min, Duration::from_millis(100));
        assert_eq!(s.backoff_max, Duration::from_secs(10));
        assert_eq!(s.max_frame, MAX_FRAME_LEN);
        assert!(s.env.is_empty());
        assert_eq!(s.cwd, std::env::current_dir().unwrap());
    }

    #[test]
    fn process_config_errors_name_the_key() {
        let e = build("command = []\n").unwrap_err();
        assert!(e.contains("command") && e.contains("non-empty"), "{e}");
        let e = build("").unwrap_err();
        assert!(e.contains("command"), "{e}");
        let e = build("command = [\"sh\", 3]\n").unwrap_err();
        assert!(e.contains("command"), "{e}");
        let e = build("command = \"sh\"\n").unwrap_err();
        assert!(e.contains("command"), "{e}");
        let e = build("command = [\"sh\"]\ntimeout-ms = 0\n").unwrap_err();
        assert!(e.contains("timeout-ms"), "{e}");
        let e = build("command = [\"sh\"]\nshell = true\n").unwrap_err();
        assert!(e.contains("shell") && e.contains("unknown key"), "{e}");
        let e = build("command = [\"no-such-program-xyz\"]\n").unwrap_err();
        assert!(
            e.contains("no-such-program-xyz") && e.contains("not found"),
            "{e}"
        );
        let e = build("command = [\"./missing/plugin.py\"]\n").unwrap_err();
        assert!(
            e.contains("./missing/plugin.py") && e.contains("not found"),
            "{e}"
        );
        let e = build("command = [\"sh\"]\nworking_dir = \"no/such/dir\"\n").unwrap_err();
        assert!(
            e.contains("working_dir") && e.contains("not a directory"),
            "{e}"
        );
        for bad in [0u64, 1023, 1 << 31] {
            let e = build(&format!("command = [\"sh\"]\nmax-frame-bytes = {bad}\n")).unwrap_err();
            assert!(
                e.contains("max-frame-bytes") && e.contains("from 1024 to 2147483647"),
                "{e}"
            );
        }
        for bad in ["\"A=B\" = \"1\"", "\"\" = \"1\"", "A = \"x\\u0000y\""] {
            let e = build(&format!("command = [\"sh\"]\nenv = {{ {bad} }}\n")).unwrap_err();
            assert!(e.contains("env"), "{bad}: {e}");
        }
    }

    #[test]
    fn process_env_keeps_only_the_allow_list_and_adds_env() {
        let node = [
            ("PATH", "/usr/bin"),
            ("HOME", "/home/n"),
            ("LC_ALL", "C.UTF-8"),
            ("TZ", "UTC"),
            ("PGPASSWORD", "secret"),
            ("AWS_SECRET_ACCESS_KEY", "k"),
            ("LD_PRELOAD", "/tmp/x.so"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let extra = BTreeMap::from([
            ("INDEX_LEVEL".to_string(), "full".to_string()),
            ("TZ".to_string(), "Europe/Paris".to_string()),
        ]);
        let env = plugin_env(node.into_iter(), &extra);
        let env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect();
        let expected = [
            ("HOME", "/home/n"),
            ("INDEX_LEVEL", "full"),
            ("LC_ALL", "C.UTF-8"),
            ("PATH", "/usr/bin"),
            ("TZ", "Europe/Paris"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(env, expected);
    }
}
