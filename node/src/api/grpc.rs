//! The etcd v3 gRPC API (tonic) on the client URLs: `etcdserverpb.KV`, `Watch`, `Lease`,
//! `Cluster.MemberList` and `Maintenance.Status`, with etcd's service and method names, served
//! by the same [`Service`] as the native protocol (no second implementation of any semantics).
//! Errors carry etcd's gRPC codes and exact messages ([`crate::api::errors`]).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use etch_protocol::etcdserverpb::*;

use crate::api::errors::status_of;
use crate::error::ApiError;
use crate::service::Service;
use crate::watch::{CloseConnection, StreamSink};

/// Generated server traits (tonic) for etcd's services.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod generated {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

use generated::{
    cluster_server::{Cluster, ClusterServer},
    kv_server::{Kv, KvServer},
    lease_server::{Lease, LeaseServer},
    maintenance_server::{Maintenance, MaintenanceServer},
    watch_server::{Watch, WatchServer},
};

/// Headroom above `--max-request-bytes` for the gRPC receive limit (etcd adds the same kind of
/// margin so that a request at the limit still decodes and gets "request is too large").
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

fn status(e: ApiError) -> Status {
    let (code, msg) = status_of(&e);
    Status::new(tonic::Code::from(code as i32), msg)
}

/// The gRPC front end: one value serves every service.
#[derive(Clone)]
pub struct Grpc {
    svc: Arc<Service>,
    members: Arc<Vec<Member>>,
}

impl Grpc {
    /// A front end over `svc`; `members` answers MemberList (the bootstrap membership).
    pub fn new(svc: Arc<Service>, members: Vec<Member>) -> Grpc {
        Grpc {
            svc,
            members: Arc::new(members),
        }
    }

    /// Serves every service on `listener` until `shutdown` resolves.
    ///
    /// # Errors
    /// Transport errors of the server.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        max_request_bytes: usize,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let limit = max_request_bytes + GRPC_OVERHEAD_BYTES;
        tonic::transport::Server::builder()
            .add_service(KvServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(WatchServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(LeaseServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(ClusterServer::new(self.clone()))
            .add_service(MaintenanceServer::new(self))
            .serve_with_incoming_shutdown(nodelay(listener), shutdown)
            .await
    }
}

/// Accepted connections with `TCP_NODELAY` (tonic sets it only on listeners it binds itself):
/// without it, small responses can wait for the peer's delayed ACK.
fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio_stream::StreamExt::map(incoming, |s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

type Res<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Kv for Grpc {
    async fn range(&self, r: Request<RangeRequest>) -> Res<RangeResponse> {
        self.svc
            .range(r.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn put(&self, r: Request<PutRequest>) -> Res<PutResponse> {
        self.svc
            .put(r.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn delete_range(&self, r: Request<DeleteRangeRequest>) -> Res<DeleteRangeResponse> {
        self.svc
            .delete_range(r.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn txn(&self, r: Request<TxnRequest>) -> Res<TxnResponse> {
        self.svc
            .txn(r.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn compact(&self, r: Request<CompactionRequest>) -> Res<CompactionResponse> {
        self.svc
            .compact(r.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
}

#[tonic::async_trait]
impl Watch for Grpc {
    type WatchStream = BoxStream<WatchResponse>;

    /// One gRPC Watch call is one watch stream (etcd): its requests go to the watch actor in
    /// order; its responses come from a bounded buffer.
    async fn watch(&self, r: Request<Streaming<WatchRequest>>) -> Res<Self::WatchStream> {
        let mut inbound = r.into_inner();
        let conn = crate::api::next_connection_id();
        let (tx, rx) = mpsc::channel(self.svc.watch_limits().stream_buffer_responses);
        let sink = StreamSink::new(tx, self.svc.state_arc());
        let svc = self.svc.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                if crate::api::route_watch_request(&svc, (conn, 0), &sink, req)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            svc.watch().do_send(CloseConnection(conn));
        });
        let out = tokio_stream::StreamExt::map(ReceiverStream::new(rx), Ok);
        Ok(Response::new(Box::pin(out)))
    }
}

#[tonic::async_trait]
impl Lease for Grpc {
    type LeaseKeepAliveStream = BoxStream<LeaseKeepAliveResponse>;

    async fn lease_grant(&self, r: Request<LeaseGrantRequest>) -> Res<LeaseGrantResponse> {
        self.svc
            .lease_grant(r.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn lease_revoke(&self, r: Request<LeaseRevokeRequest>) -> Res<LeaseRevokeResponse> {
        self.svc
            .lease_revoke(r.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
    /// etcd's keep-alive stream: one response per request, in order.
    async fn lease_keep_alive(
        &self,
        r: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Res<Self::LeaseKeepAliveStream> {
        let mut inbound = r.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let svc = self.svc.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                let resp = svc.lease_keep_alive(req).await.map_err(status);
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
    async fn lease_time_to_live(
        &self,
        r: Request<LeaseTimeToLiveRequest>,
    ) -> Res<LeaseTimeToLiveResponse> {
        self.svc
            .lease_time_to_live(r.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn lease_leases(&self, _: Request<LeaseLeasesRequest>) -> Res<LeaseLeasesResponse> {
        self.svc
            .lease_leases()
            .await
            .map(Response::new)
            .map_err(status)
    }
}

#[tonic::async_trait]
impl Cluster for Grpc {
    async fn member_list(&self, _: Request<MemberListRequest>) -> Res<MemberListResponse> {
        Ok(Response::new(MemberListResponse {
            header: self.svc.status().header,
            members: self.members.as_ref().clone(),
        }))
    }
}

#[tonic::async_trait]
impl Maintenance for Grpc {
    async fn status(&self, _: Request<StatusRequest>) -> Res<StatusResponse> {
        Ok(Response::new(self.svc.status()))
    }
}
