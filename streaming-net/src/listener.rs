//! The accept loop: a connection cap, `TCP_NODELAY`, and hyper under
//! timeouts.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::activity::{Activity, Tracked};
use crate::peer::WithPeer;
use crate::prefixed::Prefixed;
use crate::tls::{PeerCertificate, ServerTls};

/// Default of [`Limits::max_connections`]: well below the usual soft
/// descriptor limit (1024), so that a listener's strangers leave the node
/// descriptors for its store and its streamers' files.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Default of [`Limits::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of [`Limits::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default of [`Limits::max_concurrent_streams`].
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 128;

/// How many streams an HTTP/2 connection may make the server reset for
/// protocol errors before the connection is closed: h2's own default,
/// set explicitly because a builder left at `None` disables the cap.
pub const H2_MAX_LOCAL_RESET_STREAMS: usize = 1024;

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long the accept loop pauses after a failed accept (out of
/// descriptors, most often) before it tries again, rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// HTTP/1: the most a connection buffers while reading a request head (a
/// larger head is refused); hyper's default would let each of
/// `max_connections` strangers hold hundreds of kilobytes.
const H1_MAX_BUF_SIZE: usize = 64 * 1024;

/// How long a stopping listener lets its connections finish their requests.
const GRACE: Duration = Duration::from_secs(2);

/// What a [`Listener`] serves: a tower service of HTTP requests whose
/// errors are responses (`Infallible`), cloned for each connection, its
/// futures run on any task. Every such service is one (axum's `Router`,
/// tonic's `Routes`, with their layers).
pub trait HttpService<B>:
    tower::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> HttpService<B> for S where
    S: tower::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A response body hyper can send from any task.
pub trait ResponseBody:
    http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

impl<B> ResponseBody for B where
    B: http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static
{
}

/// What one listener allows a client. Start from [`Limits::default`] and
/// set what differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Connections open at once; one more is closed as soon as it is
    /// accepted (and counted in [`ConnectionStats::refused`]). Default
    /// [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// How long a client has to send a whole HTTP/1 request head (also
    /// the bound on an idle keep-alive connection between requests), and
    /// for the first bytes of any connection: the HTTP/2 preface or the
    /// start of an HTTP/1 request. Default [`DEFAULT_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// HTTP/2: a connection with no stream open for this long is closed
    /// (GOAWAY, then the close); also the interval of keep-alive pings, a
    /// client that answers none within `header_timeout` being
    /// disconnected. Default [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// HTTP/2: streams one connection may have open at once. Default
    /// [`DEFAULT_MAX_CONCURRENT_STREAMS`].
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
        }
    }
}

/// Counters of one listener, readable while it serves.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    accepted: AtomicU64,
    refused: AtomicU64,
    open: AtomicU64,
    timed_out: AtomicU64,
    handshake_failed: AtomicU64,
}

impl ConnectionStats {
    /// Connections accepted and served.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed at once because `max_connections` were open.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed before hyper took them over: the client sent
    /// nothing, or only part of the HTTP/2 preface, within
    /// `header_timeout`, or closed first.
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// TLS listeners: connections closed because the TLS handshake failed
    /// (not TLS, a certificate the client refused, no or a bad client
    /// certificate under mTLS) or did not finish within `header_timeout`.
    pub fn handshake_failed(&self) -> u64 {
        self.handshake_failed.load(Ordering::Relaxed)
    }
}

/// A bound TCP listener with its [`Limits`]; [`serve`](Listener::serve)
/// runs its accept loop.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    tls: Option<ServerTls>,
}

impl Listener {
    /// Wraps a bound listener (bind it with tokio, or bind a
    /// `std::net::TcpListener` in non-blocking mode and convert it, to
    /// report a bind error before starting a task).
    pub fn new(tcp: TcpListener, limits: Limits) -> Listener {
        Listener {
            tcp,
            limits,
            stats: Arc::default(),
            tls: None,
        }
    }

