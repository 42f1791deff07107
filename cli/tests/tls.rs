//! TLS on a real node: the `serve` streamer's listeners and `[telemetry]`
//! with certificates made by `openssl` in the test; `statestream
//! subscribe --ca-file`; SIGHUP re-reads the certificates while an SSE
//! stream opened before goes on; `statestream config check` reads the
//! files.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use statestream_test_support::tls::{certificate_authority, openssl, signed_certificate};

const BIN: &str = env!("CARGO_BIN_EXE_statestream");

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

fn curl_available(test: &str) -> bool {
    let found = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    statestream_test_support::require(test, "curl", found, "apt-get install -y curl")
}

fn tools(test: &str) -> bool {
    openssl(test) && curl_available(test)
}

/// A CA and the server certificate it signed for localhost.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let ca = certificate_authority(dir, &format!("{name}-ca"));
    let (cert, key) = signed_certificate(
        dir,
        &format!("{name}-server"),
        "/CN=localhost",
        "IP:127.0.0.1,DNS:localhost",
        &ca,
    );
    Pki {
        ca: ca.0,
        cert,
        key,
    }
}

/// Puts `pki`'s certificate and key where the configuration names them
/// (`HOME/tls/server.pem`, `HOME/tls/server-key.pem`), as a renewal does.
fn install(home: &Path, pki: &Pki) {
    let dir = home.join("tls");
    std::fs::create_dir_all(&dir).expect("create HOME/tls");
    std::fs::copy(&pki.cert, dir.join("server.pem")).expect("copy the certificate");
    std::fs::copy(&pki.key, dir.join("server-key.pem")).expect("copy the key");
}

const APP_TOML: &str = r#"
[store]
streamers = ["serve"]

[streamers.serve]
type = "serve"
keys = ["*"]
grpc_address = "127.0.0.1:0"
http_address = "127.0.0.1:0"
heartbeat_ms = 200
tls_cert_file = "tls/server.pem"
tls_key_file = "tls/server-key.pem"

[telemetry]
address = "127.0.0.1:0"
tls_cert_file = "tls/server.pem"
tls_key_file = "tls/server-key.pem"

[admin]
address = "127.0.0.1:0"
token_file = "config/admin-token"
tls_cert_file = "tls/server.pem"
tls_key_file = "tls/server-key.pem"
"#;

/// The admin token the configuration's `token_file` holds.
const ADMIN_TOKEN: &str = "admin-s3cret";

