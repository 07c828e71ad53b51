//! etcd's unary methods as every front end serves them: who the caller is ([`Caller::who`]:
//! its token, else its TLS client certificate's Common Name; etcd's learner rule) and which
//! service call answers the method. The gRPC API (`grpc.rs`) and the JSON gateway (`http.rs`)
//! both call these, so a method's identity, permission and learner rules live in one place
//! and neither front end goes through the other (etcd's gateway is a gRPC client of its own
//! server; the outcome is the same).

use std::sync::Arc;

use etch_protocol::etcdserverpb::*;
use etch_protocol::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use etch_protocol::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

use crate::error::ApiError;
use crate::service::{AuthInfo, Service, election, lock};

/// What a request says about its sender.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The auth token (gRPC metadata `token`, or the gateway's `Authorization` header).
    pub token: Option<String>,
    /// The verified TLS client certificate's Common Name.
    pub common_name: Option<String>,
}

impl Caller {
    /// Who sends the request ([`Service::identify`]). A learner serves nothing through here
    /// (etcd's interceptor: only Status and serializable Range reach a learner; see
    /// [`Caller::who_any`]).
    ///
    /// # Errors
    /// "etcdserver: rpc not supported for learner"; the identity's auth errors.
    pub fn who(&self, svc: &Service) -> Result<AuthInfo, ApiError> {
        if svc.state().is_learner() {
            return Err(ApiError::NotSupportedForLearner);
        }
        self.who_any(svc)
    }

    /// [`Caller::who`] without the learner rule.
    ///
    /// # Errors
    /// The identity's auth errors.
    pub fn who_any(&self, svc: &Service) -> Result<AuthInfo, ApiError> {
        svc.identify(self.token.as_deref(), self.common_name.as_deref())
    }
}

/// The result of a call.
pub type Res<T> = Result<T, ApiError>;

