//! Tests of the NATS JetStream streamer against a real `nats-server -js`.

mod cluster;
mod config;
mod delivery;
mod faults;
mod follow;
mod reader;
mod security;
mod server;
mod split;

use std::time::Duration;

use statestream::{BlockMeta, DeliveryManager, Registry};
use statestream_nats::{HEADER_HEIGHT, HEADER_MSG_ID, HEADER_PART};
pub use statestream_test_support::node::{STORES, manager, memory_store, store_keys};
pub use statestream_test_support::wait_for_within;

use crate::server::Js;
use statestream_store::{KvStore, MultiStore};

pub fn registry() -> Registry {
    Registry::with_builtins()
}

/// An app.toml with one nats streamer; `extra` lines go in its table.
pub fn app_toml(url: &str, extra: &str) -> String {
    format!(
        "[store]\nstreamers = [\"nats\"]\n\n[streamers.nats]\ntype = \"nats\"\nkeys = [\"*\"]\n\
         url = \"{url}\"\nconnect_timeout_ms = 1000\nrequest_timeout_ms = 3000\n{extra}\n"
    )
}

/// Writes block `b`'s changes: sets and deletes over the three stores,
/// some through (nested) cache layers, values of varied sizes.
pub fn write_block(store: &mut MultiStore, b: u64) -> statestream_store::Result<()> {
    let keys = store_keys();
    let (acc, bank, gov) = (&keys[0], &keys[1], &keys[2]);
    store.set(bank, format!("acct-{}", b % 7).as_bytes(), &b.to_be_bytes())?;
    store.set(
        acc,
        format!("k{b:04}").as_bytes(),
        &vec![b as u8; (b as usize * 37) % 300 + 1],
    )?;
    if b.is_multiple_of(3) {
        store.delete(bank, format!("acct-{}", (b + 3) % 7).as_bytes())?;
        store.delete(acc, format!("k{:04}", b / 2).as_bytes())?;
    }
    if b.is_multiple_of(2) {
        let mut tx = store.cache();
        tx.set(gov, format!("prop-{}", b % 5).as_bytes(), b"vote")?;
        {
            let mut inner = tx.cache();
            inner.set(gov, b"params", &b.to_le_bytes())?;
            inner.write()?;
        }
        tx.write()?;
    }
    if b.is_multiple_of(5) {
        // A dropped cache is never seen.
        let mut tx = store.cache();
        tx.set(bank, b"never", b"seen")?;
        drop(tx);
    }
    Ok(())
}

pub fn commit_block(
    manager: &mut DeliveryManager,
    store: &mut MultiStore,
    b: u64,
) -> statestream::Result<statestream_store::CommitInfo> {
    write_block(store, b)?;
    manager.commit(
        store,
        BlockMeta {
            time_seconds: 1_700_000_000 + b as i64,
            ..BlockMeta::default()
        },
    )
}

/// Waits until the manager's only streamer delivered `height`.
pub fn wait_delivered(manager: &DeliveryManager, height: u64) {
    wait_for_within(
        &format!("delivery of block {height}"),
        Duration::from_secs(90),
        || manager.stats()[0].delivered_height >= height,
    );
}

/// One stored message, as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw {
    pub seq: u64,
    pub height: u64,
    pub msg_id: String,
    pub part: Option<String>,
    pub expected_stream: Option<String>,
    pub len: usize,
}

/// Every message of the stream on `<subject>.blocks`, in stream order.
pub fn raw_messages(client: &Js, stream: &str, subject: &str) -> Vec<Raw> {
    let subject = format!("{subject}.blocks");
    let mut out = Vec::new();
    let mut seq = 1;
    while let Some(m) = client
        .message(stream, seq, &subject)
        .expect("read a stored message")
    {
        seq = m.sequence + 1;
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_string());
        out.push(Raw {
            seq: m.sequence,
            height: header(HEADER_HEIGHT)
                .expect("height header")
                .parse()
                .expect("numeric height"),
            msg_id: header(HEADER_MSG_ID).expect("msg id header"),
            part: header(HEADER_PART),
            expected_stream: header("Nats-Expected-Stream"),
            len: m.payload.len(),
        });
    }
    out
}

