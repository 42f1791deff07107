//! Shared helpers: a deterministic workload, streamers in a temp dir.

use std::path::Path;
use std::sync::Arc;

use statestream_config::StreamerOptions;
use statestream_core::{
    Block, BlockMeta, ChangeSet, StoreChanges, StoreKey, StoreSelection, Streamer, StreamerContext,
    Tx, ZERO_HASH,
};
use statestream_file::{BlockDir, FileStreamer, FileStreamerConfig, ReadOptions};

/// The stores of the workload, in name order.
pub fn store_keys() -> Vec<StoreKey> {
    ["acc", "bank", "gov"]
        .iter()
        .map(|s| StoreKey::new(s).expect("valid store name"))
        .collect()
}

/// The metadata the workload gives block `height`.
pub fn block_meta(height: u64) -> BlockMeta {
    BlockMeta {
        time_seconds: 1_700_000_000 + height as i64,
        time_nanos: 1000 * height as u32,
        begin_block: format!("begin {height}").into_bytes(),
        end_block: format!("end {height}").into_bytes(),
        txs: vec![Tx {
            request: format!("tx {height}").into_bytes(),
            response: b"ok".to_vec(),
        }],
        ..BlockMeta::default()
    }
}

/// `n` deterministic blocks over [`store_keys`]: sets and deletes in every
/// store, and an empty block at height 3.
pub fn blocks(n: u64) -> Vec<Block> {
    blocks_over(&store_keys(), n)
}

/// Like [`blocks`], for all of `stores` selected. The change sets are
/// sealed as the store seals them (hash chains, app hash), without a store.
pub fn blocks_over(stores: &[StoreKey], n: u64) -> Vec<Block> {
    let selection = StoreSelection::all(stores);
    let mut hashes = vec![ZERO_HASH; stores.len()];
    let mut out = Vec::new();
    for h in 1..=n {
        let mut changes = Vec::with_capacity(stores.len());
        for (i, s) in stores.iter().enumerate() {
            let mut c = StoreChanges::new(s.clone());
            if h != 3 {
                // Every block sets key-00..key-(1+i) and then deletes
                // key-00 (from block 2 on): the net change per key.
                for k in 0..(2 + i as u64) {
                    let key = format!("key-{k:02}");
                    let value = format!("{}-{h}-{k}", s.name());
                    if k == 0 && h > 1 {
                        c.push(key.as_bytes(), None, false);
                    } else {
                        c.push(key.as_bytes(), Some(value.as_bytes()), h == 1);
                    }
                }
            }
            changes.push(c);
        }
        let meta = block_meta(h);
        let cs = ChangeSet::seal(h, meta.encode_app_meta(), changes, &hashes);
        hashes = cs.stores().iter().map(|s| *s.hash()).collect();
        out.push(Block::new(Arc::new(cs), Arc::new(meta), &selection));
    }
    out
}

/// Builds a file streamer writing to `dir` (absolute) with `config`'s other
/// options.
pub fn streamer(dir: &Path, config: FileStreamerConfig) -> FileStreamer {
    try_streamer(dir, config).expect("streamer builds")
}

pub fn try_streamer(
    dir: &Path,
    mut config: FileStreamerConfig,
) -> Result<FileStreamer, statestream_file::Error> {
    config.write_dir = dir.to_path_buf();
    let options = StreamerOptions::default();
    let stores = store_keys();
    let ctx = StreamerContext {
        name: "file",
        stores: &stores,
        all_stores: &stores,
        home: Path::new("/nonexistent-home"),
        reader: None,
        shutdown: &statestream_core::Shutdown::default(),
        push: None,
    };
    config.build(&ctx, &options)
}

pub fn with_prefix(prefix: &str) -> FileStreamerConfig {
    FileStreamerConfig {
        prefix: prefix.to_string(),
        ..FileStreamerConfig::default()
    }
}

/// Writes `blocks` to `dir` with `prefix`.
pub fn write_blocks(dir: &Path, prefix: &str, blocks: &[Block]) {
    let mut s = streamer(dir, with_prefix(prefix));
    for b in blocks {
        s.on_block(b).expect("block written");
    }
}

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    v.sort();
    v
}

/// Every record of every block of `dir`/`prefix`, as the Python reader prints
/// them.
pub fn records_json(dir: &Path, prefix: &str, options: ReadOptions) -> Vec<serde_json::Value> {
    let bd = BlockDir::open(dir, prefix, options).expect("dir opens");
    let mut out = Vec::new();
    for h in bd.heights().expect("heights") {
        let file = bd.open_block(h).expect("block opens");
        for r in file.records() {
            let r = r.expect("record decodes");
            out.push(serde_json::json!({
                "height": h,
                "store": r.store,
                "delete": r.is_delete(),
                "key": statestream_core::to_hex(r.key),
                "value": r.value.map(statestream_core::to_hex),
            }));
        }
    }
    out
}
