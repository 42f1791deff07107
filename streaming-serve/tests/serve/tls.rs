//! TLS and mTLS on both listeners, with certificates made by `openssl`
//! in the test: the client crate over gRPC, `curl` over SSE.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use statestream_client::proto::v1;
use statestream_client::{
    ClientError, MemoryCursor, ResumableSubscription, StartFrom, SubscribeOptions,
};
use statestream_test_support::tls::{certificate_authority, openssl, signed_certificate};

use crate::util::Node;

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

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// A server CA and its certificate for localhost; a clients' CA and a
/// client certificate `/CN=wallet`.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    clients_ca: PathBuf,
    wallet: (PathBuf, PathBuf),
    other_ca: PathBuf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = certificate_authority(dir.path(), "server-ca");
    let server = signed_certificate(
        dir.path(),
        "server",
        "/CN=localhost",
        "IP:127.0.0.1,DNS:localhost",
        &ca,
    );
    let clients_ca = certificate_authority(dir.path(), "clients-ca");
    let wallet = signed_certificate(dir.path(), "wallet", "/CN=wallet", "", &clients_ca);
    let other = certificate_authority(dir.path(), "other-ca");
    Pki {
        ca: ca.0,
        server,
        clients_ca: clients_ca.0,
        wallet,
        other_ca: other.0,
        _dir: dir,
    }
}

fn tls_config(pki: &Pki, mtls: bool) -> String {
    let mut extra = format!(
        "http_address = \"127.0.0.1:0\"\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        path(&pki.server.0),
        path(&pki.server.1)
    );
    if mtls {
        extra.push_str(&format!(
            "tls_client_ca_file = {:?}\n",
            path(&pki.clients_ca)
        ));
    }
    extra
}

fn grpc_url(node: &Node) -> String {
    let port = node.handle.grpc_address().expect("gRPC is on").port();
    format!("https://localhost:{port}")
}

fn sse_url(node: &Node) -> String {
    let port = node.handle.http_address().expect("HTTP is on").port();
    format!("https://localhost:{port}/stream")
}

/// `ListStores` over the client crate's TLS.
fn list_stores(options: &SubscribeOptions) -> Result<Vec<String>, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = options.connect().await?;
        let request = options.request(v1::ListStoresRequest {})?;
        let response = tokio::time::timeout(Duration::from_secs(30), client.list_stores(request))
            .await
            .expect("ListStores answered within 30 s")
            .map_err(ClientError::Status)?;
        Ok(response
            .into_inner()
            .stores
            .into_iter()
            .map(|s| s.name)
            .collect())
    })
}

/// A running `curl -N` on an SSE stream: its `event:` lines on a channel;
/// killed when dropped.
struct Sse {
    child: Child,
    events: mpsc::Receiver<String>,
}

