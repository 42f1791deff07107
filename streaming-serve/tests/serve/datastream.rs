//! `datastream.DataService`, from a client generated from the datastream
//! proto.

use statestream_serve::DELETED;
use statestream_serve::proto::datastream::{
    Data, DataRequest, ListCapabilitiesRequest, data_service_client::DataServiceClient,
};

use crate::util::*;

#[test]
fn capabilities_sync_and_subscribe_follow_the_documented_mapping() {
    let mut node = Node::in_memory("value_types = { a = \"json\" }");
    for _ in 0..12 {
        node.commit();
    }
    let rt = runtime();
    let address = node.address();
    let snapshot_state = node.state();
    let (caps, synced, bad) = rt.block_on({
        let address = address.clone();
        async move {
            let mut d = DataServiceClient::connect(address).await.unwrap();
            let caps = d
                .list_capabilities(ListCapabilitiesRequest {})
                .await
                .unwrap()
                .into_inner();
            let synced = d
                .sync(DataRequest {
                    keys: vec!["a".into(), "b/k0*".into(), "c/k001".into()],
                })
                .await
                .unwrap()
                .into_inner();
            let bad = d
                .sync(DataRequest {
                    keys: vec!["nope/x".into()],
                })
                .await
                .unwrap_err();
            (caps, synced, bad)
        }
    });
    let caps: Vec<_> = caps
        .capabilities
        .iter()
        .map(|c| (c.key.as_str(), c.value_type.as_str()))
        .collect();
    assert_eq!(caps, vec![("a", "json"), ("b", "bytes"), ("c", "bytes")]);
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("\"nope\""), "{}", bad.message());
    let expected: std::collections::BTreeMap<String, Vec<u8>> = snapshot_state
        .iter()
        .filter(|((s, k), _)| {
            s == "a" || (s == "b" && k.starts_with(b"k0")) || (s == "c" && k == b"k001")
        })
        .map(|((s, k), v)| (format!("{s}/{}", String::from_utf8_lossy(k)), v.clone()))
        .collect();
    let got: std::collections::BTreeMap<String, Vec<u8>> = synced
        .data
        .iter()
        .map(|(k, d)| {
            assert_eq!(k, &d.key);
            assert_eq!(
                d.updated_at.as_ref().unwrap().seconds,
                1_700_000_000 + 12,
                "the time of the snapshot's block"
            );
            (k.clone(), d.value.clone())
        })
        .collect();
    assert_eq!(got, expected);
    for (k, d) in &synced.data {
        let expected = if k.starts_with("a/") { "json" } else { "bytes" };
        assert_eq!(d.value_type, expected, "{k}");
    }

    // Subscribe: the current state, then one response per block that
    // changed a requested key.
    let task = rt.spawn(async move {
        let mut d = DataServiceClient::connect(address).await.unwrap();
        let mut stream = d
            .subscribe(DataRequest { keys: vec![] })
            .await
            .unwrap()
            .into_inner();
        let mut state = std::collections::BTreeMap::new();
        let first = stream.message().await.unwrap().unwrap();
        for (k, d) in first.data {
            state.insert(k, d.value);
        }
        let mut updates = Vec::new();
        let mut deletes = 0;
        while updates.len() < 8 {
            let r = stream.message().await.unwrap().unwrap();
            let mut seconds = None;
            for (k, d) in r.data {
                let t = d.updated_at.unwrap().seconds;
                assert!(seconds.is_none_or(|s| s == t), "one block per response");
                seconds = Some(t);
                if d.value_type == DELETED {
                    assert!(d.value.is_empty());
                    deletes += 1;
                    state.remove(&k);
                } else {
                    state.insert(k, d.value);
                }
            }
            updates.push(seconds.unwrap() - 1_700_000_000);
        }
        (state, updates, deletes)
    });
    // Blocks go on until the subscriber has its eight updates, however
    // late its request arrives: one overall deadline, not a fixed count.
    let deadline = std::time::Instant::now() + statestream_test_support::PATIENCE;
    while !task.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for eight datastream updates"
        );
        node.commit();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (state, updates, deletes) = rt.block_on(task).unwrap();
    assert!(deletes > 0);
    let last = *updates.last().unwrap() as u64;
    // Blocks in order, none repeated.
    assert!(updates.windows(2).all(|w| w[0] < w[1]), "{updates:?}");
    // The state after block `last`, rebuilt from the stream, is the
    // store's: replay the log to `last`.
    let mut expected: std::collections::BTreeMap<String, Vec<u8>> = snapshot_state
        .iter()
        .map(|((s, k), v)| (format!("{s}/{}", String::from_utf8_lossy(k)), v.clone()))
        .collect();
    for h in 13..=last {
        for (s, k, v) in node.changes(h) {
            let key = format!("{s}/{}", String::from_utf8_lossy(&k));
            match v {
                Some(v) => expected.insert(key, v),
                None => expected.remove(&key),
            };
        }
    }
    assert_eq!(state, expected);
    node.close();
}

#[test]
fn binary_keys_are_hex_both_ways() {
    let mut node = Node::in_memory("push_updates = true");
    node.commit();
    let rt = runtime();
    let address = node.address();
    let push = rt.spawn(async move {
        let mut d = DataServiceClient::connect(address.clone()).await.unwrap();
        d.push_update(Data {
            key: "c/0xff00".into(),
            value: b"bin".to_vec(),
            value_type: "bytes".into(),
            updated_at: None,
        })
        .await
        .unwrap();
        d.sync(DataRequest {
            keys: vec!["c/0xff00".into()],
        })
        .await
        .unwrap()
        .into_inner()
    });
    while !push.is_finished() {
        node.commit();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let synced = rt.block_on(push).unwrap();
    assert_eq!(synced.data["c/0xff00"].value, b"bin");
    node.close();
}
