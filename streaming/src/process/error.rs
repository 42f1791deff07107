//! Why a plugin failed.

use std::io;
use std::process::ExitStatus;

use statestream_core::plugin::FrameError;

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
    pub(super) fn needs_restart(&self) -> bool {
        !matches!(
            self,
            ProcessError::Rejected { .. }
                | ProcessError::FrameTooLarge { .. }
                | ProcessError::ShuttingDown { .. }
        )
    }
}
