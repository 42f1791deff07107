//! The streamer: one JetStream message per block (or several parts when a
//! block is bigger than the server's `max_payload`), acknowledged before
//! `on_block` returns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::message::PublishMessage;
use statestream_core::{Block, Shutdown, StreamError, Streamer};
use tokio::runtime::Runtime;
use tracing::{debug, info, warn};

use crate::config::NatsStreamerConfig;
use crate::conn::{Connection, StreamSpec, block_on, jetstream_error, runtime};
use crate::error::{NatsError, Result};

/// Header with the deduplication id: `<stream>-<height>`, or
/// `<stream>-<height>-<part>` for the parts of a split block.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// Header with the block height, in decimal.
pub const HEADER_HEIGHT: &str = "Statestream-Height";
/// Header of a split block's parts: `<part>/<parts>`, parts numbered from
/// 1. A block that fits in one message has no such header.
pub const HEADER_PART: &str = "Statestream-Part";
/// Header JetStream checks against the stream that captures the subject.
const HEADER_EXPECTED_STREAM: &str = "Nats-Expected-Stream";

/// Bytes kept free in each part of a split block for its headers, plus
/// twice the stream name's length (`Nats-Msg-Id` and
/// `Nats-Expected-Stream` carry it): more than the longest header block
/// (four headers with 20-digit numbers).
const HEADER_ROOM: usize = 256;

/// `type = "nats"`: publishes every block to a JetStream stream.
///
/// Each block is one message on `<subject>.blocks` whose payload is the
/// protobuf `BlockFrame` of the plugin protocol (`Block::encode_frame`),
/// with headers `Nats-Msg-Id: <stream>-<height>`, `Statestream-Height` and
/// `Nats-Expected-Stream: <stream>` (JetStream refuses the message when the
/// subject belongs to another stream). A frame bigger than the server's
/// `max_payload` is split into parts (`Statestream-Part: i/n`,
/// `Nats-Msg-Id: <stream>-<height>-<i>`) that a reader concatenates; the
/// parts are published back to back, then every acknowledgement awaited.
///
/// The client is the official `async-nats`, on a runtime this streamer
/// owns (one worker thread named `nats-<streamer>`), driven with
/// `block_on` from the thread that calls the hooks. The connection is
/// opened at the first block, kept, pinged and re-established in the
/// background; a block that finds it down waits for it at most
/// `connect_timeout_ms` (a shutdown ends the wait), then fails.
///
/// `on_block` returns `Ok` only once the server acknowledged every message
/// of the block. Delivery is idempotent per height twice over: after each
/// (re)connection and each error the streamer looks up the last block in
/// the stream and does not publish heights at or below it again, and
/// JetStream drops a message whose `Nats-Msg-Id` it saw within the
/// stream's duplicate window.
pub struct NatsStreamer {
    name: String,
    config: NatsStreamerConfig,
    home: Option<PathBuf>,
    shutdown: Shutdown,
    subject: String,
    runtime: Option<Runtime>,
    conn: Option<Connection>,
    /// Whether the stream was checked (and created) and its last block
    /// read on the current connection, since the last error.
    prepared: bool,
    /// The last height whose every part the stream holds, as found when
    /// preparing, then advanced by each publish.
    last_in_stream: u64,
    /// The stream's `max_msg_size` when it has one (then messages are
    /// split to fit it as well as the server's `max_payload`).
    stream_max_msg: Option<usize>,
    frame: Vec<u8>,
}

impl std::fmt::Debug for NatsStreamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStreamer")
            .field("name", &self.name)
            .field("config", &self.config)
            .field(
                "connected",
                &self.conn.as_ref().is_some_and(Connection::is_connected),
            )
            .field("last_in_stream", &self.last_in_stream)
            .finish()
    }
}

impl NatsStreamer {
    /// A streamer named `name` (its table in app.toml) with `config`;
    /// relative paths in it are relative to the working directory, and
    /// nothing stops its waits early. Nothing connects until the first
    /// block. [`NatsStreamerConfig::build`] gives the node's home and
    /// shutdown signal instead.
    pub fn new(name: &str, config: NatsStreamerConfig) -> NatsStreamer {
        NatsStreamer::with_context(name, config, None, Shutdown::new())
    }

