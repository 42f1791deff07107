//! Certificates made with the `openssl` command line tool, as operators
//! make them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether the `openssl` tool runs; under `CI` its absence fails the test
/// (see [`crate::require`]).
pub fn openssl(test: &str) -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    crate::require(
        test,
        "openssl (command line tool)",
        found,
        "apt-get install -y openssl",
    )
}

/// The common one-line self-signed certificate, `openssl req -x509
/// -newkey rsa:2048 -nodes …` with the subject alternative names `san`
/// (`IP:127.0.0.1,DNS:localhost`): OpenSSL's defaults make it a CA
/// (basicConstraints CA:TRUE) that is also the server's certificate.
/// Written as `<name>.pem` and `<name>-key.pem` in `dir`; returns their
/// paths.
///
/// # Panics
///
/// When `openssl` fails (call [`openssl`] first to skip without it).
pub fn one_line_certificate(dir: &Path, name: &str, san: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", "/CN=statestream test", "-addext"])
        .arg(format!("subjectAltName={san}"))
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl req -x509 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// A certificate authority as operators make one for mTLS:
/// `openssl req -x509 -newkey rsa:2048 -nodes` with the subject
/// `/CN=<name>`, written as `<name>.pem` and `<name>-key.pem` in `dir`;
/// returns their paths.
///
/// # Panics
///
/// When `openssl` fails (call [`openssl`] first to skip without it).
pub fn certificate_authority(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .arg("-subj")
        .arg(format!("/CN={name}"))
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl req -x509 (CA) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// A certificate for `subject` (`/CN=wallet/O=Example`) signed by the CA
/// `ca` (its certificate and key paths), a leaf (basicConstraints
/// CA:FALSE) for a server (with subject alternative names `san`, such as
/// `IP:127.0.0.1,DNS:localhost`) or a client (`san` empty). Written as
/// `<name>.pem` and `<name>-key.pem` in `dir`; returns their paths.
///
/// # Panics
///
/// When `openssl` fails (call [`openssl`] first to skip without it).
pub fn signed_certificate(
    dir: &Path,
    name: &str,
    subject: &str,
    san: &str,
    ca: &(PathBuf, PathBuf),
) -> (PathBuf, PathBuf) {
    let (cert, key, csr, ext) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.ext")),
    );
    let run = |what: &str, cmd: &mut Command| {
        let out = cmd.output().expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        "req (CSR)",
        Command::new("openssl")
            .args(["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&csr)
            .arg("-subj")
            .arg(subject),
    );
    let mut extensions = String::from("basicConstraints=CA:FALSE\n");
    if san.is_empty() {
        extensions.push_str("extendedKeyUsage=clientAuth\n");
    } else {
        extensions.push_str(&format!(
            "extendedKeyUsage=serverAuth\nsubjectAltName={san}\n"
        ));
    }
    std::fs::write(&ext, extensions).expect("write the extensions file");
    run(
        "x509 -req (sign)",
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca.0)
            .arg("-CAkey")
            .arg(&ca.1)
            .arg("-CAcreateserial")
            .arg("-out")
            .arg(&cert)
            .arg("-extfile")
            .arg(&ext),
    );
    (cert, key)
}
