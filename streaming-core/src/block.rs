use std::sync::Arc;

use crate::changeset::{ChangeSet, CommitInfo, StoreChanges};
use crate::checksum::{crc32c_append, crc32c_combine};
use crate::key::StoreKey;
use crate::record::Record;
use prost::Message;

use crate::error::{Error, Result};
use crate::proto;

/// One transaction of a block: opaque request and response bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tx {
    pub request: Vec<u8>,
    pub response: Vec<u8>,
}

impl Tx {
    /// Length of its `TxRecord` encoding.
    fn encoded_len(&self) -> usize {
        use prost::encoding::bytes;
        let field = |tag, b: &Vec<u8>| {
            if b.is_empty() {
                0
            } else {
                bytes::encoded_len(tag, b)
            }
        };
        field(1, &self.request) + field(2, &self.response)
    }
}

/// What the application tells about a block besides its state changes.
/// Kept in the change log with the block, so a block delivered again after a
/// crash carries the same metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockMeta {
    /// Block time: seconds since the Unix epoch.
    pub time_seconds: i64,
    /// Block time: nanoseconds within the second.
    pub time_nanos: u32,
    /// Opaque payload before the transactions (e.g. begin-block request and
    /// response).
    pub begin_block: Vec<u8>,
    /// Opaque payload after the transactions.
    pub end_block: Vec<u8>,
    /// The block's transactions.
    pub txs: Vec<Tx>,
    /// The app hash of the chain the block came from, when it came from a
    /// source rather than from this store's own node (a Cosmos chain's
    /// `ResponseFinalizeBlock.app_hash`, its IAVL root); empty otherwise.
    /// statestream's own app hash (the commit info) is computed on the
    /// replica from its per-store hash chains, as for any block.
    pub source_app_hash: Vec<u8>,
}

impl BlockMeta {
    /// The bytes stored in the change log: a `BlockMetadata` message with
    /// only the application's fields set.
    pub fn encode_app_meta(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.app_fields_len(0) + self.source_fields_len());
        self.encode_app_fields(0, &mut out);
        self.encode_source_fields(&mut out);
        out
    }

    /// Encodes field 13 of `BlockMetadata` (the source's app hash), which
    /// comes after the commit's fields 7-11.
    fn encode_source_fields(&self, out: &mut Vec<u8>) {
        if !self.source_app_hash.is_empty() {
            prost::encoding::bytes::encode(13, &self.source_app_hash, out);
        }
    }

    /// Length of [`encode_source_fields`](BlockMeta::encode_source_fields)'s bytes.
    fn source_fields_len(&self) -> usize {
        if self.source_app_hash.is_empty() {
            0
        } else {
            prost::encoding::bytes::encoded_len(13, &self.source_app_hash)
        }
    }

    /// Encodes fields 1 to 6 of `BlockMetadata` (the height and the
    /// application's fields) straight from `self`, in field order and without
    /// default values, as prost would, but without first copying the
    /// transactions into a `proto::BlockMetadata`.
    fn encode_app_fields(&self, height: u64, out: &mut Vec<u8>) {
        use prost::encoding::{WireType, bytes, encode_key, encode_varint, int64, uint32, uint64};
        if height != 0 {
            uint64::encode(1, &height, out);
        }
        if self.time_seconds != 0 {
            int64::encode(2, &self.time_seconds, out);
        }
        if self.time_nanos != 0 {
            uint32::encode(3, &self.time_nanos, out);
        }
        if !self.begin_block.is_empty() {
            bytes::encode(4, &self.begin_block, out);
        }
        if !self.end_block.is_empty() {
            bytes::encode(5, &self.end_block, out);
        }
        for tx in &self.txs {
            encode_key(6, WireType::LengthDelimited, out);
            encode_varint(tx.encoded_len() as u64, out);
            if !tx.request.is_empty() {
                bytes::encode(1, &tx.request, out);
            }
            if !tx.response.is_empty() {
                bytes::encode(2, &tx.response, out);
            }
        }
    }

    /// Length of [`encode_app_fields`](BlockMeta::encode_app_fields)'s bytes.
    fn app_fields_len(&self, height: u64) -> usize {
        use prost::encoding::{bytes, encoded_len_varint, int64, key_len, uint32, uint64};
        let mut len = 0;
        if height != 0 {
            len += uint64::encoded_len(1, &height);
        }
        if self.time_seconds != 0 {
            len += int64::encoded_len(2, &self.time_seconds);
        }
        if self.time_nanos != 0 {
            len += uint32::encoded_len(3, &self.time_nanos);
        }
        if !self.begin_block.is_empty() {
            len += bytes::encoded_len(4, &self.begin_block);
        }
        if !self.end_block.is_empty() {
            len += bytes::encoded_len(5, &self.end_block);
        }
        for tx in &self.txs {
            let l = tx.encoded_len();
            len += key_len(6) + encoded_len_varint(l as u64) + l;
        }
        len
    }

    /// Decodes [`encode_app_meta`](BlockMeta::encode_app_meta)'s bytes.
    pub fn decode_app_meta(height: u64, bytes: &[u8]) -> Result<BlockMeta> {
        let m = proto::BlockMetadata::decode(bytes).map_err(|e| Error::BadMetadata {
            height,
            reason: e.to_string(),
        })?;
        Ok(BlockMeta {
            time_seconds: m.time_seconds,
            time_nanos: m.time_nanos,
            begin_block: m.begin_block,
            end_block: m.end_block,
            txs: m
                .txs
                .into_iter()
                .map(|t| Tx {
                    request: t.request,
                    response: t.response,
                })
                .collect(),
            source_app_hash: m.source_app_hash,
        })
    }

    fn to_proto(&self, height: u64) -> proto::BlockMetadata {
        proto::BlockMetadata {
            height,
            time_seconds: self.time_seconds,
            time_nanos: self.time_nanos,
            begin_block: self.begin_block.clone(),
            end_block: self.end_block.clone(),
            txs: self
                .txs
                .iter()
                .map(|t| proto::TxRecord {
                    request: t.request.clone(),
                    response: t.response.clone(),
                })
                .collect(),
            source_app_hash: self.source_app_hash.clone(),
            ..Default::default()
        }
    }
}