    pub(crate) fn with_context(
        name: &str,
        config: NatsStreamerConfig,
        home: Option<&Path>,
        shutdown: Shutdown,
    ) -> NatsStreamer {
        NatsStreamer {
            name: name.to_string(),
            subject: config.blocks_subject(),
            config,
            home: home.map(Path::to_path_buf),
            shutdown,
            runtime: None,
            conn: None,
            prepared: false,
            last_in_stream: 0,
            stream_max_msg: None,
            frame: Vec::new(),
        }
    }

    /// Makes the runtime and opens the connection, on first use.
    fn ensure_connection(&mut self) -> Result<()> {
        if self.runtime.is_none() {
            self.runtime = Some(runtime(&self.name)?);
        }
        let Some(rt) = self.runtime.as_ref() else {
            return Err(NatsError::ShuttingDown);
        };
        if self.conn.is_none() {
            let settings = self.config.settings(self.home.as_deref())?;
            self.conn = Some(Connection::open(rt, &settings, &self.shutdown)?);
            self.prepared = false;
        }
        Ok(())
    }

    /// The runtime and the connection [`ensure_connection`] made.
    fn connection(&self) -> Result<(&Runtime, &Connection)> {
        match (self.runtime.as_ref(), self.conn.as_ref()) {
            (Some(rt), Some(conn)) => Ok((rt, conn)),
            _ => Err(NatsError::ShuttingDown),
        }
    }

    /// Makes sure the stream exists and finds the last block it holds.
    fn prepare(&mut self) -> Result<()> {
        let name = self.name.clone();
        let stream = self.config.stream.clone();
        let subject = self.subject.clone();
        let create = self.config.create_stream;
        let spec = StreamSpec {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            duplicate_window: Duration::from_millis(self.config.duplicate_window_ms),
            replicas: self.config.replicas,
        };
        self.ensure_connection()?;
        let (rt, conn) = self.connection()?;
        let (max_msg, last) = block_on(rt, async {
            let mut max_msg = None;
            match conn.stream_info(&stream).await? {
                Some(info) => {
                    max_msg = usize::try_from(info.config.max_msg_size).ok();
                    if !info
                        .config
                        .subjects
                        .iter()
                        .any(|s| subject_matches(s, &subject))
                    {
                        warn!(streamer = %name, stream = %stream, subjects = ?info.config.subjects,
                            subject = %subject,
                            "the stream's subjects do not include the blocks subject");
                    }
                }
                None if create => {
                    conn.create_stream(&spec).await?;
                    info!(streamer = %name, stream = %stream, subject = %subject,
                        server = %conn.url(), "created the JetStream stream");
                }
                None => {
                    return Err(NatsError::MissingStream {
                        stream: stream.clone(),
                    });
                }
            }
            let last = conn.last_message(&stream, &subject).await?;
            Ok::<_, NatsError>((max_msg, last))
        })?;
        let last_in_stream = match last {
            None => 0,
            Some(m) => {
                let height = m
                    .headers
                    .get(HEADER_HEIGHT)
                    .and_then(|h| h.as_str().parse::<u64>().ok());
                let part = m.headers.get(HEADER_PART).map(|p| parse_part(p.as_str()));
                match (height, part) {
                    (Some(h), None | Some(Some((_, _, true)))) => h,
                    // The last block is only partly there: publish it again.
                    (Some(h), Some(_)) => h.saturating_sub(1),
                    (None, _) => 0,
                }
            }
        };
        debug!(streamer = %self.name, server = %conn.url(), last_in_stream,
            max_payload = conn.max_payload(), "ready to publish to JetStream");
        self.stream_max_msg = max_msg;
        self.last_in_stream = last_in_stream;
        self.prepared = true;
        Ok(())
    }

