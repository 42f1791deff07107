//! TLS for statestream's network clients (the NATS and PostgreSQL
//! streamers, and every later client): a rustls client configuration on
//! ring (no C toolchain) whose check of the server's certificate follows
//! the CA file the operator names. And for its servers ([`server_config`],
//! used by `statestream-net`'s listeners): a certificate and key from PEM
//! files, client certificates (mTLS) checked against a CA file by the same
//! rule, and the subject of a client's certificate
//! ([`certificate_subject`]).
//!
//! A server certificate is accepted when
//! - it chains to a certificate of the CA file and names the host (webpki's
//!   verification, as for any certificate authority), or
//! - it is itself one of the certificates of the CA file (pinned): the
//!   exact certificate, byte for byte, within its validity period and
//!   naming the host. That is the common self-signed certificate made with
//!   `openssl req -x509 …`, its own CA and the server's certificate at
//!   once, which OpenSSL-, Go- and Python-based clients accept and webpki
//!   alone refuses (`CaUsedAsEndEntity`).
//!
//! Either way the handshake's signature proves that the server holds the
//! certificate's private key.
//!
//! ```no_run
//! use std::path::Path;
//!
//! let provider = statestream_tls::provider();
//! let roots = statestream_tls::read_certificates(Path::new("ca.pem"))?;
//! let verifier = statestream_tls::CaFileVerifier::new(roots, provider.clone());
//! let config = statestream_tls::client_config(provider, verifier, None)?;
//! // Hand `config` to the client library (tokio-postgres-rustls,
//! // async-nats' `tls_client_config`, …).
//! # let _ = config;
//! # Ok::<(), statestream_tls::TlsError>(())
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod server;

pub use server::{CaFileClientVerifier, ServerFiles, certificate_subject, server_config};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// What can go wrong reading the files or setting TLS up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    /// A file meant to hold certificates holds none.
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    /// A file meant to hold a private key holds none that is usable.
    #[error("{} holds no usable PEM private key: {reason}", path.display())]
    NoKey { path: PathBuf, reason: String },
    /// rustls refused the configuration (for example a client key that
    /// does not match its certificate).
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The crypto provider every statestream client uses: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file, in order.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |reason: String| TlsError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::NoKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A client configuration: TLS 1.2 and 1.3 with `provider`, the server's
/// certificate checked by `verifier`, and a client certificate (chain and
/// key) when the server asks for one.
pub fn client_config(
    provider: Arc<CryptoProvider>,
    verifier: CaFileVerifier,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    match client_auth {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Setup(format!("the client certificate or key: {e}"))),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Verifies a server's certificate against the certificates of a CA file:
/// one that chains to them (webpki), or one of them itself (pinned). See
/// the crate's documentation.
#[derive(Debug)]
pub struct CaFileVerifier {
    /// Every certificate of the file, each acceptable as the server's own.
    pinned: Vec<CertificateDer<'static>>,
    /// The webpki verifier over the file's certificates that are usable as
    /// trust anchors; `None` when none is.
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl CaFileVerifier {
    /// A verifier trusting `certs` (as read by [`read_certificates`]) as
    /// certificate authorities and as pinned server certificates.
    pub fn new(certs: Vec<CertificateDer<'static>>, provider: Arc<CryptoProvider>) -> Self {
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
        // A file of certificates none of which parses as a trust anchor
        // still pins them; with no anchor a chain can never verify.
        let chain = (added > 0)
            .then(|| {
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .ok()
            })
            .flatten();
        CaFileVerifier {
            pinned: certs,
            chain,
            provider,
        }
    }
}

impl ServerCertVerifier for CaFileVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            check_validity(end_entity, now)?;
            let parsed = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        match &self.chain {
            Some(chain) => {
                chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(CertificateError::UnknownIssuer.into()),
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether `now` lies within the certificate's validity period.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    use x509_cert::der::Decode as _;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let validity = &parsed.tbs_certificate.validity;
    let not_before = validity.not_before.to_unix_duration();
    let not_after = validity.not_after.to_unix_duration();
    let time = Duration::from_secs(now.as_secs());
    if time < not_before {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before: UnixTime::since_unix_epoch(not_before),
        }
        .into());
    }
    if time > not_after {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after: UnixTime::since_unix_epoch(not_after),
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
    };

    /// A self-signed certificate for `names` that is also a CA, as
    /// `openssl req -x509` makes it, valid in 2020..2040.
    fn self_signed_ca(names: &[&str]) -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "self");
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2040, 1, 1);
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .clone()
    }

    fn at(year_2000_plus: u64) -> UnixTime {
        // Close enough to 1 January of the year for these tests.
        UnixTime::since_unix_epoch(Duration::from_secs(
            (30 + year_2000_plus) * 365 * 86_400 + 10 * 86_400,
        ))
    }

    fn verify(
        v: &CaFileVerifier,
        cert: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        host: &str,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(host.to_string()).unwrap();
        v.verify_server_cert(cert, intermediates, &name, &[], now)
    }

    #[test]
    fn tls_pinned_self_signed_ca_is_accepted_for_its_names() {
        let cert = self_signed_ca(&["127.0.0.1", "localhost"]);
        let v = CaFileVerifier::new(vec![cert.clone()], provider());
        verify(&v, &cert, &[], "127.0.0.1", at(26)).expect("pinned, by IP");
        verify(&v, &cert, &[], "localhost", at(26)).expect("pinned, by name");
        let err = verify(&v, &cert, &[], "other.example", at(26)).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn tls_pinned_certificate_outside_its_validity_is_refused() {
        let cert = self_signed_ca(&["localhost"]);
        let v = CaFileVerifier::new(vec![cert.clone()], provider());
        let err = verify(&v, &cert, &[], "localhost", at(41)).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
            ),
            "{err:?}"
        );
        let err = verify(&v, &cert, &[], "localhost", at(19)).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { .. })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn tls_certificate_not_in_the_file_is_refused() {
        let listed = self_signed_ca(&["localhost"]);
        let other = self_signed_ca(&["localhost"]);
        let v = CaFileVerifier::new(vec![listed], provider());
        // Another self-signed certificate is neither pinned nor a chain:
        // webpki's own refusal stands.
        let err = verify(&v, &other, &[], "localhost", at(26)).unwrap_err();
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn tls_certificate_signed_by_a_listed_ca_is_accepted() {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        let v = CaFileVerifier::new(vec![issuer.der().clone()], provider());
        let now = UnixTime::now();
        verify(&v, leaf.der(), &[], "localhost", now).expect("chains to the CA");
        let err = verify(&v, leaf.der(), &[], "elsewhere", now).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
            ),
            "{err:?}"
        );
    }
}