/// The key of `BlockMetadata.meta_crc32c`: field 12, wire type 5 (fixed32).
const META_CRC_KEY: u8 = (12 << 3) | 5;

/// Length of the `meta_crc32c` field at the end of a meta file's message:
/// its one-byte key, then the CRC-32C as a protobuf fixed32 (4 bytes,
/// little-endian by protobuf's definition).
pub const META_CRC_FIELD_LEN: usize = 5;

/// How a meta file's `BlockMetadata` message stands with its own checksum
/// (`meta_crc32c`, field 12), as [`check_metadata_checksum`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetaChecksum {
    /// The message ends with its checksum, and it matches the bytes before.
    Valid,
    /// The message has no checksum: written before statestream wrote one,
    /// or by another writer. Nothing but its own decoding checks it.
    Absent,
    /// The message has a checksum field, but not as its last
    /// [`META_CRC_FIELD_LEN`] bytes, where a writer puts it.
    Misplaced,
    /// The checksum does not match the bytes before it: the file changed
    /// after it was written.
    Mismatch { stored: u32, computed: u32 },
}

/// Checks a meta file's message (`message`, the bytes after the 8-byte
/// header) against the checksum its decoding (`decoded`) carries. The
/// checksum covers every byte of the message before the checksum field,
/// which must be the message's last [`META_CRC_FIELD_LEN`] bytes; that it is
/// there at all is known from the decoding, so a message without it that
/// happens to end in similar bytes is not mistaken for one with it.
pub fn check_metadata_checksum(message: &[u8], decoded: &proto::BlockMetadata) -> MetaChecksum {
    let Some(stored) = decoded.meta_crc32c else {
        return MetaChecksum::Absent;
    };
    let Some(split) = message.len().checked_sub(META_CRC_FIELD_LEN) else {
        return MetaChecksum::Misplaced;
    };
    let (covered, field) = message.split_at(split);
    if field[0] != META_CRC_KEY || field[1..] != stored.to_le_bytes() {
        return MetaChecksum::Misplaced;
    }
    let computed = crc32c_append(0, covered);
    if computed == stored {
        MetaChecksum::Valid
    } else {
        MetaChecksum::Mismatch { stored, computed }
    }
}

