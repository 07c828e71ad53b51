//! The handle through which the services and the lessor propose requests: it encodes an
//! `InternalRequest` with a request id unique across members and restarts, hands it to
//! consensus, and waits (bounded by the request timeout) until apply answers that id, or
//! consensus fails it (raft refused the proposal). Holding
//! a `Proposer` instead of the services keeps the lessor below them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::Addr;
use prost::Message as _;
use tokio::sync::watch;

use etch_protocol::etchpb::InternalRequest;
use etch_protocol::etchpb::internal_request::Request;
use etch_storage::mvcc::WriteResponse;

use crate::actors::apply::Waiters;
use crate::actors::consensus::{ConsensusActor, Offered, ProposalInbox, Propose, TakeInbox};
use crate::error::ApiError;
use crate::state::NodeState;

/// Largest gap between commit index and applied index at which new proposals are still taken
/// (etcd `maxGapBetweenApplyAndCommitIndex`); past it, clients get "too many requests".
pub const MAX_APPLY_LAG_ENTRIES: u64 = 5000;

/// Proposes through consensus and waits for the applied answer. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    consensus: Addr<ConsensusActor>,
    /// Where a client's proposal goes instead of the mailbox while the leader lingers.
    inbox: Arc<ProposalInbox>,
    waiters: Arc<Waiters>,
    applied: watch::Receiver<u64>,
    state: Arc<NodeState>,
    next_id: Arc<AtomicU64>,
    max_request_bytes: usize,
    request_timeout: Duration,
}

impl Proposer {
    /// A proposer through `consensus` (its mailbox, or `inbox` while it lingers), answered by
    /// apply through `waiters`; `applied` is the applied index apply publishes. Requests over
    /// `max_request_bytes` encoded are refused; answers are awaited at most `request_timeout`.
    pub fn new(
        consensus: Addr<ConsensusActor>,
        inbox: Arc<ProposalInbox>,
        waiters: Arc<Waiters>,
        applied: watch::Receiver<u64>,
        state: Arc<NodeState>,
        max_request_bytes: usize,
        request_timeout: Duration,
    ) -> Proposer {
        // Request ids: the member ID's low 16 bits, then a counter seeded from the clock, so ids
        // stay unique across restarts and members (etcd `idutil.Generator`).
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let first = ((state.member_id.0 & 0xFFFF) << 48) | ((millis & 0xFF_FFFF_FFFF) << 8);
        Proposer {
            consensus,
            inbox,
            waiters,
            applied,
            state,
            next_id: Arc::new(AtomicU64::new(first)),
            max_request_bytes,
            request_timeout,
        }
    }

    /// A fresh id from the request id sequence (also used for server-chosen lease IDs).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Proposes `request` on behalf of `who` (`None`: the server itself, never
    /// permission-checked) and waits until it is applied.
    ///
    /// # Errors
    /// The request's own error at apply; [`ApiError::TooManyRequests`] when apply lags,
    /// [`ApiError::TooLarge`], no leader, [`ApiError::Timeout`], [`ApiError::Stopped`].
    pub async fn propose(
        &self,
        who: Option<&etch_protocol::etchpb::AuthInfo>,
        request: Request,
    ) -> Result<WriteResponse, ApiError> {
        self.counted(who, request, None).await
    }

    /// Proposes what the leader of `term` decided alone (the lessor's revokes and
    /// checkpoints) and waits until it is applied. Refused, never forwarded, when this member
    /// no longer leads in `term`: a new leader must not commit a revoke decided on a deposed
    /// leader's deadlines (etcd issue 15247).
    ///
    /// # Errors
    /// As [`Proposer::propose`]; [`ApiError::NotLeader`] when this member does not lead in
    /// `term` (nothing was proposed). [`ApiError::Timeout`] leaves the outcome unknown: the
    /// entry is in this leader's log and commits unless leadership moves first (or, when the
    /// member is stopping, the proposal never left consensus's mailbox).
    pub async fn propose_as_leader(
        &self,
        term: u64,
        request: Request,
    ) -> Result<WriteResponse, ApiError> {
        self.counted(None, request, Some(term)).await
    }

