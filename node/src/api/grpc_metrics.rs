//! A tower layer around the gRPC server that records go-grpc-prometheus's metrics (the ones
//! etcd exports and its dashboards use): `grpc_server_started_total`, `grpc_server_handled_total`
//! (by `grpc_code`), `grpc_server_msg_received_total`, `grpc_server_msg_sent_total`,
//! `grpc_server_handling_seconds` (unary calls), and etcd's
//! `etcd_network_client_grpc_{sent,received}_bytes_total`.
//!
//! It watches the HTTP/2 bodies only: message counts come from gRPC's length-prefixed framing
//! (5-byte header, then the message), the code from `grpc-status` in the response headers
//! (trailers-only answers) or trailers; a call whose response body is dropped before its
//! trailers (client gone) is counted as `Canceled`. Requests that are not gRPC (the HTTP
//! gateway, `/health`) pass through untouched.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{HeaderMap, Request, Response};
use bytes::{Buf, Bytes};
use http_body::{Body, Frame};
use metrics::{Counter, Histogram};

use crate::metrics as m;

/// The layer: wrap the gRPC server's routes with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

/// The service the layer builds.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

/// The metric handles of one method, built once (a registry lookup with labels per request
/// would cost more than the request's own bookkeeping).
struct Method {
    kind: &'static str,
    labels: [(&'static str, String); 3],
    started: Counter,
    msg_received: Counter,
    msg_sent: Counter,
    handling: Histogram,
    /// `grpc_server_handled_total` by code (0..=16).
    handled: [OnceLock<Counter>; 17],
}

/// Methods seen so far, by path.
static METHODS: LazyLock<RwLock<HashMap<String, Arc<Method>>>> = LazyLock::new(Default::default);

impl Method {
    fn of(path: &str) -> Arc<Method> {
        if let Some(m) = METHODS.read().unwrap_or_else(|p| p.into_inner()).get(path) {
            return m.clone();
        }
        let m = Arc::new(Method::new(path));
        METHODS
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(path.to_owned())
            .or_insert(m)
            .clone()
    }

    fn new(path: &str) -> Method {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let service = parts.next().unwrap_or_default().to_owned();
        let method = parts.next().unwrap_or_default().to_owned();
        let kind = match (service.as_str(), method.as_str()) {
            ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => {
                "bidi_stream"
            }
            ("etcdserverpb.Maintenance", "Snapshot")
            | ("v3electionpb.Election", "Observe")
            | ("grpc.health.v1.Health", "Watch") => "server_stream",
            _ => "unary",
        };
        let labels = [
            ("grpc_type", kind.to_owned()),
            ("grpc_service", service),
            ("grpc_method", method),
        ];
        Method {
            kind,
            started: metrics::counter!(m::GRPC_STARTED, &labels),
            msg_received: metrics::counter!(m::GRPC_MSG_RECEIVED, &labels),
            msg_sent: metrics::counter!(m::GRPC_MSG_SENT, &labels),
            handling: metrics::histogram!(m::GRPC_HANDLING, &labels),
            labels,
            handled: Default::default(),
        }
    }
}

/// Registers every method of etch's gRPC services at zero, as go-grpc-prometheus's
/// `InitializeMetrics` does for etcd: `grpc_server_started_total`, the message counters and
/// `grpc_server_handled_total` for each of the 17 codes exist from the start, so dashboards
/// and `rate()` see a series before the first call. Idempotent.
pub fn register_methods() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Some(pool) = crate::api::http::POOL.as_ref() else {
            return;
        };
        let mut paths: Vec<String> = pool
            .services()
            .flat_map(|s| {
                let name = s.full_name().to_owned();
                s.methods()
                    .map(move |m| format!("/{name}/{}", m.name()))
                    .collect::<Vec<_>>()
            })
            .collect();
        paths.push("/grpc.health.v1.Health/Check".into());
        paths.push("/grpc.health.v1.Health/Watch".into());
        for path in paths {
            let method = Method::of(&path);
            for code in 0..17u32 {
                method.handled_counter(code);
            }
        }
    });
}

