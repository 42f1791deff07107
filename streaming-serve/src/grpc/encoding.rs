//! The gRPC encodings of blocks and snapshots: a block under a filter as
//! `BlockChanges` messages (once per block and selection), and
//! `SnapshotChunk`s, both written straight from the records.

use prost::Message;
use prost::bytes::Bytes;
use statestream_core::{Action, Block, StoreKey};

use super::wire::{
    CHANGE_KEY, CHANGE_OP, CHANGE_STORE, CHANGE_VALUE, CHANGES_CHANGES, CHANGES_END,
    CHANGES_HEIGHT, CHANGES_TIME, CHUNK_END, CHUNK_ENTRIES, CHUNK_HEIGHT, CHUNK_TIME, ENTRY_KEY,
    ENTRY_STORE, ENTRY_VALUE,
};
use crate::filter::Filter;
use crate::hub::snapshot::SnapshotWriter;
use crate::proto::v1 as pb;
use crate::selection::selected;

/// Payload bytes per message (entries or changes): well under
/// [`GRPC_DEFAULT_MAX_MESSAGE`](super::GRPC_DEFAULT_MAX_MESSAGE).
pub const MESSAGE_BYTES: usize = 256 * 1024;

/// Bytes counted per change or entry beside its store, key and value (the
/// fields' keys and lengths, roughly), when a message is cut.
const FIELD_OVERHEAD: usize = 8;

/// A block time (seconds, nanoseconds) as a protobuf `Timestamp`.
pub fn timestamp(time: Option<(i64, u32)>) -> Option<prost_types::Timestamp> {
    time.map(|(seconds, nanos)| prost_types::Timestamp {
        seconds,
        nanos: nanos.min(999_999_999) as i32,
    })
}

/// The time of `block` as a protobuf `Timestamp`.
pub fn block_timestamp(block: &Block) -> Option<prost_types::Timestamp> {
    timestamp(Some((block.meta().time_seconds, block.meta().time_nanos)))
}

