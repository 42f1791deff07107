//! TLS and mTLS on a real listener, with certificates made by `openssl`
//! in the test and `curl` as the client.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use statestream_net::{
    ConnectionStats, Limits, Listener, PeerCertificate, ServerTls, TlsFiles, reload_all,
};
use statestream_test_support::tls::{certificate_authority, openssl, signed_certificate};
use tokio::sync::oneshot;
use tower::service_fn;

/// A TLS listener on a thread of its own; stopped when dropped, also when
/// a test fails. `GET /` answers who the client certificate names;
/// `GET /stream` sends `tick N` lines until the client goes.
struct Server {
    address: SocketAddr,
    stats: Arc<ConnectionStats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A body sending a line every 50 ms, forever.
struct Ticks {
    interval: tokio::time::Interval,
    sent: u64,
}

impl http_body::Body for Ticks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this.interval.poll_tick(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                this.sent += 1;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!(
                    "tick {}\n",
                    this.sent
                ))))))
            }
        }
    }
}

async fn route(
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<BoxBody<Bytes, Infallible>>, Infallible> {
    if request.uri().path() == "/stream" {
        let ticks = Ticks {
            interval: tokio::time::interval(Duration::from_millis(50)),
            sent: 0,
        };
        return Ok(http::Response::new(ticks.boxed()));
    }
    let who = match request.extensions().get::<PeerCertificate>() {
        Some(peer) => format!(
            "cn={} subject={}\n",
            peer.subject_cn.as_deref().unwrap_or("-"),
            peer.subject
        ),
        None => "no client certificate\n".to_string(),
    };
    let body = http_body_util::Full::new(Bytes::from(who)).boxed();
    Ok(http::Response::new(body))
}

impl Server {
    fn start(tls: ServerTls) -> Server {
        Server::start_with(tls, Duration::from_secs(5))
    }

    fn start_with(tls: ServerTls, header_timeout: Duration) -> Server {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        tcp.set_nonblocking(true).expect("non-blocking");
        let address = tcp.local_addr().expect("local address");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let tcp = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(tcp).expect("tokio listener")
        };
        let mut limits = Limits::default();
        limits.header_timeout = header_timeout;
        let listener = Listener::new(tcp, limits).tls(tls);
        let stats = listener.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(listener.serve(service_fn(route), async {
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

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.address.port())
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

fn curl_available(test: &str) -> bool {
    let found = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    statestream_test_support::require(test, "curl", found, "apt-get install -y curl")
}

/// `curl` with `args` and the URL, by a 20-second deadline: its exit code,
/// stdout and stderr.
fn curl(args: &[&str], url: &str) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// A CA and a server certificate it signed for localhost.
struct Pki {
    ca: (PathBuf, PathBuf),
    server: (PathBuf, PathBuf),
}

fn pki(dir: &Path, name: &str) -> Pki {
    let ca = certificate_authority(dir, &format!("{name}-ca"));
    let server = signed_certificate(
        dir,
        &format!("{name}-server"),
        "/CN=localhost",
        "IP:127.0.0.1,DNS:localhost",
        &ca,
    );
    Pki { ca, server }
}

#[test]
fn tls_serves_http1_and_http2_by_alpn() {
    if !openssl("tls_serves_http1_and_http2_by_alpn")
        || !curl_available("tls_serves_http1_and_http2_by_alpn")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = pki(dir.path(), "a");
    let tls = ServerTls::load("test", TlsFiles::new(&pki.server.0, &pki.server.1))
        .expect("load the certificate");
    let server = Server::start(tls);
    // A client that connects and sends nothing does not hold up others:
    // its handshake waits on its own task.
    let _silent = std::net::TcpStream::connect(server.address).expect("connect");
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (code, out, err) = curl(
            &[flag, "--cacert", path(&pki.ca.0), "-w", "%{http_version}"],
            &server.url("/"),
        );
        assert_eq!(code, 0, "curl {flag}: {err}");
        assert_eq!(out, format!("no client certificate\n{version}"), "{flag}");
    }
    // Plain HTTP on a TLS listener is a failed handshake, not a request.
    let (code, _, _) = curl(&[], &format!("http://127.0.0.1:{}/", server.address.port()));
    assert_ne!(code, 0);
    assert!(server.stats.handshake_failed() >= 1, "{:?}", server.stats);
}

#[test]
fn tls_wrong_ca_is_refused_by_the_client() {
    if !openssl("tls_wrong_ca_is_refused_by_the_client")
        || !curl_available("tls_wrong_ca_is_refused_by_the_client")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = pki(dir.path(), "a");
    let other = certificate_authority(dir.path(), "other-ca");
    let tls = ServerTls::load("test", TlsFiles::new(&pki.server.0, &pki.server.1))
        .expect("load the certificate");
    let server = Server::start(tls);
    let (code, _, err) = curl(&["--cacert", path(&other.0)], &server.url("/"));
    // 60: the peer certificate cannot be authenticated with the CA.
    assert_eq!(code, 60, "{err}");
}

#[test]
fn mtls_hands_the_client_subject_to_handlers_and_refuses_others() {
    if !openssl("mtls_hands_the_client_subject_to_handlers_and_refuses_others")
        || !curl_available("mtls_hands_the_client_subject_to_handlers_and_refuses_others")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = pki(dir.path(), "a");
    let clients_ca = certificate_authority(dir.path(), "clients-ca");
    let wallet = signed_certificate(
        dir.path(),
        "wallet",
        "/O=Example/CN=wallet",
        "",
        &clients_ca,
    );
    // Signed by a CA the server does not trust.
    let stranger_ca = certificate_authority(dir.path(), "stranger-ca");
    let stranger = signed_certificate(dir.path(), "stranger", "/CN=wallet", "", &stranger_ca);
    let files = TlsFiles::new(&pki.server.0, &pki.server.1).client_ca_file(&clients_ca.0);
    let tls = ServerTls::load("test", files).expect("load the certificates");
    assert!(tls.requires_client_certificates());
    let server = Server::start(tls);
    for flag in ["--http1.1", "--http2"] {
        let (code, out, err) = curl(
            &[
                flag,
                "--cacert",
                path(&pki.ca.0),
                "--cert",
                path(&wallet.0),
                "--key",
                path(&wallet.1),
            ],
            &server.url("/"),
        );
        assert_eq!(code, 0, "curl {flag} with the wallet certificate: {err}");
        assert_eq!(out, "cn=wallet subject=CN=wallet,O=Example\n", "{flag}");
    }
    let before = server.stats.handshake_failed();
    let (code, out, _) = curl(&["--cacert", path(&pki.ca.0)], &server.url("/"));
    assert_ne!(code, 0, "no client certificate must be refused: {out}");
    let (code, out, _) = curl(
        &[
            "--cacert",
            path(&pki.ca.0),
            "--cert",
            path(&stranger.0),
            "--key",
            path(&stranger.1),
        ],
        &server.url("/"),
    );
    assert_ne!(
        code, 0,
        "a certificate of an untrusted CA must be refused: {out}"
    );
    // Both refused in the handshake; counted once the server saw it fail.
    statestream_test_support::wait_for("two failed handshakes counted", || {
        server.stats.handshake_failed() >= before + 2
    });
}

/// A running `curl -N` whose output lines arrive on a channel; killed when
/// dropped.
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    fn start(ca: &Path, url: &str) -> Streaming {
        let mut child = Command::new("curl")
            .args(["-sSN", "--http1.1", "--cacert", path(ca), url])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run curl");
        let stdout = child.stdout.take().expect("curl's stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Streaming { child, lines }
    }

    /// The next line, by `deadline`.
    fn next(&self, deadline: Instant, what: &str) -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("waited for {what}: {e}"))
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tls_reload_serves_new_certificates_and_keeps_open_streams() {
    if !openssl("tls_reload_serves_new_certificates_and_keeps_open_streams")
        || !curl_available("tls_reload_serves_new_certificates_and_keeps_open_streams")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let old = pki(dir.path(), "old");
    let new = pki(dir.path(), "new");
    // The files the listener reads, replaced in place as an operator's
    // renewal does.
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&old.server.0, &cert).expect("copy");
    std::fs::copy(&old.server.1, &key).expect("copy");
    let tls = ServerTls::load("test", TlsFiles::new(&cert, &key)).expect("load");
    let server = Server::start(tls);
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = Streaming::start(&old.ca.0, &server.url("/stream"));
    assert_eq!(stream.next(deadline, "the first tick"), "tick 1");

    std::fs::copy(&new.server.0, &cert).expect("copy");
    std::fs::copy(&new.server.1, &key).expect("copy");
    let reloaded = reload_all();
    assert!(reloaded.reloaded >= 1, "{reloaded:?}");
    let (code, out, err) = curl(&["--cacert", path(&new.ca.0)], &server.url("/"));
    assert_eq!(
        (code, out.as_str()),
        (0, "no client certificate\n"),
        "{err}"
    );
    let (code, _, err) = curl(&["--cacert", path(&old.ca.0)], &server.url("/"));
    assert_eq!(code, 60, "the old certificate is no longer served: {err}");
    // The stream opened before the reload still receives.
    let mut last = String::new();
    for _ in 0..5 {
        last = stream.next(deadline, "ticks after the reload");
    }
    assert!(last.starts_with("tick "), "{last}");

    // A bad file keeps the certificates in use.
    std::fs::write(&cert, "not a certificate\n").expect("write");
    let reloaded = reload_all();
    assert!(reloaded.failed >= 1, "{reloaded:?}");
    let (code, _, err) = curl(&["--cacert", path(&new.ca.0)], &server.url("/"));
    assert_eq!(
        code, 0,
        "still the new certificate after a bad reload: {err}"
    );
    // A key that does not go with the certificate is refused too.
    std::fs::copy(&new.server.0, &cert).expect("copy");
    std::fs::copy(&old.server.1, &key).expect("copy");
    let error = TlsFiles::new(&cert, &key)
        .load()
        .expect_err("a mismatched key");
    assert!(error.to_string().contains("do not go together"), "{error}");
}

#[test]
fn tls_files_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("missing.pem");
    let error = TlsFiles::new(&missing, &missing)
        .load()
        .expect_err("a missing file");
    assert!(error.to_string().contains("missing.pem"), "{error}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let error = TlsFiles::new(&empty, &empty)
        .load()
        .expect_err("no certificate");
    assert!(
        error.to_string().contains("holds no PEM certificate"),
        "{error}"
    );
}

#[test]
fn tls_handshake_that_stalls_is_closed_after_the_header_timeout() {
    use std::io::{Read, Write};
    if !openssl("tls_handshake_that_stalls_is_closed_after_the_header_timeout")
        || !curl_available("tls_handshake_that_stalls_is_closed_after_the_header_timeout")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = pki(dir.path(), "a");
    let tls = ServerTls::load("test", TlsFiles::new(&pki.server.0, &pki.server.1))
        .expect("load the certificate");
    let server = Server::start_with(tls, Duration::from_millis(300));
    // One connection sends nothing, one the first bytes of a ClientHello
    // record header and no more.
    let mut silent = std::net::TcpStream::connect(server.address).expect("connect");
    let mut partial = std::net::TcpStream::connect(server.address).expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01])
        .expect("send a partial record header");
    // Others are served meanwhile.
    let (code, _, err) = curl(&["--cacert", path(&pki.ca.0)], &server.url("/"));
    assert_eq!(code, 0, "{err}");
    for (stream, what) in [
        (&mut silent, "a silent connection"),
        (&mut partial, "a partial handshake"),
    ] {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{what}: expected the server to close it, got {other:?}"),
        }
    }
    statestream_test_support::wait_for("two stalled handshakes counted", || {
        server.stats.handshake_failed() >= 2
    });
}
