//! The consensus actor: raft-rs's `RawNode` and the handling of its `Ready`s.
//!
//! [`RaftCore`] holds the raft state machine and the pending ReadIndex requests, with no actix,
//! tokio or clock types (time arrives as ticks), so it can be driven by tests and a simulator.
//! [`ConsensusActor`] is the shell: it ticks on a timer, hands `Ready` contents to the WAL and
//! apply actors, and feeds their completions back.
//!
//! Ready handling follows raft-rs's documented order (and etcd's `raft.go`, Raft thesis
//! 10.2.1):
//! 1. the leader's `messages` go out before its own fsync (it may persist in parallel);
//! 2. committed entries go to apply: raft-rs only hands out entries persisted locally;
//! 3. new entries and the hard state go to the WAL; `persisted_messages` (a follower's votes
//!    and append responses) are sent only after the WAL reports them durable, then
//!    `on_persist_ready`.
//!
//! At most one Ready is being persisted at a time: proposals that arrive during an fsync
//! gather in raft's unstable log and go out together in the next Ready (group commit).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use raft::INVALID_ID;
use raft::eraftpb::Message;
use tokio::sync::oneshot;

pub use crate::core::raft::{RaftCore, ReadyOut};
use crate::state::NodeState;

use crate::actors::apply::{ApplyActor, ApplyCommitted, PersistStore};
use crate::actors::transport::{SendMessages, TransportActor};
use crate::actors::wal::{AppendEntries, ReleaseLog, WalActor};
use crate::error::ApiError;

/// Entries kept in the raft log behind a release point, so a slightly lagging follower still
/// catches up from the log instead of a snapshot (etcd `SnapshotCatchUpEntries`).
pub const CATCH_UP_ENTRIES: u64 = 5_000;

type ReadWaiter = oneshot::Sender<Result<u64, ApiError>>;

/// What a removed member says when it stops, and when it is started again on its data dir
/// (etcd's message).
pub const REMOVED: &str = "the member has been permanently removed from the cluster";

/// The actor shell.
pub struct ConsensusActor {
    core: RaftCore<ReadWaiter>,
    wal: Addr<WalActor>,
    apply: Addr<ApplyActor>,
    transport: Option<Addr<TransportActor>>,
    state: Arc<NodeState>,
    tick_interval: Duration,
    snapshot_count: u64,
    wal_busy: bool,
    releasing: bool,
    /// Index of the newest membership applied (apply batches may complete out of order).
    membership_index: u64,
}

impl ConsensusActor {
    /// A consensus actor driving `core`, persisting through `wal`, applying through `apply`,
    /// talking to peers through `transport` (`None` for a single-member cluster).
    pub fn new(
        core: RaftCore<ReadWaiter>,
        wal: Addr<WalActor>,
        apply: Addr<ApplyActor>,
        transport: Option<Addr<TransportActor>>,
        state: Arc<NodeState>,
        tick_interval: Duration,
        snapshot_count: u64,
    ) -> ConsensusActor {
        ConsensusActor {
            core,
            wal,
            apply,
            transport,
            state,
            tick_interval,
            snapshot_count,
            wal_busy: false,
            releasing: false,
            membership_index: 0,
        }
    }

    fn fatal(&self, why: String) {
        self.state.fail(why);
    }

    fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        if let Some(t) = &self.transport {
            t.do_send(SendMessages(msgs));
        }
    }

    fn publish(&self) {
        let (term, leader, commit, last) = self.core.status();
        self.state.term.store(term, Ordering::Relaxed);
        let before = self.state.leader.swap(leader, Ordering::Relaxed);
        if leader != before {
            self.state.leader_changes.send_replace(leader);
            if leader != INVALID_ID {
                // etcd counts every change to a (new) known leader.
                metrics::counter!(crate::metrics::LEADER_CHANGES).increment(1);
            }
        }
        self.state.commit_index.store(commit, Ordering::Relaxed);
        self.state.last_index.store(last, Ordering::Relaxed);
    }

    /// An applied entry changed the membership (or replayed a change): raft-rs's
    /// configuration, the transport's peers and the node state follow it. A member that finds
    /// itself removed stops (etcd: "the member has been permanently removed from the
    /// cluster").
    fn on_membership(&mut self, index: u64, m: etch_storage::members::Membership) {
        if index < self.membership_index {
            return;
        }
        self.membership_index = index;
        if self.core.set_conf(&etch_storage::members::conf_state(&m)) {
            tracing::info!(
                index,
                voters = ?etch_storage::members::conf_state(&m).voters,
                learners = ?etch_storage::members::conf_state(&m).learners,
                "raft configuration changed"
            );
        }
        if let Some(t) = &self.transport {
            t.do_send(crate::actors::transport::SetMembers(m.clone()));
        }
        let me = self.state.member_id.0;
        let removed = etch_storage::members::is_removed(&m, me);
        self.state.set_membership(m);
        if removed {
            self.fatal(REMOVED.to_owned());
            return;
        }
        if let Err(e) = self.core.campaign_if_alone() {
            self.fatal(format!("campaign: {e}"));
        }
    }

    /// Processes Readies until one needs the WAL (then continues when it reports back).
    fn drive(&mut self, ctx: &mut Context<Self>) {
        while !self.wal_busy {
            let Some(out) = self.core.ready() else { break };
            self.publish();
            for w in out.failed_reads {
                let _ = w.send(Err(ApiError::NoLeader));
            }
            for (w, index) in out.reads {
                let _ = w.send(Ok(index));
            }
            // 1. Leader messages before our own fsync: the leader may persist in parallel with
            //    its followers (Raft thesis 10.2.1).
            self.send(out.messages);
            // 2. Committed entries to apply, in order (the apply mailbox is FIFO, one thread).
            if !out.committed.is_empty() {
                crate::metrics::queued("apply");
                let fut = self.apply.send(ApplyCommitted {
                    entries: out.committed,
                });
                ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
                    Ok(Ok((index, membership))) => {
                        // Applied first: raft-rs refuses to campaign while a configuration
                        // change is not applied.
                        act.core.on_applied(index);
                        if let Some(m) = membership {
                            act.on_membership(index, m);
                        }
                        act.maybe_release(ctx, index);
                        act.drive(ctx);
                    }
                    Ok(Err(e)) => act.fatal(format!("apply: {e}")),
                    Err(e) => act.fatal(format!("apply actor: {e}")),
                }));
            }
            // 3. Snapshot, entries and hard state to the WAL; persisted messages after the fsync.
            if out.entries.is_empty() && out.hard_state.is_none() && out.snapshot.is_none() {
                if out.number != 0 {
                    self.core.on_persisted(out.number);
                }
                self.send(out.persisted_messages);
                continue;
            }
            self.wal_busy = true;
            let snapshot_index = out.snapshot.as_ref().map(|m| m.index);
            crate::metrics::queued("wal");
            let fut = self.wal.send(AppendEntries {
                entries: out.entries,
                hard_state: out.hard_state,
                number: out.number,
                snapshot: out.snapshot,
            });
            let persisted_messages = out.persisted_messages;
            ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
                Ok(Ok(number)) => {
                    act.wal_busy = false;
                    act.core.on_persisted(number);
                    if let Some(index) = snapshot_index {
                        // The store was replaced before raft-rs saw the snapshot.
                        act.core.on_applied(index);
                    }
                    // Votes and append acknowledgements only once durable (etcd raft.go).
                    act.send(persisted_messages);
                    act.drive(ctx);
                }
                Ok(Err(e)) => act.fatal(format!("WAL: {e}")),
                Err(e) => act.fatal(format!("WAL actor: {e}")),
            }));
        }
    }

    /// Releases the raft log behind `applied` every `snapshot_count` entries: persist the
    /// store, then record the release point in the WAL and drop old segments. The order
    /// matters: the WAL may forget entries only once their effects are durable in fjall.
    fn maybe_release(&mut self, ctx: &mut Context<Self>, applied: u64) {
        let release = applied.saturating_sub(CATCH_UP_ENTRIES);
        if self.releasing || release < self.core.log().release_index() + self.snapshot_count {
            return;
        }
        self.releasing = true;
        let persist = self.apply.send(PersistStore);
        ctx.spawn(persist.into_actor(self).map(move |res, act, ctx| {
            if let Err(e) = res
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
            {
                return act.fatal(format!("persisting the store: {e}"));
            }
            let Some(meta) = act.core.log().compact_to(release) else {
                act.releasing = false;
                return;
            };
            let fut = act.wal.send(ReleaseLog { meta });
            ctx.spawn(fut.into_actor(act).map(move |res, act, _| match res {
                Ok(Ok(removed)) => {
                    act.releasing = false;
                    tracing::info!(
                        index = release,
                        segments_removed = removed,
                        "raft log released"
                    );
                }
                Ok(Err(e)) => act.fatal(format!("WAL release: {e}")),
                Err(e) => act.fatal(format!("WAL actor: {e}")),
            }));
        }));
    }
}