    /// [`Proposer::propose_inner`], counted in the pending and failed proposal metrics.
    async fn counted(
        &self,
        who: Option<&etch_protocol::etchpb::AuthInfo>,
        request: Request,
        as_leader_in: Option<u64>,
    ) -> Result<WriteResponse, ApiError> {
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
        let r = self.propose_inner(who, request, as_leader_in).await;
        if matches!(&r, Err(e) if !matches!(e, ApiError::Request(_))) {
            m::hot().proposals_failed.increment(1);
        }
        r
    }

    async fn propose_inner(
        &self,
        who: Option<&etch_protocol::etchpb::AuthInfo>,
        request: Request,
        as_leader_in: Option<u64>,
    ) -> Result<WriteResponse, ApiError> {
        let applied = *self.applied.borrow();
        if self.state.commit_index() > applied + MAX_APPLY_LAG_ENTRIES {
            return Err(ApiError::TooManyRequests);
        }
        let id = self.next_id();
        let data = InternalRequest {
            id,
            request: Some(request),
            auth: who.cloned(),
        }
        .encode_to_vec();
        if data.len() > self.max_request_bytes {
            return Err(ApiError::TooLarge);
        }
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let rx = self.waiters.register(id);
        crate::metrics::queued("consensus");
        let propose = |data| Propose {
            data,
            request_id: id,
            as_leader_in,
        };
        // A client's write waits in the inbox while the leader lingers (no wake-up of its
        // thread); anything else, or with the inbox closed or full, goes through the mailbox.
        let sent = match as_leader_in {
            None => match self.inbox.offer(data, id) {
                Offered::Held => Ok(()),
                Offered::Wake => match crate::actors::enqueue(&self.consensus, TakeInbox).await {
                    // Taken before the actor stopped: the waiter gets the outcome.
                    Err(_) if !self.inbox.withdraw(id) => Ok(()),
                    sent => sent,
                },
                Offered::Refused(data) => {
                    crate::actors::enqueue(&self.consensus, propose(data)).await
                }
            },
            Some(_) => crate::actors::enqueue(&self.consensus, propose(data)).await,
        };
        // The answer (or raft's refusal) arrives through the waiter.
        if let Err(e) = sent {
            self.waiters.cancel(id);
            return Err(e);
        }
        self.answer(id, rx, deadline).await
    }

    /// What consensus answered to a membership change with waiter `id`: on any failure the
    /// waiter goes.
    fn settle<T>(
        &self,
        id: u64,
        sent: Result<Result<T, ApiError>, actix::MailboxError>,
    ) -> Result<T, ApiError> {
        let r = sent.unwrap_or(Err(ApiError::Stopped));
        if r.is_err() {
            self.waiters.cancel(id);
        }
        r
    }

    /// Waits (until `deadline`) for apply to answer waiter `id`.
    async fn answer(
        &self,
        id: u64,
        rx: tokio::sync::oneshot::Receiver<crate::actors::apply::Answer>,
        deadline: tokio::time::Instant,
    ) -> Result<WriteResponse, ApiError> {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ApiError::Stopped),
            Err(_) => {
                self.waiters.cancel(id);
                Err(ApiError::Timeout)
            }
        }
    }

    /// Proposes a membership change on the leader (checked there as etcd's leader does) and
    /// waits until it is applied; another change still pending is waited out, within the
    /// request timeout.
    ///
    /// # Errors
    /// The change's error at apply or at the leader's checks, [`ApiError::NotLeader`],
    /// [`ApiError::Timeout`], [`ApiError::Stopped`].
    pub async fn propose_member_change(
        &self,
        change: crate::core::members::Proposed,
        strict: bool,
        max_learners: usize,
    ) -> Result<WriteResponse, ApiError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let id = self.next_id();
        let rx = self.waiters.register(id);
        loop {
            let sent = self
                .consensus
                .send(crate::actors::consensus::ProposeMemberChange {
                    change: change.clone(),
                    request_id: id,
                    strict,
                    max_learners,
                })
                .await;
            let sent = match sent {
                Ok(Ok(false)) if tokio::time::Instant::now() >= deadline => {
                    Ok(Err(ApiError::Timeout))
                }
                other => other,
            };
            if self.settle(id, sent)? {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.answer(id, rx, deadline).await
    }
}
