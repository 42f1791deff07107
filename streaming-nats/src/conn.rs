//! The connection to NATS, on the official `async-nats` client, and the
//! bridge from synchronous code to it.
//!
//! Each streamer (and each reader) owns a small tokio runtime: one worker
//! thread, named after the streamer, on which the client's connection task
//! runs (it answers the server's PINGs, sends its own, and reconnects in
//! the background). The synchronous hooks drive it with `block_on` on the
//! thread that calls them: the streamer's delivery worker for `delivery =
//! "async"`, the committing thread for `delivery = "sync"` (which therefore
//! waits for the server, as it always did). Nothing async leaves this
//! crate.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use statestream_core::Shutdown;
use tokio::runtime::Runtime;
use tracing::{debug, warn};

use crate::error::{NatsError, Result};
use crate::url::{ServerUrl, redact_url};

/// JetStream's error code for "stream not found".
const ERR_STREAM_NOT_FOUND: u32 = 10059;

/// How often a wait for the server looks at the shutdown signal and the
/// connection's state.
const POLL: Duration = Duration::from_millis(10);

/// Everything needed to connect, resolved from the options (paths made
/// absolute against the node's home).
#[derive(Clone)]
pub(crate) struct Settings {
    /// The `url` option as written, shown without credentials.
    pub(crate) url: String,
    pub(crate) servers: Vec<ServerUrl>,
    pub(crate) token: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) creds_file: Option<PathBuf>,
    pub(crate) nkey_seed_file: Option<PathBuf>,
    pub(crate) tls_ca_file: Option<PathBuf>,
    pub(crate) tls_cert_file: Option<PathBuf>,
    pub(crate) tls_key_file: Option<PathBuf>,
    pub(crate) tls_required: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    /// The client name the server shows in its monitoring.
    pub(crate) name: String,
}

impl Settings {
    /// The url without credentials.
    pub(crate) fn display_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Which credentials are used, for messages (never the secret).
    fn auth_method(&self) -> &'static str {
        if self.creds_file.is_some() {
            "credentials file"
        } else if self.nkey_seed_file.is_some() {
            "nkey"
        } else if self.token.is_some() || self.servers.iter().any(|s| s.token.is_some()) {
            "token"
        } else if self.user.is_some() || self.servers.iter().any(|s| s.user.is_some()) {
            "user and password"
        } else if self.tls_cert_file.is_some() {
            "client certificate"
        } else {
            "anonymous connection"
        }
    }

    fn tls(&self) -> bool {
        self.tls_required || self.servers.iter().any(|s| s.tls)
    }
}

/// `path` as given, or relative to `home`.
pub(crate) fn resolve(home: Option<&Path>, path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    match home {
        Some(h) if p.is_relative() => h.join(p),
        _ => p,
    }
}

/// The runtime of one streamer or reader: one worker thread named
/// `nats-<name>`, with timers and I/O.
pub(crate) fn runtime(name: &str) -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("nats-{name}"))
        .enable_all()
        .build()
        .map_err(NatsError::Runtime)
}

