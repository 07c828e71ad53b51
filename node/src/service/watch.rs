//! etcd's Watch service as a stream of responses over the watch actor: one client stream's
//! requests (create, cancel, progress) are routed in order, with the read permission checked
//! at create (etcd `v3rpc/watch.go`); the native protocol, gRPC and the JSON gateway all use
//! it, and so do the lock and election recipes, which watch on a client's behalf.

use std::sync::Arc;

use etch_protocol::etcdserverpb::watch_request::RequestUnion;
use etch_protocol::etcdserverpb::{WatchRequest, WatchResponse};

use super::{AuthInfo, Service};
use crate::actors::watch::{CancelWatch, CreateWatch, RequestProgress, StreamKey, StreamSink};
use crate::error::ApiError;

/// Connection ids, for naming watch streams (connection, stream id), shared by all front ends.
static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A fresh connection id.
pub(crate) fn next_connection_id() -> u64 {
    NEXT_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Routes one WatchRequest of `stream` to the watch actor (create, cancel or progress), in
/// order: each is queued in the actor's mailbox without waiting for it to be handled, and the
/// actor handles one stream's requests in the order queued, so a cancel never overtakes its
/// create and responses keep the requests' order. A create `who` may not read is answered, as
/// etcd does, with a response that is created and canceled at once (watch ID -1, cancel
/// reason `etcdserver: permission denied`), sent by the actor in its turn.
///
/// # Errors
/// [`ApiError::Stopped`]: the watch actor is gone (shutdown).
pub(crate) async fn route_watch_request(
    service: &Service,
    who: &AuthInfo,
    stream: StreamKey,
    sink: &StreamSink,
    req: WatchRequest,
) -> Result<(), ApiError> {
    let watch = service.watch();
    match req.request_union {
        Some(RequestUnion::CreateRequest(create)) => {
            let refused = service
                .check_read(who, &create.key, &create.range_end)
                .err()
                .map(|e| WatchResponse {
                    header: service.local_header(),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: crate::error::status_of(&e).1.to_owned(),
                    ..Default::default()
                });
            let m = CreateWatch {
                stream,
                sink: sink.clone(),
                req: create,
                refused,
            };
            crate::actors::enqueue(watch, m).await
        }
        Some(RequestUnion::CancelRequest(c)) => {
            let m = CancelWatch {
                stream,
                watch_id: c.watch_id,
            };
            crate::actors::enqueue(watch, m).await
        }
        Some(RequestUnion::ProgressRequest(_)) => {
            crate::actors::enqueue(watch, RequestProgress(stream)).await
        }
        None => Ok(()),
    }
}

/// One watch stream (etcd's Watch RPC) with its own connection id: the responses of every
/// watcher created on it, from a bounded buffer. Its watchers are cancelled when it is dropped
/// (the client went away). Used by the gRPC and HTTP front ends and by the server itself (the
/// Lock and Election recipes).
pub(crate) struct WatchStream {
    conn: u64,
    rx: tokio::sync::mpsc::Receiver<WatchResponse>,
    sink: StreamSink,
    watch: actix::Addr<crate::actors::watch::WatchActor>,
}

impl WatchStream {
    /// A new, empty stream.
    pub(crate) fn new(service: &Service) -> WatchStream {
        let (tx, rx) = tokio::sync::mpsc::channel(service.watch_limits().stream_buffer_responses);
        WatchStream {
            conn: next_connection_id(),
            rx,
            sink: StreamSink::new(tx, service.state_arc()),
            watch: service.watch().clone(),
        }
    }

    /// A stream with one watcher for `req`, created as `who` (the server watching on a
    /// client's behalf).
    ///
    /// # Errors
    /// The watch actor is gone (shutdown).
    pub(crate) async fn open(
        service: &Service,
        who: &AuthInfo,
        req: etch_protocol::etcdserverpb::WatchCreateRequest,
    ) -> Result<WatchStream, ApiError> {
        let w = WatchStream::new(service);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(req)),
        };
        route_watch_request(service, who, (w.conn, 0), &w.sink, create).await?;
        Ok(w)
    }

    /// A stream driven by a client: each request of `inbound` goes to the watch actor in
    /// order (a task of its own). The end of `inbound` does not end the stream: as in etcd,
    /// events keep coming after the client half-closes.
    pub(crate) fn serve<S>(service: Arc<Service>, who: AuthInfo, mut inbound: S) -> WatchStream
    where
        S: futures::Stream<Item = WatchRequest> + Send + Unpin + 'static,
    {
        let w = WatchStream::new(&service);
        let (key, sink) = ((w.conn, 0), w.sink.clone());
        tokio::spawn(async move {
            while let Some(req) = futures::StreamExt::next(&mut inbound).await {
                if route_watch_request(&service, &who, key, &sink, req)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        w
    }

    /// The next response; `None` once the watch actor dropped the stream.
    pub(crate) async fn next(&mut self) -> Option<WatchResponse> {
        self.rx.recv().await
    }
}

impl futures::Stream for WatchStream {
    type Item = WatchResponse;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<WatchResponse>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.watch
            .do_send(crate::actors::watch::CloseConnection(self.conn));
    }
}
