//! The HTTP front-end against a real node on a port the OS chose, read
//! with a real SSE client (LaunchDarkly's `eventsource-client`, see
//! `es.rs`), and with `curl -N` and a raw socket where the bytes on the
//! wire matter (a client that never reads).

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::es::{Ev, EventSource, Item, Options, Refused};
use crate::util::{BlockChanges, Change, Node, State};

const HTTP: &str = "http_address = \"127.0.0.1:0\"\n";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn url(node: &Node, path_and_query: &str) -> String {
    format!(
        "http://{}{path_and_query}",
        node.handle.http_address().expect("HTTP is on")
    )
}

fn open(node: &Node, path: &str) -> EventSource {
    EventSource::open(&url(node, path), &[]).expect("the stream opens")
}

/// `text/event-stream` parsed by hand (for `curl -N`'s output): events as
/// written, `id` only where the event has an `id:` field; `None` at the
/// end.
fn parse(reader: impl BufRead + Send + 'static) -> mpsc::Receiver<Option<Ev>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut event, mut data, mut id, mut retry) = (String::new(), Vec::new(), None, None);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if line.is_empty() {
                if !data.is_empty() {
                    let ev = Ev {
                        event: std::mem::take(&mut event),
                        data: serde_json::from_str(&std::mem::take(&mut data).join("\n"))
                            .expect("JSON data"),
                        id: id.take(),
                        retry: retry.take(),
                    };
                    if tx.send(Some(ev)).is_err() {
                        return;
                    }
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "event" => event = value,
                "data" => data.push(value),
                "id" => id = Some(value.parse::<u64>().expect("a numeric id")),
                "retry" => retry = value.parse().ok(),
                _ => {}
            }
        }
        let _ = tx.send(None);
    });
    rx
}

/// What a client holds: the state and the last whole block it saw.
#[derive(Debug, Default)]
struct Mirror {
    state: State,
    last_id: Option<u64>,
    puts: u64,
    /// Events of the block in progress (applied at its last event).
    pending: Vec<Change>,
    /// The whole blocks seen, in order: height and changes.
    blocks: Vec<BlockChanges>,
    /// Streams the server ended (a following client reconnected after
    /// each).
    ends: u64,
}

/// The block height of a `patch` or `delete`.
fn version(e: &Ev) -> Option<u64> {
    e.data["data"]["version"]
        .as_u64()
        .or(e.data["version"].as_u64())
}

fn split_path(path: &str) -> (String, Vec<u8>) {
    let rest = path.strip_prefix('/').expect("a path");
    let (store, key) = rest.split_once('/').expect("/store/key");
    (store.to_string(), key.as_bytes().to_vec())
}

impl Mirror {
    /// Takes one event; panics on anything out of order. A block ends
    /// with the event whose id is the block's height: only the block's
    /// last event has an `id:` field (before it, an SSE client reports
    /// the previous id, or none).
    fn take(&mut self, ev: &Ev) {
        let (event, data, id) = (ev.event.as_str(), &ev.data, ev.id);
        match event {
            "put" => {
                assert!(self.pending.is_empty(), "a put inside a block");
                let height = data["height"].as_u64().expect("put height");
                assert_eq!(id, Some(height), "the put's id is its height");
                assert_eq!(data["path"], "/");
                self.state.clear();
                for (store, keys) in data["data"].as_object().expect("put data") {
                    for (key, entry) in keys.as_object().expect("a store's keys") {
                        assert_eq!(entry["version"].as_u64(), Some(height));
                        let value = entry["value"].as_str().expect("a value");
                        self.state.insert(
                            (store.clone(), key.as_bytes().to_vec()),
                            value.as_bytes().to_vec(),
                        );
                    }
                }
                self.puts += 1;
                self.last_id = Some(height);
                self.blocks.clear();
            }
            "patch" | "delete" => {
                let (store, key) = split_path(data["path"].as_str().expect("path"));
                let (value, version) = if event == "patch" {
                    let v = data["data"]["value"].as_str().expect("value");
                    (
                        Some(v.as_bytes().to_vec()),
                        data["data"]["version"].as_u64(),
                    )
                } else {
                    (None, data["version"].as_u64())
                };
                let version = version.expect("a version");
                let expected = self.last_id.map_or(version, |h| h + 1);
                assert_eq!(version, expected, "gap or duplicate");
                assert!(
                    id.is_none_or(|i| i <= version),
                    "id {id:?} ahead of version {version}"
                );
                self.pending.push((store, key, value));
                if id == Some(version) {
                    let changes = std::mem::take(&mut self.pending);
                    for (s, k, v) in &changes {
                        match v {
                            Some(v) => self.state.insert((s.clone(), k.clone()), v.clone()),
                            None => self.state.remove(&(s.clone(), k.clone())),
                        };
                    }
                    self.blocks.push((version, changes));
                    self.last_id = Some(version);
                }
            }
            other => panic!("unexpected event {other:?}"),
        }
    }

