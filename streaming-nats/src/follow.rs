//! Following a stream live from a given height: the block source of a
//! relay whose upstream is JetStream.

use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::{self, Ordered};
use async_nats::jetstream::message::StreamMessage;
use futures_util::StreamExt as _;
use statestream_core::Shutdown;
use tokio::runtime::Runtime;
use tracing::{debug, warn};

use crate::config::NatsStreamerConfig;
use crate::conn::{Connection, block_on, runtime};
use crate::error::{NatsError, Result};
use crate::replay::{Assembler, RawMessage, StreamBlock};
use crate::streamer::{HEADER_HEIGHT, HEADER_PART};

/// The first wait before the consumer is made again after an error; it
/// doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(20);
const MAX_RETRY: Duration = Duration::from_secs(1);

/// Follows the blocks of a JetStream stream from a given height, live:
/// the blocks the node's `nats` streamer has published and every block it
/// publishes later, in height order, each exactly once.
///
/// - The start is found without reading the stream from its beginning: a
///   binary search over the stream's sequence numbers, one direct get per
///   step, reading only the `Statestream-Height` header.
/// - The blocks come through an ordered consumer (ephemeral, in memory,
///   pushed by the server in batches). Split blocks are put back together
///   and every frame is checked (length and CRC-32C of its records) as
///   [`StreamReader`](crate::StreamReader) does; a block stored twice is
///   returned once.
/// - The connection is re-established in the background when the server
///   goes away (a restart, a failover in a cluster); the consumer is then
///   made again from the sequence after the last message taken, so no
///   height is skipped or returned twice.
/// - A height the stream no longer holds (the stream's limits removed it,
///   or the stream was purged) is [`NatsError::HeightGone`]: the follower
///   must start over from a snapshot.
///
/// The hash chains are not checked here: the caller (a relay) checks them
/// against its own store.
pub struct BlockFollower {
    // Field order matters: the consumer and the connection go before the
    // runtime that drives them.
    consumer: Option<Pin<Box<Ordered>>>,
    conn: Connection,
    /// Always `Some` until dropped.
    runtime: Option<Runtime>,
    stream: String,
    subject: String,
    assembler: Assembler,
    /// When the consumer may be made again after an error.
    retry_at: Option<Instant>,
    retry: Duration,
    last_error: Option<String>,
    /// Consumers fail to be made (logged once until a block comes).
    failing: bool,
    consumers: u64,
    lookups: u64,
}

impl std::fmt::Debug for BlockFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockFollower")
            .field("url", &self.conn.url())
            .field("stream", &self.stream)
            .field("subject", &self.subject)
            .field("next_seq", &self.assembler.next_seq)
            .field("last_height", &self.assembler.last_height())
            .finish()
    }
}

/// The height a message's header names.
fn height_of(stream: &str, m: &StreamMessage) -> Result<u64> {
    let bad = |reason: String| NatsError::BadMessage {
        stream: stream.to_string(),
        seq: m.sequence,
        reason,
    };
    let text = m
        .headers
        .get(HEADER_HEIGHT)
        .ok_or_else(|| bad(format!("no {HEADER_HEIGHT} header")))?
        .as_str();
    text.parse()
        .map_err(|_| bad(format!("bad {HEADER_HEIGHT} header {text:?}")))
}

