//! Server-Sent Events: `GET /stream` (a `put` of the selected state, then
//! per block `patch`/`delete` events; resume by `Last-Event-ID`) and
//! `GET /stream/ping` (one `ping` per block that changed a selected
//! store). Every stream is a hub subscription; its blocks are rendered as
//! event text once per block and selection, and shared.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use serde_json::json;
use statestream_core::Block;
use tokio_stream::StreamExt as _;

use super::params::{Encoding, last_event_id, parse_params};
use super::snapshot::read_state;
use super::{AppState, HttpError};
use crate::filter::Filter;
use crate::hub::{Event, Hub, SubscriberGuard};
use crate::metrics::FrontEnd;
use crate::outbox::{self, End, Ended, Sink, SubscriptionEnd};
use crate::selection::{Format, Selection, selected};

/// The reconnection delay suggested to clients (`retry:` on the first
/// event).
pub const RETRY: Duration = Duration::from_millis(1000);

/// A heartbeat: one comment line.
const HEARTBEAT: &[u8] = b":\n\n";

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

/// The events of one block as `text/event-stream` text (none when it
/// changed nothing selected); only the last carries `id: h`.
fn render_block(block: &Block, filter: &Filter, format: Format) -> Vec<Bytes> {
    let h = block.height();
    let mut changes = selected(block, filter).peekable();
    let mut out = String::new();
    match format {
        Format::SsePing => {
            if changes.peek().is_some() {
                frame(
                    &mut out,
                    "ping",
                    Some(h),
                    &json!({ "height": h }).to_string(),
                );
            }
        }
        Format::SseChanges(encoding) => {
            while let Some(c) = changes.next() {
                let id = changes.peek().is_none().then_some(h);
                let path = format!("/{}/{}", c.store, encoding.text(c.key));
                match c.value {
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
        Format::Protobuf => {}
    }
    if out.is_empty() {
        Vec::new()
    } else {
        vec![Bytes::from(out)]
    }
}

/// One SSE connection being fed.
struct Feed {
    hub: Arc<Hub>,
    selection: Selection,
    sink: Sink<Bytes>,
    first: bool,
    last_sent: tokio::time::Instant,
}

impl Feed {
    /// Sends events (under the outbox's stall rule).
    async fn send(&mut self, events: Bytes) -> Result<(), Ended> {
        if events.is_empty() {
            return Ok(());
        }
        let events = if self.first {
            // `retry:` is a field of the first event, sent with it (one
            // write, one message in the metrics).
            self.first = false;
            let mut first = format!("retry: {}\n", RETRY.as_millis()).into_bytes();
            first.extend_from_slice(&events);
            Bytes::from(first)
        } else {
            events
        };
        self.sink.send(events).await?;
        self.last_sent = tokio::time::Instant::now();
        Ok(())
    }

    /// A comment line (`force`, or when nothing was sent for a heartbeat
    /// interval), only if there is room: a full buffer is not idle.
    fn heartbeat(&mut self, force: bool) -> Result<(), Ended> {
        if !force && self.last_sent.elapsed() < self.hub.heartbeat() {
            return Ok(());
        }
        if self.sink.try_send(Bytes::from_static(HEARTBEAT))? {
            self.last_sent = tokio::time::Instant::now();
        }
        Ok(())
    }

    async fn run(
        &mut self,
        guard: SubscriberGuard,
        next: u64,
        put: Option<Bytes>,
        max_connection: Option<Duration>,
    ) -> Result<(), SubscriptionEnd> {
        let mut subscription = self.hub.subscribe(guard, next);
        if let Some(put) = put {
            self.send(put).await?;
        }
        let deadline = max_connection.map(|d| tokio::time::Instant::now() + d);
        loop {
            let event = tokio::select! {
                e = self.sink.next_event(&mut subscription) => e,
                () = sleep_until(deadline) => return Ok(()),
            };
            match event? {
                Event::Block(block) => {
                    let selection = &self.selection;
                    let events = block.rendered(selection, |b| {
                        render_block(b, selection.filter(), selection.format())
                    });
                    match events.first() {
                        Some(events) => self.send(events.clone()).await?,
                        // Blocks that select nothing still keep the
                        // connection from looking idle to proxies.
                        None => self.heartbeat(false)?,
                    }
                }
                // The hub's idle timer (reset by every block).
                Event::Heartbeat(_) => self.heartbeat(true)?,
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

/// `GET /stream` (`ping` false) and `GET /stream/ping`.
pub(super) async fn open_stream(
    st: AppState,
    peer: super::Peer,
    headers: HeaderMap,
    query: Option<String>,
    ping: bool,
) -> Result<Response, HttpError> {
    let params = parse_params(query.as_deref())?;
    let grant = st.admit(&headers, params.token.as_deref(), &peer)?;
    let filter = params.filter(&st.hub, &grant)?;
    let encoding: Encoding = params.encoding()?;
    let last = last_event_id(&headers)?;
    // Pings follow from the block after the head before the stream is
    // counted: a block committed once it is counted is pinged.
    let head = st.hub.head();
    let guard = st.hub.admit(FrontEnd::Sse)?;
    // Resume inside the window; anything else starts over.
    let resume = last.filter(|h| st.hub.check_from(h.saturating_add(1)).is_ok());
    let (next, put) = match (resume, ping) {
        (Some(h), _) => (h + 1, None),
        (None, true) => (head + 1, None),
        (None, false) => {
            let (height, data) = read_state(&st.hub, &filter, encoding).await?;
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
    let format = if ping {
        Format::SsePing
    } else {
        Format::SseChanges(encoding)
    };
    let hub = Arc::clone(&st.hub);
    let max_connection = st.max_connection;
    let access = grant.open_stream(&filter)?;
    let outbox = outbox::spawn_guarded(&st.hub, FrontEnd::Sse, access, |sink| async move {
        let mut feed = Feed {
            hub,
            selection: Selection::new(filter, format),
            sink,
            first: true,
            last_sent: tokio::time::Instant::now(),
        };
        let ended = feed.run(guard, next, put, max_connection).await;
        (feed.sink, ended)
    });
    // The body is the event stream as rendered text (one shared buffer per
    // block and selection), not axum's `Sse`: that would encode every
    // event once per client. Whatever ends the stream ends the body (the
    // client reconnects, by `Last-Event-ID`); a credential that no longer
    // allows the stream ends it with an `event: revoked` first, which
    // tells the client not to reconnect with it.
    let body = outbox
        .map(|r| match r {
            Ok(events) => Some(events),
            Err(End::Revoked(message) | End::OutOfScope(message)) => {
                let mut out = String::new();
                frame(
                    &mut out,
                    "revoked",
                    None,
                    &json!({ "error": message }).to_string(),
                );
                Some(Bytes::from(out))
            }
            Err(_) => None,
        })
        .map_while(|events| events)
        .map(Ok::<_, std::convert::Infallible>);
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
