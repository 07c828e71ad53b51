//! The lease expiry actor (etcd's lessor): deadlines for every lease, kept only while this
//! member is the leader, and turned into `LeaseRevoke` proposals through consensus when they
//! pass. Followers never delete on their own.
//!
//! - Promotion (this member becomes leader): every deadline is set to a full TTL from now, or
//!   to the remaining TTL last checkpointed when there is one (etcd `Promote`), so a leader
//!   change never revokes a live lease.
//! - Demotion: deadlines are dropped. Revokes and checkpoints are proposed only while this
//!   member leads in the term the lessor was promoted in, never forwarded: a stalled old
//!   leader that resumes and proposes before it learns of the new term appends to a log no
//!   quorum accepts any more, and a deposed one is refused (etcd #15247).
//! - Revokes are rate-limited ([`MAX_REVOKES_PER_SECOND`], etcd's 1000/s) so a mass expiry
//!   cannot starve client writes.
//! - Remaining TTLs of long leases are checkpointed through consensus every
//!   [`CHECKPOINT_INTERVAL`] (etcd's lease checkpoint), so they survive leader changes.
//!
//! The core is [`crate::core::lease::Lessor`] (time comes in as milliseconds); this is its
//! shell.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use etch_protocol::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest};
use etch_storage::mvcc::LeaseRecord;

use crate::actors::proposer::Proposer;
pub use crate::core::lease::{CHECKPOINT_INTERVAL, LEASE_TICK, Lessor, MAX_REVOKES_PER_SECOND};
use crate::state::NodeState;
use etch_protocol::etchpb::internal_request::Request;

/// The actor: the lessor plus leadership tracking and revoke proposals.
pub struct LeaseActor {
    lessor: Lessor,
    proposer: Proposer,
    state: Arc<NodeState>,
    epoch: Instant,
    last_checkpoint: u64,
    checkpoint_interval: Duration,
}

