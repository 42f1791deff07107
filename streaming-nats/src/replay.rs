//! Reading the blocks back from a stream, and rebuilding the state from
//! them.

use prost::Message as _;
use statestream_core::proto::BlockFrame;
use statestream_core::{Hash, Records, StoreKey, to_hex};
use statestream_store::{KvStore, MultiStore};

use crate::client::Client;
use crate::error::{NatsError, Result};
use crate::jetstream::StoredMessage;
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

/// Reads the blocks of a stream in order, with `$JS.API.STREAM.MSG.GET`
/// (no consumer is created, nothing is left on the server).
///
/// - Split blocks are put back together.
/// - A block stored twice (published again after the duplicate window) is
///   returned once: heights at or below the last returned one are skipped
///   and counted in [`duplicates`](StreamReader::duplicates).
/// - A missing height is an error (a lost block), and so is a frame whose
///   records do not match its metadata's length and CRC-32C.
/// - The end of the stream ends the iteration, also inside a split block
///   (its last parts are not published yet).
#[derive(Debug)]
pub struct StreamReader<'a> {
    client: &'a mut Client,
    stream: String,
    subject: String,
    next_seq: u64,
    last_height: Option<u64>,
    duplicates: u64,
    done: bool,
}

struct Pending {
    height: u64,
    parts: u64,
    next_part: u64,
    data: Vec<u8>,
}

impl<'a> StreamReader<'a> {
    /// Reads the blocks on `<subject>.blocks` in `stream`, from its start.
    pub fn new(client: &'a mut Client, stream: &str, subject: &str) -> StreamReader<'a> {
        StreamReader {
            client,
            stream: stream.to_string(),
            subject: crate::config::blocks_subject(subject),
            next_seq: 1,
            last_height: None,
            duplicates: 0,
            done: false,
        }
    }

    /// Messages skipped because their block was already returned.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    fn bad(&self, seq: u64, reason: String) -> NatsError {
        NatsError::BadMessage {
            stream: self.stream.clone(),
            seq,
            reason,
        }
    }

    fn next_message(&mut self) -> Result<Option<StoredMessage>> {
        let m = self
            .client
            .get_message(&self.stream, self.next_seq, Some(&self.subject))?;
        if let Some(m) = &m {
            // The server answers with the first message at or after the
            // sequence asked for; anything else is a broken answer, not a
            // reason to read backwards or to overflow.
            if m.seq < self.next_seq {
                return Err(self.bad(
                    m.seq,
                    format!(
                        "the server returned sequence {} when asked for {} or later",
                        m.seq, self.next_seq
                    ),
                ));
            }
            self.next_seq = m.seq.checked_add(1).ok_or_else(|| {
                self.bad(m.seq, "the sequence number is the largest possible".into())
            })?;
        }
        Ok(m)
    }

