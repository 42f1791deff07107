//! `statestream-admin`: the admin API of a node, on a listener of its own
//! (`[admin] address`), every call authenticated by the admin token
//! (`[admin] token_file`). It manages the node's credentials
//! ([`statestream_access::Registry`]):
//!
//! - `POST /v1/credentials`: create (201, with the secret, shown once)
//! - `GET /v1/credentials`, `GET /v1/credentials/{id}`: list, show (no
//!   secrets)
//! - `PATCH /v1/credentials/{id}`: scopes, permissions, limits,
//!   description, expiry
//! - `POST /v1/credentials/{id}/rotate` (`{"grace_seconds": N}`): a new
//!   secret
//! - `DELETE /v1/credentials/{id}`: revoke
//!
//! JSON in and out; errors are `{"error": {"code", "message"}}`; request
//! bodies are limited to [`MAX_BODY_BYTES`]; unknown fields are refused.
//! Other crates mount routes of their own (run-time subscriptions) with
//! [`AdminServer::start`]'s `extra` routers; each request carries an
//! [`AdminAuth`] extension that tells the admin token from a credential.
//! See `docs/admin.md` and `docs/admin-api.json`.
//!
//! ```no_run
//! use statestream_access::Registry;
//! use statestream_admin::{AdminOptions, AdminServer};
//!
//! let server = AdminServer::start(
//!     AdminOptions::new("127.0.0.1:0".parse()?, "an admin token"),
//!     Registry::in_memory(),
//!     Vec::new(),
//! )?;
//! println!("admin API on {}", server.local_addr());
//! server.stop();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod auth;
mod error;
mod routes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use statestream_access::Registry;
use statestream_net::{HostCheck, Limits, ServerTls, ServiceThread, ServiceThreadError, TlsFiles};
use tower::Layer;
use tower_http::limit::RequestBodyLimitLayer;

pub use auth::{AdminAuth, Caller};
pub use error::ApiError;
pub use routes::ROUTES;

/// The largest request body accepted (a credential with many scopes fits
/// many times over).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Connections open at once on the admin listener.
pub const MAX_CONNECTIONS: usize = 64;

/// Why the admin server did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the admin server: {0}")]
    Start(#[source] std::io::Error),
    #[error("admin token file {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    /// A TLS file could not be read, or the key does not go with the
    /// certificate.
    #[error("{key}: {source}")]
    Tls {
        /// The `[admin]` key naming the file at fault.
        key: &'static str,
        #[source]
        source: statestream_net::TlsError,
    },
}

/// What the admin server is started with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdminOptions {
    pub address: SocketAddr,
    pub token: String,
    pub allowed_hosts: Vec<String>,
    /// HTTPS with these files (re-read by
    /// [`statestream_net::reload_all`], on the node's SIGHUP); `None`:
    /// plain HTTP.
    pub tls: Option<TlsFiles>,
}

impl AdminOptions {
    pub fn new(address: SocketAddr, token: &str) -> AdminOptions {
        AdminOptions {
            address,
            token: token.to_string(),
            allowed_hosts: Vec::new(),
            tls: None,
        }
    }

    /// Reads the TLS files as the server will (each exists and parses,
    /// the key goes with the certificate): `statestream config check`'s
    /// check.
    pub fn check_tls(&self) -> Result<(), AdminError> {
        match &self.tls {
            Some(files) => files.check().map_err(|(file, source)| AdminError::Tls {
                key: file.key(),
                source,
            }),
            None => Ok(()),
        }
    }
}

/// Reads the admin token from `path`: surrounding whitespace (a final
/// newline) is not part of it; an empty file is refused.
pub fn read_token_file(path: &Path) -> Result<String, AdminError> {
    let text = std::fs::read_to_string(path).map_err(|e| AdminError::Token {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AdminError::Token {
            path: path.to_path_buf(),
            reason: "the file is empty; write the admin token in it".into(),
        });
    }
    Ok(token.to_string())
}

/// A running admin server; stopped by [`stop`](AdminServer::stop) or when
/// dropped.
#[derive(Debug)]
pub struct AdminServer {
    server: ServiceThread,
}

/// Every error answer in the admin API's JSON form: the body limit's 413,
/// axum's 404 and 405 come without a body of ours.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!("the request body is over {MAX_BODY_BYTES} bytes")
            }
            StatusCode::NOT_FOUND => "no such route (see docs/admin-api.json)".to_string(),
            StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".to_string(),
            other => other
                .canonical_reason()
                .unwrap_or("request failed")
                .to_lowercase(),
        };
        let mut answer = ApiError::new(status, ApiError::code_of(status), message).into_response();
        if let Some(allow) = response.headers().get(header::ALLOW) {
            answer.headers_mut().insert(header::ALLOW, allow.clone());
        }
        return answer;
    }
    response
}

/// The admin API's router: the credential routes and `extra`, each request
/// with an [`AdminAuth`] extension, bodies limited, errors as JSON.
pub fn router(auth: AdminAuth, extra: Vec<Router>) -> Router {
    let mut app = routes::router(auth.clone());
    for r in extra {
        app = app.merge(r);
    }
    app.fallback(|| async { StatusCode::NOT_FOUND.into_response() })
        .layer(axum::Extension(auth))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(middleware::from_fn(json_errors))
}

impl AdminServer {
    /// Binds `options.address` (port 0: the system chooses; see
    /// [`local_addr`](AdminServer::local_addr)) and serves the admin API
    /// for `credentials`, plus the `extra` routes, on a thread of its own.
    pub fn start(
        options: AdminOptions,
        credentials: Registry,
        extra: Vec<Router>,
    ) -> Result<AdminServer, AdminError> {
        let address = options.address;
        // Read first: a bad file is an error of this call, as a bad address.
        options.check_tls()?;
        let tls = options
            .tls
            .clone()
            .map(|files| ServerTls::load("admin", files))
            .transpose()
            .map_err(|source| AdminError::Tls {
                key: "tls_cert_file",
                source,
            })?;
        let app = router(AdminAuth::new(&options.token, credentials), extra);
        let mut limits = Limits::default();
        limits.max_connections = MAX_CONNECTIONS;
        let server = ServiceThread::start("admin", address, limits, tls, |bound| {
            HostCheck::for_listener(bound, &options.allowed_hosts).layer(app)
        })
        .map_err(|e| match e {
            ServiceThreadError::Bind { address, source } => AdminError::Bind { address, source },
            ServiceThreadError::Start(source) => AdminError::Start(source),
        })?;
        let bound = server.local_addr();
        if !bound.ip().is_loopback() {
            tracing::warn!(address = %bound, "the admin API listens beyond this machine: keep its token secret, and prefer a loopback address");
        }
        tracing::info!(tls = options.tls.is_some(), address = %bound, "admin API listening (/v1/credentials)");
        Ok(AdminServer { server })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops serving and waits for the thread.
    pub fn stop(self) {
        self.server.stop();
    }
}
