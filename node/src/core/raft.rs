//! The raft state machine of one member: raft-rs's `RawNode` over the in-memory [`RaftLog`],
//! plus the pending linearizable reads (ReadIndex). No actix, tokio or clock types: time
//! arrives as [`RaftCore::tick`] calls, IO is what [`RaftCore::ready`] returns for the caller
//! to carry out, and completions come back through [`RaftCore::on_persisted`] and
//! [`RaftCore::on_applied`]. `crate::actors::consensus::ConsensusActor` drives it in a node; the
//! cluster simulator (`tests/src/sim/`) drives several over a simulated network and disk.
//!
//! The caller must follow raft-rs's documented Ready order (etcd `raft.go`, Raft thesis
//! 10.2.1): [`ReadyOut::messages`] may go out at once; [`ReadyOut::committed`] may be applied
//! at once; [`ReadyOut::entries`] and [`ReadyOut::hard_state`] must be durable before
//! [`ReadyOut::persisted_messages`] are sent and before [`RaftCore::on_persisted`], except a
//! hard state that only moves the commit index, which needs no fsync and may be written
//! later ([`ReadyOut::must_sync`]: raft-rs's `Ready::must_sync`, etcd's `raft.MustSync`).

use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, HardState, Message,
    MessageType, SnapshotMetadata,
};
use raft::{Config as RaftConfig, INVALID_ID, RawNode, StateRole};

use etch_storage::raftlog::RaftLog;

use crate::error::ApiError;

/// What one Ready asks the shell to do.
pub struct ReadyOut<W> {
    /// Messages to send now (the leader's appends and heartbeats).
    pub messages: Vec<Message>,
    /// Committed, locally persisted entries to apply, in order.
    pub committed: Vec<Entry>,
    /// Entries to make durable.
    pub entries: Vec<Entry>,
    /// Hard state to make durable, if it changed (a change of the commit index alone needs
    /// no fsync).
    pub hard_state: Option<HardState>,
    /// Whether `entries`, `hard_state` and the snapshot must be fsynced before
    /// `persisted_messages` go out: raft-rs's `Ready::must_sync`, false only when there are no
    /// entries and no snapshot and the hard state changed at most in its commit index (etcd's
    /// `raft.MustSync`, etcd v3.5 `raft/node.go`). The commit index is recovered from the
    /// leader and the store's applied index after a crash, so such a Ready needs no write
    /// before its persisted messages go out.
    pub must_sync: bool,
    /// Messages to send once `entries` and `hard_state` are durable.
    pub persisted_messages: Vec<Message>,
    /// The Ready's number, for [`RaftCore::on_persisted`].
    pub number: u64,
    /// Read requests whose ReadIndex is known: wait until applied >= index, then read.
    pub reads: Vec<(W, u64)>,
    /// Read requests that cannot be served (no leader).
    pub failed_reads: Vec<W>,
    /// A snapshot raft-rs accepted from the leader (the store already holds it): to record in
    /// the WAL before the entries.
    pub snapshot: Option<SnapshotMetadata>,
}

/// The raft state machine plus pending linearizable reads; `W` is a read waiter.
pub struct RaftCore<W> {
    node: RawNode<RaftLog>,
    log: RaftLog,
    pending_reads: Vec<W>,
    /// (context, waiters, tick issued at) of the ReadIndex request in flight.
    inflight_read: Option<(u64, Vec<W>, u64)>,
    next_read_ctx: u64,
    ticks: u64,
    election_ticks: u64,
    /// The tick at which each peer's last message was stepped, for [`RaftCore::active_voters`]:
    /// members of the current configuration only (a message from any other id is not
    /// recorded, and a member leaves it with the configuration), so it never outgrows the
    /// membership.
    heard_at: std::collections::HashMap<u64, u64>,
    /// Peer messages dropped by [`RaftCore::unsafe_to_step`]: the tick of the last warning
    /// logged, and how many were dropped since without one.
    drop_warning: DropWarning,
}

