//! The HTTP front-end (axum): Server-Sent Events on `GET /stream` (a
//! `put` of the selected state, then per block `patch`/`delete` events;
//! resume by `Last-Event-ID`), `GET /stream/ping` (one `ping` per block
//! that changed a selected store) and `GET /snapshot` (JSON). Every
//! subscription is a hub [`Subscription`](crate::hub::Subscription): this
//! module only translates its blocks into events (rendered once per block
//! and selection, shared by the streams with that selection).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::HubError;
use crate::filter::{Filter, FilterBuilder, key_from_text};
use crate::grpc::{constant_time_eq, stall_timeout};
use crate::hub::{Event, Hub, SubscriberGuard, as_ref};
use crate::metrics::FrontEnd;

/// Blocks (each one buffer of events) buffered per SSE client; a client
/// that leaves it full for the stall timeout is disconnected (it resumes by
/// `Last-Event-ID`).
pub const SSE_BUFFER: usize = 16;

/// The reconnection delay suggested to clients (`retry:` on the first
/// event).
pub const RETRY: Duration = Duration::from_millis(1000);

/// What the HTTP server is built from.
pub(crate) struct HttpSetup {
    pub hub: Arc<Hub>,
    pub token: String,
    pub max_connection: Option<Duration>,
    pub cors_origins: Vec<String>,
}

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    token: Arc<str>,
    max_connection: Option<Duration>,
    cors_origins: Arc<[String]>,
    rendered: Arc<Rendered>,
}

/// The routes, with the CORS layer.
pub(crate) fn router(setup: HttpSetup) -> Router {
    let state = AppState {
        hub: setup.hub,
        token: setup.token.into(),
        max_connection: setup.max_connection,
        cors_origins: setup.cors_origins.into(),
        rendered: Arc::default(),
    };
    Router::new()
        .route("/stream", get(stream))
        .route("/stream/ping", get(ping))
        .route("/snapshot", get(snapshot))
        .layer(middleware::from_fn_with_state(state.clone(), cors))
        .with_state(state)
}

/// An error answered as an HTTP status with a one-line JSON body.
#[derive(Debug)]
pub(crate) struct HttpError {
    status: StatusCode,
    message: String,
}

