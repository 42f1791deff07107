//! TLS with a certificate authority made by the test, client certificates,
//! and nkey authentication; a wrong credential is a clear error that does
//! not print the secret.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use statestream_nats::replay_stream;
use statestream_test_support::tls::{one_line_certificate, openssl};

use crate::server::{self, Auth};
use crate::{app_toml, assert_exactly_once, commit_block, manager, memory_store};

/// A certificate authority, and PEM files of certificates it signed.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> anyhow::Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("statestream test CA {name}"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, issuer.pem())?;
        Ok(Ca { issuer, pem })
    }

    /// A certificate for `names` (DNS names or IP addresses): its PEM
    /// file and its key's PEM file.
    fn issue(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
        client: bool,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.issuer)?;
        let (c, k) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}-key.pem")),
        );
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok((c, k))
    }
}

fn tls_block(cert: &Path, key: &Path, verify_with: Option<&Path>) -> String {
    let mut t = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 5\n",
        cert.display(),
        key.display()
    );
    if let Some(ca) = verify_with {
        t.push_str(&format!(
            "  ca_file: \"{}\"\n  verify: true\n",
            ca.display()
        ));
    }
    t.push_str("}\n");
    t
}

#[test]
fn security_tls_server_verified_with_tls_ca_file() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let ca = Ca::new(certs.path(), "good")?;
    let (cert, key) = ca.issue(certs.path(), "server", &["127.0.0.1", "localhost"], false)?;
    let Some(server) = server::start_conf(
        "security_tls_server_verified_with_tls_ca_file",
        &tls_block(&cert, &key, None),
        Some(Auth::Tls {
            ca: ca.pem.clone(),
            client: None,
        }),
    ) else {
        return Ok(());
    };
    let tls_url = server.url().replace("nats://", "tls://");
    let ca_line = format!("tls_ca_file = \"{}\"", ca.pem.display());

    // tls:// with the CA: delivered, and read back over TLS.
    let mut store = memory_store();
    let mut m = manager(
        &mut store,
        &app_toml(&tls_url, &format!("delivery = \"sync\"\n{ca_line}")),
    )?;
    for b in 1..=5 {
        commit_block(&mut m, &mut store, b)?;
    }
    m.close(&mut store)?;
    assert_exactly_once(&server.client(), "statestream", 5);
    let replay = replay_stream(&server.reader_config("statestream", "statestream"))?;
    assert_eq!(replay.app_hash, store.last_commit().app_hash);

    // nats:// with tls_required and the CA: TLS too.
    let mut store2 = memory_store();
    let mut m = manager(
        &mut store2,
        &app_toml(
            &server.url(),
            &format!("delivery = \"sync\"\ntls_required = true\n{ca_line}"),
        ),
    )?;
    for b in 1..=6 {
        commit_block(&mut m, &mut store2, b)?;
    }
    m.close(&mut store2)?;
    assert_exactly_once(&server.client(), "statestream", 6);

    // A certificate from another CA is refused: a clear error, no panic.
    let other = Ca::new(certs.path(), "other")?;
    let mut store = memory_store();
    let toml = app_toml(
        &tls_url,
        &format!(
            "delivery = \"sync\"\ntls_ca_file = \"{}\"",
            other.pem.display()
        ),
    );
    let mut m = manager(&mut store, &toml)?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("untrusted certificate");
    let text = err.to_string();
    assert!(text.contains("cannot connect to tls://127.0.0.1"), "{text}");
    assert!(text.to_lowercase().contains("tls"), "{text}");

    // A TLS server reached without TLS settings: the client follows the
    // server (TLS required) but cannot verify the certificate.
    let mut store = memory_store();
    let mut m = manager(&mut store, &app_toml(&server.url(), "delivery = \"sync\""))?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("no CA");
    assert!(err.to_string().contains("cannot connect to"), "{err}");

    // A missing CA file names the key.
    let mut store = memory_store();
    let toml = app_toml(
        &tls_url,
        "delivery = \"sync\"\ntls_ca_file = \"/nonexistent/ca.pem\"",
    );
    let mut m = manager(&mut store, &toml)?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("missing file");
    assert!(
        err.to_string().contains("tls_ca_file /nonexistent/ca.pem"),
        "{err}"
    );
    Ok(())
}

#[test]
fn security_tls_one_line_self_signed_certificate_is_pinned() -> anyhow::Result<()> {
    // The server's certificate is the one-line self-signed one, and
    // tls_ca_file names that very certificate: accepted as pinned (webpki
    // alone refuses it: CaUsedAsEndEntity). Another self-signed
    // certificate in tls_ca_file is refused.
    let test = "security_tls_one_line_self_signed_certificate_is_pinned";
    if !openssl(test) {
        return Ok(());
    }
    let certs = tempfile::tempdir()?;
    let (cert, key) = one_line_certificate(certs.path(), "server", "IP:127.0.0.1,DNS:localhost");
    let Some(server) = server::start_conf(
        test,
        &tls_block(&cert, &key, None),
        Some(Auth::Tls {
            ca: cert.clone(),
            client: None,
        }),
    ) else {
        return Ok(());
    };
    let tls_url = server.url().replace("nats://", "tls://");
    let mut store = memory_store();
    let toml = app_toml(
        &tls_url,
        &format!("delivery = \"sync\"\ntls_ca_file = \"{}\"", cert.display()),
    );
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=4 {
        commit_block(&mut m, &mut store, b)?;
    }
    m.close(&mut store)?;
    assert_exactly_once(&server.client(), "statestream", 4);
    // The reader connects the same way.
    let replay = replay_stream(&server.reader_config("statestream", "statestream"))?;
    assert_eq!(replay.app_hash, store.last_commit().app_hash);

    // Another one-line certificate in tls_ca_file: not the server's, not
    // its issuer.
    let (other, _) = one_line_certificate(certs.path(), "other", "IP:127.0.0.1");
    let mut store = memory_store();
    let toml = app_toml(
        &tls_url,
        &format!("delivery = \"sync\"\ntls_ca_file = \"{}\"", other.display()),
    );
    let mut m = manager(&mut store, &toml)?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("another certificate");
    let text = err.to_string();
    assert!(text.contains("cannot connect to tls://127.0.0.1"), "{text}");
    assert!(text.contains("invalid peer certificate"), "{text}");
    Ok(())
}