/// Checks every message on `<subject>.blocks` of `stream` on its own (the
/// reader skips a message whose height it already returned, so it would
/// not see a broken copy): each unsplit message, and each split block's
/// parts put together, decodes as the block its height header names, with
/// records that match the metadata. Returns the frames by height (the
/// last copy of each).
pub fn assert_every_message_whole(
    client: &Js,
    stream: &str,
    subject: &str,
) -> std::collections::BTreeMap<u64, statestream_core::proto::BlockFrame> {
    use std::collections::BTreeMap;
    let subject = format!("{subject}.blocks");
    let mut frames = BTreeMap::new();
    // (height, parts) -> part number -> payload
    let mut parts: BTreeMap<(u64, u64), BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    let mut seq = 1;
    while let Some(m) = client
        .message(stream, seq, &subject)
        .expect("read a stored message")
    {
        seq = m.sequence + 1;
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_string());
        let height: u64 = header(HEADER_HEIGHT)
            .expect("height header")
            .parse()
            .expect("numeric height");
        match header(HEADER_PART) {
            None => {
                let frame = decode_checked(height, &m.payload)
                    .unwrap_or_else(|e| panic!("message {} (block {height}): {e}", m.sequence));
                frames.insert(height, frame);
            }
            Some(p) => {
                let (i, n) = p.split_once('/').expect("i/n");
                let (i, n): (u64, u64) = (i.parse().expect("i"), n.parse().expect("n"));
                parts
                    .entry((height, n))
                    .or_default()
                    .insert(i, m.payload.to_vec());
            }
        }
    }
    for ((height, n), have) in parts {
        assert_eq!(
            have.keys().copied().collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>(),
            "parts of block {height} in the stream"
        );
        let data: Vec<u8> = have.into_values().flatten().collect();
        let frame = decode_checked(height, &data)
            .unwrap_or_else(|e| panic!("block {height}, {n} parts put together: {e}"));
        frames.insert(height, frame);
    }
    frames
}

/// Decodes a block frame and checks its height and records.
fn decode_checked(height: u64, data: &[u8]) -> Result<statestream_core::proto::BlockFrame, String> {
    use prost::Message as _;
    if data.is_empty() {
        return Err("an empty payload".into());
    }
    let frame = statestream_core::proto::BlockFrame::decode(data)
        .map_err(|e| format!("{} bytes that do not decode as a frame: {e}", data.len()))?;
    if frame.height != height {
        return Err(format!("the frame says block {}", frame.height));
    }
    let meta = frame.meta.as_ref().ok_or("the frame has no metadata")?;
    if meta.data_length != frame.records.len() as u64
        || meta.data_crc32c != statestream_core::crc32c_append(0, &frame.records)
    {
        return Err("the records do not match the metadata's length and CRC-32C".into());
    }
    Ok(frame)
}

/// Checks that the stream holds exactly one message per block 1..=n, in
/// order, and nothing else.
pub fn assert_exactly_once(client: &Js, stream: &str, n: u64) {
    let raw = raw_messages(client, stream, "statestream");
    let heights: Vec<u64> = raw.iter().map(|r| r.height).collect();
    assert_eq!(
        heights,
        (1..=n).collect::<Vec<_>>(),
        "heights in the stream"
    );
    for r in &raw {
        assert_eq!(r.msg_id, format!("{stream}-{}", r.height));
        assert_eq!(r.part, None);
    }
    let info = client
        .stream_info(stream)
        .expect("stream info")
        .expect("the stream exists");
    assert_eq!(info.state.messages, n, "JetStream's message count");
    // Every message carries the stream it was meant for.
    assert!(
        raw.iter()
            .all(|r| r.expected_stream.as_deref() == Some(stream)),
        "Nats-Expected-Stream headers: {raw:?}"
    );
}