    /// Serves TLS only, with `tls`'s certificates (those of its latest
    /// reload for each new connection). The handshake runs on the
    /// connection's own task, within `header_timeout` together with the
    /// first bytes of the request, so a slow client holds up no other.
    /// Under mTLS the client's verified certificate is in every request's
    /// extensions as a [`PeerCertificate`].
    pub fn tls(mut self, tls: ServerTls) -> Listener {
        self.tls = Some(tls);
        self
    }

    /// The listener's counters; they stay readable after `serve` returns.
    pub fn stats(&self) -> Arc<ConnectionStats> {
        Arc::clone(&self.stats)
    }

    /// Accepts and serves connections with `service` until `shutdown`
    /// completes; then stops accepting, asks open connections to finish
    /// their requests, and returns once they closed or after a short
    /// grace period. Each connection runs on a task of its own (call it
    /// inside a tokio runtime).
    pub async fn serve<S, B>(self, service: S, shutdown: impl Future<Output = ()>)
    where
        S: HttpService<B>,
        B: ResponseBody,
    {
        let Listener {
            tcp,
            limits,
            stats,
            tls,
        } = self;
        let permits = Arc::new(Semaphore::new(
            limits.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        let (stop, stopping) = watch::channel(false);
        let mut shutdown = pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = tcp.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and the like: the connection waits in the
                    // backlog; try again shortly instead of spinning.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                let refused = stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged at the first refusal and then rarely: a flood
                // must not become a flood of log lines.
                if refused.is_power_of_two() {
                    tracing::warn!(
                        %peer,
                        max_connections = limits.max_connections,
                        refused,
                        "connection limit reached: closing new connections"
                    );
                }
                drop(stream);
                continue;
            };
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            stats.open.fetch_add(1, Ordering::Relaxed);
            let stats = Arc::clone(&stats);
            let service = service.clone();
            let stopping = stopping.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                connection(stream, tls, limits, service, stopping, &stats).await;
                stats.open.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
        drop(tcp);
        let _ = stop.send(true);
        // Every connection task holds a permit: all of them back means
        // every connection closed.
        let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(GRACE, permits.acquire_many(all)).await;
    }
}

enum Protocol {
    Http1,
    Http2,
}

/// Reads the first bytes, up to the length of the HTTP/2 preface or the
/// first that differs from it: `None` when the client closed or was too
/// slow.
async fn sniff<T: AsyncRead + Unpin>(
    stream: &mut T,
    deadline: Instant,
) -> Option<(Protocol, Vec<u8>)> {
    let read = async {
        let mut prefix = Vec::with_capacity(H2_PREFACE.len());
        let mut buf = [0u8; 24];
        loop {
            let want = H2_PREFACE.len() - prefix.len();
            let n = stream.read(&mut buf[..want]).await.ok()?;
            if n == 0 {
                return None;
            }
            prefix.extend_from_slice(&buf[..n]);
            if !H2_PREFACE.starts_with(&prefix) {
                return Some((Protocol::Http1, prefix));
            }
            if prefix.len() == H2_PREFACE.len() {
                return Some((Protocol::Http2, prefix));
            }
        }
    };
    tokio::time::timeout_at(deadline, read).await.ok().flatten()
}

/// Completes once the listener stops (the watch's guard is not held
/// across an await).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

async fn connection<S, B>(
    stream: TcpStream,
    tls: Option<ServerTls>,
    limits: Limits,
    service: S,
    stopping: watch::Receiver<bool>,
    stats: &ConnectionStats,
) where
    S: HttpService<B>,
    B: ResponseBody,
{
    // Small responses and streamed events go out at once.
    let _ = stream.set_nodelay(true);
    // One deadline for the handshake and the first bytes of the request.
    let deadline = Instant::now() + limits.header_timeout;
    // Each kind of connection is boxed on its own: the task then holds
    // only what its connection needs (a plain HTTP/1 stream is a few
    // KiB), not the largest of them all (TLS with HTTP/2, about 11 KiB).
    match tls {
        None => {
            Box::pin(serve_stream(
                stream, None, deadline, limits, service, stopping, stats,
            ))
            .await
        }
        Some(tls) => {
            Box::pin(tls_connection(
                stream, tls, deadline, limits, service, stopping, stats,
            ))
            .await
        }
    }
}

/// A TLS connection: the handshake, then [`serve_stream`].
async fn tls_connection<S, B>(
    stream: TcpStream,
    tls: ServerTls,
    deadline: Instant,
    limits: Limits,
    service: S,
    mut stopping: watch::Receiver<bool>,
    stats: &ConnectionStats,
) where
    S: HttpService<B>,
    B: ResponseBody,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    let handshake = tokio::select! {
        handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream).into_fallible()) => handshake,
        () = stopped(&mut stopping) => return,
    };
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err((error, stream))) => {
            stats.handshake_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, "TLS handshake failed");
            linger(stream, deadline).await;
            return;
        }
        Err(_) => {
            stats.handshake_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| PeerCertificate::from_der(cert.as_ref()))
        .map(Arc::new);
    serve_stream(stream, peer, deadline, limits, service, stopping, stats).await;
}

