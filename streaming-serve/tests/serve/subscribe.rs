//! Subscribe: snapshot + live, from a height, live; heartbeats; resume
//! after a restart; shutdown.

use std::time::Duration;

use statestream_client::{
    MemoryCursor, ResumableSubscription, StartFrom, SubscribeOptions, Update,
};
use statestream_serve::proto::v1::{self, subscribe_request::Start};

use crate::util::*;

#[test]
fn snapshot_then_live_has_no_gap_and_no_duplicate_while_blocks_commit() {
    let mut node = Node::in_memory("");
    for _ in 0..20 {
        node.commit();
    }
    let rt = runtime();
    let address = node.address();
    let target = 140;
    // Several subscribers join while blocks commit: each subscription is
    // open (its snapshot height chosen) before the next blocks commit, so
    // each has blocks after its snapshot to read.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let address = address.clone();
        let (opened, open) = std::sync::mpsc::channel();
        tasks.push(rt.spawn(async move {
            let mut c = client(&address).await;
            let mut stream = c
                .subscribe(subscribe_request(Start::Snapshot(v1::StartSnapshot {})))
                .await
                .unwrap()
                .into_inner();
            let _ = opened.send(());
            let mut r = Received::default();
            read_until(&mut stream, &mut r, target).await;
            r
        }));
        open.recv_timeout(Duration::from_secs(30))
            .expect("the subscription opened within 30 s");
        for _ in 0..10 {
            node.commit();
        }
    }
    while node.height() < target {
        node.commit();
    }
    for t in tasks {
        let r = rt.block_on(t).unwrap();
        let s = r.snapshot_height.unwrap();
        assert!(s >= 20);
        // Each block equals the change set of the log, and the heights
        // run on from the snapshot without a gap.
        assert_eq!(r.blocks.first().unwrap().0, s + 1);
        for (h, changes) in &r.blocks {
            assert_eq!(changes, &node.changes(*h), "block {h}");
        }
        assert_eq!(r.last_height(), Some(target));
        assert_eq!(r.state(), node.state());
    }
    node.close();
}

#[test]
fn from_height_replays_history_then_follows_live_blocks() {
    let mut node = Node::in_memory("heartbeat_ms = 100");
    for _ in 0..30 {
        node.commit();
    }
    let rt = runtime();
    let address = node.address();
    let task = rt.spawn(async move {
        let mut c = client(&address).await;
        let mut stream = c
            .subscribe(subscribe_request(Start::FromHeight(5)))
            .await
            .unwrap()
            .into_inner();
        let mut r = Received::default();
        read_until(&mut stream, &mut r, 40).await;
        r
    });
    for _ in 0..10 {
        node.commit();
    }
    let r = rt.block_on(task).unwrap();
    assert_eq!(r.blocks.first().unwrap().0, 5);
    for (h, changes) in &r.blocks {
        assert_eq!(changes, &node.changes(*h), "block {h}");
    }
    node.close();
}

#[test]
fn heartbeats_carry_the_head_height_on_an_idle_stream() {
    let mut node = Node::in_memory("heartbeat_ms = 50");
    node.commit();
    node.commit();
    node.wait_served();
    let rt = runtime();
    let address = node.address();
    let head = rt.block_on(async move {
        let mut c = client(&address).await;
        let mut stream = c
            .subscribe(subscribe_request(Start::Live(v1::StartLive {})))
            .await
            .unwrap()
            .into_inner();
        loop {
            let m = stream.message().await.unwrap().unwrap();
            if let Some(v1::subscribe_response::Message::Heartbeat(h)) = m.message {
                return h.head_height;
            }
        }
    });
    assert_eq!(head, 2);
    node.close();
}

#[test]
fn below_the_retained_window_is_out_of_range_with_the_oldest_height() {
    let mut node = Node::in_memory("retain_blocks = 5");
    node.commit_pruned(40);
    let rt = runtime();
    let address = node.address();
    let (status, oldest) = rt.block_on(async move {
        let mut c = client(&address).await;
        let oldest = c
            .list_stores(v1::ListStoresRequest {})
            .await
            .unwrap()
            .into_inner()
            .oldest_height;
        let status = c
            .subscribe(subscribe_request(Start::FromHeight(1)))
            .await
            .unwrap_err();
        // The oldest height itself is served.
        let mut ok = c
            .subscribe(subscribe_request(Start::FromHeight(oldest)))
            .await
            .unwrap()
            .into_inner();
        let first = ok.message().await.unwrap().unwrap();
        match first.message {
            Some(v1::subscribe_response::Message::Block(b)) => assert_eq!(b.height, oldest),
            other => panic!("{other:?}"),
        }
        // Past the head: out of range too.
        let ahead = c
            .subscribe(subscribe_request(Start::FromHeight(1000)))
            .await
            .unwrap_err();
        assert_eq!(ahead.code(), tonic::Code::OutOfRange);
        (status, oldest)
    });
    assert!(oldest > 1);
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert!(
        status
            .message()
            .contains(&format!("the oldest available height is {oldest}")),
        "{}",
        status.message()
    );
    node.close();
}

