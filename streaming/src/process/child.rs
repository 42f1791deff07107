//! A running plugin program and the helper threads on its pipes.

use std::io::{self, BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin, ChildStdout, ExitStatus};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};

use statestream_core::plugin::{self, FrameError, MAX_FRAME_LEN};

use super::ProcessError;

/// How long the node waits for the exit status of a plugin that closed its
/// stdout or stdin, before killing it.
pub(super) const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Polling step while waiting for a child to exit.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// What a plugin's helper threads report.
pub(super) enum Event {
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
pub(super) struct Plugin {
    pub(super) child: Child,
    pub(super) pid: u32,
    /// `plugin "name" version (pid N)`, for messages.
    pub(super) label: String,
    /// Frames for the writer thread; dropping it closes the plugin's stdin.
    pub(super) frames: Option<Sender<Vec<u8>>>,
    pub(super) events: Receiver<Event>,
    pub(super) reaped: bool,
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
    pub(super) fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
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
    pub(super) fn kill(&mut self) {
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
    pub(super) fn gone(&mut self, waiting: &str) -> ProcessError {
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
    pub(super) fn exchange(
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

pub(super) fn spawn_named<F>(name: String, f: F) -> io::Result<()>
where
    F: FnOnce() + Send + 'static,
{
    // Detached: each thread ends when its pipe closes, which killing the
    // plugin guarantees.
    std::thread::Builder::new().name(name).spawn(f).map(drop)
}

/// Writes frames to the plugin's stdin until the sender is dropped (which
/// closes stdin) or a write fails; reports each frame written in full.
pub(super) fn write_loop(stdin: ChildStdin, frames: &Receiver<Vec<u8>>, events: &Sender<Event>) {
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
pub(super) fn read_loop(stdout: ChildStdout, events: &Sender<Event>) {
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
