//! Reading the blocks back from a stream, and rebuilding the state from
//! them.

use prost::Message as _;
use statestream_core::proto::BlockFrame;
use std::collections::BTreeMap;

use statestream_core::{
    BoxError, Hash, Record, Records, StoreKey, ZERO_HASH, app_hash, chain_store_hash, to_hex,
};

use std::pin::Pin;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::{self, Ordered};
use futures_util::StreamExt as _;
use statestream_core::Shutdown;
use tokio::runtime::Runtime;

use crate::config::NatsStreamerConfig;
use crate::conn::{Connection, block_on, runtime};
use crate::error::{NatsError, Result};
use crate::streamer::{HEADER_HEIGHT, HEADER_PART, parse_part};

/// One block read from the stream, its parts put back together.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StreamBlock {
    /// The block height.
    pub height: u64,
    /// The decoded frame.
    pub frame: BlockFrame,
    /// Stream sequence of its (last) message.
    pub seq: u64,
    /// How many messages it was split into (1 when not split).
    pub parts: u64,
}

/// Reads the blocks of a stream in order, through an ordered consumer
/// (the server pushes the messages in batches, in stream order; the
/// consumer is ephemeral, in memory, and removed by the server when the
/// reader goes away).
///
/// - Split blocks are put back together from parts 1..n of their height,
///   in whatever order the stream holds them (a part the streamer
///   published again after a reconnection comes after the later parts);
///   a block that begins while the previous one still lacks a part is an
///   error naming the missing parts.
/// - A block stored twice (published again after the duplicate window) is
///   returned once: heights at or below the last returned one are skipped
///   and counted in [`duplicates`](StreamReader::duplicates).
/// - A missing height is an error (a lost block), and so is a frame whose
///   records do not match its metadata's length and CRC-32C.
/// - The reader stops at the last message the subject held when it was
///   opened, also inside a split block (its last parts are not published
///   yet).
pub struct StreamReader {
    // Field order matters: the consumer and the connection go before the
    // runtime that drives them.
    messages: Option<Pin<Box<Ordered>>>,
    conn: Connection,
    /// Always `Some` until dropped.
    runtime: Option<Runtime>,
    stream: String,
    /// Sequence of the last message on the subject when opened.
    last_seq: u64,
    assembler: Assembler,
    done: bool,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("url", &self.conn.url())
            .field("stream", &self.stream)
            .field("last_seq", &self.last_seq)
            .field("duplicates", &self.assembler.duplicates)
            .finish()
    }
}

impl StreamReader {
    /// Connects as `config` says (url, credentials, TLS, timeouts) and
    /// reads the blocks on `<subject>.blocks` in `config.stream`, from its
    /// start.
    pub fn open(config: &NatsStreamerConfig) -> Result<StreamReader> {
        let settings = config.settings(None)?;
        let runtime = runtime("reader")?;
        let conn = Connection::open(&runtime, &settings, &Shutdown::new())?;
        let stream = config.stream.clone();
        let subject = config.blocks_subject();
        let (last_seq, messages) = block_on(&runtime, async {
            let Some(last) = conn.last_message(&stream, &subject).await? else {
                return Ok::<_, NatsError>((0, None));
            };
            let s = conn
                .jetstream()
                .get_stream_no_info(&stream)
                .await
                .map_err(|e| conn.request_failed(&format!("stream {stream:?}"), &e))?;
            let consumer = s
                .create_consumer(push::OrderedConfig {
                    deliver_subject: conn.new_inbox(),
                    filter_subject: subject.clone(),
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    conn.request_failed(&format!("creating a consumer on stream {stream:?}"), &e)
                })?;
            let messages = consumer
                .messages()
                .await
                .map_err(|e| conn.request_failed(&format!("reading stream {stream:?}"), &e))?;
            Ok((last.sequence, Some(Box::pin(messages))))
        })?;
        Ok(StreamReader {
            messages,
            assembler: Assembler::new(&stream),
            conn,
            runtime: Some(runtime),
            stream,
            last_seq,
            done: false,
        })
    }

