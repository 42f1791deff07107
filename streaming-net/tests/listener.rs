//! Real listeners on port 0, real sockets.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use statestream_net::{ConnectionStats, HostCheck, Limits, Listener};
use tokio::sync::oneshot;
use tower::{Layer, service_fn};

/// A listener serving `ok` behind the Host check, on a thread of its own;
/// stopped when dropped, also when a test fails.
struct Server {
    address: SocketAddr,
    stats: Arc<ConnectionStats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(limits: Limits, allowed_hosts: &[&str]) -> Server {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        tcp.set_nonblocking(true).expect("non-blocking");
        let address = tcp.local_addr().expect("local address");
        let check = HostCheck::for_listener(address, allowed_hosts);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let tcp = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(tcp).expect("tokio listener")
        };
        let listener = Listener::new(tcp, limits);
        let stats = listener.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let routes = service_fn(|_request: http::Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok\n"))))
            });
            runtime.block_on(listener.serve(check.layer(routes), async {
                let _ = stopped.await;
            }));
        });
        Server {
            address,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn connect(address: SocketAddr, deadline: Instant) -> TcpStream {
    let left = deadline.saturating_duration_since(Instant::now());
    let stream = TcpStream::connect_timeout(&address, left.max(Duration::from_millis(1)))
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .expect("read timeout");
    stream
}

/// Reads until the server closes the connection (EOF or reset), by the
/// deadline; returns what it sent.
fn read_until_closed(stream: &mut TcpStream, deadline: Instant, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "waited for the server to close {what}");
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("waited for the server to close {what}: still open at the deadline")
            }
            Err(e) => panic!("reading {what}: {e}"),
        }
    }
}

