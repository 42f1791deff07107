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
