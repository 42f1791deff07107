//! Blocks bigger than the server's max_payload are split into parts and
//! put back together by the reader.

use statestream_nats::{StreamReader, replay_stream};
use statestream_store::{KvStore, StoreKey};

use crate::{app_toml, commit_block, manager, memory_store, raw_messages, server, wait_delivered};

#[test]
fn split_large_block_is_split_and_reassembled() -> anyhow::Result<()> {
    let Some(server) = server::start_with(
        "split_large_block_is_split_and_reassembled",
        Some(64 * 1024),
    ) else {
        return Ok(());
    };
    let mut store = memory_store();
    let mut m = manager(&mut store, &app_toml(&server.url(), ""))?;
    assert_eq!(server.client().max_payload(), 64 * 1024);
    let bank = StoreKey::new("bank")?;
    for b in 1..=24 {
        if b == 5 || b == 17 {
            // About 300 KiB of records: five parts or more.
            for i in 0..50u32 {
                let value: Vec<u8> = (0..6000u32)
                    .map(|j| (i * 31 + j * 7 + b as u32) as u8)
                    .collect();
                store.set(&bank, format!("big-{b}-{i:02}").as_bytes(), &value)?;
            }
        }
        commit_block(&mut m, &mut store, b)?;
    }
    wait_delivered(&m, 24);
    m.close(&mut store)?;

    let client = server.client();
    let raw = raw_messages(&client, "statestream", "statestream");
    for big in [5u64, 17] {
        let parts: Vec<_> = raw.iter().filter(|r| r.height == big).collect();
        assert!(parts.len() >= 5, "block {big} in {} parts", parts.len());
        let n = parts.len();
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.part.as_deref(), Some(format!("{}/{n}", i + 1).as_str()));
            assert_eq!(p.msg_id, format!("statestream-{big}-{}", i + 1));
            assert!(p.len <= 64 * 1024);
        }
    }
    // Every other block is one message; heights stay in order.
    let mut heights: Vec<u64> = raw.iter().map(|r| r.height).collect();
    assert!(heights.windows(2).all(|w| w[0] <= w[1]));
    heights.dedup();
    assert_eq!(heights, (1..=24).collect::<Vec<_>>());
    assert_eq!(
        raw.iter().filter(|r| r.part.is_none()).count(),
        22,
        "unsplit blocks"
    );

    let blocks: Vec<_> = StreamReader::open(&server.reader_config("statestream", "statestream"))?
        .collect::<Result<_, _>>()?;
    assert_eq!(
        blocks.iter().map(|b| b.height).collect::<Vec<_>>(),
        (1..=24).collect::<Vec<_>>()
    );
    assert!(blocks[4].parts >= 5);
    assert!(blocks[4].frame.records.len() > 300_000);

    let replay = replay_stream(&server.reader_config("statestream", "statestream"))?;
    assert_eq!(replay.height, 24);
    assert_eq!(replay.app_hash, store.last_commit().app_hash);
    assert_eq!(
        replay.get("bank", b"big-17-49").map(<[u8]>::to_vec),
        store.get(&bank, b"big-17-49")?
    );
    Ok(())
}
