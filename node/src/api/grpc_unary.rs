//! A direct path for the KV service's unary methods (`etcdserverpb.KV/Range`, `Put`,
//! `DeleteRange`, `Txn`): a tower layer inside tonic's server that answers them itself,
//! without tonic's router and per-call machinery, through the same [`calls`] as the
//! generated service (identity, learner and permission rules included).
//!
//! # Why
//! Each unary call through tonic's router pays for a route lookup (axum's, with its URL
//! parameters), a boxed clone of the route's service, a decoder and an encoder with an 8 KiB
//! buffer each, the request's metadata map and extensions moved into a `tonic::Request`, and
//! a boxed future per layer. These calls are what a Kubernetes control plane and etcd's
//! benchmark send most; this path decodes the one request message from the HTTP/2 body,
//! calls the service and answers one message and `grpc-status: 0` trailers
//! (docs/performance.md, "KV calls without tonic's router").
//!
//! # What takes the path
//! A POST to one of the four paths whose `content-type` is `application/grpc` or
//! `application/grpc+proto` and whose `grpc-encoding` is absent or `identity` (etcd's clients
//! do not compress). Anything else, a compressed request included, goes to tonic's router as
//! before. Requests are read as tonic's unary path reads them, with its statuses for the same
//! input: a message over the receive limit is `OUT_OF_RANGE` "Error, decoded message length
//! too large: found N bytes, the limit is: M bytes", a compressed or unknown flag `INTERNAL`,
//! an undecodable message `INTERNAL` with prost's error, a body without a message `INTERNAL`
//! "Missing request message.", a body that ends mid-message `INTERNAL` "Unexpected EOF
//! decoding stream."; messages after the first are decoded and dropped, request trailers are
//! merged into the headers (a `token` there counts), and a body the client cancels ends the
//! request. Answers: one message and `grpc-status: 0` trailers, or the service's error
//! ([`crate::api::errors`]: etcd's codes and messages) as a trailers-only answer.
//! Deadlines (`grpc-timeout`) still apply: tonic's server enforces them around its layers.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{self, HeaderMap, HeaderValue, Request, Response};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::{Body, Frame};
use prost::Message;
use tonic::Status;

use crate::api::calls;
use crate::api::errors::to_status;
use crate::service::Service;

/// The gRPC message header: a compressed flag (1 byte), then the length (4 bytes, big-endian).
const HEADER_BYTES: usize = 5;

/// The layer: add it to tonic's server inside the metrics layer, so direct calls are counted.
#[derive(Clone)]
pub struct UnaryLayer {
    svc: Arc<Service>,
    /// Largest request message accepted, in bytes (the generated services'
    /// `max_decoding_message_size`).
    limit: usize,
}

impl UnaryLayer {
    /// Direct KV calls on `svc`, refusing request messages over `limit` bytes.
    pub fn new(svc: Arc<Service>, limit: usize) -> UnaryLayer {
        UnaryLayer { svc, limit }
    }
}

impl<S> tower::Layer<S> for UnaryLayer {
    type Service = Unary<S>;

    fn layer(&self, inner: S) -> Unary<S> {
        Unary {
            inner,
            svc: self.svc.clone(),
            limit: self.limit,
        }
    }
}

/// The service the layer builds: the direct path, else `inner` (tonic's router).
#[derive(Clone)]
pub struct Unary<S> {
    inner: S,
    svc: Arc<Service>,
    limit: usize,
}

/// The methods the direct path serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Range,
    Put,
    DeleteRange,
    Txn,
}

impl Method {
    /// The method a request asks for, if the direct path serves it (see the module doc).
    fn of<B>(req: &Request<B>) -> Option<Method> {
        let m = match req.uri().path() {
            "/etcdserverpb.KV/Put" => Method::Put,
            "/etcdserverpb.KV/Range" => Method::Range,
            "/etcdserverpb.KV/Txn" => Method::Txn,
            "/etcdserverpb.KV/DeleteRange" => Method::DeleteRange,
            _ => return None,
        };
        let h = req.headers();
        let grpc = h
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/grpc" || v == "application/grpc+proto");
        let plain = h.get("grpc-encoding").is_none_or(|v| v == "identity");
        (req.method() == http::Method::POST && grpc && plain).then_some(m)
    }
}

