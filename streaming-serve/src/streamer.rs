//! The `serve` streamer: owns the hub, a named tokio runtime and the
//! servers; `on_block` hands each block to the hub without waiting.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use statestream_core::{Block, StoreSelection, StreamError, Streamer, StreamerContext};
use statestream_net::{HostCheck, Limits, Listener, ServerTls};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tower::Layer;
use tracing::{info, warn};

use crate::config::{Addresses, DEFAULT_VALUE_TYPE, ServeConfig};
use crate::error::ServeError;
use crate::hub::{Hub, HubSetup, PushLimits};

/// How long a clean shutdown waits for the servers to end their streams.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// A handle on a running `serve` streamer, usable from any thread (the
/// streamer itself moves to the delivery manager).
#[derive(Debug, Clone)]
pub struct ServeHandle {
    hub: Arc<Hub>,
    grpc_address: Option<SocketAddr>,
    http_address: Option<SocketAddr>,
}

impl ServeHandle {
    /// The address the gRPC server is bound to (with the port the OS
    /// chose for port 0); `None` when gRPC is off.
    pub fn grpc_address(&self) -> Option<SocketAddr> {
        self.grpc_address
    }

    /// The address the HTTP (SSE) server is bound to; `None` when it is
    /// off.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http_address
    }

    /// The hub (head height, subscriber count, ...).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The counters per front-end (subscribers, messages and bytes sent,
    /// slow disconnects), for an exporter to read.
    pub fn metrics(&self) -> Arc<crate::metrics::ServeMetrics> {
        Arc::clone(self.hub.metrics())
    }
}

/// The `serve` streamer. Build it with [`ServeConfig::build`].
#[derive(Debug)]
pub struct ServeStreamer {
    name: String,
    hub: Arc<Hub>,
    retain_blocks: u64,
    grpc_address: Option<SocketAddr>,
    http_address: Option<SocketAddr>,
    runtime: Option<Runtime>,
    /// One per server: the shutdown signal and the "stopped" answer.
    servers: Vec<Server>,
}

#[derive(Debug)]
struct Server {
    what: &'static str,
    shutdown: Option<oneshot::Sender<()>>,
    stopped: Option<std::sync::mpsc::Receiver<()>>,
}

impl Server {
    /// Runs the server future that `serve` makes on `runtime`; `serve` is
    /// given the future that resolves when the server is to shut down.
    fn spawn<F, E>(
        runtime: &Runtime,
        what: &'static str,
        streamer: &str,
        serve: impl FnOnce(Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
    ) -> Server
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
        let served = serve(Box::pin(async {
            let _ = shutdown_rx.await;
        }));
        let streamer = streamer.to_string();
        runtime.spawn(async move {
            if let Err(e) = served.await {
                warn!(streamer = %streamer, error = %e, "{what} server stopped");
            }
            let _ = stopped_tx.send(());
        });
        Server {
            what,
            shutdown: Some(shutdown_tx),
            stopped: Some(stopped_rx),
        }
    }
}

/// A bind error in words a user acts on.
fn bind_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "the address is in use (another node or program listens on it; choose another port)"
                .into()
        }
        std::io::ErrorKind::AddrNotAvailable => "the address is not one of this machine's".into(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges)".into()
        }
        _ => e.to_string(),
    }
}

