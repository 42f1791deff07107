//! PushUpdate end to end: the application drains the queue between blocks
//! and the pushed write appears in the committing block, in every
//! subscription and in the store.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use statestream::{Block, BlockMeta, Delivery, StreamError, Streamer, StreamerSetup};
use statestream_serve::proto::v1::{self, subscribe_request::Start};
use statestream_store::{KvStore, MultiStore, StoreKey};

use crate::util::*;

#[test]
fn a_pushed_write_is_committed_by_the_application_and_streamed() {
    let mut node = Node::in_memory("push_updates = true");
    node.commit();
    let rt = runtime();
    let address = node.address();
    let task = rt.spawn(async move {
        let mut c = client(&address).await;
        let mut stream = c
            .subscribe(subscribe_request(Start::FromHeight(2)))
            .await
            .unwrap()
            .into_inner();
        let height = c
            .push_update(v1::PushUpdateRequest {
                store: "b".into(),
                key: b"pushed".to_vec(),
                value: b"hello".to_vec(),
                delete: false,
            })
            .await
            .unwrap()
            .into_inner()
            .height;
        let mut r = Received::default();
        read_until(&mut stream, &mut r, height).await;
        let unknown = c
            .push_update(v1::PushUpdateRequest {
                store: "zzz".into(),
                key: b"k".to_vec(),
                value: vec![],
                delete: false,
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
        (height, r)
    });
    while !task.is_finished() {
        node.commit();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (height, received) = rt.block_on(task).unwrap();
    let (_, changes) = received.blocks.iter().find(|(h, _)| *h == height).unwrap();
    assert!(changes.contains(&("b".into(), b"pushed".to_vec(), Some(b"hello".to_vec()))));
    assert!(node.changes(height).contains(&(
        "b".into(),
        b"pushed".to_vec(),
        Some(b"hello".to_vec())
    )));
    assert_eq!(
        node.state()[&("b".to_string(), b"pushed".to_vec())],
        b"hello"
    );
    node.close();
}

#[test]
fn push_update_is_unimplemented_when_off() {
    let node = Node::in_memory("");
    let rt = runtime();
    let address = node.address();
    let status = rt.block_on(async move {
        let mut c = client(&address).await;
        c.push_update(v1::PushUpdateRequest {
            store: "a".into(),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            delete: false,
        })
        .await
        .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(
        status.message().contains("push_updates"),
        "{}",
        status.message()
    );
    node.close();
}

fn push_request(store: &str, key: String, size: usize) -> v1::PushUpdateRequest {
    v1::PushUpdateRequest {
        store: store.into(),
        value: vec![b'v'; size - key.len()],
        key: key.into_bytes(),
        delete: false,
    }
}

#[test]
fn push_oversized_writes_are_refused_with_their_codes() {
    let mut node =
        Node::in_memory("push_updates = true\nmax_push_value_bytes = 1024\nmax_push_bytes = 4096");
    node.commit();
    let rt = runtime();
    let address = node.address();
    // One write over max_push_value_bytes: INVALID_ARGUMENT, naming it.
    let too_large = rt.block_on({
        let address = address.clone();
        async move {
            client(&address)
                .await
                .push_update(push_request("b", "big".into(), 1025))
                .await
                .unwrap_err()
        }
    });
    assert_eq!(too_large.code(), tonic::Code::InvalidArgument);
    assert!(
        too_large.message().contains("max_push_value_bytes"),
        "{}",
        too_large.message()
    );
    // Four writes of 1024 bytes fill max_push_bytes while no block drains
    // them; one byte more is RESOURCE_EXHAUSTED.
    let waiting = rt.spawn({
        let address = address.clone();
        async move {
            let c = client(&address).await;
            futures_util::future::join_all((0..4).map(|i| {
                let mut c = c.clone();
                async move {
                    c.push_update(push_request("b", format!("q/{i}"), 1024))
                        .await
                        .map(|r| r.into_inner().height)
                }
            }))
            .await
        }
    });
    wait_for("four pushed writes queued", || node.push.len() == 4);
    assert_eq!(node.push.bytes(), 4096);
    let full = rt.block_on(async move {
        client(&address)
            .await
            .push_update(push_request("b", "x".into(), 1))
            .await
            .unwrap_err()
    });
    assert_eq!(full.code(), tonic::Code::ResourceExhausted);
    assert!(
        full.message().contains("max_push_bytes"),
        "{}",
        full.message()
    );
    let mut heights = Vec::new();
    while !waiting.is_finished() {
        heights.push(node.commit());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for r in rt.block_on(waiting).unwrap() {
        let height = r.expect("a queued write is committed once a block drains it");
        assert!(heights.contains(&height), "{height} not in {heights:?}");
    }
    node.close();
}

#[test]
fn push_a_burst_larger_than_one_block_is_committed_over_several_blocks() {
    // Five of 1 MiB: two blocks' worth, and little memory (the other tests
    // of this binary measure the process's RSS).
    const WRITES: usize = 5;
    const SIZE: usize = 1 << 20;
    let mut node = Node::in_memory("push_updates = true");
    node.commit();
    let rt = runtime();
    let address = node.address();
    let burst = rt.spawn(async move {
        let c = client(&address).await;
        futures_util::future::join_all((0..WRITES).map(|i| {
            let mut c = c.clone();
            async move {
                let key = format!("burst/{i:02}");
                let height = c
                    .push_update(push_request("c", key.clone(), SIZE))
                    .await
                    .map(|r| r.into_inner().height);
                (key, height)
            }
        }))
        .await
    });
    // Every write waits before the first block drains any.
    wait_for("the burst queued", || node.push.len() == WRITES);
    while !burst.is_finished() {
        node.commit();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut heights = std::collections::BTreeSet::new();
    for (key, height) in rt.block_on(burst).unwrap() {
        let height = height.unwrap_or_else(|e| panic!("{key} was refused: {e}"));
        assert!(
            node.changes(height).iter().any(|(s, k, v)| s == "c"
                && *k == key.as_bytes()
                && v.as_ref().map(Vec::len) == Some(SIZE - key.len())),
            "block {height} does not hold {key}"
        );
        heights.insert(height);
    }
    assert!(
        heights.len() >= (WRITES * SIZE).div_ceil(statestream_core::PUSH_BLOCK_BYTES),
        "{WRITES} writes of {SIZE} bytes in blocks {heights:?}"
    );
    for &height in &heights {
        let pushed: usize = node
            .changes(height)
            .iter()
            .filter(|(_, k, _)| k.starts_with(b"burst/"))
            .map(|(_, k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        assert!(
            pushed <= statestream_core::PUSH_BLOCK_BYTES,
            "block {height} carries {pushed} pushed bytes"
        );
    }
    node.close();
}

/// A sync streamer that fails every block once `fail` is set.
struct Fragile(Arc<AtomicBool>);

impl Streamer for Fragile {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        if self.0.load(Ordering::SeqCst) {
            return Err(StreamError::msg(format!(
                "refused block {}",
                block.height()
            )));
        }
        Ok(())
    }
}

#[test]
fn push_a_write_committed_in_a_block_that_halts_the_node_is_answered_with_its_height() {
    let fail = Arc::new(AtomicBool::new(false));
    let mut store = MultiStore::in_memory(&keys()).unwrap();
    let fragile = StreamerSetup::new("fragile", &keys())
        .delivery(Delivery::Sync)
        .stop_node_on_error(true);
    let (mut manager, handle, _) = start_manager_with_streamers(
        &mut store,
        &config("push_updates = true"),
        Path::new("."),
        vec![(fragile, Box::new(Fragile(Arc::clone(&fail))))],
    )
    .unwrap();
    let push = manager.push_queue();
    manager.commit(&mut store, BlockMeta::default()).unwrap();
    let rt = runtime();
    let address = format!("http://{}", handle.grpc_address().unwrap());
    let pusher = rt.spawn(async move {
        client(&address)
            .await
            .push_update(v1::PushUpdateRequest {
                store: "a".into(),
                key: b"once".to_vec(),
                value: b"only".to_vec(),
                delete: false,
            })
            .await
    });
    wait_for("the pushed write queued", || push.len() == 1);
    fail.store(true, Ordering::SeqCst);
    let batch = push.drain();
    let a = StoreKey::new("a").unwrap();
    for w in batch.writes() {
        store.set(&a, &w.key, w.value.as_deref().unwrap()).unwrap();
    }
    let err = manager
        .commit_pushed(&mut store, BlockMeta::default(), batch)
        .unwrap_err();
    assert!(
        matches!(err, statestream::Error::Halted { height: 2, .. }),
        "{err:?}"
    );
    // The node stops: the serve streamer closes while the pusher waits.
    assert!(manager.close(&mut store).is_err());
    let height = rt
        .block_on(pusher)
        .unwrap()
        .expect("the write committed, so the pusher is answered with its height")
        .into_inner()
        .height;
    assert_eq!(height, 2);
    assert_eq!(store.get(&a, b"once").unwrap(), Some(b"only".to_vec()));
    assert_eq!(store.version(), 2);
}