/// Calls that identify the caller (not on a learner), then call the service with it.
macro_rules! as_caller {
    ($( $(#[$doc:meta])* $name:ident($req:ty) -> $resp:ty = |$svc:ident, $who:ident, $r:ident| $call:expr; )*) => {
        $(
            $(#[$doc])*
            pub async fn $name(svc: Arc<Service>, c: Caller, $r: $req) -> Res<$resp> {
                let who = c.who(&svc)?;
                #[allow(unused_variables)]
                let ($svc, $who) = (&svc, &who);
                $call.await
            }
        )*
    };
}

as_caller! {
    /// KV.Put.
    put(PutRequest) -> PutResponse = |s, who, r| s.put(who, r);
    /// KV.DeleteRange.
    delete_range(DeleteRangeRequest) -> DeleteRangeResponse = |s, who, r| s.delete_range(who, r);
    /// KV.Compact.
    compact(CompactionRequest) -> CompactionResponse = |s, who, r| s.compact(who, r);
    /// Lease.LeaseGrant.
    lease_grant(LeaseGrantRequest) -> LeaseGrantResponse = |s, who, r| s.lease_grant(who, r);
    /// Lease.LeaseRevoke.
    lease_revoke(LeaseRevokeRequest) -> LeaseRevokeResponse = |s, who, r| s.lease_revoke(Some(who), r);
    /// Lease.LeaseLeases.
    lease_leases(LeaseLeasesRequest) -> LeaseLeasesResponse = |s, who, _r| s.lease_leases();
    /// Maintenance.Alarm (GET, ACTIVATE, DEACTIVATE), through consensus as in etcd v3.5.
    alarm(AlarmRequest) -> AlarmResponse = |s, who, r| s.alarm(who, r);
    /// Maintenance.Defragment: flushes and major-compacts this member's store. Root only.
    defragment(DefragmentRequest) -> DefragmentResponse = |s, who, _r| s.defragment(who);
    /// Maintenance.Hash.
    hash(HashRequest) -> HashResponse = |s, who, _r| s.hash(who);
    /// Maintenance.HashKV.
    hash_kv(HashKvRequest) -> HashKvResponse = |s, who, r| s.hash_kv(who, r.revision);
    /// Maintenance.MoveLeader.
    move_leader(MoveLeaderRequest) -> MoveLeaderResponse = |s, who, r| s.move_leader(who, r.target_id);
    /// Cluster.MemberList.
    member_list(MemberListRequest) -> MemberListResponse = |s, who, r| s.member_list(r);
    /// Auth.AuthEnable.
    auth_enable(AuthEnableRequest) -> AuthEnableResponse = |s, who, _r| s.auth_enable(who);
    /// Auth.AuthDisable.
    auth_disable(AuthDisableRequest) -> AuthDisableResponse = |s, who, _r| s.auth_disable(who);
    /// Auth.AuthStatus.
    auth_status(AuthStatusRequest) -> AuthStatusResponse = |s, who, _r| s.auth_status(who);
    /// Auth.UserAdd.
    user_add(AuthUserAddRequest) -> AuthUserAddResponse = |s, who, r| s.user_add(who, r);
    /// Auth.UserGet.
    user_get(AuthUserGetRequest) -> AuthUserGetResponse = |s, who, r| s.user_get(who, r);
    /// Auth.UserList.
    user_list(AuthUserListRequest) -> AuthUserListResponse = |s, who, _r| s.user_list(who);
    /// Auth.UserDelete.
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse = |s, who, r| s.user_delete(who, r);
    /// Auth.UserChangePassword.
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse = |s, who, r| s.user_change_password(who, r);
    /// Auth.UserGrantRole.
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse = |s, who, r| s.user_grant_role(who, r);
    /// Auth.UserRevokeRole.
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse = |s, who, r| s.user_revoke_role(who, r);
    /// Auth.RoleAdd.
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse = |s, who, r| s.role_add(who, r);
    /// Auth.RoleGet.
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse = |s, who, r| s.role_get(who, r);
    /// Auth.RoleList.
    role_list(AuthRoleListRequest) -> AuthRoleListResponse = |s, who, _r| s.role_list(who);
    /// Auth.RoleDelete.
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse = |s, who, r| s.role_delete(who, r);
    /// Auth.RoleGrantPermission.
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse = |s, who, r| s.role_grant_permission(who, r);
    /// Auth.RoleRevokePermission.
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse = |s, who, r| s.role_revoke_permission(who, r);
    /// Lock.Lock.
    lock(LockRequest) -> LockResponse = |s, who, r| lock::lock(s, who, r);
    /// Lock.Unlock.
    unlock(UnlockRequest) -> UnlockResponse = |s, who, r| lock::unlock(s, who, r);
    /// Election.Campaign.
    campaign(CampaignRequest) -> CampaignResponse = |s, who, r| election::campaign(s, who, r);
    /// Election.Proclaim.
    proclaim(ProclaimRequest) -> ProclaimResponse = |s, who, r| election::proclaim(s, who, r);
    /// Election.Leader.
    leader(LeaderRequest) -> LeaderResponse = |s, who, r| election::leader(s, who, r);
    /// Election.Resign.
    resign(ResignRequest) -> ResignResponse = |s, who, r| election::resign(s, who, r);
}

/// Membership changes need an admin when auth is on (etcd
/// `checkMembershipOperationPermission`).
macro_rules! as_admin {
    ($( $(#[$doc:meta])* $name:ident($req:ty) -> $resp:ty; )*) => {
        $(
            $(#[$doc])*
            pub async fn $name(svc: Arc<Service>, c: Caller, r: $req) -> Res<$resp> {
                let who = c.who(&svc)?;
                svc.check_admin(&who)?;
                svc.$name(r).await
            }
        )*
    };
}

as_admin! {
    /// Cluster.MemberAdd.
    member_add(MemberAddRequest) -> MemberAddResponse;
    /// Cluster.MemberRemove.
    member_remove(MemberRemoveRequest) -> MemberRemoveResponse;
    /// Cluster.MemberUpdate.
    member_update(MemberUpdateRequest) -> MemberUpdateResponse;
    /// Cluster.MemberPromote.
    member_promote(MemberPromoteRequest) -> MemberPromoteResponse;
}

/// KV.Range; a learner serves serializable ranges (etcd). The caller is identified after
/// any read barrier, against the auth state the read sees ([`Service::range_as`]); a
/// linearizable read is also identified before it (a learner, a bad token: refused without
/// a ReadIndex).
pub async fn range(svc: Arc<Service>, c: Caller, r: RangeRequest) -> Res<RangeResponse> {
    if !r.serializable {
        c.who(&svc)?;
    }
    svc.range_as(|| c.who_any(&svc), r).await
}

/// KV.Txn, identifying the caller as [`range`] does ([`Service::txn_as`]).
pub async fn txn(svc: Arc<Service>, c: Caller, r: TxnRequest) -> Res<TxnResponse> {
    c.who(&svc)?;
    svc.txn_as(|| c.who(&svc), r).await
}

/// Lease.LeaseTimeToLive: with keys, the caller must be allowed to read them.
pub async fn lease_time_to_live(
    svc: Arc<Service>,
    c: Caller,
    r: LeaseTimeToLiveRequest,
) -> Res<LeaseTimeToLiveResponse> {
    let who = c.who(&svc)?;
    svc.check_lease_keys_readable(&who, r.id)?;
    svc.lease_time_to_live(r).await
}

/// Maintenance.Status: anyone, learners too.
pub async fn status(svc: Arc<Service>, _: Caller, _: StatusRequest) -> Res<StatusResponse> {
    Ok(svc.status())
}

/// Auth.Authenticate: needs no identity.
pub async fn authenticate(
    svc: Arc<Service>,
    _: Caller,
    r: AuthenticateRequest,
) -> Res<AuthenticateResponse> {
    svc.authenticate(r).await
}
