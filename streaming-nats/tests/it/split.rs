//! Blocks bigger than the server's max_payload are split into parts and
//! put back together by the reader.

use statestream_nats::{StreamReader, replay_stream};
use statestream_store::{KvStore, StoreKey};

use crate::{
    app_toml, assert_every_message_whole, commit_block, manager, memory_store, raw_messages,
    server, wait_delivered,
};

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

/// Commits blocks `1..=last` into a fresh store through a manager on
/// `toml`, block 5 big enough to be split on a 64 KiB server, and closes
/// the manager once they are delivered. The same blocks each time: a node
/// that runs the chain again.
fn run_node(toml: &str, last: u64) -> anyhow::Result<statestream_store::MultiStore> {
    let mut store = memory_store();
    let mut m = manager(&mut store, toml)?;
    let bank = StoreKey::new("bank")?;
    for b in 1..=last {
        if b == 5 {
            for i in 0..30u32 {
                let value: Vec<u8> = (0..6000u32).map(|j| (i * 13 + j * 7) as u8).collect();
                store.set(&bank, format!("big-{i:02}").as_bytes(), &value)?;
            }
        }
        commit_block(&mut m, &mut store, b)?;
    }
    wait_delivered(&m, last);
    m.close(&mut store)?;
    Ok(store)
}

#[test]
fn split_block_with_a_lost_middle_part_is_published_again() -> anyhow::Result<()> {
    // A split block whose last part is stored but whose middle part is
    // not (here deleted through the JetStream API) is not complete: the
    // streamer, started again on the same blocks, publishes the missing
    // part before the next block, and the reader returns every block.
    let Some(server) = server::start_with(
        "split_block_with_a_lost_middle_part_is_published_again",
        Some(64 * 1024),
    ) else {
        return Ok(());
    };
    let toml = app_toml(&server.url(), "");
    run_node(&toml, 5)?;
    let client = server.client();
    let raw = raw_messages(&client, "statestream", "statestream");
    let parts: Vec<_> = raw.iter().filter(|r| r.height == 5).collect();
    let n = parts.len();
    assert!(n >= 3, "block 5 in {n} parts");
    assert_eq!(raw.last().map(|r| r.height), Some(5));
    let last_seq = raw.last().map(|r| r.seq).unwrap_or_default();
    let middle = parts[n / 2].clone();
    assert!(client.delete_message("statestream", middle.seq)?);

    // The node runs again from an older state: blocks 1 to 7.
    let store = run_node(&toml, 7)?;
    let frames = assert_every_message_whole(&client, "statestream", "statestream");
    assert_eq!(
        frames.keys().copied().collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    let raw = raw_messages(&client, "statestream", "statestream");
    // The lost part was published again, once, before block 6; the parts
    // the stream held were not. JetStream still remembers the deleted
    // message's id (its duplicate window), so the part has an id of its
    // own.
    let again: Vec<_> = raw
        .iter()
        .filter(|r| r.height == 5 && r.seq > last_seq)
        .collect();
    assert_eq!(
        again.len(),
        1,
        "block 5's messages after the deletion: {again:?}"
    );
    assert_eq!(again[0].part, middle.part);
    assert_eq!(
        again[0].msg_id,
        format!("{}-again-{last_seq}", middle.msg_id)
    );
    assert_eq!(again[0].len, middle.len);
    let first_of_6 = raw.iter().find(|r| r.height == 6).expect("block 6");
    assert!(again[0].seq < first_of_6.seq);

    let blocks: Vec<_> = StreamReader::open(&server.reader_config("statestream", "statestream"))?
        .collect::<Result<_, _>>()?;
    assert_eq!(
        blocks.iter().map(|b| b.height).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert_eq!(blocks[4].parts, n as u64);
    let replay = replay_stream(&server.reader_config("statestream", "statestream"))?;
    assert_eq!(replay.app_hash, store.last_commit().app_hash);
    Ok(())
}