    /// Reads until the block at `height` has ended (or the stream ends:
    /// `false`).
    fn read_until(&mut self, source: &EventSource, height: u64) -> bool {
        while self.last_id.is_none_or(|h| h < height) {
            match source.next_event() {
                Some(ev) => self.take(&ev),
                None => return false,
            }
        }
        true
    }

    /// Reads a following client until the block at `height` has ended,
    /// through any number of ends and reconnects (each counted).
    fn follow_until(&mut self, source: &EventSource, height: u64) {
        while self.last_id.is_none_or(|h| h < height) {
            match source.next() {
                Item::Event(ev) => self.take(&ev),
                Item::Comment | Item::Connected { .. } => {}
                // A block cut short is sent again after the reconnect.
                Item::Ended => {
                    self.pending.clear();
                    self.ends += 1;
                }
                other => panic!("the stream failed: {other:?}"),
            }
        }
    }

    /// A new client resuming with `Last-Event-ID` (the last whole block
    /// seen); the partial block is dropped, it is sent again. The client
    /// connects in the background.
    fn resume(&mut self, node: &Node, path: &str) -> EventSource {
        self.pending.clear();
        EventSource::start(
            &url(node, path),
            &Options {
                last_event_id: Some(self.last_id.expect("a block seen")),
                ..Options::default()
            },
        )
    }
}

#[test]
fn put_then_patches_and_deletes_match_the_change_sets() {
    let mut node = Node::in_memory(HTTP);
    for _ in 0..3 {
        node.commit();
    }
    let source = open(&node, "/stream");
    let put = source.next_event().unwrap();
    assert_eq!(put.event, "put");
    assert!(put.retry.is_some(), "the first event carries retry:");
    let mut mirror = Mirror::default();
    mirror.take(&put);
    assert_eq!(mirror.last_id, Some(3));
    assert_eq!(mirror.state, node.state());
    for _ in 0..5 {
        node.commit();
    }
    assert!(mirror.read_until(&source, 8));
    let heights: Vec<u64> = mirror.blocks.iter().map(|b| b.0).collect();
    assert_eq!(heights, vec![4, 5, 6, 7, 8]);
    for (h, changes) in &mirror.blocks {
        assert_eq!(changes, &node.changes(*h), "block {h}");
    }
    assert_eq!(mirror.state, node.state());
    drop(source);
    node.close();
}

#[test]
fn reconnecting_by_last_event_id_misses_and_repeats_nothing_while_blocks_commit() {
    let mut node = Node::in_memory(HTTP);
    node.commit();
    let mut mirror = Mirror::default();
    let mut source = open(&node, "/stream");
    for round in 0..6 {
        for _ in 0..4 {
            node.commit();
        }
        // Read part of the new blocks (stopping mid-block on odd rounds),
        // then drop the connection and resume from the last whole block.
        let stop = 3 + round % 2;
        let mut taken = 0;
        while taken < stop {
            let ev = source.next_event().unwrap();
            mirror.take(&ev);
            if ev.event != "put" {
                taken += 1;
            }
        }
        drop(source);
        // The new client connects while blocks commit.
        source = mirror.resume(&node, "/stream");
        for _ in 0..2 {
            node.commit();
        }
    }
    let head = node.height();
    assert!(mirror.read_until(&source, head));
    assert_eq!(mirror.puts, 1, "a resume inside the window sends no put");
    assert_eq!(mirror.state, node.state());
    drop(source);
    node.close();
}

