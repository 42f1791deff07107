//! A small synchronous NATS client over `std::net::TcpStream`: the text
//! protocol (INFO, CONNECT, PUB/HPUB, SUB, MSG/HMSG, PING/PONG, +OK/-ERR)
//! and request/reply on one inbox subscription. Enough for JetStream's API
//! and acknowledged publishing; no async runtime, no background thread.
//!
//! A client answers the server's PINGs only while it waits for a reply, so a
//! connection left idle for minutes may be closed by the server; callers
//! reconnect on the next error (the streamer does so once, at once, when a
//! reused connection turns out to be dead).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{NatsError, Result};

/// The port of a `nats://` address without one.
pub const DEFAULT_PORT: u16 = 4222;
/// The longest control line accepted from the server (INFO lines of big
/// clusters are the longest).
const MAX_LINE: u64 = 1024 * 1024;
/// The longest message body (headers + payload) accepted from the server:
/// a server's `max_payload` is at most 64 MiB, and a MSG.GET reply carries
/// such a message in base64 (4/3 of it) inside JSON.
const MAX_MESSAGE: usize = 128 * 1024 * 1024;
/// `max_payload` when the server does not announce one (its default).
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// How to reach and authenticate to a NATS server.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Server addresses (`nats://host:port`, `host:port`, optionally with
    /// `user:password@` or `token@`), tried in order.
    pub servers: Vec<String>,
    /// Token authentication.
    pub token: Option<String>,
    /// User/password authentication.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
    /// Timeout of the TCP connection and of the handshake.
    pub connect_timeout: Duration,
    /// Timeout of each request (a JetStream API call, a publish awaiting
    /// its acknowledgement).
    pub request_timeout: Duration,
    /// The client name the server shows in its monitoring.
    pub name: String,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("ConnectOptions")
            .field(
                "servers",
                &self
                    .servers
                    .iter()
                    .map(|s| redact_url(s))
                    .collect::<Vec<_>>(),
            )
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("name", &self.name)
            .finish()
    }
}

impl ConnectOptions {
    /// Options for `url` (one address, or several separated by commas),
    /// without credentials, with 5 s timeouts.
    pub fn new(url: &str) -> ConnectOptions {
        ConnectOptions {
            servers: url
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            token: None,
            user: None,
            password: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            name: "statestream".to_string(),
        }
    }

    /// Checks every address.
    pub fn validate(&self) -> Result<()> {
        if self.servers.is_empty() {
            return Err(NatsError::BadUrl {
                url: String::new(),
                reason: "no server address".into(),
            });
        }
        for s in &self.servers {
            ServerAddr::parse(s)?;
        }
        Ok(())
    }
}

/// One parsed server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerAddr {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) token: Option<String>,
}

impl ServerAddr {
    pub(crate) fn parse(url: &str) -> Result<ServerAddr> {
        let bad = |reason: &str| NatsError::BadUrl {
            url: redact_url(url),
            reason: reason.to_string(),
        };
        let rest = match url.split_once("://") {
            Some(("nats" | "tcp", rest)) => rest,
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "scheme {scheme:?} is not supported (use nats://; TLS is not supported)"
                )));
            }
            None => url,
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (mut user, mut password, mut token) = (None, None, None);
        if let Some(a) = auth {
            match a.split_once(':') {
                Some((u, p)) => {
                    user = Some(u.to_string());
                    password = Some(p.to_string());
                }
                None => token = Some(a.to_string()),
            }
        }
        if hostport.contains('/') {
            return Err(bad("a path is not allowed"));
        }
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            // [ipv6]:port
            let (h, p) = h.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match p.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None if p.is_empty() => DEFAULT_PORT,
                None => return Err(bad("bad port")),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                None => (hostport.to_string(), DEFAULT_PORT),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(ServerAddr {
            host,
            port,
            user,
            password,
            token,
        })
    }

    fn display(&self) -> String {
        if self.host.contains(':') {
            format!("nats://[{}]:{}", self.host, self.port)
        } else {
            format!("nats://{}:{}", self.host, self.port)
        }
    }
}

/// `url` without its credentials, for messages and logs.
pub(crate) fn redact_url(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((before, host)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://<redacted>@{host}"),
            None => format!("<redacted>@{host}"),
        },
        None => url.to_string(),
    }
}

