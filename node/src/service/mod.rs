//! The internal service every front end calls: requests become raft proposals (writes) or
//! local reads (after a ReadIndex for linearizable ones), and responses get etcd's header
//! (`cluster_id`, `member_id`, `revision`, `raft_term`).

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use tokio::sync::watch as chan;

use etch_protocol::etcdserverpb::request_op::Request as Op;
use etch_protocol::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use etch_protocol::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
pub use etch_protocol::etchpb::AuthInfo;
use etch_protocol::etchpb::internal_request::Request;
use etch_protocol::etchpb::{peer_answer, peer_request};
use etch_storage::mvcc::{self, MvccStore, WriteResponse};

use crate::actors::consensus::{ConsensusActor, ReadIndex};
use crate::actors::lease::{KeepAlive, LeaseActor, TimeToLive};
use crate::actors::watch::WatchActor;
use crate::error::ApiError;
use crate::state::NodeState;

pub mod auth;
mod cluster;
pub mod compactor;
mod concurrency;
pub mod corrupt;
pub mod election;
mod kv;
mod lease;
pub mod lock;
mod maintenance;
mod peer;
mod snapshot;
pub mod watch;

pub use peer::PeerRequests;

type Res<T> = Result<T, ApiError>;

pub use crate::actors::proposer::{MAX_APPLY_LAG_ENTRIES, Proposer};

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
    pub watch: crate::actors::watch::WatchLimits,
    /// Smallest lease TTL granted, seconds (etcd: 1.5 x election timeout, rounded up).
    pub min_lease_ttl: i64,
    /// bcrypt cost of password hashes (`--bcrypt-cost`, etcd default 10).
    pub bcrypt_cost: u32,
    /// Backend space quota, bytes (`--quota-backend-bytes`; etcd's default 2 GiB): a Put, a
    /// Txn that puts or a LeaseGrant that would take this member's store past it raises the
    /// NOSPACE alarm and is refused (etcd `quotaKVServer`).
    pub quota_backend_bytes: u64,
    /// `--strict-reconfig-check`.
    pub strict_reconfig_check: bool,
    /// `--experimental-max-learners`.
    pub max_learners: usize,
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
    pub transport: Option<Addr<crate::actors::transport::TransportActor>>,
}

/// The service. Shared by every connection behind an `Arc`.
pub struct Service {
    store: Arc<MvccStore>,
    consensus: Addr<ConsensusActor>,
    watch: Addr<WatchActor>,
    lessor: Addr<LeaseActor>,
    transport: Option<Addr<crate::actors::transport::TransportActor>>,
    proposer: Proposer,
    applied: chan::Receiver<u64>,
    state: Arc<NodeState>,
    limits: Limits,
    tokens: Arc<crate::service::auth::Tokens>,
    jwt: Option<Arc<crate::service::auth::Jwt>>,
}

impl Service {
    /// A service over the node's parts, proposing through `proposer`.
    pub fn new(
        store: Arc<MvccStore>,
        actors: Actors,
        proposer: Proposer,
        applied: chan::Receiver<u64>,
        state: Arc<NodeState>,
        limits: Limits,
        tokens: crate::service::auth::TokenProvider,
    ) -> Service {
        Service {
            store,
            consensus: actors.consensus,
            watch: actors.watch,
            lessor: actors.lessor,
            transport: actors.transport,
            proposer,
            applied,
            state,
            limits,
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

    /// The numbers `/metrics` shows at scrape time.
    pub fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        let state = self.state();
        crate::metrics::Snapshot {
            member_id: state.member_id.0,
            leader: state.leader().0,
            commit_index: state.commit_index(),
            applied_index: self.store.applied_index().index,
            quota_backend_bytes: self.quota_backend_bytes(),
            db_size_bytes: self.store.db_size_bytes(),
            db_size_in_use_bytes: self.store.quota_size_bytes(),
            keys: self.store.key_count(),
        }
    }

    /// Watch limits (stream buffer size and the rest).
    pub fn watch_limits(&self) -> crate::actors::watch::WatchLimits {
        self.limits.watch
    }

    /// The watch fanout actor: watch streams talk to it directly (watches are served from
    /// this member's store, on followers too, without consensus).
    pub fn watch(&self) -> &Addr<WatchActor> {
        &self.watch
    }

    /// The JWT keys, when tokens are JWTs (`--auth-token jwt,...`).
    pub(crate) fn jwt(&self) -> Option<&crate::service::auth::Jwt> {
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
            cluster_id: self.state.cluster_id.0,
            member_id: self.state.member_id.0,
            revision: h.map_or_else(|| self.store.current_revision(), |h| h.revision),
            raft_term: self.state.term(),
        })
    }

    /// Waits until this member has applied everything committed when the read arrived
    /// (ReadIndex, then applied index >= read index).
    pub(crate) async fn linearizable(&self) -> Res<()> {
        let t = self.limits.request_timeout;
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The index arrives through `rx`.
        crate::actors::enqueue(&self.consensus, ReadIndex(tx)).await?;
        let index = match tokio::time::timeout(t, rx).await {
            Err(_) => return Err(ApiError::Timeout),
            Ok(Err(_)) => return Err(ApiError::Stopped),
            Ok(Ok(r)) => r?,
        };
        if cfg!(feature = "planted-bug-read-before-apply") {
            return Ok(());
        }
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
        self.proposer.propose(who, request).await
    }

    fn store_err(e: etch_storage::Error) -> ApiError {
        // A read failing in the store is fatal for the store, but the client just sees the
        // request fail; the write path stops the node on the same condition.
        tracing::error!(error = %e, "store read failed");
        ApiError::Stopped
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