/// A boxed direct call.
type Direct = Pin<Box<dyn Future<Output = Response<tonic::body::Body>> + Send>>;

impl<S> tower::Service<Request<tonic::body::Body>> for Unary<S>
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let Some(method) = Method::of(&req) else {
            return Answer {
                routed: Some(self.inner.call(req)),
                direct: None,
            };
        };
        let (svc, limit) = (self.svc.clone(), self.limit);
        let (parts, body) = req.into_parts();
        Answer {
            routed: None,
            direct: Some(Box::pin(async move {
                match method {
                    Method::Put => answer(parts, body, limit, |c, r| calls::put(svc, c, r)).await,
                    Method::Range => {
                        answer(parts, body, limit, |c, r| calls::range(svc, c, r)).await
                    }
                    Method::DeleteRange => {
                        answer(parts, body, limit, |c, r| calls::delete_range(svc, c, r)).await
                    }
                    Method::Txn => answer(parts, body, limit, |c, r| calls::txn(svc, c, r)).await,
                }
            })),
        }
    }
}

/// Reads the request message from `body`, calls `call` with the caller (from the request's
/// headers, request trailers merged into them as tonic merges them into its metadata, and
/// extensions) and the message, and answers its response or error.
async fn answer<Req, Resp, F>(
    mut parts: http::request::Parts,
    body: tonic::body::Body,
    limit: usize,
    call: impl FnOnce(calls::Caller, Req) -> F,
) -> Response<tonic::body::Body>
where
    Req: Message + Default,
    Resp: Message,
    F: Future<Output = Result<Resp, crate::error::ApiError>>,
{
    let (req, trailers) = match read_request::<Req>(body, limit).await {
        Ok(r) => r,
        Err(s) => return s.into_http(),
    };
    if let Some(t) = trailers {
        parts.headers.extend(t);
    }
    let caller = crate::api::grpc::caller_of(&parts.headers, &parts.extensions);
    match call(caller, req).await {
        Ok(resp) => ok(&resp),
        Err(e) => to_status(e).into_http(),
    }
}

