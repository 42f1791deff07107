//! `StateStream/Subscribe` and `StateStream/Snapshot` answered without
//! copying blocks and chunks: the response body is the gRPC frames
//! themselves, and a block's frame is a few header bytes followed by the
//! block's encoded bytes, shared by every subscriber (tonic's encoder would
//! copy each message into a buffer per subscriber); a snapshot chunk's,
//! the bytes encoded from the store's iterator. h2 writes a large data
//! chunk as it is (vectored I/O), so a block goes from its one encoding to
//! the sockets without another copy.
//!
//! Every other method, and every error, is tonic's: the request passes the
//! same token check, is decoded as tonic would, and goes to the same
//! [`StateStream`] method; only the encoding of its messages differs.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Frame;
use prost::Message;
use prost::bytes::{BufMut, Bytes, BytesMut};
use tokio_stream::Stream;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Request, Status};

use crate::grpc::{Auth, StateStreamService};
use crate::outbox::Outbox;
use crate::proto::server::{self as v1, state_stream_server::StateStream};
use crate::wire::Encoded;

/// The methods answered here.
const SUBSCRIBE: &str = "/statestream.v1.StateStream/Subscribe";
const SNAPSHOT: &str = "/statestream.v1.StateStream/Snapshot";

/// The largest request accepted (tonic's default decoding limit).
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// The `statestream.v1.StateStream` service: `Subscribe` here, every other
/// method by `inner` (tonic's generated server behind the token check).
#[derive(Clone)]
pub(crate) struct StateStreamRoute<S> {
    pub inner: S,
    pub service: StateStreamService,
    pub auth: Auth,
}

impl<S> NamedService for StateStreamRoute<S> {
    const NAME: &'static str = "statestream.v1.StateStream";
}

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

impl<S, B> Service<HttpRequest> for StateStreamRoute<S>
where
    S: Service<HttpRequest, Response = http::Response<B>, Error = Infallible> + Send,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<HttpResponse, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let path = request.uri().path();
        if path != SUBSCRIBE && path != SNAPSHOT {
            let fut = self.inner.call(request);
            return Box::pin(async move { Ok(fut.await?.map(tonic::body::Body::new)) });
        }
        let service = self.service.clone();
        let auth = self.auth.clone();
        let subscribe = path == SUBSCRIBE;
        Box::pin(async move {
            let answer: Result<HttpResponse, Status> = async {
                Ok(if subscribe {
                    let r = checked_request(&auth, request).await?;
                    response(service.subscribe(r).await?.into_inner())
                } else {
                    let r = checked_request(&auth, request).await?;
                    response(service.snapshot(r).await?.into_inner())
                })
            }
            .await;
            Ok(answer.unwrap_or_else(Status::into_http))
        })
    }
}

/// The request checked for its token and decoded, as tonic would.
async fn checked_request<M: Message + Default>(
    auth: &Auth,
    request: HttpRequest,
) -> Result<Request<M>, Status> {
    let (parts, body) = request.into_parts();
    // Metadata and extensions (the peer's address) as tonic passes them.
    let checked = auth.check(Request::from_http(http::Request::from_parts(parts, ())))?;
    let body = axum::body::to_bytes(axum::body::Body::new(body), MAX_REQUEST + 5)
        .await
        .map_err(|e| Status::invalid_argument(format!("cannot read the request: {e}")))?;
    let message = unframe(&body)?;
    let decoded = M::decode(message)
        .map_err(|e| Status::internal(format!("cannot decode the request: {e}")))?;
    let (metadata, extensions, ()) = checked.into_parts();
    Ok(Request::from_parts(metadata, extensions, decoded))
}

/// The streaming response whose body is `outbox`'s messages as frames.
fn response<M: Framed>(outbox: Outbox<M>) -> HttpResponse {
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

/// A message that may carry bytes encoded ahead ([`Encoded`]), passed on
/// as they are.
trait Framed: Message + Send + 'static {
    /// The encoded bytes, and the field that holds them (`None`: they are
    /// the whole message).
    fn encoded(&self) -> Option<(Option<u32>, &Encoded)>;
}

impl Framed for v1::SubscribeResponse {
    fn encoded(&self) -> Option<(Option<u32>, &Encoded)> {
        use v1::subscribe_response::Message as M;
        match &self.message {
            Some(M::Snapshot(chunk)) => Some((Some(1), chunk)),
            Some(M::Block(block)) => Some((Some(2), block)),
            _ => None,
        }
    }
}

impl Framed for Encoded {
    fn encoded(&self) -> Option<(Option<u32>, &Encoded)> {
        Some((None, self))
    }
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
struct SharedFrames<M> {
    outbox: Outbox<M>,
    /// Chunks of the frame being sent.
    ready: VecDeque<Bytes>,
    done: bool,
}

/// The header of a frame of `len` bytes, plus `extra` bytes after it.
fn frame_header(len: usize, extra: &[u8]) -> BytesMut {
    let mut header = BytesMut::with_capacity(5 + extra.len());
    header.put_u8(0);
    header.put_u32(len as u32);
    header.put_slice(extra);
    header
}

impl<M: Framed> SharedFrames<M> {
    /// Queues the frame of one message.
    fn push(&mut self, message: M) {
        if let Some((tag, encoded)) = message.encoded() {
            let shared = encoded.0.clone();
            // The field (tag, length), then the bytes as they are.
            let mut field = Vec::with_capacity(11);
            if let Some(tag) = tag {
                prost::encoding::encode_key(
                    tag,
                    prost::encoding::WireType::LengthDelimited,
                    &mut field,
                );
                prost::encoding::encode_varint(shared.len() as u64, &mut field);
            }
            let header = frame_header(field.len() + shared.len(), &field);
            self.ready.push_back(header.freeze());
            if !shared.is_empty() {
                self.ready.push_back(shared);
            }
            return;
        }
        let len = message.encoded_len();
        let mut frame = frame_header(len, &[]);
        frame.reserve(len);
        // Cannot fail: the buffer has room for `len` bytes.
        let _ = message.encode(&mut frame);
        self.ready.push_back(frame.freeze());
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

impl<M: Framed> http_body::Body for SharedFrames<M> {
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
                Poll::Ready(Some(Ok(message))) => self.push(message),
                Poll::Ready(Some(Err(status))) => {
                    self.done = true;
                    return Poll::Ready(Some(Ok(trailers(&status))));
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
        let encoded = Encoded(Bytes::from_static(b"\x08\x07\x20\x01"));
        let message = v1::SubscribeResponse {
            message: Some(v1::subscribe_response::Message::Block(encoded)),
        };
        let expected = message.encode_to_vec();
        let mut frames = SharedFrames {
            outbox: crate::outbox::channel::<v1::SubscribeResponse>(
                std::time::Duration::from_secs(1),
                tokio::sync::watch::channel(false).1,
                std::sync::Arc::default(),
            )
            .1,
            ready: VecDeque::new(),
            done: false,
        };
        frames.push(message);
        let wire: Vec<u8> = frames
            .ready
            .iter()
            .flat_map(|b| b.iter().copied())
            .collect();
        assert_eq!(wire[0], 0);
        assert_eq!(
            u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize,
            expected.len()
        );
        assert_eq!(&wire[5..], &expected[..]);
    }
}
