//! Token, limits, slow and vanished subscribers, startup errors, health
//! and reflection.

use std::path::Path;

use statestream_serve::RING_BLOCKS;
use statestream_serve::proto::v1::{self, subscribe_request::Start};
use statestream_store::MultiStore;
use tonic::Request;

use crate::util::*;

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[test]
fn every_call_needs_the_token_when_one_is_set() {
    let mut node = Node::in_memory("token = \"s3cret\"");
    node.commit();
    node.wait_served();
    let rt = runtime();
    let address = node.address();
    rt.block_on(async move {
        let mut c = client(&address).await;
        let missing = c.list_stores(v1::ListStoresRequest {}).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        let wrong = c
            .list_stores(with_token(v1::ListStoresRequest {}, "nope"))
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let sub = c
            .subscribe(subscribe_request(Start::Live(v1::StartLive {})))
            .await
            .unwrap_err();
        assert_eq!(sub.code(), tonic::Code::Unauthenticated);
        let ok = c
            .list_stores(with_token(v1::ListStoresRequest {}, "s3cret"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.head_height, 1);
        assert_eq!(ok.stores.len(), 3);
        // datastream too.
        let mut d =
            statestream_serve::proto::datastream::data_service_client::DataServiceClient::connect(
                address.clone(),
            )
            .await
            .unwrap();
        let denied = d
            .list_capabilities(statestream_serve::proto::datastream::ListCapabilitiesRequest {})
            .await
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    });
    node.close();
}

#[test]
fn max_subscribers_is_enforced_and_a_disconnect_frees_its_place() {
    let mut node = Node::in_memory("max_subscribers = 2");
    node.commit();
    let rt = runtime();
    let address = node.address();
    let hub = node.handle.hub().clone();
    let (first, second) = rt.block_on(async {
        let mut c = client(&address).await;
        let live = || subscribe_request(Start::Live(v1::StartLive {}));
        let first = c.subscribe(live()).await.unwrap().into_inner();
        let second = c.subscribe(live()).await.unwrap().into_inner();
        let third = c.subscribe(live()).await.unwrap_err();
        assert_eq!(third.code(), tonic::Code::ResourceExhausted);
        assert!(
            third.message().contains("max_subscribers"),
            "{}",
            third.message()
        );
        (first, second)
    });
    assert_eq!(hub.subscribers(), 2);
    drop(first);
    wait_for("the dropped subscription to be freed", || {
        hub.subscribers() == 1
    });
    rt.block_on(async {
        let mut c = client(&address).await;
        let again = c
            .subscribe(subscribe_request(Start::Live(v1::StartLive {})))
            .await;
        assert!(again.is_ok());
    });
    drop(second);
    wait_for("every subscription to be freed", || hub.subscribers() <= 1);
    node.close();
}

#[test]
fn a_hundred_concurrent_subscribers_all_receive_every_block() {
    let mut node = Node::in_memory("");
    node.commit();
    let rt = runtime();
    let address = node.address();
    let hub = node.handle.hub().clone();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let address = address.clone();
        tasks.push(rt.spawn(async move {
            let mut c = client(&address).await;
            let mut stream = c
                .subscribe(subscribe_request(Start::FromHeight(2)))
                .await
                .unwrap()
                .into_inner();
            let mut r = Received::default();
            read_until(&mut stream, &mut r, 51).await;
            r
        }));
    }
    for _ in 0..50 {
        node.commit();
    }
    let expected: Vec<_> = (2..=51).map(|h| (h, node.changes(h))).collect();
    for t in tasks {
        let r = rt.block_on(t).unwrap();
        assert_eq!(r.blocks, expected);
    }
    wait_for("all subscriptions to be freed", || hub.subscribers() == 0);
    node.close();
}

#[test]
fn a_stalled_subscriber_is_disconnected_and_does_not_hold_back_commits() {
    // Stall timeout: max(2 x heartbeat, 1 s) = 1 s.
    let mut node = Node::in_memory("heartbeat_ms = 100");
    node.commit();
    let rt = runtime();
    let address = node.address();
    let hub = node.handle.hub().clone();
    // Subscribes and never reads.
    let mut stalled = rt.block_on(async {
        let mut c = client(&address).await;
        c.subscribe(subscribe_request(Start::Live(v1::StartLive {})))
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(hub.subscribers(), 1);
    // Blocks of ~200 KB fill the client's HTTP/2 window and its buffer.
    let mut blocks = 0;
    while hub.subscribers() > 0 {
        node.commit_sized(20, 10_000);
        blocks += 1;
        assert!(hub.ring_len() <= RING_BLOCKS);
        assert!(
            blocks < 100_000,
            "the stalled subscriber was never disconnected"
        );
        if blocks % 50 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    // Reading again: what was in flight, then ABORTED.
    let status = rt.block_on(async {
        loop {
            match stalled.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended without a status"),
                Err(s) => return s,
            }
        }
    });
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(status.message().contains("resume"), "{}", status.message());
    node.close();
}

#[test]
fn startup_errors_name_the_key_or_say_why_the_address_is_unusable() {
    let mut store = MultiStore::in_memory(&keys()).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = start_manager(
        &mut store,
        &config(&format!("grpc_address = \"{addr}\"")),
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("in use") && err.contains(&addr.to_string()),
        "{err}"
    );

    for (extra, key) in [
        ("grpc_address = \"nonsense\"", "grpc_address"),
        ("max_subscribers = 0", "max_subscribers"),
        ("max_filter_entries = 0", "max_filter_entries"),
        ("max_snapshots = 0", "max_snapshots"),
        ("heartbeat_ms = 0", "heartbeat_ms"),
        ("retain_blocks = 0", "retain_blocks"),
        ("value_types = { zzz = \"int\" }", "value_types"),
    ] {
        let err = start_manager(&mut store, &config(extra), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{extra}: {err}");
    }
}

#[test]
fn health_and_reflection_answer() {
    let node = Node::in_memory("");
    let rt = runtime();
    let address = node.address();
    rt.block_on(async move {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let channel = tonic::transport::Endpoint::from_shared(address.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut h = HealthClient::new(channel);
        let r = h
            .check(HealthCheckRequest {
                service: "statestream.v1.StateStream".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, 1, "SERVING");
        let r = h
            .check(HealthCheckRequest {
                service: "datastream.DataService".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, 1, "SERVING");
    });
    node.close();
}
