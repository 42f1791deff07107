//! Hands a connection's verified client certificate to every request on
//! it, as a request extension.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;

use crate::tls::PeerCertificate;

#[derive(Clone)]
pub(crate) struct WithPeer<S> {
    pub(crate) inner: S,
    /// Shared by the connection's requests; cloned into each (small).
    pub(crate) peer: Option<Arc<PeerCertificate>>,
}

impl<S, ReqBody> tower::Service<Request<ReqBody>> for WithPeer<S>
where
    S: tower::Service<Request<ReqBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        if let Some(peer) = &self.peer {
            request
                .extensions_mut()
                .insert(PeerCertificate::clone(peer));
        }
        self.inner.call(request)
    }
}