/// The hash fields of a block's last message (`BlockChanges` and
/// `SnapshotChunk` number them alike, 5 to 7): `app_hash`, `store_hashes`
/// (in the order given: store-name order) and `source_app_hash`, encoded
/// once and appended to the last message's bytes (protobuf allows fields
/// in any order, and a message's encoding followed by more of its fields
/// is that message with them).
pub fn encode_hashes<'a>(
    app_hash: &[u8],
    stores: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    source_app_hash: &[u8],
) -> Bytes {
    pb::BlockChanges {
        app_hash: app_hash.to_vec(),
        store_hashes: stores
            .into_iter()
            .map(|(store, hash)| pb::StoreHash {
                store: store.to_owned(),
                hash: hash.to_vec(),
            })
            .collect(),
        source_app_hash: source_app_hash.to_vec(),
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

/// [`encode_hashes`] of one block: statestream's app hash, the chain value
/// of each store of the block's view (the stores the streamer streams)
/// and the source's app hash from its metadata.
pub fn block_hashes(block: &Block) -> Bytes {
    encode_hashes(
        block.change_set().app_hash(),
        block.stores().map(|s| (s.store().name(), &s.hash()[..])),
        &block.meta().source_app_hash,
    )
}

/// The encoded `BlockChanges` messages of one block under `filter`: one or
/// more, the last with `end = true` and the block's `hashes`
/// ([`block_hashes`]). Written straight from the block's records, in the
/// field order prost uses (the bytes are prost's), with no `Change` value
/// built per change.
pub fn encode_block(block: &Block, filter: &Filter, hashes: &[u8]) -> Vec<Bytes> {
    use prost::encoding::{message, uint64};
    let mut header = Vec::new();
    if block.height() != 0 {
        uint64::encode(CHANGES_HEIGHT.tag, &block.height(), &mut header);
    }
    if let Some(ts) = block_timestamp(block) {
        message::encode(CHANGES_TIME.tag, &ts, &mut header);
    }
    // Room for every change of the block's stores (a store name, tags and
    // lengths beside each record), up to one message: one allocation per
    // message instead of a growing buffer; trimmed below when a filter
    // kept much less.
    let room = block
        .stores()
        .map(|s| s.encoded().len() + s.len() * (s.store().name().len() + 16))
        .sum::<usize>()
        .min(CHUNK_CAPACITY)
        + header.len()
        + hashes.len()
        + 2;
    let start = |header: &[u8]| {
        let mut m = Vec::with_capacity(room);
        m.extend_from_slice(header);
        m
    };
    let finish = |mut m: Vec<u8>| {
        if m.capacity() > 2 * m.len() {
            m.shrink_to_fit();
        }
        Bytes::from(m)
    };
    let mut out = Vec::new();
    let mut message = start(&header);
    let mut bytes = 0;
    for c in selected(block, filter) {
        let op = match c.action {
            Action::Create => pb::Op::Create,
            Action::Update => pb::Op::Update,
            Action::Delete => pb::Op::Delete,
        } as u64;
        let value = c.value.unwrap_or_default();
        let fields = [
            (CHANGE_STORE, c.store.as_bytes()),
            (CHANGE_KEY, c.key),
            (CHANGE_VALUE, value),
        ];
        let change = fields
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(f, b)| f.encoded_len(b.len()))
            .sum::<usize>()
            + CHANGE_OP.varint_len(op);
        CHANGES_CHANGES.len_prefix(change, &mut message);
        for (field, b) in fields {
            if !b.is_empty() {
                field.len_prefix(b.len(), &mut message);
                message.extend_from_slice(b);
            }
        }
        CHANGE_OP.varint(op, &mut message);
        bytes += c.store.len() + c.key.len() + value.len() + FIELD_OVERHEAD;
        if bytes >= MESSAGE_BYTES {
            out.push(finish(std::mem::replace(&mut message, start(&header))));
            bytes = 0;
        }
    }
    prost::encoding::bool::encode(CHANGES_END.tag, &true, &mut message);
    message.extend_from_slice(hashes);
    out.push(finish(message));
    out
}

/// `SnapshotChunk` messages encoded straight from the store's iterator:
/// no `Entry` values, no store name copied per key.
pub struct ChunkEncoder {
    /// `height` and `time`, the fields every chunk starts with.
    header: Vec<u8>,
    chunk: Vec<u8>,
    /// The hash fields of the last chunk ([`encode_hashes`]).
    hashes: Bytes,
}

/// The capacity each chunk starts with: [`MESSAGE_BYTES`] of entries and
/// room for the one that crosses it.
const CHUNK_CAPACITY: usize = MESSAGE_BYTES + MESSAGE_BYTES / 8;

impl ChunkEncoder {
    /// Chunks of the snapshot at `height`, the last one ending with
    /// `hashes` ([`encode_hashes`]; empty: none).
    pub fn new(height: u64, time: Option<(i64, u32)>, hashes: Bytes) -> ChunkEncoder {
        use prost::encoding::{message, uint64};
        let mut header = Vec::new();
        if height != 0 {
            uint64::encode(CHUNK_HEIGHT.tag, &height, &mut header);
        }
        if let Some(ts) = timestamp(time) {
            message::encode(CHUNK_TIME.tag, &ts, &mut header);
        }
        let mut chunk = Vec::with_capacity(CHUNK_CAPACITY);
        chunk.extend_from_slice(&header);
        ChunkEncoder {
            header,
            chunk,
            hashes,
        }
    }

    /// Appends one `Entry` (proto3 leaves empty fields out). When the
    /// chunk holds entries and this one would take it past
    /// [`MESSAGE_BYTES`], the chunk is returned first and the entry starts
    /// the next one (an entry larger than that is a chunk of its own).
    fn push(&mut self, store: &str, key: &[u8], value: &[u8]) -> Option<Bytes> {
        let fields = [
            (ENTRY_STORE, store.as_bytes()),
            (ENTRY_KEY, key),
            (ENTRY_VALUE, value),
        ];
        let entry: usize = fields
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(f, b)| f.encoded_len(b.len()))
            .sum();
        let full = (self.chunk.len() > self.header.len()
            && self.chunk.len() + CHUNK_ENTRIES.encoded_len(entry) > MESSAGE_BYTES)
            .then(|| self.take());
        CHUNK_ENTRIES.len_prefix(entry, &mut self.chunk);
        for (field, bytes) in fields {
            if !bytes.is_empty() {
                field.len_prefix(bytes.len(), &mut self.chunk);
                self.chunk.extend_from_slice(bytes);
            }
        }
        full
    }

    /// The chunk so far, without `end`; starts the next one.
    fn take(&mut self) -> Bytes {
        let mut next = Vec::with_capacity(CHUNK_CAPACITY);
        next.extend_from_slice(&self.header);
        let mut chunk = std::mem::replace(&mut self.chunk, next);
        if chunk.capacity() > 2 * chunk.len() {
            chunk.shrink_to_fit();
        }
        chunk.into()
    }

    /// The last chunk: what is left, with `end = true`.
    fn last(mut self) -> Bytes {
        prost::encoding::bool::encode(CHUNK_END.tag, &true, &mut self.chunk);
        self.chunk.extend_from_slice(&self.hashes);
        if self.chunk.capacity() > 2 * self.chunk.len() {
            self.chunk.shrink_to_fit();
        }
        self.chunk.into()
    }
}

