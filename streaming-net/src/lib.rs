//! Listeners a stranger can reach: the pieces every statestream server
//! (the telemetry server, the `serve` streamer's HTTP and gRPC listeners)
//! puts in front of its routes, so that connections nobody authenticated
//! yet cannot cost the node its file descriptors or its memory.
//!
//! - [`Listener`]: an accept loop that caps open connections
//!   ([`Limits::max_connections`]; beyond it a new connection is closed at
//!   once and counted in [`ConnectionStats::refused`]), sets `TCP_NODELAY`,
//!   and serves HTTP/1.1 and HTTP/2 (prior knowledge) with hyper under a
//!   header-read timeout; for HTTP/2 a handshake timeout, an idle timeout,
//!   keep-alive pings, `max_concurrent_streams` and h2's cap on locally
//!   reset streams.
//! - [`HostCheck`]: a tower layer that answers `421 Misdirected Request`
//!   to a request whose `Host` (or HTTP/2 `:authority`) is not a name the
//!   listener is for: the defence against DNS rebinding, where a web page
//!   reaches a loopback-bound server under its own host name.
//! - TLS ([`Listener::tls`], [`ServerTls`]): rustls on ring with the
//!   certificate and key of PEM files, ALPN `h2` and `http/1.1`, client
//!   certificates required and verified against a CA file (mTLS) when set,
//!   their subject handed to handlers ([`PeerCertificate`]); [`reload_all`]
//!   re-reads every listener's files (SIGHUP) without touching open
//!   connections.
//! - [`raise_nofile_limit`]: raises the soft `RLIMIT_NOFILE` to the hard
//!   one, as servers do at start.
//!
//! # Example
//!
//! ```no_run
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use statestream_net::{HostCheck, Limits, Listener, raise_nofile_limit};
//! use tower::{Layer, service_fn};
//!
//! # async fn run() -> std::io::Result<()> {
//! if let Ok(raised) = raise_nofile_limit() {
//!     tracing::info!("{raised}");
//! }
//! let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let bound = tcp.local_addr()?;
//! let routes = service_fn(|_request: http::Request<hyper::body::Incoming>| async {
//!     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok\n"))))
//! });
//! // Loopback names and the bind address, plus one name of our own.
//! let service = HostCheck::for_listener(bound, ["metrics.internal"]).layer(routes);
//! let listener = Listener::new(tcp, Limits::default());
//! let stats = listener.stats();
//! listener.serve(service, std::future::pending()).await;
//! # let _ = stats.refused();
//! # Ok(())
//! # }
//! ```

mod activity;
mod host;
mod listener;
mod nofile;
mod peer;
mod prefixed;
mod service_thread;
mod tls;

pub use crate::host::{HostCheck, HostCheckBody, HostCheckService};
pub use crate::listener::{
    ConnectionStats, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_CONNECTIONS, H2_MAX_LOCAL_RESET_STREAMS, HttpService, Limits, Listener,
    ResponseBody,
};
pub use crate::nofile::{NofileError, NofileLimit, raise_nofile_limit};
pub use crate::service_thread::{ServiceThread, ServiceThreadError};
pub use crate::tls::{ALPN_PROTOCOLS, PeerCertificate, Reloaded, ServerTls, TlsFiles, reload_all};
pub use statestream_tls::TlsError;
