//! Client-facing front ends. Each turns its wire requests into calls on the one
//! [`crate::service::Service`]; none implements key-value semantics of its own.

pub mod errors;
pub mod grpc;
pub mod native;
pub mod recipes;

use etch_protocol::etcdserverpb::WatchRequest;
use etch_protocol::etcdserverpb::watch_request::RequestUnion;

use crate::service::Service;
use crate::watch::{CancelWatch, CreateWatch, RequestProgress, StreamKey, StreamSink};

/// Connection ids, for naming watch streams (connection, stream id), shared by all front ends.
static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A fresh connection id.
pub(crate) fn next_connection_id() -> u64 {
    NEXT_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Routes one WatchRequest of `stream` to the watch actor (create, cancel or progress), in
/// order: the caller awaits each before reading the next, so a cancel never overtakes its create.
///
/// # Errors
/// The watch actor is gone (shutdown).
pub(crate) async fn route_watch_request(
    service: &Service,
    stream: StreamKey,
    sink: &StreamSink,
    req: WatchRequest,
) -> Result<(), actix::MailboxError> {
    let watch = service.watch();
    match req.request_union {
        Some(RequestUnion::CreateRequest(create)) => {
            watch
                .send(CreateWatch {
                    stream,
                    sink: sink.clone(),
                    req: create,
                })
                .await
        }
        Some(RequestUnion::CancelRequest(c)) => {
            watch
                .send(CancelWatch {
                    stream,
                    watch_id: c.watch_id,
                })
                .await
        }
        Some(RequestUnion::ProgressRequest(_)) => watch.send(RequestProgress(stream)).await,
        None => Ok(()),
    }
}

/// A watch the server opens for itself (the Lock and Election recipes wait on it), on its own
/// connection id; closed when dropped.
pub(crate) struct InternalWatch {
    conn: u64,
    rx: tokio::sync::mpsc::Receiver<etch_protocol::etcdserverpb::WatchResponse>,
    watch: actix::Addr<crate::watch::WatchActor>,
}

impl InternalWatch {
    /// Opens a watch for `req` (one watcher on a fresh stream).
    ///
    /// # Errors
    /// The watch actor is gone (shutdown).
    pub(crate) async fn open(
        service: &Service,
        req: etch_protocol::etcdserverpb::WatchCreateRequest,
    ) -> Result<InternalWatch, actix::MailboxError> {
        let conn = next_connection_id();
        let (tx, rx) = tokio::sync::mpsc::channel(service.watch_limits().stream_buffer_responses);
        let sink = StreamSink::new(tx, service.state_arc());
        let w = InternalWatch {
            conn,
            rx,
            watch: service.watch().clone(),
        };
        w.watch
            .send(CreateWatch {
                stream: (conn, 0),
                sink,
                req,
            })
            .await?;
        Ok(w)
    }

    /// The next response; `None` once the watch actor dropped the stream.
    pub(crate) async fn next(&mut self) -> Option<etch_protocol::etcdserverpb::WatchResponse> {
        self.rx.recv().await
    }
}

impl Drop for InternalWatch {
    fn drop(&mut self) {
        self.watch.do_send(crate::watch::CloseConnection(self.conn));
    }
}