/// What the server announces in its INFO line.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct ServerInfo {
    /// The server's unique id.
    #[serde(default)]
    pub server_id: String,
    /// Its version.
    #[serde(default)]
    pub version: String,
    /// The largest message (headers + payload) a client may publish.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    /// Whether it supports headers (NATS 2.2+).
    #[serde(default)]
    pub headers: bool,
    /// Whether JetStream is enabled.
    #[serde(default)]
    pub jetstream: bool,
    /// Whether it requires authentication.
    #[serde(default)]
    pub auth_required: bool,
    /// Whether it requires TLS (not supported by this client).
    #[serde(default)]
    pub tls_required: bool,
}

fn default_max_payload() -> usize {
    DEFAULT_MAX_PAYLOAD
}

/// A message received: a reply to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subject it was delivered on.
    pub subject: String,
    /// The status code of a header-only status message (503: no
    /// responders, 408: request timeout), when there is one.
    pub status: Option<u16>,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Message {
    /// The first value of header `name` (compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A header block: the status code of a status message, and the headers.
pub(crate) type Headers = (Option<u16>, Vec<(String, String)>);

/// Parses a header block (`NATS/1.0[ status[ description]]\r\nKey: Value\r\n...\r\n`).
pub(crate) fn parse_headers(block: &[u8]) -> std::result::Result<Headers, String> {
    let text = std::str::from_utf8(block).map_err(|_| "headers are not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let rest = first
        .strip_prefix("NATS/1.0")
        .ok_or_else(|| format!("header block starts with {first:?}, not NATS/1.0"))?;
    let status = rest
        .split_whitespace()
        .next()
        .map(|s| s.parse::<u16>().map_err(|_| format!("bad status {s:?}")))
        .transpose()?;
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("header line {line:?} has no ':'"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok((status, headers))
}

/// Encodes a header block for HPUB.
pub(crate) fn encode_headers(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = b"NATS/1.0\r\n".to_vec();
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A unique-enough token for inbox subjects: randomly seeded hashers mixed
/// with the time, the process id and a counter.
fn nuid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = String::new();
    for i in 0..2u64 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        h.write_u64(i);
        if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(d.as_nanos());
        }
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// The byte stream under a [`Client`]: a TCP connection, or an in-memory
/// server script (tests and the `fuzzing` feature, [`connect_script`]).
trait Transport: Read + Write + Send {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl Transport for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

/// A connection to one NATS server.
pub struct Client {
    reader: BufReader<Box<dyn Transport>>,
    writer: Box<dyn Transport>,
    url: String,
    info: ServerInfo,
    inbox: String,
    next_reply: u64,
    request_timeout: Duration,
    /// The timeout of the wait in progress (for its error message).
    waiting: Duration,
    /// Set after an I/O error, a timeout or a protocol error: the stream's
    /// position is unknown, so the connection is not used again.
    broken: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .field("server_version", &self.info.version)
            .field("max_payload", &self.info.max_payload)
            .field("broken", &self.broken)
            .finish()
    }
}

impl Client {
    /// Connects to the first server of `opts.servers` that accepts, and
    /// authenticates. The error names the last server tried.
    pub fn connect(opts: &ConnectOptions) -> Result<Client> {
        opts.validate()?;
        let mut last = None;
        for s in &opts.servers {
            let addr = ServerAddr::parse(s)?;
            match Client::connect_one(&addr, opts) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::debug!(server = %addr.display(), error = %e, "cannot connect");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| NatsError::BadUrl {
            url: String::new(),
            reason: "no server address".into(),
        }))
    }

    fn connect_one(addr: &ServerAddr, opts: &ConnectOptions) -> Result<Client> {
        let url = addr.display();
        let conn_err = |source| NatsError::Connect {
            url: url.clone(),
            source,
        };
        let addrs: Vec<SocketAddr> = (addr.host.as_str(), addr.port)
            .to_socket_addrs()
            .map_err(conn_err)?
            .collect();
        let mut stream = None;
        let mut last_err = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for a in &addrs {
            match TcpStream::connect_timeout(a, opts.connect_timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_err = e,
            }
        }
        let stream = stream.ok_or_else(|| conn_err(last_err))?;
        stream.set_nodelay(true).map_err(conn_err)?;
        stream
            .set_write_timeout(Some(opts.connect_timeout))
            .map_err(conn_err)?;
        let writer = stream.try_clone().map_err(conn_err)?;
        Client::handshake(
            Box::new(stream),
            Box::new(writer),
            url,
            format!("_INBOX.{}", nuid()),
            addr,
            opts,
        )
    }

    /// Reads the server's INFO from `reader`, then sends CONNECT (with
    /// `addr`'s or `opts`' credentials) and subscribes to `inbox`.
    fn handshake(
        reader: Box<dyn Transport>,
        writer: Box<dyn Transport>,
        url: String,
        inbox: String,
        addr: &ServerAddr,
        opts: &ConnectOptions,
    ) -> Result<Client> {
        let mut client = Client {
            reader: BufReader::with_capacity(64 * 1024, reader),
            writer,
            url: url.clone(),
            info: ServerInfo {
                server_id: String::new(),
                version: String::new(),
                max_payload: DEFAULT_MAX_PAYLOAD,
                headers: false,
                jetstream: false,
                auth_required: false,
                tls_required: false,
            },
            inbox,
            next_reply: 0,
            request_timeout: opts.request_timeout,
            waiting: opts.connect_timeout,
            broken: false,
        };
        let deadline = Instant::now() + opts.connect_timeout;
        let line = client.read_line(deadline, "the server's INFO")?;
        let json = line
            .strip_prefix("INFO")
            .ok_or_else(|| NatsError::Protocol {
                url: url.clone(),
                message: format!("expected INFO, got {:?}", truncate(&line)),
            })?;
        client.info = serde_json::from_str(json.trim()).map_err(|e| NatsError::Protocol {
            url: url.clone(),
            message: format!("INFO does not decode: {e}"),
        })?;
        if client.info.tls_required {
            return Err(NatsError::Unsupported {
                url,
                message: "the server requires TLS, which this client does not support".into(),
            });
        }
        if !client.info.headers {
            return Err(NatsError::Unsupported {
                url,
                message:
                    "the server does not support message headers (NATS 2.2 or later is needed)"
                        .into(),
            });
        }

        let mut connect = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "tls_required": false,
            "name": opts.name,
            "lang": "rust-statestream",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "headers": true,
            "no_responders": true,
        });
        let token = addr.token.as_ref().or(opts.token.as_ref());
        let user = addr.user.as_ref().or(opts.user.as_ref());
        let password = addr.password.as_ref().or(opts.password.as_ref());
        if let Some(t) = token {
            connect["auth_token"] = t.clone().into();
        }
        if let Some(u) = user {
            connect["user"] = u.clone().into();
        }
        if let Some(p) = password {
            connect["pass"] = p.clone().into();
        }
        let mut out = format!("CONNECT {connect}\r\nPING\r\n").into_bytes();
        out.extend_from_slice(format!("SUB {}.* 1\r\n", client.inbox).as_bytes());
        client.write(&out)?;
        // The PONG answers our PING: the server accepted CONNECT (a bad
        // password gets -ERR instead).
        loop {
            let line = client.read_line(deadline, "the CONNECT handshake")?;
            match client.control(&line)? {
                Control::Pong => break,
                Control::Other => {}
                Control::Msg { .. } => {
                    return Err(client.protocol(format!(
                        "unexpected message during the handshake: {:?}",
                        truncate(&line)
                    )));
                }
            }
        }
        tracing::debug!(server = %client.url, version = %client.info.version,
            max_payload = client.info.max_payload, jetstream = client.info.jetstream, "connected");
        Ok(client)
    }

    /// The address of the server this client is connected to (without
    /// credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's INFO.
    pub fn server_info(&self) -> &ServerInfo {
        &self.info
    }

    /// The largest message (headers + payload) the server accepts.
    pub fn max_payload(&self) -> usize {
        self.info.max_payload
    }

    /// Whether an earlier error left the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Publishes `payload` (with `headers` when not empty) on `subject`
    /// with a fresh reply subject, and waits for the reply.
    ///
    /// A status reply (no responders: 503) is returned as a [`Message`]
    /// with [`Message::status`] set; the caller decides what it means.
    pub fn request(
        &mut self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<Message> {
        if self.broken {
            return Err(NatsError::Io {
                url: self.url.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the connection failed earlier",
                ),
            });
        }
        let len = payload.len()
            + if headers.is_empty() {
                0
            } else {
                encode_headers(headers).len()
            };
        if len > self.info.max_payload {
            return Err(NatsError::Server {
                url: self.url.clone(),
                message: format!(
                    "a message of {len} bytes on {subject} exceeds the server's max_payload of {} bytes",
                    self.info.max_payload
                ),
            });
        }
        self.next_reply += 1;
        let reply = format!("{}.{}", self.inbox, self.next_reply);
        let mut out = Vec::with_capacity(len + 128);
        if headers.is_empty() {
            out.extend_from_slice(
                format!("PUB {subject} {reply} {}\r\n", payload.len()).as_bytes(),
            );
        } else {
            let h = encode_headers(headers);
            out.extend_from_slice(
                format!(
                    "HPUB {subject} {reply} {} {}\r\n",
                    h.len(),
                    h.len() + payload.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(&h);
        }
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.write(&out)?;
        let deadline = Instant::now() + self.request_timeout;
        self.waiting = self.request_timeout;
        let what = format!("the request on {subject}");
        loop {
            let line = self.read_line(deadline, &what)?;
            if let Control::Msg {
                subject: s,
                header_len,
                total_len,
            } = self.control(&line)?
            {
                let msg = self.read_msg_body(s, header_len, total_len, deadline, &what)?;
                // Replies to earlier requests that timed out are dropped.
                if msg.subject == reply {
                    return Ok(msg);
                }
                tracing::debug!(subject = %msg.subject, "dropping a late reply");
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let r = self
            .writer
            .write_all(bytes)
            .and_then(|()| self.writer.flush());
        r.map_err(|source| {
            self.broken = true;
            NatsError::Io {
                url: self.url.clone(),
                source,
            }
        })
    }

    fn protocol(&mut self, message: String) -> NatsError {
        self.broken = true;
        NatsError::Protocol {
            url: self.url.clone(),
            message,
        }
    }

    fn io_error(
        &mut self,
        source: std::io::Error,
        deadline_what: &str,
        timeout: Duration,
    ) -> NatsError {
        self.broken = true;
        match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => NatsError::Timeout {
                url: self.url.clone(),
                what: deadline_what.to_string(),
                timeout,
            },
            _ => NatsError::Io {
                url: self.url.clone(),
                source,
            },
        }
    }

    fn set_deadline(&mut self, deadline: Instant, what: &str) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.broken = true;
            return Err(NatsError::Timeout {
                url: self.url.clone(),
                what: what.to_string(),
                timeout: self.waiting,
            });
        }
        let r = self.reader.get_ref().set_read_timeout(Some(left));
        r.map_err(|e| self.io_error(e, what, self.waiting))
    }

    /// Reads one control line (without its CRLF).
    fn read_line(&mut self, deadline: Instant, what: &str) -> Result<String> {
        self.set_deadline(deadline, what)?;
        let mut buf = Vec::new();
        let r = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf);
        match r {
            Ok(0) => {
                self.broken = true;
                Err(NatsError::Io {
                    url: self.url.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ),
                })
            }
            Ok(_) if !buf.ends_with(b"\n") => {
                Err(self.protocol("a control line is too long or cut".into()))
            }
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                String::from_utf8(buf)
                    .map_err(|_| self.protocol("a control line is not UTF-8".into()))
            }
            Err(e) => Err(self.io_error(e, what, self.waiting)),
        }
    }

    /// Handles one control line: answers PING, reports -ERR, notes INFO
    /// updates, and parses MSG/HMSG heads.
    fn control(&mut self, line: &str) -> Result<Control> {
        let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
        match op.to_ascii_uppercase().as_str() {
            "PING" => {
                self.write(b"PONG\r\n")?;
                Ok(Control::Other)
            }
            "PONG" => Ok(Control::Pong),
            "+OK" => Ok(Control::Other),
            "-ERR" => {
                self.broken = true;
                Err(NatsError::Server {
                    url: self.url.clone(),
                    message: rest.trim().trim_matches('\'').to_string(),
                })
            }
            "INFO" => {
                // Later INFOs (cluster changes) may update max_payload.
                if let Ok(info) = serde_json::from_str::<ServerInfo>(rest.trim()) {
                    self.info = info;
                }
                Ok(Control::Other)
            }
            "MSG" | "HMSG" => {
                let args: Vec<&str> = rest.split_whitespace().collect();
                let bad = || format!("bad {op} line {:?}", truncate(line));
                let num = |s: &str| s.parse::<usize>().map_err(|_| bad());
                let parsed = if op.eq_ignore_ascii_case("MSG") {
                    // MSG <subject> <sid> [reply] <len>
                    match args.len() {
                        3 | 4 => num(args[args.len() - 1]).map(|n| (0, n)),
                        _ => Err(bad()),
                    }
                } else {
                    // HMSG <subject> <sid> [reply] <hdr len> <total len>
                    match args.len() {
                        4 | 5 => num(args[args.len() - 2])
                            .and_then(|h| num(args[args.len() - 1]).map(|t| (h, t))),
                        _ => Err(bad()),
                    }
                };
                match parsed {
                    Ok((_, total_len)) if total_len > MAX_MESSAGE => Err(self.protocol(format!(
                        "{} announces {total_len} bytes, more than the limit of {MAX_MESSAGE}",
                        truncate(line)
                    ))),
                    Ok((header_len, total_len)) if header_len <= total_len => Ok(Control::Msg {
                        subject: args[0].to_string(),
                        header_len,
                        total_len,
                    }),
                    Ok(_) => Err(self.protocol(bad())),
                    Err(m) => Err(self.protocol(m)),
                }
            }
            _ => Err(self.protocol(format!("unexpected line {:?}", truncate(line)))),
        }
    }

    fn read_msg_body(
        &mut self,
        subject: String,
        header_len: usize,
        total_len: usize,
        deadline: Instant,
        what: &str,
    ) -> Result<Message> {
        // The buffer grows as bytes arrive: an announced length is not an
        // allocation (`control` bounds it by MAX_MESSAGE).
        let want = total_len + 2;
        let mut body = Vec::with_capacity(want.min(64 * 1024));
        while body.len() < want {
            self.set_deadline(deadline, what)?;
            match self.reader.fill_buf() {
                Ok([]) => {
                    self.broken = true;
                    return Err(NatsError::Io {
                        url: self.url.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the server closed the connection inside a message",
                        ),
                    });
                }
                Ok(bytes) => {
                    let n = bytes.len().min(want - body.len());
                    body.extend_from_slice(&bytes[..n]);
                    self.reader.consume(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e, what, self.waiting)),
            }
        }
        if !body.ends_with(b"\r\n") {
            return Err(self.protocol(format!("message on {subject} does not end with CRLF")));
        }
        body.truncate(total_len);
        let (status, headers) = if header_len > 0 {
            match parse_headers(&body[..header_len]) {
                Ok(h) => h,
                Err(m) => return Err(self.protocol(format!("message on {subject}: {m}"))),
            }
        } else {
            (None, Vec::new())
        };
        let payload = body.split_off(header_len);
        Ok(Message {
            subject,
            status,
            headers,
            payload,
        })
    }
}