    fn next_block(&mut self) -> Result<Option<StreamBlock>> {
        let mut pending: Option<Pending> = None;
        loop {
            let Some(m) = self.next_message()? else {
                return Ok(None);
            };
            let height = m
                .header(HEADER_HEIGHT)
                .ok_or_else(|| self.bad(m.seq, format!("no {HEADER_HEIGHT} header")))?;
            let height: u64 = height
                .parse()
                .map_err(|_| self.bad(m.seq, format!("bad {HEADER_HEIGHT} header {height:?}")))?;
            if self.last_height.is_some_and(|last| height <= last) {
                self.duplicates += 1;
                continue;
            }
            let (data, parts) = match m.header(HEADER_PART) {
                None => {
                    if let Some(p) = &pending {
                        return Err(self.bad(
                            m.seq,
                            format!(
                                "block {height} follows part {} of {} of block {}",
                                p.next_part - 1,
                                p.parts,
                                p.height
                            ),
                        ));
                    }
                    (m.payload, 1)
                }
                Some(text) => {
                    let (i, n, _) = parse_part(text).ok_or_else(|| {
                        self.bad(m.seq, format!("bad {HEADER_PART} header {text:?}"))
                    })?;
                    if i == 1 {
                        // A block published again starts over.
                        pending = Some(Pending {
                            height,
                            parts: n,
                            next_part: 1,
                            data: Vec::new(),
                        });
                    }
                    let Some(p) = pending.as_mut() else {
                        return Err(self.bad(
                            m.seq,
                            format!("part {i}/{n} of block {height} without its first part"),
                        ));
                    };
                    if p.height == height && p.parts == n && p.next_part > i {
                        // A part stored twice.
                        self.duplicates += 1;
                        continue;
                    }
                    if p.height != height || p.parts != n || p.next_part != i {
                        return Err(self.bad(
                            m.seq,
                            format!(
                                "part {i}/{n} of block {height} where part {}/{} of block {} was expected",
                                p.next_part, p.parts, p.height
                            ),
                        ));
                    }
                    p.data.extend_from_slice(&m.payload);
                    p.next_part += 1;
                    if i < n {
                        continue;
                    }
                    (std::mem::take(&mut p.data), n)
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
            let frame = BlockFrame::decode(data.as_slice()).map_err(|e| {
                self.bad(m.seq, format!("block {height}: frame does not decode: {e}"))
            })?;
            self.check_frame(m.seq, height, &frame)?;
            self.last_height = Some(height);
            return Ok(Some(StreamBlock {
                height,
                frame,
                seq: m.seq,
                parts,
            }));
        }
    }

    fn check_frame(&self, seq: u64, height: u64, frame: &BlockFrame) -> Result<()> {
        if frame.height != height {
            return Err(self.bad(
                seq,
                format!(
                    "header says block {height}, the frame says {}",
                    frame.height
                ),
            ));
        }
        let meta = frame
            .meta
            .as_ref()
            .ok_or_else(|| self.bad(seq, format!("block {height}: the frame has no metadata")))?;
        if meta.data_length != frame.records.len() as u64 {
            return Err(self.bad(
                seq,
                format!(
                    "block {height}: records are {} bytes, the metadata says {}",
                    frame.records.len(),
                    meta.data_length
                ),
            ));
        }
        let crc = statestream_core::crc32c_append(0, &frame.records);
        if crc != meta.data_crc32c {
            return Err(self.bad(
                seq,
                format!(
                    "block {height}: records have CRC-32C {crc:08x}, the metadata says {:08x}",
                    meta.data_crc32c
                ),
            ));
        }
        Ok(())
    }
}

impl Iterator for StreamReader<'_> {
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

/// The result of [`replay_stream`].
#[non_exhaustive]
pub struct Replay {
    /// The rebuilt store (in memory), committed block by block.
    pub store: MultiStore,
    /// The last height replayed.
    pub height: u64,
    /// The app hash after it.
    pub app_hash: Hash,
    /// Blocks replayed.
    pub blocks: u64,
    /// Records applied.
    pub records: u64,
    /// Messages skipped as duplicates.
    pub duplicates: u64,
}

impl std::fmt::Debug for Replay {
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

/// Rebuilds the state from the blocks of `stream` (published on
/// `<subject>.blocks`) into a new in-memory [`MultiStore`] with the stores
/// named in the first block's store hashes, committing block by block.
///
/// The stream must start at height 1. After each block, the hash of every
/// streamed store must equal the block's; when every store is streamed the
/// app hash must equal the node's too. So the returned app hash is the
/// node's at [`Replay::height`], provably.
pub fn replay_stream(client: &mut Client, stream: &str, subject: &str) -> Result<Replay> {
    let mut reader = StreamReader::new(client, stream, subject);
    let mut store: Option<(MultiStore, Vec<StoreKey>)> = None;
    let mut records = 0u64;
    let mut blocks = 0u64;
    let fail = |height: u64, reason: String| NatsError::Replay {
        stream: stream.to_string(),
        height,
        reason,
    };
    for block in &mut reader {
        let block = block?;
        let height = block.height;
        let meta = block
            .frame
            .meta
            .as_ref()
            .ok_or_else(|| fail(height, "the frame has no metadata".into()))?;
        let (ms, keys) = match &mut store {
            Some(s) => s,
            None => {
                if height != 1 {
                    return Err(fail(
                        height,
                        format!(
                            "the stream starts at block {height}; rebuilding the state needs every block from 1"
                        ),
                    ));
                }
                let keys = meta
                    .store_hashes
                    .iter()
                    .map(|h| StoreKey::new(&h.store_key))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                if keys.is_empty() {
                    return Err(fail(height, "the block names no store".into()));
                }
                let ms = MultiStore::in_memory(&keys)?;
                store.insert((ms, keys))
            }
        };
        for r in Records::new(&block.frame.records) {
            let r = r?;
            let key = keys.iter().find(|k| k.name() == r.store).ok_or_else(|| {
                fail(
                    height,
                    format!("record of store {:?}, which block 1 does not name", r.store),
                )
            })?;
            match r.value {
                Some(v) => ms.set(key, r.key, v)?,
                None => ms.delete(key, r.key)?,
            }
            records += 1;
        }
        let info = ms.commit()?;
        if info.version != height {
            return Err(fail(
                height,
                format!("the rebuilt store is at version {}", info.version),
            ));
        }
        for s in &meta.streamed_stores {
            let Some(key) = keys.iter().find(|k| k.name() == s) else {
                return Err(fail(
                    height,
                    format!("streamed store {s:?} is not among the stores of block 1"),
                ));
            };
            let want = meta.store_hashes.iter().find(|h| &h.store_key == s);
            let got = ms.store_hash(key)?;
            if let Some(want) = want
                && got[..] != want.hash[..]
            {
                return Err(fail(
                    height,
                    format!(
                        "store {s} has hash {} after the block, the node had {}",
                        to_hex(&got),
                        to_hex(&want.hash)
                    ),
                ));
            }
        }
        let unfiltered = meta.streamed_stores.len() == meta.store_hashes.len();
        if let (true, Some(commit)) = (unfiltered, &meta.commit)
            && info.app_hash[..] != commit.app_hash[..]
        {
            return Err(fail(
                height,
                format!(
                    "the app hash is {} after the block, the node had {}",
                    to_hex(&info.app_hash),
                    to_hex(&commit.app_hash)
                ),
            ));
        }
        blocks += 1;
    }
    let duplicates = reader.duplicates();
    let Some((store, _)) = store else {
        return Err(fail(
            0,
            format!("the stream holds no block on {}.blocks", subject),
        ));
    };
    let info = store.last_commit();
    Ok(Replay {
        height: info.version,
        app_hash: info.app_hash,
        store,
        blocks,
        records,
        duplicates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ConnectOptions, connect_script};

    /// A server that answers the reader's first MSG.GET with `seq`.
    fn reader_error(seq: u64) -> String {
        let json = format!(r#"{{"message":{{"subject":"s.blocks","seq":{seq},"data":""}}}}"#);
        let script = format!(
            "INFO {{\"headers\":true}}\r\nPONG\r\nMSG _INBOX.fuzz.1 1 {}\r\n{json}\r\n",
            json.len()
        );
        let mut client =
            connect_script(script.into_bytes(), &ConnectOptions::new("nats://fuzz")).unwrap();
        let mut reader = StreamReader::new(&mut client, "s", "s");
        match reader.next_message() {
            Err(e) => e.to_string(),
            Ok(m) => panic!("expected an error, got {m:?}"),
        }
    }

    #[test]
    fn replay_sequence_going_backwards_is_an_error() {
        let err = reader_error(0);
        assert!(
            err.contains("returned sequence 0 when asked for 1"),
            "{err}"
        );
    }

    #[test]
    fn replay_largest_sequence_does_not_overflow() {
        let err = reader_error(u64::MAX);
        assert!(err.contains("largest possible"), "{err}");
    }
}
