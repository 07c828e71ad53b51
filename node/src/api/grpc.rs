//! The etcd v3 gRPC API (tonic) on the client URLs: `etcdserverpb.KV`, `Watch`, `Lease`,
//! `Cluster`, `Maintenance`, `v3lockpb.Lock`, `v3electionpb.Election` and the standard
//! `grpc.health.v1.Health`, with etcd's service and method names, served by the same
//! [`Service`] as the native protocol (no second implementation of any semantics). Errors carry
//! etcd's gRPC codes and exact messages ([`crate::api::errors`]).
//!
//! Every etcd v3 method is served.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use etch_protocol::etcdserverpb::*;

use etch_protocol::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use etch_protocol::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

use crate::api::calls::{self, Caller};
use crate::api::errors::to_status as status;
use crate::api::h2fix::H2Fix;
use crate::api::{WatchStream, serve_keep_alive, until_error};
use crate::error::ApiError;
use crate::service::Service;
use crate::service::election;

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
    election_timeout: Duration,
    max_concurrent_streams: u32,
}

impl Grpc {
    /// A front end over `svc`. Streams opened with etcd's `hasleader` metadata end with
    /// "etcdserver: no leader" after 3 `election_timeout`s without a leader.
    pub fn new(svc: Arc<Service>, election_timeout: Duration) -> Grpc {
        Grpc {
            svc,
            election_timeout,
            max_concurrent_streams: u32::MAX,
        }
    }

    /// Limits each client connection to `n` concurrent HTTP/2 streams
    /// (`--max-concurrent-streams`; default unlimited, as etcd's `math.MaxUint32`).
    pub fn with_max_concurrent_streams(mut self, n: u32) -> Grpc {
        self.max_concurrent_streams = n;
        self
    }

    /// `stream`, ended with "etcdserver: no leader" once this member has had no leader for
    /// [`NO_LEADER_CHECKS`] checks an election timeout apart, when the client asked for it
    /// with the metadata `hasleader: true` (clientv3 `WithRequireLeader`, used by
    /// kube-apiserver's watches; etcd v3.5 `v3rpc/interceptor.go` `monitorLeader`), so the
    /// client moves to a member that has one. Without the metadata, `stream` as it is.
    ///
    /// # Errors
    /// "etcdserver: no leader" at once when the metadata is set and there is no leader now.
    fn require_leader<T: Send + 'static, M>(
        &self,
        r: &Request<M>,
        stream: BoxStream<T>,
    ) -> Result<BoxStream<T>, Status> {
        let wanted = r
            .metadata()
            .get("hasleader")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "true");
        if !wanted {
            return Ok(stream);
        }
        let state = self.svc.state_arc();
        if state.leader().0 == 0 {
            return Err(status(ApiError::NoLeader));
        }
        let interval = self.election_timeout;
        let lost: Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(async move {
            let mut misses = 0;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                misses = if state.leader().0 == 0 { misses + 1 } else { 0 };
                if misses >= NO_LEADER_CHECKS {
                    return;
                }
            }
        });
        Ok(Box::pin(futures::stream::unfold(
            Some((stream, lost)),
            |st| async move {
                let (mut stream, mut lost) = st?;
                tokio::select! {
                    item = tokio_stream::StreamExt::next(&mut stream) => {
                        item.map(|i| (i, Some((stream, lost))))
                    }
                    _ = &mut lost => Some((Err(status(ApiError::NoLeader)), None)),
                }
            },
        )))
    }

    /// The service behind every method.
    pub fn service(&self) -> Arc<Service> {
        self.svc.clone()
    }

    /// Serves every service on `listener` until `shutdown` resolves; HTTP/1.1 requests on
    /// the same port go to the JSON gateway, `/health` and `/version` ([`crate::api::http`]).
    /// With `tls`, every connection is TLS (`https://`); with client-certificate auth, a
    /// client without a certificate signed by the trusted CA is refused in the handshake.
    /// Every connection goes through [`H2Fix`] (etcd 3.4 clients send a URL as `:authority`).
    ///
    /// # Errors
    /// Transport errors of the server.
    pub async fn serve(
        self,
        listener: crate::listener::Listener,
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
        crate::api::grpc_metrics::register_methods();
        let http = crate::api::http::router(self.svc.clone());
        let mut routes = tonic::service::Routes::from(http);
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(self.max_concurrent_streams))
            .accept_http1(true)
            .layer(crate::api::grpc_metrics::GrpcMetricsLayer)
            .layer(crate::api::grpc_unary::UnaryLayer::new(
                self.svc.clone(),
                limit,
            ))
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
                let accepted = ReceiverStream::new(crate::tls::client::accept(listener, cfg));
                let incoming = tokio_stream::StreamExt::map(accepted, |c| c.map(H2Fix::new));
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

