//! The etcd v3 gRPC API (tonic) on the client URLs: `etcdserverpb.KV`, `Watch`, `Lease`,
//! `Cluster`, `Maintenance`, `v3lockpb.Lock`, `v3electionpb.Election` and the standard
//! `grpc.health.v1.Health`, with etcd's service and method names, served by the same
//! [`Service`] as the native protocol (no second implementation of any semantics). Errors carry
//! etcd's gRPC codes and exact messages ([`crate::api::errors`]).
//!
//! Not built yet, answered `Unimplemented` with a message naming it: membership changes
//! (MemberAdd/Remove/Update/Promote), Maintenance.Snapshot and raising alarms (etch has no
//! space quota yet, so no alarm is ever raised; AlarmList answers an empty list).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use etch_protocol::etcdserverpb::*;

use etch_protocol::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use etch_protocol::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

use crate::api::errors::to_status as status;
use crate::api::{WatchStream, recipes, serve_keep_alive, until_error};
use crate::service::Service;

/// Generated server traits (tonic) for etcd's services.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod generated {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));

    /// `v3lockpb.Lock`.
    pub mod lock {
        include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    }

    /// `v3electionpb.Election`.
    pub mod election {
        include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    }
}

use generated::election::election_server::{Election, ElectionServer};
use generated::lock::lock_server::{Lock, LockServer};
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

    /// The service behind every method.
    pub fn service(&self) -> Arc<Service> {
        self.svc.clone()
    }

    /// Serves every service on `listener` until `shutdown` resolves; HTTP/1.1 requests on
    /// the same port go to the JSON gateway, `/health` and `/version` ([`crate::api::http`]).
    /// With `tls`, every connection is TLS (`https://`); with client-certificate auth, a
    /// client without a certificate signed by the trusted CA is refused in the handshake.
    ///
    /// # Errors
    /// Transport errors of the server.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        max_request_bytes: usize,
        tls: Option<tonic::transport::ServerTlsConfig>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let limit = max_request_bytes + GRPC_OVERHEAD_BYTES;
        // grpc.health.v1: the empty service name (the whole server) is SERVING while it runs,
        // as etcd reports it.
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let shutdown = async move {
            shutdown.await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        };
        let http = crate::api::http::router(self.clone());
        let mut routes = tonic::service::Routes::from(http);
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        builder
            .accept_http1(true)
            .layer(crate::api::grpc_metrics::GrpcMetricsLayer)
            .add_routes(std::mem::take(&mut routes))
            .add_service(KvServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(WatchServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(LeaseServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(ClusterServer::new(self.clone()))
            .add_service(MaintenanceServer::new(self.clone()))
            .add_service(LockServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(ElectionServer::new(self).max_decoding_message_size(limit))
            .add_service(health_service)
            .serve_with_incoming_shutdown(nodelay(listener), shutdown)
            .await
    }
}

/// The TLS configuration of the client URLs: the certificate and key files, or a generated
/// self-signed certificate (`--auto-tls`); the trusted CA for client certificates, required
/// with `--client-cert-auth`.
///
/// # Errors
/// Unreadable files (named in the error), certificate generation failures.
pub fn server_tls(
    t: &crate::config::ClientTls,
) -> std::io::Result<tonic::transport::ServerTlsConfig> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let (cert, key) = match &t.cert_and_key {
        Some((c, k)) => (read(c)?, read(k)?),
        None => {
            let ck = rcgen::generate_simple_self_signed(vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
            ])
            .map_err(std::io::Error::other)?;
            (
                ck.cert.pem().into_bytes(),
                ck.signing_key.serialize_pem().into_bytes(),
            )
        }
    };
    let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &t.trusted_ca_file {
        cfg = cfg
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(!t.client_cert_auth);
    }
    Ok(cfg)
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
        let inbound = until_error(r.into_inner());
        let out = WatchStream::serve(self.svc.clone(), inbound);
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            out, Ok,
        ))))
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
        let inbound = until_error(r.into_inner());
        Ok(Response::new(Box::pin(serve_keep_alive(
            self.svc.clone(),
            inbound,
        ))))
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

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("etch: {what} is not supported yet"))
}

