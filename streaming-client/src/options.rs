//! What to subscribe to, where, and how to connect.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::ClientError;
use crate::proto::v1::{self, state_stream_client::StateStreamClient};
use crate::tls::{TlsConnector, TlsFiles, chain, tls_failure};

/// Where a subscription without a cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartFrom {
    /// A snapshot of the current state, then the blocks after it.
    Snapshot,
    /// Every block from this height on.
    Height(u64),
    /// The blocks after the current head.
    Live,
}

/// What to subscribe to, and how.
#[derive(Clone)]
pub struct SubscribeOptions {
    address: String,
    token: Option<String>,
    stores: Vec<String>,
    prefixes: Vec<(String, Vec<u8>)>,
    pub(crate) start: StartFrom,
    pub(crate) max_backoff: Duration,
    tls: TlsFiles,
}

impl std::fmt::Debug for SubscribeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeOptions")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("stores", &self.stores)
            .field("prefixes", &self.prefixes)
            .field("start", &self.start)
            .field("max_backoff", &self.max_backoff)
            .field("tls", &self.tls)
            .finish()
    }
}

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The default longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl SubscribeOptions {
    /// The server at `address` (`host:port`, `http://host:port`, or
    /// `https://host:port` for TLS: see [`ca_file`](Self::ca_file)), every
    /// streamed store, live.
    pub fn new(address: &str) -> SubscribeOptions {
        SubscribeOptions {
            address: address.to_string(),
            token: None,
            stores: Vec::new(),
            prefixes: Vec::new(),
            start: StartFrom::Live,
            max_backoff: MAX_BACKOFF,
            tls: TlsFiles::default(),
        }
    }

    /// `https://` addresses: the PEM certificates the server's certificate
    /// is verified against (its CA, or the server's own certificate). A
    /// certificate that does not verify is a [`ClientError::Tls`] naming
    /// the address and the reason, not retried.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// `https://` addresses: the PEM client certificate presented to a
    /// server that requires one (mTLS; its subject's CN names the
    /// credential); with [`key_file`](Self::key_file).
    pub fn cert_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.cert_file = Some(path.into());
        self
    }

    /// The PEM private key of [`cert_file`](Self::cert_file).
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.key_file = Some(path.into());
        self
    }

    /// Sends `authorization: Bearer <token>`.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// Selects a whole store.
    pub fn store(mut self, store: &str) -> Self {
        self.stores.push(store.to_string());
        self
    }

    /// Selects the keys of `store` that start with `prefix`.
    pub fn prefix(mut self, store: &str, prefix: &[u8]) -> Self {
        self.prefixes.push((store.to_string(), prefix.to_vec()));
        self
    }

    /// Where to start when the cursor store holds no cursor.
    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// The longest wait between reconnection attempts (default 5 s; the
    /// first wait is short and doubles up to this).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    fn endpoint(&self, uri: String) -> Result<Endpoint, ClientError> {
        Endpoint::from_shared(uri)
            .map(|e| e.connect_timeout(CONNECT_TIMEOUT))
            .map_err(|e| ClientError::Address {
                address: self.address.clone(),
                reason: e.to_string(),
            })
    }

    /// A channel to the server: plain, or TLS for `https://`.
    async fn channel(&self) -> Result<Result<Channel, String>, ClientError> {
        let Some(rest) = self.address.strip_prefix("https://") else {
            if self.tls.any() {
                return Err(ClientError::Tls {
                    endpoint: self.address.clone(),
                    reason: "a CA file or client certificate needs an https:// address".into(),
                });
            }
            let uri = if self.address.contains("://") {
                self.address.clone()
            } else {
                format!("http://{}", self.address)
            };
            return Ok(self
                .endpoint(uri)?
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {}: {}", self.address, chain(&e))));
        };
        let config = self.tls.client_config(&self.address)?;
        let origin: Uri = self.address.parse().map_err(|e| ClientError::Address {
            address: self.address.clone(),
            reason: format!("{e}"),
        })?;
        // tonic dials the plain URI with our connector, which does the
        // handshake itself (whatever TLS features tonic was built with);
        // requests still name the https origin.
        let endpoint = self.endpoint(format!("http://{rest}"))?.origin(origin);
        let connector = TlsConnector {
            config: Arc::new(config),
            endpoint: self.address.clone(),
        };
        match endpoint.connect_with_connector(connector).await {
            Ok(channel) => Ok(Ok(channel)),
            Err(e) => match tls_failure(&e) {
                Some(reason) => Err(ClientError::Tls {
                    endpoint: self.address.clone(),
                    reason,
                }),
                None => Ok(Err(format!(
                    "cannot connect to {}: {}",
                    self.address,
                    chain(&e)
                ))),
            },
        }
    }

    /// A request carrying the token.
    pub fn request<T>(&self, message: T) -> Result<Request<T>, ClientError> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            let value: MetadataValue<_> = format!("Bearer {token}")
                .parse()
                .map_err(|_| ClientError::Token("not valid in a header".into()))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }

    /// A client connected to the server (for the unary calls:
    /// `ListStores`, `Snapshot`, `PushUpdate`). Retryable failures to
    /// connect are a [`ClientError::Status`] with `UNAVAILABLE`.
    pub async fn connect(&self) -> Result<StateStreamClient<Channel>, ClientError> {
        match self.try_connect().await? {
            Ok(client) => Ok(client),
            Err(reason) => Err(ClientError::Status(tonic::Status::unavailable(reason))),
        }
    }

    /// A connected client, or why the connection failed (retryable); a
    /// TLS failure is not retryable.
    pub(crate) async fn try_connect(
        &self,
    ) -> Result<Result<StateStreamClient<Channel>, String>, ClientError> {
        Ok(self.channel().await?.map(StateStreamClient::new))
    }

    /// A failed call's status as the reason to reconnect, or the error
    /// that ends the subscription: a status retrying cannot change, or a
    /// TLS refusal (TLS 1.3 servers refuse a client certificate, or its
    /// absence, after the client's handshake ended: the first call fails).
    pub(crate) fn status_error(&self, status: tonic::Status) -> Result<String, ClientError> {
        if let Some(reason) = tls_failure(&status).filter(|_| self.address.starts_with("https://"))
        {
            return Err(ClientError::Tls {
                endpoint: self.address.clone(),
                reason,
            });
        }
        if crate::subscription::retryable(status.code()) {
            Ok(format!("{}: {}", status.code(), status.message()))
        } else {
            Err(ClientError::Status(status))
        }
    }

    pub(crate) fn filter(&self) -> v1::Filter {
        v1::Filter {
            stores: self.stores.clone(),
            prefixes: self
                .prefixes
                .iter()
                .map(|(store, prefix)| v1::KeyPrefix {
                    store: store.clone(),
                    prefix: prefix.clone(),
                })
                .collect(),
        }
    }
}
