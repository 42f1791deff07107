//! What to subscribe to, where, and how to connect.

use std::time::Duration;

use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;
use crate::proto::v1::{self, state_stream_client::StateStreamClient};

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
            .finish()
    }
}

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The default longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl SubscribeOptions {
    /// The server at `address` (`host:port` or `http://host:port`), every
    /// streamed store, live.
    pub fn new(address: &str) -> SubscribeOptions {
        SubscribeOptions {
            address: address.to_string(),
            token: None,
            stores: Vec::new(),
            prefixes: Vec::new(),
            start: StartFrom::Live,
            max_backoff: MAX_BACKOFF,
        }
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

    fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let uri = if self.address.contains("://") {
            self.address.clone()
        } else {
            format!("http://{}", self.address)
        };
        Endpoint::from_shared(uri)
            .map(|e| e.connect_timeout(CONNECT_TIMEOUT))
            .map_err(|e| ClientError::Address {
                address: self.address.clone(),
                reason: e.to_string(),
            })
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

    /// A connected client, or why the connection failed (retryable).
    pub(crate) async fn try_connect(
        &self,
    ) -> Result<Result<StateStreamClient<Channel>, String>, ClientError> {
        match self.endpoint()?.connect().await {
            Ok(channel) => Ok(Ok(StateStreamClient::new(channel))),
            Err(e) => Ok(Err(format!("cannot connect to {}: {e}", self.address))),
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
