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
//! before. Errors match what tonic answers for the same input: a message over the receive
//! limit is `OUT_OF_RANGE` "Error, decoded message length too large: found N bytes, the limit
//! is: M bytes", a compressed-flag message `INTERNAL`, an undecodable message `INTERNAL` with
//! prost's error, a body without a message `INTERNAL` "Missing request message.", a body
//! that ends mid-message `INTERNAL` "Unexpected EOF decoding stream." (bytes after the first
//! message are ignored, where tonic decodes and drops further messages); the service's errors
//! are etcd's codes and messages ([`crate::api::errors`]), as trailers-only answers.
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
#[derive(Clone, Copy)]
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
        let caller = crate::api::grpc::caller_of(req.headers(), req.extensions());
        let (svc, limit) = (self.svc.clone(), self.limit);
        Answer {
            routed: None,
            direct: Some(Box::pin(async move {
                let msg = match read_message(req.into_body(), limit).await {
                    Ok(m) => m,
                    Err(s) => return s.into_http(),
                };
                match method {
                    Method::Put => answer(msg, |r| calls::put(svc, caller, r)).await,
                    Method::Range => answer(msg, |r| calls::range(svc, caller, r)).await,
                    Method::DeleteRange => {
                        answer(msg, |r| calls::delete_range(svc, caller, r)).await
                    }
                    Method::Txn => answer(msg, |r| calls::txn(svc, caller, r)).await,
                }
            })),
        }
    }
}

/// Decodes the request `msg`, calls `call` with it and answers its response or error.
async fn answer<Req, Resp, F>(
    msg: Bytes,
    call: impl FnOnce(Req) -> F,
) -> Response<tonic::body::Body>
where
    Req: Message + Default,
    Resp: Message,
    F: Future<Output = Result<Resp, crate::error::ApiError>>,
{
    let req = match Req::decode(msg) {
        Ok(r) => r,
        // tonic-prost's decoder error, as tonic answers it.
        Err(e) => return Status::internal(e.to_string()).into_http(),
    };
    match call(req).await {
        Ok(resp) => ok(&resp),
        Err(e) => to_status(e).into_http(),
    }
}

/// The answer to a successful call: `content-type: application/grpc`, the message, then
/// `grpc-status: 0` trailers.
fn ok(resp: &impl Message) -> Response<tonic::body::Body> {
    let len = resp.encoded_len();
    let mut buf = BytesMut::with_capacity(HEADER_BYTES + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Cannot fail: the buffer has room for the whole message.
    let _ = resp.encode(&mut buf);
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut r = Response::new(tonic::body::Body::new(OneMessage {
        data: Some(buf.freeze()),
        trailers: Some(trailers),
    }));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

/// Reads the one request message of a unary call from `body` (its gRPC header stripped), then
/// the rest of the body to its end, keeping none of it.
///
/// # Errors
/// tonic's statuses for the same input (see the module doc); the body's own error as tonic
/// maps it.
async fn read_message(body: tonic::body::Body, limit: usize) -> Result<Bytes, Status> {
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    // The message's length once its header is read.
    let mut len = None;
    let mut first: Option<Bytes> = None;
    loop {
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(Status::from_error(e.into())),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                // Trailers: the request's end.
                Err(_) => break,
            },
        };
        let held = first.as_ref().map_or(buf.len(), Bytes::len);
        if len.is_some_and(|n: usize| held >= HEADER_BYTES + n) {
            // Past the message: ignored and not kept (tonic's unary path decodes further
            // messages and drops them; no gRPC client sends any).
            continue;
        }
        // The usual case: the whole message in one chunk, kept without a copy.
        if held == 0 {
            first = Some(data);
        } else {
            if let Some(f) = first.take() {
                buf.extend_from_slice(&f);
            }
            buf.extend_from_slice(&data);
        }
        let have: &[u8] = first.as_deref().unwrap_or(&buf);
        if len.is_none() && have.len() >= HEADER_BYTES {
            let mut h = &have[..HEADER_BYTES];
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
            len = Some(n);
        }
    }
    let whole = match first {
        Some(f) => f,
        None => buf.freeze(),
    };
    match len {
        None if whole.is_empty() => Err(Status::internal("Missing request message.")),
        Some(n) if whole.len() >= HEADER_BYTES + n => {
            Ok(whole.slice(HEADER_BYTES..HEADER_BYTES + n))
        }
        _ => Err(Status::internal("Unexpected EOF decoding stream.")),
    }
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
        match this.direct {
            Some(call) => call.as_mut().poll(cx).map(Ok),
            // Polled after it completed: tonic's server never does.
            None => Poll::Pending,
        }
    }
}
