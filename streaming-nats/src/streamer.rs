//! The streamer: one JetStream message per block (or several parts when a
//! block is bigger than the server's `max_payload`), acknowledged before
//! `on_block` returns.

use std::collections::{BTreeMap, BTreeSet};
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
use crate::replay::{check_block, missing_parts};

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

/// How many messages before the last one preparing looks at, besides two
/// per part, to find every part of a split last block (messages deleted
/// from the stream, parts stored twice); past that the block counts as
/// incomplete and its missing parts are published again, which is always
/// safe.
const PART_SEARCH_SLACK: u64 = 16;

/// The most messages preparing looks at for the parts of the last block,
/// whatever part count its header claims.
const PART_SEARCH_MAX: u64 = 10_000;

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
/// stream's duplicate window. A split last block counts only when every
/// part is there and they decode as the block; otherwise its missing parts
/// are published before anything later. A retry sends the messages of the
/// first attempt unchanged (same bytes, same split, same ids).
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
    /// The parts of the block after `last_in_stream` that the stream
    /// already holds, when preparing found that block split and incomplete.
    stored: Option<StoredParts>,
    /// The messages of a block whose publish failed, kept so that every
    /// retry sends exactly the same bytes under the same message ids
    /// (JetStream then deduplicates what the failed attempt stored).
    outgoing: Option<Outgoing>,
    frame: Vec<u8>,
}

/// A block's messages, built once per block.
#[derive(Debug)]
struct Outgoing {
    height: u64,
    /// The encoded frame the parts are slices of.
    frame: bytes::Bytes,
    /// In part order (one message when the block is not split).
    messages: Vec<OutMessage>,
}

#[derive(Debug)]
struct OutMessage {
    /// `Nats-Msg-Id`.
    id: String,
    /// `(i, n)` of `Statestream-Part`; `None` when not split.
    part: Option<(u64, u64)>,
    payload: bytes::Bytes,
}

/// What the stream holds of a split block: its parts by number, as found
/// from its last message backwards.
#[derive(Debug)]
struct StoredParts {
    height: u64,
    parts: u64,
    have: BTreeMap<u64, bytes::Bytes>,
    /// The sequence of the stream's last message when the parts were read.
    last_seq: u64,
}

