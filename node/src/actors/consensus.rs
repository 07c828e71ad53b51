//! The consensus actor: the shell around [`ConsensusCore`] (raft-rs's `RawNode`, Ready
//! handling, log release and membership rules; see `crate::core::consensus`). It ticks on a
//! timer, turns messages into core calls and carries out the [`Effect`]s the core returns:
//! WAL writes and store persistence through the WAL and apply actors, messages through the
//! transport, status and membership into the node state.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use raft::INVALID_ID;
use raft::eraftpb::Message;
use tokio::sync::oneshot;

mod inbox;
mod linger;

use crate::core::consensus::SnapshotOffer;
pub use crate::core::consensus::{
    CATCH_UP_ENTRIES, ConsensusCore, Effect, MAX_HELD_BYTES, REMOVED, RaftStatus,
};
pub use crate::core::raft::RaftCore;
use crate::state::NodeState;
pub use inbox::{Offered, ProposalInbox, TakeInbox};
use linger::{LingerEnd, LingerTimer};

use crate::actors::apply::{
    Applied, ApplyActor, ApplyCommitted, PersistStore, Waiters, has_conf_change,
};
use crate::actors::transport::{SendMessages, SetMembers, TransportActor};
use crate::actors::wal::{AppendEntries, ReleaseLog, WalActor};
use crate::error::ApiError;

/// Where a linearizable read's index (or why there is none) is sent.
pub type ReadWaiter = oneshot::Sender<Result<u64, ApiError>>;

/// The actor shell.
pub struct ConsensusActor {
    core: ConsensusCore<ReadWaiter>,
    wal: Addr<WalActor>,
    apply: Addr<ApplyActor>,
    transport: Option<Addr<TransportActor>>,
    state: Arc<NodeState>,
    tick_interval: Duration,
    /// A WAL or store write failed: nothing more is carried out while the member stops.
    failed: bool,
    /// A [`Flush`] is scheduled after the proposals waiting in the mailbox, or, under load, a
    /// [`LingerEnd`] [`linger`] later.
    flush_scheduled: bool,
    /// The linger timer ([`LingerTimer`]); `None` until started, or if the kernel refused
    /// its timerfd (lingers then use the runtime's millisecond timer).
    linger_timer: Option<LingerTimer>,
    /// The number of the latest linger: a [`LingerEnd`] of an earlier one is stale.
    linger_number: u64,
    /// The number of the linger the timer was last armed for: its expiry ends that one.
    linger_armed: u64,
    /// `etch_proposal_lingers_total` ([`crate::metrics::PROPOSAL_LINGERS`]).
    lingers: metrics::Counter,
    /// The request ids of the client proposals held since the last flush.
    held: Vec<u64>,
    /// Where client proposals wait while this leader lingers, without waking its thread
    /// ([`ProposalInbox`]); open only while a linger is.
    inbox: Arc<ProposalInbox>,
    /// The proposers' waiters: a proposal raft refuses is answered here, an applied one by
    /// the apply actor.
    waiters: Arc<Waiters>,
    /// How many proposals the last flush took (clients' and, on a leader, forwarded ones):
    /// from [`LINGER_AFTER`] on, the next flush lingers ([`linger`]).
    last_flush_len: usize,
    /// The applied index apply publishes: read at each turn ([`ConsensusActor::execute`])
    /// instead of a reply per apply batch, which would wake this thread once more per round.
    applied_rx: tokio::sync::watch::Receiver<u64>,
    /// Batches with a configuration change sent to apply and not yet reported ([`Applied`]):
    /// while any is, the applied index is not read from `applied_rx`, so raft-rs never counts
    /// a configuration change applied before it has taken the new configuration.
    conf_batches: usize,
    /// The last applied index read from `applied_rx` and given to the core.
    applied_read: u64,
}

/// Client proposals held at once, at most: a mailbox that never empties still gets its
/// proposals to raft this often.
const MAX_HELD: usize = 1_024;