    /// Messages skipped as copies: of a block already returned, or of a
    /// part of a split block already received.
    pub fn duplicates(&self) -> u64 {
        self.assembler.duplicates
    }

    fn next_block(&mut self) -> Result<Option<StreamBlock>> {
        loop {
            if self.assembler.next_seq > self.last_seq {
                return Ok(None);
            }
            let (Some(messages), Some(rt)) = (self.messages.as_mut(), self.runtime.as_ref()) else {
                return Ok(None);
            };
            let timeout = self.conn.request_timeout();
            let next = block_on(rt, async {
                tokio::time::timeout(timeout, messages.next()).await
            });
            let m = match next {
                Err(_) => {
                    return Err(NatsError::Timeout {
                        url: self.conn.url().to_string(),
                        what: format!("the next message of stream {:?}", self.stream),
                        timeout,
                    });
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(self
                        .conn
                        .request_failed(&format!("reading stream {:?}", self.stream), &e));
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
            if let Some(block) = self.assembler.push(raw)? {
                return Ok(Some(block));
            }
        }
    }
}

/// One stored message, as the assembler looks at it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawMessage<'a> {
    pub(crate) seq: u64,
    pub(crate) height: Option<&'a str>,
    pub(crate) part: Option<&'a str>,
    pub(crate) payload: &'a [u8],
}

/// Puts the blocks of a stream back together from its messages, in stream
/// order, checking everything (this is the part of the reader that parses
/// what the server stored, so the fuzz target drives it directly).
#[derive(Debug)]
pub(crate) struct Assembler {
    stream: String,
    /// The smallest sequence the next message may have.
    pub(crate) next_seq: u64,
    last_height: Option<u64>,
    pub(crate) duplicates: u64,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    height: u64,
    parts: u64,
    /// The parts received so far, by number. A part the streamer published
    /// again after a reconnection (one that was lost, or a whole block sent
    /// again) may come after later parts, so they are collected, not
    /// appended.
    have: BTreeMap<u64, Vec<u8>>,
}

impl Pending {
    fn new(height: u64, parts: u64) -> Pending {
        Pending {
            height,
            parts,
            have: BTreeMap::new(),
        }
    }

    /// The part numbers not received yet, for messages.
    fn missing(&self) -> String {
        missing_parts(self.parts, &self.have)
    }
}

/// The first few numbers in 1..=`parts` that `have` lacks, for messages.
pub(crate) fn missing_parts<V>(parts: u64, have: &BTreeMap<u64, V>) -> String {
    let missing: Vec<String> = (1..=parts)
        .filter(|i| !have.contains_key(i))
        .take(8)
        .map(|i| i.to_string())
        .collect();
    missing.join(", ")
}

impl Assembler {
    pub(crate) fn new(stream: &str) -> Assembler {
        Assembler {
            stream: stream.to_string(),
            next_seq: 1,
            last_height: None,
            duplicates: 0,
            pending: None,
        }
    }

    /// An assembler that goes on from sequence `next_seq`, the blocks up
    /// to `last_height` already taken (heights at or below it are
    /// skipped; the next block must be `last_height + 1`).
    pub(crate) fn starting(stream: &str, next_seq: u64, last_height: Option<u64>) -> Assembler {
        Assembler {
            next_seq: next_seq.max(1),
            last_height,
            ..Assembler::new(stream)
        }
    }

    /// The height of the last block returned (or given to
    /// [`starting`](Assembler::starting)).
    pub(crate) fn last_height(&self) -> Option<u64> {
        self.last_height
    }

    fn bad(&self, seq: u64, reason: String) -> NatsError {
        NatsError::BadMessage {
            stream: self.stream.clone(),
            seq,
            reason,
        }
    }

    /// The error for block `height` beginning while a split block is
    /// incomplete: that block has a hole the streamer never filled.
    fn incomplete(&self, seq: u64, height: u64, p: &Pending) -> NatsError {
        self.bad(
            seq,
            format!(
                "block {} is incomplete (part {} of {} missing) where block {height} begins",
                p.height,
                p.missing(),
                p.parts
            ),
        )
    }