impl StoredParts {
    /// The part numbers missing, for messages.
    fn missing(&self) -> String {
        missing_parts(self.parts, &self.have)
    }
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
            stored: None,
            outgoing: None,
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
        let (max_msg, last, stored) = block_on(rt, async {
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
            let stored = match &last {
                Some(m) => stored_parts(conn, &stream, &subject, m).await?,
                None => None,
            };
            Ok::<_, NatsError>((max_msg, last, stored))
        })?;
        let (last_in_stream, stored) = match (last, stored) {
            (None, _) => (0, None),
            (Some(m), None) => {
                let height = m
                    .headers
                    .get(HEADER_HEIGHT)
                    .and_then(|h| h.as_str().parse::<u64>().ok());
                (height.unwrap_or(0), None)
            }
            (Some(_), Some(stored)) => {
                let whole = stored.have.len() as u64 == stored.parts && {
                    let mut data = Vec::with_capacity(stored.have.values().map(|p| p.len()).sum());
                    for p in stored.have.values() {
                        data.extend_from_slice(p);
                    }
                    check_block(&stream, 0, stored.height, &data).is_ok()
                };
                if whole {
                    (stored.height, None)
                } else {
                    // The last block is only partly there: publish what is
                    // missing before anything after it.
                    warn!(streamer = %self.name, stream = %stream, height = stored.height,
                        parts = stored.parts, missing = %stored.missing(),
                        "the stream's last block lacks parts; publishing them again");
                    (stored.height.saturating_sub(1), Some(stored))
                }
            }
        };
        debug!(streamer = %self.name, server = %conn.url(), last_in_stream,
            max_payload = conn.max_payload(), "ready to publish to JetStream");
        self.stream_max_msg = max_msg;
        self.last_in_stream = last_in_stream;
        self.stored = stored;
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
            self.outgoing = None;
            return Ok(());
        }
        if let Some(stored) = &self.stored
            && stored.height < height
        {
            warn!(streamer = %self.name, height, incomplete = stored.height,
                missing = %stored.missing(),
                "publishing after a block the stream holds only in part, which this node no longer delivers");
        }
        // A block whose publish failed before is sent again as it was.
        let out = match self.outgoing.take() {
            Some(out) if out.height == height => out,
            _ => {
                block.encode_frame(&mut self.frame);
                let frame = bytes::Bytes::from(std::mem::take(&mut self.frame));
                self.split(height, frame)?
            }
        };
        let result = match self.publish(&out) {
            Ok(()) => Ok(()),
            // The connection broke under the publish (a server restart):
            // wait for the client to reconnect, then publish the same
            // messages again once. Safe: the stream is read again first,
            // and JetStream deduplicates what the first attempt stored.
            Err(e) if self.conn.as_ref().is_some_and(|c| !c.is_connected()) => {
                debug!(streamer = %self.name, height, error = %e, "waiting for the reconnection");
                self.prepared = false;
                let retried = self
                    .conn
                    .as_ref()
                    .map_or(Ok(()), |conn| conn.wait_connected(&self.shutdown))
                    .and_then(|()| self.prepare());
                match retried {
                    Ok(()) if height <= self.last_in_stream => Ok(()),
                    Ok(()) => self.publish(&out),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.last_in_stream = self.last_in_stream.max(height);
                self.stored = None;
                // Keep the buffer for the next block when nothing else
                // holds it.
                let Outgoing {
                    frame, messages, ..
                } = out;
                drop(messages);
                if let Ok(buf) = frame.try_into_mut() {
                    self.frame = buf.into();
                }
                Ok(())
            }
            Err(e) => {
                self.outgoing = Some(out);
                Err(e)
            }
        }
    }

    /// The largest message the server and the stream accept.
    fn max_message(&self) -> Result<usize> {
        let (_, conn) = self.connection()?;
        Ok(match self.stream_max_msg {
            Some(m) => m.min(conn.max_payload()),
            None => conn.max_payload(),
        })
    }

    /// Block `height`'s messages: one, or parts that fit the largest
    /// message. When the stream already holds some parts of this block,
    /// the split is theirs (the server's limit may have changed since),
    /// so that the parts published again are the missing pieces of the
    /// same frame.
    fn split(&self, height: u64, frame: bytes::Bytes) -> Result<Outgoing> {
        let stream = &self.config.stream;
        let max = self.max_message()?;
        let stored = self.stored.as_ref().filter(|s| s.height == height);
        let height_text = height.to_string();
        let single_id = format!("{stream}-{height}");
        let single_len = frame.len()
            + headers_len(&[
                (HEADER_MSG_ID, &single_id),
                (HEADER_HEIGHT, &height_text),
                (HEADER_EXPECTED_STREAM, stream),
            ]);
        if stored.is_none() && single_len <= max {
            return Ok(Outgoing {
                height,
                messages: vec![OutMessage {
                    id: single_id,
                    part: None,
                    payload: frame.clone(),
                }],
                frame,
            });
        }
        let chunk = match stored {
            Some(stored) => stored_chunk(stored, frame.len()).ok_or_else(|| {
                NatsError::StoredPartsDiffer {
                    stream: stream.clone(),
                    height,
                    reason: format!(
                        "their sizes do not split a frame of {} bytes into {} parts",
                        frame.len(),
                        stored.parts
                    ),
                }
            })?,
            None => max
                .checked_sub(HEADER_ROOM + 2 * stream.len())
                .filter(|&c| c >= 1024)
                .ok_or_else(|| NatsError::Unsupported {
                    url: self.connection().map(|(_, c)| c.url().to_string()).unwrap_or_default(),
                    message: format!(
                        "the largest message the server and the stream accept ({max} bytes) is too small to split blocks into"
                    ),
                })?,
        };
        let parts = frame.len().div_ceil(chunk) as u64;
        let mut messages = Vec::new();
        for i in 1..=parts {
            let start = (i as usize - 1) * chunk;
            let end = (start + chunk).min(frame.len());
            messages.push(OutMessage {
                id: format!("{stream}-{height}-{i}"),
                part: Some((i, parts)),
                payload: frame.slice(start..end),
            });
        }
        debug!(streamer = %self.name, height, parts, bytes = frame.len(), "publishing a split block");
        Ok(Outgoing {
            height,
            frame,
            messages,
        })
    }

    /// Publishes the messages of `out` that the stream does not hold yet
    /// and waits for every acknowledgement.
    fn publish(&self, out: &Outgoing) -> Result<()> {
        let height = out.height;
        let stream = self.config.stream.clone();
        let (rt, conn) = self.connection()?;
        // Parts the stream holds (found when preparing) must be the node's
        // own bytes, and are not sent again.
        let held: BTreeSet<u64> = match &self.stored {
            Some(s) if s.height == height => {
                for (i, held) in &s.have {
                    let same = out
                        .messages
                        .get(*i as usize - 1)
                        .is_some_and(|m| m.part == Some((*i, s.parts)) && m.payload == held);
                    if !same {
                        return Err(NatsError::StoredPartsDiffer {
                            stream: stream.clone(),
                            height,
                            reason: format!("part {i}/{} holds other bytes", s.parts),
                        });
                    }
                }
                s.have.keys().copied().collect()
            }
            _ => BTreeSet::new(),
        };
        let to_send: Vec<&OutMessage> = out
            .messages
            .iter()
            .filter(|m| !m.part.is_some_and(|(i, _)| held.contains(&i)))
            .collect();
        if !held.is_empty() {
            info!(streamer = %self.name, height, parts = to_send.len(),
                "publishing the parts of the block that the stream lacks");
        }
        let acks = self.send(rt, conn, height, to_send.iter().map(|m| (*m, m.id.clone())))?;
        if let Some(s) = self.stored.as_ref().filter(|s| s.height == height) {
            // A missing part acknowledged as a duplicate: the server saw
            // its message id within the duplicate window but the stream
            // does not hold it (it was deleted). Publish it under an id of
            // its own, derived from the stream's state when the hole was
            // found, so that a retry of this publish is deduplicated too.
            let again: Vec<(&OutMessage, String)> = to_send
                .iter()
                .zip(&acks)
                .filter(|(_, ack)| ack.duplicate)
                .map(|(m, _)| (*m, format!("{}-again-{}", m.id, s.last_seq)))
                .collect();
            if !again.is_empty() {
                warn!(streamer = %self.name, height, parts = again.len(),
                    "JetStream took missing parts for duplicates; publishing them under new ids");
                self.send(rt, conn, height, again.into_iter())?;
            }
        } else if acks.iter().all(|a| a.duplicate) {
            debug!(streamer = %self.name, height, "JetStream already had this block (duplicate)");
        }
        Ok(())
    }

    /// Sends `messages` (each with its `Nats-Msg-Id`) and waits for every
    /// acknowledgement, each naming the configured stream.
    fn send<'a>(
        &self,
        rt: &Runtime,
        conn: &Connection,
        height: u64,
        messages: impl Iterator<Item = (&'a OutMessage, String)>,
    ) -> Result<Vec<async_nats::jetstream::publish::PublishAck>> {
        let stream = self.config.stream.clone();
        let subject = async_nats::Subject::from(self.subject.as_str());
        let height_text = height.to_string();
        let messages: Vec<PublishMessage> = messages
            .map(|(m, id)| {
                let b = PublishMessage::build()
                    .payload(m.payload.clone())
                    .message_id(id)
                    .expected_stream(&stream)
                    .header(HEADER_HEIGHT, height_text.as_str());
                match m.part {
                    Some((i, n)) => b.header(HEADER_PART, format!("{i}/{n}").as_str()),
                    None => b,
                }
            })
            .collect();
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
        Ok(acks)
    }
}