impl SnapshotWriter for ChunkEncoder {
    type Piece = Bytes;

    fn entry(&mut self, store: &StoreKey, key: Vec<u8>, value: Vec<u8>) -> Option<Bytes> {
        self.push(store.name(), &key, &value)
    }

    fn finish(self) -> Option<Bytes> {
        Some(self.last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(e: &Bytes) -> pb::SnapshotChunk {
        pb::SnapshotChunk::decode(&e[..]).expect("a SnapshotChunk")
    }

    /// `encode_block` as prost would write it: `Change` values, then
    /// `encode_to_vec`, cut where `encode_block` cuts.
    fn prost_block(block: &Block, filter: &Filter, hashes: &[u8]) -> Vec<Vec<u8>> {
        let mut messages = vec![Vec::new()];
        let mut bytes = 0;
        for c in selected(block, filter) {
            let op = match c.action {
                Action::Create => pb::Op::Create,
                Action::Update => pb::Op::Update,
                Action::Delete => pb::Op::Delete,
            };
            bytes += c.store.len() + c.key.len() + c.value.map_or(0, <[u8]>::len) + FIELD_OVERHEAD;
            messages.last_mut().unwrap().push(pb::Change {
                store: c.store.to_string(),
                key: c.key.to_vec(),
                value: c.value.map(<[u8]>::to_vec).unwrap_or_default(),
                op: op as i32,
            });
            if bytes >= MESSAGE_BYTES {
                messages.push(Vec::new());
                bytes = 0;
            }
        }
        let last = messages.len() - 1;
        messages
            .into_iter()
            .enumerate()
            .map(|(i, changes)| {
                let mut m = pb::BlockChanges {
                    height: block.height(),
                    time: block_timestamp(block),
                    changes,
                    end: i == last,
                    ..Default::default()
                }
                .encode_to_vec();
                if i == last {
                    m.extend_from_slice(hashes);
                }
                m
            })
            .collect()
    }

    #[test]
    fn encoded_blocks_are_the_bytes_prost_writes() {
        use statestream_core::{BlockMeta, ChangeSet, StoreChanges, StoreSelection};
        use std::sync::Arc;
        let stores = [
            StoreKey::new("acc").unwrap(),
            StoreKey::new("bank").unwrap(),
        ];
        let mut acc = StoreChanges::new(stores[0].clone());
        acc.push(b"", Some(b"empty key"), true);
        acc.push(b"gone", None, false);
        acc.push(b"k", Some(b""), false);
        let mut bank = StoreChanges::new(stores[1].clone());
        // Enough bytes for three messages (a cut every 14 changes).
        for i in 0..40u32 {
            bank.push(&i.to_be_bytes(), Some(&vec![i as u8; 20_000]), i % 2 == 0);
        }
        let cs = ChangeSet::seal(7, Vec::new(), vec![acc, bank], &[Default::default(); 2]);
        let meta = BlockMeta {
            time_seconds: 1_700_000_000,
            time_nanos: 9,
            ..BlockMeta::default()
        };
        let block = Block::new(Arc::new(cs), Arc::new(meta), &StoreSelection::all(&stores));
        let hashes = block_hashes(&block);
        for filter in [Filter::all(&stores), Filter::all(&stores[..1])] {
            let ours: Vec<Vec<u8>> = encode_block(&block, &filter, &hashes)
                .into_iter()
                .map(|b| b.to_vec())
                .collect();
            assert_eq!(ours, prost_block(&block, &filter, &hashes));
        }
        assert_eq!(
            encode_block(&block, &Filter::all(&stores), &hashes).len(),
            3
        );
    }

    #[test]
    fn encoded_chunks_decode_as_the_messages_prost_would_build() {
        // Field order differs from prost's (time comes before the entries),
        // which protobuf allows; the decoded messages are equal.
        let mut chunks = ChunkEncoder::new(42, Some((1_700_000_000, 5)), Bytes::new());
        assert!(chunks.push("bank", b"k1", b"v1").is_none());
        assert!(chunks.push("acc", b"", b"").is_none());
        let first = chunks.take();
        assert!(chunks.push("bank", b"k2", &[7u8; 300]).is_none());
        let last = chunks.last();
        let time = Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        });
        let entry = |store: &str, key: &[u8], value: &[u8]| pb::Entry {
            store: store.into(),
            key: key.to_vec(),
            value: value.to_vec(),
        };
        let expected_first = pb::SnapshotChunk {
            height: 42,
            entries: vec![entry("bank", b"k1", b"v1"), entry("acc", b"", b"")],
            end: false,
            time,
            ..Default::default()
        };
        assert_eq!(decode(&first), expected_first);
        let expected_last = pb::SnapshotChunk {
            height: 42,
            entries: vec![entry("bank", b"k2", &[7u8; 300])],
            end: true,
            time,
            ..Default::default()
        };
        assert_eq!(decode(&last), expected_last);
    }

