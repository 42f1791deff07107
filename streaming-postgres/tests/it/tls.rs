//! TLS against a real server (`ssl = on`) with a certificate authority and
//! a server certificate made in the test by the `openssl` command line
//! tool: verify-full with `ca_file`, a CA that did not sign the server's
//! certificate, and `tls = "require"` against a server without TLS.

use std::path::{Path, PathBuf};
use std::process::Command;

use statestream_test_support::tls::{one_line_certificate, openssl};

use crate::{app_toml, commit_block, connect, db_heights, manager, memory_store, server};

fn run_openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate authority `<name>.pem` (key `<name>.key`) in
/// `dir`, ECDSA P-256, valid for two days.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    run_openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN=statestream test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(pem)
}

/// A server certificate for 127.0.0.1 signed by the CA `ca` (made by
/// [`make_ca`]): (certificate PEM, key PEM).
fn make_server_cert(dir: &Path, ca: &str) -> (String, String) {
    run_openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    // The client checks the name in subjectAltName (the URL's host is an
    // IP address), not the common name.
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    run_openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("read a PEM file");
    (read("server.crt"), read("server.key"))
}

/// `tls = "require"` with the CA's certificate as `ca_file` connects to a
/// server whose certificate that CA signed, over TLS, and streams; with
/// another CA's certificate the start fails with an error that names the
/// verification.
#[test]
fn tls_verify_full_with_a_real_certificate() {
    let test = "tls_verify_full_with_a_real_certificate";
    if !openssl(test) {
        return;
    }
    let Some((mut srv, url)) = server(test) else {
        return;
    };
    let pki = tempfile::tempdir().expect("temp dir");
    let ca = make_ca(pki.path(), "ca");
    let other_ca = make_ca(pki.path(), "other-ca");
    let (cert, key) = make_server_cert(pki.path(), "ca");
    srv.enable_tls(&cert, &key);

    let mut store = memory_store();
    let extra = format!(
        "delivery = \"sync\"\ntls = \"require\"\nca_file = \"{}\"",
        ca.display()
    );
    let mut m = manager(&mut store, &app_toml(&url, &extra)).expect("start over TLS");
    let mut log = Vec::new();
    for b in 1..=5 {
        commit_block(&mut m, &mut store, b, &mut log).expect("commit");
    }
    // The streamer's connection (still open) is encrypted.
    let mut c = connect(&url);
    let row = c
        .query_one(
            "SELECT count(*), coalesce(bool_and(s.ssl), false) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'statestream'",
            &[],
        )
        .expect("read pg_stat_ssl");
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, bool>(1)),
        (1, true),
        "the streamer's connection is not TLS"
    );
    m.close(&mut store).expect("close");
    assert_eq!(
        db_heights(&mut c, "statestream"),
        (1..=5).collect::<Vec<_>>()
    );

    // A CA that did not sign the server's certificate.
    let extra = format!(
        "delivery = \"sync\"\ntls = \"require\"\nca_file = \"{}\"",
        other_ca.display()
    );
    let e = match manager(&mut memory_store(), &app_toml(&url, &extra)) {
        Ok(_) => panic!("a certificate of another CA was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("cannot connect to PostgreSQL at"), "{e}");
    assert!(e.contains("verification"), "{e}");
    assert!(e.contains(&other_ca.display().to_string()), "{e}");
    assert!(e.contains("UnknownIssuer"), "{e}");
}

/// `tls = "require"` against a server without TLS: the start fails with an
/// error that says the server does not offer TLS.
#[test]
fn tls_require_without_server_tls_is_a_clear_error() {
    let test = "tls_require_without_server_tls_is_a_clear_error";
    let Some((_srv, url)) = server(test) else {
        return;
    };
    let toml = app_toml(&url, "delivery = \"sync\"\ntls = \"require\"");
    let e = match manager(&mut memory_store(), &toml) {
        Ok(_) => panic!("tls = \"require\" connected to a server without TLS"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("cannot connect to PostgreSQL at"), "{e}");
    assert!(e.contains("does not support TLS"), "{e}");
    assert!(e.contains("tls = \"require\""), "{e}");
}

/// A server whose certificate is the one-line self-signed one, with that
/// very certificate as `ca_file`: accepted as pinned (webpki alone refuses
/// it as a CA used as an end entity), next to the CA-signed case above.
/// Another self-signed certificate as `ca_file` is refused.
#[test]
fn tls_one_line_self_signed_certificate_is_pinned() {
    let test = "tls_one_line_self_signed_certificate_is_pinned";
    if !openssl(test) {
        return;
    }
    let Some((mut srv, url)) = server(test) else {
        return;
    };
    let pki = tempfile::tempdir().expect("temp dir");
    let (pinned, key) = one_line_certificate(pki.path(), "server", "IP:127.0.0.1,DNS:localhost");
    let read = |path: &Path| std::fs::read_to_string(path).expect("read a PEM file");
    srv.enable_tls(&read(&pinned), &read(&key));

    let mut store = memory_store();
    let extra = format!(
        "delivery = \"sync\"\ntls = \"require\"\nca_file = \"{}\"",
        pinned.display()
    );
    let mut m = manager(&mut store, &app_toml(&url, &extra)).expect("start over TLS");
    let mut log = Vec::new();
    for b in 1..=4 {
        commit_block(&mut m, &mut store, b, &mut log).expect("commit");
    }
    m.close(&mut store).expect("close");
    let mut c = connect(&url);
    assert_eq!(
        db_heights(&mut c, "statestream"),
        (1..=4).collect::<Vec<_>>()
    );

    let (other, _) = one_line_certificate(pki.path(), "other", "IP:127.0.0.1");
    let extra = format!(
        "delivery = \"sync\"\ntls = \"require\"\nca_file = \"{}\"",
        other.display()
    );
    let e = match manager(&mut memory_store(), &app_toml(&url, &extra)) {
        Ok(_) => panic!("another self-signed certificate was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("cannot connect to PostgreSQL at"), "{e}");
    assert!(e.contains("verification"), "{e}");
    assert!(e.contains(&other.display().to_string()), "{e}");
}
