//! Requests in flight on one connection, so that an HTTP/2 connection with
//! no stream open can be closed after `idle_timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};

#[derive(Debug, Default)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    /// Requests started: a change between two looks means activity.
    started: AtomicU64,
}

impl Activity {
    /// Completes once no request was in flight or started for a whole
    /// `idle` period (looked at every `idle`).
    pub(crate) async fn idle_for(&self, idle: Duration) {
        let mut seen = self.started.load(Ordering::Acquire);
        loop {
            tokio::time::sleep(idle).await;
            let now = self.started.load(Ordering::Acquire);
            if now == seen && self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            seen = now;
        }
    }
}

/// One request in flight, until its response body is dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.started.fetch_add(1, Ordering::AcqRel);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A service whose requests count as activity until their responses'
/// bodies are done.
#[derive(Clone)]
pub(crate) struct Tracked<S> {
    pub(crate) inner: S,
    pub(crate) activity: Arc<Activity>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, B> tower::Service<Request<ReqBody>> for Tracked<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let guard = InFlight::start(&self.activity);
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|body| TrackedBody {
                inner: Box::pin(body),
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its request counted while it streams.
pub(crate) struct TrackedBody<B> {
    inner: Pin<Box<B>>,
    _guard: InFlight,
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.get_mut().inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