#[test]
fn the_client_reconnects_by_itself_with_last_event_id_while_blocks_commit() {
    // The server ends every stream after 150 ms; the client's own
    // reconnect (by the last event ID it kept) resumes it each time.
    let mut node = Node::in_memory(&format!("{HTTP}max_connection_ms = 150"));
    node.commit();
    let source = EventSource::start(
        &url(&node, "/stream"),
        &Options {
            follow: true,
            ..Options::default()
        },
    );
    let mut mirror = Mirror::default();
    let mut connections = 0;
    while mirror.ends < 3 {
        // Commits go on while the client reads, is cut off and reconnects.
        node.commit();
        thread::sleep(Duration::from_millis(20));
        while let Some(item) = source.try_next() {
            match item {
                Item::Event(ev) => mirror.take(&ev),
                Item::Connected { .. } => connections += 1,
                Item::Comment => {}
                Item::Ended => {
                    mirror.pending.clear();
                    mirror.ends += 1;
                }
                other => panic!("the stream failed: {other:?}"),
            }
        }
        assert!(node.height() < 2_000, "the server never ended the stream");
    }
    let head = node.height();
    mirror.follow_until(&source, head);
    assert!(connections >= 3, "{connections} connections");
    assert_eq!(mirror.puts, 1, "every reconnect resumed inside the window");
    let first = mirror.blocks.first().expect("blocks").0;
    let heights: Vec<u64> = mirror.blocks.iter().map(|b| b.0).collect();
    assert_eq!(heights, (first..=head).collect::<Vec<_>>());
    for (h, changes) in &mirror.blocks {
        assert_eq!(changes, &node.changes(*h), "block {h}");
    }
    assert_eq!(mirror.state, node.state());
    drop(source);
    node.close();
}

#[test]
fn a_last_event_id_below_the_window_gives_a_fresh_put() {
    let mut node = Node::in_memory(&format!("{HTTP}retain_blocks = 5"));
    node.commit_pruned(40);
    let source = EventSource::open_with(
        &url(&node, "/stream"),
        &Options {
            last_event_id: Some(2),
            ..Options::default()
        },
    )
    .unwrap();
    let put = source.next_event().unwrap();
    assert_eq!(put.event, "put");
    let mut mirror = Mirror::default();
    mirror.take(&put);
    assert_eq!(mirror.last_id, Some(40));
    assert_eq!(mirror.state, node.state());
    // Inside the window: no put, the next block.
    let resumed = EventSource::open_with(
        &url(&node, "/stream"),
        &Options {
            last_event_id: Some(38),
            ..Options::default()
        },
    )
    .unwrap();
    let ev = resumed.next_event().unwrap();
    assert_ne!(ev.event, "put");
    assert_eq!(version(&ev), Some(39));
    drop((source, resumed));
    node.close();
}

#[test]
fn heartbeats_arrive_on_an_idle_stream() {
    let mut node = Node::in_memory(&format!("{HTTP}heartbeat_ms = 50"));
    node.commit();
    let source = open(&node, "/stream");
    assert!(matches!(source.next(), Item::Event(ref ev) if ev.event == "put"));
    let mut comments = 0;
    while comments < 3 {
        match source.next() {
            Item::Comment => comments += 1,
            other => panic!("only heartbeats on an idle stream, got {other:?}"),
        }
    }
    drop(source);
    node.close();
}

#[test]
fn max_connection_ms_ends_the_stream_and_the_client_resumes() {
    let mut node = Node::in_memory(&format!("{HTTP}max_connection_ms = 300"));
    node.commit();
    let mut mirror = Mirror::default();
    // A client that does not reconnect sees the end.
    let once = open(&node, "/stream");
    assert!(!mirror.read_until(&once, u64::MAX), "the stream ended");
    assert_eq!(mirror.puts, 1);
    drop(once);
    // A following client is resumed by its own reconnect.
    let source = EventSource::start(
        &url(&node, "/stream"),
        &Options {
            follow: true,
            last_event_id: mirror.last_id,
            ..Options::default()
        },
    );
    while mirror.ends < 2 {
        node.commit();
        thread::sleep(Duration::from_millis(50));
        let head = node.height();
        mirror.follow_until(&source, head);
    }
    let head = node.height();
    mirror.follow_until(&source, head);
    assert_eq!(mirror.puts, 1);
    assert_eq!(mirror.state, node.state());
    drop(source);
    node.close();
}