/// Ticks between two "peer message dropped" warnings: at most one a second at etcd's default
/// 100 ms heartbeat, however fast a faulty peer repeats a refused message.
pub const DROP_WARNING_TICKS: u64 = 10;

/// Rate limit of the "peer message dropped" warning.
#[derive(Debug, Default)]
struct DropWarning {
    /// Tick of the last warning; `None` before the first.
    warned_at: Option<u64>,
    /// Messages dropped since that warning without one of their own.
    suppressed: u64,
}

impl DropWarning {
    /// One more dropped message at `tick`: `Some(n)` when it gets a warning, `n` being the
    /// drops since the last warning that got none; `None` inside [`DROP_WARNING_TICKS`] of
    /// the last warning.
    fn dropped(&mut self, tick: u64) -> Option<u64> {
        if self
            .warned_at
            .is_some_and(|at| tick.saturating_sub(at) < DROP_WARNING_TICKS)
        {
            self.suppressed += 1;
            return None;
        }
        self.warned_at = Some(tick);
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl<W> RaftCore<W> {
    /// A raft node for member `id` over `log`, with `applied` the store's applied index.
    /// Election timeouts are randomized by raft-rs in `[election_ticks, 2 * election_ticks)`.
    ///
    /// # Errors
    /// raft-rs's config or log validation errors.
    pub fn new(
        id: u64,
        log: RaftLog,
        applied: u64,
        election_ticks: usize,
        logger: &slog::Logger,
    ) -> raft::Result<RaftCore<W>> {
        Self::build(id, log, applied, election_ticks, 2 * election_ticks, logger)
    }

    /// Like [`RaftCore::new`], but every election timeout is exactly `election_ticks`: raft-rs
    /// draws randomized timeouts from the thread's RNG, which a seeded simulation cannot
    /// replay, so the simulator randomizes each member's tick length instead.
    ///
    /// # Errors
    /// raft-rs's config or log validation errors.
    pub fn new_fixed_timeout(
        id: u64,
        log: RaftLog,
        applied: u64,
        election_ticks: usize,
        logger: &slog::Logger,
    ) -> raft::Result<RaftCore<W>> {
        Self::build(id, log, applied, election_ticks, election_ticks + 1, logger)
    }

    fn build(
        id: u64,
        log: RaftLog,
        applied: u64,
        election_ticks: usize,
        max_election_ticks: usize,
        logger: &slog::Logger,
    ) -> raft::Result<RaftCore<W>> {
        // The store may have applied entries whose commit the WAL has not recorded yet: a hard
        // state that only moves the commit index waits for the next WAL write (after a kill,
        // the last ones are not on disk), while apply runs at once.
        // raft-rs refuses an applied index above the commit index, so start from the recorded
        // commit index; the store skips the entries it already holds when raft-rs hands them
        // out again (etcd passes no applied index at all and skips by its consistent index).
        let committed = raft::Storage::initial_state(&log)?.hard_state.commit;
        let applied = applied.min(committed);
        let cfg = RaftConfig {
            id,
            election_tick: election_ticks,
            min_election_tick: election_ticks,
            max_election_tick: max_election_ticks,
            heartbeat_tick: 1,
            applied,
            // 1 MiB per append message and 256 in flight, as etcd.
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            // `batch_append` stays off: the cluster simulator crashed followers with it
            // ("to_commit out of range"); proposals held together are proposed as one
            // message instead (`propose_batch`), which gets one append per follower.
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        cfg.validate()?;
        let node = RawNode::new(&cfg, log.clone(), logger)?;
        Ok(RaftCore {
            node,
            log,
            pending_reads: Vec::new(),
            inflight_read: None,
            next_read_ctx: 1,
            ticks: 0,
            election_ticks: election_ticks as u64,
            heard_at: std::collections::HashMap::new(),
            drop_warning: DropWarning::default(),
        })
    }

    /// Starts an election at once when this member is the only voter, so a single-member
    /// cluster serves right after start instead of after an election timeout.
    pub fn campaign_if_alone(&mut self) -> raft::Result<()> {
        let cs: ConfState = self.log.conf_state();
        if cs.voters == [self.node.raft.id] && self.node.raft.state != StateRole::Leader {
            self.node.campaign()?;
        }
        Ok(())
    }

    /// One raft tick (a heartbeat interval).
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.node.tick();
        // raft-rs drops a ReadIndex silently in some states (a new leader that has not committed
        // in its term, a follower without a leader): retry an old one.
        let stale = self
            .inflight_read
            .as_ref()
            .is_some_and(|(_, _, at)| self.ticks - at > self.election_ticks);
        if stale && let Some((_, mut waiters, _)) = self.inflight_read.take() {
            waiters.append(&mut self.pending_reads);
            self.pending_reads = waiters;
        }
        self.issue_read();
    }

    /// Proposes `data` (an encoded `InternalRequest`).
    ///
    /// # Errors
    /// [`ApiError::NoLeader`] when there is no leader to take it.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), ApiError> {
        if self.node.raft.leader_id == INVALID_ID {
            return Err(ApiError::NoLeader);
        }
        self.node
            .propose(Vec::new(), data)
            .map_err(|_| ApiError::NoLeader)
    }

    /// Proposes every entry of `batch` (encoded `InternalRequest`s) in one raft message, as
    /// raft-rs's `propose` does for one: a leader appends them all and sends one append per
    /// follower; a follower forwards the message to its leader whole.
    ///
    /// # Errors
    /// [`ApiError::NoLeader`] when there is no leader to take them, or raft-rs drops them (a
    /// leader transfer in progress).
    pub fn propose_batch(&mut self, batch: Vec<Vec<u8>>) -> Result<(), ApiError> {
        if self.node.raft.leader_id == INVALID_ID {
            return Err(ApiError::NoLeader);
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.node.raft.id;
        let entries: Vec<Entry> = batch
            .into_iter()
            .map(|data| Entry {
                data: data.into(),
                ..Default::default()
            })
            .collect();
        m.set_entries(entries.into());
        self.node.raft.step(m).map_err(|_| ApiError::NoLeader)
    }

    /// Whether this member is the leader.
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// Whether the log goes to another member (a voter or a learner) besides this one.
    pub fn replicates(&self) -> bool {
        self.node.raft.prs().iter().len() > 1
    }

    /// Whether a leader is known.
    pub fn has_leader(&self) -> bool {
        self.node.raft.leader_id != INVALID_ID
    }

    /// Proposes `data` only if this member leads in `term`; never forwarded. For what a
    /// leader decides alone (the lessor's revokes and checkpoints): a plain proposal on a
    /// member that was deposed since would be forwarded by raft-rs to the new leader, which
    /// commits a revoke decided on the old leader's deadlines (etcd issue 15247).
    ///
    /// # Errors
    /// [`ApiError::NotLeader`] when this member is not the leader of `term`.
    pub fn propose_as_leader(&mut self, data: Vec<u8>, term: u64) -> Result<(), ApiError> {
        let r = &self.node.raft;
        if r.state != StateRole::Leader || r.term != term {
            return Err(ApiError::NotLeader);
        }
        self.node
            .propose(Vec::new(), data)
            .map_err(|_| ApiError::NotLeader)
    }

    /// Proposes a raft configuration change (`cc`, with the encoded `etchpb.MemberChange` as
    /// `context`); `Ok(false)` when another change is proposed and not yet applied (also on a
    /// new leader until it has applied its log): raft-rs would silently turn this one into an
    /// empty entry, so the caller asks again later (etcd's one change at a time).
    ///
    /// # Errors
    /// [`ApiError::NotLeader`] on a follower (membership changes are decided by the leader).
    pub fn propose_conf_change(
        &mut self,
        context: Vec<u8>,
        cc: ConfChangeV2,
    ) -> Result<bool, ApiError> {
        if self.node.raft.state != StateRole::Leader {
            return Err(ApiError::NotLeader);
        }
        if self.node.raft.has_pending_conf() {
            return Ok(false);
        }
        self.node
            .propose_conf_change(context, cc)
            .map_err(|_| ApiError::NotLeader)?;
        Ok(true)
    }

    /// Moves raft-rs's configuration to `target` (the voters and learners of the applied
    /// membership), one simple change per member that differs, and records it in the log for
    /// snapshots and release points. Called after every applied membership entry, and after an
    /// entry the store had already applied (a replay or an installed snapshot), so raft-rs
    /// always agrees with the store. Returns whether anything changed.
    pub fn set_conf(&mut self, target: &ConfState) -> bool {
        let current = self.node.raft.prs().conf().to_conf_state();
        let mut changes = Vec::new();
        for id in &target.voters {
            if !current.voters.contains(id) {
                changes.push((ConfChangeType::AddNode, *id));
            }
        }
        for id in &target.learners {
            if !current.learners.contains(id) {
                changes.push((ConfChangeType::AddLearnerNode, *id));
            }
        }
        for id in current.voters.iter().chain(&current.learners) {
            if !target.voters.contains(id) && !target.learners.contains(id) {
                changes.push((ConfChangeType::RemoveNode, *id));
            }
        }
        let changed = !changes.is_empty();
        for (change_type, node_id) in changes {
            let cc = single_change(change_type, node_id);
            if let Err(e) = self.node.apply_conf_change(&cc) {
                tracing::error!(error = %e, node_id, "raft refused a configuration change");
            }
        }
        // The log's copy (for snapshots and release points) is always raft-rs's own.
        self.log
            .set_conf_state(self.node.raft.prs().conf().to_conf_state());
        let prs = self.node.raft.prs();
        self.heard_at.retain(|id, _| prs.get(*id).is_some());
        changed
    }

    /// How many peers [`RaftCore::active_voters`] keeps a last-heard tick for.
    #[cfg(test)]
    pub(crate) fn heard_len(&self) -> usize {
        self.heard_at.len()
    }

    /// Whether learner `id` has caught up enough to be promoted: its match index is at least
    /// 90% of the leader's (etcd `isLearnerReady`). Only meaningful on the leader.
    pub fn learner_ready(&self, id: u64) -> bool {
        let r = &self.node.raft;
        let (Some(me), Some(it)) = (r.prs().get(r.id), r.prs().get(id)) else {
            return false;
        };
        it.matched as f64 >= me.matched as f64 * 0.9
    }

    /// The voters the leader heard from within the last election timeout, this member
    /// included; empty on a follower. raft-rs's own `recent_active` is cleared at every
    /// CheckQuorum (once per election timeout) until each peer's next message, so right after
    /// one it would show every peer inactive: a window over the ticks is kept here instead.
    pub fn active_voters(&self) -> Vec<u64> {
        let r = &self.node.raft;
        if r.state != StateRole::Leader {
            return Vec::new();
        }
        let voters = r.prs().conf().to_conf_state().voters;
        let recent = |id: &u64| {
            self.heard_at
                .get(id)
                .is_some_and(|at| self.ticks - at <= self.election_ticks)
        };
        voters
            .into_iter()
            .filter(|id| {
                *id == r.id || recent(id) || r.prs().get(*id).is_some_and(|p| p.recent_active)
            })
            .collect()
    }

    /// Queues a linearizable read; its index arrives in a later [`ReadyOut::reads`].
    pub fn read(&mut self, w: W) {
        self.pending_reads.push(w);
        self.issue_read();
    }

    /// Takes every queued and in-flight read, to fail them (no leader, or the member stops).
    pub fn fail_reads(&mut self) -> Vec<W> {
        let mut out = std::mem::take(&mut self.pending_reads);
        if let Some((_, w, _)) = self.inflight_read.take() {
            out.extend(w);
        }
        out
    }

    fn issue_read(&mut self) {
        if self.inflight_read.is_some() || self.pending_reads.is_empty() {
            return;
        }
        if self.node.raft.leader_id == INVALID_ID {
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        // The context must be unique in the whole cluster: the leader ignores a ReadIndex whose
        // context is already pending, so two members counting from 1 would stall each other.
        self.node.read_index(read_ctx(self.node.raft.id, ctx));
        let waiters = std::mem::take(&mut self.pending_reads);
        self.inflight_read = Some((ctx, waiters, self.ticks));
    }

    /// Takes the next Ready, if raft has one.
    pub fn ready(&mut self) -> Option<ReadyOut<W>> {
        let mut failed_reads = Vec::new();
        if self.node.raft.leader_id == INVALID_ID
            && (self.inflight_read.is_some() || !self.pending_reads.is_empty())
        {
            failed_reads = self.fail_reads();
        }
        if !self.node.has_ready() {
            if failed_reads.is_empty() {
                return None;
            }
            return Some(ReadyOut {
                messages: Vec::new(),
                committed: Vec::new(),
                entries: Vec::new(),
                hard_state: None,
                must_sync: false,
                persisted_messages: Vec::new(),
                number: 0,
                reads: Vec::new(),
                failed_reads,
                snapshot: None,
            });
        }
        let mut rd = self.node.ready();
        let mut reads = Vec::new();
        for rs in rd.take_read_states() {
            if let Some((want, _, _)) = &self.inflight_read
                && read_ctx(self.node.raft.id, *want) == rs.request_ctx
                && let Some((_, waiters, _)) = self.inflight_read.take()
            {
                reads.extend(waiters.into_iter().map(|w| (w, rs.index)));
            }
        }
        let snapshot = if rd.snapshot().is_empty() {
            None
        } else {
            let meta = rd.snapshot().get_metadata().clone();
            // The log restarts at the snapshot; entries in this Ready follow it. raft-rs may
            // already be past the snapshot's configuration (the store that came with it was
            // newer, `set_conf`): the log keeps raft-rs's.
            self.log.apply_snapshot(&meta);
            self.log
                .set_conf_state(self.node.raft.prs().conf().to_conf_state());
            tracing::info!(
                index = meta.index,
                term = meta.term,
                "raft snapshot applied to the log"
            );
            Some(meta)
        };
        let messages = rd.take_messages();
        let committed = rd.take_committed_entries();
        let entries = rd.take_entries();
        let hard_state = rd.hs().cloned();
        let must_sync = rd.must_sync();
        // The in-memory log serves raft-rs at once; durability is the WAL's (before
        // `on_persisted`).
        self.log.append(&entries);
        if let Some(hs) = &hard_state {
            self.log.set_hard_state(hs.clone());
        }
        let persisted_messages = rd.take_persisted_messages();
        let number = rd.number();
        self.node.advance_append_async(rd);
        self.issue_read();
        Some(ReadyOut {
            messages,
            committed,
            entries,
            hard_state,
            must_sync,
            persisted_messages,
            number,
            reads,
            failed_reads,
            snapshot,
        })
    }

    /// The WAL made Ready `number` (and all before it) durable.
    pub fn on_persisted(&mut self, number: u64) {
        self.node.on_persist_ready(number);
    }

    /// Apply reached `index`. Completions may arrive out of order (several apply batches are
    /// in flight); only progress is reported to raft-rs, which requires it to be monotonic.
    pub fn on_applied(&mut self, index: u64) {
        self.log.set_applied(index);
        let log = &self.node.raft.raft_log;
        if index > log.applied && index <= log.committed.min(log.persisted) {
            self.node.advance_apply_to(index);
        }
    }

    /// The commit index.
    pub fn committed(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// The outcome of a snapshot sent to `to` (raft-rs `report_snapshot`).
    pub fn snapshot_sent(&mut self, to: u64, ok: bool) {
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.node.report_snapshot(to, status);
    }

    /// Why stepping `m` would find this member's log shorter than the leader knows it to be,
    /// or `None`. A heartbeat carries at most what this member acknowledged (raft-rs sends
    /// `min(match, commit)`), so a commit index past this member's last index means it lost
    /// entries it acknowledged: its data directory was wiped or restored from an older copy,
    /// or it belongs to another cluster with the same member IDs. raft-rs panics on such a
    /// heartbeat (`RaftLog::commit_to`: "to_commit N is out of range [last_index M]"), as
    /// etcd does; the caller stops the member with this reason instead.
    pub fn lost_acknowledged_entries(&self, m: &Message) -> Option<String> {
        let r = &self.node.raft;
        if m.get_msg_type() != MessageType::MsgHeartbeat || m.term < r.term {
            return None;
        }
        let last = r.raft_log.last_index();
        (m.commit > last && m.commit > r.raft_log.committed).then(|| {
            format!(
                "member {:x} sent commit index {} but this member's log ends at index {}: this \
                 member lost entries it acknowledged (its data directory was wiped or restored \
                 from an older copy, or it belongs to another cluster with the same member \
                 IDs); remove it (member remove) and add it again with an empty data directory",
                m.from, m.commit, last
            )
        })
    }

    /// Steps a message from a peer. Messages raft-rs refuses (a local message type, an unknown
    /// sender's response) are dropped: peers cannot make this fail. The transport has
    /// refused messages whose fields disagree (`peer::check_shape`); two more that raft-rs
    /// would panic on, given this member's state, are dropped here ([`RaftCore::unsafe_to_step`])
    /// with a warning, at most one every [`DROP_WARNING_TICKS`] (it counts the drops it stood
    /// for: `suppressed`).
    pub fn step(&mut self, m: Message) {
        if let Some(why) = self.unsafe_to_step(&m) {
            if let Some(suppressed) = self.drop_warning.dropped(self.ticks) {
                tracing::warn!(from = %etch_protocol::ids::MemberId(m.from), kind = ?m.get_msg_type(), why, suppressed, "peer message dropped");
            }
            return;
        }
        if m.from != INVALID_ID
            && m.term == self.node.raft.term
            && self.node.raft.prs().get(m.from).is_some()
        {
            self.heard_at.insert(m.from, self.ticks);
        }
        if let Err(e) = self.node.step(m) {
            tracing::debug!(error = %e, "peer message dropped");
        }
    }

    /// Why raft-rs 0.7 would panic stepping `m` in this member's state, or `None`; no correct
    /// peer sends either message:
    /// - a leader transfer reaching a member that does not lead: a follower forwards it to
    ///   its leader, and raft-rs's `send` panics on a forwarded message that has a term
    ///   ("term should not be set"), which every message from the network has;
    /// - a granted vote reaching a candidate whose log is not all durable yet: raft-rs sends
    ///   vote requests only once the log is persisted, and `become_leader` asserts it is.
    pub fn unsafe_to_step(&self, m: &Message) -> Option<&'static str> {
        let r = &self.node.raft;
        match m.get_msg_type() {
            MessageType::MsgTransferLeader if r.state != StateRole::Leader => {
                Some("a leader transfer to a member that does not lead")
            }
            MessageType::MsgRequestVoteResponse
                if !m.reject
                    && r.state == StateRole::Candidate
                    && r.raft_log.persisted < r.raft_log.last_index() =>
            {
                Some("a vote for a candidate whose log is not durable yet")
            }
            _ => None,
        }
    }

    /// A peer could not be reached: raft-rs stops pipelining to it and probes instead.
    pub fn unreachable(&mut self, id: u64) {
        self.node.report_unreachable(id);
    }

    /// Starts handing leadership to `to`, or to the most caught-up voter when `to` is `None`;
    /// returns the chosen member's ID, or `None` when this member is not the leader or the
    /// target is not another voter.
    pub fn transfer_leadership(&mut self, to: Option<u64>) -> Option<u64> {
        let r = &self.node.raft;
        if r.state != StateRole::Leader {
            return None;
        }
        let me = r.id;
        let target = r
            .prs()
            .iter()
            .filter(|(id, _)| **id != me && to.is_none_or(|t| t == **id))
            .max_by_key(|(_, pr)| pr.matched)
            .map(|(id, _)| *id)?;
        self.node.transfer_leader(target);
        Some(target)
    }

    /// The raft log (for releasing entries).
    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// (term, leader id, commit index, last log index).
    pub fn status(&self) -> (u64, u64, u64, u64) {
        let r = &self.node.raft;
        (
            r.term,
            r.leader_id,
            r.raft_log.committed,
            self.log.last_index(),
        )
    }
}

/// The first entries of a new cluster's log, the same on every initial member: one
/// configuration change per member adding it as a voter (index 1.., term 1, in `members`
/// order), the member itself as context (etcd writes the same bootstrap entries). A member
/// that joins later replays them and so learns the whole membership history from index 1.
pub fn bootstrap_entries(members: &[etch_protocol::etcdserverpb::Member]) -> Vec<Entry> {
    members
        .iter()
        .enumerate()
        .map(|(i, m)| conf_change_entry(i as u64 + 1, 1, ConfChangeType::AddNode, m.clone()))
        .collect()
}

/// A raft entry (`index`, `term`) carrying one configuration change of `member` with the
/// member as context, as the leader proposes them (no waiter).
pub fn conf_change_entry(
    index: u64,
    term: u64,
    change_type: ConfChangeType,
    member: etch_protocol::etcdserverpb::Member,
) -> Entry {
    use prost::Message as _;
    use protobuf::Message as _;
    let cc = single_change(change_type, member.id);
    let mut e = Entry {
        index,
        term,
        data: cc.write_to_bytes().unwrap_or_default().into(),
        context: etch_protocol::etchpb::MemberChange {
            request_id: 0,
            member: Some(member),
        }
        .encode_to_vec()
        .into(),
        ..Default::default()
    };
    e.set_entry_type(raft::eraftpb::EntryType::EntryConfChangeV2);
    e
}

/// A configuration change of one member (etcd's one-at-a-time rule: never a joint change).
pub fn single_change(change_type: ConfChangeType, node_id: u64) -> ConfChangeV2 {
    ConfChangeV2 {
        changes: vec![ConfChangeSingle {
            change_type,
            node_id,
            ..Default::default()
        }]
        .into(),
        ..Default::default()
    }
}

/// A ReadIndex context: this member's ID then its request sequence, both big-endian.
fn read_ctx(member: u64, seq: u64) -> Vec<u8> {
    let mut v = member.to_be_bytes().to_vec();
    v.extend_from_slice(&seq.to_be_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::{DROP_WARNING_TICKS, DropWarning};

    #[test]
    fn dropped_peer_messages_warn_once_per_interval_and_count_the_rest() {
        let mut w = DropWarning::default();
        assert_eq!(w.dropped(5), Some(0), "the first drop warns");
        let quiet = (0..100).filter_map(|_| w.dropped(5)).count();
        assert_eq!(quiet, 0, "drops within the interval stay quiet");
        assert_eq!(w.dropped(5 + DROP_WARNING_TICKS - 1), None);
        assert_eq!(
            w.dropped(5 + DROP_WARNING_TICKS),
            Some(101),
            "the next warning counts every drop it stood for"
        );
        assert_eq!(w.dropped(5 + 2 * DROP_WARNING_TICKS), Some(0));
    }
}