/// Accepted connections (`TCP_NODELAY` set on TCP: tonic sets it only on listeners it binds
/// itself, and without it small responses can wait for the peer's delayed ACK). Each is
/// wrapped in [`H2Fix`], as TLS connections are, so etcd 3.4 clients' URL `:authority` reaches
/// h2 repaired.
fn nodelay(
    listener: crate::listener::Listener,
) -> impl Stream<Item = std::io::Result<H2Fix<crate::listener::Stream>>> {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| H2Fix::new(s));
        Some((next, l))
    })
}

/// Checks without a leader before a `hasleader` stream ends (etcd `maxNoLeaderCnt`).
pub const NO_LEADER_CHECKS: u32 = 3;

/// A streaming request's metadata (as an empty request) and its message stream.
fn split_streaming<T>(r: Request<Streaming<T>>) -> (Request<()>, Streaming<T>) {
    let (meta, ext, inbound) = r.into_parts();
    (Request::from_parts(meta, ext, ()), inbound)
}

type Res<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The metadata keys a token may come in: etcd clients send `token`; the HTTP gateway maps
/// the `Authorization` header to `authorization`.
const TOKEN_METADATA: [&str; 2] = ["token", "authorization"];

/// What `r` says about its sender: its token metadata and its verified TLS client
/// certificate's Common Name.
fn caller<T>(r: &Request<T>) -> Caller {
    caller_of(r.metadata().as_ref(), r.extensions())
}

/// [`caller`] of an HTTP request's `headers` (gRPC metadata) and `extensions` (where tonic
/// puts the connection's [`crate::tls::client::PeerIdentity`]).
pub(crate) fn caller_of(
    headers: &axum::http::HeaderMap,
    extensions: &axum::http::Extensions,
) -> Caller {
    Caller {
        token: TOKEN_METADATA
            .iter()
            .find_map(|k| headers.get(*k))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        common_name: extensions
            .get::<crate::tls::client::PeerIdentity>()
            .and_then(|p| p.common_name.clone()),
    }
}

impl Grpc {
    /// Who sends `r` ([`Caller::who`]).
    ///
    /// # Errors
    /// "etcdserver: rpc not supported for learner"; the identity's auth errors.
    fn who<T>(&self, r: &Request<T>) -> Result<crate::service::AuthInfo, Status> {
        caller(r).who(&self.svc).map_err(status)
    }
}

/// Serves unary methods through [`calls`]: `name(request) -> response`. (Written as
/// `#[tonic::async_trait]` expands an `async fn`, which it cannot see inside a macro.)
macro_rules! unary {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                r: Request<$req>,
            ) -> Pin<Box<dyn std::future::Future<Output = Res<$resp>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                let c = caller(&r);
                Box::pin(async move {
                    calls::$name(self.svc.clone(), c, r.into_inner())
                        .await
                        .map(Response::new)
                        .map_err(status)
                })
            }
        )*
    };
}

#[tonic::async_trait]
impl Kv for Grpc {
    unary! {
        range(RangeRequest) -> RangeResponse;
        put(PutRequest) -> PutResponse;
        delete_range(DeleteRangeRequest) -> DeleteRangeResponse;
        txn(TxnRequest) -> TxnResponse;
        compact(CompactionRequest) -> CompactionResponse;
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
        let (meta, inbound) = split_streaming(r);
        let out = WatchStream::serve(self.svc.clone(), who, until_error(inbound));
        let out = self.require_leader(&meta, Box::pin(tokio_stream::StreamExt::map(out, Ok)))?;
        Ok(Response::new(out))
    }
}