#[tonic::async_trait]
impl Cluster for Grpc {
    async fn member_add(&self, _: Request<MemberAddRequest>) -> Res<MemberAddResponse> {
        Err(unimplemented("MemberAdd (membership changes)"))
    }
    async fn member_remove(&self, _: Request<MemberRemoveRequest>) -> Res<MemberRemoveResponse> {
        Err(unimplemented("MemberRemove (membership changes)"))
    }
    async fn member_update(&self, _: Request<MemberUpdateRequest>) -> Res<MemberUpdateResponse> {
        Err(unimplemented("MemberUpdate (membership changes)"))
    }
    async fn member_list(&self, _: Request<MemberListRequest>) -> Res<MemberListResponse> {
        // Other members' client URLs are what their peer Hellos announced (empty until a
        // member has connected since this one started).
        let state = self.svc.state();
        let members = self
            .members
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if m.client_ur_ls.is_empty() {
                    m.client_ur_ls = state.client_urls(m.id).unwrap_or_default();
                }
                m
            })
            .collect();
        Ok(Response::new(MemberListResponse {
            header: self.svc.local_header(),
            members,
        }))
    }
    async fn member_promote(&self, _: Request<MemberPromoteRequest>) -> Res<MemberPromoteResponse> {
        Err(unimplemented("MemberPromote (membership changes)"))
    }
}

#[tonic::async_trait]
impl Maintenance for Grpc {
    type SnapshotStream = BoxStream<SnapshotResponse>;

    /// Alarms: etch raises none yet (no space quota), so GET and DEACTIVATE answer an empty
    /// list; ACTIVATE is refused.
    async fn alarm(&self, r: Request<AlarmRequest>) -> Res<AlarmResponse> {
        use alarm_request::AlarmAction;
        match AlarmAction::try_from(r.into_inner().action) {
            Ok(AlarmAction::Get) | Ok(AlarmAction::Deactivate) => {
                Ok(Response::new(AlarmResponse {
                    header: self.svc.local_header(),
                    alarms: Vec::new(),
                }))
            }
            _ => Err(unimplemented("raising alarms")),
        }
    }
    async fn status(&self, _: Request<StatusRequest>) -> Res<StatusResponse> {
        Ok(Response::new(self.svc.status()))
    }
    /// fjall compacts its files in the background, so there is nothing to defragment: the
    /// call succeeds at once (etcd rewrites its bbolt file here).
    async fn defragment(&self, _: Request<DefragmentRequest>) -> Res<DefragmentResponse> {
        Ok(Response::new(DefragmentResponse {
            header: self.svc.local_header(),
        }))
    }
    async fn hash(&self, _: Request<HashRequest>) -> Res<HashResponse> {
        self.svc.hash().await.map(Response::new).map_err(status)
    }
    async fn hash_kv(&self, r: Request<HashKvRequest>) -> Res<HashKvResponse> {
        self.svc
            .hash_kv(r.into_inner().revision)
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn snapshot(&self, _: Request<SnapshotRequest>) -> Res<Self::SnapshotStream> {
        Err(unimplemented("Snapshot (etcdctl snapshot save)"))
    }
    async fn move_leader(&self, r: Request<MoveLeaderRequest>) -> Res<MoveLeaderResponse> {
        self.svc
            .move_leader(r.into_inner().target_id)
            .await
            .map(Response::new)
            .map_err(status)
    }
}

#[tonic::async_trait]
impl Lock for Grpc {
    async fn lock(&self, r: Request<LockRequest>) -> Res<LockResponse> {
        recipes::lock(&self.svc, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn unlock(&self, r: Request<UnlockRequest>) -> Res<UnlockResponse> {
        recipes::unlock(&self.svc, r.into_inner())
            .await
            .map(Response::new)
    }
}

#[tonic::async_trait]
impl Election for Grpc {
    type ObserveStream = BoxStream<LeaderResponse>;

    async fn campaign(&self, r: Request<CampaignRequest>) -> Res<CampaignResponse> {
        recipes::campaign(&self.svc, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn proclaim(&self, r: Request<ProclaimRequest>) -> Res<ProclaimResponse> {
        recipes::proclaim(&self.svc, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn leader(&self, r: Request<LeaderRequest>) -> Res<LeaderResponse> {
        recipes::leader(&self.svc, r.into_inner())
            .await
            .map(Response::new)
    }
    /// A stream of leaders and proclamations; ends when the client goes away.
    async fn observe(&self, r: Request<LeaderRequest>) -> Res<Self::ObserveStream> {
        let (tx, rx) = mpsc::channel(16);
        let (svc, req) = (self.svc.clone(), r.into_inner());
        tokio::spawn(async move {
            // Stop following the election as soon as the client is gone, not at the next event.
            let gone = tx.clone();
            tokio::select! {
                _ = gone.closed() => {}
                _ = recipes::observe(svc, req, tx) => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
    async fn resign(&self, r: Request<ResignRequest>) -> Res<ResignResponse> {
        recipes::resign(&self.svc, r.into_inner())
            .await
            .map(Response::new)
    }
}
