use std::sync::Arc;

use prost::Message;
use statestream_store::{ChangeSet, CommitInfo, Record, StoreChanges, StoreKey};

use crate::error::{Error, Result};
use crate::proto;

/// One transaction of a block: opaque request and response bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tx {
    pub request: Vec<u8>,
    pub response: Vec<u8>,
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
}

impl BlockMeta {
    /// The bytes stored in the change log: a `BlockMetadata` message with
    /// only the application's fields set.
    pub fn encode_app_meta(&self) -> Vec<u8> {
        self.to_proto(0).encode_to_vec()
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
            ..Default::default()
        }
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
    /// A view of `changes` for the stores in `selection`.
    pub fn new(changes: Arc<ChangeSet>, meta: Arc<BlockMeta>, selection: &StoreSelection) -> Block {
        Block {
            changes,
            meta,
            selected: Arc::clone(&selection.indices),
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

    /// The `BlockMetadata` message for this block, with the payload's length
    /// and CRC-32C as given.
    pub fn metadata(&self, data_length: u64, data_crc32c: u32) -> proto::BlockMetadata {
        let info = self.commit_info();
        let mut m = self.meta.to_proto(self.height());
        m.commit = Some(proto::CommitInfo {
            version: info.version,
            app_hash: info.app_hash.to_vec(),
        });
        m.store_hashes = self
            .changes
            .stores()
            .iter()
            .map(|s| proto::StoreHash {
                store_key: s.store().name().to_string(),
                hash: s.hash().to_vec(),
            })
            .collect();
        m.streamed_stores = self
            .stores()
            .map(|s| s.store().name().to_string())
            .collect();
        m.data_length = data_length;
        m.data_crc32c = data_crc32c;
        m
    }

    /// The block as one protobuf `BlockFrame` (the plugin protocol's block
    /// frame), without its length prefix. The records field is written
    /// straight from the shared change set.
    pub fn encode_frame(&self, out: &mut Vec<u8>) {
        let len = self.encoded_len();
        let mut crc = 0u32;
        for seg in self.encoded() {
            crc = crc32c_append(crc, seg);
        }
        let meta = self.metadata(len as u64, crc);
        let frame_head = proto::BlockFrame {
            height: self.height(),
            meta: Some(meta),
            records: Vec::new(),
        };
        out.clear();
        frame_head
            .encode(out)
            .expect("a Vec grows as needed, so encoding cannot run out of space");
        if len > 0 {
            // Field 3, wire type 2 (length-delimited).
            out.push(3 << 3 | 2);
            prost::encoding::encode_varint(len as u64, out);
            for seg in self.encoded() {
                out.extend_from_slice(seg);
            }
        }
    }
}

/// CRC-32C (Castagnoli) continued over `data`: the checksum of data-file
/// payloads in meta files and frames.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}
