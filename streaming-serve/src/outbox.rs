//! The outbox of one subscriber, for every front-end: a bounded buffer
//! between the subscription's task and the connection, and the one stall
//! rule. A message that finds no room for the stall timeout ends the stream
//! (the client resumes from where it was), counted as a slow disconnect;
//! messages and bytes sent are counted per front-end. The stream ends with
//! an [`End`] that each front-end maps to its own status.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;

use crate::access::StreamGuard;
use crate::error::HubError;
use crate::hub::{Event, Hub, Subscription};
use crate::metrics::{FrontEnd, ServeMetrics};

/// Messages buffered per client (gRPC messages; SSE: one block's events
/// each).
pub const CLIENT_BUFFER: usize = 16;

/// How long one message may wait for a client before it counts as
/// stalled: twice the heartbeat interval, at least [`MIN_STALL`].
pub fn stall_timeout(hub: &Hub) -> Duration {
    (hub.heartbeat() * 2).max(MIN_STALL)
}

/// The shortest stall timeout, for very short heartbeat intervals.
const MIN_STALL: Duration = Duration::from_secs(1);

/// The size of a message as the metrics count it (its bytes on the wire,
/// before the transport's framing).
pub trait Measured {
    fn wire_len(&self) -> usize;
}

/// SSE: the event text.
impl Measured for prost::bytes::Bytes {
    fn wire_len(&self) -> usize {
        self.len()
    }
}

/// Why a send did not happen; the stream has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client went away.
    Gone,
    /// The client did not take a message for the stall timeout.
    Stalled,
    /// The server shuts down.
    Shutdown,
}

/// What a stream ends with, for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The client did not take a message for this long.
    Stalled(Duration),
    /// An error (including [`HubError::ShuttingDown`]).
    Failed(HubError),
    /// The stream's credential was revoked, expired, or its secret
    /// rotated out (gRPC `UNAUTHENTICATED`; SSE `event: revoked`).
    Revoked(String),
    /// The stream's credential no longer covers its filter (gRPC
    /// `PERMISSION_DENIED`; SSE `event: revoked`).
    OutOfScope(String),
}

/// The receiving side, read by the connection.
pub struct Outbox<T> {
    rx: mpsc::Receiver<Result<T, End>>,
    kill: Option<oneshot::Receiver<End>>,
    /// Resolves when the stream's credential stops allowing it.
    access_ends: Option<crate::access::AccessEnds>,
    /// The stream's place in its credential's `max_streams`, released
    /// with the connection.
    _slot: Option<statestream_access::StreamSlot>,
    done: bool,
}

impl<T> Stream for Outbox<T> {
    type Item = Result<T, End>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(ends) = self.access_ends.as_mut()
            && let Poll::Ready(end) = ends.as_mut().poll(cx)
        {
            self.done = true;
            return Poll::Ready(Some(Err(end)));
        }
        if let Some(kill) = self.kill.as_mut() {
            match Pin::new(kill).poll(cx) {
                Poll::Ready(Ok(end)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(end)));
                }
                Poll::Ready(Err(_)) => self.kill = None,
                Poll::Pending => {}
            }
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Err(end))) => {
                self.done = true;
                Poll::Ready(Some(Err(end)))
            }
            other => other,
        }
    }
}

/// The sending side, owned by the subscription's task.
pub struct Sink<T> {
    tx: mpsc::Sender<Result<T, End>>,
    kill: Option<oneshot::Sender<End>>,
    stall: Duration,
    closing: watch::Receiver<bool>,
    metrics: Arc<ServeMetrics>,
    front_end: FrontEnd,
    streamer: Arc<str>,
    /// The stream's credential's counters, if it has one.
    credential: Option<Arc<statestream_access::Counters>>,
}

/// A subscriber's outbox and its sink, on `hub` (stall timeout, shutdown,
/// metrics) for `front_end`.
pub fn channel<T>(hub: &Hub, front_end: FrontEnd) -> (Sink<T>, Outbox<T>) {
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    let (kill_tx, kill_rx) = oneshot::channel();
    (
        Sink {
            tx,
            kill: Some(kill_tx),
            stall: stall_timeout(hub),
            closing: hub.closing(),
            metrics: Arc::clone(hub.metrics()),
            front_end,
            streamer: hub.name().into(),
            credential: None,
        },
        Outbox {
            rx,
            kill: Some(kill_rx),
            access_ends: None,
            _slot: None,
            done: false,
        },
    )
}

