//! TLS to an `https://` server: the server's certificate verified against
//! a CA file (or pinned, when the file holds that very certificate), and a
//! client certificate for servers that require one (mTLS). The handshake
//! is the connector's, so a failure names the endpoint and the reason.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::Uri;

use crate::error::ClientError;

/// The files of an `https://` connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
}

impl TlsFiles {
    pub(crate) fn any(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The rustls configuration (ALPN `h2`: gRPC), read from the files.
    pub(crate) fn client_config(&self, endpoint: &str) -> Result<ClientConfig, ClientError> {
        let error = |reason: String| ClientError::Tls {
            endpoint: endpoint.to_string(),
            reason,
        };
        let Some(ca_file) = &self.ca_file else {
            return Err(error(
                "an https:// address needs a CA file (--ca-file / SubscribeOptions::ca_file) \
                 to verify the server's certificate; for a certificate of a public CA give the \
                 system's bundle (such as /etc/ssl/certs/ca-certificates.crt)"
                    .into(),
            ));
        };
        let provider = statestream_tls::provider();
        let roots =
            statestream_tls::read_certificates(ca_file).map_err(|e| error(e.to_string()))?;
        let verifier = statestream_tls::CaFileVerifier::new(roots, Arc::clone(&provider));
        let client_auth = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some((
                statestream_tls::read_certificates(cert).map_err(|e| error(e.to_string()))?,
                statestream_tls::read_private_key(key).map_err(|e| error(e.to_string()))?,
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(error(
                    "a client certificate needs its key (--key-file)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(error(
                    "a client key needs its certificate (--cert-file)".into(),
                ));
            }
        };
        let mut config = statestream_tls::client_config(provider, verifier, client_auth)
            .map_err(|e| error(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// The handshake failed for a TLS reason (a certificate refused by either
/// side, no protocol in common): retrying cannot help until the
/// configuration changes.
#[derive(Debug)]
pub(crate) struct HandshakeFailed {
    pub(crate) endpoint: String,
    pub(crate) reason: rustls::Error,
}

impl std::fmt::Display for HandshakeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TLS handshake with {} failed: {}",
            self.endpoint, self.reason
        )
    }
}

impl std::error::Error for HandshakeFailed {}

/// tonic's connector: TCP, then the TLS handshake with the host of the
/// address as the server name.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    pub(crate) config: Arc<ClientConfig>,
    /// The address as the user wrote it, for errors.
    pub(crate) endpoint: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = Arc::clone(&self.config);
        let endpoint = self.endpoint.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| format!("{endpoint}: the address names no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| format!("{endpoint}: {host:?} is not a server name: {e}"))?;
            let tcp = TcpStream::connect((host, port)).await?;
            // Small gRPC frames go out at once.
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| -> BoxError {
                    match e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    {
                        Some(reason) => Box::new(HandshakeFailed {
                            endpoint: endpoint.clone(),
                            reason: reason.clone(),
                        }),
                        None => format!("TLS handshake with {endpoint}: {e}").into(),
                    }
                })?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Every message of an error's chain, `: `-joined (tonic's transport
/// error says only "transport error" itself).
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// The TLS failure in an error's chain (of a TLS connection), if that is
/// what it is: the
/// handshake's own, or an alert the server sent once it saw our
/// certificate (TLS 1.3 refuses a client certificate after the client's
/// handshake ended).
pub(crate) fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(failed) = e.downcast_ref::<HandshakeFailed>() {
            return Some(failed.reason.to_string());
        }
        if let Some(reason) = e.downcast_ref::<rustls::Error>() {
            return Some(reason.to_string());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(reason) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(reason.to_string());
            }
            // Over a TLS stream, invalid data is rustls's verdict (an
            // alert received, a record that does not decrypt), passed up
            // as text.
            if io.kind() == std::io::ErrorKind::InvalidData {
                return Some(io.to_string());
            }
        }
        current = e.source();
    }
    None
}
