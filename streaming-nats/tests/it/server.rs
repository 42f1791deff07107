//! A real `nats-server -js` for the tests: started on a free loopback port
//! with its JetStream store in a temporary directory, killed and reaped on
//! drop (also when a test fails).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use statestream_nats::NatsStreamerConfig;

/// Where `nats-server` is: `$NATS_SERVER`, then `PATH`, then the Debian
/// package's location.
pub fn nats_server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// The server, or `None` after printing a notice when `nats-server` is not
/// installed (the test is then skipped).
pub fn start(test: &str) -> Option<NatsServer> {
    start_with(test, None)
}

/// Like [`start`], with a `max_payload` in the server's configuration.
pub fn start_with(test: &str, max_payload: Option<usize>) -> Option<NatsServer> {
    let extra = max_payload.map(|m| format!("max_payload: {m}\n"));
    start_conf(test, &extra.unwrap_or_default(), None)
}

/// Like [`start`], with `extra` lines in the server's configuration, and
/// the credentials the harness connects with.
pub fn start_conf(test: &str, extra: &str, auth: Option<Auth>) -> Option<NatsServer> {
    start_full(test, extra, auth, true, true)
}

/// A server with `extra` lines in its configuration; `js`: JetStream on;
/// `launch`: started at once (else [`NatsServer::restart`] starts it).
pub fn start_full(
    test: &str,
    extra: &str,
    auth: Option<Auth>,
    js: bool,
    launch: bool,
) -> Option<NatsServer> {
    let binary = nats_server_binary();
    if !statestream_test_support::require(
        test,
        "nats-server",
        binary.is_some(),
        "apt-get install -y nats-server",
    ) {
        return None;
    }
    let binary = binary?;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let conf = dir.path().join("nats.conf");
    let store_dir = dir.path().join("js");
    let mut text = format!("listen: \"127.0.0.1:{port}\"\n");
    if js {
        text.push_str(&format!(
            "jetstream {{\n  store_dir: \"{}\"\n}}\n",
            store_dir.display()
        ));
    }
    text.push_str(extra);
    std::fs::write(&conf, text).expect("write nats.conf");
    let mut server = NatsServer {
        binary,
        child: None,
        port,
        conf,
        dir,
        auth,
        js,
    };
    if launch {
        server.launch();
    }
    Some(server)
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

pub struct NatsServer {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
    dir: tempfile::TempDir,
    auth: Option<Auth>,
    js: bool,
}

/// How the harness authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    Token(String),
    User(String, String),
    /// An nkey seed, and a file that holds it.
    Nkey(String, PathBuf),
    /// TLS, the server's certificate verified with the CA file `ca`, and
    /// a client certificate and key when the server verifies clients.
    Tls {
        ca: PathBuf,
        client: Option<(PathBuf, PathBuf)>,
    },
}

/// The harness's own connection: async-nats on a runtime of its own.
pub struct Js {
    js: jetstream::Context,
    client: async_nats::Client,
    rt: tokio::runtime::Runtime,
}

