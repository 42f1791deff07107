//! TLS on a listener: the certificate and key (and the client CA for
//! mTLS) read from PEM files, re-read by [`reload_all`] (the node calls it
//! on SIGHUP) without touching open connections, and the subject of a
//! verified client certificate handed to request handlers.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use rustls::ServerConfig;

/// ALPN protocols a TLS listener offers, preferred first: gRPC needs
/// `h2`; SSE and the rest of HTTP work on either.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The PEM files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsFiles {
    /// The server's certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When set, clients must present a certificate that chains to a
    /// certificate of this file, or is one of them (mTLS).
    pub client_ca_file: Option<PathBuf>,
}

impl TlsFiles {
    /// The certificate and key files, no client certificates asked.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> TlsFiles {
        TlsFiles {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
        }
    }

    /// Requires client certificates verified against `client_ca_file`.
    pub fn client_ca_file(mut self, client_ca_file: impl Into<PathBuf>) -> TlsFiles {
        self.client_ca_file = Some(client_ca_file.into());
        self
    }

    /// Reads each file in turn and then the whole configuration, naming
    /// the file at fault: what `statestream config check` reports (each
    /// file exists and parses, the key goes with the certificate).
    pub fn check(&self) -> Result<(), (TlsFile, statestream_tls::TlsError)> {
        statestream_tls::read_certificates(&self.cert_file).map_err(|e| (TlsFile::Cert, e))?;
        statestream_tls::read_private_key(&self.key_file).map_err(|e| (TlsFile::Key, e))?;
        if let Some(ca) = &self.client_ca_file {
            statestream_tls::read_certificates(ca).map_err(|e| (TlsFile::ClientCa, e))?;
        }
        // What is left is whether the key signs for the certificate.
        self.load().map(drop).map_err(|e| (TlsFile::Key, e))
    }

    /// Reads the files and builds the configuration, as a listener does:
    /// the check of `statestream config check` (files exist and parse, the
    /// key goes with the certificate).
    pub fn load(&self) -> Result<ServerConfig, statestream_tls::TlsError> {
        statestream_tls::server_config(
            statestream_tls::provider(),
            &statestream_tls::ServerFiles {
                cert_file: &self.cert_file,
                key_file: &self.key_file,
                client_ca_file: self.client_ca_file.as_deref(),
            },
            &ALPN_PROTOCOLS,
        )
    }
}

/// One of the files of [`TlsFiles`], to name the configuration key at
/// fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFile {
    /// `tls_cert_file`.
    Cert,
    /// `tls_key_file`.
    Key,
    /// `tls_client_ca_file`.
    ClientCa,
}

impl TlsFile {
    /// The key that names the file in app.toml.
    pub fn key(self) -> &'static str {
        match self {
            TlsFile::Cert => "tls_cert_file",
            TlsFile::Key => "tls_key_file",
            TlsFile::ClientCa => "tls_client_ca_file",
        }
    }
}

/// The TLS of one listener: the files and the configuration last read
/// from them. Cloning shares it. Every `ServerTls` alive is reloaded by
/// [`reload_all`].
#[derive(Debug, Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// What the listener is, for the log lines of a reload
    /// (`serve "api" gRPC`).
    what: String,
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
}

/// Every `ServerTls` made, for [`reload_all`]; dead entries are dropped
/// as they are found.
static LIVE: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

impl ServerTls {
    /// Reads the files (an error names the file and what is wrong with
    /// it). `what` names the listener in the log lines of reloads.
    pub fn load(what: &str, files: TlsFiles) -> Result<ServerTls, statestream_tls::TlsError> {
        let config = files.load()?;
        let inner = Arc::new(Inner {
            what: what.to_string(),
            files,
            config: RwLock::new(Arc::new(config)),
        });
        let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&inner));
        Ok(ServerTls { inner })
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    /// Re-reads the files; new connections get the new certificates, open
    /// ones keep theirs. On an error (a file missing, unparsable, a key
    /// that does not go with the certificate) the certificates in use
    /// stay, and the error says why.
    pub fn reload(&self) -> Result<(), statestream_tls::TlsError> {
        let config = self.inner.files.load()?;
        *self
            .inner
            .config
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        Ok(())
    }

    /// The configuration new connections are accepted with.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(
            &self
                .inner
                .config
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Whether client certificates are required.
    pub fn requires_client_certificates(&self) -> bool {
        self.inner.files.client_ca_file.is_some()
    }
}

/// What [`reload_all`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloaded {
    /// Listeners now serving the files' current certificates.
    pub reloaded: usize,
    /// Listeners whose files could not be read: they keep the
    /// certificates they had (the log says why).
    pub failed: usize,
}

/// Re-reads the certificate files of every TLS listener of the process
/// (the node calls it on SIGHUP). Each listener's outcome is logged: a
/// listener whose files fail keeps its old certificates, with a warning
/// naming the file and the reason.
pub fn reload_all() -> Reloaded {
    let live: Vec<Arc<Inner>> = {
        let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|w| w.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    };
    let mut outcome = Reloaded::default();
    for inner in live {
        let tls = ServerTls { inner };
        match tls.reload() {
            Ok(()) => {
                outcome.reloaded += 1;
                tracing::info!(
                    listener = %tls.inner.what,
                    cert_file = %tls.inner.files.cert_file.display(),
                    "TLS certificates reloaded"
                );
            }
            Err(error) => {
                outcome.failed += 1;
                tracing::warn!(
                    listener = %tls.inner.what,
                    %error,
                    "TLS certificates not reloaded: the listener keeps the ones it had"
                );
            }
        }
    }
    outcome
}

/// The certificate a client presented and the listener verified (mTLS),
/// in every request's extensions on that connection: a tonic handler
/// reads it with `request.extensions().get::<PeerCertificate>()`, an axum
/// handler with `Extension<PeerCertificate>` (or from the request's
/// extensions). Absent without mTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerCertificate {
    /// The subject's common name (the last CN when there are several);
    /// `None` when the subject has none.
    pub subject_cn: Option<String>,
    /// The whole subject distinguished name, RFC 4514
    /// (`CN=wallet,O=Example`).
    pub subject: String,
}

impl PeerCertificate {
    /// The subject of a DER certificate; `None` when it cannot be parsed.
    pub fn from_der(der: &[u8]) -> Option<PeerCertificate> {
        let cert = rustls::pki_types::CertificateDer::from(der);
        statestream_tls::certificate_subject(&cert).map(|(subject_cn, subject)| PeerCertificate {
            subject_cn,
            subject,
        })
    }
}
