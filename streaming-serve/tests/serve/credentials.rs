//! Credentials on a real node: three credentials with different scopes
//! through tonic (StateStream and DataService), SSE and `/snapshot`;
//! revocation ending exactly the revoked credential's streams; rotation
//! with a grace period; narrowing scopes ending only the streams now out
//! of scope.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use statestream_access::{CredentialPatch, NewCredential, Registry, Rotation, Scope};
use statestream_serve::proto::datastream::{DataRequest, data_service_client::DataServiceClient};
use statestream_serve::proto::v1::{self, subscribe_request::Start};
use tonic::{Code, Request};

use crate::util::*;

const HTTP: &str = "http_address = \"127.0.0.1:0\"\npush_updates = true\n";

fn with_secret<T>(message: T, secret: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    r
}

fn scope(store: &str, prefixes: &[&str]) -> Scope {
    Scope {
        store: store.into(),
        prefixes: prefixes.iter().map(|p| p.as_bytes().to_vec()).collect(),
    }
}

fn create(registry: &Registry, id: &str, scopes: Vec<Scope>) -> String {
    let (_, secret) = registry
        .create(NewCredential {
            id: id.into(),
            scopes,
            push: false,
            subscribe_webhooks: false,
            max_streams: None,
            expires_at: None,
            description: format!("test credential {id}"),
        })
        .unwrap();
    secret.expose().to_string()
}

fn registry(node: &Node) -> Registry {
    node.manager
        .as_ref()
        .unwrap()
        .credentials()
        .expect("the manager opened the credentials")
}

fn live() -> v1::SubscribeRequest {
    subscribe_request(Start::Live(v1::StartLive {}))
}

fn filtered(stores: &[&str], prefixes: &[(&str, &str)]) -> v1::SubscribeRequest {
    v1::SubscribeRequest {
        filter: Some(v1::Filter {
            stores: stores.iter().map(|s| s.to_string()).collect(),
            prefixes: prefixes
                .iter()
                .map(|(s, p)| v1::KeyPrefix {
                    store: s.to_string(),
                    prefix: p.as_bytes().to_vec(),
                })
                .collect(),
        }),
        start: Some(Start::Live(v1::StartLive {})),
    }
}