    /// Takes the next message; a block when it completes one.
    pub(crate) fn push(&mut self, m: RawMessage<'_>) -> Result<Option<StreamBlock>> {
        // Messages come in stream order; anything else is a broken answer,
        // not a reason to read backwards or to overflow.
        if m.seq < self.next_seq {
            return Err(self.bad(
                m.seq,
                format!(
                    "the server returned sequence {} when {} or later was due",
                    m.seq, self.next_seq
                ),
            ));
        }
        self.next_seq = m
            .seq
            .checked_add(1)
            .ok_or_else(|| self.bad(m.seq, "the sequence number is the largest possible".into()))?;
        let height = m
            .height
            .ok_or_else(|| self.bad(m.seq, format!("no {HEADER_HEIGHT} header")))?;
        let height: u64 = height
            .parse()
            .map_err(|_| self.bad(m.seq, format!("bad {HEADER_HEIGHT} header {height:?}")))?;
        if self.last_height.is_some_and(|last| height <= last) {
            self.duplicates += 1;
            return Ok(None);
        }
        let (data, parts) = match m.part {
            None => {
                match self.pending.take() {
                    // The block was published again in one message (the
                    // server's limit grew): the parts seen are superseded.
                    Some(p) if p.height == height => {}
                    Some(p) => return Err(self.incomplete(m.seq, height, &p)),
                    None => {}
                }
                (m.payload.to_vec(), 1)
            }
            Some(text) => {
                let (i, n, _) = parse_part(text)
                    .ok_or_else(|| self.bad(m.seq, format!("bad {HEADER_PART} header {text:?}")))?;
                let mut p = match self.pending.take() {
                    Some(p) if p.height == height && p.parts == n => p,
                    // The block was split again differently (the server's
                    // limit changed between attempts): start over.
                    Some(p) if p.height == height => Pending::new(height, n),
                    Some(p) => return Err(self.incomplete(m.seq, height, &p)),
                    None => Pending::new(height, n),
                };
                match p.have.get(&i) {
                    Some(stored) if stored.as_slice() == m.payload => {
                        // A part stored twice (published again after the
                        // duplicate window).
                        self.duplicates += 1;
                        self.pending = Some(p);
                        return Ok(None);
                    }
                    Some(_) if i == 1 => {
                        // A first part with other bytes: the block was
                        // published again from its start, split otherwise.
                        p = Pending::new(height, n);
                    }
                    Some(_) => {
                        return Err(self.bad(
                            m.seq,
                            format!(
                                "part {i}/{n} of block {height} is stored twice with different content"
                            ),
                        ));
                    }
                    None => {}
                }
                p.have.insert(i, m.payload.to_vec());
                if (p.have.len() as u64) < n {
                    self.pending = Some(p);
                    return Ok(None);
                }
                let mut data = Vec::with_capacity(p.have.values().map(Vec::len).sum());
                for part in p.have.values() {
                    data.extend_from_slice(part);
                }
                (data, n)
            }
        };
        if let Some(last) = self.last_height
            && height != last + 1
        {
            return Err(self.bad(
                m.seq,
                format!(
                    "block {} is missing: the next block in the stream is {height}",
                    last + 1
                ),
            ));
        }
        let frame = check_block(&self.stream, m.seq, height, &data)?;
        self.last_height = Some(height);
        Ok(Some(StreamBlock {
            height,
            frame,
            seq: m.seq,
            parts,
        }))
    }
}

/// Decodes the frame of block `height` (its parts put together) and checks
/// it: the height it names, and its records against the metadata's length
/// and CRC-32C. `seq` is the sequence of its (last) message, for errors.
pub(crate) fn check_block(stream: &str, seq: u64, height: u64, data: &[u8]) -> Result<BlockFrame> {
    let bad = |reason: String| NatsError::BadMessage {
        stream: stream.to_string(),
        seq,
        reason,
    };
    let frame = BlockFrame::decode(data)
        .map_err(|e| bad(format!("block {height}: frame does not decode: {e}")))?;
    if frame.height != height {
        return Err(bad(format!(
            "header says block {height}, the frame says {}",
            frame.height
        )));
    }
    let meta = frame
        .meta
        .as_ref()
        .ok_or_else(|| bad(format!("block {height}: the frame has no metadata")))?;
    if meta.data_length != frame.records.len() as u64 {
        return Err(bad(format!(
            "block {height}: records are {} bytes, the metadata says {}",
            frame.records.len(),
            meta.data_length
        )));
    }
    let crc = statestream_core::crc32c_append(0, &frame.records);
    if crc != meta.data_crc32c {
        return Err(bad(format!(
            "block {height}: records have CRC-32C {crc:08x}, the metadata says {:08x}",
            meta.data_crc32c
        )));
    }
    Ok(frame)
}

impl Iterator for StreamReader {
    type Item = Result<StreamBlock>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_block() {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.messages = None;
        // Never block in drop (the caller may be on a runtime of its own).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Where [`replay_stream_into`] puts the state it rebuilds: a store of
/// the application's (a `MultiStore`, a database), or the in-memory
/// [`ReplayState`] that [`replay_stream`] uses. Called in stream order;
/// the records of a block come in the canonical order (store name, then
/// key), and [`end_block`](ReplaySink::end_block) follows them once they
/// have all been applied and the block's hashes checked.
pub trait ReplaySink {
    /// Applies one record of block `height`: a set, or a delete when
    /// `record.value` is `None`.
    fn apply(&mut self, height: u64, record: &Record<'_>) -> std::result::Result<(), BoxError>;

    /// Block `height` is complete (a store commits it here). Default: nothing.
    fn end_block(&mut self, height: u64) -> std::result::Result<(), BoxError> {
        let _ = height;
        Ok(())
    }
}

/// The state [`replay_stream`] rebuilds: every store's keys and values,
/// in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayState {
    stores: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl ReplayState {
    /// The value of `key` in `store`.
    pub fn get(&self, store: &str, key: &[u8]) -> Option<&[u8]> {
        self.stores.get(store)?.get(key).map(Vec::as_slice)
    }

    /// Every key and value of `store`, in key order.
    pub fn iter(&self, store: &str) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.stores
            .get(store)
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    }
}

impl ReplaySink for ReplayState {
    fn apply(&mut self, _height: u64, r: &Record<'_>) -> std::result::Result<(), BoxError> {
        match r.value {
            Some(v) => {
                self.stores
                    .entry(r.store.to_string())
                    .or_default()
                    .insert(r.key.to_vec(), v.to_vec());
            }
            None => {
                if let Some(m) = self.stores.get_mut(r.store) {
                    m.remove(r.key);
                }
            }
        }
        Ok(())
    }
}

/// The result of [`replay_stream`] and [`replay_stream_into`].
#[non_exhaustive]
pub struct Replay<S = ReplayState> {
    /// The rebuilt state.
    pub state: S,
    /// The last height replayed.
    pub height: u64,
    /// The app hash after it, as the node committed it (checked against
    /// the records when every store is streamed).
    pub app_hash: Hash,
    /// Blocks replayed.
    pub blocks: u64,
    /// Records applied.
    pub records: u64,
    /// Messages skipped as duplicates.
    pub duplicates: u64,
}

impl Replay<ReplayState> {
    /// The value of `key` in `store` after the last block.
    pub fn get(&self, store: &str, key: &[u8]) -> Option<&[u8]> {
        self.state.get(store, key)
    }
}

impl<S> std::fmt::Debug for Replay<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("height", &self.height)
            .field("app_hash", &to_hex(&self.app_hash))
            .field("blocks", &self.blocks)
            .field("records", &self.records)
            .field("duplicates", &self.duplicates)
            .finish()
    }
}

/// Rebuilds the state from the blocks of `config.stream` (published on
/// `<config.subject>.blocks`, read with [`StreamReader`]) in memory.
/// See [`replay_stream_into`] for the checks.
pub fn replay_stream(config: &NatsStreamerConfig) -> Result<Replay> {
    replay_stream_into(config, ReplayState::default())
}

/// Rebuilds the state from the blocks of `config.stream` into `sink`,
/// block by block.
///
/// The stream must start at height 1. Each block's records are chained
/// into the hash of their store (`statestream_core::chain_store_hash`, as
/// the node's store does at commit); after each block the hash of every
/// streamed store must equal the node's, and when every store is streamed
/// the app hash too. So the returned app hash is the node's at
/// [`Replay::height`], provably, and the sink saw exactly the node's
/// changes.
pub fn replay_stream_into<S: ReplaySink>(
    config: &NatsStreamerConfig,
    sink: S,
) -> Result<Replay<S>> {
    let reader = StreamReader::open(config)?;
    replay_blocks(&config.stream, &config.subject, reader, sink)
}

/// The replay proper, on any source of blocks.
fn replay_blocks<S: ReplaySink>(
    stream: &str,
    subject: &str,
    mut reader: StreamReader,
    mut sink: S,
) -> Result<Replay<S>> {
    let fail = |height: u64, reason: String| NatsError::Replay {
        stream: stream.to_string(),
        height,
        reason,
    };
    // Every store's hash as the stream has chained it, by name.
    let mut hashes: Option<BTreeMap<String, Hash>> = None;
    let (mut records, mut blocks, mut last) = (0u64, 0u64, None::<(u64, Hash)>);
    for block in &mut reader {
        let block = block?;
        let height = block.height;
        let meta = block
            .frame
            .meta
            .as_ref()
            .ok_or_else(|| fail(height, "the frame has no metadata".into()))?;
        let hashes = match &mut hashes {
            Some(h) => h,
            None => {
                if height != 1 {
                    return Err(fail(
                        height,
                        format!(
                            "the stream starts at block {height}; rebuilding the state needs every block from 1"
                        ),
                    ));
                }
                let names = meta
                    .store_hashes
                    .iter()
                    .map(|h| StoreKey::new(&h.store_key).map(|k| (k.name().to_string(), ZERO_HASH)))
                    .collect::<std::result::Result<BTreeMap<_, _>, _>>()?;
                if names.is_empty() {
                    return Err(fail(height, "the block names no store".into()));
                }
                hashes.insert(names)
            }
        };
        // Each store's records are one run of the block's records: chain
        // them, and hand every record to the sink.
        let mut runs: BTreeMap<&str, &[u8]> = BTreeMap::new();
        let buf = block.frame.records.as_slice();
        let mut it = Records::new(buf);
        let (mut start, mut current) = (0usize, None::<&str>);
        loop {
            let before = it.offset();
            let Some(r) = it.next() else { break };
            let r = r?;
            if !hashes.contains_key(r.store) {
                return Err(fail(
                    height,
                    format!("record of store {:?}, which block 1 does not name", r.store),
                ));
            }
            if current != Some(r.store) {
                if let Some(c) = current {
                    runs.insert(c, &buf[start..before]);
                }
                if runs.contains_key(r.store) {
                    return Err(fail(
                        height,
                        format!("the records of store {:?} are not in one run", r.store),
                    ));
                }
                (start, current) = (before, Some(r.store));
            }
            sink.apply(height, &r)
                .map_err(|e| NatsError::Sink { height, source: e })?;
            records += 1;
        }
        if let Some(c) = current {
            runs.insert(c, &buf[start..it.offset()]);
        }
        for (name, hash) in hashes.iter_mut() {
            *hash = chain_store_hash(hash, runs.get(name.as_str()).copied().unwrap_or(&[]));
        }
        for s in &meta.streamed_stores {
            let Some(got) = hashes.get(s) else {
                return Err(fail(
                    height,
                    format!("streamed store {s:?} is not among the stores of block 1"),
                ));
            };
            let want = meta.store_hashes.iter().find(|h| &h.store_key == s);
            if let Some(want) = want
                && got[..] != want.hash[..]
            {
                return Err(fail(
                    height,
                    format!(
                        "store {s} has hash {} after the block, the node had {}",
                        to_hex(got),
                        to_hex(&want.hash)
                    ),
                ));
            }
        }
        let unfiltered = meta.streamed_stores.len() == meta.store_hashes.len();
        let computed = app_hash(hashes.iter().map(|(n, h)| (n.as_str(), h)));
        let node = match &meta.commit {
            Some(c) => Hash::try_from(c.app_hash.as_slice()).ok(),
            None => None,
        };
        if unfiltered
            && let Some(node) = node
            && computed != node
        {
            return Err(fail(
                height,
                format!(
                    "the app hash is {} after the block, the node had {}",
                    to_hex(&computed),
                    to_hex(&node)
                ),
            ));
        }
        sink.end_block(height)
            .map_err(|e| NatsError::Sink { height, source: e })?;
        last = Some((height, node.unwrap_or(computed)));
        blocks += 1;
    }
    let duplicates = reader.duplicates();
    let Some((height, app_hash)) = last else {
        return Err(fail(
            0,
            format!("the stream holds no block on {subject}.blocks"),
        ));
    };
    Ok(Replay {
        state: sink,
        height,
        app_hash,
        blocks,
        records,
        duplicates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(seq: u64) -> RawMessage<'static> {
        RawMessage {
            seq,
            height: Some("1"),
            part: None,
            payload: b"",
        }
    }

    #[test]
    fn replay_sequence_going_backwards_is_an_error() {
        let mut a = Assembler::new("s");
        let err = a.push(raw(0)).unwrap_err().to_string();
        assert!(err.contains("returned sequence 0 when 1 or later"), "{err}");
    }

    #[test]
    fn replay_largest_sequence_does_not_overflow() {
        let mut a = Assembler::new("s");
        let err = a.push(raw(u64::MAX)).unwrap_err().to_string();
        assert!(err.contains("largest possible"), "{err}");
    }

    /// A valid frame of block `height` without records.
    fn frame(height: u64) -> Vec<u8> {
        BlockFrame {
            height,
            meta: Some(statestream_core::proto::BlockMetadata {
                height,
                ..Default::default()
            }),
            records: Vec::new(),
        }
        .encode_to_vec()
    }

    fn part<'a>(seq: u64, height: &'a str, part: &'a str, payload: &'a [u8]) -> RawMessage<'a> {
        RawMessage {
            seq,
            height: Some(height),
            part: Some(part),
            payload,
        }
    }