impl Method {
    /// `grpc_server_handled_total` of this method for `code`, registered on first use.
    fn handled_counter(&self, code: u32) -> &Counter {
        let i = (code as usize).min(16);
        self.handled[i].get_or_init(|| {
            let mut l = self.labels.to_vec();
            l.push(("grpc_code", code_name(code).to_owned()));
            metrics::counter!(m::GRPC_HANDLED, &l)
        })
    }
}

/// One call: its method's handles and when it started. Each of the call's two bodies holds a
/// copy (the method's handles are shared).
#[derive(Clone)]
struct Call {
    method: Arc<Method>,
    start: Instant,
}

impl Call {
    fn handled(&self, code: u32) {
        let m = &self.method;
        m.handled_counter(code).increment(1);
        if m.kind == "unary" {
            m.handling.record(self.start.elapsed().as_secs_f64());
        }
    }
}

/// etcd's client byte counters (no labels), built once.
static BYTES: LazyLock<(Counter, Counter)> = LazyLock::new(|| {
    (
        metrics::counter!(m::GRPC_RECEIVED_BYTES),
        metrics::counter!(m::GRPC_SENT_BYTES),
    )
});

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<tonic::codegen::StdError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let grpc = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            return Answer {
                inner: self.inner.call(req.map(tonic::body::Body::new)),
                call: None,
            };
        }
        let call = Call {
            method: Method::of(req.uri().path()),
            start: Instant::now(),
        };
        call.method.started.increment(1);
        let req = req.map(|b| tonic::body::Body::new(Counted::new(b, Dir::In, call.clone())));
        Answer {
            inner: self.inner.call(req),
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer to one request: the inner service's, its body wrapped to count what it
    /// sends (gRPC calls only).
    pub struct Answer<F> {
        #[pin]
        inner: F,
        // `None`: not a gRPC request, passed through.
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for Answer<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Output = Result<Response<tonic::body::Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r?,
        };
        let Some(call) = this.call.take() else {
            return Poll::Ready(Ok(resp.map(tonic::body::Body::new)));
        };
        let code = grpc_status(resp.headers());
        Poll::Ready(Ok(resp.map(|b| {
            let mut body = Counted::new(b, Dir::Out, call);
            if let Some(code) = code {
                // Trailers-only answer: the call is done.
                body.tally.finish(code);
            }
            tonic::body::Body::new(body)
        })))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    In,
    Out,
}

pin_project_lite::pin_project! {
    /// A body that counts bytes and gRPC messages, and (responses) the final code.
    struct Counted<B> {
        #[pin]
        inner: B,
        tally: Tally,
    }
}

/// What one body of a call has seen.
struct Tally {
    dir: Dir,
    call: Call,
    /// The current message's 5-byte header as far as seen (`header_len` bytes), then its
    /// length once known (`remaining`).
    header: [u8; 5],
    header_len: usize,
    remaining: usize,
    done: bool,
}

impl<B> Counted<B> {
    fn new(inner: B, dir: Dir, call: Call) -> Counted<B> {
        Counted {
            inner,
            tally: Tally {
                dir,
                call,
                header: [0; 5],
                header_len: 0,
                remaining: 0,
                done: false,
            },
        }
    }
}

impl Tally {
    fn finish(&mut self, code: u32) {
        if self.dir == Dir::Out && !self.done {
            self.done = true;
            self.call.handled(code);
        }
    }

    /// Counts the data chunk's bytes and every message that starts in it.
    fn count(&mut self, mut data: &[u8]) {
        let bytes = if self.dir == Dir::In {
            &BYTES.0
        } else {
            &BYTES.1
        };
        bytes.increment(data.len() as u64);
        let mut msgs = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                let mut h = &self.header[1..];
                self.remaining = h.get_u32() as usize;
                self.header_len = 0;
                msgs += 1;
            }
        }
        if msgs > 0 {
            let m = &self.call.method;
            let c = if self.dir == Dir::In {
                &m.msg_received
            } else {
                &m.msg_sent
            };
            c.increment(msgs);
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.tally.count(d);
                } else if let Some(t) = frame.trailers_ref() {
                    let code = grpc_status(t).unwrap_or(2);
                    this.tally.finish(code);
                }
            }
            Poll::Ready(None) => this.tally.finish(0),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        // Dropped before the end: the client went away.
        self.finish(1);
    }
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// go-grpc's `codes.Code.String()`, the `grpc_code` label values.
pub fn code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}