/// A running node, its stderr lines on a channel; killed when dropped
/// (also when a test fails).
struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Node {
    fn start(home: &Path) -> Node {
        let config = home.join("config/app.toml");
        std::fs::create_dir_all(config.parent().expect("config dir")).expect("mkdir");
        std::fs::write(&config, APP_TOML).expect("write app.toml");
        std::fs::write(home.join("config/admin-token"), format!("{ADMIN_TOKEN}\n"))
            .expect("write the admin token");
        let mut child = Command::new(BIN)
            .args(["node", "--home", path(home)])
            .args(["--blocks", "0", "--block-time-ms", "20", "--no-fsync"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the node");
        let stderr = child.stderr.take().expect("the node's stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Node {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next stderr line containing `fragment`, by `deadline`.
    fn wait_for(&mut self, fragment: &str, deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(fragment) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "waited for a log line with {fragment:?}; the node logged:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The port of the address logged on the next line with `fragment`.
    fn port(&mut self, fragment: &str, deadline: Instant) -> u16 {
        let line = self.wait_for(fragment, deadline);
        line.split("address=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|address| address.rsplit(':').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) on the child we spawned, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl` with `args` and the URL: exit code, stdout, stderr.
fn curl(args: &[&str], url: &str) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `curl -N` on an SSE stream: its `event:` names on a
/// channel; killed when dropped.
struct Sse {
    child: Child,
    events: mpsc::Receiver<String>,
}

impl Sse {
    fn start(ca: &Path, url: &str) -> Sse {
        let mut child = Command::new("curl")
            .args(["-sSN", "--max-time", "120", "--cacert", path(ca), url])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run curl");
        let stdout = child.stdout.take().expect("curl's stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(event) = line.strip_prefix("event:")
                    && tx.send(event.trim().to_string()).is_err()
                {
                    return;
                }
            }
        });
        Sse { child, events }
    }

    fn next(&self, deadline: Instant, what: &str) -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        self.events
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("waited for {what}: {e}"))
    }

    /// Discards the events received so far.
    fn drain(&self) {
        while self.events.try_recv().is_ok() {}
    }
}

impl Drop for Sse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `statestream subscribe ADDR --json ARGS` until a JSON `end` line, by
/// the deadline; then killed.
fn subscribe_one_block(address: &str, args: &[&str], deadline: Instant) -> serde_json::Value {
    let mut child = Command::new(BIN)
        .args(["subscribe", address, "--json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run statestream subscribe");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("waited for an end line from statestream subscribe over TLS");
        };
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        if v["type"] == "end" {
            break v;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    end
}

#[test]
fn node_tls_sighup_reloads_certificates_and_keeps_open_streams() {
    if !tools("node_tls_sighup_reloads_certificates_and_keeps_open_streams") {
        return;
    }
    let tmp = tempfile::tempdir().expect("temporary directory");
    let home = tmp.path().join("home");
    let old = pki(tmp.path(), "old");
    let new = pki(tmp.path(), "new");
    install(&home, &old);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut node = Node::start(&home);
    let grpc = node.port("serve: gRPC listening", deadline);
    let http = node.port("serve: HTTP (SSE) listening", deadline);
    // In the order the node starts them.
    let telemetry = node.port("telemetry server listening", deadline);
    let admin = node.port("admin API listening", deadline);
    node.wait_for("node started", deadline);
    let admin_url = format!("https://localhost:{admin}/v1/credentials");
    let bearer = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let grpc_url = format!("https://localhost:{grpc}");
    let sse_url = format!("https://localhost:{http}/stream");
    let health_url = format!("https://localhost:{telemetry}/healthz");

    let (code, out, err) = curl(&["--cacert", path(&old.ca)], &health_url);
    assert_eq!(code, 0, "telemetry over TLS: {err}");
    assert!(out.contains("committing"), "{out}");
    let (code, out, err) = curl(
        &[
            "--cacert",
            path(&old.ca),
            "-H",
            &bearer,
            "-w",
            " %{http_code}",
        ],
        &admin_url,
    );
    assert_eq!(code, 0, "admin API over TLS: {err}");
    assert!(
        out.contains("credentials") && out.ends_with(" 200"),
        "{out}"
    );
    // statestream credentials over the admin API's TLS.
    let admin_base = format!("https://localhost:{admin}");
    let token_file = home.join("config/admin-token");
    let credentials = |ca: &Path| {
        Command::new(BIN)
            .args(["credentials", "list", "--json", "--admin", &admin_base])
            .args([
                "--admin-token-file",
                path(&token_file),
                "--ca-file",
                path(ca),
            ])
            .output()
            .expect("run statestream credentials")
    };
    let out = credentials(&old.ca);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("credentials"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = credentials(&new.ca);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a wrong CA: {stderr}");
    assert!(
        stderr.contains(&admin_base) && stderr.contains("UnknownIssuer"),
        "names the admin API and why: {stderr}"
    );
    let end = subscribe_one_block(&grpc_url, &["--ca-file", path(&old.ca)], deadline);
    assert!(end["height"].as_u64().is_some(), "{end}");

    // A wrong CA: a clear error naming the endpoint and why, exit 1.
    let out = Command::new(BIN)
        .args(["subscribe", &grpc_url, "--ca-file", path(&new.ca)])
        .output()
        .expect("run statestream subscribe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&grpc_url) && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );

    let stream = Sse::start(&old.ca, &sse_url);
    assert_eq!(stream.next(deadline, "the SSE put"), "put");

    install(&home, &new);
    node.signal(libc::SIGHUP);
    let line = node.wait_for("SIGHUP: TLS certificates re-read", deadline);
    assert!(
        line.contains("reloaded=3") && line.contains("failed=0"),
        "serve (both listeners share one), telemetry and admin: {line}"
    );
    for url in [
        &health_url,
        &format!("https://localhost:{http}/snapshot"),
        &format!("https://localhost:{admin}/"),
    ] {
        let (code, _, err) = curl(&["--cacert", path(&new.ca)], url);
        assert_eq!(code, 0, "{url} with the new certificate: {err}");
        let (code, _, err) = curl(&["--cacert", path(&old.ca)], url);
        assert_eq!(
            code, 60,
            "{url} no longer serves the old certificate: {err}"
        );
    }
    subscribe_one_block(&grpc_url, &["--ca-file", path(&new.ca)], deadline);
    // The stream opened before the reload goes on with the old one.
    stream.drain();
    for _ in 0..3 {
        let event = stream.next(deadline, "SSE events after the reload");
        assert_ne!(event, "put", "the stream was not restarted");
    }

    // A bad file: the listeners keep the new certificates.
    std::fs::write(home.join("tls/server.pem"), "not a certificate\n").expect("write");
    node.signal(libc::SIGHUP);
    node.wait_for("TLS certificates not reloaded", deadline);
    let line = node.wait_for("SIGHUP: TLS certificates re-read", deadline);
    assert!(line.contains("failed=3"), "{line}");
    let (code, _, err) = curl(&["--cacert", path(&new.ca)], &health_url);
    assert_eq!(code, 0, "still served after a bad reload: {err}");

    // SIGHUP did not stop the node; SIGTERM does, cleanly.
    node.signal(libc::SIGTERM);
    let status = statestream_test_support::wait_exit(
        &mut node.child,
        "the node to exit after SIGTERM",
        deadline.saturating_duration_since(Instant::now()),
    );
    assert!(status.success(), "{status:?}");
}

/// `statestream config check HOME/config/app.toml`: exit code, stderr.
fn config_check(home: &Path, app_toml: &str) -> (i32, String) {
    let config = home.join("config/app.toml");
    std::fs::create_dir_all(config.parent().expect("config dir")).expect("mkdir");
    std::fs::write(&config, app_toml).expect("write app.toml");
    std::fs::write(home.join("config/admin-token"), format!("{ADMIN_TOKEN}\n"))
        .expect("write the admin token");
    let out = Command::new(BIN)
        .args(["config", "check", path(&config)])
        .env("RUST_LOG", "error")
        .output()
        .expect("run statestream config check");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn config_check_reads_the_tls_files() {
    if !openssl("config_check_reads_the_tls_files") {
        return;
    }
    let tmp = tempfile::tempdir().expect("temporary directory");
    let home = tmp.path().join("home");
    let a = pki(tmp.path(), "a");
    let b = pki(tmp.path(), "b");
    install(&home, &a);
    std::fs::copy(&b.key, home.join("tls/other-key.pem")).expect("copy");
    std::fs::copy(&a.ca, home.join("tls/ca.pem")).expect("copy");

    let (code, err) = config_check(&home, APP_TOML);
    assert_eq!(code, 0, "{err}");
    let with_ca = APP_TOML.replace(
        "heartbeat_ms = 200\n",
        "heartbeat_ms = 200\ntls_client_ca_file = \"tls/ca.pem\"\n",
    );
    let (code, err) = config_check(&home, &with_ca);
    assert_eq!(code, 0, "{err}");

    let cases: [(&str, String, &[&str]); 9] = [
        (
            "serve: a key without a certificate",
            APP_TOML.replacen("tls_cert_file = \"tls/server.pem\"\n", "", 1),
            &["tls_key_file", "set tls_cert_file too"],
        ),
        (
            "serve: a missing file",
            APP_TOML.replacen("tls/server.pem", "tls/missing.pem", 1),
            &["tls_cert_file", "missing.pem"],
        ),
        (
            "serve: a key of another certificate",
            APP_TOML.replacen("tls/server-key.pem", "tls/other-key.pem", 1),
            &["tls_key_file", "do not go together"],
        ),
        (
            "serve: a client CA without TLS",
            APP_TOML
                .replacen("tls_cert_file = \"tls/server.pem\"\n", "", 1)
                .replacen(
                    "tls_key_file = \"tls/server-key.pem\"\n",
                    "tls_client_ca_file = \"tls/ca.pem\"\n",
                    1,
                ),
            &["tls_client_ca_file", "need TLS"],
        ),
        (
            "serve: a client CA file that holds no certificate",
            with_ca.replacen("tls/ca.pem", "tls/server-key.pem", 1),
            &["tls_client_ca_file", "holds no PEM certificate"],
        ),
        (
            "telemetry: a certificate without a key",
            APP_TOML.replace(
                "address = \"127.0.0.1:0\"\ntls_cert_file = \"tls/server.pem\"\ntls_key_file = \"tls/server-key.pem\"\n",
                "address = \"127.0.0.1:0\"\ntls_cert_file = \"tls/server.pem\"\n",
            ),
            &["[telemetry]", "tls_cert_file", "set tls_key_file too"],
        ),
        (
            "telemetry: a key of another certificate",
            APP_TOML.replace(
                "[telemetry]\naddress = \"127.0.0.1:0\"\ntls_cert_file = \"tls/server.pem\"\ntls_key_file = \"tls/server-key.pem\"",
                "[telemetry]\naddress = \"127.0.0.1:0\"\ntls_cert_file = \"tls/server.pem\"\ntls_key_file = \"tls/other-key.pem\"",
            ),
            &["[telemetry]", "tls_key_file", "do not go together"],
        ),
        (
            "admin: a key without a certificate",
            APP_TOML.replace(
                "token_file = \"config/admin-token\"\ntls_cert_file = \"tls/server.pem\"\n",
                "token_file = \"config/admin-token\"\n",
            ),
            &["[admin]", "tls_key_file", "set tls_cert_file too"],
        ),
        (
            "admin: a missing certificate",
            APP_TOML.replace(
                "token_file = \"config/admin-token\"\ntls_cert_file = \"tls/server.pem\"\n",
                "token_file = \"config/admin-token\"\ntls_cert_file = \"tls/gone.pem\"\n",
            ),
            &["[admin]", "tls_cert_file", "gone.pem"],
        ),
    ];
    for (what, toml, fragments) in cases {
        let (code, err) = config_check(&home, &toml);
        assert_eq!(code, 1, "{what}: expected a failure, got: {err}");
        for fragment in fragments {
            assert!(
                err.contains(fragment),
                "{what}: stderr lacks {fragment:?}: {err}"
            );
        }
    }
}