/// A leader's flush that took at least this many proposals (its clients' and those followers
/// forwarded) shows a queue of writers: its next flush then waits [`linger`] after its first
/// proposal instead of going at once. Followers never linger: they forward what their mailbox
/// held at once, and the leader's linger gathers it.
const LINGER_AFTER: usize = 8;

/// How long a leader's flush lingers under load ([`LINGER_AFTER`]) at least, so more proposals
/// share one raft append per follower, one WAL write and fsync on every member and one apply
/// batch; a lone writer (one proposal per flush) never waits. As TiKV's
/// `raft-write-wait-duration` or Kafka's `linger.ms`; etcd has no such wait. A member that
/// replicates to no one (a one-member cluster) lingers this long whatever its load: its rounds
/// cost only a WAL write and fsync, and a longer wait only slowed it. Lingers are timed by a
/// timerfd of their own ([`LingerTimer`]), not by the runtime's timer, whose sleeps operate at
/// millisecond granularity (tokio's docs) and stretched 300 us to 0.3-1.3 ms.
const LINGER: Duration = Duration::from_micros(300);

/// With followers, a leader's linger grows by this much per proposal its last flush took,
/// from [`LINGER`] up to [`LINGER_MAX`]: the more writers queue, the longer one round's
/// proposals are gathered, so each replication round (an append and its acknowledgement per
/// follower, an fsync and an apply batch on every member, and the wake-ups of all of them)
/// serves more writes, while a few writers wait little. Against the millisecond timer with
/// 20 us per proposal, on 3 members: 10 clients on one connection 3,764 -> 5,942 puts/s,
/// 10/100 connections/clients 22,524 -> 23,010 puts/s and 44 -> 41 us of CPU per write
/// (docs/performance.md, "A linger that grows with the load").
const LINGER_PER_PROPOSAL: Duration = Duration::from_micros(40);

/// The longest a leader's flush lingers ([`LINGER_PER_PROPOSAL`]): 2 ms, reached from 50
/// proposals a flush.
const LINGER_MAX: Duration = Duration::from_micros(2_000);

/// How long a leader whose last flush took `last_flush_len` proposals lingers before its next
/// flush ([`LINGER`], [`LINGER_PER_PROPOSAL`], [`LINGER_MAX`]); `replicates`: whether any other
/// member receives its log.
fn linger(last_flush_len: usize, replicates: bool) -> Duration {
    if !replicates {
        return LINGER;
    }
    let n = u32::try_from(last_flush_len).unwrap_or(u32::MAX);
    LINGER_PER_PROPOSAL
        .saturating_mul(n)
        .clamp(LINGER, LINGER_MAX)
}