impl LeaseActor {
    /// A lease actor over `records`, proposing revocations and checkpoints through
    /// `proposer`.
    pub fn new(
        records: &[LeaseRecord],
        proposer: Proposer,
        state: Arc<NodeState>,
        checkpoint_interval: Duration,
    ) -> LeaseActor {
        LeaseActor {
            lessor: Lessor::new(records),
            proposer,
            state,
            epoch: Instant::now(),
            last_checkpoint: 0,
            checkpoint_interval,
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Follows the node's leadership: promote on becoming leader (or on a new term as leader),
    /// demote on losing it. Called before every answer, not only on ticks, so a new leader
    /// never answers from a lessor that has not been promoted yet.
    fn sync_role(&mut self, now: u64) {
        let leader = self.state.leader() == self.state.member_id;
        let term = self.state.term();
        if self.lessor.follow(leader, term, now) {
            tracing::info!(
                term,
                leases = self.lessor.ids().len(),
                "lessor promoted: deadlines refreshed"
            );
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = self.now();
        self.sync_role(now);
        let per_tick =
            (MAX_REVOKES_PER_SECOND as u128 * LEASE_TICK.as_millis() / 1000).max(1) as usize;
        let term = self.lessor.term();
        for id in self.lessor.expired(now, per_tick) {
            let p = self.proposer.clone();
            let fut = async move {
                p.propose_as_leader(term, Request::LeaseRevoke(LeaseRevokeRequest { id }))
                    .await
            };
            ctx.spawn(fut.into_actor(self).map(move |res, act, _| match res {
                // In this leader's log: it commits unless leadership moves (which demotes).
                Err(crate::error::ApiError::Timeout) => {
                    tracing::debug!(id, "lease revoke proposed, not applied yet");
                }
                Err(e) => {
                    tracing::debug!(id, error = %e, "lease revoke not proposed");
                    act.lessor.revoke_failed(id);
                }
                Ok(_) => {}
            }));
        }
        if self.lessor.is_primary()
            && now - self.last_checkpoint >= self.checkpoint_interval.as_millis() as u64
        {
            self.last_checkpoint = now;
            let checkpoints: Vec<LeaseCheckpoint> = self
                .lessor
                .checkpoints(now, self.checkpoint_interval)
                .into_iter()
                .map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                .collect();
            if !checkpoints.is_empty() {
                self.propose_checkpoints(checkpoints, ctx);
            }
        }
    }

    /// Proposes `checkpoints` as the leader of the lessor's term (never forwarded).
    fn propose_checkpoints(&mut self, checkpoints: Vec<LeaseCheckpoint>, ctx: &mut Context<Self>) {
        let p = self.proposer.clone();
        let term = self.lessor.term();
        ctx.spawn(
            async move {
                let n = checkpoints.len();
                if let Err(e) = p
                    .propose_as_leader(
                        term,
                        Request::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints }),
                    )
                    .await
                {
                    tracing::debug!(leases = n, error = %e, "lease checkpoint not applied");
                } else {
                    tracing::debug!(leases = n, "lease TTLs checkpointed");
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for LeaseActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(LEASE_TICK, |act, ctx| act.tick(ctx));
    }
}

/// Sent by apply for every lease change it applied (all members).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeaseApplied(pub crate::core::apply::LeaseChange);

impl Handler<LeaseApplied> for LeaseActor {
    type Result = ();
    fn handle(&mut self, m: LeaseApplied, _: &mut Context<Self>) {
        let now = self.now();
        use crate::core::apply::LeaseChange;
        match m.0 {
            LeaseChange::Granted(id, ttl) => self.lessor.granted(id, ttl, 0, now),
            LeaseChange::Revoked(id) => self.lessor.revoked(id),
            LeaseChange::Checkpointed(cps) => {
                tracing::trace!(?cps, "lease checkpoints applied");
                for (id, r) in cps {
                    self.lessor.checkpointed(id, r);
                }
            }
            LeaseChange::Replaced(records) => self.lessor.replace(&records, now),
        }
    }
}

/// Sent by the service for a keep-alive on this member. Replies with the TTL (seconds), 0 when
/// the lease is not found or is being revoked, or `None` when this member is not the leader
/// of `confirmed_term`.
#[derive(Message)]
#[rtype(result = "Option<i64>")]
pub struct KeepAlive {
    /// The lease ID.
    pub id: i64,
    /// The term in which a ReadIndex just confirmed this member's leadership and caught
    /// apply up to the commit index (0: none). A lessor promoted after the service looked
    /// (the member became leader in between) must not renew unconfirmed: a revoke the old
    /// leader left in the log may still commit.
    pub confirmed_term: u64,
}

impl Handler<KeepAlive> for LeaseActor {
    type Result = Option<i64>;
    fn handle(&mut self, m: KeepAlive, ctx: &mut Context<Self>) -> Option<i64> {
        let now = self.now();
        self.sync_role(now);
        if !self.lessor.is_primary() || self.lessor.term() != m.confirmed_term {
            return None;
        }
        let ttl = self.lessor.keep_alive(m.id, now).unwrap_or(0);
        let stale = self.lessor.take_stale_checkpoints();
        if !stale.is_empty() {
            // etcd `Renew`: the checkpoint of a renewed lease is cleared on every member.
            let checkpoints = stale
                .into_iter()
                .map(|id| LeaseCheckpoint {
                    id,
                    remaining_ttl: 0,
                })
                .collect();
            self.propose_checkpoints(checkpoints, ctx);
        }
        Some(ttl)
    }
}

/// Sent by the service for LeaseTimeToLive: (remaining, granted) seconds, `None` if unknown.
#[derive(Message)]
#[rtype(result = "Option<(i64, i64)>")]
pub struct TimeToLive(pub i64);

impl Handler<TimeToLive> for LeaseActor {
    type Result = Option<(i64, i64)>;
    fn handle(&mut self, m: TimeToLive, _: &mut Context<Self>) -> Option<(i64, i64)> {
        let now = self.now();
        self.sync_role(now);
        self.lessor.time_to_live(m.0, now)
    }
}
