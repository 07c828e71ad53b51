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
    auth_server::{Auth, AuthServer},
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
        tls: Option<Arc<rustls::ServerConfig>>,
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
        let router = tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(crate::api::grpc_metrics::GrpcMetricsLayer)
            .add_routes(std::mem::take(&mut routes))
            .add_service(KvServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(WatchServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(LeaseServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(ClusterServer::new(self.clone()))
            .add_service(MaintenanceServer::new(self.clone()))
            .add_service(AuthServer::new(self.clone()))
            .add_service(LockServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(ElectionServer::new(self).max_decoding_message_size(limit))
            .add_service(health_service);
        match tls {
            Some(cfg) => {
                let incoming = ReceiverStream::new(crate::api::tls::accept(listener, cfg));
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(nodelay(listener), shutdown)
                    .await
            }
        }
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

/// The metadata keys a token may come in: etcd clients send `token`; the HTTP gateway maps
/// the `Authorization` header to `authorization`.
const TOKEN_METADATA: [&str; 2] = ["token", "authorization"];

impl Grpc {
    /// Who sends `r` ([`Service::identify`]): its token, else its verified TLS client
    /// certificate's Common Name.
    pub(crate) fn who<T>(&self, r: &Request<T>) -> Result<crate::service::AuthInfo, Status> {
        let token = TOKEN_METADATA
            .iter()
            .find_map(|k| r.metadata().get(*k))
            .and_then(|v| v.to_str().ok());
        let cn = r
            .extensions()
            .get::<crate::api::tls::PeerIdentity>()
            .and_then(|p| p.common_name.clone());
        self.svc.identify(token, cn.as_deref()).map_err(status)
    }
}

/// Serves a unary call: identify the caller, then call the service with it.
macro_rules! as_caller {
    ($self:ident, $r:ident, |$who:ident, $req:ident| $call:expr) => {{
        let $who = $self.who(&$r)?;
        let $req = $r.into_inner();
        let $who = &$who;
        $call.await.map(Response::new).map_err(status)
    }};
}

#[tonic::async_trait]
impl Kv for Grpc {
    async fn range(&self, r: Request<RangeRequest>) -> Res<RangeResponse> {
        as_caller!(self, r, |who, req| self.svc.range(who, req))
    }
    async fn put(&self, r: Request<PutRequest>) -> Res<PutResponse> {
        as_caller!(self, r, |who, req| self.svc.put(who, req))
    }
    async fn delete_range(&self, r: Request<DeleteRangeRequest>) -> Res<DeleteRangeResponse> {
        as_caller!(self, r, |who, req| self.svc.delete_range(who, req))
    }
    async fn txn(&self, r: Request<TxnRequest>) -> Res<TxnResponse> {
        as_caller!(self, r, |who, req| self.svc.txn(who, req))
    }
    async fn compact(&self, r: Request<CompactionRequest>) -> Res<CompactionResponse> {
        as_caller!(self, r, |who, req| self.svc.compact(who, req))
    }
}

#[tonic::async_trait]
impl Watch for Grpc {
    type WatchStream = BoxStream<WatchResponse>;

    /// One gRPC Watch call is one watch stream (etcd): its requests go to the watch actor in
    /// order; its responses come from a bounded buffer. Permissions are checked per watch
    /// created, as the identity at the stream's start.
    async fn watch(&self, r: Request<Streaming<WatchRequest>>) -> Res<Self::WatchStream> {
        let who = self.who(&r)?;
        let inbound = until_error(r.into_inner());
        let out = WatchStream::serve(self.svc.clone(), who, inbound);
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            out, Ok,
        ))))
    }
}

#[tonic::async_trait]
impl Lease for Grpc {
    type LeaseKeepAliveStream = BoxStream<LeaseKeepAliveResponse>;