impl BlockFollower {
    /// Connects as `config` says (url, credentials, TLS, timeouts; paths
    /// relative to `home`) and follows the blocks on `<subject>.blocks` of
    /// `config.stream`, the first returned being block `from` (at least
    /// 1). When the stream does not reach `from` yet, the follower waits
    /// for it. Fails with [`NatsError::HeightGone`] when the stream's
    /// first block is after `from`, and with [`NatsError::NoStream`] when
    /// the stream does not exist.
    pub fn open(
        config: &NatsStreamerConfig,
        home: Option<&Path>,
        from: u64,
    ) -> Result<BlockFollower> {
        let from = from.max(1);
        let settings = config.settings(home)?;
        let runtime = runtime("follower")?;
        let conn = Connection::open(&runtime, &settings, &Shutdown::new())?;
        let stream = config.stream.clone();
        let (subject, start, lookups) = block_on(&runtime, async {
            let Some(info) = conn.stream_info(&stream).await? else {
                return Err(NatsError::NoStream {
                    url: conn.url().to_string(),
                    stream: stream.clone(),
                });
            };
            let subject = blocks_subject_of(&stream, &info.config.subjects, config)?;
            let (start, lookups) =
                start_sequence(&conn, &stream, &subject, info.state.last_seq, from).await?;
            Ok((subject, start, lookups))
        })?;
        debug!(stream = %stream, from, start, "following the stream");
        Ok(BlockFollower {
            consumer: None,
            assembler: Assembler::starting(&stream, start, from.checked_sub(1).filter(|h| *h > 0)),
            conn,
            runtime: Some(runtime),
            stream,
            subject,
            retry_at: None,
            retry: FIRST_RETRY,
            last_error: None,
            failing: false,
            consumers: 0,
            lookups,
        })
    }

    /// The height of the next block [`next`](BlockFollower::next) returns.
    pub fn next_height(&self) -> u64 {
        self.assembler
            .last_height()
            .map_or(1, |h| h.saturating_add(1))
    }

    /// Messages skipped as copies of what was already taken.
    pub fn duplicates(&self) -> u64 {
        self.assembler.duplicates
    }

    /// Whether the connection to the server is up.
    pub fn is_connected(&self) -> bool {
        self.conn.is_connected()
    }

    /// The last error met and recovered from (a lost connection, a failed
    /// request), for status pages; cleared by the next block.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// How many times the consumer was made (1 + the times it was made
    /// again after an error or a reconnection found it gone).
    pub fn consumers(&self) -> u64 {
        self.consumers
    }

    /// How many messages [`open`](BlockFollower::open) read to find where
    /// block `from` starts (a binary search: about log2 of the stream's
    /// length, not the stream).
    pub fn start_lookups(&self) -> u64 {
        self.lookups
    }

    /// The url, without credentials.
    pub fn url(&self) -> &str {
        self.conn.url()
    }

    /// The height of the last block message in the stream (the stream's
    /// head), or `None` when it holds none. One request to the server.
    pub fn head(&self) -> Result<Option<u64>> {
        let rt = self.rt()?;
        let (conn, stream, subject) = (&self.conn, &self.stream, &self.subject);
        block_on(rt, async {
            match conn.last_message(stream, subject).await? {
                Some(m) => Ok(Some(height_of(stream, &m)?)),
                None => Ok(None),
            }
        })
    }

    fn rt(&self) -> Result<&Runtime> {
        self.runtime.as_ref().ok_or(NatsError::ShuttingDown)
    }

