//! The file streamer as an application gets it: from the registry of the
//! `statestream` facade, configured in app.toml, delivered by the manager.

use statestream::BlockMeta;
use statestream_file::{BlockDir, ReadOptions};
use statestream_store::StoreKey;

#[test]
fn file_streamers_side_by_side_through_the_registry() {
    let home = tempfile::tempdir().unwrap();
    let text = r#"
[store]
streamers = ["file", "second"]

[streamers.file]
keys = ["*"]
delivery = "sync"

[streamers.second]
type = "file"
keys = ["bank"]
write_dir = "out"
prefix = "bank"
output-metadata = false
"#;
    let config =
        statestream_config::AppConfig::parse(text, std::path::Path::new("app.toml")).unwrap();
    let stores: Vec<StoreKey> = ["acc", "bank", "gov"]
        .iter()
        .map(|s| StoreKey::new(s).unwrap())
        .collect();
    let names_: Vec<&str> = stores.iter().map(|s| s.name()).collect();
    let specs = config.resolve(&names_).unwrap();
    let registry = statestream::Registry::with_builtins();
    let mut store = statestream_store::MultiStore::in_memory(&stores).unwrap();
    let mut manager = statestream::DeliveryManager::builder()
        .configured(&specs, &registry, home.path())
        .start(&mut store)
        .unwrap();
    for h in 1..=3u64 {
        statestream_store::KvStore::set(&mut store, &stores[1], b"k", &h.to_be_bytes()).unwrap();
        let meta = BlockMeta {
            time_seconds: 1_700_000_000 + h as i64,
            ..BlockMeta::default()
        };
        manager.commit(&mut store, meta).unwrap();
    }
    manager.close(&mut store).unwrap();
    let all = BlockDir::open(
        &home.path().join("data/streaming"),
        "",
        ReadOptions::default(),
    )
    .unwrap();
    assert_eq!(all.heights().unwrap(), [1, 2, 3]);
    assert_eq!(
        all.open_block(3).unwrap().meta().unwrap().time_seconds,
        1_700_000_003
    );
    let bank = BlockDir::open(&home.path().join("out"), "bank", ReadOptions::default()).unwrap();
    assert_eq!(bank.heights().unwrap(), [1, 2, 3]);
    let block = bank.open_block(2).unwrap();
    assert!(block.meta().is_none());
    let recs: Vec<_> = block
        .records()
        .map(|r| r.unwrap().store.to_string())
        .collect();
    assert_eq!(recs, ["bank"]);
}