/// An SSE stream read over a raw socket: its lines, as they come.
fn sse_lines(address: &str, path: &str, secret: &str) -> std::sync::mpsc::Receiver<String> {
    let mut socket = TcpStream::connect(address).unwrap();
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {secret}\r\n\r\n"
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(socket).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn credentials_three_scopes_on_every_front_end() {
    let mut node = Node::in_memory(HTTP);
    for _ in 0..8 {
        node.commit();
    }
    let registry = registry(&node);
    let wallet = create(&registry, "wallet", vec![scope("a", &["k0"])]);
    let indexer = create(&registry, "indexer", vec![scope("*", &[])]);
    let reader_b = create(&registry, "reader-b", vec![scope("b", &[])]);
    let state = node.state();
    let rt = runtime();
    let address = node.address();
    let http = node.handle.http_address().unwrap().to_string();
    node.wait_served();
    let h = node.height();
    rt.block_on(async {
        let mut c = client(&address).await;
        let missing = c.list_stores(v1::ListStoresRequest {}).await.unwrap_err();
        assert_eq!(missing.code(), Code::Unauthenticated);
        let listed = c
            .list_stores(with_secret(v1::ListStoresRequest {}, &wallet))
            .await
            .unwrap()
            .into_inner();
        let names: Vec<String> = listed.stores.iter().map(|s| s.name.clone()).collect();
        assert_eq!(names, ["a"], "wallet lists only its store");

        // A snapshot without a filter is the credential's scopes.
        for (secret, expect) in [
            (
                &wallet,
                Box::new(|s: &str, k: &[u8]| s == "a" && k.starts_with(b"k0"))
                    as Box<dyn Fn(&str, &[u8]) -> bool>,
            ),
            (&indexer, Box::new(|_: &str, _: &[u8]| true)),
            (&reader_b, Box::new(|s: &str, _: &[u8]| s == "b")),
        ] {
            let mut stream = c
                .subscribe(with_secret(
                    subscribe_request(Start::Snapshot(v1::StartSnapshot {})),
                    secret,
                ))
                .await
                .unwrap()
                .into_inner();
            let mut received = Received::default();
            while received.snapshot_height.is_none() {
                received.take(stream.message().await.unwrap().expect("snapshot"));
            }
            let expected: State = state
                .iter()
                .filter(|((s, k), _)| expect(s, k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert!(!expected.is_empty());
            assert_eq!(received.snapshot, expected, "{secret}");
        }

        // More than the scopes: PERMISSION_DENIED naming what is outside.
        let denied = c
            .subscribe(with_secret(filtered(&["b"], &[]), &wallet))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        assert!(denied.message().contains('b'), "{}", denied.message());
        let denied = c
            .subscribe(with_secret(filtered(&[], &[("a", "k1")]), &wallet))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(denied.message().contains("a/k1*"), "{}", denied.message());
        assert!(
            c.subscribe(with_secret(filtered(&[], &[("a", "k01")]), &wallet))
                .await
                .is_ok()
        );
        let unknown = c
            .subscribe(with_secret(live(), "ss_wallet_0000"))
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::Unauthenticated);

        // PushUpdate needs the push permission.
        let push = c
            .push_update(with_secret(
                v1::PushUpdateRequest {
                    store: "a".into(),
                    key: b"k001".to_vec(),
                    value: b"v".to_vec(),
                    delete: false,
                },
                &wallet,
            ))
            .await
            .unwrap_err();
        assert_eq!(push.code(), Code::PermissionDenied, "{push:?}");

        // DataService: Sync with a key outside the scopes is denied.
        let mut d = DataServiceClient::connect(address.clone()).await.unwrap();
        let outside = d
            .sync(with_secret(
                DataRequest {
                    keys: vec!["a/k100".into()],
                },
                &wallet,
            ))
            .await
            .unwrap_err();
        assert_eq!(outside.code(), Code::PermissionDenied, "{outside:?}");
        let synced = d
            .sync(with_secret(
                DataRequest {
                    keys: vec!["a/k0*".into()],
                },
                &wallet,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(!synced.data.is_empty());
        assert!(synced.data.keys().all(|k| k.starts_with("a/k0")));
        let other = d
            .sync(with_secret(
                DataRequest {
                    keys: vec!["a".into()],
                },
                &reader_b,
            ))
            .await
            .unwrap_err();
        assert_eq!(other.code(), Code::PermissionDenied);
    });

    // SSE and /snapshot.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str, secret: Option<&str>| {
        let mut r = agent.get(format!("http://{http}{path}"));
        if let Some(s) = secret {
            r = r.header("authorization", format!("Bearer {s}"));
        }
        let mut resp = r.call().unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap())
    };
    let (status, body) = get("/snapshot", Some(&reader_b));
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let stores: Vec<&String> = json["data"].as_object().unwrap().keys().collect();
    assert_eq!(stores, ["b"]);
    assert_eq!(get("/snapshot?stores=a", Some(&reader_b)).0, 403);
    assert_eq!(get("/snapshot", None).0, 401);
    assert_eq!(get("/stream?stores=c", Some(&wallet)).0, 403);
    let lines = sse_lines(&http, "/stream", &wallet);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let put = loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("the SSE put within 30 s");
        if let Some(data) = line.strip_prefix("data: ") {
            break serde_json::from_str::<serde_json::Value>(data).unwrap();
        }
    };
    let data = put["data"].as_object().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["a"], "{put}");
    assert!(
        data["a"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| k.starts_with("k0"))
    );
    assert_eq!(put["height"], h);
}