/// A committed block as one streamer sees it: the shared change set (never
/// copied per streamer), the application's metadata, and the streamer's
/// selection of stores.
#[derive(Clone)]
pub struct Block {
    changes: Arc<ChangeSet>,
    meta: Arc<BlockMeta>,
    selected: Arc<[usize]>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("height", &self.height())
            .field(
                "stores",
                &self.stores().map(|s| s.store().name()).collect::<Vec<_>>(),
            )
            .field(
                "records",
                &self.stores().map(StoreChanges::len).sum::<usize>(),
            )
            .finish()
    }
}

/// Which stores of a change set a streamer receives: indices into
/// [`ChangeSet::stores`], computed once per streamer.
#[derive(Debug, Clone)]
pub struct StoreSelection {
    indices: Arc<[usize]>,
    names: Arc<[StoreKey]>,
}

impl StoreSelection {
    /// Selects `wanted` among `all` (both the multi-store's sorted stores).
    /// Unknown names are ignored here; configuration resolution rejects them.
    pub fn new(all: &[StoreKey], wanted: &[StoreKey]) -> StoreSelection {
        let mut indices: Vec<usize> = wanted
            .iter()
            .filter_map(|w| all.binary_search(w).ok())
            .collect();
        indices.sort_unstable();
        indices.dedup();
        let names = indices.iter().map(|&i| all[i].clone()).collect();
        StoreSelection {
            indices: indices.into(),
            names,
        }
    }

    /// Every store.
    pub fn all(all: &[StoreKey]) -> StoreSelection {
        StoreSelection::new(all, all)
    }

    /// The selected stores, in name order.
    pub fn stores(&self) -> &[StoreKey] {
        &self.names
    }
}

impl Block {
    /// A view of `changes` for the stores in `selection`. A change set
    /// with other stores than the selection was made for (a block
    /// committed before stores were added at run time, read back from the
    /// change log) is matched by store name; selected stores it does not
    /// hold are left out.
    pub fn new(changes: Arc<ChangeSet>, meta: Arc<BlockMeta>, selection: &StoreSelection) -> Block {
        let stores = changes.stores();
        let same = selection
            .indices
            .iter()
            .zip(selection.names.iter())
            .all(|(&i, name)| stores.get(i).is_some_and(|s| s.store() == name));
        let selected = if same {
            Arc::clone(&selection.indices)
        } else {
            selection
                .names
                .iter()
                .filter_map(|name| stores.binary_search_by(|s| s.store().cmp(name)).ok())
                .collect()
        };
        Block {
            changes,
            meta,
            selected,
        }
    }

    /// Rebuilds a block from the change log (decoding its stored metadata).
    pub fn from_change_set(changes: Arc<ChangeSet>, selection: &StoreSelection) -> Result<Block> {
        let meta = BlockMeta::decode_app_meta(changes.height(), changes.app_meta())?;
        Ok(Block::new(changes, Arc::new(meta), selection))
    }

    /// The block height.
    pub fn height(&self) -> u64 {
        self.changes.height()
    }

    /// The commit info (version = height, app hash).
    pub fn commit_info(&self) -> CommitInfo {
        self.changes.commit_info()
    }

    /// The application's metadata.
    pub fn meta(&self) -> &BlockMeta {
        &self.meta
    }

    /// The whole change set, every store (for hashes; use
    /// [`stores`](Block::stores) for the streamer's data).
    pub fn change_set(&self) -> &ChangeSet {
        &self.changes
    }