impl<T: Measured> Sink<T> {
    /// Ends the stream with `end` ahead of anything buffered.
    fn kill(&mut self, end: End) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(end);
        }
    }

    /// Sends one message, waiting for room at most the stall timeout.
    pub async fn send(&mut self, message: T) -> Result<(), Ended> {
        let stall = self.stall;
        let bytes = message.wire_len();
        let outcome = {
            let closing = &mut self.closing;
            tokio::select! {
                sent = self.tx.send(Ok(message)) => {
                    sent.map_err(|_| Ended::Gone)?;
                    self.metrics.sent(self.front_end, bytes);
                    if let Some(c) = &self.credential {
                        c.sent(bytes);
                    }
                    return Ok(());
                }
                _ = tokio::time::sleep(stall) => Ended::Stalled,
                _ = closing.wait_for(|c| *c) => Ended::Shutdown,
            }
        };
        let end = if outcome == Ended::Stalled {
            self.metrics.slow(self.front_end);
            tracing::info!(
                streamer = %self.streamer,
                front_end = self.front_end.name(),
                "slow subscriber disconnected: no message taken for {} ms; it resumes from the last block it saw",
                stall.as_millis()
            );
            End::Stalled(stall)
        } else {
            End::Failed(HubError::ShuttingDown)
        };
        self.kill(end);
        Err(outcome)
    }

    /// Sends a message only if there is room now (heartbeats: a full
    /// buffer is not idle); not counted.
    pub fn try_send(&mut self, message: T) -> Result<bool, Ended> {
        match self.tx.try_send(Ok(message)) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Ended::Gone),
        }
    }

    /// Ends the stream with `error` (after what is buffered when there is
    /// room, else at once).
    pub fn fail(mut self, error: HubError) {
        if let Err(mpsc::error::TrySendError::Full(Err(end))) =
            self.tx.try_send(Err(End::Failed(error)))
        {
            self.kill(end);
        }
    }

    /// Resolves when the client went away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// Why a subscription's task ends.
pub enum SubscriptionEnd {
    /// The stream is over already (client gone, stalled, shutdown).
    Ended(Ended),
    /// End the stream with this error.
    Error(HubError),
}

impl From<Ended> for SubscriptionEnd {
    fn from(e: Ended) -> Self {
        SubscriptionEnd::Ended(e)
    }
}

impl From<HubError> for SubscriptionEnd {
    fn from(e: HubError) -> Self {
        SubscriptionEnd::Error(e)
    }
}

impl<T: Measured> Sink<T> {
    /// Ends the stream according to why its task ended.
    fn finish(self, end: SubscriptionEnd) {
        match end {
            SubscriptionEnd::Ended(why) => tracing::debug!(?why, "subscription ended"),
            SubscriptionEnd::Error(e) => {
                tracing::debug!(error = %e, "subscription ended");
                self.fail(e);
            }
        }
    }

    /// The subscription's next event; the end when the client goes away
    /// first.
    pub async fn next_event(&self, sub: &mut Subscription) -> Result<Event, SubscriptionEnd> {
        tokio::select! {
            e = sub.next() => Ok(e?),
            _ = self.closed() => Err(Ended::Gone.into()),
        }
    }
}

/// A subscriber's outbox, fed by `task` on a task of its own. The task
/// hands its sink back with how it ended; the stream ends accordingly
/// (an error is sent to the client, anything else just ends it).
///
/// `guard`: the stream's credential (or none, `StreamGuard::default()`):
/// what it sends is counted in the credential's metrics, and the stream
/// ends (ahead of anything buffered) when the credential stops allowing
/// it.
pub fn spawn_guarded<T, F, Fut>(
    hub: &Hub,
    front_end: FrontEnd,
    guard: StreamGuard,
    task: F,
) -> Outbox<T>
where
    T: Measured + Send + 'static,
    F: FnOnce(Sink<T>) -> Fut,
    Fut: Future<Output = (Sink<T>, Result<(), SubscriptionEnd>)> + Send + 'static,
{
    let (mut sink, mut outbox) = channel(hub, front_end);
    sink.credential = guard.counters();
    let (slot, ends) = guard.into_parts();
    outbox._slot = slot;
    outbox.access_ends = ends;
    let task = task(sink);
    tokio::spawn(async move {
        if let (sink, Err(end)) = task.await {
            sink.finish(end);
        }
    });
    outbox
}
