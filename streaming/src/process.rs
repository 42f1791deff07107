//! `type = "process"`: a streamer that is a separate program, spoken to with
//! the plugin protocol ([`statestream_core::plugin`], `docs/plugin-protocol.md`).
//!
//! The node starts the program with the exact argv of `command` (never
//! through a shell), sends `Hello` on its stdin and reads `HelloAck` on its
//! stdout, then sends one `BlockFrame` per block and waits for the matching
//! `Ack`: [`Streamer::on_block`] returns `Ok` only then, so the cursor
//! advances only on acknowledgement. The plugin's stderr is logged line by
//! line under the streamer's name.
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
//! its timeouts (std offers no timeout on pipes).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Deserialize;
use statestream_config::ConfigError;
use tracing::{info, warn};

use statestream_config::StreamerOptions;
use statestream_core::plugin::{self, FrameError, MAX_FRAME_LEN, PROTOCOL_VERSION};
use statestream_core::{Block, StreamError, Streamer, StreamerContext, proto};

/// How long the node waits for the exit status of a plugin that closed its
/// stdout or stdin, before killing it.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Polling step while waiting for a child to exit.
const EXIT_POLL: Duration = Duration::from_millis(5);

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
    /// How long the plugin may take to acknowledge one block, in
    /// milliseconds, counted from when the node hands over the frame. Past
    /// it the plugin is killed and the block fails. Default 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long the plugin may take to answer `Hello` after it is started,
    /// in milliseconds. Default 10000.
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
    /// Environment variables set for the plugin, on top of the node's own
    /// environment (which the plugin inherits). Default: none.
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

/// `type = "process"`: a streamer that is a separate program. Built by
/// [`ProcessStreamerConfig::build`].
///
/// The plugin is started at the first block, with the exact argv of
/// `command` (never through a shell). The node sends `Hello` and waits for
/// `HelloAck`, then sends one `BlockFrame` per block and waits for the
/// matching `Ack`: `on_block` returns `Ok` only then, so the cursor
/// advances only on acknowledgement. The plugin's stderr is logged line by
/// line under the streamer's name.
///
/// Any misbehaviour is a [`ProcessError`]; the plugin is then killed and
/// reaped, and the next `on_block` (the delivery manager's retry of the same
/// block) starts it again, after the restart backoff, with `resume_height`
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

    /// Sends one frame's payload.
    fn send(&mut self, payload: Vec<u8>, waiting: &str) -> Result<(), ProcessError> {
        let sent = self.frames.as_ref().map(|tx| tx.send(payload).is_ok());
        if sent == Some(true) {
            Ok(())
        } else {
            Err(self.gone(waiting))
        }
    }

    /// The next frame from the plugin, within `timeout`.
    fn recv(&mut self, timeout: Duration, waiting: &str) -> Result<Vec<u8>, ProcessError> {
        let mut deadline = Instant::now() + timeout;
        let mut write_failed = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Frame(payload)) => return Ok(payload),
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
    /// it will receive.
    fn start(&mut self, resume: u64) -> Result<(), ProcessError> {
        if let Some(t) = self.not_before.take() {
            let now = Instant::now();
            if t > now {
                std::thread::sleep(t - now);
            }
        }
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(&self.env)
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
                move || log_stderr(stderr, &name, pid)
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
        plugin.send(prost::Message::encode_to_vec(&hello), waiting)?;
        let payload = plugin.recv(self.handshake_timeout, waiting)?;
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
        if self.plugin.is_none() {
            self.start(height)?;
        }
        let plugin = self.plugin.as_mut().expect("started above");
        let waiting = format!("ack of height {height}");
        let mut payload = Vec::new();
        block.encode_frame(&mut payload);
        plugin.send(payload, &waiting)?;
        let payload = plugin.recv(self.timeout, &waiting)?;
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
                if !matches!(e, ProcessError::Rejected { .. }) {
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
/// closes stdin) or a write fails.
fn write_loop(stdin: ChildStdin, frames: &Receiver<Vec<u8>>, events: &Sender<Event>) {
    let mut w = BufWriter::new(stdin);
    for payload in frames.iter() {
        if let Err(e) = plugin::write_frame_bytes(&mut w, &payload).and_then(|()| w.flush()) {
            let _ = events.send(Event::WriteFailed(e));
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

/// Logs the plugin's stderr, line by line, under the streamer's name.
fn log_stderr(stderr: ChildStderr, name: &str, pid: u32) {
    let mut r = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if !text.is_empty() {
                    info!(streamer = %name, pid, "plugin: {text}");
                }
            }
        }
    }
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
             restart_backoff_max_ms = 10000\nenv = { INDEX_LEVEL = \"full\" }\n",
        )
        .unwrap();
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
    }
}
