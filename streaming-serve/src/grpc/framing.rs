//! `statestream.v1.StateStream` on the wire. `Subscribe` and `Snapshot`
//! are answered without copying blocks and chunks: the response body is
//! the gRPC frames themselves, and a block's frame is a few header bytes
//! followed by the block's encoded bytes, shared by every subscriber
//! (tonic's encoder would copy each message into a buffer per subscriber);
//! a snapshot chunk's, the bytes encoded from the store's iterator. h2
//! writes a large data chunk as it is (vectored I/O), so a block goes from
//! its one encoding to the sockets without another copy.
//!
//! The unary methods go through tonic's own unary handling; every request
//! passes the access check first.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Frame;
use prost::Message;
use prost::bytes::{BufMut, Bytes, BytesMut};
use tokio_stream::Stream;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::state_stream::{Method, StateStreamService};
use super::wire::Framed;
use super::{credential, gate_then_access};
use crate::access::Access;
use crate::outbox::Outbox;
use crate::proto::v1 as pb;

/// The methods of `statestream.v1.StateStream`.
const SUBSCRIBE: &str = "/statestream.v1.StateStream/Subscribe";
const SNAPSHOT: &str = "/statestream.v1.StateStream/Snapshot";
const LIST_STORES: &str = "/statestream.v1.StateStream/ListStores";
const PUSH_UPDATE: &str = "/statestream.v1.StateStream/PushUpdate";

/// The largest request accepted.
const MAX_REQUEST: usize = super::GRPC_DEFAULT_MAX_MESSAGE;

/// The bytes of a gRPC frame's header: a compression flag and a
/// big-endian length.
const FRAME_HEADER: usize = 5;

/// The `statestream.v1.StateStream` service.
#[derive(Clone)]
pub(crate) struct StateStreamRoute {
    pub service: StateStreamService,
    pub access: Access,
}

impl NamedService for StateStreamRoute {
    const NAME: &'static str = "statestream.v1.StateStream";
}

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

impl Service<HttpRequest> for StateStreamRoute {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<HttpResponse, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let route = self.clone();
        Box::pin(async move {
            Ok(route
                .answer(request)
                .await
                .unwrap_or_else(Status::into_http))
        })
    }
}

impl StateStreamRoute {
    async fn answer(self, request: HttpRequest) -> Result<HttpResponse, Status> {
        let grant = {
            let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
            let peer = request
                .extensions()
                .get::<statestream_net::PeerCertificate>();
            gate_then_access(&self.access, credential(&metadata), peer)?
        };
        let service = self.service;
        match request.uri().path() {
            SUBSCRIBE => {
                let r: pb::SubscribeRequest = decode(request).await?;
                let method = Method::Subscribe(r.start);
                Ok(response(service.open(&grant, r.filter, method)?))
            }
            SNAPSHOT => {
                let r: pb::SnapshotRequest = decode(request).await?;
                Ok(response(service.open(
                    &grant,
                    r.filter,
                    Method::Snapshot,
                )?))
            }
            LIST_STORES => Ok(unary(
                request,
                move |_: Request<pb::ListStoresRequest>| async move {
                    service.list_stores(&grant).map(Response::new)
                },
            )
            .await),
            PUSH_UPDATE => Ok(unary(
                request,
                move |r: Request<pb::PushUpdateRequest>| async move {
                    service
                        .push_update(&grant, r.into_inner())
                        .await
                        .map(Response::new)
                },
            )
            .await),
            other => Err(Status::unimplemented(format!("no method {other}"))),
        }
    }
}

/// A unary method answered by `f`, decoded and encoded by tonic.
async fn unary<M1, M2, F, Fut>(request: HttpRequest, f: F) -> HttpResponse
where
    M1: Message + Default + Send + 'static,
    M2: Message + Send + 'static,
    F: FnOnce(Request<M1>) -> Fut,
    Fut: Future<Output = Result<Response<M2>, Status>> + Send + 'static,
{
    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<M2, M1>::default());
    grpc.unary(Unary(Some(f)), request).await
}

/// A one-shot unary handler as the service tonic's unary handling calls.
struct Unary<F>(Option<F>);

impl<M1, M2, F, Fut> Service<Request<M1>> for Unary<F>
where
    F: FnOnce(Request<M1>) -> Fut,
    Fut: Future<Output = Result<Response<M2>, Status>> + Send + 'static,
{
    type Response = Response<M2>;
    type Error = Status;
    type Future = BoxFuture<Response<M2>, Status>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<M1>) -> Self::Future {
        match self.0.take() {
            Some(f) => Box::pin(f(request)),
            None => Box::pin(async { Err(Status::internal("the request was answered already")) }),
        }
    }
}

/// The one message of a request, decoded as tonic would.
async fn decode<M: Message + Default>(request: HttpRequest) -> Result<M, Status> {
    let body = axum::body::to_bytes(
        axum::body::Body::new(request.into_body()),
        MAX_REQUEST + FRAME_HEADER,
    )
    .await
    .map_err(|e| Status::invalid_argument(format!("cannot read the request: {e}")))?;
    M::decode(unframe(&body)?)
        .map_err(|e| Status::internal(format!("cannot decode the request: {e}")))
}