#[test]
fn filters_and_encodings_select_and_write_keys() {
    let mut node = Node::in_memory(HTTP);
    for _ in 0..3 {
        node.commit();
    }
    let source = open(&node, "/stream?stores=a&prefix=b/k01");
    let put = source.next_event().unwrap();
    assert_eq!(put.event, "put");
    let stores: Vec<&String> = put.data["data"].as_object().unwrap().keys().collect();
    assert_eq!(stores, vec!["a", "b"]);
    for key in put.data["data"]["b"].as_object().unwrap().keys() {
        assert!(key.starts_with("k01"), "{key}");
    }
    node.commit();
    let patch = source.next_event().unwrap();
    let path = patch.data["path"].as_str().unwrap();
    assert!(
        path.starts_with("/a/") || path.starts_with("/b/k01"),
        "{path}"
    );

    let source = open(&node, "/stream?stores=a&encoding=hex");
    let put = source.next_event().unwrap();
    for (key, entry) in put.data["data"]["a"].as_object().unwrap() {
        assert!(key.starts_with("6b"), "k in hex: {key}");
        assert!(
            entry["value"]
                .as_str()
                .unwrap()
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        );
    }
    drop(source);
    node.close();
}

#[test]
fn snapshot_and_ping() {
    let mut node = Node::in_memory(HTTP);
    for _ in 0..3 {
        node.commit();
    }
    let response = agent()
        .get(&url(&node, "/snapshot?stores=a,b,c"))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value =
        serde_json::from_str(&response.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(body["height"].as_u64(), Some(3));
    let mut state = State::new();
    for (store, keys) in body["data"].as_object().unwrap() {
        for (key, entry) in keys.as_object().unwrap() {
            state.insert(
                (store.clone(), key.as_bytes().to_vec()),
                entry["value"].as_str().unwrap().as_bytes().to_vec(),
            );
        }
    }
    assert_eq!(state, node.state());

    let source = open(&node, "/stream/ping?stores=a");
    for h in 4..=6 {
        node.commit();
        let ev = source.next_event().unwrap();
        assert_eq!(ev.event, "ping");
        assert_eq!(ev.id, Some(h));
        assert_eq!(ev.data["height"].as_u64(), Some(h));
    }
    drop(source);
    node.close();
}

#[test]
fn tokens_bad_requests_and_limits_are_statuses_with_a_json_body() {
    let mut node = Node::in_memory(&format!("{HTTP}token = \"s3cret\"\nmax_subscribers = 1"));
    node.commit();
    let refused = |path: &str, headers: &[(&str, &str)]| -> Refused {
        match EventSource::open(&url(&node, path), headers) {
            Ok(_) => panic!("{path} was accepted"),
            Err(r) => {
                let body: Value = serde_json::from_str(r.body.trim()).expect("a JSON body");
                assert!(body["error"].is_string(), "{}", r.body);
                assert_eq!(r.body.trim().lines().count(), 1);
                r
            }
        }
    };
    assert_eq!(refused("/stream", &[]).status, 401);
    assert_eq!(
        refused("/stream", &[("Authorization", "Bearer nope")]).status,
        401
    );
    assert_eq!(refused("/stream?token=nope", &[]).status, 401);
    assert_eq!(refused("/stream/ping", &[]).status, 401);
    let snapshot = agent().get(&url(&node, "/snapshot")).call().unwrap();
    assert_eq!(snapshot.status().as_u16(), 401);
    let auth = [("Authorization", "Bearer s3cret")];
    let bad = refused("/stream?stores=zz", &auth);
    assert_eq!(bad.status, 400);
    assert!(
        bad.body.contains("zz") && bad.body.contains("stores"),
        "{}",
        bad.body
    );
    let bad = refused("/stream?encoding=latin1", &auth);
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("encoding"), "{}", bad.body);
    let bad = refused("/stream?prefix=nostore", &auth);
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("prefix"), "{}", bad.body);
    assert_eq!(
        refused(
            "/stream",
            &[("Authorization", "Bearer s3cret"), ("Last-Event-ID", "x")]
        )
        .status,
        400
    );

    // The header token opens a stream.
    let by_header = EventSource::open(&url(&node, "/stream"), &auth).unwrap();
    assert!(matches!(by_header.next_event(), Some(ref ev) if ev.event == "put"));
    drop(by_header);
    crate::util::wait_for("the subscription to end", || {
        node.handle.hub().subscribers() == 0
    });
    // The query token works too (for EventSource); the one subscription
    // allowed is then taken.
    let held = open(&node, "/stream?token=s3cret");
    assert!(matches!(held.next_event(), Some(ref ev) if ev.event == "put"));
    let full = refused("/stream", &auth);
    assert_eq!(full.status, 503);
    assert!(full.body.contains("max_subscribers"), "{}", full.body);
    node.close();
    // Shutdown ends the stream (cleanly, or by closing the connection).
    loop {
        match held.next() {
            Item::Ended | Item::Failed(_) => break,
            Item::Comment | Item::Event(_) => {}
            other => panic!("after shutdown: {other:?}"),
        }
    }
}

