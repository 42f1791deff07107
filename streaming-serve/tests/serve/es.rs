//! A real SSE client for the tests: LaunchDarkly's `eventsource-client`
//! (the HTTP front-end follows LaunchDarkly Relay), run on a thread and a
//! runtime of its own so that the test thread can commit blocks while the
//! client connects, reads and reconnects.
//!
//! The client keeps the last event ID as the SSE specification says: an
//! event without an `id:` field carries the last one seen. So the events of
//! a block carry the previous block's height until its last event, which
//! carries the block's own: `id == version` marks the end of a block, and a
//! reconnect sends `Last-Event-ID` naming the last whole block. (One
//! exception, in the client: it starts each connection with a fresh parser,
//! so until the first `id:` of a resumed connection its last event ID is
//! empty; a cut inside that first block would bring a fresh `put`. The
//! server writes a block at once and ends streams between blocks, so the
//! tests do not meet it.)

use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use eventsource_client::{self as es, ReconnectOptions, SSE};
use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::sync::oneshot;

/// How long a test waits for the next item before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// One event, its data parsed as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Ev {
    pub event: String,
    pub data: Value,
    /// The last event ID (this event's `id:`, or the one before it).
    pub id: Option<u64>,
    /// The `retry:` hint, on the first event of a connection.
    pub retry: Option<u64>,
}

/// A response that is not a stream: its status and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// One thing the client reported.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A connection was answered `200` with an event stream (again, after
    /// a reconnect).
    Connected {
        content_type: String,
        /// `Cache-Control`.
        cache_control: String,
        /// `X-Accel-Buffering` (proxies: do not buffer).
        accel_buffering: String,
    },
    Event(Ev),
    /// A comment line (`:`): a heartbeat.
    Comment,
    /// The server ended the stream. A following client reconnects by
    /// itself, with `Last-Event-ID`.
    Ended,
    /// The server answered with an error status.
    Refused(Refused),
    /// Anything else the client failed at.
    Failed(String),
}

/// How to connect.
#[derive(Debug, Clone, Default)]
pub struct Options<'a> {
    pub headers: &'a [(&'a str, &'a str)],
    /// Sent as `Last-Event-ID` on the first connection.
    pub last_event_id: Option<u64>,
    /// Reconnect (with the last event ID) when the server ends the stream,
    /// as an EventSource does; otherwise report the end and stop.
    pub follow: bool,
}

/// A client reading one stream (or, when following, one stream after the
/// other) on its own thread. Dropping it closes the connection.
pub struct EventSource {
    items: mpsc::Receiver<Item>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EventSource {
    /// Starts a client on `url`; it connects in the background.
    pub fn start(url: &str, options: &Options<'_>) -> EventSource {
        let (tx, items) = mpsc::channel();
        let (stop, stopped) = oneshot::channel();
        let client = build(url, options);
        let follow = options.follow;
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the SSE client");
            runtime.block_on(read(client, follow, tx, stopped));
        });
        EventSource {
            items,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Connects once (no reconnect): the stream, or the error status.
    pub fn open(url: &str, headers: &[(&str, &str)]) -> Result<EventSource, Refused> {
        EventSource::open_with(
            url,
            &Options {
                headers,
                ..Options::default()
            },
        )
    }

    /// [`open`](EventSource::open) with `options` (not following).
    pub fn open_with(url: &str, options: &Options<'_>) -> Result<EventSource, Refused> {
        let source = EventSource::start(
            url,
            &Options {
                follow: false,
                ..options.clone()
            },
        );
        match source.next() {
            Item::Connected {
                content_type,
                cache_control,
                accel_buffering,
            } => {
                assert!(
                    content_type.starts_with("text/event-stream"),
                    "{content_type}"
                );
                assert_eq!(cache_control, "no-cache");
                assert_eq!(accel_buffering, "no");
                Ok(source)
            }
            Item::Refused(r) => Err(r),
            other => panic!("neither a stream nor an error status: {other:?}"),
        }
    }

    /// The next item; fails the test after a minute of silence.
    pub fn next(&self) -> Item {
        match self.items.recv_timeout(PATIENCE) {
            Ok(item) => item,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("nothing from the SSE client for 60 s"),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the SSE client stopped"),
        }
    }

    /// The next item if there is one already.
    pub fn try_next(&self) -> Option<Item> {
        self.items.try_recv().ok()
    }

    /// The next event (heartbeats skipped); `None` when the stream ended.
    pub fn next_event(&self) -> Option<Ev> {
        // One deadline in all: heartbeats keep the stream busy while the
        // event never comes.
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no SSE event for {} s, only heartbeats",
                PATIENCE.as_secs()
            );
            match self.next() {
                Item::Event(ev) => return Some(ev),
                Item::Comment | Item::Connected { .. } => {}
                Item::Ended => return None,
                other => panic!("the stream failed: {other:?}"),
            }
        }
    }
}