    /// The next block, waiting for it at most `wait`: `Ok(None)` when none
    /// came in that time (the stream has nothing newer yet, or the server
    /// is away: see [`is_connected`](BlockFollower::is_connected) and
    /// [`last_error`](BlockFollower::last_error)). Connection troubles
    /// are retried, not returned; an error is final (a height the stream
    /// no longer holds, a broken message).
    pub fn next(&mut self, wait: Duration) -> Result<Option<StreamBlock>> {
        let deadline = Instant::now() + wait;
        loop {
            if self.consumer.is_none() && !self.make_consumer(deadline)? {
                return Ok(None);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let (Some(consumer), Some(rt)) = (self.consumer.as_mut(), self.runtime.as_ref()) else {
                return Ok(None);
            };
            let next = block_on(rt, async {
                tokio::time::timeout(deadline - now, consumer.next()).await
            });
            let m = match next {
                Err(_) => return Ok(None),
                Ok(None) => {
                    self.lost("the consumer's subscription ended".into());
                    continue;
                }
                Ok(Some(Err(e))) => {
                    // The client makes the consumer again by itself after a
                    // missed heartbeat, but from the sequence it last
                    // delivered or, before the first, from the stream's
                    // start: make it here instead, from ours.
                    self.lost(format!("reading stream {:?}: {e}", self.stream));
                    continue;
                }
                Ok(Some(Ok(m))) => m,
            };
            let seq = m
                .info()
                .map_err(|e| {
                    self.conn
                        .request_failed(&format!("reading stream {:?}", self.stream), &e)
                })?
                .stream_sequence;
            if seq < self.assembler.next_seq {
                // A consumer the client made again from the stream's start
                // (see above): a copy of what was taken already.
                self.lost(format!(
                    "the consumer went back to sequence {seq} (after a reconnection)"
                ));
                continue;
            }
            let header = |name: &str| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str())
            };
            let raw = RawMessage {
                seq,
                height: header(HEADER_HEIGHT),
                part: header(HEADER_PART),
                payload: &m.payload,
            };
            let want = self.next_height();
            match self.assembler.push(raw) {
                Ok(Some(block)) if block.height == want => {
                    self.last_error = None;
                    self.failing = false;
                    self.retry = FIRST_RETRY;
                    return Ok(Some(block));
                }
                Ok(Some(block)) => {
                    // Only possible for the very first block: the stream
                    // starts after it (purged while we waited).
                    return Err(self.gone_or(want, block.seq, block.height));
                }
                Ok(None) => {}
                Err(e) => return Err(self.gone_or_err(want, e)),
            }
        }
    }

    /// Drops the consumer after an error; it is made again after a short
    /// wait (doubling while the errors go on).
    fn lost(&mut self, reason: String) {
        debug!(stream = %self.stream, reason = %reason, "NATS follower: making the consumer again");
        self.consumer = None;
        self.last_error = Some(reason);
        self.retry_at = Some(Instant::now() + self.retry);
        self.retry = (self.retry * 2).min(MAX_RETRY);
    }

    /// The error for block `got` where `want` was due: the stream no
    /// longer holds `want`, or (if it does) a broken stream.
    fn gone_or(&self, want: u64, seq: u64, got: u64) -> NatsError {
        self.gone_or_err(
            want,
            NatsError::BadMessage {
                stream: self.stream.clone(),
                seq,
                reason: format!("block {want} is missing: the next block in the stream is {got}"),
            },
        )
    }

    /// `HeightGone` when the stream's first block is now after `want`,
    /// else `err`.
    fn gone_or_err(&self, want: u64, err: NatsError) -> NatsError {
        let Ok(rt) = self.rt() else { return err };
        let (conn, stream, subject) = (&self.conn, &self.stream, &self.subject);
        let first = block_on(rt, async {
            match conn.next_message(stream, 1, subject).await? {
                Some(m) => Ok::<_, NatsError>(Some(height_of(stream, &m)?)),
                None => Ok(None),
            }
        });
        match first {
            Ok(first) if first.is_none_or(|f| f > want) => NatsError::HeightGone {
                stream: self.stream.clone(),
                height: want,
                first,
            },
            _ => err,
        }
    }

    /// Makes the consumer from the next sequence due, unless an earlier
    /// error asks to wait first (then it waits, at most until
    /// `deadline`). `Ok(false)`: no consumer yet (the wait ended, or the
    /// server is away).
    fn make_consumer(&mut self, deadline: Instant) -> Result<bool> {
        if let Some(at) = self.retry_at {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at.min(deadline) - now);
            }
            if at > deadline {
                return Ok(false);
            }
        }
        let start = self.assembler.next_seq;
        let want = self.next_height();
        let rt = self.rt()?;
        let (conn, stream, subject) = (&self.conn, &self.stream, &self.subject);
        let made = block_on(rt, async {
            // The stream's limits may have removed what is due while the
            // server was away.
            let first = conn.next_message(stream, 1, subject).await?;
            if let Some(first) = &first
                && first.sequence > start
                && height_of(stream, first)? > want
            {
                return Err(NatsError::HeightGone {
                    stream: stream.to_string(),
                    height: want,
                    first: Some(height_of(stream, first)?),
                });
            }
            let s = conn
                .jetstream()
                .get_stream_no_info(stream)
                .await
                .map_err(|e| conn.request_failed(&format!("stream {:?}", stream), &e))?;
            let consumer = s
                .create_consumer(push::OrderedConfig {
                    deliver_subject: conn.new_inbox(),
                    filter_subject: subject.to_string(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    conn.request_failed(&format!("creating a consumer on stream {:?}", stream), &e)
                })?;
            consumer
                .messages()
                .await
                .map_err(|e| conn.request_failed(&format!("reading stream {:?}", stream), &e))
        });
        match made {
            Ok(messages) => {
                self.consumer = Some(Box::pin(messages));
                self.consumers += 1;
                self.retry_at = None;
                Ok(true)
            }
            Err(e) if e.is_transient() => {
                if !self.failing {
                    warn!(stream = %self.stream, error = %e, "NATS follower: cannot read the stream; retrying");
                    self.failing = true;
                }
                self.lost(e.to_string());
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// The first and last heights a stream holds, asked when wanted over a
/// connection kept open (a relay polls its upstreams' heads every
/// second). Safe to share between threads.
pub struct StreamHeights {
    conn: Connection,
    /// Always `Some` until dropped.
    runtime: Option<Runtime>,
    stream: String,
    subject: String,
}

impl std::fmt::Debug for StreamHeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHeights")
            .field("url", &self.conn.url())
            .field("stream", &self.stream)
            .field("subject", &self.subject)
            .finish()
    }
}

impl StreamHeights {
    /// Connects as `config` says (paths relative to `home`) and finds the
    /// subject the blocks are on, as [`BlockFollower::open`] does.
    pub fn open(config: &NatsStreamerConfig, home: Option<&Path>) -> Result<StreamHeights> {
        let settings = config.settings(home)?;
        let runtime = runtime("heights")?;
        let conn = Connection::open(&runtime, &settings, &Shutdown::new())?;
        let stream = config.stream.clone();
        let subject = block_on(&runtime, async {
            let Some(info) = conn.stream_info(&stream).await? else {
                return Err(NatsError::NoStream {
                    url: conn.url().to_string(),
                    stream: stream.clone(),
                });
            };
            blocks_subject_of(&stream, &info.config.subjects, config)
        })?;
        Ok(StreamHeights {
            conn,
            runtime: Some(runtime),
            stream,
            subject,
        })
    }

    /// The heights of the stream's first and last block messages (`None`
    /// when it holds none). Two requests to the server.
    pub fn heights(&self) -> Result<(Option<u64>, Option<u64>)> {
        let rt = self.runtime.as_ref().ok_or(NatsError::ShuttingDown)?;
        let (conn, stream, subject) = (&self.conn, &self.stream, &self.subject);
        block_on(rt, async {
            let first = match conn.next_message(stream, 1, subject).await? {
                Some(m) => Some(height_of(stream, &m)?),
                None => None,
            };
            let last = match conn.last_message(stream, subject).await? {
                Some(m) => Some(height_of(stream, &m)?),
                None => None,
            };
            Ok((first, last))
        })
    }
}

impl Drop for StreamHeights {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The subject the blocks are on: `<subject>.blocks` of `config` when the
/// stream captures it, else the one subject of the stream that ends in
/// `.blocks` (a relay's upstream URL need not repeat the node's
/// `subject`).
fn blocks_subject_of(
    stream: &str,
    subjects: &[String],
    config: &NatsStreamerConfig,
) -> Result<String> {
    let want = config.blocks_subject();
    if subjects.iter().any(|s| subject_matches(s, &want)) {
        return Ok(want);
    }
    let mut blocks = subjects
        .iter()
        .filter(|s| s.ends_with(".blocks") && !s.contains(['*', '>']));
    match (blocks.next(), blocks.next()) {
        (Some(one), None) => Ok(one.clone()),
        _ => Err(NatsError::BadAnswer {
            what: format!("stream {stream:?}"),
            reason: format!(
                "it does not capture {want} (its subjects: {}); name the node's subject \
                 (&subject=… in the upstream URL)",
                subjects.join(", ")
            ),
        }),
    }
}

/// Whether the stream subject `pattern` (with `*` and `>` wildcards)
/// captures `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut want = subject.split('.');
    for p in pattern.split('.') {
        match (p, want.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    want.next().is_none()
}

/// The sequence to start reading at so that the first message taken is
/// the first of block `from`.
/// Also returns how many messages it read to find it.
async fn start_sequence(
    conn: &Connection,
    stream: &str,
    subject: &str,
    last_seq: u64,
    from: u64,
) -> Result<(u64, u64)> {
    let Some(first) = conn.next_message(stream, 1, subject).await? else {
        // Nothing on the subject yet: from whatever comes next (a stream
        // emptied by its limits starts after block 1: checked as the
        // blocks come).
        return Ok((last_seq.saturating_add(1), 0));
    };
    let first_height = height_of(stream, &first)?;
    if from < first_height {
        return Err(NatsError::HeightGone {
            stream: stream.to_string(),
            height: from,
            first: Some(first_height),
        });
    }
    let Some(last) = conn.last_message(stream, subject).await? else {
        return Ok((last_seq.saturating_add(1), 1));
    };
    if height_of(stream, &last)? < from {
        return Ok((last.sequence.saturating_add(1), 2));
    }
    // The smallest sequence whose next message on the subject is of
    // block `from` or later. Heights grow with sequences (a block stored
    // again after the duplicate window comes later but is skipped as a
    // copy), so this is the first message of block `from`.
    let (mut lo, mut hi) = (first.sequence, last.sequence);
    let mut read = 2;
    while lo < hi {
        read += 1;
        let mid = lo + (hi - lo) / 2;
        let m = conn
            .next_message(stream, mid, subject)
            .await?
            .ok_or_else(|| NatsError::BadMessage {
                stream: stream.to_string(),
                seq: mid,
                reason: format!("no message at or after {mid} though {hi} was there"),
            })?;
        if height_of(stream, &m)? >= from {
            hi = mid;
        } else {
            lo = m.sequence.saturating_add(1);
        }
    }
    Ok((lo, read))
}

impl Drop for BlockFollower {
    fn drop(&mut self) {
        self.consumer = None;
        // Never block in drop (the caller may be on a runtime of its own).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_subject_wildcards_match() {
        assert!(subject_matches("a.blocks", "a.blocks"));
        assert!(subject_matches("a.*", "a.blocks"));
        assert!(subject_matches(">", "a.blocks"));
        assert!(subject_matches("a.>", "a.blocks"));
        assert!(!subject_matches("a.>", "a"));
        assert!(!subject_matches("a", "a.blocks"));
        assert!(!subject_matches("a.blocks.x", "a.blocks"));
        assert!(!subject_matches("b.*", "a.blocks"));
    }

    #[test]
    fn follow_subject_found_among_the_streams() {
        let c = NatsStreamerConfig::default();
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            blocks_subject_of("x", &s(&["statestream.>"]), &c).unwrap(),
            "statestream.blocks"
        );
        assert_eq!(
            blocks_subject_of("x", &s(&["chain.blocks", "other"]), &c).unwrap(),
            "chain.blocks"
        );
        let err = blocks_subject_of("x", &s(&["a.blocks", "b.blocks"]), &c).unwrap_err();
        assert!(err.to_string().contains("&subject="), "{err}");
    }
}
