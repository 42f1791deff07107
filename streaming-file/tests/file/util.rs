//! Shared helpers: a deterministic workload, streamers in a temp dir.

use std::path::Path;
use std::sync::Arc;

use statestream::{Block, BlockMeta, StoreSelection, Streamer, StreamerContext, Tx};
use statestream_config::StreamerOptions;
use statestream_file::{BlockDir, FileStreamer, FileStreamerConfig, ReadOptions};
use statestream_store::{CommitInput, KvStore, MultiStore, StoreKey};

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
    }
}

/// `n` deterministic blocks over [`store_keys`]: sets and deletes in every
/// store, and an empty block at height 3.
pub fn blocks(n: u64) -> Vec<Block> {
    blocks_over(&store_keys(), n)
}

/// Like [`blocks`], for all of `stores` selected.
pub fn blocks_over(stores: &[StoreKey], n: u64) -> Vec<Block> {
    let mut store = MultiStore::in_memory(stores).expect("in-memory store");
    let selection = StoreSelection::all(stores);
    let mut out = Vec::new();
    for h in 1..=n {
        if h != 3 {
            for (i, s) in stores.iter().enumerate() {
                for k in 0..(2 + i as u64) {
                    let key = format!("key-{k:02}");
                    let value = format!("{}-{h}-{k}", s.name());
                    store.set(s, key.as_bytes(), value.as_bytes()).expect("set");
                }
                if h > 1 {
                    store.delete(s, b"key-00").expect("delete");
                }
            }
        }
        let meta = block_meta(h);
        let changes = store
            .commit_block(CommitInput::new().app_meta(meta.encode_app_meta()))
            .expect("commit");
        out.push(Block::new(changes, Arc::new(meta), &selection));
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
        options: &options,
        home: Path::new("/nonexistent-home"),
    };
    config.build(&ctx)
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
                "key": statestream_store::to_hex(r.key),
                "value": r.value.map(statestream_store::to_hex),
            }));
        }
    }
    out
}