/// One `GET /` with `host`, `Connection: close`: the status and the body.
fn get(address: SocketAddr, host: &str, deadline: Instant) -> (u16, String) {
    let mut stream = connect(address, deadline);
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let response = read_until_closed(&mut stream, deadline, "the response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn limits(max_connections: usize, header_timeout: Duration) -> Limits {
    let mut limits = Limits::default();
    limits.max_connections = max_connections;
    limits.header_timeout = header_timeout;
    limits
}

#[test]
fn listener_closes_half_open_connections_after_header_timeout() {
    let server = Server::start(limits(64, Duration::from_millis(300)), &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let starts: [&[u8]; 4] = [
        b"GET /healthz HTTP/1.1\r\nHost: loc",
        b"",
        b"PRI * HTTP/2",
        b"G",
    ];
    let mut streams: Vec<TcpStream> = starts
        .iter()
        .map(|start| {
            let mut s = connect(server.address, deadline);
            s.write_all(start).expect("send half a request");
            s
        })
        .collect();
    for (stream, start) in streams.iter_mut().zip(starts) {
        let got = read_until_closed(
            stream,
            deadline,
            &format!(
                "a connection that sent {:?}",
                String::from_utf8_lossy(start)
            ),
        );
        // Closed without a response to a request it never finished (hyper
        // may answer 408 to a timed-out head).
        let text = String::from_utf8_lossy(&got);
        assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    // Still serving.
    assert_eq!(get(server.address, "localhost", deadline).0, 200);
    // The empty one and the partial HTTP/2 preface never reached hyper.
    assert!(server.stats.timed_out() >= 2, "{:?}", server.stats);
}

#[test]
fn listener_closes_idle_keep_alive_connections() {
    let server = Server::start(limits(64, Duration::from_millis(300)), &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = connect(server.address, deadline);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send a request");
    let got = read_until_closed(&mut stream, deadline, "an idle keep-alive connection");
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn listener_refuses_connections_beyond_the_cap() {
    let server = Server::start(limits(3, Duration::from_secs(60)), &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect(server.address, deadline);
            s.write_all(b"GET / HTTP/1.1\r\n")
                .expect("send half a request");
            s
        })
        .collect();
    // Accepted in order: wait until the three are open before the fourth.
    while server.stats.open() < 3 {
        assert!(Instant::now() < deadline, "waited for 3 open connections");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut extra = connect(server.address, deadline);
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let got = read_until_closed(&mut extra, deadline, "a connection beyond the cap");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert_eq!(server.stats.refused(), 1);
    // One of the three goes away: a new connection is served again.
    drop(held.pop());
    while server.stats.open() > 2 {
        assert!(
            Instant::now() < deadline,
            "waited for a connection to close"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(get(server.address, "localhost", deadline).0, 200);
}

#[test]
fn host_check_refuses_foreign_hosts_with_421() {
    let server = Server::start(Limits::default(), &["metrics.internal"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let port = server.address.port();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "localhost".to_owned(),
        format!("metrics.internal:{port}"),
    ] {
        assert_eq!(
            get(server.address, &host, deadline),
            (200, "ok\n".to_owned()),
            "{host}"
        );
    }
    for host in [
        format!("evil.example:{port}"),
        "rebind.attacker.test".to_owned(),
    ] {
        let (status, body) = get(server.address, &host, deadline);
        assert_eq!(status, 421, "{host}");
        assert_eq!(body.lines().count(), 1, "{body}");
        assert!(
            body.starts_with("{\"error\":") && body.contains(&host),
            "{body}"
        );
    }
}

/// Reads one HTTP/2 frame: type, flags, payload.
fn h2_frame(stream: &mut TcpStream) -> (u8, u8, Vec<u8>) {
    let mut head = [0u8; 9];
    stream
        .read_exact(&mut head)
        .expect("an HTTP/2 frame header");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .expect("an HTTP/2 frame payload");
    (head[3], head[4], payload)
}

#[test]
fn listener_http2_announces_max_concurrent_streams() {
    let mut limits = Limits::default();
    limits.max_concurrent_streams = 7;
    let server = Server::start(limits, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = connect(server.address, deadline);
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("send the preface and empty settings");
    let (kind, flags, payload) = h2_frame(&mut stream);
    assert_eq!((kind, flags), (4, 0), "the server's SETTINGS first");
    let settings: Vec<(u16, u32)> = payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    // SETTINGS_MAX_CONCURRENT_STREAMS is 0x3.
    assert!(settings.contains(&(3, 7)), "{settings:?}");
}

#[test]
fn listener_http2_closes_a_connection_idle_without_streams() {
    let mut limits = Limits::default();
    limits.idle_timeout = Duration::from_millis(300);
    // Far beyond the test: only the idle timeout can close it.
    limits.header_timeout = Duration::from_secs(3600);
    let server = Server::start(limits, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = connect(server.address, deadline);
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("send the preface and empty settings");
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "waited for the idle connection to close");
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match h2_frame_or_end(&mut stream) {
            Some((kind, flags, payload)) => {
                // Answer pings, as a live client would.
                if kind == 6 && flags & 1 == 0 {
                    let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                    ack.extend_from_slice(&payload);
                    let _ = stream.write_all(&ack);
                }
                frames.push(kind);
            }
            None => break,
        }
    }
    // GOAWAY (type 7) before the close.
    assert!(frames.contains(&7), "{frames:?}");
}

/// One frame, or `None` at the end of the connection.
fn h2_frame_or_end(stream: &mut TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    match stream.read_exact(&mut head) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            return None;
        }
        Err(e) => panic!("waited for the server to close the idle HTTP/2 connection: {e}"),
    }
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .expect("an HTTP/2 frame payload");
    Some((head[3], head[4], payload))
}

#[test]
fn listener_refuses_an_oversized_request_head() {
    let server = Server::start(Limits::default(), &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = connect(server.address, deadline);
    let cookie = "a".repeat(128 * 1024);
    // The server may close while the head is still being sent.
    let _ = write!(
        stream,
        "GET / HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\n\r\n"
    );
    let got = read_until_closed(&mut stream, deadline, "a connection with a 128 KiB head");
    let text = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");
    assert_eq!(get(server.address, "localhost", deadline).0, 200);
}