    #[test]
    fn replay_part_published_again_after_later_parts_completes_the_block() {
        let data = frame(1);
        let (a, rest) = data.split_at(data.len() / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        let mut asm = Assembler::new("s");
        assert!(asm.push(part(1, "1", "1/3", a)).unwrap().is_none());
        assert!(asm.push(part(3, "1", "3/3", c)).unwrap().is_none());
        let block = asm.push(part(7, "1", "2/3", b)).unwrap().expect("block 1");
        assert_eq!((block.height, block.parts, block.seq), (1, 3, 7));
        // A copy of a part stored again is skipped.
        assert!(asm.push(part(8, "1", "3/3", c)).unwrap().is_none());
        assert_eq!(asm.duplicates, 1);
    }

    #[test]
    fn replay_block_after_an_incomplete_one_names_the_missing_part() {
        let mut asm = Assembler::new("s");
        assert!(asm.push(part(1, "1", "1/3", b"a")).unwrap().is_none());
        assert!(asm.push(part(3, "1", "3/3", b"c")).unwrap().is_none());
        let next = frame(2);
        let err = asm
            .push(RawMessage {
                seq: 4,
                height: Some("2"),
                part: None,
                payload: &next,
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("block 1 is incomplete (part 2 of 3 missing) where block 2 begins"),
            "{err}"
        );
    }

    #[test]
    fn replay_part_without_its_first_part_is_an_error() {
        // Parts may come in any order (a lost one is published again
        // later), so the error comes when the next block begins.
        let mut a = Assembler::new("s");
        let m = RawMessage {
            part: Some("2/3"),
            ..raw(1)
        };
        assert!(a.push(m).unwrap().is_none());
        let next = frame(2);
        let err = a
            .push(RawMessage {
                seq: 2,
                height: Some("2"),
                part: None,
                payload: &next,
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("block 1 is incomplete (part 1, 3 of 3 missing)"),
            "{err}"
        );
    }
}
