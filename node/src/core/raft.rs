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
//! [`ReadyOut::persisted_messages`] are sent and before [`RaftCore::on_persisted`].

use raft::eraftpb::{ConfState, Entry, HardState, Message, SnapshotMetadata};
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
    /// Hard state to make durable, if it changed.
    pub hard_state: Option<HardState>,
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
        // The store may have applied entries whose commit the WAL has not recorded yet: apply
        // runs while the WAL writes the Ready's hard state, and a crash can fall in between.
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

    /// Queues a linearizable read; its index arrives in a later [`ReadyOut::reads`].
    pub fn read(&mut self, w: W) {
        self.pending_reads.push(w);
        self.issue_read();
    }

    /// Fails every queued read (no leader).
    fn fail_reads(&mut self) -> Vec<W> {
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
            // The log restarts at the snapshot; entries in this Ready follow it.
            self.log.apply_snapshot(&meta);
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

    /// Steps a message from a peer. Messages raft-rs refuses (a local message type, an unknown
    /// sender's response) are dropped: peers cannot make this fail.
    pub fn step(&mut self, m: Message) {
        if let Err(e) = self.node.step(m) {
            tracing::debug!(error = %e, "peer message dropped");
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

/// A ReadIndex context: this member's ID then its request sequence, both big-endian.
fn read_ctx(member: u64, seq: u64) -> Vec<u8> {
    let mut v = member.to_be_bytes().to_vec();
    v.extend_from_slice(&seq.to_be_bytes());
    v
}