impl Drop for EventSource {
    fn drop(&mut self) {
        // Ends the client's task (and with it the connection), then waits
        // for the thread so that the server has seen the client go.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn build(url: &str, options: &Options<'_>) -> impl es::Client + use<> {
    let mut builder = es::ClientBuilder::for_url(url).expect("a valid URL");
    for (name, value) in options.headers {
        builder = builder.header(name, value).expect("a valid header");
    }
    if let Some(id) = options.last_event_id {
        builder = builder.last_event_id(id.to_string());
    }
    // The delay before a reconnect is the server's `retry:` hint once an
    // event carried one; this is the delay before that.
    builder
        .reconnect(
            ReconnectOptions::reconnect(options.follow)
                .retry_initial(false)
                .delay(Duration::from_millis(100))
                .delay_max(Duration::from_secs(2))
                .build(),
        )
        .build_http()
}

/// Reads the client's stream into `tx` until told to stop, the receiver
/// is gone, or (not following) the first end or error.
async fn read(
    client: impl es::Client,
    follow: bool,
    tx: mpsc::Sender<Item>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut stream = client.stream();
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = &mut stopped => return,
        };
        let (item, last) = match next {
            None => (Item::Ended, true),
            Some(Ok(sse)) => (from_sse(sse), false),
            Some(Err(es::Error::Eof)) => (Item::Ended, !follow),
            Some(Err(es::Error::UnexpectedResponse(response, body))) => {
                let body = body
                    .body_bytes()
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|e| format!("(unreadable body: {e})"));
                let refused = Refused {
                    status: response.status(),
                    body,
                };
                (Item::Refused(refused), true)
            }
            Some(Err(e)) => (Item::Failed(e.to_string()), true),
        };
        if tx.send(item).is_err() || last {
            return;
        }
    }
}

fn from_sse(sse: SSE) -> Item {
    match sse {
        SSE::Connected(details) => {
            let header = |name: &str| {
                details
                    .response()
                    .get_header_value(name)
                    .ok()
                    .flatten()
                    .unwrap_or("")
                    .to_owned()
            };
            Item::Connected {
                content_type: header("content-type"),
                cache_control: header("cache-control"),
                accel_buffering: header("x-accel-buffering"),
            }
        }
        SSE::Comment(_) => Item::Comment,
        SSE::Event(e) => {
            let data = match serde_json::from_str(&e.data) {
                Ok(d) => d,
                Err(err) => {
                    return Item::Failed(format!(
                        "{} data is not JSON ({err}): {}",
                        e.event_type, e.data
                    ));
                }
            };
            let id = match e.id.as_deref().map(str::parse) {
                None => None,
                Some(Ok(id)) => Some(id),
                Some(Err(_)) => return Item::Failed(format!("a non-numeric id {:?}", e.id)),
            };
            Item::Event(Ev {
                event: e.event_type,
                data,
                id,
                retry: e.retry,
            })
        }
    }
}
