//! The wire schema: prost's `StoreKVPair` is byte-identical to the store's
//! canonical record encoding, and `Block::encode_frame` is a valid
//! `BlockFrame`.

use std::sync::Arc;

use proptest::prelude::*;
use prost::Message;
use statestream::{Block, StoreSelection, crc32c_append, proto};
use statestream_core::{Records, encode_record};
use statestream_store::{CommitInput, KvStore, MultiStore};
use statestream_tests::{STORES, keys, memory_store, meta_for, workload};

fn record() -> impl Strategy<Value = (String, Vec<u8>, Option<Vec<u8>>)> {
    (
        "[A-Za-z0-9_.-]{1,20}",
        proptest::collection::vec(any::<u8>(), 0..40),
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(Vec::new())),
            3 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Some),
        ],
    )
}

proptest! {
    #[test]
    fn wire_prost_store_kv_pair_equals_the_canonical_encoding(
        recs in proptest::collection::vec(record(), 0..20)
    ) {
        let mut canonical = Vec::new();
        let mut by_prost = Vec::new();
        for (store, key, value) in &recs {
            encode_record(&mut canonical, store, key, value.as_deref());
            let msg = proto::StoreKvPair {
                store_key: store.clone(),
                delete: value.is_none(),
                key: key.clone(),
                value: value.clone().unwrap_or_default(),
            };
            msg.encode_length_delimited(&mut by_prost).unwrap();
        }
        prop_assert_eq!(&canonical, &by_prost);

        // prost decodes the store's bytes back.
        let mut buf = canonical.as_slice();
        for (store, key, value) in &recs {
            let msg = proto::StoreKvPair::decode_length_delimited(&mut buf).unwrap();
            prop_assert_eq!(&msg.store_key, store);
            prop_assert_eq!(&msg.key, key);
            prop_assert_eq!(msg.delete, value.is_none());
            prop_assert_eq!(&msg.value, &value.clone().unwrap_or_default());
        }
        prop_assert!(buf.is_empty());

        // And the store decodes prost's bytes back.
        let back: Vec<_> = Records::new(&by_prost)
            .map(|r| r.map(|r| (r.store.to_string(), r.key.to_vec(), r.value.map(<[u8]>::to_vec))))
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(back, recs);
    }
}

#[test]
fn wire_crc32c_is_castagnoli() {
    // The check value of CRC-32C.
    assert_eq!(crc32c_append(0, b"123456789"), 0xE306_9283);
    assert_eq!(
        crc32c_append(crc32c_append(0, b"1234"), b"56789"),
        0xE306_9283
    );
}

/// Commits blocks 1..=3 and returns block 3's change set.
fn three_blocks(store: &mut MultiStore) -> Arc<statestream_store::ChangeSet> {
    let mut last = None;
    for h in 1..=3 {
        workload(store, h);
        last = Some(
            store
                .commit_block(CommitInput::new().app_meta(meta_for(h).encode_app_meta()))
                .unwrap(),
        );
    }
    last.unwrap()
}

