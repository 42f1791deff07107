//! What a stranger's connections may cost: half-open connections are
//! closed after `header_timeout_ms`, connections beyond `max_connections`
//! are refused while subscribers go on, a foreign `Host` gets 421.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use statestream_serve::proto::v1::{
    self, state_stream_client::StateStreamClient, subscribe_request::Start,
};
use tonic::transport::Endpoint;

use crate::util::*;

/// How long a test waits for a listener to close a connection: far more
/// than the `header_timeout_ms` the tests set, far less than forever.
const CLOSE_DEADLINE: Duration = Duration::from_secs(30);

/// Reads `stream` until the server closes it (end of stream or a reset);
/// panics naming `what` if it is still open after [`CLOSE_DEADLINE`].
fn assert_closed(stream: &mut TcpStream, what: &str) {
    let deadline = Instant::now() + CLOSE_DEADLINE;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!("{what}: still open after {CLOSE_DEADLINE:?}");
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return,
            // A response (such as an error status) before the close.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: still open after {CLOSE_DEADLINE:?}")
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // Reset or aborted: closed as well.
            Err(_) => return,
        }
    }
}

/// Whether the server still holds `stream` open (nothing to read, no end).
fn still_open(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let open = matches!(stream.peek(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).unwrap();
    open
}

/// `GET /snapshot` over HTTP/1.1 naming `host`: the status and the body
/// (`None` when the server closed the connection without answering).
fn get_snapshot(address: SocketAddr, host: &str) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect(address).unwrap();
    tcp.set_read_timeout(Some(CLOSE_DEADLINE)).unwrap();
    let request = format!("GET /snapshot HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).ok()?;
    let response = String::from_utf8(response).expect("a UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().expect("a status code");
    Some((status, body.to_string()))
}

#[test]
fn half_open_connections_are_closed_after_header_timeout_ms() {
    let node = Node::in_memory("http_address = \"127.0.0.1:0\"\nheader_timeout_ms = 200");
    let http = node.handle.http_address().expect("HTTP is on");
    let grpc = node.handle.grpc_address().expect("gRPC is on");
    let mut half_head = TcpStream::connect(http).unwrap();
    half_head
        .write_all(b"GET /snapshot HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .unwrap();
    let mut silent_http = TcpStream::connect(http).unwrap();
    let mut half_preface = TcpStream::connect(grpc).unwrap();
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let mut silent_grpc = TcpStream::connect(grpc).unwrap();
    assert_closed(
        &mut half_head,
        "the HTTP listener closing a connection that sent half a request head",
    );
    assert_closed(
        &mut silent_http,
        "the HTTP listener closing a connection that sent nothing",
    );
    assert_closed(
        &mut half_preface,
        "the gRPC listener closing a connection that sent half the HTTP/2 preface",
    );
    assert_closed(
        &mut silent_grpc,
        "the gRPC listener closing a connection that sent nothing",
    );
    // The listeners still serve.
    let (status, _) = get_snapshot(http, "localhost").expect("an answer to /snapshot");
    assert_eq!(status, 200);
    node.close();
}

#[test]
fn connections_beyond_max_connections_are_refused_while_a_subscriber_receives_blocks() {
    // Holders never time out during the test: a closed stranger is the cap.
    let mut node = Node::in_memory(
        "http_address = \"127.0.0.1:0\"\nmax_connections = 2\nheader_timeout_ms = 600000",
    );
    node.commit();
    let http = node.handle.http_address().expect("HTTP is on");
    let grpc = node.handle.grpc_address().expect("gRPC is on");
    let rt = runtime();
    let address = node.address();
    // gRPC: the subscriber's connection and one idle holder fill the cap.
    let mut stream = rt.block_on(async {
        let mut c = client(&address).await;
        c.subscribe(subscribe_request(Start::Live(v1::StartLive {})))
            .await
            .unwrap()
            .into_inner()
    });
    let grpc_holder = TcpStream::connect(grpc).unwrap();
    let mut stranger = TcpStream::connect(grpc).unwrap();
    assert_closed(
        &mut stranger,
        "the gRPC listener refusing a third connection with max_connections = 2",
    );
    assert!(
        still_open(&grpc_holder),
        "the gRPC listener closed a connection within its cap"
    );
    let mut received = Received::default();
    let mut last = 0;
    for _ in 0..3 {
        last = node.commit();
    }
    rt.block_on(read_until(&mut stream, &mut received, last));
    assert_eq!(received.blocks.last().map(|b| b.0), Some(last));
    // Every block after the subscription began, in order: the three
    // committed since, and block 1 too when the async streamer had not yet
    // handed it to the hub when the live subscription started.
    let heights: Vec<u64> = received.blocks.iter().map(|b| b.0).collect();
    assert!(
        heights.windows(2).all(|w| w[1] == w[0] + 1) && heights.len() >= 3,
        "every block after the subscription began: {heights:?}"
    );

    // HTTP: two idle holders fill the cap.
    let first = TcpStream::connect(http).unwrap();
    let second = TcpStream::connect(http).unwrap();
    let mut stranger = TcpStream::connect(http).unwrap();
    assert_closed(
        &mut stranger,
        "the HTTP listener refusing a third connection with max_connections = 2",
    );
    assert!(
        still_open(&first) && still_open(&second),
        "the HTTP listener closed a connection within its cap"
    );
    // A closed holder frees its place.
    drop(first);
    wait_for("/snapshot to be answered once a holder closed", || {
        get_snapshot(http, "localhost").is_some_and(|(status, _)| status == 200)
    });
    // The subscriber is still served.
    let next = node.commit();
    rt.block_on(read_until(&mut stream, &mut received, next));
    drop(second);
    drop(grpc_holder);
    node.close();
}

#[test]
fn a_foreign_host_gets_421_and_local_and_allowed_names_work() {
    let mut node =
        Node::in_memory("http_address = \"127.0.0.1:0\"\nallowed_hosts = [\"node1.example.org\"]");
    node.commit();
    node.wait_served();
    let http = node.handle.http_address().expect("HTTP is on");
    let port = http.port();
    let (status, body) =
        get_snapshot(http, &format!("rebind.attacker.example:{port}")).expect("an answer");
    assert_eq!(status, 421, "{body}");
    assert!(
        body.contains("is not served here"),
        "the 421 says why: {body}"
    );
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "node1.example.org".to_string(),
    ] {
        let (status, body) = get_snapshot(http, &host).expect("an answer");
        assert_eq!(status, 200, "Host: {host}: {body}");
        assert!(body.contains("\"height\":1"), "Host: {host}: {body}");
    }

    // gRPC: the `:authority` a client dials by is checked too.
    let grpc = node.handle.grpc_address().expect("gRPC is on");
    let rt = runtime();
    rt.block_on(async {
        let call = |origin: String| async move {
            let channel = Endpoint::from_shared(format!("http://{grpc}"))
                .unwrap()
                .origin(origin.parse().unwrap())
                .connect()
                .await
                .unwrap();
            StateStreamClient::new(channel)
                .list_stores(v1::ListStoresRequest {})
                .await
        };
        let foreign = call(format!("http://rebind.attacker.example:{}", grpc.port()))
            .await
            .expect_err("a foreign :authority is refused");
        assert_ne!(foreign.code(), tonic::Code::Ok);
        let local = call(format!("http://localhost:{}", grpc.port()))
            .await
            .expect("localhost is served");
        assert_eq!(local.into_inner().head_height, 1);
    });
    node.close();
}

#[test]
fn listener_keys_out_of_range_are_errors_naming_the_key() {
    let mut store = statestream_store::MultiStore::in_memory(&keys()).unwrap();
    for (extra, key, says) in [
        (
            "max_connections = 0",
            "max_connections",
            "from 1 to 1048576",
        ),
        (
            "max_connections = 1048577",
            "max_connections",
            "from 1 to 1048576",
        ),
        (
            "header_timeout_ms = 0",
            "header_timeout_ms",
            "from 1 to 3600000",
        ),
        (
            "header_timeout_ms = 3600001",
            "header_timeout_ms",
            "from 1 to 3600000",
        ),
        (
            "max_concurrent_streams = 0",
            "max_concurrent_streams",
            "from 1 to 1048576",
        ),
        (
            "allowed_hosts = [\"http://node1.example.org\"]",
            "allowed_hosts",
            "is not a host name",
        ),
        (
            "allowed_hosts = [\"node1.example.org:8080\"]",
            "allowed_hosts",
            "is not a host name",
        ),
    ] {
        let err = start_manager(&mut store, &config(extra), std::path::Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key) && err.contains(says), "{extra}: {err}");
    }
}

#[test]
fn grpc_announces_max_concurrent_streams() {
    let node = Node::in_memory("max_concurrent_streams = 7");
    let grpc = node.handle.grpc_address().expect("gRPC is on");
    let mut tcp = TcpStream::connect(grpc).unwrap();
    tcp.set_read_timeout(Some(CLOSE_DEADLINE)).unwrap();
    // The client preface and an empty SETTINGS frame.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    // The server's first frame is its SETTINGS: 9-byte header, then
    // 6-byte entries (identifier, value); MAX_CONCURRENT_STREAMS is 0x3.
    let mut header = [0u8; 9];
    tcp.read_exact(&mut header)
        .expect("the server's SETTINGS frame header");
    assert_eq!(header[3], 0x4, "the first frame is SETTINGS: {header:?}");
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload)
        .expect("the server's SETTINGS payload");
    let announced = payload.chunks_exact(6).find_map(|entry| {
        (u16::from_be_bytes([entry[0], entry[1]]) == 0x3)
            .then(|| u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]))
    });
    assert_eq!(announced, Some(7), "SETTINGS: {payload:?}");
    drop(tcp);
    node.close();
}
