//! A gRPC server stream with a bounded buffer per client, and a way to end
//! it with a status even when that buffer is full (a stalled client, a
//! shutdown).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tonic::Status;

use crate::metrics::{FrontEnd, ServeMetrics};

/// Messages buffered per client.
pub const CLIENT_BUFFER: usize = 16;

/// Why a send did not happen; the stream has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client went away.
    Gone,
    /// The client did not take a message for the stall timeout; it was
    /// ended with `ABORTED`.
    Stalled,
    /// The server shuts down; the client was sent `UNAVAILABLE`.
    Shutdown,
}

/// The response stream tonic polls.
pub struct Outbox<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
    kill: Option<oneshot::Receiver<Status>>,
    done: bool,
}

impl<T> Stream for Outbox<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(kill) = self.kill.as_mut() {
            match Pin::new(kill).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Err(_)) => self.kill = None,
                Poll::Pending => {}
            }
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Err(status)))
            }
            other => other,
        }
    }
}

/// The sending side, owned by the subscription's task.
pub struct Sink<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    kill: Option<oneshot::Sender<Status>>,
    stall: Duration,
    closing: watch::Receiver<bool>,
    metrics: Arc<ServeMetrics>,
}

/// A stream and its sink. `stall`: how long one message may wait for room
/// before the client counts as stalled. Messages sent and stalls are
/// counted in `metrics` (gRPC).
pub fn channel<T>(
    stall: Duration,
    closing: watch::Receiver<bool>,
    metrics: Arc<ServeMetrics>,
) -> (Sink<T>, Outbox<T>) {
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    let (kill_tx, kill_rx) = oneshot::channel();
    (
        Sink {
            tx,
            kill: Some(kill_tx),
            stall,
            closing,
            metrics,
        },
        Outbox {
            rx,
            kill: Some(kill_rx),
            done: false,
        },
    )
}

impl<T: prost::Message> Sink<T> {
    /// Ends the stream with `status` ahead of anything buffered.
    fn kill(&mut self, status: Status) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(status);
        }
    }

    /// Sends one message, waiting for room at most the stall timeout.
    pub async fn send(&mut self, message: T) -> Result<(), Ended> {
        let stall = self.stall;
        let bytes = message.encoded_len();
        let outcome = {
            let closing = &mut self.closing;
            tokio::select! {
                sent = self.tx.send(Ok(message)) => {
                    sent.map_err(|_| Ended::Gone)?;
                    self.metrics.sent(FrontEnd::Grpc, bytes);
                    return Ok(());
                }
                _ = tokio::time::sleep(stall) => Ended::Stalled,
                _ = closing.wait_for(|c| *c) => Ended::Shutdown,
            }
        };
        if outcome == Ended::Stalled {
            self.metrics.slow(FrontEnd::Grpc);
        }
        let status = match outcome {
            Ended::Stalled => Status::aborted(format!(
                "slow subscriber: no message taken for {} ms, disconnected; resume from the height after the last block you saw end",
                stall.as_millis()
            )),
            _ => crate::error::HubError::ShuttingDown.into(),
        };
        self.kill(status);
        Err(outcome)
    }

    /// Sends a message only if there is room now (heartbeats).
    pub fn try_send(&mut self, message: T) -> Result<(), Ended> {
        match self.tx.try_send(Ok(message)) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Ended::Gone),
        }
    }

    /// Ends the stream with `status` (after what is buffered when there is
    /// room, else at once).
    pub fn finish(mut self, status: Status) {
        if let Err(mpsc::error::TrySendError::Full(Err(status))) = self.tx.try_send(Err(status)) {
            self.kill(status);
        }
    }

    /// Resolves when the client went away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}
