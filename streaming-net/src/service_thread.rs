//! A small HTTP service on a thread of its own (the telemetry server, the
//! admin API): bound on the caller's thread, so that a bad address is an
//! error of the call and the chosen port is known when it returns; served
//! by a [`Listener`] on a current-thread runtime; stopped and joined by
//! [`stop`](ServiceThread::stop) or when dropped.

use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::listener::{HttpService, Limits, Listener, ResponseBody};
use crate::tls::ServerTls;

/// Why a [`ServiceThread`] did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceThreadError {
    /// The address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    /// The runtime or the thread could not be made.
    #[error("cannot start the server's thread: {0}")]
    Start(io::Error),
}

/// A running service; see the module documentation.
#[derive(Debug)]
pub struct ServiceThread {
    name: &'static str,
    address: SocketAddr,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl ServiceThread {
    /// Binds `address` (port 0: the system chooses), then serves the
    /// service `make` builds for the bound address (a host check needs
    /// it) under `limits`, with `tls` if given, on a thread named `name`.
    pub fn start<S, B>(
        name: &'static str,
        address: SocketAddr,
        limits: Limits,
        tls: Option<ServerTls>,
        make: impl FnOnce(SocketAddr) -> S,
    ) -> Result<ServiceThread, ServiceThreadError>
    where
        S: HttpService<B>,
        B: ResponseBody,
    {
        let listener = std::net::TcpListener::bind(address)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| ServiceThreadError::Bind { address, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ServiceThreadError::Bind { address, source })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ServiceThreadError::Start)?;
        let service = make(bound);
        let (stop, mut stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(error) => {
                            tracing::warn!(%error, server = name, "the server cannot use its socket");
                            return;
                        }
                    };
                    let listener = Listener::new(listener, limits);
                    let listener = match tls {
                        Some(tls) => listener.tls(tls),
                        None => listener,
                    };
                    listener
                        .serve(service, async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        })
                        .await;
                });
            })
            .map_err(ServiceThreadError::Start)?;
        Ok(ServiceThread {
            name,
            address: bound,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the port the system chose).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving (requests in flight get the listener's grace period)
    /// and waits for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!(server = self.name, "server thread panicked");
        }
    }
}

impl Drop for ServiceThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}
