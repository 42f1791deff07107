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

mod child;
mod config;
mod error;
mod stderr;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use statestream_core::plugin::{self, PROTOCOL_VERSION};
use statestream_core::{Block, Shutdown, StreamError, Streamer, proto};

use child::{Event, Plugin, read_loop, spawn_named, write_loop};
use config::plugin_env;
pub use config::{PLUGIN_INHERITED_ENV, ProcessStreamerConfig};
pub use error::ProcessError;

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

#[cfg(test)]
mod tests;
