//! Connecting: the resolved connection settings, TLS with rustls, and the
//! errors a connection attempt can end in.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use postgres::config::Host;
use postgres::{CancelToken, Client, NoTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::error::{PostgresError, describe};

/// Everything needed to (re)connect: the client configuration with the
/// password filled in, and the TLS configuration unless `tls = "disable"`.
#[derive(Clone)]
pub(crate) struct ConnectSettings {
    config: postgres::Config,
    tls: Option<Arc<ClientConfig>>,
    /// The CA file `tls` verifies the server's certificate against, for
    /// messages.
    ca_file: Option<PathBuf>,
    target: String,
    /// The session's `statement_timeout` and `lock_timeout`.
    statement_timeout: Duration,
}

impl ConnectSettings {
    pub(crate) fn new(
        config: postgres::Config,
        tls: Option<Arc<ClientConfig>>,
        ca_file: Option<PathBuf>,
        statement_timeout: Duration,
    ) -> Self {
        let target = describe_target(&config);
        ConnectSettings {
            config,
            tls,
            ca_file,
            target,
            statement_timeout,
        }
    }

    /// `user@host:port/database`, never the password: for messages.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// Opens a connection and sets the session's `statement_timeout` and
    /// `lock_timeout` (as statements rather than startup options, which
    /// poolers such as PgBouncer refuse).
    pub(crate) fn connect(&self) -> Result<Client, PostgresError> {
        let mut client = self.open()?;
        let ms = self.statement_timeout.as_millis();
        client
            .batch_execute(&format!(
                "SET statement_timeout = {ms}; SET lock_timeout = {ms}"
            ))
            .map_err(|e| PostgresError::Query {
                target: self.target.clone(),
                what: "set statement_timeout and lock_timeout".into(),
                reason: describe(&e),
            })?;
        Ok(client)
    }

    /// Asks the server to cancel the statement running on the connection
    /// of `token` (a new connection, with the same TLS settings).
    pub(crate) fn cancel(&self, token: &CancelToken) -> Result<(), PostgresError> {
        let result = match &self.tls {
            None => token.cancel_query(NoTls),
            Some(tls) => token.cancel_query(tokio_postgres_rustls::MakeRustlsConnect::new(
                ClientConfig::clone(tls),
            )),
        };
        result.map_err(|e| PostgresError::Query {
            target: self.target.clone(),
            what: "cancel the running statement".into(),
            reason: describe(&e),
        })
    }

    fn open(&self) -> Result<Client, PostgresError> {
        let result = match &self.tls {
            None => self.config.connect(NoTls),
            Some(tls) => self
                .config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                    ClientConfig::clone(tls),
                )),
        };
        result.map_err(|e| {
            let mut reason = describe(&e);
            if let Some(hint) = self.tls_hint(&e) {
                reason = format!("{hint}: {reason}");
            }
            if unreachable(&e) {
                PostgresError::Unreachable {
                    target: self.target.clone(),
                    reason,
                }
            } else {
                PostgresError::Connect {
                    target: self.target.clone(),
                    reason,
                }
            }
        })
    }
}

impl ConnectSettings {
    /// What a failed TLS handshake means in the streamer's terms: the
    /// client's own text names neither the option nor the CA file.
    fn tls_hint(&self, e: &postgres::Error) -> Option<String> {
        self.tls.as_ref()?;
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            // tokio-rustls wraps the rustls error in an io::Error, whose
            // `source` skips it: look inside.
            let inner = cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| inner as &(dyn std::error::Error + 'static))
                .unwrap_or(cause);
            if let Some(rustls::Error::InvalidCertificate(_)) =
                inner.downcast_ref::<rustls::Error>()
            {
                return Some(match &self.ca_file {
                    Some(path) => format!(
                        "the server's certificate failed verification against ca_file {}",
                        path.display()
                    ),
                    None => "the server's certificate failed verification".to_string(),
                });
            }
            if cause.to_string().contains("server does not support TLS") {
                return Some(
                    "tls = \"require\" but the server does not offer TLS (turn on ssl in the \
                     server, or set tls = \"prefer\" or \"disable\")"
                        .to_string(),
                );
            }
            source = cause.source();
        }
        None
    }
}

/// Whether a connection attempt failed because no server answered (as
/// opposed to one that answered and refused).
fn unreachable(e: &postgres::Error) -> bool {
    use std::io::ErrorKind::*;
    if e.as_db_error().is_some() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | TimedOut
                    | NotFound
                    | HostUnreachable
                    | NetworkUnreachable
                    | AddrNotAvailable
                    | UnexpectedEof
            );
        }
        source = cause.source();
    }
    // The client reports its connect timeout without an io::Error.
    e.to_string().contains("timeout")
}

/// `user@host:port/database` of a client configuration.
pub(crate) fn describe_target(config: &postgres::Config) -> String {
    let user = config.get_user().unwrap_or("?");
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{}/{db}", hosts.join(","))
}

/// The rustls configuration: with `ca_file`, the server's certificate must
/// chain to one of its certificates or be one of them itself (pinned, as
/// the one-line self-signed certificate), and name the host (verify-full;
/// `statestream_tls::CaFileVerifier`); without, the connection is
/// encrypted but the certificate is not checked (libpq's
/// `sslmode=require`).
pub(crate) fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let provider = statestream_tls::provider();
    let config = match ca_file {
        Some(path) => {
            let roots = statestream_tls::read_certificates(path).map_err(|e| e.to_string())?;
            let verifier = statestream_tls::CaFileVerifier::new(roots, provider.clone());
            statestream_tls::client_config(provider, verifier, None).map_err(|e| e.to_string())?
        }
        None => ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider)))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts any server certificate, but still checks that the server holds
/// its key (the handshake signatures): encryption against passive
/// listeners, as libpq's `sslmode=require`.
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