impl Js {
    pub fn connect(url: &str, auth: Option<&Auth>, timeout: Duration) -> anyhow::Result<Js> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let mut o = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .request_timeout(Some(Duration::from_secs(5)));
        match auth {
            Some(Auth::Token(t)) => o = o.token(t.clone()),
            Some(Auth::User(u, p)) => o = o.user_and_password(u.clone(), p.clone()),
            Some(Auth::Nkey(seed, _)) => o = o.nkey(seed.clone()),
            Some(Auth::Tls { ca, client }) => {
                // The project's verifier, so that a server whose own
                // certificate is the CA file (pinned) is reachable too.
                let provider = statestream_tls::provider();
                let verifier = statestream_tls::CaFileVerifier::new(
                    statestream_tls::read_certificates(ca)?,
                    provider.clone(),
                );
                let auth = match client {
                    Some((cert, key)) => Some((
                        statestream_tls::read_certificates(cert)?,
                        statestream_tls::read_private_key(key)?,
                    )),
                    None => None,
                };
                o = o
                    .require_tls(true)
                    .tls_client_config(statestream_tls::client_config(provider, verifier, auth)?);
            }
            None => {}
        }
        let client = rt.block_on(o.connect(url))?;
        // The context spawns its acknowledgement task on the runtime.
        let js = rt.block_on(async { jetstream::new(client.clone()) });
        Ok(Js { js, client, rt })
    }

    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// The stream's info, or `None` when it does not exist.
    pub fn stream_info(&self, stream: &str) -> anyhow::Result<Option<jetstream::stream::Info>> {
        self.rt.block_on(async {
            match self.js.get_stream(stream).await {
                Ok(mut s) => Ok(Some(s.info().await?.clone())),
                Err(e) => match e.kind() {
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                    {
                        Ok(None)
                    }
                    _ => Err(e.into()),
                },
            }
        })
    }

    pub fn create_stream(
        &self,
        name: &str,
        subjects: Vec<String>,
        replicas: usize,
    ) -> anyhow::Result<()> {
        self.rt.block_on(async {
            self.js
                .create_stream(jetstream::stream::Config {
                    name: name.to_string(),
                    subjects,
                    duplicate_window: Duration::from_secs(120),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await?;
            Ok(())
        })
    }

    /// Publishes one message and waits for its acknowledgement.
    pub fn publish(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> anyhow::Result<jetstream::publish::PublishAck> {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        self.rt.block_on(async {
            let ack = self
                .js
                .publish_with_headers(subject.to_string(), h, payload.to_vec().into())
                .await?
                .await?;
            Ok(ack)
        })
    }

    /// Deletes the message at sequence `seq` from `stream` (JetStream's
    /// `STREAM.MSG.DELETE`); whether it was there.
    pub fn delete_message(&self, stream: &str, seq: u64) -> anyhow::Result<bool> {
        self.rt.block_on(async {
            let s = self.js.get_stream_no_info(stream).await?;
            Ok(s.delete_message(seq).await?)
        })
    }

    /// Removes every message of `stream` below sequence `seq` (as the
    /// stream's limits would).
    pub fn purge_below(&self, stream: &str, seq: u64) -> anyhow::Result<u64> {
        self.rt.block_on(async {
            let s = self.js.get_stream_no_info(stream).await?;
            Ok(s.purge().sequence(seq).await?.purged)
        })
    }

    /// The first message on `subject` at sequence `seq` or after.
    pub fn message(
        &self,
        stream: &str,
        seq: u64,
        subject: &str,
    ) -> anyhow::Result<Option<jetstream::message::StreamMessage>> {
        self.rt.block_on(async {
            let s = self.js.get_stream_no_info(stream).await?;
            match s
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(subject.to_string())
                .send()
                .await
            {
                Ok(m) => Ok(Some(m)),
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            }
        })
    }
}

impl NatsServer {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn launch(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Starts the process without waiting for it to be ready.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the server log");
        let mut cmd = Command::new(&self.binary);
        if self.js {
            cmd.arg("-js");
        }
        let child = cmd
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// Waits until JetStream answers API calls (without JetStream: until
    /// the server accepts a connection).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("nats-server exited with {status}; its log:\n{}", self.log());
            }
            let js = self.js;
            match Js::connect(&self.url(), self.auth.as_ref(), Duration::from_secs(1)).and_then(
                |c| match js {
                    true => c.stream_info("readiness-probe").map(|_| ()),
                    false => Ok(()),
                },
            ) {
                Ok(()) => return,
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "nats-server is not ready after 30 s ({last}); its log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server (SIGKILL: a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, same port and store directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// A connection of the test's own (async-nats on a runtime of its
    /// own), to look at the stream independently of the crate's reader.
    pub fn client(&self) -> Js {
        Js::connect(&self.url(), self.auth.as_ref(), Duration::from_secs(5))
            .expect("connect to the test server")
    }

    /// The options a reader of stream `stream` on `<subject>.blocks` needs
    /// (url and credentials).
    pub fn reader_config(&self, stream: &str, subject: &str) -> NatsStreamerConfig {
        let mut c = NatsStreamerConfig {
            url: self.url(),
            stream: stream.to_string(),
            subject: subject.to_string(),
            ..NatsStreamerConfig::default()
        };
        match &self.auth {
            Some(Auth::Token(t)) => c.token = Some(t.clone()),
            Some(Auth::User(u, p)) => {
                c.user = Some(u.clone());
                c.password = Some(p.clone());
            }
            Some(Auth::Nkey(_, path)) => c.nkey_seed_file = Some(path.display().to_string()),
            Some(Auth::Tls { ca, client }) => {
                c.url = self.url().replace("nats://", "tls://");
                c.tls_ca_file = Some(ca.display().to_string());
                if let Some((cert, key)) = client {
                    c.tls_cert_file = Some(cert.display().to_string());
                    c.tls_key_file = Some(key.display().to_string());
                }
            }
            None => {}
        }
        c
    }

    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