impl HttpError {
    fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<HubError> for HttpError {
    fn from(e: HubError) -> HttpError {
        HttpError {
            status: StatusCode::from_u16(e.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = format!("{}\n", json!({ "error": self.message }));
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// How keys and values are written in the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Valid UTF-8 as is, anything else `0x` and lowercase hex.
    Utf8,
    /// Lowercase hex (no `0x`), always.
    Hex,
    /// Standard base64 with padding, always.
    Base64,
}

impl Encoding {
    fn parse(text: &str) -> Result<Encoding, HttpError> {
        match text {
            "utf8" => Ok(Encoding::Utf8),
            "hex" => Ok(Encoding::Hex),
            "base64" => Ok(Encoding::Base64),
            other => Err(HttpError::bad_request(format!(
                "encoding: {other:?} is not one of utf8, hex, base64"
            ))),
        }
    }

    /// `bytes` as text.
    pub fn text(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Utf8 => match std::str::from_utf8(bytes) {
                Ok(s) => s.to_string(),
                Err(_) => format!("0x{}", hex(bytes)),
            },
            Encoding::Hex => hex(bytes),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The query parameters of every endpoint.
#[derive(Debug, Default)]
struct Params {
    stores: Vec<String>,
    prefixes: Vec<String>,
    encoding: Option<String>,
    token: Option<String>,
}

/// Percent-decodes one `application/x-www-form-urlencoded` component.
fn decode_component(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let pair = bytes.get(i + 1..i + 3).ok_or("a truncated %-escape")?;
                let hi = (pair[0] as char).to_digit(16).ok_or("a bad %-escape")?;
                let lo = (pair[1] as char).to_digit(16).ok_or("a bad %-escape")?;
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 after %-decoding".to_string())
}

fn parse_params(raw: Option<&str>) -> Result<Params, HttpError> {
    let mut p = Params::default();
    for pair in raw.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode_component(name)
            .map_err(|e| HttpError::bad_request(format!("query parameter {name:?}: {e}")))?;
        let value =
            decode_component(value).map_err(|e| HttpError::bad_request(format!("{name}: {e}")))?;
        match name.as_str() {
            "stores" => {
                for s in value.split(',') {
                    if s.is_empty() {
                        return Err(HttpError::bad_request(
                            "stores: an empty store name (expected stores=a,b)",
                        ));
                    }
                    p.stores.push(s.to_string());
                }
            }
            "prefix" => p.prefixes.push(value),
            "encoding" => p.encoding = Some(value),
            "token" => p.token = Some(value),
            other => {
                return Err(HttpError::bad_request(format!(
                    "unknown query parameter {other:?} (expected stores, prefix, encoding, token)"
                )));
            }
        }
    }
    Ok(p)
}

impl Params {
    fn filter(&self, hub: &Hub) -> Result<Filter, HttpError> {
        let mut b = FilterBuilder::new(hub.stores());
        for s in &self.stores {
            b.whole(s, "stores")?;
        }
        for p in &self.prefixes {
            let (store, prefix) = p.split_once('/').ok_or_else(|| {
                HttpError::bad_request(format!(
                    "prefix: {p:?} is not store/prefix (e.g. prefix=bank/balances/)"
                ))
            })?;
            b.prefix(store, &key_from_text(prefix), "prefix")?;
        }
        Ok(b.build())
    }

    fn encoding(&self) -> Result<Encoding, HttpError> {
        self.encoding
            .as_deref()
            .map_or(Ok(Encoding::Utf8), Encoding::parse)
    }
}

impl AppState {
    /// `Authorization: Bearer <token>`, or `?token=` (for EventSource,
    /// which cannot set headers).
    fn authorize(&self, headers: &HeaderMap, query: Option<&str>) -> Result<(), HttpError> {
        if self.token.is_empty() {
            return Ok(());
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or(query);
        let unauthorized = |m: &str| HttpError {
            status: StatusCode::UNAUTHORIZED,
            message: m.to_string(),
        };
        match given {
            None => Err(unauthorized(
                "missing token: send `Authorization: Bearer <token>` (or ?token=)",
            )),
            Some(t) if constant_time_eq(t.as_bytes(), self.token.as_bytes()) => Ok(()),
            Some(_) => Err(unauthorized("wrong token")),
        }
    }
}

/// The `Last-Event-ID` header: a block height.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, HttpError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = v.to_str().map(str::trim).unwrap_or("");
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u64>().map(Some).map_err(|_| {
        HttpError::bad_request(format!(
            "Last-Event-ID: {text:?} is not a block height (a non-negative integer)"
        ))
    })
}

/// Reads the selected state from one read snapshot: its height and
/// `{"<store>":{"<key>":{"value":"<v>","version":H}}}`. Blocking.
fn read_state(hub: &Hub, filter: &Filter, encoding: Encoding) -> Result<(u64, Value), HubError> {
    let store_error = |e: &dyn std::fmt::Display| HubError::Store(e.to_string());
    let snapshot = hub.snapshot()?;
    let height = snapshot.height();
    let mut data = Map::new();
    for (store, part) in filter.stores() {
        let mut keys = Map::new();
        for (start, end) in part.ranges() {
            let iter = snapshot
                .range(store, as_ref(&start), as_ref(&end))
                .map_err(|e| store_error(&e))?;
            for kv in iter {
                let (k, v) = kv.map_err(|e| store_error(&e))?;
                keys.insert(
                    encoding.text(&k),
                    json!({ "value": encoding.text(&v), "version": height }),
                );
            }
        }
        data.insert(store.name().to_string(), Value::Object(keys));
    }
    Ok((height, Value::Object(data)))
}

async fn read_state_async(
    hub: &Arc<Hub>,
    filter: &Filter,
    encoding: Encoding,
) -> Result<(u64, Value), HttpError> {
    let hub = Arc::clone(hub);
    let filter = filter.clone();
    tokio::task::spawn_blocking(move || read_state(&hub, &filter, encoding))
        .await
        .map_err(|e| HubError::Store(format!("the snapshot reader failed: {e}")))?
        .map_err(HttpError::from)
}

/// `GET /snapshot`.
async fn snapshot(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let params = parse_params(query.as_deref())?;
    st.authorize(&headers, params.token.as_deref())?;
    let filter = params.filter(&st.hub)?;
    let encoding = params.encoding()?;
    if st.hub.is_closing() {
        return Err(HubError::ShuttingDown.into());
    }
    let (height, data) = read_state_async(&st.hub, &filter, encoding).await?;
    let body = json!({ "height": height, "data": data }).to_string();
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// What a stream sends per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `patch`/`delete` per change.
    Changes,
    /// One `ping` per block with a selected change.
    Ping,
}

/// Appends one event in the `text/event-stream` format (`data` is one
/// line of compact JSON).
fn frame(out: &mut String, event: &str, id: Option<u64>, data: &str) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "event: {event}");
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    let _ = write!(out, "data: {data}\n\n");
}

/// The events of one block as `text/event-stream` text (empty when it
/// changed nothing selected); only the last carries `id: h`.
fn render_block(
    block: &statestream_core::Block,
    filter: &Filter,
    encoding: Encoding,
    mode: Mode,
) -> String {
    let h = block.height();
    let mut selected = block
        .records()
        .filter(|r| filter.store(r.store).is_some_and(|f| f.matches(r.key)))
        .peekable();
    let mut out = String::new();
    match mode {
        Mode::Ping => {
            if selected.peek().is_some() {
                frame(
                    &mut out,
                    "ping",
                    Some(h),
                    &json!({ "height": h }).to_string(),
                );
            }
        }
        Mode::Changes => {
            while let Some(r) = selected.next() {
                let id = selected.peek().is_none().then_some(h);
                let path = format!("/{}/{}", r.store, encoding.text(r.key));
                match r.value {
                    Some(v) => frame(
                        &mut out,
                        "patch",
                        id,
                        &json!({
                            "path": path,
                            "data": { "value": encoding.text(v), "version": h },
                        })
                        .to_string(),
                    ),
                    None => frame(
                        &mut out,
                        "delete",
                        id,
                        &json!({ "path": path, "version": h }).to_string(),
                    ),
                }
            }
        }
    }
    out
}

/// Blocks rendered per selection, kept for the latest ones: streams with
/// the same filter, encoding and mode share one rendering (a reference-
/// counted buffer) instead of encoding the block each.
#[derive(Default)]
pub(crate) struct Rendered {
    entries: Mutex<VecDeque<RenderedBlock>>,
}

struct RenderedBlock {
    height: u64,
    filter: Filter,
    encoding: Encoding,
    mode: Mode,
    bytes: Bytes,
}

/// Renderings kept (blocks times distinct selections).
const RENDERED: usize = 256;

impl Rendered {
    fn get(
        &self,
        block: &statestream_core::Block,
        filter: &Filter,
        encoding: Encoding,
        mode: Mode,
    ) -> Bytes {
        let height = block.height();
        let found = |entries: &VecDeque<RenderedBlock>| {
            entries
                .iter()
                .rev()
                .find(|e| {
                    e.height == height
                        && e.mode == mode
                        && e.encoding == encoding
                        && e.filter == *filter
                })
                .map(|e| e.bytes.clone())
        };
        if let Some(b) = found(&self.lock()) {
            return b;
        }
        let bytes = Bytes::from(render_block(block, filter, encoding, mode));
        let mut entries = self.lock();
        if let Some(b) = found(&entries) {
            return b;
        }
        if entries.len() == RENDERED {
            entries.pop_front();
        }
        entries.push_back(RenderedBlock {
            height,
            filter: filter.clone(),
            encoding,
            mode,
            bytes: bytes.clone(),
        });
        bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<RenderedBlock>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A heartbeat: one comment line.
const HEARTBEAT: &[u8] = b":\n\n";

/// One SSE connection being fed.
struct Feed {
    hub: Arc<Hub>,
    rendered: Arc<Rendered>,
    filter: Filter,
    encoding: Encoding,
    mode: Mode,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    first: bool,
    last_sent: tokio::time::Instant,
}

impl Feed {
    /// Sends events, waiting for room at most the stall timeout; `false`
    /// when the connection is to end (gone, or too slow).
    async fn send(&mut self, events: Bytes) -> bool {
        if events.is_empty() {
            return true;
        }
        if self.first {
            // `retry:` is a field of the first event, sent with it (one
            // write, one message in the metrics).
            self.first = false;
            let mut first = format!("retry: {}\n", RETRY.as_millis()).into_bytes();
            first.extend_from_slice(&events);
            return self.send_raw(Bytes::from(first)).await;
        }
        self.send_raw(events).await
    }

    async fn send_raw(&mut self, bytes: Bytes) -> bool {
        let stall = stall_timeout(&self.hub);
        let len = bytes.len();
        match tokio::time::timeout(stall, self.tx.send(Ok(bytes))).await {
            Ok(Ok(())) => {
                self.last_sent = tokio::time::Instant::now();
                self.hub.metrics().sent(FrontEnd::Sse, len);
                true
            }
            Ok(Err(_)) => false,
            Err(_) => {
                self.hub.metrics().slow(FrontEnd::Sse);
                tracing::info!(
                    streamer = %self.hub.name(),
                    "SSE: slow client disconnected (no event taken for {} ms); it resumes by Last-Event-ID",
                    stall.as_millis()
                );
                false
            }
        }
    }

    /// A comment line (`force`, or when nothing was sent for a heartbeat
    /// interval), only if there is room: a full buffer is not idle.
    fn heartbeat(&mut self, force: bool) -> bool {
        if !force && self.last_sent.elapsed() < self.hub.heartbeat() {
            return true;
        }
        match self.tx.try_send(Ok(Bytes::from_static(HEARTBEAT))) {
            Ok(()) => {
                self.last_sent = tokio::time::Instant::now();
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    async fn run(
        mut self,
        guard: SubscriberGuard,
        next: u64,
        put: Option<Bytes>,
        max_connection: Option<Duration>,
    ) {
        let mut subscription = self.hub.subscribe(guard, next);
        if let Some(put) = put
            && !self.send(put).await
        {
            return;
        }
        let deadline = max_connection.map(|d| tokio::time::Instant::now() + d);
        loop {
            let event = tokio::select! {
                e = subscription.next() => e,
                () = self.tx.closed() => return,
                () = sleep_until(deadline) => return,
            };
            let alive = match event {
                Ok(Event::Block(block)) => {
                    let events = self
                        .rendered
                        .get(&block, &self.filter, self.encoding, self.mode);
                    if events.is_empty() {
                        // Blocks that select nothing still keep the
                        // connection from looking idle to proxies.
                        self.heartbeat(false)
                    } else {
                        self.send(events).await
                    }
                }
                // The hub's idle timer (reset by every block).
                Ok(Event::Heartbeat(_)) => self.heartbeat(true),
                // Shutdown, or the next block left the window: the client
                // reconnects (and gets a fresh `put` if it must).
                Err(_) => false,
            };
            if !alive {
                return;
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// `GET /stream`.
async fn stream(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    open_stream(st, headers, query, Mode::Changes).await
}

/// `GET /stream/ping`.
async fn ping(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    open_stream(st, headers, query, Mode::Ping).await
}

async fn open_stream(
    st: AppState,
    headers: HeaderMap,
    query: Option<String>,
    mode: Mode,
) -> Result<Response, HttpError> {
    let params = parse_params(query.as_deref())?;
    st.authorize(&headers, params.token.as_deref())?;
    let filter = params.filter(&st.hub)?;
    let encoding = params.encoding()?;
    let last = last_event_id(&headers)?;
    // Pings follow from the block after the head before the stream is
    // counted: a block committed once it is counted is pinged.
    let head = st.hub.head();
    let guard = st.hub.admit(FrontEnd::Sse)?;
    // Resume inside the window; anything else starts over.
    let resume = last.filter(|h| st.hub.check_from(h.saturating_add(1)).is_ok());
    let (next, put) = match (resume, mode) {
        (Some(h), _) => (h + 1, None),
        (None, Mode::Ping) => (head + 1, None),
        (None, Mode::Changes) => {
            let (height, data) = read_state_async(&st.hub, &filter, encoding).await?;
            let mut put = String::new();
            frame(
                &mut put,
                "put",
                Some(height),
                &json!({ "path": "/", "height": height, "data": data }).to_string(),
            );
            (height + 1, Some(Bytes::from(put)))
        }
    };
    let (tx, rx) = mpsc::channel(SSE_BUFFER);
    let feed = Feed {
        hub: Arc::clone(&st.hub),
        rendered: Arc::clone(&st.rendered),
        filter,
        encoding,
        mode,
        tx,
        first: true,
        last_sent: tokio::time::Instant::now(),
    };
    tokio::spawn(feed.run(guard, next, put, st.max_connection));
    // The body is the event stream as rendered text (one shared buffer per
    // block and selection), not axum's `Sse`: that would encode every
    // event once per client.
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// CORS: only for the configured origins; answers preflights itself.
async fn cors(State(st): State<AppState>, request: Request, next: Next) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let allowed = origin.and_then(|o| {
        if st.cors_origins.iter().any(|c| c == "*") {
            Some("*".to_string())
        } else {
            st.cors_origins.contains(&o).then_some(o)
        }
    });
    let Some(allowed) = allowed else {
        return next.run(request).await;
    };
    let mut response = if request.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&allowed) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Last-Event-ID"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(Encoding::Utf8.text(b"abc"), "abc");
        assert_eq!(Encoding::Utf8.text(&[0xff, 0x01]), "0xff01");
        assert_eq!(Encoding::Hex.text(b"ab"), "6162");
        assert_eq!(Encoding::Base64.text(b"ab"), "YWI=");
        assert!(Encoding::parse("latin1").is_err());
    }

    #[test]
    fn params() {
        let p = parse_params(Some(
            "stores=a,b&prefix=c%2Fx&prefix=c/y&encoding=hex&token=t+1",
        ))
        .unwrap();
        assert_eq!(p.stores, vec!["a", "b"]);
        assert_eq!(p.prefixes, vec!["c/x", "c/y"]);
        assert_eq!(p.encoding.as_deref(), Some("hex"));
        assert_eq!(p.token.as_deref(), Some("t 1"));
        assert!(parse_params(Some("stores=a,,b")).is_err());
        assert!(parse_params(Some("nope=1")).is_err());
        assert!(parse_params(Some("prefix=%zz")).is_err());
    }
}