    #[test]
    fn a_chunk_is_cut_before_the_entry_that_would_take_it_past_the_limit() {
        let mut chunks = ChunkEncoder::new(7, None, Bytes::new());
        let value = vec![1u8; MESSAGE_BYTES / 3];
        let mut cut = Vec::new();
        for i in 0..7u8 {
            if let Some(chunk) = chunks.push("s", &[i], &value) {
                cut.push(chunk);
            }
        }
        // A huge entry is a chunk of its own.
        let huge = vec![2u8; MESSAGE_BYTES * 2];
        cut.extend(chunks.push("s", b"huge", &huge));
        cut.extend(chunks.push("s", b"z", b"1"));
        cut.push(chunks.last());
        let decoded: Vec<pb::SnapshotChunk> = cut.iter().map(decode).collect();
        let sizes: Vec<usize> = decoded.iter().map(|c| c.entries.len()).collect();
        assert_eq!(sizes, [2, 2, 2, 1, 1, 1], "{sizes:?}");
        for (c, e) in cut.iter().zip(&decoded) {
            assert!(
                c.len() <= MESSAGE_BYTES || e.entries.len() == 1,
                "a chunk of {} bytes with {} entries",
                c.len(),
                e.entries.len()
            );
        }
        assert!(
            decoded
                .iter()
                .rev()
                .skip(1)
                .all(|c| !c.end && c.height == 7)
        );
        assert!(decoded.last().is_some_and(|c| c.end));
        assert_eq!(decoded[4].entries[0].key, b"huge");
    }

    #[test]
    fn the_hash_fields_end_the_last_chunk_and_the_last_block_message_only() {
        let hashes = encode_hashes(&[1; 32], [("a", &[2u8; 32][..]), ("b", &[3; 32])], b"src");
        let expected = |m: &pb::SnapshotChunk| {
            m.app_hash == [1; 32]
                && m.source_app_hash == b"src"
                && m.store_hashes
                    == [
                        pb::StoreHash {
                            store: "a".into(),
                            hash: vec![2; 32],
                        },
                        pb::StoreHash {
                            store: "b".into(),
                            hash: vec![3; 32],
                        },
                    ]
        };
        let mut chunks = ChunkEncoder::new(9, None, hashes.clone());
        let value = vec![1u8; MESSAGE_BYTES / 2];
        let first = chunks.push("s", b"1", &value);
        let first = first.or_else(|| chunks.push("s", b"2", &value));
        let first = decode(&first.expect("a full chunk"));
        let last = decode(&chunks.last());
        assert!(!first.end && first.app_hash.is_empty() && first.store_hashes.is_empty());
        assert!(last.end && last.height == 9 && expected(&last), "{last:?}");
    }

    #[test]
    fn an_empty_snapshot_is_one_chunk_that_ends_it() {
        let chunk = decode(&ChunkEncoder::new(0, None, Bytes::new()).last());
        assert_eq!(
            chunk,
            pb::SnapshotChunk {
                height: 0,
                entries: vec![],
                end: true,
                time: None,
                ..Default::default()
            }
        );
    }
}