#[test]
fn a_stalled_client_is_disconnected_and_does_not_hold_back_commits() {
    use std::io::Write as _;
    let mut node = Node::in_memory(&format!("{HTTP}heartbeat_ms = 100"));
    node.commit();
    // A client that sends its request and never reads.
    let address = node.handle.http_address().unwrap();
    let mut stalled = std::net::TcpStream::connect(address).unwrap();
    write!(
        stalled,
        "GET /stream HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    while node.handle.hub().subscribers() == 0 {
        thread::sleep(Duration::from_millis(10));
    }
    // Commits go on (none waits for the client) until it is dropped.
    let mut blocks = 0;
    while node.handle.hub().subscribers() > 0 {
        node.commit_sized(64, 4096);
        blocks += 1;
        assert!(blocks < 5_000, "the stalled client was never disconnected");
        thread::sleep(Duration::from_millis(5));
    }
    let sse_metrics = node.handle.metrics().read()[1];
    assert_eq!(sse_metrics.front_end, statestream_serve::FrontEnd::Sse);
    assert!(sse_metrics.slow_disconnects >= 1, "{sse_metrics:?}");
    assert_eq!(sse_metrics.subscribers, 0);
    // A reading client is served as before.
    let source = open(&node, "/stream");
    let mut mirror = Mirror::default();
    mirror.take(&source.next_event().unwrap());
    assert_eq!(mirror.state, node.state());
    drop((stalled, source));
    node.close();
}