#[test]
fn a_subscriber_resumes_from_its_cursor_after_the_node_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut node = Node::open(&path, "");
    for _ in 0..10 {
        node.commit();
    }
    let port = node.handle.grpc_address().expect("gRPC is on").port();
    let rt = runtime();
    let options = SubscribeOptions::new(&node.address())
        .start(StartFrom::Snapshot)
        .max_backoff(std::time::Duration::from_millis(200));
    let mut sub = ResumableSubscription::new(options, MemoryCursor::default());
    let mut state = State::new();
    let mut heights = Vec::new();
    let apply = |u: Update, state: &mut State, heights: &mut Vec<u64>| match u {
        Update::Snapshot { entries, .. } => {
            for e in entries {
                state.insert((e.store, e.key), e.value);
            }
        }
        Update::Block {
            height, changes, ..
        } => {
            heights.push(height);
            for c in changes {
                if c.op == v1::Op::Delete as i32 {
                    state.remove(&(c.store, c.key));
                } else {
                    state.insert((c.store, c.key), c.value);
                }
            }
        }
        _ => {}
    };
    // The snapshot at 10. Each update is acknowledged once applied, as a
    // consumer does; the cursor follows the acknowledgements.
    loop {
        let u = rt.block_on(sub.next()).unwrap();
        let end = matches!(u, Update::Snapshot { end: true, .. });
        let done = u.ack_height();
        apply(u, &mut state, &mut heights);
        if let Some(h) = done {
            sub.ack(h).unwrap();
        }
        if end {
            break;
        }
    }
    assert_eq!(sub.cursor().0, Some(10));
    for _ in 0..5 {
        node.commit();
    }
    while heights.last() != Some(&15) {
        let u = rt.block_on(sub.next()).unwrap();
        let done = u.ack_height();
        apply(u, &mut state, &mut heights);
        if let Some(h) = done {
            sub.ack(h).unwrap();
        }
    }
    // Restart the node (same store, same port): the subscriber sees the
    // shutdown, reconnects and resumes after its cursor.
    drop(node.close());
    let mut node = Node::open(&path, &format!("grpc_address = \"127.0.0.1:{port}\""));
    for _ in 0..5 {
        node.commit();
    }
    let mut reconnects = 0;
    while heights.last() != Some(&20) {
        let u = rt.block_on(sub.next()).unwrap();
        if matches!(u, Update::Reconnecting { .. }) {
            reconnects += 1;
        }
        let done = u.ack_height();
        apply(u, &mut state, &mut heights);
        if let Some(h) = done {
            sub.ack(h).unwrap();
        }
    }
    assert!(reconnects >= 1);
    assert_eq!(heights, (11..=20).collect::<Vec<_>>());
    assert_eq!(sub.cursor().0, Some(20));
    assert_eq!(state, node.state());
    node.close();
}

#[test]
fn shutdown_ends_streams_with_unavailable() {
    let mut node = Node::in_memory("");
    node.commit();
    let rt = runtime();
    let address = node.address();
    let mut stream = rt.block_on(async {
        let mut c = client(&address).await;
        c.subscribe(subscribe_request(Start::Live(v1::StartLive {})))
            .await
            .unwrap()
            .into_inner()
    });
    node.close();
    let status = rt.block_on(async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(s) => return s,
            }
        }
    });
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[test]
fn filters_select_stores_and_prefixes_and_name_a_bad_store() {
    let mut node = Node::in_memory("");
    for _ in 0..10 {
        node.commit();
    }
    let rt = runtime();
    let address = node.address();
    let (received, bad) = rt.block_on(async move {
        let mut c = client(&address).await;
        let filter = v1::Filter {
            stores: vec!["a".into()],
            prefixes: vec![v1::KeyPrefix {
                store: "b".into(),
                prefix: b"k01".to_vec(),
            }],
        };
        let mut stream = c
            .subscribe(v1::SubscribeRequest {
                filter: Some(filter),
                start: Some(Start::FromHeight(1)),
            })
            .await
            .unwrap()
            .into_inner();
        let mut r = Received::default();
        read_until(&mut stream, &mut r, 10).await;
        let bad = c
            .subscribe(v1::SubscribeRequest {
                filter: Some(v1::Filter {
                    stores: vec!["nope".into()],
                    prefixes: vec![],
                }),
                start: None,
            })
            .await
            .unwrap_err();
        (r, bad)
    });
    for (h, changes) in &received.blocks {
        let expected: Vec<_> = node
            .changes(*h)
            .into_iter()
            .filter(|(s, k, _)| s == "a" || (s == "b" && k.starts_with(b"k01")))
            .collect();
        assert_eq!(changes, &expected, "block {h}");
    }
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("\"nope\""), "{}", bad.message());
    node.close();
}