/// Runs `fut` to completion on `rt` from synchronous code. When the caller
/// is itself on a tokio runtime (an async application calling `commit`),
/// a nested `block_on` would panic, so the future is driven from a scoped
/// helper thread instead.
pub(crate) fn block_on<F>(rt: &Runtime, fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return rt.block_on(fut);
    }
    std::thread::scope(|s| {
        match s.spawn(|| rt.block_on(fut)).join() {
            Ok(out) => out,
            // The future itself panicked: pass the panic on unchanged.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Resolves when `shutdown` is triggered.
async fn shutdown_signal(shutdown: Shutdown) {
    while !shutdown.is_triggered() {
        tokio::time::sleep(POLL * 5).await;
    }
}

/// An open connection and its JetStream context.
pub(crate) struct Connection {
    client: async_nats::Client,
    js: jetstream::Context,
    url: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// The client's last reported error, for messages while reconnecting.
    last_error: Arc<Mutex<Option<String>>>,
}

impl Connection {
    /// Connects to the first server of the list that answers (in the
    /// configured order; servers the cluster announces are added for
    /// reconnections). A shutdown ends the attempt.
    pub(crate) fn open(rt: &Runtime, s: &Settings, shutdown: &Shutdown) -> Result<Connection> {
        let shutdown = shutdown.clone();
        block_on(rt, async move {
            tokio::select! {
                c = Connection::open_async(s) => c,
                () = shutdown_signal(shutdown) => Err(NatsError::ShuttingDown),
            }
        })
    }

    async fn open_async(s: &Settings) -> Result<Connection> {
        let url = s.display_url();
        let last_error = Arc::new(Mutex::new(None::<String>));
        let events = last_error.clone();
        let who = url.clone();
        let mut o = async_nats::ConnectOptions::new()
            .name(&s.name)
            .connection_timeout(s.connect_timeout)
            .request_timeout(Some(s.request_timeout))
            .retain_servers_order()
            // Reconnect soon after a server comes back: 0, 10, 20, 40 ms …
            // up to one second between attempts.
            .reconnect_delay_callback(|attempts| {
                let exp = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
                Duration::from_millis(5u64.saturating_mul(2u64.saturating_pow(exp.min(20))))
                    .min(Duration::from_secs(1))
            })
            .event_callback(move |event| {
                let events = events.clone();
                let who = who.clone();
                async move {
                    match &event {
                        async_nats::Event::Connected => {
                            debug!(server = %who, "NATS connection (re)established");
                        }
                        async_nats::Event::Disconnected => {
                            warn!(server = %who, "NATS connection lost; reconnecting");
                        }
                        async_nats::Event::ClientError(e) => {
                            *events.lock().unwrap_or_else(PoisonError::into_inner) =
                                Some(e.to_string());
                            debug!(server = %who, error = %e, "NATS client error");
                        }
                        async_nats::Event::ServerError(e) => {
                            *events.lock().unwrap_or_else(PoisonError::into_inner) =
                                Some(e.to_string());
                            warn!(server = %who, error = %e, "NATS server error");
                        }
                        other => debug!(server = %who, event = %other, "NATS event"),
                    }
                }
            });
        if s.tls() {
            o = o.require_tls(true);
        }
        let client_auth = match (&s.tls_cert_file, &s.tls_key_file) {
            (Some(cert), Some(key)) => {
                check_file("tls_cert_file", cert)?;
                check_file("tls_key_file", key)?;
                Some((cert, key))
            }
            _ => None,
        };
        if let Some(ca) = &s.tls_ca_file {
            // The project's verifier: a certificate that chains to the
            // file's CAs, or one listed in the file itself (pinned), which
            // async-nats' own webpki check refuses.
            check_file("tls_ca_file", ca)?;
            o = o.tls_client_config(tls_config(ca, client_auth)?);
        } else if let Some((cert, key)) = client_auth {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        // Credentials: the options first, then those written in a URL.
        let url_token = s.servers.iter().find_map(|a| a.token.clone());
        let url_user = s
            .servers
            .iter()
            .find_map(|a| Some((a.user.clone()?, a.password.clone().unwrap_or_default())));
        if let Some(path) = &s.creds_file {
            let text = read_secret_file("creds_file", path)?;
            o = o.credentials(&text).map_err(|e| NatsError::File {
                key: "creds_file",
                path: path.clone(),
                reason: format!("not a NATS credentials file ({})", e.kind()),
            })?;
        } else if let Some(path) = &s.nkey_seed_file {
            let seed = read_secret_file("nkey_seed_file", path)?;
            let seed = seed
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with('S') && !l.is_empty())
                .ok_or_else(|| NatsError::File {
                    key: "nkey_seed_file",
                    path: path.clone(),
                    reason: "holds no nkey seed (a line starting with 'S')".into(),
                })?
                .to_string();
            o = o.nkey(seed);
        } else if let Some(t) = s.token.clone().or(url_token) {
            o = o.token(t);
        } else if let (Some(u), Some(p)) = (&s.user, &s.password) {
            o = o.user_and_password(u.clone(), p.clone());
        } else if let Some((u, p)) = url_user {
            o = o.user_and_password(u, p);
        }
        let addrs = s
            .servers
            .iter()
            .map(|a| {
                a.address()
                    .parse::<async_nats::ServerAddr>()
                    .map_err(|e| NatsError::BadUrl {
                        url: a.address(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let client = o.connect(addrs).await.map_err(|e| {
            use async_nats::ConnectErrorKind as K;
            match e.kind() {
                K::TimedOut => NatsError::Timeout {
                    url: url.clone(),
                    what: "the server's INFO".into(),
                    timeout: s.connect_timeout,
                },
                K::AuthorizationViolation => NatsError::Unreachable {
                    url: url.clone(),
                    reason: format!(
                        "Authorization Violation: the server refused the {}",
                        s.auth_method()
                    ),
                },
                _ => NatsError::Unreachable {
                    url: url.clone(),
                    reason: e.to_string(),
                },
            }
        })?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(s.request_timeout);
        Ok(Connection {
            client,
            js,
            url,
            connect_timeout: s.connect_timeout,
            request_timeout: s.request_timeout,
            last_error,
        })
    }

    /// The configured url, without credentials.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// A fresh inbox subject, for a consumer to deliver to.
    pub(crate) fn new_inbox(&self) -> String {
        self.client.new_inbox()
    }

    /// The largest message (headers and payload) the server accepts.
    pub(crate) fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Waits until the client has reconnected (it does so in the
    /// background), at most the connect timeout; the shutdown signal ends
    /// the wait at once.
    pub(crate) fn wait_connected(&self, shutdown: &Shutdown) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.is_connected() {
                return Ok(());
            }
            if start.elapsed() >= self.connect_timeout {
                return Err(NatsError::Disconnected {
                    url: self.url.clone(),
                    waited: self.connect_timeout,
                    last_error: self
                        .last_error
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone(),
                });
            }
            if shutdown.wait(POLL) {
                return Err(NatsError::ShuttingDown);
            }
        }
    }

    /// One JetStream API call: `body` to `$JS.API.<api>`, the JSON answer
    /// decoded as `T`, or its `error` as [`NatsError::JetStream`].
    pub(crate) async fn js_api<T: DeserializeOwned>(
        &self,
        api: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        use async_nats::jetstream::context::RequestErrorKind as K;
        let answer: serde_json::Value =
            self.js
                .request(api.to_string(), body)
                .await
                .map_err(|e| match e.kind() {
                    K::NoResponders => NatsError::NoResponders {
                        url: self.url.clone(),
                        subject: format!("$JS.API.{api}"),
                        hint: "JetStream is not enabled on this server (start it with -js)".into(),
                    },
                    K::TimedOut => NatsError::Timeout {
                        url: self.url.clone(),
                        what: format!("$JS.API.{api}"),
                        timeout: self.request_timeout,
                    },
                    _ => NatsError::Request {
                        url: self.url.clone(),
                        what: format!("$JS.API.{api}"),
                        reason: e.to_string(),
                    },
                })?;
        decode_answer(&format!("$JS.API.{api}"), answer)
    }

    /// The stream's info, or `None` when it does not exist.
    pub(crate) async fn stream_info(&self, stream: &str) -> Result<Option<StreamInfo>> {
        match self
            .js_api(&format!("STREAM.INFO.{stream}"), &serde_json::Value::Null)
            .await
        {
            Ok(info) => Ok(Some(info)),
            Err(NatsError::JetStream { err_code, .. }) if err_code == ERR_STREAM_NOT_FOUND => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a stream with file storage, limits retention and the given
    /// subjects and duplicate window.
    pub(crate) async fn create_stream(&self, spec: &StreamSpec) -> Result<StreamInfo> {
        let body = serde_json::json!({
            "name": spec.name,
            "subjects": spec.subjects,
            "storage": "file",
            "retention": "limits",
            "discard": "old",
            "num_replicas": spec.replicas.max(1),
            "duplicate_window": u64::try_from(spec.duplicate_window.as_nanos()).unwrap_or(u64::MAX),
        });
        self.js_api(&format!("STREAM.CREATE.{}", spec.name), &body)
            .await
    }

    /// The last message stored on `subject` in `stream`, if any.
    pub(crate) async fn last_message(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<Option<jetstream::message::StreamMessage>> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind as K;
        let s = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| self.request_failed(&format!("stream {stream:?}"), &e))?;
        match s.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(Some(m)),
            Err(e) => match e.kind() {
                K::NoMessageFound => Ok(None),
                K::JetStream(js) => Err(jetstream_error(
                    &format!("$JS.API.STREAM.MSG.GET.{stream}"),
                    &js,
                )),
                _ => Err(self.request_failed(
                    &format!("reading the last message of stream {stream:?}"),
                    &e,
                )),
            },
        }
    }

    /// The message at sequence `seq` of `stream`, or `None` when there is
    /// none (deleted, or removed by the stream's limits).
    pub(crate) async fn message_at(
        &self,
        stream: &str,
        seq: u64,
    ) -> Result<Option<jetstream::message::StreamMessage>> {
        use async_nats::jetstream::stream::RawMessageErrorKind as K;
        let s = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| self.request_failed(&format!("stream {stream:?}"), &e))?;
        match s.get_raw_message(seq).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == K::NoMessageFound => Ok(None),
            Err(e) => {
                Err(self.request_failed(&format!("reading message {seq} of stream {stream:?}"), &e))
            }
        }
    }

    /// The first message on `subject` of `stream` at sequence `seq` or
    /// after, or `None` when there is none.
    pub(crate) async fn next_message(
        &self,
        stream: &str,
        seq: u64,
        subject: &str,
    ) -> Result<Option<jetstream::message::StreamMessage>> {
        use async_nats::jetstream::stream::RawMessageErrorKind as K;
        let s = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| self.request_failed(&format!("stream {stream:?}"), &e))?;
        match s
            .raw_message_builder()
            .sequence(seq)
            .next_by_subject(subject.to_string())
            .send()
            .await
        {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == K::NoMessageFound => Ok(None),
            Err(e) => Err(self.request_failed(
                &format!("reading the message at or after {seq} of stream {stream:?}"),
                &e,
            )),
        }
    }

    pub(crate) fn request_failed(&self, what: &str, e: &dyn std::fmt::Display) -> NatsError {
        NatsError::Request {
            url: self.url.clone(),
            what: what.to_string(),
            reason: e.to_string(),
        }
    }
}

/// A JetStream API error as ours.
pub(crate) fn jetstream_error(api: &str, e: &async_nats::jetstream::Error) -> NatsError {
    NatsError::JetStream {
        api: api.to_string(),
        code: u32::try_from(e.code()).unwrap_or(u32::MAX),
        err_code: u32::try_from(e.error_code().0).unwrap_or(u32::MAX),
        description: e.to_string(),
    }
}

/// The TLS configuration with `tls_ca_file`: the server's certificate
/// verified by [`statestream_tls::CaFileVerifier`], and the client
/// certificate when there is one.
fn tls_config(
    ca: &Path,
    client_auth: Option<(&PathBuf, &PathBuf)>,
) -> Result<async_nats::rustls::ClientConfig> {
    fn file(key: &'static str, path: &Path) -> impl FnOnce(statestream_tls::TlsError) -> NatsError {
        let path = path.to_path_buf();
        move |e| NatsError::File {
            key,
            path,
            reason: e.to_string(),
        }
    }
    let provider = statestream_tls::provider();
    let roots = statestream_tls::read_certificates(ca).map_err(file("tls_ca_file", ca))?;
    let verifier = statestream_tls::CaFileVerifier::new(roots, provider.clone());
    let cert_path = client_auth.map(|(cert, _)| cert.clone());
    let client_auth = match client_auth {
        Some((cert, key)) => Some((
            statestream_tls::read_certificates(cert).map_err(file("tls_cert_file", cert))?,
            statestream_tls::read_private_key(key).map_err(file("tls_key_file", key))?,
        )),
        None => None,
    };
    // Only a client key that does not match its certificate fails here.
    statestream_tls::client_config(provider, verifier, client_auth).map_err(|e| match &cert_path {
        Some(cert) => file("tls_cert_file", cert)(e),
        None => file("tls_ca_file", ca)(e),
    })
}

/// Fails early, naming the option, when a file cannot be read.
fn check_file(key: &'static str, path: &Path) -> Result<()> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| NatsError::File {
            key,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Reads a file of secrets; its content never appears in an error.
fn read_secret_file(key: &'static str, path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| NatsError::File {
        key,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// What `$JS.API.STREAM.INFO.<stream>` tells.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct StreamInfo {
    /// The stream's configuration (the parts statestream looks at).
    pub(crate) config: StreamConfigInfo,
    /// What it holds.
    #[serde(default)]
    pub(crate) state: StreamState,
}

/// Part of a stream's state.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct StreamState {
    /// The sequence of its last message (0: none ever).
    #[serde(default)]
    pub(crate) last_seq: u64,
}

/// Part of a stream's configuration.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct StreamConfigInfo {
    /// The subjects it captures.
    #[serde(default)]
    pub(crate) subjects: Vec<String>,
    /// The largest message the stream accepts (-1: no limit but the
    /// server's `max_payload`).
    #[serde(default = "no_limit")]
    pub(crate) max_msg_size: i64,
}

fn no_limit() -> i64 {
    -1
}

/// How a stream is created.
#[derive(Debug, Clone)]
pub(crate) struct StreamSpec {
    pub(crate) name: String,
    pub(crate) subjects: Vec<String>,
    pub(crate) duplicate_window: Duration,
    pub(crate) replicas: u32,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

/// Decodes a JSON answer: its `error` member, or the body as `T`.
pub(crate) fn decode_answer<T: DeserializeOwned>(
    what: &str,
    value: serde_json::Value,
) -> Result<T> {
    let bad = |reason: String| NatsError::BadAnswer {
        what: what.to_string(),
        reason,
    };
    if let Some(err) = value.get("error") {
        let e: ApiError =
            serde_json::from_value(err.clone()).map_err(|e| bad(format!("bad error: {e}")))?;
        return Err(NatsError::JetStream {
            api: what.to_string(),
            code: e.code,
            err_code: e.err_code,
            description: e.description,
        });
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode() {
        let info: StreamInfo = decode_answer(
            "i",
            serde_json::json!({"config": {"subjects": ["a.b"]}, "state": {}}),
        )
        .unwrap();
        assert_eq!(info.config.subjects, vec!["a.b".to_string()]);
        assert_eq!(info.config.max_msg_size, -1);
        let err = decode_answer::<StreamInfo>(
            "p",
            serde_json::json!({"error":{"code":404,"err_code":10059,"description":"stream not found"}}),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            NatsError::JetStream {
                err_code: 10059,
                ..
            }
        ));
    }

    #[test]
    fn block_on_works_inside_a_runtime() {
        let rt = runtime("t").unwrap();
        let outer = runtime("outer").unwrap();
        let v = outer.block_on(async { block_on(&rt, async { 7 }) });
        assert_eq!(v, 7);
    }
}