impl ServeStreamer {
    pub(crate) fn start(
        ctx: &StreamerContext<'_>,
        config: ServeConfig,
        addresses: Addresses,
    ) -> Result<ServeStreamer, ServeError> {
        let name = ctx.name.to_string();
        let reader = ctx
            .reader
            .ok_or_else(|| ServeError::NoReader {
                streamer: name.clone(),
            })?
            .clone();
        let head = reader
            .committed_height()
            .map_err(|source| ServeError::Store {
                streamer: name.clone(),
                source,
            })?;
        let bind =
            |address: Option<SocketAddr>, key| address.map(|a| bind_std(&name, a, key)).transpose();
        // Read before binding: a bad file is the build's error. One set of
        // certificates for both listeners, reloaded together on SIGHUP.
        let tls = config
            .tls_files(ctx.home)
            .and_then(|files| {
                files
                    .map(|files| {
                        ServerTls::load(&format!("serve {name:?}"), files)
                            .map_err(|e| ("tls_cert_file", e.to_string()))
                    })
                    .transpose()
            })
            .map_err(|(key, reason)| ServeError::Tls {
                streamer: name.clone(),
                key,
                reason,
            })?;
        let grpc_listener = bind(addresses.grpc, "grpc_address")?;
        let http_listener = bind(addresses.http, "http_address")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("serve-{name}"))
            .on_thread_start(below_commits)
            .enable_all()
            .build()
            .map_err(|source| ServeError::Runtime {
                streamer: name.clone(),
                source,
            })?;
        let value_types = ctx
            .stores
            .iter()
            .map(|s| {
                config
                    .value_types
                    .get(s.name())
                    .cloned()
                    .unwrap_or_else(|| DEFAULT_VALUE_TYPE.to_string())
            })
            .collect();
        let hub = Arc::new(Hub::new(
            HubSetup {
                name: name.clone(),
                stores: ctx.stores.to_vec(),
                selection: StoreSelection::new(ctx.all_stores, ctx.stores),
                reader,
                push: ctx.push.cloned(),
                push_limits: PushLimits {
                    queued_bytes: config.max_push_bytes,
                    write_bytes: config.max_push_value_bytes,
                },
                heartbeat: Duration::from_millis(config.heartbeat_ms),
                max_subscribers: config.max_subscribers,
                max_filter_entries: config.max_filter_entries,
                max_snapshots: config.max_snapshots,
                value_types,
            },
            head,
        ));
        hub.metrics().set_max_subscribers(config.max_subscribers);
        let limits = limits(&config, hub.heartbeat());
        // The node's credentials, installed under the state reader by the
        // delivery manager that owns the store (none when built without
        // one).
        let credentials = ctx.reader.and_then(statestream_access::installed);
        let mut servers = Vec::new();
        let mut grpc_address = None;
        let with_tls = |listener: Listener| match &tls {
            Some(tls) => listener.tls(tls.clone()),
            None => listener,
        };
        if let Some((std_listener, local, key)) = grpc_listener {
            let listener = with_tls(Listener::new(
                to_tokio(&runtime, &name, std_listener, local, key)?,
                limits,
            ));
            let (routes, set_health) = crate::grpc::router(&hub, &config, credentials.clone())?;
            // gRPC clients send the address they dialled as `:authority`,
            // which the check accepts for a loopback or the bound address.
            let service = HostCheck::for_listener(local, &config.allowed_hosts).layer(routes);
            servers.push(Server::spawn(
                &runtime,
                "gRPC",
                &name,
                |shutdown| async move {
                    // Health answers SERVING from the first request on: set
                    // before the first connection is accepted (the listener is
                    // bound).
                    set_health.await;
                    // The listener sets TCP_NODELAY: a block's last small
                    // frame must not wait for the client's delayed ACK.
                    listener.serve(service, shutdown).await;
                    Ok::<(), std::convert::Infallible>(())
                },
            ));
            info!(streamer = %name, address = %local, head, tls = tls.is_some(), "serve: gRPC listening");
            grpc_address = Some(local);
        }
        let mut http_address = None;
        if let Some((std_listener, local, key)) = http_listener {
            let listener = with_tls(Listener::new(
                to_tokio(&runtime, &name, std_listener, local, key)?,
                limits,
            ));
            let app = crate::http::router(crate::http::HttpSetup {
                hub: Arc::clone(&hub),
                token: config.token.clone(),
                credentials: credentials.clone(),
                max_connection: (config.max_connection_ms > 0)
                    .then(|| Duration::from_millis(config.max_connection_ms)),
                cors_origins: config.cors_origins.clone(),
            });
            // A web page reaching a loopback-bound node by DNS rebinding
            // names its own host: 421, before the token or the routes.
            let service = HostCheck::for_listener(local, &config.allowed_hosts).layer(app);
            servers.push(Server::spawn(
                &runtime,
                "HTTP",
                &name,
                |shutdown| async move {
                    // TCP_NODELAY set by the listener, as on gRPC: an event
                    // must not wait for an ACK.
                    listener.serve(service, shutdown).await;
                    Ok::<(), std::convert::Infallible>(())
                },
            ));
            info!(streamer = %name, address = %local, head, tls = tls.is_some(), "serve: HTTP (SSE) listening");
            http_address = Some(local);
        }
        Ok(ServeStreamer {
            name,
            hub,
            retain_blocks: config.retain_blocks,
            grpc_address,
            http_address,
            runtime: Some(runtime),
            servers,
        })
    }

    /// A handle for tests and applications: the bound address, the hub.
    pub fn handle(&self) -> ServeHandle {
        ServeHandle {
            hub: Arc::clone(&self.hub),
            grpc_address: self.grpc_address,
            http_address: self.http_address,
        }
    }

    /// The address the gRPC server is bound to (`None`: gRPC is off).
    pub fn grpc_address(&self) -> Option<SocketAddr> {
        self.grpc_address
    }

    /// The address the HTTP (SSE) server is bound to (`None`: it is off).
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http_address
    }

    /// Ends every subscription with `UNAVAILABLE`, stops the servers and
    /// the runtime. Idempotent.
    fn stop(&mut self) {
        self.hub.close();
        for server in &mut self.servers {
            if let Some(tx) = server.shutdown.take() {
                let _ = tx.send(());
            }
        }
        for server in &mut self.servers {
            if let Some(stopped) = server.stopped.take()
                && stopped.recv_timeout(SHUTDOWN_WAIT).is_err()
            {
                warn!(streamer = %self.name, server = server.what, "a server did not stop in time");
            }
        }
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime may not block inside another runtime.
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(1));
            }
        }
    }
}