/// The answer to a successful call: `content-type: application/grpc`, the message, then
/// `grpc-status: 0` trailers. A message over gRPC's 4 GiB frame limit is not sent: its
/// trailers carry tonic's `RESOURCE_EXHAUSTED` instead.
fn ok(resp: &impl Message) -> Response<tonic::body::Body> {
    let len = resp.encoded_len();
    let (data, trailers) = match u32::try_from(len) {
        Ok(n) => {
            let mut buf = BytesMut::with_capacity(HEADER_BYTES + len);
            buf.put_u8(0);
            buf.put_u32(n);
            // Cannot fail: the buffer has room for the whole message.
            let _ = resp.encode(&mut buf);
            let mut t = HeaderMap::with_capacity(1);
            t.insert("grpc-status", HeaderValue::from_static("0"));
            (Some(buf.freeze()), t)
        }
        Err(_) => {
            let s = Status::resource_exhausted(format!(
                "Cannot return body with more than 4GB of data but got {len} bytes"
            ));
            let mut t = HeaderMap::with_capacity(2);
            // Cannot fail: the message is ASCII.
            let _ = s.add_header(&mut t);
            (None, t)
        }
    };
    let mut r = Response::new(tonic::body::Body::new(OneMessage {
        data,
        trailers: Some(trailers),
    }));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

/// Reads a unary call's request from `body`: its first message, decoded as soon as it is
/// whole, then the rest of the body as tonic's unary path reads it (further messages decoded
/// and dropped, so a malformed one still fails the call), and the request's trailers if it
/// sent any. Memory: the first message's bytes (its decoded fields share them), one partial
/// message (at most `limit` bytes and its header) and one DATA frame; each byte is copied at
/// most once.
///
/// # Errors
/// tonic's statuses for the same input (see the module doc), checked in the same order; the
/// body's own error as tonic maps it. A body the client cancelled ends the request as tonic
/// ends it: the call goes on if its message was whole, else "Missing request message.".
async fn read_request<Req: Message + Default>(
    body: tonic::body::Body,
    limit: usize,
) -> Result<(Req, Option<HeaderMap>), Status> {
    let mut body = std::pin::pin!(body);
    let mut first: Option<Req> = None;
    // Bytes not yet parsed into a message: a message's header, or a message's header and
    // part of its body.
    let mut buf = BytesMut::new();
    loop {
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        let data = match frame {
            None => {
                if !buf.is_empty() {
                    return Err(Status::internal("Unexpected EOF decoding stream."));
                }
                break;
            }
            Some(Err(e)) => {
                let s = Status::from_error(e.into());
                if s.code() == tonic::Code::Cancelled {
                    break;
                }
                return Err(s);
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(f) => {
                    // Request trailers end the body; what is held of a further message is
                    // dropped, as tonic drops it.
                    let Some(req) = first else {
                        return Err(Status::internal("Missing request message."));
                    };
                    return Ok((req, f.into_trailers().ok()));
                }
            },
        };
        let mut decode = |mut msg: Bytes| {
            msg.advance(HEADER_BYTES);
            let decoded = Req::decode(msg).map_err(|e| Status::internal(e.to_string()))?;
            first.get_or_insert(decoded);
            Ok::<(), Status>(())
        };
        if buf.is_empty() {
            // The usual case: whole messages in one chunk, taken without a copy.
            let mut chunk = data;
            while let Some(len) = whole_message(&chunk, limit)? {
                decode(chunk.split_to(len))?;
            }
            buf.extend_from_slice(&chunk);
        } else {
            // Each byte is copied once: whole messages are split off the buffer.
            buf.extend_from_slice(&data);
            while let Some(len) = whole_message(&buf, limit)? {
                decode(buf.split_to(len).freeze())?;
            }
        }
        // Room for the rest of a message whose header is whole (at most `limit` bytes).
        if buf.len() >= HEADER_BYTES {
            let len = HEADER_BYTES + (&buf[1..HEADER_BYTES]).get_u32() as usize;
            buf.reserve(len.saturating_sub(buf.len()));
        }
    }
    first
        .map(|r| (r, None))
        .ok_or_else(|| Status::internal("Missing request message."))
}

/// The length (header included) of the whole message at the start of `bytes`; `None` while
/// `bytes` holds less than a whole message.
///
/// # Errors
/// A compressed or unknown flag, a length over `limit` (tonic's statuses), as soon as the
/// message's header is whole.
fn whole_message(bytes: &[u8], limit: usize) -> Result<Option<usize>, Status> {
    if bytes.len() < HEADER_BYTES {
        return Ok(None);
    }
    let mut h = &bytes[..HEADER_BYTES];
    match h.get_u8() {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
            )));
        }
    }
    let n = h.get_u32() as usize;
    if n > limit {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {n} bytes, the limit is: {limit} bytes"
        )));
    }
    Ok((bytes.len() >= HEADER_BYTES + n).then_some(HEADER_BYTES + n))
}