#[test]
fn credentials_revoke_ends_that_credentials_streams_only() {
    let mut node = Node::in_memory(HTTP);
    node.commit();
    let registry = registry(&node);
    let doomed = create(&registry, "doomed", vec![scope("*", &[])]);
    let kept = create(&registry, "kept", vec![scope("*", &[])]);
    let rt = runtime();
    let address = node.address();
    let http = node.handle.http_address().unwrap().to_string();
    node.wait_served();
    let start = node.height();
    let (doomed_streams, kept_streams) = rt.block_on(async {
        let mut c = client(&address).await;
        let open = |secret: String| {
            let mut c = c.clone();
            async move {
                c.subscribe(with_secret(live(), &secret))
                    .await
                    .unwrap()
                    .into_inner()
            }
        };
        let mut doomed_streams = Vec::new();
        let mut kept_streams = Vec::new();
        for _ in 0..10 {
            doomed_streams.push(open(doomed.clone()).await);
            kept_streams.push(open(kept.clone()).await);
        }
        let _ = &mut c;
        (doomed_streams, kept_streams)
    });
    let sse = sse_lines(&http, "/stream/ping", &doomed);
    // Admitted before the revocation: the status line comes once it is.
    let status = sse
        .recv_timeout(Duration::from_secs(30))
        .expect("the SSE stream's status line within 30 s");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let last = start + 6;
    let kept_tasks: Vec<_> = kept_streams
        .into_iter()
        .map(|mut s| {
            rt.spawn(async move {
                let mut received = Received::default();
                read_until(&mut s, &mut received, last).await;
                received
            })
        })
        .collect();
    let doomed_tasks: Vec<_> = doomed_streams
        .into_iter()
        .map(|mut s| {
            rt.spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    match tokio::time::timeout_at(deadline, s.message()).await {
                        Err(_) => panic!("a revoked credential's stream did not end within 30 s"),
                        Ok(Ok(Some(_))) => {}
                        Ok(Ok(None)) => panic!("ended without a status"),
                        Ok(Err(status)) => return status,
                    }
                }
            })
        })
        .collect();
    for _ in 0..3 {
        node.commit();
    }
    registry.revoke("doomed").unwrap();
    for _ in 0..3 {
        node.commit();
    }
    rt.block_on(async {
        for t in doomed_tasks {
            let status = t.await.unwrap();
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert!(status.message().contains("revoked"), "{}", status.message());
        }
        for t in kept_tasks {
            let received = t.await.unwrap();
            let heights: Vec<u64> = received.blocks.iter().map(|b| b.0).collect();
            assert_eq!(
                heights,
                (start + 1..=last).collect::<Vec<_>>(),
                "every block"
            );
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let line = sse
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("event: revoked on the SSE stream within 30 s");
        if line == "event: revoked" {
            break;
        }
    }
    let new = rt.block_on(async {
        let mut c = client(&address).await;
        c.subscribe(with_secret(live(), &doomed)).await.unwrap_err()
    });
    assert_eq!(new.code(), Code::Unauthenticated);
}

#[test]
fn credentials_rotate_with_grace_and_narrowed_scopes() {
    let mut node = Node::in_memory("");
    node.commit();
    let registry = registry(&node);
    let old = create(&registry, "app", vec![scope("a", &["k0", "k1"])]);
    let rt = runtime();
    let address = node.address();
    let (mut k0, mut k1) = rt.block_on(async {
        let mut c = client(&address).await;
        let k0 = c
            .subscribe(with_secret(filtered(&[], &[("a", "k0")]), &old))
            .await
            .unwrap()
            .into_inner();
        let k1 = c
            .subscribe(with_secret(filtered(&[], &[("a", "k1")]), &old))
            .await
            .unwrap()
            .into_inner();
        (k0, k1)
    });
    registry
        .update(
            "app",
            CredentialPatch {
                scopes: Some(vec![scope("a", &["k0"])]),
                ..Default::default()
            },
        )
        .unwrap();
    node.wait_served();
    let start = node.height();
    node.commit();
    node.commit();
    rt.block_on(async {
        let status = loop {
            match tokio::time::timeout(Duration::from_secs(30), k1.message())
                .await
                .expect("the out-of-scope stream ends within 30 s")
            {
                Ok(Some(_)) => {}
                Ok(None) => panic!("ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("a/k1*"), "{}", status.message());
        let mut received = Received::default();
        read_until(&mut k0, &mut received, start + 2).await;
    });

    let (_, new) = registry
        .rotate("app", Rotation { grace_seconds: 2 })
        .unwrap();
    let new = new.expose().to_string();
    rt.block_on(async {
        let mut c = client(&address).await;
        for secret in [&old, &new] {
            c.list_stores(with_secret(v1::ListStoresRequest {}, secret))
                .await
                .unwrap_or_else(|e| panic!("both secrets work in the grace period: {e:?}"));
        }
        // The stream opened with the old secret ends with its grace.
        let status = loop {
            match tokio::time::timeout(Duration::from_secs(30), k0.message())
                .await
                .expect("the old secret's stream ends after the grace period")
            {
                Ok(Some(_)) => {}
                Ok(None) => panic!("ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let after = c
            .list_stores(with_secret(v1::ListStoresRequest {}, &old))
            .await
            .unwrap_err();
        assert_eq!(after.code(), Code::Unauthenticated);
        c.list_stores(with_secret(v1::ListStoresRequest {}, &new))
            .await
            .expect("the new secret works after the grace period");
    });
}

#[test]
fn credentials_max_streams_counts_every_front_end() {
    let mut node = Node::in_memory(HTTP);
    node.commit();
    let registry = registry(&node);
    let (_, secret) = registry
        .create(NewCredential {
            id: "one".into(),
            scopes: vec![scope("*", &[])],
            push: false,
            subscribe_webhooks: false,
            max_streams: Some(1),
            expires_at: None,
            description: String::new(),
        })
        .unwrap();
    let secret = secret.expose().to_string();
    let rt = runtime();
    let address = node.address();
    let http = node.handle.http_address().unwrap().to_string();
    let first = rt.block_on(async {
        let mut c = client(&address).await;
        let first = c
            .subscribe(with_secret(live(), &secret))
            .await
            .unwrap()
            .into_inner();
        let second = c.subscribe(with_secret(live(), &secret)).await.unwrap_err();
        assert_eq!(second.code(), Code::ResourceExhausted, "{second:?}");
        assert!(
            second.message().contains("max_streams"),
            "{}",
            second.message()
        );
        first
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let refused = agent
        .get(format!("http://{http}/stream"))
        .header("authorization", format!("Bearer {secret}"))
        .call()
        .unwrap();
    assert_eq!(
        refused.status().as_u16(),
        429,
        "SSE counts against the same limit"
    );
    drop(first);
    // The slot is given back when the client goes away.
    rt.block_on(async {
        let mut c = client(&address).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match c.subscribe(with_secret(live(), &secret)).await {
                Ok(_) => break,
                Err(s) if s.code() == Code::ResourceExhausted => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the closed stream's slot was not given back within 30 s"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(s) => panic!("{s:?}"),
            }
        }
    });
}