fn check_frame(block: &Block, expect_stores: &[&str]) {
    let mut out = Vec::new();
    block.encode_frame(&mut out);
    let frame = proto::BlockFrame::decode(out.as_slice()).unwrap();
    assert_eq!(frame.height, block.height());

    let concat: Vec<u8> = block.encoded().flat_map(|s| s.iter().copied()).collect();
    assert_eq!(frame.records, concat);
    assert_eq!(concat.len(), block.encoded_len());
    let from_frame: Vec<_> = Records::new(&frame.records)
        .map(|r| r.unwrap())
        .map(|r| {
            (
                r.store.to_string(),
                r.key.to_vec(),
                r.value.map(<[u8]>::to_vec),
            )
        })
        .collect();
    let from_block: Vec<_> = block
        .records()
        .map(|r| {
            (
                r.store.to_string(),
                r.key.to_vec(),
                r.value.map(<[u8]>::to_vec),
            )
        })
        .collect();
    assert_eq!(from_frame, from_block);
    assert!(
        from_block
            .iter()
            .all(|r| expect_stores.contains(&r.0.as_str()))
    );

    let meta = frame.meta.expect("the frame has metadata");
    let info = block.commit_info();
    assert_eq!(meta.height, block.height());
    assert_eq!(
        meta.commit,
        Some(proto::CommitInfo {
            version: info.version,
            app_hash: info.app_hash.to_vec(),
        })
    );
    let hashes: Vec<_> = block
        .change_set()
        .stores()
        .iter()
        .map(|s| (s.store().name().to_string(), s.hash().to_vec()))
        .collect();
    let got: Vec<_> = meta
        .store_hashes
        .iter()
        .map(|h| (h.store_key.clone(), h.hash.clone()))
        .collect();
    assert_eq!(got, hashes, "every store's hash, in name order");
    assert_eq!(
        got.iter().map(|h| h.0.as_str()).collect::<Vec<_>>(),
        STORES,
        "all stores, not only the streamed ones"
    );
    // The app hash is the hash of the store hashes.
    let app = statestream_core::app_hash(
        block
            .change_set()
            .stores()
            .iter()
            .map(|s| (s.store().name(), s.hash())),
    );
    assert_eq!(app, info.app_hash);
    assert_eq!(meta.streamed_stores, expect_stores);
    assert_eq!(meta.data_length, concat.len() as u64);
    assert_eq!(meta.data_crc32c, crc32c_append(0, &concat));
    let app_meta = meta_for(block.height());
    assert_eq!(meta.time_seconds, app_meta.time_seconds);
    assert_eq!(meta.time_nanos, app_meta.time_nanos);
    assert_eq!(meta.begin_block, app_meta.begin_block);
    assert_eq!(meta.end_block, app_meta.end_block);
    let txs: Vec<_> = meta
        .txs
        .iter()
        .map(|t| (t.request.clone(), t.response.clone()))
        .collect();
    let want: Vec<_> = app_meta
        .txs
        .iter()
        .map(|t| (t.request.clone(), t.response.clone()))
        .collect();
    assert_eq!(txs, want);
}

#[test]
fn wire_encode_frame_decodes_as_block_frame() {
    let mut store = memory_store();
    let cs = three_blocks(&mut store);
    let all = store.stores().to_vec();
    for wanted in [&STORES[..], &["bank"], &["acc", "gov"]] {
        let selection = StoreSelection::new(&all, &keys(wanted));
        // Live (metadata as given) and from the change log (decoded).
        let live = Block::new(Arc::clone(&cs), Arc::new(meta_for(3)), &selection);
        check_frame(&live, wanted);
        let logged =
            Block::from_change_set(Arc::new(store.change_log().read(3).unwrap()), &selection)
                .unwrap();
        check_frame(&logged, wanted);
        assert_eq!(logged.meta(), live.meta());
    }
}

#[test]
fn wire_encode_frame_of_a_block_without_records() {
    let mut store = memory_store();
    three_blocks(&mut store);
    let bank = &keys(&["bank"])[0];
    store.set(bank, b"only", b"bank").unwrap();
    let cs = store
        .commit_block(CommitInput::new().app_meta(meta_for(4).encode_app_meta()))
        .unwrap();
    let all = store.stores().to_vec();
    // The streamer only sees `gov`, which has no change in block 4.
    let selection = StoreSelection::new(&all, &keys(&["gov"]));
    let block = Block::new(cs, Arc::new(meta_for(4)), &selection);
    assert_eq!(block.encoded_len(), 0);
    check_frame(&block, &["gov"]);
    let mut out = Vec::new();
    block.encode_frame(&mut out);
    let frame = proto::BlockFrame::decode(out.as_slice()).unwrap();
    assert!(frame.records.is_empty());
    assert_eq!(frame.meta.unwrap().data_crc32c, 0);
}

#[test]
fn wire_encode_frame_reuses_the_buffer() {
    let mut store = memory_store();
    let cs = three_blocks(&mut store);
    let all = store.stores().to_vec();
    let block = Block::new(cs, Arc::new(meta_for(3)), &StoreSelection::all(&all));
    let mut fresh = Vec::new();
    block.encode_frame(&mut fresh);
    let mut reused = b"left over from a previous frame".to_vec();
    block.encode_frame(&mut reused);
    assert_eq!(fresh, reused);
}
