//! The server side: a rustls server configuration from PEM files, the
//! clients' certificates (mTLS) verified against a CA file, and the subject
//! of the certificate a client presented.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::{TlsError, check_validity, read_certificates, read_private_key};

/// The PEM files of a TLS listener: its certificate chain and key, and
/// the CA file client certificates must verify against (mTLS) when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles<'a> {
    /// The server's certificate, then any intermediates (PEM).
    pub cert_file: &'a Path,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: &'a Path,
    /// When set, every client must present a certificate that chains to
    /// one of this file's certificates or is one of them (pinned).
    pub client_ca_file: Option<&'a Path>,
}

/// Reads the files and builds a server configuration: TLS 1.2 and 1.3
/// with `provider`, the key checked against the certificate, client
/// certificates required and verified when `client_ca_file` is set, and
/// the ALPN protocols `alpn` offered (in order of preference).
pub fn server_config(
    provider: Arc<CryptoProvider>,
    files: &ServerFiles<'_>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let chain = read_certificates(files.cert_file)?;
    let key = read_private_key(files.key_file)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match files.client_ca_file {
        Some(path) => {
            let cas = read_certificates(path)?;
            let verifier = CaFileClientVerifier::new(cas, Arc::clone(&provider)).map_err(|e| {
                TlsError::Setup(format!("the client CA file {}: {e}", path.display()))
            })?;
            builder.with_client_cert_verifier(Arc::new(verifier))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::Setup(format!(
            "the certificate {} and the key {} do not go together: {e}",
            files.cert_file.display(),
            files.key_file.display()
        ))
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Verifies a client's certificate against the certificates of a CA file:
/// one that chains to them (webpki), or one of them itself (pinned), as
/// [`CaFileVerifier`](crate::CaFileVerifier) does for servers. A client
/// without a certificate is refused.
#[derive(Debug)]
pub struct CaFileClientVerifier {
    pinned: Vec<CertificateDer<'static>>,
    chain: Option<Arc<dyn ClientCertVerifier>>,
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl CaFileClientVerifier {
    /// A verifier trusting `certs` as certificate authorities and as
    /// pinned client certificates.
    pub fn new(
        certs: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
        let hints = roots.subjects();
        let chain = if added > 0 {
            Some(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| TlsError::Setup(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(CaFileClientVerifier {
            pinned: certs,
            chain,
            hints,
            provider,
        })
    }
}

impl ClientCertVerifier for CaFileClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            check_validity(end_entity, now)?;
            return Ok(ClientCertVerified::assertion());
        }
        match &self.chain {
            Some(chain) => chain.verify_client_cert(end_entity, intermediates, now),
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

/// A certificate's subject: its common name (the last CN attribute, the
/// most specific, when there are several) and the whole distinguished
/// name in RFC 4514 form (`CN=wallet,O=Example`). `None` when the
/// certificate cannot be parsed.
pub fn certificate_subject(cert: &CertificateDer<'_>) -> Option<(Option<String>, String)> {
    use x509_cert::der::Decode as _;
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
    use x509_cert::der::{Tag, Tagged as _};
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let subject = &parsed.tbs_certificate.subject;
    let common_name = subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == x509_cert::der::oid::db::rfc4519::CN)
        .filter_map(|atv| {
            let value = &atv.value;
            match value.tag() {
                Tag::Utf8String => Utf8StringRef::try_from(value).ok().map(|s| s.to_string()),
                Tag::PrintableString => PrintableStringRef::try_from(value)
                    .ok()
                    .map(|s| s.to_string()),
                Tag::Ia5String => Ia5StringRef::try_from(value).ok().map(|s| s.to_string()),
                Tag::TeletexString => TeletexStringRef::try_from(value)
                    .ok()
                    .map(|s| s.to_string()),
                _ => None,
            }
        })
        .next_back();
    Some((common_name, subject.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
    };

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn client(cn: &str, issuer: &CertifiedIssuer<'static, KeyPair>) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example");
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .signed_by(&KeyPair::generate().unwrap(), issuer)
            .unwrap()
            .der()
            .clone()
    }

    #[test]
    fn tls_client_certificate_of_the_ca_is_accepted_others_refused() {
        let clients = ca("clients");
        let verifier = CaFileClientVerifier::new(vec![clients.der().clone()], provider()).unwrap();
        assert!(verifier.client_auth_mandatory());
        let now = UnixTime::now();
        verifier
            .verify_client_cert(&client("wallet", &clients), &[], now)
            .expect("signed by the CA");
        let stranger = client("wallet", &ca("stranger"));
        let err = verifier
            .verify_client_cert(&stranger, &[], now)
            .unwrap_err();
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn tls_pinned_client_certificate_is_accepted_within_its_validity() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "indexer");
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2040, 1, 1);
        let cert = params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .clone();
        let verifier = CaFileClientVerifier::new(vec![cert.clone()], provider()).unwrap();
        let in_2026 = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_780_000_000));
        verifier
            .verify_client_cert(&cert, &[], in_2026)
            .expect("pinned");
        let in_2041 = UnixTime::since_unix_epoch(std::time::Duration::from_secs(2_240_000_000));
        let err = verifier
            .verify_client_cert(&cert, &[], in_2041)
            .unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn tls_subject_gives_the_common_name_and_the_whole_name() {
        let cert = client("wallet", &ca("clients"));
        let (cn, subject) = certificate_subject(&cert).expect("parses");
        assert_eq!(cn.as_deref(), Some("wallet"));
        // RFC 4514 writes the sequence last to first; rcgen decides the
        // order of its attributes (the openssl-made certificate of
        // streaming-net's tests gives `CN=wallet,O=Example`).
        let mut parts: Vec<&str> = subject.split(',').collect();
        parts.sort_unstable();
        assert_eq!(parts, ["CN=wallet", "O=Example"], "{subject}");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "No CN");
        let cert = params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .clone();
        let (cn, subject) = certificate_subject(&cert).expect("parses");
        assert_eq!(cn, None);
        assert_eq!(subject, "O=No CN");
        assert!(certificate_subject(&CertificateDer::from(vec![1, 2, 3])).is_none());
    }
}