#[test]
fn cors_headers_only_for_the_configured_origins() {
    let mut node = Node::in_memory(&format!("{HTTP}cors_origins = [\"https://app.example\"]"));
    node.commit();
    let get = |origin: &str| {
        agent()
            .get(&url(&node, "/snapshot"))
            .header("Origin", origin)
            .call()
            .unwrap()
    };
    let allowed = get("https://app.example");
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
    let other = get("https://evil.example");
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let preflight = agent()
        .options(&url(&node, "/stream"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Headers", "authorization")
        .call()
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 204);
    assert!(
        preflight
            .headers()
            .get("access-control-allow-headers")
            .and_then(|v| v.to_str().ok())
            // Header names are case-insensitive (RFC 9110).
            .is_some_and(|v| v.to_ascii_lowercase().contains("authorization"))
    );
    node.close();

    // No cors_origins: no CORS headers.
    let mut node = Node::in_memory(HTTP);
    node.commit();
    let r = agent()
        .get(&url(&node, "/snapshot"))
        .header("Origin", "https://app.example")
        .call()
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    node.close();
}

#[test]
fn http_only_and_bad_http_options_name_the_key() {
    use statestream_store::MultiStore;
    use std::path::Path;

    use crate::util::{keys, start_manager};

    let mut store = MultiStore::in_memory(&keys()).unwrap();
    let toml = "[store]\nstreamers = [\"serve\"]\n\n[streamers.serve]\ntype = \"serve\"\nkeys = [\"*\"]\nhttp_address = \"127.0.0.1:0\"\n";
    let (manager, handle) = start_manager(&mut store, toml, Path::new(".")).unwrap();
    assert!(
        handle.grpc_address().is_none(),
        "only http_address: no gRPC"
    );
    assert!(handle.http_address().is_some());
    manager.close(&mut store).unwrap();

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = start_manager(
        &mut store,
        &crate::util::config(&format!("http_address = \"{addr}\"")),
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("in use") && err.contains("http_address"),
        "{err}"
    );
    for (extra, key) in [
        ("http_address = \"nonsense\"", "http_address"),
        (
            "http_address = \"127.0.0.1:0\"\ncors_origins = [\"app.example\"]",
            "cors_origins",
        ),
        (
            "http_address = \"127.0.0.1:0\"\nmax_connection_ms = -1",
            "max_connection_ms",
        ),
    ] {
        let err = start_manager(&mut store, &crate::util::config(extra), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{extra}: {err}");
    }
}

/// The process's resident set size in bytes (Linux: `/proc/self/statm`,
/// its second field in pages of 4 KiB).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's resident field");
    pages * 4096
}

#[test]
fn a_stalled_client_over_many_blocks_keeps_memory_flat() {
    use std::io::Write as _;
    let mut node = Node::in_memory(HTTP);
    node.commit();
    // A client that sends its request and never reads.
    let address = node.handle.http_address().unwrap();
    let mut stalled = std::net::TcpStream::connect(address).unwrap();
    write!(
        stalled,
        "GET /stream HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    crate::util::wait_for("the stalled client's subscription", || {
        node.handle.hub().subscribers() > 0
    });
    let start = node.height();
    for _ in 0..1_000 {
        node.commit();
    }
    let early = rss_bytes();
    for _ in 0..4_000 {
        node.commit();
    }
    let late = rss_bytes();
    assert_eq!(node.height(), start + 5_000, "commits went on");
    let grown = late.saturating_sub(early);
    assert!(
        grown < 32 << 20,
        "RSS grew by {} KiB over 4,000 blocks with a stalled client ({} KiB -> {} KiB)",
        grown >> 10,
        early >> 10,
        late >> 10
    );
    drop(stalled);
    node.close();
}

#[test]
fn curl_reads_a_put_then_patches() {
    use std::process::{Command, Stdio};
    let test = "curl_reads_a_put_then_patches";
    let available = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !statestream_test_support::require(test, "curl", available, "apt-get install -y curl") {
        return;
    }
    let mut node = Node::in_memory(HTTP);
    for _ in 0..2 {
        node.commit();
    }
    let mut curl = Command::new("curl")
        .args(["-N", "-s", "--max-time", "120", &url(&node, "/stream")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl starts");
    let stdout = curl.stdout.take().expect("curl's stdout");
    let events = parse(BufReader::new(stdout));
    let next = || {
        events
            .recv_timeout(Duration::from_secs(60))
            .expect("nothing from curl for 60 s")
    };
    let mut mirror = Mirror::default();
    let put = next().expect("a put");
    assert_eq!(put.event, "put");
    assert!(put.retry.is_some(), "the first event carries retry:");
    mirror.take(&put);
    assert_eq!(mirror.last_id, Some(2));
    assert_eq!(mirror.state, node.state());
    let mut seen = Vec::new();
    for _ in 0..3 {
        node.commit();
    }
    while mirror.last_id.is_none_or(|h| h < 5) {
        let ev = next().expect("the stream goes on");
        mirror.take(&ev);
        seen.push(ev);
    }
    assert!(
        seen.iter()
            .all(|e| e.event == "patch" || e.event == "delete"),
        "{seen:?}"
    );
    assert!(seen.iter().any(|e| e.event == "patch"), "{seen:?}");
    // On the wire, only each block's last event has an `id:` line.
    for (i, e) in seen.iter().enumerate() {
        let last_of_block = seen.get(i + 1).is_none_or(|n| version(n) != version(e));
        assert!(version(e).is_some(), "{e:?}");
        assert_eq!(e.id.is_some(), last_of_block, "{e:?}");
    }
    for (h, changes) in &mirror.blocks {
        assert_eq!(changes, &node.changes(*h), "block {h}");
    }
    assert_eq!(mirror.state, node.state());
    let _ = curl.kill();
    let _ = curl.wait();
    node.close();
}