impl Actor for ConsensusActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(self.tick_interval, |act, ctx| {
            act.core.tick();
            act.drive(ctx);
        });
        if let Err(e) = self.core.campaign_if_alone() {
            self.fatal(format!("campaign: {e}"));
        }
        self.drive(ctx);
    }
}

/// Sent by the service for each client write: propose `data` (an encoded `InternalRequest`).
/// `Ok` means raft accepted it; the result arrives through the apply waiters.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct Propose {
    /// The encoded request.
    pub data: Vec<u8>,
}

impl Handler<Propose> for ConsensusActor {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, m: Propose, ctx: &mut Context<Self>) -> Self::Result {
        crate::metrics::dequeued("consensus");
        let r = self.core.propose(m.data);
        self.drive(ctx);
        r
    }
}

/// Sent by the service for a linearizable read. Replies at once with a receiver that yields
/// the read index (wait until applied >= it, then read locally) or `NoLeader`.
#[derive(Message)]
#[rtype(result = "oneshot::Receiver<Result<u64, ApiError>>")]
pub struct ReadIndex;

impl Handler<ReadIndex> for ConsensusActor {
    type Result = MessageResult<ReadIndex>;

    fn handle(&mut self, _: ReadIndex, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.core.read(tx);
        self.drive(ctx);
        MessageResult(rx)
    }
}

/// Sent by the transport for each raft message a peer delivered.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Step(pub Message);

impl Handler<Step> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, m: Step, ctx: &mut Context<Self>) {
        self.core.step(m.0);
        self.drive(ctx);
    }
}

/// Sent by the transport when a peer cannot be reached (raft-rs `report_unreachable`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unreachable(pub u64);

impl Handler<Unreachable> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, m: Unreachable, _: &mut Context<Self>) {
        self.core.unreachable(m.0);
    }
}

/// Sent by `run` on graceful shutdown: hand leadership to the most caught-up follower so the
/// cluster does not wait an election timeout (etcd `TransferLeadership` on stop). Replies with
/// the chosen member, if any. Also etcd's `MoveLeader`, with the target member.
#[derive(Message)]
#[rtype(result = "Option<u64>")]
pub struct TransferLeadership(pub Option<u64>);

impl Handler<TransferLeadership> for ConsensusActor {
    type Result = Option<u64>;

    fn handle(&mut self, m: TransferLeadership, ctx: &mut Context<Self>) -> Option<u64> {
        let target = self.core.transfer_leadership(m.0);
        self.drive(ctx);
        target
    }
}

/// Sent by the transport once a snapshot stream from the leader is fully written to a fresh
/// database: install it (through the apply actor) if raft-rs will accept the snapshot, then
/// step the `MsgSnapshot`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InstallSnapshot {
    /// The leader's `MsgSnapshot`.
    pub msg: Message,
    /// The received store.
    pub ingest: etch_storage::mvcc::snapshot::Ingest,
}

