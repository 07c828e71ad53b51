//! Client-facing front ends. Each turns its wire requests into calls on the one
//! [`crate::service::Service`]; none implements key-value semantics of its own.

pub mod calls;
pub mod errors;
pub mod grpc;
pub mod grpc_metrics;
pub mod grpc_unary;
pub mod h2fix;
pub mod http;
pub mod native;

use std::sync::Arc;

use etch_protocol::etcdserverpb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};

use crate::service::Service;
pub(crate) use crate::service::watch::{WatchStream, next_connection_id};

/// The requests of a client stream (gRPC or HTTP), ending at its first error.
pub(crate) fn until_error<T, E, S>(s: S) -> std::pin::Pin<Box<dyn futures::Stream<Item = T> + Send>>
where
    T: Send + 'static,
    E: 'static,
    S: futures::Stream<Item = Result<T, E>> + Send + 'static,
{
    Box::pin(tokio_stream::StreamExt::map_while(s, Result::ok))
}

/// etcd's LeaseKeepAlive stream: one answer per request of `inbound`, in order, ending after
/// the first error or when `inbound` ends (etcd's server ends the stream on the client's EOF).
pub(crate) fn serve_keep_alive<S>(
    service: Arc<Service>,
    mut inbound: S,
) -> tokio_stream::wrappers::ReceiverStream<Result<LeaseKeepAliveResponse, tonic::Status>>
where
    S: futures::Stream<Item = LeaseKeepAliveRequest> + Send + Unpin + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(req) = futures::StreamExt::next(&mut inbound).await {
            let resp = service
                .lease_keep_alive(req)
                .await
                .map_err(errors::to_status);
            let failed = resp.is_err();
            if tx.send(resp).await.is_err() || failed {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