impl ConsensusActor {
    /// A consensus actor driving `core`, persisting through `wal`, applying through `apply`,
    /// talking to peers through `transport` (`None` for a single-member cluster), failing
    /// refused proposals through `waiters`, learning apply's progress from `applied_rx`,
    /// taking client proposals from `inbox` as well as from its mailbox.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: ConsensusCore<ReadWaiter>,
        wal: Addr<WalActor>,
        apply: Addr<ApplyActor>,
        transport: Option<Addr<TransportActor>>,
        state: Arc<NodeState>,
        tick_interval: Duration,
        waiters: Arc<Waiters>,
        applied_rx: tokio::sync::watch::Receiver<u64>,
        inbox: Arc<ProposalInbox>,
    ) -> ConsensusActor {
        let applied_read = *applied_rx.borrow();
        ConsensusActor {
            core,
            wal,
            apply,
            transport,
            state,
            tick_interval,
            failed: false,
            flush_scheduled: false,
            linger_timer: None,
            linger_number: 0,
            linger_armed: 0,
            lingers: metrics::counter!(crate::metrics::PROPOSAL_LINGERS),
            held: Vec::new(),
            inbox,
            waiters,
            last_flush_len: 0,
            applied_read,
            applied_rx,
            conf_batches: 0,
        }
    }

    /// A WAL or store write failed: fatal (the member never acknowledges what it could not
    /// write, nor retries on pages the kernel may have dropped). When the disk is full
    /// (`ENOSPC`), the member first asks its peers to raise etcd's NOSPACE alarm for it (its
    /// own raft log cannot take the proposal), at most 3 s, then stops; meanwhile this actor
    /// carries out nothing more.
    fn storage_failed(&mut self, what: &'static str, e: etch_storage::Error) {
        // No later batch may be applied on a store that misses this one, nor anything
        // persisted after a WAL write that failed.
        self.failed = true;
        let why = format!("{what}: {e}");
        let Some(transport) = self.transport.clone().filter(|_| e.is_no_space()) else {
            return self.state.fail(why);
        };
        let state = self.state.clone();
        actix::spawn(async move {
            tracing::error!(error = %why, "disk full: asking the peers to raise the NOSPACE alarm");
            let me = state.member_id.0;
            let request = etch_protocol::etcdserverpb::AlarmRequest {
                action: etch_protocol::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
                member_id: me,
                alarm: etch_protocol::etcdserverpb::AlarmType::Nospace as i32,
            };
            let timeout = std::time::Duration::from_secs(3);
            let membership = state.membership();
            let peers = membership
                .members
                .iter()
                .map(|m| m.id)
                .filter(|&id| id != me);
            let asks = peers.map(|to| {
                let ask = crate::actors::transport::Ask {
                    to,
                    body: etch_protocol::etchpb::peer_request::Body::Alarm(request),
                    timeout,
                };
                let transport = transport.clone();
                async move {
                    let Ok(Some(rx)) = transport.send(ask).await else {
                        return false;
                    };
                    matches!(
                        tokio::time::timeout(timeout, rx).await,
                        Ok(Ok(a)) if matches!(a.body, Some(etch_protocol::etchpb::peer_answer::Body::Alarm(_)))
                    )
                }
            });
            let raised = futures::future::join_all(asks)
                .await
                .into_iter()
                .any(|ok| ok);
            tracing::error!(raised, "NOSPACE alarm");
            state.fail(why);
        });
    }

    /// Carries out what the core asks for, until it asks for nothing more; completions of
    /// the WAL and apply actors come back as core calls, followed by this again. Nothing once
    /// a write failed.
    fn execute(&mut self, ctx: &mut Context<Self>) {
        if self.conf_batches == 0 && !self.failed {
            let applied = *self.applied_rx.borrow_and_update();
            if applied > self.applied_read {
                self.applied_read = applied;
                self.core.applied(applied, None);
            }
        }
        while let Some(effect) = self.core.poll() {
            if self.failed {
                return;
            }
            match effect {
                Effect::Status(s) => self.publish(s),
                Effect::Send(msgs) => {
                    if let Some(t) = &self.transport {
                        t.do_send(SendMessages(msgs));
                    }
                }
                Effect::ReadsReady(reads) => {
                    for (w, index) in reads {
                        let _ = w.send(Ok(index));
                    }
                }
                Effect::ReadsFailed(reads) => {
                    for w in reads {
                        let _ = w.send(Err(ApiError::NoLeader));
                    }
                }
                Effect::Apply(entries) => {
                    crate::metrics::queued("apply");
                    let conf_change = has_conf_change(&entries);
                    if conf_change {
                        self.conf_batches += 1;
                    }
                    self.apply.do_send(ApplyCommitted {
                        entries,
                        conf_change,
                    });
                }
                Effect::Persist(p) => {
                    crate::metrics::queued("wal");
                    let fut = self.wal.send(AppendEntries {
                        entries: p.entries,
                        hard_state: p.hard_state,
                        number: p.number,
                        snapshot: p.snapshot,
                    });
                    ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
                        match res.map_err(|e| e.to_string()) {
                            Ok(Ok(number)) => act.core.persisted(number),
                            Ok(Err(e)) => act.storage_failed("WAL", e),
                            Err(e) => act.state.fail(format!("WAL actor: {e}")),
                        }
                        act.execute(ctx);
                    }));
                }
                Effect::PersistStore => {
                    let fut = self.apply.send(PersistStore);
                    ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
                        match res.map_err(|e| e.to_string()) {
                            Ok(Ok(())) => act.core.store_persisted(),
                            Ok(Err(e)) => act.storage_failed("persisting the store", e),
                            Err(e) => act.state.fail(format!("apply actor: {e}")),
                        }
                        act.execute(ctx);
                    }));
                }
                Effect::ReleaseLog(meta) => {
                    let index = meta.index;
                    let fut = self.wal.send(ReleaseLog { meta });
                    ctx.spawn(fut.into_actor(self).map(move |res, act, _| {
                        match res.map_err(|e| e.to_string()) {
                            Ok(Ok(removed)) => {
                                act.core.log_released();
                                tracing::info!(
                                    index,
                                    segments_removed = removed,
                                    "raft log released"
                                );
                            }
                            Ok(Err(e)) => act.storage_failed("WAL release", e),
                            Err(e) => act.state.fail(format!("WAL actor: {e}")),
                        }
                    }));
                }
                Effect::Membership(m) => {
                    if let Some(t) = &self.transport {
                        t.do_send(SetMembers(m.clone()));
                    }
                    self.state.set_membership(m);
                }
                Effect::Stop(why) => self.state.fail(why),
            }
        }
    }

    /// Proposes what is held at once when it reached [`MAX_HELD`] proposals or
    /// [`MAX_HELD_BYTES`]; otherwise schedules a [`Flush`], after the messages waiting in the
    /// mailbox, or [`linger`] later under load.
    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.held_full() {
            self.flush(ctx);
        } else if !self.flush_scheduled {
            self.flush_scheduled = true;
            // A follower forwards at once: its batch waits at the leader, which holds it for
            // its own next flush (`ConsensusCore::hold_forwarded`), so lingering here too
            // only added to the forwarded writes' latency.
            if self.last_flush_len >= LINGER_AFTER && self.core.raft().is_leader() {
                // Under load: gather more for one append, one WAL write, one apply.
                let wait = linger(self.last_flush_len, self.core.raft().replicates());
                self.linger_number += 1;
                self.lingers.increment(1);
                // Client proposals now wait in the inbox without waking this thread.
                self.inbox.open();
                if self.linger_timer.as_ref().is_some_and(|t| t.arm(wait)) {
                    self.linger_armed = self.linger_number;
                } else {
                    ctx.notify_later(LingerEnd(self.linger_number), wait);
                }
            } else {
                ctx.notify(Flush);
            }
        }
    }

    /// Proposes the proposals held since the last flush and those waiting in the inbox, which
    /// it closes.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.take_inbox(true, ctx);
        self.propose_held(ctx);
    }

    /// Whether the proposals held make a full batch ([`MAX_HELD`], [`MAX_HELD_BYTES`]).
    fn held_full(&self) -> bool {
        self.core.held_len() >= MAX_HELD || self.core.held_bytes() >= MAX_HELD_BYTES
    }

    /// Proposes the proposals held (the clients' waiters fail if raft refuses them), and
    /// carries out the effects.
    fn propose_held(&mut self, ctx: &mut Context<Self>) {
        // A flush with nothing held (one scheduled before a full batch went at once) says
        // nothing about the load.
        let held = self.core.held_len();
        if held > 0 {
            self.last_flush_len = held;
        }
        let r = self.core.flush();
        for id in self.held.drain(..) {
            if let Err(e) = &r {
                self.waiters.fail(id, e.clone());
            }
        }
        self.execute(ctx);
    }

    /// Holds the client proposal of request `id` (`data`, its encoded request) for the next
    /// flush (`true`), or fails its waiter if raft cannot take it.
    fn hold(&mut self, data: Vec<u8>, id: u64) -> bool {
        match self.core.propose_later(data) {
            Ok(()) => {
                self.held.push(id);
                true
            }
            Err(e) => {
                self.waiters.fail(id, e);
                false
            }
        }
    }

    /// Stops the actor at once, first queueing in the WAL's mailbox (behind every earlier write,
    /// before anything else can produce a newer one) the hard state that only moved the commit
    /// index and waits for the next WAL write, so a restart starts from the newest commit index
    /// raft-rs handed out in a Ready (one learned while a write was in flight is not in a Ready
    /// yet, and may be past the WAL's last entry). Returns the WAL's answer to wait for, if
    /// anything was queued; nothing is queued once a write failed.
    pub fn stop_after_last_write(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> Option<actix::dev::Request<WalActor, AppendEntries>> {
        let hard_state = if self.failed {
            None
        } else {
            self.core.take_unwritten_hard_state()
        };
        ctx.stop();
        hard_state.map(|hs| {
            // `send` queues the message now (it only defers when the mailbox is full, and
            // nothing newer follows: the actor is stopping).
            self.wal.send(AppendEntries {
                entries: Vec::new(),
                hard_state: Some(hs),
                number: 0,
                snapshot: None,
            })
        })
    }

    /// Raft's status into the node state (and etcd's leader-change counter).
    fn publish(&self, s: RaftStatus) {
        self.state.term.store(s.term, Ordering::Relaxed);
        let before = self.state.leader.swap(s.leader, Ordering::Relaxed);
        if s.leader != before {
            self.state.leader_changes.send_replace(s.leader);
            if s.leader != INVALID_ID {
                // etcd counts every change to a (new) known leader.
                metrics::counter!(crate::metrics::LEADER_CHANGES).increment(1);
            }
        }
        self.state.commit_index.store(s.commit, Ordering::Relaxed);
        self.state.last_index.store(s.last, Ordering::Relaxed);
    }
}