impl Sse {
    fn start(args: &[&str], url: &str) -> Sse {
        let mut child = Command::new("curl")
            .args(["-sSN", "--max-time", "120"])
            .args(args)
            .arg(url)
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

    /// curl's exit code once it ended by itself, by `deadline`.
    fn exit_code(&mut self, deadline: Instant) -> i32 {
        loop {
            if let Some(status) = self.child.try_wait().expect("curl's status") {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "waited for curl to end");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_tls_on_grpc_and_sse() {
    if !tools("serve_tls_on_grpc_and_sse") {
        return;
    }
    let pki = pki();
    let mut node = Node::in_memory(&tls_config(&pki, false));
    node.commit();
    let deadline = Instant::now() + Duration::from_secs(60);

    let options = SubscribeOptions::new(&grpc_url(&node))
        .ca_file(&pki.ca)
        .start(StartFrom::Snapshot);
    let stores = list_stores(&options).expect("ListStores over TLS");
    assert_eq!(stores, ["a", "b", "c"]);

    let sse = Sse::start(&["--cacert", path(&pki.ca)], &sse_url(&node));
    assert_eq!(sse.next(deadline, "the SSE put over TLS"), "put");
    node.commit();
    assert_ne!(sse.next(deadline, "an SSE event of block 2"), "put");

    // Plain gRPC to a TLS listener does not reach the routes.
    let plain = SubscribeOptions::new(&format!(
        "http://127.0.0.1:{}",
        node.handle.grpc_address().expect("gRPC").port()
    ));
    assert!(list_stores(&plain).is_err());
    drop(sse);
    node.close();
}

#[test]
fn serve_tls_wrong_ca_is_a_clear_client_error() {
    if !tools("serve_tls_wrong_ca_is_a_clear_client_error") {
        return;
    }
    let pki = pki();
    let node = Node::in_memory(&tls_config(&pki, false));
    let url = grpc_url(&node);
    let error = list_stores(&SubscribeOptions::new(&url).ca_file(&pki.other_ca))
        .expect_err("a server certificate of another CA");
    let text = error.to_string();
    assert!(matches!(error, ClientError::Tls { .. }), "{error:?}");
    assert!(text.contains(&url), "names the endpoint: {text}");
    assert!(
        text.contains("invalid peer certificate") && text.contains("UnknownIssuer"),
        "says why: {text}"
    );
    // An https:// address without a CA file says what is missing.
    let error = list_stores(&SubscribeOptions::new(&url)).expect_err("no CA file");
    assert!(error.to_string().contains("needs a CA file"), "{error}");
    node.close();
}

#[test]
fn serve_mtls_requires_a_client_certificate() {
    if !tools("serve_mtls_requires_a_client_certificate") {
        return;
    }
    let pki = pki();
    let mut node = Node::in_memory(&tls_config(&pki, true));
    node.commit();
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = grpc_url(&node);

    let with_cert = SubscribeOptions::new(&url)
        .ca_file(&pki.ca)
        .cert_file(&pki.wallet.0)
        .key_file(&pki.wallet.1);
    assert_eq!(
        list_stores(&with_cert).expect("ListStores with the client certificate"),
        ["a", "b", "c"]
    );
    // TLS 1.3: the server refuses after the client's handshake ended, so
    // the first call fails; a subscription ends with the TLS error instead
    // of retrying.
    let mut subscription = ResumableSubscription::new(
        SubscribeOptions::new(&url).ca_file(&pki.ca),
        MemoryCursor::default(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let error = runtime
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(30), subscription.next()).await
        })
        .expect("the subscription ends within 30 s")
        .expect_err("no client certificate");
    let text = error.to_string();
    assert!(matches!(error, ClientError::Tls { .. }), "{error:?}");
    assert!(
        text.contains(&url) && text.contains("CertificateRequired"),
        "names the endpoint and the refusal: {text}"
    );

    let sse = Sse::start(
        &[
            "--cacert",
            path(&pki.ca),
            "--cert",
            path(&pki.wallet.0),
            "--key",
            path(&pki.wallet.1),
        ],
        &sse_url(&node),
    );
    assert_eq!(sse.next(deadline, "the SSE put over mTLS"), "put");
    let mut refused = Sse::start(&["--cacert", path(&pki.ca)], &sse_url(&node));
    assert_ne!(
        refused.exit_code(deadline),
        0,
        "curl without a client certificate must fail"
    );
    assert!(
        refused.events.try_recv().is_err(),
        "no event without a certificate"
    );
    drop(sse);
    node.close();
}

#[test]
fn serve_mtls_certificate_subject_names_the_credential() {
    if !tools("serve_mtls_certificate_subject_names_the_credential") {
        return;
    }
    let pki = pki();
    let mut node = Node::in_memory(&tls_config(&pki, true));
    node.commit();
    let registry = node.manager.as_ref().unwrap().credentials().unwrap();
    let scoped = |store: &str| statestream_access::NewCredential {
        id: String::new(),
        scopes: vec![statestream_access::Scope {
            store: store.into(),
            prefixes: Vec::new(),
        }],
        push: false,
        subscribe_webhooks: false,
        max_streams: None,
        expires_at: None,
        description: String::new(),
    };
    registry
        .create(statestream_access::NewCredential {
            id: "wallet".into(),
            ..scoped("a")
        })
        .unwrap();
    let (_, other) = registry
        .create(statestream_access::NewCredential {
            id: "other".into(),
            ..scoped("b")
        })
        .unwrap();
    let url = grpc_url(&node);
    let with_cert = SubscribeOptions::new(&url)
        .ca_file(&pki.ca)
        .cert_file(&pki.wallet.0)
        .key_file(&pki.wallet.1);
    assert_eq!(
        list_stores(&with_cert).expect("the certificate's CN is the credential"),
        ["a"],
        "the scopes of credential wallet"
    );
    let mismatch = list_stores(&with_cert.clone().token(other.expose()))
        .expect_err("a bearer of another credential than the certificate's");
    let ClientError::Status(status) = mismatch else {
        panic!("not a status: {mismatch:?}")
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    registry.revoke("wallet").unwrap();
    let revoked = list_stores(&with_cert).expect_err("a revoked credential's certificate");
    let ClientError::Status(status) = revoked else {
        panic!("not a status: {revoked:?}")
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    node.close();
}
