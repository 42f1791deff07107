//! Bounded work per request: filter sizes (one-shot snapshots' memory is
//! tested in `tests/snapshot_memory.rs`, a process of its own).

use std::time::Duration;

use statestream_serve::proto::datastream::{DataRequest, data_service_client::DataServiceClient};
use statestream_serve::proto::v1::{self, subscribe_request::Start};

use crate::util::*;

const HTTP: &str = "http_address = \"127.0.0.1:0\"\n";

fn prefixes(n: usize) -> Vec<v1::KeyPrefix> {
    (0..n)
        .map(|i| v1::KeyPrefix {
            store: STORES[i % STORES.len()].to_string(),
            prefix: format!("zz{i:05}").into_bytes(),
        })
        .collect()
}

fn filtered(start: Start, prefixes: Vec<v1::KeyPrefix>) -> v1::SubscribeRequest {
    v1::SubscribeRequest {
        filter: Some(v1::Filter {
            stores: Vec::new(),
            prefixes,
        }),
        start: Some(start),
    }
}

fn assert_names_the_limit(what: &str, status: &tonic::Status) {
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{what}: {status:?}"
    );
    assert!(
        status.message().contains("max_filter_entries"),
        "{what}: {}",
        status.message()
    );
}

#[test]
fn a_filter_over_max_filter_entries_is_refused_on_every_front_end() {
    let mut node = Node::in_memory(&format!("{HTTP}max_filter_entries = 3"));
    node.commit();
    let rt = runtime();
    let address = node.address();
    rt.block_on(async {
        let mut c = client(&address).await;
        let err = c
            .subscribe(filtered(Start::Live(v1::StartLive {}), prefixes(4)))
            .await
            .unwrap_err();
        assert_names_the_limit("Subscribe", &err);
        let snapshot = c
            .snapshot(v1::SnapshotRequest {
                filter: Some(v1::Filter {
                    stores: vec!["a".into()],
                    prefixes: prefixes(3),
                }),
            })
            .await;
        let err = match snapshot {
            Err(e) => e,
            Ok(s) => s
                .into_inner()
                .message()
                .await
                .expect_err("Snapshot answered an oversized filter"),
        };
        assert_names_the_limit("Snapshot", &err);
        // At the limit is fine.
        c.subscribe(filtered(Start::Live(v1::StartLive {}), prefixes(3)))
            .await
            .expect("a filter at the limit is accepted");

        let mut d = DataServiceClient::connect(address.clone()).await.unwrap();
        let four = DataRequest {
            keys: vec!["a".into(), "b/k0*".into(), "c/k001".into(), "c/k002".into()],
        };
        let err = d.sync(four.clone()).await.unwrap_err();
        assert_names_the_limit("DataService.Sync", &err);
        let err = match d.subscribe(four).await {
            Err(e) => e,
            Ok(s) => s
                .into_inner()
                .message()
                .await
                .expect_err("DataService.Subscribe answered an oversized filter"),
        };
        assert_names_the_limit("DataService.Subscribe", &err);
    });

    let http = node.handle.http_address().expect("HTTP is on");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    for path in ["/snapshot", "/stream", "/stream/ping"] {
        let url = format!("http://{http}{path}?prefix=a/x1&prefix=a/x2&stores=b&prefix=c/x3");
        let mut r = agent.get(&url).call().unwrap();
        assert_eq!(r.status().as_u16(), 400, "{path}");
        let body = r.body_mut().read_to_string().unwrap();
        assert!(body.contains("max_filter_entries"), "{path}: {body}");
    }
    node.close();
}

#[test]
fn fifty_thousand_prefixes_are_answered_while_another_client_keeps_receiving_blocks() {
    let mut node = Node::in_memory("max_filter_entries = 60000");
    node.commit();
    let rt = runtime();
    let address = node.address();
    let last = 30;
    // The unfiltered client, following every block.
    let plain = rt.spawn({
        let address = address.clone();
        async move {
            let mut c = client(&address).await;
            let mut s = c
                .subscribe(subscribe_request(Start::FromHeight(2)))
                .await
                .unwrap()
                .into_inner();
            let mut r = Received::default();
            read_until(&mut s, &mut r, last).await;
            r
        }
    });
    // 50,000 prefixes that select nothing, and `k` in every store, which
    // selects every key the blocks write: each record is looked up among
    // all of them.
    let mut big = prefixes(50_000);
    for s in STORES {
        big.push(v1::KeyPrefix {
            store: s.to_string(),
            prefix: b"k".to_vec(),
        });
    }
    let mut heavy = Vec::new();
    for _ in 0..2 {
        let address = address.clone();
        let big = big.clone();
        heavy.push(rt.spawn(async move {
            let mut c = client(&address).await;
            let mut s = c
                .subscribe(filtered(Start::FromHeight(2), big))
                .await
                .unwrap()
                .into_inner();
            let mut r = Received::default();
            read_until(&mut s, &mut r, last).await;
            r
        }));
    }
    for _ in 2..=last {
        node.commit();
        std::thread::sleep(Duration::from_millis(20));
    }
    let expected: Vec<_> = (2..=last).map(|h| (h, node.changes(h))).collect();
    // read_until holds each read to one overall deadline.
    let r = rt.block_on(plain).unwrap();
    assert_eq!(r.blocks, expected, "the unfiltered client");
    for h in heavy {
        let r = rt.block_on(h).unwrap();
        assert_eq!(r.blocks, expected, "a 50,000-prefix client");
    }
    node.close();
}