#[tonic::async_trait]
impl Lease for Grpc {
    type LeaseKeepAliveStream = BoxStream<LeaseKeepAliveResponse>;

    unary! {
        lease_grant(LeaseGrantRequest) -> LeaseGrantResponse;
        lease_revoke(LeaseRevokeRequest) -> LeaseRevokeResponse;
        lease_time_to_live(LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse;
        lease_leases(LeaseLeasesRequest) -> LeaseLeasesResponse;
    }

    /// etcd's keep-alive stream: one response per request, in order.
    async fn lease_keep_alive(
        &self,
        r: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Res<Self::LeaseKeepAliveStream> {
        self.who(&r)?;
        let (meta, inbound) = split_streaming(r);
        let out = Box::pin(serve_keep_alive(self.svc.clone(), until_error(inbound)));
        Ok(Response::new(self.require_leader(&meta, out)?))
    }
}

#[tonic::async_trait]
impl Cluster for Grpc {
    unary! {
        member_add(MemberAddRequest) -> MemberAddResponse;
        member_remove(MemberRemoveRequest) -> MemberRemoveResponse;
        member_update(MemberUpdateRequest) -> MemberUpdateResponse;
        member_list(MemberListRequest) -> MemberListResponse;
        member_promote(MemberPromoteRequest) -> MemberPromoteResponse;
    }
}

#[tonic::async_trait]
impl Maintenance for Grpc {
    type SnapshotStream = BoxStream<SnapshotResponse>;

    unary! {
        alarm(AlarmRequest) -> AlarmResponse;
        status(StatusRequest) -> StatusResponse;
        defragment(DefragmentRequest) -> DefragmentResponse;
        hash(HashRequest) -> HashResponse;
        hash_kv(HashKvRequest) -> HashKvResponse;
        move_leader(MoveLeaderRequest) -> MoveLeaderResponse;
    }

    /// This member's store as an etcd backend file, then its SHA-256 (etcdctl `snapshot
    /// save`). Root only when auth is on.
    async fn snapshot(&self, r: Request<SnapshotRequest>) -> Res<Self::SnapshotStream> {
        let who = self.who(&r)?;
        let out = self.svc.snapshot(&who).map_err(status)?;
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            out,
            |r| r.map_err(status),
        ))))
    }
}

#[tonic::async_trait]
impl Auth for Grpc {
    unary! {
        auth_enable(AuthEnableRequest) -> AuthEnableResponse;
        auth_disable(AuthDisableRequest) -> AuthDisableResponse;
        auth_status(AuthStatusRequest) -> AuthStatusResponse;
        authenticate(AuthenticateRequest) -> AuthenticateResponse;
        user_add(AuthUserAddRequest) -> AuthUserAddResponse;
        user_get(AuthUserGetRequest) -> AuthUserGetResponse;
        user_list(AuthUserListRequest) -> AuthUserListResponse;
        user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
        user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
        user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
        user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
        role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
        role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
        role_list(AuthRoleListRequest) -> AuthRoleListResponse;
        role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
        role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
        role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
    }
}

#[tonic::async_trait]
impl Lock for Grpc {
    unary! {
        lock(LockRequest) -> LockResponse;
        unlock(UnlockRequest) -> UnlockResponse;
    }
}

#[tonic::async_trait]
impl Election for Grpc {
    type ObserveStream = BoxStream<LeaderResponse>;

    unary! {
        campaign(CampaignRequest) -> CampaignResponse;
        proclaim(ProclaimRequest) -> ProclaimResponse;
        leader(LeaderRequest) -> LeaderResponse;
        resign(ResignRequest) -> ResignResponse;
    }

    /// A stream of leaders and proclamations; ends when the client goes away.
    async fn observe(&self, r: Request<LeaderRequest>) -> Res<Self::ObserveStream> {
        let who = self.who(&r)?;
        let out = election::observe_stream(self.svc.clone(), who, r.into_inner());
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            out,
            |r| r.map_err(status),
        ))))
    }
}