impl Actor for ConsensusActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        if let Some((timer, expiries)) = LingerTimer::start() {
            self.linger_timer = Some(timer);
            ctx.add_stream(expiries);
        }
        ctx.run_interval(self.tick_interval, |act, ctx| {
            act.core.tick();
            act.execute(ctx);
        });
        self.core.start();
        self.execute(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // Proposals held, or waiting in the inbox, but never given to raft.
        for id in self.held.drain(..) {
            self.waiters.fail(id, ApiError::Stopped);
        }
        for (_, id) in self.inbox.close_and_take() {
            crate::metrics::dequeued("consensus");
            self.waiters.fail(id, ApiError::Stopped);
        }
    }
}

/// Sent by the proposer for each write: propose `data` (an encoded `InternalRequest`). No
/// reply: the waiter of `request_id` ([`Waiters`]) gets the applied result, or the error if
/// raft does not take the proposal, so the proposer's task is woken once per write.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Propose {
    /// The encoded request.
    pub data: Vec<u8>,
    /// The request's id, registered in the waiters.
    pub request_id: u64,
    /// `Some(term)`: only if this member leads in that term, never forwarded (the lessor's
    /// own decisions; [`ApiError::NotLeader`] otherwise); `None`: a client's write, forwarded
    /// to the leader by raft-rs.
    pub as_leader_in: Option<u64>,
}