    fn publish_block(&mut self, block: &Block) -> Result<()> {
        let height = block.height();
        self.ensure_connection()?;
        let (_, conn) = self.connection()?;
        if !conn.is_connected() {
            // The client reconnects in the background; wait for it (a
            // shutdown ends the wait), then look at the stream again.
            conn.wait_connected(&self.shutdown)?;
            self.prepared = false;
        }
        if !self.prepared {
            self.prepare()?;
        }
        if height <= self.last_in_stream {
            debug!(streamer = %self.name, height, last_in_stream = self.last_in_stream,
                "the stream already holds this block");
            return Ok(());
        }
        block.encode_frame(&mut self.frame);
        match self.publish_frame(height) {
            Ok(()) => Ok(()),
            // The connection broke under the publish (a server restart):
            // wait for the client to reconnect, then publish again once.
            // Safe: the stream is read again first, and JetStream
            // deduplicates.
            Err(e) if self.conn.as_ref().is_some_and(|c| !c.is_connected()) => {
                debug!(streamer = %self.name, height, error = %e, "waiting for the reconnection");
                self.prepared = false;
                if let Some(conn) = self.conn.as_ref() {
                    conn.wait_connected(&self.shutdown)?;
                }
                self.prepare()?;
                if height <= self.last_in_stream {
                    return Ok(());
                }
                self.publish_frame(height)
            }
            Err(e) => Err(e),
        }
    }

    fn publish_frame(&mut self, height: u64) -> Result<()> {
        let stream = self.config.stream.clone();
        let subject = async_nats::Subject::from(self.subject.as_str());
        let frame = bytes::Bytes::from(std::mem::take(&mut self.frame));
        self.ensure_connection()?;
        let (rt, conn) = self.connection()?;
        let height_text = height.to_string();
        let max = match self.stream_max_msg {
            Some(m) => m.min(conn.max_payload()),
            None => conn.max_payload(),
        };
        let single_id = format!("{stream}-{height}");
        let single_len = frame.len()
            + headers_len(&[
                (HEADER_MSG_ID, &single_id),
                (HEADER_HEIGHT, &height_text),
                (HEADER_EXPECTED_STREAM, &stream),
            ]);
        let mut messages = Vec::new();
        if single_len <= max {
            messages.push(
                PublishMessage::build()
                    .payload(frame.clone())
                    .message_id(&single_id)
                    .expected_stream(&stream)
                    .header(HEADER_HEIGHT, height_text.as_str()),
            );
        } else {
            let chunk = max
                .checked_sub(HEADER_ROOM + 2 * stream.len())
                .filter(|&c| c >= 1024)
                .ok_or_else(|| NatsError::Unsupported {
                    url: conn.url().to_string(),
                    message: format!(
                        "the largest message the server and the stream accept ({max} bytes) is too small to split blocks into"
                    ),
                })?;
            let parts = frame.len().div_ceil(chunk);
            for i in 1..=parts {
                let start = (i - 1) * chunk;
                let end = (start + chunk).min(frame.len());
                messages.push(
                    PublishMessage::build()
                        .payload(frame.slice(start..end))
                        .message_id(format!("{stream}-{height}-{i}"))
                        .expected_stream(&stream)
                        .header(HEADER_HEIGHT, height_text.as_str())
                        .header(HEADER_PART, format!("{i}/{parts}").as_str()),
                );
            }
            debug!(streamer = %self.name, height, parts, bytes = frame.len(), "publishing a split block");
        }
        let js = conn.jetstream();
        let fail = |e: async_nats::jetstream::context::PublishError| {
            publish_error(conn, &self.subject, &stream, height, e)
        };
        // Pipelined: every part is sent before the first acknowledgement
        // is awaited; the block counts only when all are in.
        let acks = block_on(rt, async {
            let mut pending = Vec::with_capacity(messages.len());
            for m in messages {
                pending.push(js.send_publish(subject.clone(), m).await.map_err(fail)?);
            }
            let mut acks = Vec::with_capacity(pending.len());
            for p in pending {
                acks.push(p.await.map_err(fail)?);
            }
            Ok::<_, NatsError>(acks)
        })?;
        for ack in &acks {
            if ack.stream != stream {
                return Err(NatsError::WrongStream {
                    height,
                    got: ack.stream.clone(),
                    want: stream.clone(),
                });
            }
        }
        if acks.iter().all(|a| a.duplicate) {
            debug!(streamer = %self.name, height, "JetStream already had this block (duplicate)");
        }
        // Keep the buffer for the next block when nothing else holds it.
        if let Ok(buf) = frame.try_into_mut() {
            self.frame = buf.into();
        }
        self.last_in_stream = height;
        Ok(())
    }
}