/// What each listener allows a client (`max_connections` and the rest);
/// HTTP/2 pings at the heartbeat interval, as the subscriptions' own
/// heartbeats, so a dead client's connection is found as soon.
fn limits(config: &ServeConfig, heartbeat: Duration) -> Limits {
    let mut limits = Limits::default();
    limits.max_connections = config.max_connections;
    limits.header_timeout = Duration::from_millis(config.header_timeout_ms);
    limits.idle_timeout = heartbeat;
    limits.max_concurrent_streams = config.max_concurrent_streams;
    limits
}

/// Binds `address` (blocking, before the runtime exists, so bind errors
/// are the build's errors).
fn bind_std(
    name: &str,
    address: SocketAddr,
    key: &'static str,
) -> Result<(std::net::TcpListener, SocketAddr, &'static str), ServeError> {
    let bind_error = |reason: String| ServeError::Bind {
        streamer: name.to_string(),
        key,
        address,
        reason,
    };
    let listener = std::net::TcpListener::bind(address)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| bind_error(bind_reason(&e)))?;
    let local = listener
        .local_addr()
        .map_err(|e| bind_error(e.to_string()))?;
    Ok((listener, local, key))
}

fn to_tokio(
    runtime: &Runtime,
    name: &str,
    listener: std::net::TcpListener,
    address: SocketAddr,
    key: &'static str,
) -> Result<tokio::net::TcpListener, ServeError> {
    let _enter = runtime.enter();
    tokio::net::TcpListener::from_std(listener).map_err(|e| ServeError::Bind {
        streamer: name.to_string(),
        key,
        address,
        reason: e.to_string(),
    })
}

/// How much lower than the node's the CPU priority of the serve runtime's
/// threads is (a nice increment, capped at 19): on a saturated machine
/// subscribers fall behind (and catch up from the change log), commits do
/// not.
const NICE_INCREMENT: i32 = 10;

/// Lowers the calling thread's CPU priority by [`NICE_INCREMENT`] from the
/// node's (Linux: `nice` applies to the calling thread; elsewhere this does
/// nothing).
fn below_commits() {
    #[cfg(target_os = "linux")]
    // SAFETY: nice touches no memory of ours; on error the priority stays
    // as it was, which is only slower for commits.
    unsafe {
        libc::nice(NICE_INCREMENT);
    }
}

impl Streamer for ServeStreamer {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        self.hub.publish(block);
        Ok(())
    }

    fn on_close(&mut self) -> Result<(), StreamError> {
        self.stop();
        Ok(())
    }

    fn retain_blocks(&self) -> u64 {
        self.retain_blocks
    }
}

impl Drop for ServeStreamer {
    fn drop(&mut self) {
        self.stop();
    }
}