/// A scripted server: reads return `server`'s bytes then end of stream;
/// writes are dropped.
#[cfg(any(test, feature = "fuzzing"))]
struct Script(std::io::Cursor<Vec<u8>>);

#[cfg(any(test, feature = "fuzzing"))]
impl Read for Script {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl Write for Script {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl Transport for Script {
    fn set_read_timeout(&self, _: Option<Duration>) -> std::io::Result<()> {
        Ok(())
    }
}

/// A client whose server is the byte string `server` (its INFO line, the
/// handshake's PONG, then the replies), for tests and fuzzing: every byte
/// goes through the same parsing as a TCP server's. The inbox is
/// `_INBOX.fuzz`, so the n-th request's reply subject is `_INBOX.fuzz.<n>`.
#[cfg(any(test, feature = "fuzzing"))]
pub fn connect_script(server: Vec<u8>, opts: &ConnectOptions) -> Result<Client> {
    let addr = ServerAddr::parse(opts.servers.first().map_or("fuzz", String::as_str))?;
    Client::handshake(
        Box::new(Script(std::io::Cursor::new(server))),
        Box::new(Script(std::io::Cursor::new(Vec::new()))),
        addr.display(),
        "_INBOX.fuzz".to_string(),
        &addr,
        opts,
    )
}

enum Control {
    Pong,
    Other,
    Msg {
        subject: String,
        header_len: usize,
        total_len: usize,
    },
}

fn truncate(s: &str) -> String {
    if s.len() <= 200 {
        s.to_string()
    } else {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms_parse() {
        let a = ServerAddr::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 4222));
        let a = ServerAddr::parse("localhost").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("localhost", DEFAULT_PORT));
        let a = ServerAddr::parse("nats://bob:s3cret@h:1").unwrap();
        assert_eq!(a.user.as_deref(), Some("bob"));
        assert_eq!(a.password.as_deref(), Some("s3cret"));
        let a = ServerAddr::parse("nats://tok@h").unwrap();
        assert_eq!(a.token.as_deref(), Some("tok"));
        let a = ServerAddr::parse("nats://[::1]:5").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 5));
        assert!(ServerAddr::parse("tls://h:1").is_err());
        assert!(ServerAddr::parse("nats://h:x").is_err());
        assert!(ServerAddr::parse("nats://:1").is_err());
        assert_eq!(redact_url("nats://bob:pw@h:1"), "nats://<redacted>@h:1");
    }

    #[test]
    fn headers_round_trip() {
        let h = encode_headers(&[("Nats-Msg-Id", "s-1"), ("Statestream-Height", "1")]);
        let (status, headers) = parse_headers(&h).unwrap();
        assert_eq!(status, None);
        assert_eq!(find_header(&headers, "nats-msg-id"), Some("s-1"));
        let (status, headers) = parse_headers(b"NATS/1.0 503\r\n\r\n").unwrap();
        assert_eq!(status, Some(503));
        assert!(headers.is_empty());
    }

    /// The server bytes of a fuzz finding (`fuzz/fuzz_targets/nats_protocol.rs`,
    /// without its first byte): a MSG announcing 227,777,777,777 bytes was
    /// allocated before any of them arrived.
    const HUGE_MSG: &[u8] = b"INFO {\"server_id\":\"x\",\"version\":\"2.10\",\"max_payload\":1048576,\"headers\":true,\"jetstream\":true}\r\n+OK\r\nPONG\r\nPING\r\nMSG _INBOX.fuzz.1 1 227777777777\r\n{\"stream\":\"s\",\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\xe6\"seq\":2}\r\nM.fuzz.3 1 53\r\n{\"cot_seq\":pt";

    const HANDSHAKE: &str = "INFO {\"headers\":true}\r\nPONG\r\n";

    fn scripted(server: &[u8]) -> Client {
        connect_script(server.to_vec(), &ConnectOptions::new("nats://fuzz")).unwrap()
    }

    #[test]
    fn client_huge_announced_length_is_refused() {
        let mut c = scripted(HUGE_MSG);
        let err = c
            .publish("x.blocks", &[("Nats-Msg-Id", "s-1")], b"payload")
            .unwrap_err();
        assert!(
            matches!(&err, NatsError::Protocol { message, .. } if message.contains("limit")),
            "{err}"
        );
        assert!(c.is_broken());
        // usize::MAX used to overflow `total_len + 2`.
        let mut c =
            scripted(format!("{HANDSHAKE}MSG _INBOX.fuzz.1 1 {}\r\n", usize::MAX).as_bytes());
        let err = c.request("x", &[], b"").unwrap_err();
        assert!(matches!(err, NatsError::Protocol { .. }), "{err}");
    }

    #[test]
    fn client_message_cut_short_is_an_error() {
        // Within the limit, but the bytes never come: end of stream, not an
        // allocation of the announced length.
        let mut c =
            scripted(format!("{HANDSHAKE}MSG _INBOX.fuzz.1 1 {MAX_MESSAGE}\r\nabc").as_bytes());
        let err = c.request("x", &[], b"").unwrap_err();
        assert!(matches!(err, NatsError::Io { .. }), "{err}");
        let mut c =
            scripted(format!("{HANDSHAKE}PING\r\nMSG _INBOX.fuzz.1 1 2\r\nhi\r\n").as_bytes());
        let m = c.request("x", &[], b"").unwrap();
        assert_eq!(m.payload, b"hi");
    }

    #[test]
    fn debug_hides_secrets() {
        let mut o = ConnectOptions::new("nats://u:secret1@h:1");
        o.token = Some("secret2".into());
        o.password = Some("secret3".into());
        let s = format!("{o:?}");
        assert!(!s.contains("secret"), "{s}");
    }
}