/// The parts of the split block whose last stored message is `last`, by
/// number, found from `last` backwards; `None` when `last` is not a part
/// of a split block.
async fn stored_parts(
    conn: &Connection,
    stream: &str,
    subject: &str,
    last: &async_nats::jetstream::message::StreamMessage,
) -> Result<Option<StoredParts>> {
    let header = |m: &async_nats::jetstream::message::StreamMessage, name: &str| {
        m.headers.get(name).map(|v| v.as_str().to_string())
    };
    let Some(height) = header(last, HEADER_HEIGHT).and_then(|h| h.parse::<u64>().ok()) else {
        return Ok(None);
    };
    let Some((i, parts, _)) = header(last, HEADER_PART).and_then(|p| parse_part(&p)) else {
        return Ok(None);
    };
    let mut have = BTreeMap::from([(i, last.payload.clone())]);
    let mut seq = last.sequence;
    let mut budget = parts
        .saturating_mul(2)
        .saturating_add(PART_SEARCH_SLACK)
        .min(PART_SEARCH_MAX);
    while (have.len() as u64) < parts && seq > 1 && budget > 0 {
        seq -= 1;
        budget -= 1;
        let Some(m) = conn.message_at(stream, seq).await? else {
            continue;
        };
        if m.subject.as_str() != subject {
            continue;
        }
        let h = header(&m, HEADER_HEIGHT).and_then(|h| h.parse::<u64>().ok());
        let part = header(&m, HEADER_PART).and_then(|p| parse_part(&p));
        match (h, part) {
            // The latest copy of a part wins (found first, going back).
            (Some(h), Some((i, n, _))) if h == height && n == parts => {
                have.entry(i).or_insert(m.payload);
            }
            // An earlier block, or an earlier attempt at this one split
            // otherwise: the parts of this split all come after it.
            _ => break,
        }
    }
    Ok(Some(StoredParts {
        height,
        parts,
        have,
        last_seq: last.sequence,
    }))
}

/// The part size that split a frame of `len` bytes into the stored parts:
/// any part but the last is that size, the last one holds the rest.
fn stored_chunk(stored: &StoredParts, len: usize) -> Option<usize> {
    let n = usize::try_from(stored.parts).ok()?;
    if n < 2 {
        return None;
    }
    let (i, part) = stored.have.iter().next()?;
    let chunk = if *i < stored.parts {
        part.len()
    } else {
        let rest = len.checked_sub(part.len())?;
        if rest % (n - 1) != 0 {
            return None;
        }
        rest / (n - 1)
    };
    (chunk > 0 && len.div_ceil(chunk) == n).then_some(chunk)
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
    fn stored_chunk_is_found_from_any_part() {
        let stored = |i: u64, len: usize| StoredParts {
            height: 1,
            parts: 3,
            have: BTreeMap::from([(i, bytes::Bytes::from(vec![0u8; len]))]),
            last_seq: 9,
        };
        // A frame of 2500 bytes in parts of 1000: 1000, 1000, 500.
        assert_eq!(stored_chunk(&stored(1, 1000), 2500), Some(1000));
        assert_eq!(stored_chunk(&stored(3, 500), 2500), Some(1000));
        // Sizes that do not split this frame into three parts.
        assert_eq!(stored_chunk(&stored(3, 501), 2500), None);
        assert_eq!(stored_chunk(&stored(1, 2000), 2500), None);
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