/// How long a refused TLS client's bytes are read and dropped at most
/// (see [`linger`]).
const LINGER: Duration = Duration::from_secs(1);

/// Closes a connection whose TLS handshake failed so that the client
/// reads the alert: its write side first (the alert went out before the
/// error came back), then what the client still sends is read and
/// dropped until it closes, for [`LINGER`] at most and never past
/// `deadline`. Closing with unread bytes would make the kernel answer
/// with a reset, and a reset makes the client's kernel drop the alert it
/// has not read yet: under TLS 1.3 a client without the certificate that
/// mTLS requires has finished its handshake and sent its first request
/// when the refusal comes, and it would see a bare "connection reset"
/// instead of `CertificateRequired`.
async fn linger(mut stream: TcpStream, deadline: Instant) {
    use tokio::io::AsyncWriteExt as _;
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline.min(Instant::now() + LINGER), drain).await;
}

/// Serves HTTP/1.1 or HTTP/2 (told apart by the first bytes) on a
/// connection, plain or after its TLS handshake.
async fn serve_stream<T, S, B>(
    mut stream: T,
    peer: Option<Arc<PeerCertificate>>,
    deadline: Instant,
    limits: Limits,
    service: S,
    mut stopping: watch::Receiver<bool>,
    stats: &ConnectionStats,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<B>,
    B: ResponseBody,
{
    let sniffed = tokio::select! {
        sniffed = sniff(&mut stream, deadline) => sniffed,
        () = stopped(&mut stopping) => return,
    };
    let Some((protocol, prefix)) = sniffed else {
        stats.timed_out.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let service = WithPeer {
        inner: service,
        peer,
    };
    let io = TokioIo::new(Prefixed::new(prefix, stream));
    let result = match protocol {
        Protocol::Http1 => {
            let service = TowerToHyperService::new(service);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(H1_MAX_BUF_SIZE)
                .keep_alive(true);
            // Boxed: see `connection`.
            let mut conn = Box::pin(builder.serve_connection(io, service).with_upgrades());
            tokio::select! {
                result = conn.as_mut() => result,
                () = stopped(&mut stopping) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        Protocol::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_concurrent_streams)
                .max_local_error_reset_streams(H2_MAX_LOCAL_RESET_STREAMS)
                .keep_alive_interval(limits.idle_timeout)
                .keep_alive_timeout(limits.header_timeout);
            let activity = Arc::new(Activity::default());
            let service = TowerToHyperService::new(Tracked {
                inner: service,
                activity: Arc::clone(&activity),
            });
            let mut conn = Box::pin(builder.serve_connection(io, service));
            // Pings keep a live client's connection open; with no stream
            // for `idle_timeout` it is closed (GOAWAY) all the same.
            tokio::select! {
                result = conn.as_mut() => result,
                () = stopped(&mut stopping) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                () = activity.idle_for(limits.idle_timeout) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection closed with an error");
    }
}