impl Handler<InstallSnapshot> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, m: InstallSnapshot, ctx: &mut Context<Self>) {
        let index = m.msg.get_snapshot().get_metadata().index;
        if index <= self.core.committed() {
            // raft-rs would refuse it (it only restores past the commit index): keep our store.
            tracing::info!(
                index,
                committed = self.core.committed(),
                "stale snapshot ignored"
            );
            m.ingest.abandon();
            self.core.step(m.msg);
            self.drive(ctx);
            return;
        }
        let fut = self
            .apply
            .send(crate::actors::apply::InstallStore(m.ingest));
        let msg = m.msg;
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(Ok((applied, membership))) => {
                tracing::info!(
                    index,
                    store_applied = applied,
                    "installed a snapshot from the leader"
                );
                act.core.step(msg);
                // The membership came with the store; raft-rs took its configuration from the
                // snapshot's metadata, and the transport and node state follow the store's.
                if !membership.members.is_empty() {
                    act.on_membership(index, membership);
                }
                act.drive(ctx);
            }
            Ok(Err(e)) => act.fatal(format!("installing a snapshot: {e}")),
            Err(e) => act.fatal(format!("apply actor: {e}")),
        }));
    }
}

/// Sent by the transport when a snapshot stream to a peer ended (raft-rs `report_snapshot`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SnapshotSent {
    /// The peer.
    pub to: u64,
    /// Whether the peer received all of it.
    pub ok: bool,
}

impl Handler<SnapshotSent> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, m: SnapshotSent, ctx: &mut Context<Self>) {
        self.core.snapshot_sent(m.to, m.ok);
        self.drive(ctx);
    }
}

/// Sent by the cluster service on the leader: check a membership change as etcd's leader does
/// (see [`crate::core::members::check`]) and propose it. `Ok(true)` means raft took it (the
/// result arrives through the apply waiters under `request_id`); `Ok(false)`, that another
/// change is still pending: ask again.
#[derive(Message)]
#[rtype(result = "Result<bool, ApiError>")]
pub struct ProposeMemberChange {
    /// The change.
    pub change: crate::core::members::Proposed,
    /// The proposer's waiter id.
    pub request_id: u64,
    /// `--strict-reconfig-check`.
    pub strict: bool,
    /// `--experimental-max-learners`.
    pub max_learners: usize,
}

impl Handler<ProposeMemberChange> for ConsensusActor {
    type Result = Result<bool, ApiError>;

    fn handle(&mut self, m: ProposeMemberChange, ctx: &mut Context<Self>) -> Self::Result {
        use crate::core::members::{LeaderView, Proposed, check};
        use etch_protocol::etcdserverpb::Member;
        use prost::Message as _;
        use raft::eraftpb::ConfChangeType;
        if self.state.leader().0 != self.state.member_id.0 {
            return Err(ApiError::NotLeader);
        }
        let membership = self.state.membership();
        // Heard from by raft recently, and connected now (a member that stopped is noticed at
        // once, not an election timeout later).
        let active: Vec<u64> = self
            .core
            .active_voters()
            .into_iter()
            .filter(|id| *id == self.state.member_id.0 || self.state.peer_connected(*id))
            .collect();
        let view = LeaderView {
            membership: &membership,
            me: self.state.member_id.0,
            active_voters: &active,
            strict: m.strict,
            max_learners: m.max_learners,
        };
        check(&m.change, &view, |id| self.core.learner_ready(id))?;
        let (change_type, member) = match m.change {
            Proposed::Add(x) if x.is_learner => (ConfChangeType::AddLearnerNode, x),
            Proposed::Add(x) => (ConfChangeType::AddNode, x),
            Proposed::Remove(id) => (
                ConfChangeType::RemoveNode,
                Member {
                    id,
                    ..Default::default()
                },
            ),
            Proposed::Promote(id) => (
                ConfChangeType::AddNode,
                Member {
                    id,
                    ..Default::default()
                },
            ),
        };
        let cc = crate::core::raft::single_change(change_type, member.id);
        let context = etch_protocol::etchpb::MemberChange {
            request_id: m.request_id,
            member: Some(member),
        }
        .encode_to_vec();
        let r = self.core.propose_conf_change(context, cc);
        self.drive(ctx);
        r
    }
}