    async fn lease_grant(&self, r: Request<LeaseGrantRequest>) -> Res<LeaseGrantResponse> {
        as_caller!(self, r, |who, req| self.svc.lease_grant(who, req))
    }
    async fn lease_revoke(&self, r: Request<LeaseRevokeRequest>) -> Res<LeaseRevokeResponse> {
        as_caller!(self, r, |who, req| self.svc.lease_revoke(Some(who), req))
    }
    /// etcd's keep-alive stream: one response per request, in order.
    async fn lease_keep_alive(
        &self,
        r: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Res<Self::LeaseKeepAliveStream> {
        self.who(&r)?;
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
        let who = self.who(&r)?;
        let req = r.into_inner();
        self.svc
            .check_lease_keys_readable(&who, req.id)
            .map_err(status)?;
        self.svc
            .lease_time_to_live(req)
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn lease_leases(&self, r: Request<LeaseLeasesRequest>) -> Res<LeaseLeasesResponse> {
        as_caller!(self, r, |_who, _req| self.svc.lease_leases())
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
    /// call succeeds at once (etcd rewrites its bbolt file here). Root only, as in etcd.
    async fn defragment(&self, r: Request<DefragmentRequest>) -> Res<DefragmentResponse> {
        let who = self.who(&r)?;
        self.svc.check_admin(&who).map_err(status)?;
        Ok(Response::new(DefragmentResponse {
            header: self.svc.local_header(),
        }))
    }
    async fn hash(&self, r: Request<HashRequest>) -> Res<HashResponse> {
        as_caller!(self, r, |who, _req| self.svc.hash(who))
    }
    async fn hash_kv(&self, r: Request<HashKvRequest>) -> Res<HashKvResponse> {
        as_caller!(self, r, |who, req| self.svc.hash_kv(who, req.revision))
    }
    async fn snapshot(&self, _: Request<SnapshotRequest>) -> Res<Self::SnapshotStream> {
        Err(unimplemented("Snapshot (etcdctl snapshot save)"))
    }
    async fn move_leader(&self, r: Request<MoveLeaderRequest>) -> Res<MoveLeaderResponse> {
        as_caller!(self, r, |who, req| self.svc.move_leader(who, req.target_id))
    }
}

#[tonic::async_trait]
impl Auth for Grpc {
    async fn auth_enable(&self, r: Request<AuthEnableRequest>) -> Res<AuthEnableResponse> {
        as_caller!(self, r, |who, _req| self.svc.auth_enable(who))
    }
    async fn auth_disable(&self, r: Request<AuthDisableRequest>) -> Res<AuthDisableResponse> {
        as_caller!(self, r, |who, _req| self.svc.auth_disable(who))
    }
    async fn auth_status(&self, r: Request<AuthStatusRequest>) -> Res<AuthStatusResponse> {
        as_caller!(self, r, |who, _req| self.svc.auth_status(who))
    }
    async fn authenticate(&self, r: Request<AuthenticateRequest>) -> Res<AuthenticateResponse> {
        self.svc
            .authenticate(r.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn user_add(&self, r: Request<AuthUserAddRequest>) -> Res<AuthUserAddResponse> {
        as_caller!(self, r, |who, req| self.svc.user_add(who, req))
    }
    async fn user_get(&self, r: Request<AuthUserGetRequest>) -> Res<AuthUserGetResponse> {
        as_caller!(self, r, |who, req| self.svc.user_get(who, req))
    }
    async fn user_list(&self, r: Request<AuthUserListRequest>) -> Res<AuthUserListResponse> {
        as_caller!(self, r, |who, _req| self.svc.user_list(who))
    }
    async fn user_delete(&self, r: Request<AuthUserDeleteRequest>) -> Res<AuthUserDeleteResponse> {
        as_caller!(self, r, |who, req| self.svc.user_delete(who, req))
    }
    async fn user_change_password(
        &self,
        r: Request<AuthUserChangePasswordRequest>,
    ) -> Res<AuthUserChangePasswordResponse> {
        as_caller!(self, r, |who, req| self.svc.user_change_password(who, req))
    }
    async fn user_grant_role(
        &self,
        r: Request<AuthUserGrantRoleRequest>,
    ) -> Res<AuthUserGrantRoleResponse> {
        as_caller!(self, r, |who, req| self.svc.user_grant_role(who, req))
    }
    async fn user_revoke_role(
        &self,
        r: Request<AuthUserRevokeRoleRequest>,
    ) -> Res<AuthUserRevokeRoleResponse> {
        as_caller!(self, r, |who, req| self.svc.user_revoke_role(who, req))
    }
    async fn role_add(&self, r: Request<AuthRoleAddRequest>) -> Res<AuthRoleAddResponse> {
        as_caller!(self, r, |who, req| self.svc.role_add(who, req))
    }
    async fn role_get(&self, r: Request<AuthRoleGetRequest>) -> Res<AuthRoleGetResponse> {
        as_caller!(self, r, |who, req| self.svc.role_get(who, req))
    }
    async fn role_list(&self, r: Request<AuthRoleListRequest>) -> Res<AuthRoleListResponse> {
        as_caller!(self, r, |who, _req| self.svc.role_list(who))
    }
    async fn role_delete(&self, r: Request<AuthRoleDeleteRequest>) -> Res<AuthRoleDeleteResponse> {
        as_caller!(self, r, |who, req| self.svc.role_delete(who, req))
    }
    async fn role_grant_permission(
        &self,
        r: Request<AuthRoleGrantPermissionRequest>,
    ) -> Res<AuthRoleGrantPermissionResponse> {
        as_caller!(self, r, |who, req| self.svc.role_grant_permission(who, req))
    }
    async fn role_revoke_permission(
        &self,
        r: Request<AuthRoleRevokePermissionRequest>,
    ) -> Res<AuthRoleRevokePermissionResponse> {
        as_caller!(self, r, |who, req| self
            .svc
            .role_revoke_permission(who, req))
    }
}

#[tonic::async_trait]
impl Lock for Grpc {
    async fn lock(&self, r: Request<LockRequest>) -> Res<LockResponse> {
        let who = self.who(&r)?;
        recipes::lock(&self.svc, &who, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn unlock(&self, r: Request<UnlockRequest>) -> Res<UnlockResponse> {
        let who = self.who(&r)?;
        recipes::unlock(&self.svc, &who, r.into_inner())
            .await
            .map(Response::new)
    }
}

#[tonic::async_trait]
impl Election for Grpc {
    type ObserveStream = BoxStream<LeaderResponse>;

    async fn campaign(&self, r: Request<CampaignRequest>) -> Res<CampaignResponse> {
        let who = self.who(&r)?;
        recipes::campaign(&self.svc, &who, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn proclaim(&self, r: Request<ProclaimRequest>) -> Res<ProclaimResponse> {
        let who = self.who(&r)?;
        recipes::proclaim(&self.svc, &who, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn leader(&self, r: Request<LeaderRequest>) -> Res<LeaderResponse> {
        let who = self.who(&r)?;
        recipes::leader(&self.svc, &who, r.into_inner())
            .await
            .map(Response::new)
    }
    /// A stream of leaders and proclamations; ends when the client goes away.
    async fn observe(&self, r: Request<LeaderRequest>) -> Res<Self::ObserveStream> {
        let who = self.who(&r)?;
        let (tx, rx) = mpsc::channel(16);
        let (svc, req) = (self.svc.clone(), r.into_inner());
        tokio::spawn(async move {
            // Stop following the election as soon as the client is gone, not at the next event.
            let gone = tx.clone();
            tokio::select! {
                _ = gone.closed() => {}
                _ = recipes::observe(svc, who, req, tx) => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
    async fn resign(&self, r: Request<ResignRequest>) -> Res<ResignResponse> {
        let who = self.who(&r)?;
        recipes::resign(&self.svc, &who, r.into_inner())
            .await
            .map(Response::new)
    }
}
