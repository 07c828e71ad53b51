//! The internal service every front end calls: requests become raft proposals (writes) or
//! local reads (after a ReadIndex for linearizable ones), and responses get etcd's header
//! (`cluster_id`, `member_id`, `revision`, `raft_term`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::Addr;
use prost::Message as _;
use tokio::sync::watch;

use etch_protocol::etcdserverpb::request_op::Request as Op;
use etch_protocol::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use etch_protocol::etcdserverpb::{
    LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
pub use etch_protocol::etchpb::AuthInfo;
use etch_protocol::etchpb::frame::Body;
use etch_protocol::etchpb::internal_request::Request;
use etch_protocol::etchpb::{Frame, InternalRequest};
use etch_storage::mvcc::{self, MvccStore, WriteResponse};

use crate::apply::Waiters;
use crate::consensus::{ConsensusActor, NodeState, Propose, ReadIndex};
use crate::error::ApiError;
use crate::lease::{KeepAlive, LeaseActor, TimeToLive};
use crate::watch::WatchActor;

mod maintenance;

type Res<T> = Result<T, ApiError>;

/// Largest gap between commit index and applied index at which new proposals are still taken
/// (etcd `maxGapBetweenApplyAndCommitIndex`); past it, clients get "too many requests".
pub const MAX_APPLY_LAG_ENTRIES: u64 = 5000;

/// The longest a physical compaction waits for this member's background deletion (etcd waits
/// as long as the client does; clients give up well before).
pub const PHYSICAL_COMPACTION_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Limits the service enforces, from the config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum encoded request, bytes (`--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Maximum ops per Txn branch (`--max-txn-ops`).
    pub max_txn_ops: usize,
    /// How long a request waits for consensus and apply.
    pub request_timeout: Duration,
    /// Watch limits.
    pub watch: crate::watch::WatchLimits,
    /// Smallest lease TTL granted, seconds (etcd: 1.5 x election timeout, rounded up).
    pub min_lease_ttl: i64,
    /// bcrypt cost of password hashes (`--bcrypt-cost`, etcd default 10).
    pub bcrypt_cost: u32,
    /// Backend space quota, bytes (`--quota-backend-bytes`; etcd's default 2 GiB): a Put, a
    /// Txn that puts or a LeaseGrant that would take this member's store past it raises the
    /// NOSPACE alarm and is refused (etcd `quotaKVServer`).
    pub quota_backend_bytes: u64,
}

/// The actors the service talks to.
#[derive(Clone)]
pub struct Actors {
    /// Consensus: proposals and ReadIndex.
    pub consensus: Addr<ConsensusActor>,
    /// Watch fanout.
    pub watch: Addr<WatchActor>,
    /// Lease expiry (lessor).
    pub lessor: Addr<LeaseActor>,
    /// Peer transport, to forward to the leader what only it serves (`None`: single member).
    pub transport: Option<Addr<crate::transport::TransportActor>>,
}

/// The service. Shared by every connection behind an `Arc`.
pub struct Service {
    store: Arc<MvccStore>,
    consensus: Addr<ConsensusActor>,
    watch: Addr<WatchActor>,
    lessor: Addr<LeaseActor>,
    transport: Option<Addr<crate::transport::TransportActor>>,
    waiters: Arc<Waiters>,
    applied: watch::Receiver<u64>,
    state: Arc<NodeState>,
    limits: Limits,
    next_id: AtomicU64,
    tokens: Arc<crate::auth::Tokens>,
    jwt: Option<Arc<crate::auth::Jwt>>,
}

impl Service {
    /// A service over the node's parts.
    pub fn new(
        store: Arc<MvccStore>,
        actors: Actors,
        waiters: Arc<Waiters>,
        applied: watch::Receiver<u64>,
        state: Arc<NodeState>,
        limits: Limits,
        tokens: crate::auth::TokenProvider,
    ) -> Service {
        // Request ids: the member ID's low 16 bits, then a counter seeded from the clock, so ids
        // stay unique across restarts and members (etcd `idutil.Generator`).
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let first = ((state.member_id & 0xFFFF) << 48) | ((millis & 0xFF_FFFF_FFFF) << 8);
        Service {
            store,
            consensus: actors.consensus,
            watch: actors.watch,
            lessor: actors.lessor,
            transport: actors.transport,
            waiters,
            applied,
            state,
            limits,
            next_id: AtomicU64::new(first),
            tokens: tokens.simple,
            jwt: tokens.jwt,
        }
    }

    /// The MVCC store (read-only uses: metrics, status).
    pub fn store(&self) -> &MvccStore {
        &self.store
    }

    /// The node state (ids, term, leader).
    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// The node state, shared (watch sinks fill response headers from it).
    pub fn state_arc(&self) -> Arc<NodeState> {
        self.state.clone()
    }

    /// The backend quota, bytes (`--quota-backend-bytes`).
    pub fn quota_backend_bytes(&self) -> u64 {
        self.limits.quota_backend_bytes
    }

    /// Watch limits (stream buffer size and the rest).
    pub fn watch_limits(&self) -> crate::watch::WatchLimits {
        self.limits.watch
    }

    /// The watch fanout actor: watch streams talk to it directly (watches are served from
    /// this member's store, on followers too, without consensus).
    pub fn watch(&self) -> &Addr<WatchActor> {
        &self.watch
    }

    /// The JWT keys, when tokens are JWTs (`--auth-token jwt,...`).
    pub(crate) fn jwt(&self) -> Option<&crate::auth::Jwt> {
        self.jwt.as_deref()
    }

    /// The limits in force.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Who a request comes from (etcd `AuthInfoFromCtx`): with auth disabled, nobody needs to
    /// be anyone; else the user of `token`, or without a token the Common Name of the verified
    /// TLS client certificate, or no one (`""`: refused by every check). The identity carries
    /// the auth revision it was established at.
    ///
    /// # Errors
    /// [`ApiError::InvalidAuthToken`] for a token this member does not know (unknown, expired,
    /// issued before a restart).
    pub fn identify(&self, token: Option<&str>, cert_cn: Option<&str>) -> Res<AuthInfo> {
        let a = self.store.auth();
        if !a.enabled() {
            return Ok(AuthInfo {
                username: String::new(),
                auth_revision: a.revision(),
            });
        }
        let (username, auth_revision) = match (token, &self.jwt) {
            // A JWT carries the revision it was issued at: after an auth change it is stale.
            (Some(t), Some(jwt)) => jwt.verify(t).ok_or(ApiError::InvalidAuthToken)?,
            (Some(t), None) => (
                self.tokens.user(t).ok_or(ApiError::InvalidAuthToken)?,
                a.revision(),
            ),
            (None, _) => (cert_cn.unwrap_or_default().to_owned(), a.revision()),
        };
        Ok(AuthInfo {
            username,
            auth_revision,
        })
    }

    /// Read permission on `[key, range_end)`.
    ///
    /// # Errors
    /// etcd's auth errors (`permission denied`, `user name is empty`...).
    pub fn check_read(&self, who: &AuthInfo, key: &[u8], range_end: &[u8]) -> Res<()> {
        Ok(self.store.auth().check(who, key, range_end, false)?)
    }

    /// Read permission on every key attached to lease `id` (etcd v3.5 `checkLeaseTimeToLive`,
    /// before LeaseTimeToLive answers which keys a lease holds). Root passes.
    ///
    /// # Errors
    /// etcd's auth errors; a store failure.
    pub fn check_lease_keys_readable(&self, who: &AuthInfo, id: i64) -> Res<()> {
        let a = self.store.auth();
        if !a.enabled() || a.check_admin(who).is_ok() {
            return Ok(());
        }
        if let Some((_, keys)) = self.store.lease(id, true).map_err(Self::store_err)? {
            for k in keys {
                a.check(who, &k, &[], false)?;
            }
        }
        Ok(())
    }

    /// Administrator (root role) permission.
    ///
    /// # Errors
    /// etcd's auth errors.
    pub fn check_admin(&self, who: &AuthInfo) -> Res<()> {
        Ok(self.store.auth().check_admin(who)?)
    }

    pub(crate) fn header(&self, h: Option<ResponseHeader>) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.state.cluster_id,
            member_id: self.state.member_id,
            revision: h.map_or_else(|| self.store.current_revision(), |h| h.revision),
            raft_term: self.state.term(),
        })
    }

    /// Waits until this member has applied everything committed when the read arrived
    /// (ReadIndex, then applied index >= read index).
    pub(crate) async fn linearizable(&self) -> Res<()> {
        let t = self.limits.request_timeout;
        let rx = self
            .consensus
            .send(ReadIndex)
            .await
            .map_err(|_| ApiError::Stopped)?;
        let index = match tokio::time::timeout(t, rx).await {
            Err(_) => return Err(ApiError::Timeout),
            Ok(Err(_)) => return Err(ApiError::Stopped),
            Ok(Ok(r)) => r?,
        };
        self.wait_applied(index).await
    }

    /// Waits (up to the request timeout) until this member has applied raft entry `index`.
    async fn wait_applied(&self, index: u64) -> Res<()> {
        let mut applied = self.applied.clone();
        let t = self.limits.request_timeout;
        match tokio::time::timeout(t, applied.wait_for(|a| *a >= index)).await {
            Err(_) => Err(ApiError::Timeout),
            Ok(Err(_)) => Err(ApiError::Stopped),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Proposes through consensus and waits for the applied answer, counted in etcd's
    /// `proposals_pending` (while waiting) and `proposals_failed_total` (no answer: timeout, no
    /// leader, shutdown; a request etcd's rules refuse is not a failed proposal).
    pub(crate) async fn propose(
        &self,
        who: Option<&AuthInfo>,
        request: Request,
    ) -> Res<WriteResponse> {
        use crate::metrics as m;
        /// Decrements the pending gauge however the wait ends (a dropped call included).
        struct Pending;
        impl Drop for Pending {
            fn drop(&mut self) {
                m::hot().proposals_pending.decrement(1.0);
            }
        }
        m::hot().proposals_pending.increment(1.0);
        let _pending = Pending;
        let r = self.propose_inner(who, request).await;
        if matches!(&r, Err(e) if !matches!(e, ApiError::Request(_))) {
            m::hot().proposals_failed.increment(1);
        }
        r
    }

    async fn propose_inner(&self, who: Option<&AuthInfo>, request: Request) -> Res<WriteResponse> {
        let applied = *self.applied.borrow();
        if self.state.commit_index() > applied + MAX_APPLY_LAG_ENTRIES {
            return Err(ApiError::TooManyRequests);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data = InternalRequest {
            id,
            request: Some(request),
            auth: who.cloned(),
        }
        .encode_to_vec();
        if data.len() > self.limits.max_request_bytes {
            return Err(ApiError::TooLarge);
        }
        let rx = self.waiters.register(id);
        crate::metrics::queued("consensus");
        match self.consensus.send(Propose { data }).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.waiters.cancel(id);
                return Err(e);
            }
            Err(_) => {
                self.waiters.cancel(id);
                return Err(ApiError::Stopped);
            }
        }
        match tokio::time::timeout(self.limits.request_timeout, rx).await {
            Ok(Ok(r)) => Ok(r?),
            Ok(Err(_)) => Err(ApiError::Stopped),
            Err(_) => {
                self.waiters.cancel(id);
                Err(ApiError::Timeout)
            }
        }
    }

    fn store_err(e: etch_storage::Error) -> ApiError {
        // A read failing in the store is fatal for the store, but the client just sees the
        // request fail; the write path stops the node on the same condition.
        tracing::error!(error = %e, "store read failed");
        ApiError::Stopped
    }

    /// Range: linearizable unless `serializable`.
    ///
    /// # Errors
    /// Empty key, compacted or future revision, no leader, timeout.
    pub async fn range(&self, who: &AuthInfo, req: RangeRequest) -> Res<RangeResponse> {
        mvcc::validate_range(&req)?;
        self.check_read(who, &req.key, &req.range_end)?;
        if !req.serializable {
            self.linearizable().await?;
        }
        let mut r = self.store.range(&req).map_err(Self::store_err)??;
        r.header = self.header(r.header);
        crate::metrics::hot().range_total.increment(1);
        Ok(r)
    }

    /// Put through consensus.
    ///
    /// # Errors
    /// etcd's Put errors, no leader, timeout, too large; no space (quota or NOSPACE alarm).
    pub async fn put(&self, who: &AuthInfo, req: PutRequest) -> Res<PutResponse> {
        self.check_quota(maintenance::cost_put(&req)).await?;
        mvcc::validate_put(&req)?;
        match self.propose(Some(who), Request::Put(req)).await? {
            WriteResponse::Put(mut r) => {
                r.header = self.header(r.header);
                Ok(r)
            }
            _ => Err(ApiError::Unimplemented),
        }
    }

    /// DeleteRange through consensus.
    ///
    /// # Errors
    /// Empty key, no leader, timeout, too large.
    pub async fn delete_range(
        &self,
        who: &AuthInfo,
        req: DeleteRangeRequest,
    ) -> Res<DeleteRangeResponse> {
        mvcc::validate_delete(&req)?;
        match self.propose(Some(who), Request::DeleteRange(req)).await? {
            WriteResponse::DeleteRange(mut r) => {
                r.header = self.header(r.header);
                Ok(r)
            }
            _ => Err(ApiError::Unimplemented),
        }
    }

    /// Txn: through consensus if any branch writes; otherwise served as a read (linearizable
    /// unless every range in it is serializable), as etcd does.
    ///
    /// # Errors
    /// etcd's Txn errors, no leader, timeout, too large; no space for a Txn that puts.
    pub async fn txn(&self, who: &AuthInfo, req: TxnRequest) -> Res<TxnResponse> {
        let cost = maintenance::cost_txn(&req);
        if cost > 0 {
            self.check_quota(cost).await?;
        }
        mvcc::validate_txn(&req, self.limits.max_txn_ops)?;
        if txn_is_read_only(&req) {
            // Writes are checked at apply; a read-only Txn never reaches apply.
            self.store.auth().check_txn(who, &req, &mut |_| Ok(()))?;
            if !txn_is_serializable(&req) {
                self.linearizable().await?;
            }
            let mut r = self.store.txn_read(&req).map_err(Self::store_err)??;
            r.header = self.header(r.header);
            crate::metrics::hot().txn_total.increment(1);
            return Ok(r);
        }
        match self.propose(Some(who), Request::Txn(req)).await? {
            WriteResponse::Txn(mut r) => {
                r.header = self.header(r.header);
                Ok(r)
            }
            _ => Err(ApiError::Unimplemented),
        }
    }

    /// Compaction through consensus. Apply records the compaction point (reads below it fail
    /// from then on) and the store deletes the history in the background; with `physical`
    /// (etcdctl `compact --physical`) the answer waits until this member's deletion is written,
    /// at most [`PHYSICAL_COMPACTION_WAIT`].
    ///
    /// # Errors
    /// Compacted or future revision, no leader, timeout; a physical compaction whose deletion
    /// failed or outlasted the wait.
    /// Not permission-checked, as in etcd v3.5 (any client may compact).
    pub async fn compact(&self, who: &AuthInfo, req: CompactionRequest) -> Res<CompactionResponse> {
        let (rev, physical) = (req.revision, req.physical);
        match self.propose(Some(who), Request::Compaction(req)).await? {
            WriteResponse::Compaction(mut r) => {
                if physical {
                    // etcd answers a physical compaction once this member deleted the history.
                    self.blocking(move |s| s.wait_purged(rev, PHYSICAL_COMPACTION_WAIT))
                        .await?;
                }
                r.header = self.header(r.header);
                Ok(r)
            }
            _ => Err(ApiError::Unimplemented),
        }
    }

    /// LeaseGrant through consensus. ID 0 lets the server choose; TTLs below the minimum are
    /// raised to it (etcd).
    ///
    /// # Errors
    /// Lease exists, TTL too large, no leader, timeout, no space.
    pub async fn lease_grant(
        &self,
        who: &AuthInfo,
        mut req: LeaseGrantRequest,
    ) -> Res<LeaseGrantResponse> {
        self.check_quota(maintenance::LEASE_OVERHEAD_BYTES).await?;
        if req.id == 0 {
            // Unique across members and restarts, positive: the request id generator.
            req.id = (self.next_id.fetch_add(1, Ordering::Relaxed) & (i64::MAX as u64)) as i64;
        }
        req.ttl = req.ttl.max(self.limits.min_lease_ttl);
        match self.propose(Some(who), Request::LeaseGrant(req)).await? {
            WriteResponse::LeaseGrant(mut r) => {
                r.header = self.header(r.header);
                Ok(r)
            }
            _ => Err(ApiError::Unimplemented),
        }
    }

    /// LeaseRevoke through consensus: every attached key is deleted in one revision. With
    /// auth, `who` must be allowed to write every attached key (checked at apply). `None` is
    /// the lessor revoking an expired lease (never checked).
    ///
    /// # Errors
    /// Lease not found, permission denied, no leader, timeout.
    pub async fn lease_revoke(
        &self,
        who: Option<&AuthInfo>,
        req: LeaseRevokeRequest,
    ) -> Res<LeaseRevokeResponse> {
        match self.propose(who, Request::LeaseRevoke(req)).await? {
            WriteResponse::LeaseRevoke(mut r) => {
                r.header = self.header(r.header);
                Ok(r)
            }
            _ => Err(ApiError::Unimplemented),
        }
    }

    /// Records remaining TTLs through consensus (sent by the lessor).
    ///
    /// # Errors
    /// No leader, timeout.
    pub async fn lease_checkpoint(&self, req: LeaseCheckpointRequest) -> Res<()> {
        self.propose(None, Request::LeaseCheckpoint(req))
            .await
            .map(|_| ())
    }

    /// Renews a lease. Served by the leader's lessor.
    ///
    /// # Errors
    /// [`ApiError::NotLeader`] on a follower.
    pub async fn lease_keep_alive(
        &self,
        req: LeaseKeepAliveRequest,
    ) -> Res<LeaseKeepAliveResponse> {
        let deadline = tokio::time::Instant::now() + self.limits.request_timeout;
        loop {
            // etcd `waitAppliedIndex`: a lease granted through another member is committed
            // on the leader but maybe not applied yet; renewing before would answer "not
            // found". (A follower only forwards: nothing to wait for.)
            if self.state.leader() == self.state.member_id {
                self.wait_applied(self.state.commit_index()).await?;
            }
            let local = self
                .lessor
                .send(KeepAlive(req.id))
                .await
                .map_err(|_| ApiError::Stopped)?;
            if let Some(ttl) = local {
                return Ok(LeaseKeepAliveResponse {
                    header: self.header(None),
                    id: req.id,
                    ttl,
                });
            }
            match self.forward(Body::LeaseKeepAlive(req), deadline).await {
                Ok(Body::LeaseKeepAliveResponse(r)) => return Ok(r),
                Ok(_) => return Err(ApiError::Unimplemented),
                // The leader changed while we waited: ask again, maybe of ourselves.
                Err(ApiError::NotLeader) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A lease's remaining and granted TTL, and its keys when asked.
    ///
    /// # Errors
    /// [`ApiError::NotLeader`] on a follower (only the leader knows deadlines).
    pub async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Res<LeaseTimeToLiveResponse> {
        if self.state.leader() != self.state.member_id {
            let deadline = tokio::time::Instant::now() + self.limits.request_timeout;
            return match self.forward(Body::LeaseTimeToLive(req), deadline).await? {
                Body::LeaseTimeToLiveResponse(r) => Ok(r),
                _ => Err(ApiError::Unimplemented),
            };
        }
        // As for keep-alives: a lease granted through a follower must be applied here first.
        self.wait_applied(self.state.commit_index()).await?;
        let ttl = self
            .lessor
            .send(TimeToLive(req.id))
            .await
            .map_err(|_| ApiError::Stopped)?;
        let Some((remaining, granted)) = ttl else {
            // etcd answers an unknown lease with TTL -1.
            return Ok(LeaseTimeToLiveResponse {
                header: self.header(None),
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            });
        };
        let keys = match self
            .store
            .lease(req.id, req.keys)
            .map_err(Self::store_err)?
        {
            Some((_, keys)) => keys,
            None => Vec::new(),
        };
        Ok(LeaseTimeToLiveResponse {
            header: self.header(None),
            id: req.id,
            ttl: remaining,
            granted_ttl: granted,
            keys,
        })
    }

    /// Sends a request only the leader serves to the leader (over the peer transport) and
    /// returns its answer, or the error it answered with. Gives up with
    /// [`ApiError::NotLeader`] as soon as the leader changes (the caller asks again), so a
    /// request sent to a leader that died does not wait out the whole timeout.
    async fn forward(&self, body: Body, deadline: tokio::time::Instant) -> Res<Body> {
        let Some(t) = &self.transport else {
            return Err(ApiError::NotLeader);
        };
        let leader = loop {
            match self.state.leader() {
                0 if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                0 => return Err(ApiError::NoLeader),
                l if l == self.state.member_id => return Err(ApiError::NotLeader),
                l => break l,
            }
        };
        let frame = Frame {
            id: 0,
            body: Some(body),
        };
        let mut rx = t
            .send(crate::transport::Forward { to: leader, frame })
            .await
            .map_err(|_| ApiError::Stopped)?
            .ok_or(ApiError::NoLeader)?;
        let resp = loop {
            tokio::select! {
                r = &mut rx => match r {
                    Ok(f) => break f,
                    Err(_) => return Err(ApiError::Stopped),
                },
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if self.state.leader() != leader {
                        return Err(ApiError::NotLeader);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ApiError::Timeout);
                    }
                }
            }
        };
        match resp.body {
            Some(Body::Error(e)) => Err(crate::api::errors::from_status(e.code, &e.message)),
            Some(b) => Ok(b),
            None => Err(ApiError::Unimplemented),
        }
    }

    /// Every lease (linearizable, as etcd's LeaseLeases).
    ///
    /// # Errors
    /// No leader, timeout.
    pub async fn lease_leases(&self) -> Res<LeaseLeasesResponse> {
        self.linearizable().await?;
        let leases = self.store.leases().map_err(Self::store_err)?;
        Ok(LeaseLeasesResponse {
            header: self.header(None),
            leases: leases
                .into_iter()
                .map(|l| LeaseStatus { id: l.id })
                .collect(),
        })
    }

    /// Runs a whole-store scan on the blocking pool (never on an async worker thread).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&MvccStore) -> etch_storage::Result<T> + Send + 'static,
    ) -> Res<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| ApiError::Stopped)?
            .map_err(Self::store_err)
    }
}

fn txn_is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            None | Some(Op::RequestRange(_)) => true,
            Some(Op::RequestTxn(t)) => txn_is_read_only(t),
            Some(_) => false,
        })
}

fn txn_is_serializable(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            None => true,
            Some(Op::RequestRange(rr)) => rr.serializable,
            Some(Op::RequestTxn(t)) => txn_is_serializable(t),
            Some(_) => false,
        })
}