    /// The selected stores' changes, in store-name order (including
    /// selected stores without changes).
    pub fn stores(&self) -> impl Iterator<Item = &StoreChanges> + '_ {
        self.selected.iter().map(|&i| &self.changes.stores()[i])
    }

    /// The selected records, ordered by store then key.
    pub fn records(&self) -> impl Iterator<Item = Record<'_>> + '_ {
        self.stores().flat_map(StoreChanges::records)
    }

    /// The encoded records of the selected stores, one slice per store: the
    /// concatenation is a data file's payload. Nothing is copied.
    pub fn encoded(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.stores().map(StoreChanges::encoded)
    }

    /// Length of the concatenated encoded records.
    pub fn encoded_len(&self) -> usize {
        self.stores().map(|s| s.encoded().len()).sum()
    }

    /// CRC-32C of the concatenated encoded records (a data file's payload),
    /// combined from the per-store checksums the store computed at commit:
    /// the records are not read again.
    pub fn payload_crc32c(&self) -> u32 {
        self.stores().fold(0, |crc, s| {
            crc32c_combine(crc, s.crc32c(), s.encoded().len())
        })
    }

    /// The `BlockMetadata` message for this block, with the payload's length
    /// and CRC-32C as given. [`encode_metadata`](Block::encode_metadata)
    /// writes the same message's bytes without building it.
    pub fn metadata(&self, data_length: u64, data_crc32c: u32) -> proto::BlockMetadata {
        let mut m = self.meta.to_proto(self.height());
        let system = self.system_fields(data_length, data_crc32c);
        m.commit = system.commit;
        m.store_hashes = system.store_hashes;
        m.streamed_stores = system.streamed_stores;
        m.data_length = system.data_length;
        m.data_crc32c = system.data_crc32c;
        m.source_app_hash = system.source_app_hash;
        m
    }

    /// Appends a meta file's `BlockMetadata` message to `out`: the bytes
    /// of `metadata(..).encode_to_vec()`, then its own checksum
    /// (`meta_crc32c`, see [`check_metadata_checksum`]). The application's
    /// payloads and transactions are written straight from the block, not
    /// copied into a message first. Fields 1-6 come from the application's
    /// metadata, 7-11 and 13 (the source's app hash) from the commit, 12 is
    /// the checksum of the bytes before it, written last.
    pub fn encode_metadata(&self, data_length: u64, data_crc32c: u32, out: &mut Vec<u8>) {
        let start = out.len();
        self.meta.encode_app_fields(self.height(), out);
        self.system_fields(data_length, data_crc32c)
            .encode(out)
            .expect("a Vec grows as needed, so encoding cannot run out of space");
        let crc = crc32c_append(0, &out[start..]);
        out.push(META_CRC_KEY);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Fields 7-11 and 13 of `BlockMetadata` (all others default).
    fn system_fields(&self, data_length: u64, data_crc32c: u32) -> proto::BlockMetadata {
        let info = self.commit_info();
        proto::BlockMetadata {
            commit: Some(proto::CommitInfo {
                version: info.version,
                app_hash: info.app_hash.to_vec(),
            }),
            store_hashes: self
                .changes
                .stores()
                .iter()
                .map(|s| proto::StoreHash {
                    store_key: s.store().name().to_string(),
                    hash: s.hash().to_vec(),
                })
                .collect(),
            streamed_stores: self
                .stores()
                .map(|s| s.store().name().to_string())
                .collect(),
            data_length,
            data_crc32c,
            source_app_hash: self.meta.source_app_hash.clone(),
            ..Default::default()
        }
    }

    /// The block as one protobuf `BlockFrame` (the plugin protocol's block
    /// frame), without its length prefix. The metadata and the records field
    /// are written straight from the block and the shared change set.
    pub fn encode_frame(&self, out: &mut Vec<u8>) {
        use prost::encoding::{WireType, encode_key, encode_varint, uint64};
        let len = self.encoded_len();
        let crc = self.payload_crc32c();
        let height = self.height();
        let system = self.system_fields(len as u64, crc);
        out.clear();
        if height != 0 {
            uint64::encode(1, &height, out);
        }
        encode_key(2, WireType::LengthDelimited, out);
        encode_varint(
            (self.meta.app_fields_len(height) + system.encoded_len()) as u64,
            out,
        );
        self.meta.encode_app_fields(height, out);
        system
            .encode(out)
            .expect("a Vec grows as needed, so encoding cannot run out of space");
        if len > 0 {
            encode_key(3, WireType::LengthDelimited, out);
            encode_varint(len as u64, out);
            for seg in self.encoded() {
                out.extend_from_slice(seg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::ZERO_HASH;

    /// One store's writes of a block: (key, value or `None` for a delete),
    /// in key order.
    type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

    /// A change set of block `height` over `keys`, every store's writes
    /// given as (key, value) in key order.
    fn change_set(
        height: u64,
        keys: &[StoreKey],
        writes: &[Writes],
        meta: &BlockMeta,
    ) -> Arc<ChangeSet> {
        let stores = keys
            .iter()
            .zip(writes)
            .map(|(k, w)| {
                let mut c = StoreChanges::new(k.clone());
                for (key, value) in w {
                    c.push(key, value.as_deref(), false);
                }
                c
            })
            .collect();
        let prev = vec![ZERO_HASH; keys.len()];
        Arc::new(ChangeSet::seal(
            height,
            meta.encode_app_meta(),
            stores,
            &prev,
        ))
    }

    /// The payload checksum combined from the stores' equals one pass over
    /// the payload, whichever stores are selected, empty ones included.
    #[test]
    fn payload_crc32c_is_the_checksum_of_the_payload() {
        let names = ["a", "b", "c", "d"];
        let keys: Vec<StoreKey> = names.iter().map(|n| StoreKey::new(n).unwrap()).collect();
        let writes: Vec<Writes> = (0..4)
            .map(|i| {
                let n = if i < 3 { (i + 1) * 7 } else { 0 };
                let mut w: Vec<_> = (0..n)
                    .map(|j| (format!("key-{j}").into_bytes(), Some(vec![j as u8; 33])))
                    .collect();
                w.sort();
                if i == 1 {
                    for (k, v) in &mut w {
                        if k == b"key-3" {
                            *v = None;
                        }
                    }
                }
                w
            })
            .collect();
        let cs = change_set(1, &keys, &writes, &BlockMeta::default());
        let selections: [&[usize]; 5] = [&[0, 1, 2, 3], &[1], &[3], &[0, 2], &[2, 3]];
        for sel in selections {
            let chosen: Vec<StoreKey> = sel.iter().map(|&i| keys[i].clone()).collect();
            let b = Block::from_change_set(Arc::clone(&cs), &StoreSelection::new(&keys, &chosen))
                .unwrap();
            let payload: Vec<u8> = b.encoded().flatten().copied().collect();
            assert_eq!(
                b.payload_crc32c(),
                crate::checksum::crc32c_append(0, &payload),
                "stores {sel:?}"
            );
        }
    }

    fn block(meta: BlockMeta) -> Block {
        let a = StoreKey::new("a").unwrap();
        let b = StoreKey::new("b").unwrap();
        let writes = vec![
            vec![(b"k".to_vec(), Some(b"v".to_vec()))],
            vec![(b"gone".to_vec(), None)],
        ];
        let cs = change_set(3, &[a.clone(), b.clone()], &writes, &meta);
        Block::from_change_set(cs, &StoreSelection::new(&[a.clone(), b], &[a])).unwrap()
    }

    fn metas() -> Vec<BlockMeta> {
        vec![
            BlockMeta::default(),
            BlockMeta {
                time_seconds: -5,
                time_nanos: 7,
                begin_block: vec![1; 300],
                end_block: vec![],
                txs: vec![
                    Tx::default(),
                    Tx {
                        request: b"req".to_vec(),
                        response: vec![],
                    },
                    Tx {
                        request: vec![9; 200],
                        response: b"ok".to_vec(),
                    },
                ],
                source_app_hash: vec![0xab; 32],
            },
        ]
    }

    /// Any changed byte of a meta file's message is found: as a checksum
    /// mismatch, a misplaced or missing checksum field, or a message that
    /// no longer decodes. A message without the field is `Absent`.
    #[test]
    fn metadata_checksum_finds_changed_bytes() {
        let b = block(metas().remove(1));
        let mut message = Vec::new();
        b.encode_metadata(11, 22, &mut message);
        let without = b.metadata(11, 22).encode_to_vec();
        assert_eq!(
            check_metadata_checksum(&without, &b.metadata(11, 22)),
            MetaChecksum::Absent
        );
        let (mut valid, mut absent, mut other, mut undecodable) = (0, 0, 0, 0);
        for i in 0..message.len() {
            for bit in 0..8 {
                let mut m = message.clone();
                m[i] ^= 1 << bit;
                let Ok(decoded) = proto::BlockMetadata::decode(&m[..]) else {
                    undecodable += 1;
                    continue;
                };
                match check_metadata_checksum(&m, &decoded) {
                    MetaChecksum::Valid => valid += 1,
                    MetaChecksum::Absent => absent += 1,
                    MetaChecksum::Misplaced | MetaChecksum::Mismatch { .. } => other += 1,
                }
            }
        }
        assert_eq!(valid, 0, "a changed byte passed the checksum");
        // Only a change of the checksum field's key can make it unknown.
        assert!(absent <= 8, "{absent}");
        assert!(other > undecodable, "{other} {undecodable}");
    }

    /// A block committed before stores were added is read with a
    /// selection made for the larger set of stores: matched by name.
    #[test]
    fn a_selection_matches_an_older_change_set_by_store_name() {
        let key = |n: &str| StoreKey::new(n).unwrap();
        let old = change_set(
            1,
            &[key("acc"), key("bank")],
            &[
                vec![(b"a".to_vec(), Some(b"1".to_vec()))],
                vec![(b"b".to_vec(), None)],
            ],
            &BlockMeta::default(),
        );
        let now = [key("acc"), key("authz"), key("bank"), key("gov")];
        for (wanted, expected) in [
            (vec![key("bank"), key("gov")], vec!["bank"]),
            (now.to_vec(), vec!["acc", "bank"]),
            (vec![key("authz")], vec![]),
        ] {
            let b = Block::from_change_set(Arc::clone(&old), &StoreSelection::new(&now, &wanted))
                .unwrap();
            let names: Vec<&str> = b.stores().map(|s| s.store().name()).collect();
            assert_eq!(names, expected);
        }
    }

    #[test]
    fn block_encodings_equal_prost() {
        for meta in metas() {
            assert_eq!(
                meta.encode_app_meta(),
                meta.to_proto(0).encode_to_vec(),
                "{meta:?}"
            );
            assert_eq!(
                meta.app_fields_len(3) + meta.source_fields_len(),
                meta.to_proto(3).encode_to_vec().len()
            );
            let b = block(meta.clone());
            let mut out = vec![0xaa; 3];
            b.encode_metadata(11, 22, &mut out);
            let message = &out[3..];
            let mut sealed = b.metadata(11, 22);
            let unsealed = sealed.encode_to_vec();
            sealed.meta_crc32c = Some(crate::checksum::crc32c_append(0, &unsealed));
            // The checksum is the last field even where a field numbered
            // above it (13, the source's app hash) is set, so the bytes are
            // prost's without it, then the checksum field; decoded, the same.
            assert_eq!(message[..unsealed.len()], unsealed);
            assert_eq!(message.len(), unsealed.len() + 5);
            assert_eq!(proto::BlockMetadata::decode(message).unwrap(), sealed);
            let decoded = proto::BlockMetadata::decode(message).unwrap();
            assert_eq!(
                check_metadata_checksum(message, &decoded),
                MetaChecksum::Valid
            );
            let mut out = Vec::new();
            b.encode_frame(&mut out);
            let records: Vec<u8> = b.encoded().flatten().copied().collect();
            let crc = crate::checksum::crc32c_append(0, &records);
            let expected = proto::BlockFrame {
                height: b.height(),
                meta: Some(b.metadata(b.encoded_len() as u64, crc)),
                records: b.encoded().flatten().copied().collect(),
            };
            assert_eq!(out, expected.encode_to_vec());
            assert_eq!(
                BlockMeta::decode_app_meta(3, &meta.encode_app_meta()).unwrap(),
                meta
            );
        }
    }
}