/// A response body of one data frame, then trailers.
struct OneMessage {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for OneMessage {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

pin_project_lite::pin_project! {
    /// The answer to one request: tonic's router's, or the direct path's.
    pub struct Answer<F> {
        // Through tonic's router.
        #[pin]
        routed: Option<F>,
        // Served here (when `routed` is `None`).
        direct: Option<Direct>,
    }
}

impl<F, E> Future for Answer<F>
where
    F: Future<Output = Result<Response<tonic::body::Body>, E>>,
{
    type Output = Result<Response<tonic::body::Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(inner) = this.routed.as_pin_mut() {
            return inner.poll(cx);
        }
        let Some(call) = this.direct else {
            // Polled after it completed: hyper never does.
            return Poll::Pending;
        };
        let answered = std::task::ready!(call.as_mut().poll(cx));
        *this.direct = None;
        Poll::Ready(Ok(answered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::builder()
            .method(method)
            .uri(format!("http://a{path}"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    fn read(
        frames: Vec<Frame<Bytes>>,
    ) -> Result<(etch_protocol::etcdserverpb::RangeRequest, Option<HeaderMap>), Status> {
        let frames = frames.into_iter().map(Ok::<_, Infallible>);
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )));
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(read_request(body, 1024))
    }

    fn framed(msg: &impl Message) -> Vec<u8> {
        let mut b = vec![0];
        b.extend_from_slice(&(msg.encoded_len() as u32).to_be_bytes());
        b.extend_from_slice(&msg.encode_to_vec());
        b
    }

    #[test]
    fn a_request_reads_the_same_in_any_split_and_drops_what_follows_its_trailers() {
        let want = etch_protocol::etcdserverpb::RangeRequest {
            key: Bytes::from_static(b"some key"),
            limit: 7,
            ..Default::default()
        };
        let whole = framed(&want);
        let one_byte_frames = whole
            .iter()
            .map(|b| Frame::data(Bytes::copy_from_slice(&[*b])))
            .collect();
        assert_eq!(read(one_byte_frames).unwrap(), (want.clone(), None));
        // A message, then part of another, then trailers: the call goes on (as tonic's).
        let mut t = HeaderMap::new();
        t.insert("token", HeaderValue::from_static("t"));
        let frames = vec![
            Frame::data(Bytes::from(whole.clone())),
            Frame::data(Bytes::copy_from_slice(&whole[..3])),
            Frame::trailers(t.clone()),
        ];
        assert_eq!(read(frames).unwrap(), (want.clone(), Some(t)));
        // The same without trailers: the body ends mid-message.
        let frames = vec![
            Frame::data(Bytes::from(whole.clone())),
            Frame::data(Bytes::copy_from_slice(&whole[..3])),
        ];
        let e = read(frames).unwrap_err();
        assert_eq!(e.message(), "Unexpected EOF decoding stream.");
        // A second message over the limit fails the call as soon as its header is whole.
        let frames = vec![
            Frame::data(Bytes::from(whole)),
            Frame::data(Bytes::from_static(&[0, 0, 0, 8, 0])),
        ];
        let e = read(frames).unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    }

    #[test]
    fn plain_grpc_calls_of_the_four_kv_methods_take_the_direct_path() {
        let grpc = [("content-type", "application/grpc")];
        for (path, m) in [
            ("/etcdserverpb.KV/Range", Method::Range),
            ("/etcdserverpb.KV/Put", Method::Put),
            ("/etcdserverpb.KV/DeleteRange", Method::DeleteRange),
            ("/etcdserverpb.KV/Txn", Method::Txn),
        ] {
            assert_eq!(Method::of(&req("POST", path, &grpc)), Some(m), "{path}");
            let proto = [("content-type", "application/grpc+proto")];
            assert_eq!(Method::of(&req("POST", path, &proto)), Some(m), "{path}");
            let identity = [grpc[0], ("grpc-encoding", "identity")];
            assert_eq!(Method::of(&req("POST", path, &identity)), Some(m), "{path}");
        }
        let put = "/etcdserverpb.KV/Put";
        for (what, r) in [
            (
                "another method",
                req("POST", "/etcdserverpb.KV/Compact", &grpc),
            ),
            (
                "another service",
                req("POST", "/etcdserverpb.Lease/LeaseGrant", &grpc),
            ),
            ("not a POST", req("GET", put, &grpc)),
            ("no content-type", req("POST", put, &[])),
            (
                "JSON",
                req("POST", put, &[("content-type", "application/json")]),
            ),
            (
                "a content-type parameter",
                req(
                    "POST",
                    put,
                    &[("content-type", "application/grpc; charset=utf-8")],
                ),
            ),
            (
                "gRPC-Web",
                req("POST", put, &[("content-type", "application/grpc-web")]),
            ),
            (
                "compressed",
                req("POST", put, &[grpc[0], ("grpc-encoding", "gzip")]),
            ),
        ] {
            assert_eq!(Method::of(&r), None, "{what}");
        }
    }
}