#[test]
fn security_tls_client_certificate() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let ca = Ca::new(certs.path(), "ca")?;
    let (cert, key) = ca.issue(certs.path(), "server", &["127.0.0.1"], false)?;
    let client = ca.issue(certs.path(), "client", &["statestream"], true)?;
    let Some(server) = server::start_conf(
        "security_tls_client_certificate",
        &tls_block(&cert, &key, Some(&ca.pem)),
        Some(Auth::Tls {
            ca: ca.pem.clone(),
            client: Some(client.clone()),
        }),
    ) else {
        return Ok(());
    };
    let tls_url = server.url().replace("nats://", "tls://");
    let mut store = memory_store();
    let toml = app_toml(
        &tls_url,
        &format!(
            "delivery = \"sync\"\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            ca.pem.display(),
            client.0.display(),
            client.1.display()
        ),
    );
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=3 {
        commit_block(&mut m, &mut store, b)?;
    }
    m.close(&mut store)?;
    assert_exactly_once(&server.client(), "statestream", 3);

    // Without the client certificate the server refuses the connection.
    let mut store = memory_store();
    let toml = app_toml(
        &tls_url,
        &format!(
            "delivery = \"sync\"\ntls_ca_file = \"{}\"",
            ca.pem.display()
        ),
    );
    let mut m = manager(&mut store, &toml)?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("no client certificate");
    assert!(err.to_string().contains("cannot connect to"), "{err}");
    Ok(())
}

#[test]
fn security_nkey_authentication() -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed()?;
    let seed_file = keys.path().join("user.nk");
    std::fs::write(&seed_file, format!("{seed}\n"))?;
    let Some(server) = server::start_conf(
        "security_nkey_authentication",
        &format!(
            "authorization {{\n  users: [\n    {{ nkey: \"{}\" }}\n  ]\n}}\n",
            user.public_key()
        ),
        Some(Auth::Nkey(seed.clone(), seed_file.clone())),
    ) else {
        return Ok(());
    };
    let mut store = memory_store();
    let toml = app_toml(
        &server.url(),
        &format!(
            "delivery = \"sync\"\nnkey_seed_file = \"{}\"",
            seed_file.display()
        ),
    );
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=4 {
        commit_block(&mut m, &mut store, b)?;
    }
    m.close(&mut store)?;
    assert_exactly_once(&server.client(), "statestream", 4);
    let replay = replay_stream(&server.reader_config("statestream", "statestream"))?;
    assert_eq!(replay.app_hash, store.last_commit().app_hash);

    // Another user's seed: refused, and the seed is not printed.
    let intruder = nkeys::KeyPair::new_user();
    let wrong_seed = intruder.seed()?;
    let wrong_file = keys.path().join("intruder.nk");
    std::fs::write(&wrong_file, &wrong_seed)?;
    let mut store = memory_store();
    let toml = app_toml(
        &server.url(),
        &format!(
            "delivery = \"sync\"\nnkey_seed_file = \"{}\"",
            wrong_file.display()
        ),
    );
    let mut m = manager(&mut store, &toml)?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("Authorization Violation"), "{text}");
    assert!(text.contains("nkey"), "{text}");
    assert!(!text.contains(&wrong_seed), "the seed leaks: {text}");
    assert!(!text.contains(&seed), "the seed leaks: {text}");

    // Anonymous: refused too.
    let mut store = memory_store();
    let mut m = manager(&mut store, &app_toml(&server.url(), "delivery = \"sync\""))?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("refused");
    assert!(err.to_string().contains("Authorization Violation"), "{err}");
    Ok(())
}

#[test]
fn security_bad_creds_file_names_the_key_not_its_content() -> anyhow::Result<()> {
    // Needs no nats-server: the file is read before connecting.
    let dir = tempfile::tempdir()?;
    let creds = dir.path().join("bad.creds");
    std::fs::write(&creds, "SUAM-not-a-creds-file-s3cret\n")?;
    let mut store = memory_store();
    let toml = app_toml(
        "nats://127.0.0.1:1",
        &format!("delivery = \"sync\"\ncreds_file = \"{}\"", creds.display()),
    );
    let mut m = manager(&mut store, &toml)?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("bad file");
    let text = err.to_string();
    assert!(text.contains("creds_file"), "{text}");
    assert!(text.contains("not a NATS credentials file"), "{text}");
    assert!(!text.contains("s3cret"), "the file's content leaks: {text}");
    Ok(())
}