impl Handler<Applied> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, m: Applied, ctx: &mut Context<Self>) {
        match m.outcome {
            Ok(membership) => {
                if m.conf_change {
                    self.conf_batches = self.conf_batches.saturating_sub(1);
                }
                self.core.applied(m.index, membership);
            }
            Err(e) => self.storage_failed("apply", e),
        }
        self.execute(ctx);
    }
}

impl Handler<Propose> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, m: Propose, ctx: &mut Context<Self>) {
        crate::metrics::dequeued("consensus");
        match m.as_leader_in {
            Some(term) => {
                let r = self.core.propose_as_leader(m.data, term);
                self.execute(ctx);
                if let Err(e) = r {
                    self.waiters.fail(m.request_id, e);
                }
            }
            // Client writes are held and proposed together once the mailbox is drained (the
            // Flush; under load `linger` later, meanwhile also arriving through the inbox), or
            // every MAX_HELD proposals or MAX_HELD_BYTES.
            None => {
                if self.hold(m.data, m.request_id) {
                    self.schedule_flush(ctx);
                }
            }
        }
    }
}

/// Takes the Readies of the proposals handled since the last one (actix runs a notified
/// message after the messages waiting in the mailbox; under load a [`LingerEnd`] takes its place).
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

impl Handler<Flush> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        self.flush(ctx);
    }
}