/// The streaming response whose body is `outbox`'s messages as frames.
fn response(outbox: Outbox<Framed>) -> HttpResponse {
    let mut response = http::Response::new(tonic::body::Body::new(SharedFrames {
        outbox,
        ready: VecDeque::new(),
        done: false,
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The one message of a unary request body: a flag byte (0: not
/// compressed), a big-endian length, the message.
fn unframe(body: &[u8]) -> Result<&[u8], Status> {
    let Some((&flag, rest)) = body.split_first() else {
        return Err(Status::invalid_argument("the request has no message"));
    };
    if flag != 0 {
        return Err(Status::unimplemented(
            "compressed requests are not supported",
        ));
    }
    let (len, message) = match rest.split_first_chunk::<4>() {
        Some((len, message)) => (u32::from_be_bytes(*len) as usize, message),
        None => return Err(Status::invalid_argument("the request's frame is cut short")),
    };
    if len > MAX_REQUEST {
        return Err(Status::resource_exhausted(format!(
            "the request is {len} bytes; at most {MAX_REQUEST} are accepted"
        )));
    }
    if message.len() != len {
        return Err(Status::invalid_argument(format!(
            "the request's frame says {len} bytes and carries {}",
            message.len()
        )));
    }
    Ok(message)
}

/// The response body: each message as a gRPC frame, a block's encoded
/// bytes passed on as they are; then the status as trailers.
struct SharedFrames {
    outbox: Outbox<Framed>,
    /// Chunks of the frame being sent.
    ready: VecDeque<Bytes>,
    done: bool,
}

/// The header of a frame of `len` bytes, plus `extra` bytes after it.
fn frame_header(len: usize, extra: &[u8]) -> BytesMut {
    let mut header = BytesMut::with_capacity(FRAME_HEADER + extra.len());
    header.put_u8(0);
    header.put_u32(len as u32);
    header.put_slice(extra);
    header
}

/// Queues the frame of one message: its header (with the
/// `SubscribeResponse` field's key and length, if any), then the shared
/// bytes as they are.
fn push_frame(message: Framed, ready: &mut VecDeque<Bytes>) {
    let mut field = Vec::new();
    if let Some(f) = message.field {
        f.len_prefix(message.bytes.len(), &mut field);
    }
    let header = frame_header(field.len() + message.bytes.len(), &field);
    ready.push_back(header.freeze());
    if !message.bytes.is_empty() {
        ready.push_back(message.bytes);
    }
}

/// The status as trailers.
fn trailers(status: &Status) -> Frame<Bytes> {
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        trailers.insert("grpc-status", HeaderValue::from_static("13"));
    }
    Frame::trailers(trailers)
}

impl http_body::Body for SharedFrames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.outbox).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(message))) => push_frame(message, &mut self.ready),
                Poll::Ready(Some(Err(end))) => {
                    self.done = true;
                    return Poll::Ready(Some(Ok(trailers(&end.into()))));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(Some(Ok(trailers(&Status::ok("")))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.ready.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unframe_takes_one_uncompressed_message() {
        let mut body = vec![0, 0, 0, 0, 3];
        body.extend_from_slice(b"abc");
        assert_eq!(unframe(&body).unwrap(), b"abc");
    }

    #[test]
    fn unframe_refuses_bad_frames_with_their_reason() {
        assert_eq!(
            unframe(&[]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            unframe(&[1, 0, 0, 0, 0]).unwrap_err().code(),
            tonic::Code::Unimplemented
        );
        assert_eq!(
            unframe(&[0, 0, 0]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let short = unframe(&[0, 0, 0, 0, 9, 1]).unwrap_err();
        assert_eq!(short.code(), tonic::Code::InvalidArgument);
        assert!(
            short.message().contains("says 9 bytes"),
            "{}",
            short.message()
        );
        assert_eq!(
            unframe(&[0, 0xff, 0xff, 0xff, 0xff]).unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn a_block_frame_is_the_message_tonic_would_encode() {
        use crate::proto::v1 as pb;
        let block = pb::BlockChanges {
            height: 7,
            end: true,
            ..Default::default()
        };
        let message = pb::SubscribeResponse {
            message: Some(pb::subscribe_response::Message::Block(block.clone())),
        };
        let expected = message.encode_to_vec();
        let framed = Framed::field(
            super::super::wire::SUBSCRIBE_BLOCK,
            block.encode_to_vec().into(),
        );
        assert_eq!(
            crate::outbox::Measured::wire_len(&framed),
            expected.len(),
            "the metrics count the message's bytes"
        );
        let mut ready = VecDeque::new();
        push_frame(framed, &mut ready);
        let wire: Vec<u8> = ready.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(wire[0], 0);
        assert_eq!(
            u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize,
            expected.len()
        );
        assert_eq!(&wire[5..], &expected[..]);
    }
}