/// The size of a header block as NATS encodes it (`NATS/1.0`, one line per
/// header, an empty line).
fn headers_len(headers: &[(&str, &str)]) -> usize {
    10 + headers
        .iter()
        .map(|(k, v)| k.len() + 2 + v.len() + 2)
        .sum::<usize>()
        + 2
}

/// A failed publish as our error.
fn publish_error(
    conn: &Connection,
    subject: &str,
    stream: &str,
    height: u64,
    e: async_nats::jetstream::context::PublishError,
) -> NatsError {
    use async_nats::jetstream::context::PublishErrorKind as K;
    match e.kind() {
        K::StreamNotFound => NatsError::NoResponders {
            url: conn.url().to_string(),
            subject: subject.to_string(),
            hint: "no JetStream stream captures this subject (is the stream's subject list right?)"
                .into(),
        },
        K::TimedOut => NatsError::Timeout {
            url: conn.url().to_string(),
            what: format!("the publish of block {height}"),
            timeout: conn.request_timeout(),
        },
        _ => {
            let js = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>());
            match js {
                Some(js) if js.error_code() == ErrorCode::STREAM_NOT_MATCH => {
                    NatsError::StreamMismatch {
                        height,
                        subject: subject.to_string(),
                        want: stream.to_string(),
                        description: js.to_string(),
                    }
                }
                Some(js) => jetstream_error(&format!("publish to {subject}"), js),
                None => conn.request_failed(&format!("the publish of block {height}"), &e),
            }
        }
    }
}

impl Streamer for NatsStreamer {
    fn on_block(&mut self, block: &Block) -> std::result::Result<(), StreamError> {
        self.publish_block(block).map_err(|e| {
            // What the stream holds is unknown after an error: read it
            // again before the next publish.
            self.prepared = false;
            StreamError::msg(format!(
                "cannot publish block {} to JetStream stream {:?} (subject {}): {e}",
                block.height(),
                self.config.stream,
                self.subject
            ))
        })
    }

    fn on_close(&mut self) -> std::result::Result<(), StreamError> {
        // Every block was acknowledged: nothing is left to flush. Dropping
        // the runtime ends the connection task and any reconnection.
        self.conn = None;
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        Ok(())
    }
}

impl Drop for NatsStreamer {
    fn drop(&mut self) {
        self.conn = None;
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime blocks; never do so inside another one.
            rt.shutdown_background();
        }
    }
}

/// Parses `i/n`: `Some((i, n, i == n))` when valid.
pub(crate) fn parse_part(text: &str) -> Option<(u64, u64, bool)> {
    let (i, n) = text.split_once('/')?;
    let (i, n) = (i.trim().parse::<u64>().ok()?, n.trim().parse::<u64>().ok()?);
    (i >= 1 && i <= n).then_some((i, n, i == n))
}

/// Whether NATS subject pattern `pattern` (with `*` and `>` wildcards)
/// matches `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_parse() {
        assert_eq!(parse_part("1/3"), Some((1, 3, false)));
        assert_eq!(parse_part("3/3"), Some((3, 3, true)));
        assert_eq!(parse_part("0/3"), None);
        assert_eq!(parse_part("4/3"), None);
        assert_eq!(parse_part("x"), None);
    }

    #[test]
    fn subjects_match() {
        assert!(subject_matches("a.blocks", "a.blocks"));
        assert!(subject_matches("a.*", "a.blocks"));
        assert!(subject_matches("a.>", "a.blocks"));
        assert!(subject_matches(">", "a.blocks"));
        assert!(!subject_matches("a", "a.blocks"));
        assert!(!subject_matches("b.blocks", "a.blocks"));
        assert!(!subject_matches("a.blocks.x", "a.blocks"));
    }
}