/// Sent by the service for a linearizable read, with the sender that gets the read index
/// (wait until applied >= it, then read locally) or `NoLeader`. No reply: the reader's task is
/// woken once, by that answer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReadIndex(pub ReadWaiter);

impl Handler<ReadIndex> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, m: ReadIndex, ctx: &mut Context<Self>) {
        self.core.read(m.0);
        self.execute(ctx);
    }
}

/// Sent by the transport for each raft message a peer delivered.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Step(pub Message);

impl Handler<Step> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, m: Step, ctx: &mut Context<Self>) {
        let mut m = m.0;
        if self.core.hold_forwarded(&mut m).is_some() {
            self.schedule_flush(ctx);
        } else {
            self.core.step(m);
            self.execute(ctx);
        }
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
        self.execute(ctx);
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
        match self.core.offer_snapshot(index) {
            SnapshotOffer::Install => {}
            SnapshotOffer::Stale => {
                tracing::info!(
                    index,
                    committed = self.core.raft().committed(),
                    "stale snapshot ignored"
                );
                m.ingest.abandon();
                self.core.step(m.msg);
                return self.execute(ctx);
            }
            SnapshotOffer::Busy => {
                tracing::info!(index, "snapshot ignored: another one is being installed");
                m.ingest.abandon();
                return;
            }
        }
        let fut = self
            .apply
            .send(crate::actors::apply::InstallStore(m.ingest));
        let msg = m.msg;
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            match res.map_err(|e| e.to_string()) {
                Ok(Ok((applied, membership))) => {
                    tracing::info!(
                        index,
                        store_applied = applied,
                        "installed a snapshot from the leader"
                    );
                    act.core.snapshot_installed(msg, membership);
                }
                Ok(Err(e)) => act.state.fail(format!("installing a snapshot: {e}")),
                Err(e) => act.state.fail(format!("apply actor: {e}")),
            }
            act.execute(ctx);
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
        self.execute(ctx);
    }
}

/// Sent by the cluster service on the leader: check a membership change as etcd's leader does
/// and propose it ([`ConsensusCore::propose_member_change`]). `Ok(true)` means raft took it
/// (the result arrives through the apply waiters under `request_id`); `Ok(false)`, that another
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
        let membership = self.state.membership();
        let state = self.state.clone();
        let r = self.core.propose_member_change(
            m.change,
            m.request_id,
            &membership,
            m.strict,
            m.max_learners,
            // A member that stopped is noticed at once, not an election timeout later.
            |id| state.peer_connected(id),
        );
        self.execute(ctx);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linger_grows_with_the_last_flush_between_its_bounds() {
        // A member alone lingers the least, whatever its load.
        assert_eq!(linger(1_000, false), LINGER);
        // Small flushes wait the least; from 8 proposals the wait grows by 40 us each.
        assert_eq!(linger(7, true), LINGER);
        assert_eq!(linger(LINGER_AFTER, true), Duration::from_micros(320));
        assert_eq!(linger(10, true), Duration::from_micros(400));
        assert_eq!(linger(33, true), Duration::from_micros(1_320));
        // Capped, even for a count past u32.
        assert_eq!(linger(50, true), LINGER_MAX);
        assert_eq!(linger(75, true), LINGER_MAX);
        assert_eq!(linger(MAX_HELD, true), LINGER_MAX);
        assert_eq!(linger(usize::MAX, true), LINGER_MAX);
    }
}
