//! Client-facing front ends. Each turns its wire requests into calls on the one
//! [`crate::service::Service`]; none implements key-value semantics of its own.

pub mod errors;
pub mod grpc;
pub mod native;

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
