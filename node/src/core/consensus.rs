//! The consensus driver of one member: [`RaftCore`] plus the rules for handling its Readies,
//! completions and membership changes, as a sans-IO state machine (in the manner of
//! quinn-proto's `Connection::poll_*`). Inputs are method calls; what the member must do next
//! comes out of [`ConsensusCore::poll`] as [`Effect`]s, in order. The consensus actor
//! (`crate::actors::consensus`) carries them out with the WAL, apply and transport actors; the
//! cluster simulator (`tests/src/sim/`) carries out the same effects over a simulated disk and
//! network, so both run the same decisions.
//!
//! Ready handling follows raft-rs's documented order (and etcd's `raft.go`, Raft thesis
//! 10.2.1):
//! 1. the leader's `messages` go out before its own fsync (it may persist in parallel);
//! 2. committed entries go to apply: raft-rs only hands out entries persisted locally;
//! 3. new entries and the hard state go to the WAL ([`Effect::Persist`]); `persisted_messages`
//!    (a follower's votes and append responses) are released only once the caller reports
//!    them durable ([`ConsensusCore::persisted`]), then `on_persist_ready`.
//!
//! At most one Ready is being persisted at a time: proposals that arrive during an fsync
//! gather in raft's unstable log and go out together in the next Ready (group commit).
//!
//! The raft log is released behind the applied index every `snapshot_count` entries, keeping
//! `catch_up_entries` (etcd `SnapshotCatchUpEntries`): first the store is made durable
//! ([`Effect::PersistStore`]), then the release point is recorded and old WAL segments go
//! ([`Effect::ReleaseLog`]). The order matters: the WAL may forget entries only once their
//! effects are durable in the store.

use std::collections::VecDeque;

use etch_protocol::etcdserverpb::Member;
use etch_storage::members::{self, Membership};
use prost::Message as _;
use raft::eraftpb::{ConfChangeType, Entry, HardState, Message, SnapshotMetadata};

use crate::core::members::{LeaderView, Proposed, check};
use crate::core::raft::{RaftCore, single_change};
use crate::error::ApiError;

/// What a removed member says when it stops, and when it is started again on its data dir
/// (etcd's message).
pub const REMOVED: &str = "the member has been permanently removed from the cluster";

/// Bytes of client proposals held before they are proposed: raft-rs's (and etcd's) largest
/// append message, 1 MiB. A batch is at most this plus one request (`--max-request-bytes`).
pub const MAX_HELD_BYTES: usize = 1024 * 1024;

/// Entries kept in the raft log behind a release point, so a slightly lagging follower still
/// catches up from the log instead of a snapshot (etcd `SnapshotCatchUpEntries`).
pub const CATCH_UP_ENTRIES: u64 = 5_000;

/// Raft's view after a Ready, for the node state and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftStatus {
    /// Current term.
    pub term: u64,
    /// Leader's member ID; 0 when there is none.
    pub leader: u64,
    /// Commit index.
    pub commit: u64,
    /// Last index in the log.
    pub last: u64,
}

/// Entries and hard state to make durable, in one WAL write and fsync. A Ready whose hard
/// state only moved the commit index gets no write of its own: that hard state rides with
/// the next one ([`ConsensusCore`]'s `unwritten_hard_state`).
#[derive(Debug)]
pub struct Persist {
    /// A snapshot raft-rs accepted from the leader (the store already holds it): recorded in
    /// the WAL before the entries.
    pub snapshot: Option<SnapshotMetadata>,
    /// Entries to append (they replace any at the same indexes and after).
    pub entries: Vec<Entry>,
    /// The hard state, if it changed since the last write.
    pub hard_state: Option<HardState>,
    /// The Ready's number: report it back with [`ConsensusCore::persisted`] once durable.
    pub number: u64,
}

/// One thing the member must do, in [`ConsensusCore::poll`] order.
#[derive(Debug)]
pub enum Effect<W> {
    /// Raft's status may have changed: publish it.
    Status(RaftStatus),
    /// Raft messages for peers (best effort; raft retransmits).
    Send(Vec<Message>),
    /// Linearizable reads whose read index is known: wait until applied >= it, then read.
    ReadsReady(Vec<(W, u64)>),
    /// Linearizable reads that cannot be served (no leader).
    ReadsFailed(Vec<W>),
    /// Committed, locally durable entries to apply, in order; report the last applied index
    /// with [`ConsensusCore::applied`].
    Apply(Vec<Entry>),
    /// Write to the WAL and fsync; then [`ConsensusCore::persisted`].
    Persist(Persist),
    /// Make the store durable (fsync), then [`ConsensusCore::store_persisted`].
    PersistStore,
    /// Record this log-release point in the WAL and drop the segments wholly before it, then
    /// [`ConsensusCore::log_released`].
    ReleaseLog(SnapshotMetadata),
    /// The applied membership changed: the transport and the node state follow it.
    Membership(Membership),
    /// The member must stop: removed from the cluster ([`REMOVED`]) or a fatal error.
    Stop(String),
}

/// The driver; `W` is a linearizable read's waiter.
pub struct ConsensusCore<W> {
    raft: RaftCore<W>,
    me: u64,
    snapshot_count: u64,
    catch_up_entries: u64,
    /// The Ready being persisted: its persisted messages and the snapshot it carried.
    persisting: Option<(Vec<Message>, Option<u64>)>,
    /// This member applied its own removal ([`REMOVED`]) or found that it lost entries it
    /// acknowledged: raft-rs is driven no further while the member stops (a leader that
    /// removed itself has no progress of its own, which raft-rs unwraps when entries persist
    /// or acknowledgements arrive; a member with a lost log would be refilled quietly).
    stopping: bool,
    /// The newest hard state that only moved the commit index and is not written yet: it
    /// goes with the next WAL write. The commit index is volatile state in Raft (Raft paper,
    /// figure 2): after a crash it is learned again from the leader, and the store's applied
    /// index covers what was applied (etcd writes it without an fsync, `raft.MustSync`).
    unwritten_hard_state: Option<HardState>,
    /// Client proposals held for the next [`ConsensusCore::flush`].
    held: Vec<Vec<u8>>,
    /// Their size in bytes.
    held_bytes: usize,
    /// The release point being carried out.
    releasing: Option<u64>,
    /// Index of the newest membership applied (completions may arrive out of order).
    membership_index: u64,
    /// A received snapshot is being installed into the store (between
    /// [`ConsensusCore::offer_snapshot`] and [`ConsensusCore::snapshot_installed`]).
    installing: bool,
    out: VecDeque<Effect<W>>,
}

/// What to do with a snapshot received from the leader ([`ConsensusCore::offer_snapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOffer {
    /// Install it into the store, then report [`ConsensusCore::snapshot_installed`].
    Install,
    /// raft-rs only restores past the commit index: drop the received store and
    /// [`ConsensusCore::step`] the `MsgSnapshot` (raft-rs answers the leader with its index).
    Stale,
    /// Another snapshot is being installed: drop this one without stepping it. Installed
    /// after the other, an older snapshot would take the store back; the leader sends what
    /// the follower still lacks once the first install is answered.
    Busy,
}

impl<W> ConsensusCore<W> {
    /// A driver for member `me` over `raft`, releasing the log every `snapshot_count` applied
    /// entries while keeping `catch_up_entries` behind the applied index.
    pub fn new(
        raft: RaftCore<W>,
        me: u64,
        snapshot_count: u64,
        catch_up_entries: u64,
    ) -> ConsensusCore<W> {
        ConsensusCore {
            raft,
            me,
            snapshot_count: snapshot_count.max(1),
            catch_up_entries,
            persisting: None,
            stopping: false,
            unwritten_hard_state: None,
            held: Vec::new(),
            held_bytes: 0,
            releasing: None,
            membership_index: 0,
            installing: false,
            out: VecDeque::new(),
        }
    }

    /// The next thing to do, oldest first.
    pub fn poll(&mut self) -> Option<Effect<W>> {
        self.out.pop_front()
    }

    /// The raft state machine (read-only: status, learner checks, the log).
    pub fn raft(&self) -> &RaftCore<W> {
        &self.raft
    }

    /// The member started: a sole voter campaigns at once.
    pub fn start(&mut self) {
        self.campaign_if_alone();
        self.drive();
    }

    /// One raft tick passed (heartbeat interval / heartbeat ticks).
    pub fn tick(&mut self) {
        if self.stopping {
            return;
        }
        self.raft.tick();
        self.drive();
    }

    /// Proposes `data` (an encoded `InternalRequest`); the result arrives through apply.
    ///
    /// # Errors
    /// raft-rs refused it: no leader, or a leader transfer in progress.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), ApiError> {
        self.running()?;
        let r = self.raft.propose(data);
        self.drive();
        r
    }

    /// Like [`ConsensusCore::propose`], but held until the next [`ConsensusCore::flush`],
    /// which proposes everything held in one raft message: proposals that arrive together go
    /// to each follower in one append (or to the leader in one forwarded message) and to the
    /// WAL in one write.
    ///
    /// # Errors
    /// [`ApiError::NoLeader`] at once when no leader is known; [`ApiError::Stopped`] once
    /// this member is stopping (it applied its own removal or lost its log).
    pub fn propose_later(&mut self, data: Vec<u8>) -> Result<(), ApiError> {
        self.running()?;
        if !self.raft.has_leader() {
            return Err(ApiError::NoLeader);
        }
        self.held_bytes += data.len();
        self.held.push(data);
        Ok(())
    }

    /// A leader holds the entries of a proposal a follower forwarded (raft-rs's `MsgPropose`)
    /// with its own clients' proposals for the next [`ConsensusCore::flush`], so that its
    /// clients' writes and every follower's forwarded batch go to the followers in one append
    /// and to the WAL in one write and fsync, instead of one round each as they arrive.
    /// Returns how many entries it took out of `m`, or `None` (and `m` untouched) when it is
    /// not such a proposal (anything else; this member does not lead; a configuration change
    /// or any entry that is not a plain write), to be stepped as usual
    /// ([`ConsensusCore::step`]).
    /// Held entries are proposed as the leader's own: if leadership moves before the flush,
    /// raft-rs forwards them to the new leader, or drops them without one, as it would have
    /// dropped the forwarded proposal.
    pub fn hold_forwarded(&mut self, m: &mut Message) -> Option<usize> {
        if self.stopping
            || m.get_msg_type() != raft::eraftpb::MessageType::MsgPropose
            || !self.raft.is_leader()
            || m.entries.is_empty()
            || m.entries
                .iter()
                .any(|e| e.get_entry_type() != raft::eraftpb::EntryType::EntryNormal)
        {
            return None;
        }
        let n = m.entries.len();
        for e in m.take_entries() {
            self.held_bytes += e.data.len();
            self.held.push(e.data.to_vec());
        }
        Some(n)
    }

    /// The hard state a Ready that only moved the commit index left unwritten, taken for a
    /// last WAL write when the member stops (no other write would carry it).
    pub fn take_unwritten_hard_state(&mut self) -> Option<HardState> {
        self.unwritten_hard_state.take()
    }

    /// Bytes held by [`ConsensusCore::propose_later`] since the last flush: the caller flushes
    /// at [`MAX_HELD_BYTES`], so one forwarded batch stays far below the peer frame limit and
    /// a leader's append carries it whole.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Proposals held for the next [`ConsensusCore::flush`]: this member's clients'
    /// ([`ConsensusCore::propose_later`]) and, on a leader, followers' forwarded ones
    /// ([`ConsensusCore::hold_forwarded`]).
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Proposes what [`ConsensusCore::propose_later`] held, and takes the Readies.
    ///
    /// # Errors
    /// Raft did not take them ([`RaftCore::propose_batch`]): none of them was proposed;
    /// [`ApiError::Stopped`] once this member is stopping (it applied its own removal or
    /// lost its log).
    pub fn flush(&mut self) -> Result<(), ApiError> {
        let held = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        self.running()?;
        let r = if held.is_empty() {
            Ok(())
        } else {
            self.raft.propose_batch(held)
        };
        self.drive();
        r
    }

    /// Proposes `data` only if this member leads in `term` ([`RaftCore::propose_as_leader`]).
    ///
    /// # Errors
    /// [`ApiError::NotLeader`] when it does not.
    pub fn propose_as_leader(&mut self, data: Vec<u8>, term: u64) -> Result<(), ApiError> {
        self.running()?;
        let r = self.raft.propose_as_leader(data, term);
        self.drive();
        r
    }

    /// A linearizable read: `w` comes back in [`Effect::ReadsReady`] or
    /// [`Effect::ReadsFailed`].
    pub fn read(&mut self, w: W) {
        if self.stopping {
            self.out.push_back(Effect::ReadsFailed(vec![w]));
            return;
        }
        self.raft.read(w);
        self.drive();
    }

    /// A raft message from a peer. One showing that this member lost entries it acknowledged
    /// ([`RaftCore::lost_acknowledged_entries`]) is not stepped: [`Effect::Stop`] instead.
    pub fn step(&mut self, m: Message) {
        if self.stopping {
            return;
        }
        if let Some(why) = self.raft.lost_acknowledged_entries(&m) {
            self.stop(why);
            return;
        }
        self.raft.step(m);
        self.drive();
    }

    /// Peer `id` could not be reached (raft-rs `report_unreachable`).
    pub fn unreachable(&mut self, id: u64) {
        self.raft.unreachable(id);
    }

    /// Hands leadership to `to` or the most caught-up voter (etcd `MoveLeader`, and the
    /// transfer on stop); the chosen member, if this member leads.
    pub fn transfer_leadership(&mut self, to: Option<u64>) -> Option<u64> {
        let target = self.raft.transfer_leadership(to);
        self.drive();
        target
    }

    /// The outcome of a snapshot sent to `to` (raft-rs `report_snapshot`).
    pub fn snapshot_sent(&mut self, to: u64, ok: bool) {
        self.raft.snapshot_sent(to, ok);
        self.drive();
    }

    /// The WAL made Ready `number` durable: its persisted messages go out.
    pub fn persisted(&mut self, number: u64) {
        if self.stopping {
            return;
        }
        let (messages, snapshot) = self.persisting.take().unwrap_or_default();
        self.raft.on_persisted(number);
        if let Some(index) = snapshot {
            // The store was replaced before raft-rs saw the snapshot.
            self.raft.on_applied(index);
        }
        // Votes and append acknowledgements only once durable (etcd raft.go).
        self.send(messages);
        self.drive();
    }

    /// Apply reached `index`; `membership` when the applied entries changed it.
    pub fn applied(&mut self, index: u64, membership: Option<Membership>) {
        // Applied first: raft-rs refuses to campaign while a configuration change is not
        // applied.
        self.raft.on_applied(index);
        if let Some(m) = membership {
            self.on_membership(index, m);
        }
        self.maybe_release(index);
        self.drive();
    }

    /// The store is durable ([`Effect::PersistStore`]): the log may be released.
    pub fn store_persisted(&mut self) {
        let Some(release) = self.releasing else {
            return;
        };
        match self.raft.log().compact_to(release) {
            Some(meta) => self.out.push_back(Effect::ReleaseLog(meta)),
            None => self.releasing = None,
        }
    }

    /// The WAL recorded the release point ([`Effect::ReleaseLog`]).
    pub fn log_released(&mut self) {
        self.releasing = None;
    }

    /// Whether a snapshot at `index` from the leader, fully received, should replace the
    /// store ([`SnapshotOffer`]). Snapshots are received beside each other (a leader may
    /// resend before the first one arrived), so at most one install runs at a time.
    pub fn offer_snapshot(&mut self, index: u64) -> SnapshotOffer {
        if self.installing {
            SnapshotOffer::Busy
        } else if index <= self.raft.committed() {
            SnapshotOffer::Stale
        } else {
            self.installing = true;
            SnapshotOffer::Install
        }
    }

    /// The store now holds the leader's snapshot `msg` (a `MsgSnapshot`) with `membership`.
    pub fn snapshot_installed(&mut self, msg: Message, membership: Membership) {
        self.installing = false;
        let index = msg.get_snapshot().get_metadata().index;
        self.raft.step(msg);
        // raft-rs took its configuration from the snapshot's metadata; the transport and node
        // state follow the store's membership.
        if !membership.members.is_empty() {
            self.on_membership(index, membership);
        }
        self.drive();
    }

    /// Checks a membership change as etcd's leader does ([`check`]) and proposes it as a
    /// raft-rs `ConfChangeV2` carrying the member as context. `membership` is the applied one;
    /// `connected` says whether a peer's stream is open now (a voter must also be heard from
    /// by raft recently to count as active). `Ok(true)`: raft took it (the result arrives
    /// through apply under `request_id`); `Ok(false)`: another change is pending, ask again.
    ///
    /// # Errors
    /// `NotLeader` on a follower; the check's etcd error otherwise.
    pub fn propose_member_change(
        &mut self,
        change: Proposed,
        request_id: u64,
        membership: &Membership,
        strict: bool,
        max_learners: usize,
        connected: impl Fn(u64) -> bool,
    ) -> Result<bool, ApiError> {
        if self.raft.status().1 != self.me {
            return Err(ApiError::NotLeader);
        }
        let active: Vec<u64> = self
            .raft
            .active_voters()
            .into_iter()
            .filter(|id| *id == self.me || connected(*id))
            .collect();
        let view = LeaderView {
            membership,
            me: self.me,
            active_voters: &active,
            strict,
            max_learners,
        };
        check(&change, &view, |id| self.raft.learner_ready(id))?;
        let by_id = |id| Member {
            id,
            ..Default::default()
        };
        let (change_type, member) = match change {
            Proposed::Add(x) if x.is_learner => (ConfChangeType::AddLearnerNode, x),
            Proposed::Add(x) => (ConfChangeType::AddNode, x),
            Proposed::Remove(id) => (ConfChangeType::RemoveNode, by_id(id)),
            Proposed::Promote(id) => (ConfChangeType::AddNode, by_id(id)),
        };
        let cc = single_change(change_type, member.id);
        let context = etch_protocol::etchpb::MemberChange {
            request_id,
            member: Some(member),
        }
        .encode_to_vec();
        let r = self.raft.propose_conf_change(context, cc);
        self.drive();
        r
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            self.out.push_back(Effect::Send(msgs));
        }
    }

    fn campaign_if_alone(&mut self) {
        if let Err(e) = self.raft.campaign_if_alone() {
            self.out.push_back(Effect::Stop(format!("campaign: {e}")));
        }
    }

    /// An applied entry changed the membership (or replayed a change): raft-rs's
    /// configuration follows it, then the transport and node state; a member that finds
    /// itself removed stops (etcd: "the member has been permanently removed from the
    /// cluster").
    fn on_membership(&mut self, index: u64, m: Membership) {
        if index < self.membership_index {
            return;
        }
        self.membership_index = index;
        let conf = members::conf_state(&m);
        if self.raft.set_conf(&conf) {
            tracing::info!(index, voters = ?conf.voters, learners = ?conf.learners, "raft configuration changed");
        }
        let removed = members::is_removed(&m, self.me);
        self.out.push_back(Effect::Membership(m));
        if removed {
            self.stop(REMOVED.to_owned());
            return;
        }
        self.campaign_if_alone();
    }

    /// `Err(Stopped)` once the member is stopping ([`ConsensusCore::stop`]): proposals are
    /// refused.
    fn running(&self) -> Result<(), ApiError> {
        if self.stopping {
            return Err(ApiError::Stopped);
        }
        Ok(())
    }

    /// The member must stop (`why`): raft-rs is driven no further, and the reads waiting on it
    /// fail now rather than when the actor is dropped.
    fn stop(&mut self, why: String) {
        self.stopping = true;
        let reads = self.raft.fail_reads();
        if !reads.is_empty() {
            self.out.push_back(Effect::ReadsFailed(reads));
        }
        self.out.push_back(Effect::Stop(why));
    }

    /// Releases the log behind `applied` every `snapshot_count` entries.
    fn maybe_release(&mut self, applied: u64) {
        let release = applied.saturating_sub(self.catch_up_entries);
        if self.releasing.is_some()
            || release < self.raft.log().release_index() + self.snapshot_count
        {
            return;
        }
        self.releasing = Some(release);
        self.out.push_back(Effect::PersistStore);
    }

    /// Processes Readies until one needs the WAL (the caller reports it with
    /// [`ConsensusCore::persisted`]).
    fn drive(&mut self) {
        while self.persisting.is_none() {
            let Some(out) = self.raft.ready() else { break };
            let (term, leader, commit, last) = self.raft.status();
            self.out.push_back(Effect::Status(RaftStatus {
                term,
                leader,
                commit,
                last,
            }));
            if !out.failed_reads.is_empty() {
                self.out.push_back(Effect::ReadsFailed(out.failed_reads));
            }
            if !out.reads.is_empty() {
                self.out.push_back(Effect::ReadsReady(out.reads));
            }
            // 1. Leader messages before our own fsync (Raft thesis 10.2.1).
            self.send(out.messages);
            // 2. Committed entries to apply, in order.
            if !out.committed.is_empty() {
                self.out.push_back(Effect::Apply(out.committed));
            }
            // 3. Snapshot, entries and hard state to the WAL; persisted messages after it.
            // Nothing to make durable (raft-rs's `Ready::must_sync` is false when the hard
            // state moved at most in its commit index): no WAL write, the hard state goes with
            // the next one.
            if !out.must_sync {
                if out.hard_state.is_some() {
                    self.unwritten_hard_state = out.hard_state;
                }
                if out.number != 0 {
                    self.raft.on_persisted(out.number);
                }
                self.send(out.persisted_messages);
                continue;
            }
            // A newer hard state (a term or vote change) holds the newest commit index too.
            let hard_state = out.hard_state.or(self.unwritten_hard_state.take());
            let snapshot_index = out.snapshot.as_ref().map(|m| m.index);
            self.persisting = Some((out.persisted_messages, snapshot_index));
            self.out.push_back(Effect::Persist(Persist {
                snapshot: out.snapshot,
                entries: out.entries,
                hard_state,
                number: out.number,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etch_storage::raftlog::RaftLog;
    use etch_storage::wal::Recovered;
    use raft::eraftpb::{ConfState, EntryType, MessageType};

    fn logger() -> slog::Logger {
        slog::Logger::root(slog::Discard, slog::o!())
    }

    fn one_member() -> Membership {
        Membership {
            members: vec![Member {
                id: 1,
                name: "a".into(),
                peer_ur_ls: vec!["http://127.0.0.1:1".into()],
                ..Default::default()
            }],
            removed: Vec::new(),
        }
    }

    /// A one-member cluster that elected itself and settled; nothing seen yet.
    fn leading_single() -> (ConsensusCore<u32>, Vec<String>) {
        let mut c = single(1_000, 10);
        c.start();
        let mut seen = Vec::new();
        settle(&mut c, &mut seen);
        seen.clear();
        (c, seen)
    }

    /// A one-member cluster at its bootstrap entry (index 1).
    fn single(snapshot_count: u64, catch_up: u64) -> ConsensusCore<u32> {
        bootstrapped(&one_member(), 10, snapshot_count, catch_up)
    }

    /// Member 1 of `m` at its bootstrap entries, with fixed `election_ticks`.
    fn bootstrapped(
        m: &Membership,
        election_ticks: usize,
        snapshot_count: u64,
        catch_up: u64,
    ) -> ConsensusCore<u32> {
        let boot = crate::core::raft::bootstrap_entries(&m.members);
        let rec = Recovered {
            snapshot: None,
            hard_state: Some(HardState {
                term: 1,
                commit: boot.len() as u64,
                ..Default::default()
            }),
            entries: boot,
            truncated_bytes: 0,
        };
        let log = RaftLog::from_recovered(&rec, ConfState::default());
        let raft = RaftCore::new_fixed_timeout(1, log, 0, election_ticks, &logger()).expect("raft");
        ConsensusCore::new(raft, 1, snapshot_count, catch_up)
    }

    /// Carries out effects as a perfect disk and store would, until there are none; returns
    /// what was seen, by kind.
    fn settle(c: &mut ConsensusCore<u32>, seen: &mut Vec<String>) {
        while let Some(e) = c.poll() {
            match e {
                Effect::Status(s) => seen.push(format!("status leader={}", s.leader)),
                Effect::Send(_) => seen.push("send".into()),
                Effect::ReadsReady(r) => seen.push(format!(
                    "reads {:?}",
                    r.iter().map(|x| x.0).collect::<Vec<_>>()
                )),
                Effect::ReadsFailed(_) => seen.push("reads failed".into()),
                Effect::Apply(entries) => {
                    let last = entries.last().map(|e| e.index).unwrap_or(0);
                    seen.push(format!("apply to {last}"));
                    // The bootstrap entry (index 1) adds the member.
                    let first = entries.first().is_some_and(|e| e.index == 1);
                    c.applied(last, first.then(one_member));
                }
                Effect::Persist(p) => {
                    seen.push(format!("persist {} entries", p.entries.len()));
                    if let Some(hs) = &p.hard_state {
                        seen.push(format!("with commit {}", hs.commit));
                    }
                    c.persisted(p.number);
                }
                Effect::PersistStore => {
                    seen.push("persist store".into());
                    c.store_persisted();
                }
                Effect::ReleaseLog(meta) => {
                    seen.push(format!("release to {}", meta.index));
                    c.log_released();
                }
                Effect::Membership(_) => seen.push("membership".into()),
                Effect::Stop(why) => seen.push(format!("stop: {why}")),
            }
        }
    }

    #[test]
    fn a_sole_voter_leads_applies_serves_reads_and_releases_its_log() {
        let mut c = single(4, 2);
        let mut seen = Vec::new();
        c.start();
        settle(&mut c, &mut seen);
        assert!(seen.iter().any(|s| s == "status leader=1"), "{seen:?}");
        for i in 0..8u8 {
            c.propose(vec![i]).expect("propose");
            settle(&mut c, &mut seen);
        }
        c.read(7);
        settle(&mut c, &mut seen);
        assert!(seen.iter().any(|s| s == "reads [7]"), "{seen:?}");
        // A proposal is persisted before it is applied (the bootstrap entry at index 1 was
        // durable from the start); the store is persisted before the log is released.
        let persist = seen
            .iter()
            .position(|s| s == "persist 1 entries")
            .expect("persist");
        let apply = seen.iter().position(|s| s == "apply to 2").expect("apply");
        assert!(persist < apply, "{seen:?}");
        let store = seen
            .iter()
            .position(|s| s == "persist store")
            .expect("persist store");
        let release = seen
            .iter()
            .position(|s| s.starts_with("release"))
            .expect("release");
        assert!(store < release, "{seen:?}");
        assert!(c.raft().log().release_index() > 0);
        assert!(c.raft().log().release_index() + 2 <= c.raft().status().3);
    }

    #[test]
    fn messages_from_ids_outside_the_membership_are_not_remembered() {
        let mut c = leader_of_three();
        let (term, leader, ..) = c.raft().status();
        assert_eq!(leader, 1);
        // Both followers answered in this term.
        assert_eq!(c.raft().heard_len(), 2);
        let heartbeat_response = |from: u64| {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeatResponse);
            m.from = from;
            m.to = 1;
            m.term = term;
            m
        };
        for from in 4..1_004u64 {
            c.step(heartbeat_response(from));
        }
        assert_eq!(c.raft().heard_len(), 2);
        // Member 3 leaves the configuration, and the record of it with it.
        let two = members(2, vec![3]);
        let applied = c.raft().committed();
        c.applied(applied, Some(two));
        assert_eq!(c.raft().heard_len(), 1);
        c.step(heartbeat_response(3));
        assert_eq!(c.raft().heard_len(), 1);
    }

    #[test]
    fn a_leader_transfer_reaching_a_follower_is_dropped() {
        let m = members(3, Vec::new());
        let mut c = bootstrapped(&m, 10, 1_000, 10);
        let mut hb = Message::default();
        hb.set_msg_type(MessageType::MsgHeartbeat);
        hb.from = 2;
        hb.to = 1;
        hb.term = 2;
        c.step(hb);
        assert_eq!(c.raft().status().1, 2, "member 2 leads");
        // raft-rs would forward it to member 2 and panic on its term.
        let mut t = Message::default();
        t.set_msg_type(MessageType::MsgTransferLeader);
        t.from = 3;
        t.to = 1;
        t.term = 2;
        assert!(c.raft().unsafe_to_step(&t).is_some());
        c.step(t);
        let (term, leader, ..) = c.raft().status();
        assert_eq!((term, leader), (2, 2));
    }

    #[test]
    fn one_snapshot_installs_at_a_time_and_stale_ones_are_stepped() {
        let (mut c, _) = leading_single();
        let committed = c.raft().committed();
        assert_eq!(c.offer_snapshot(committed), SnapshotOffer::Stale);
        assert_eq!(c.offer_snapshot(committed + 100), SnapshotOffer::Install);
        // Until the install is reported, every other snapshot is dropped, newer or older.
        assert_eq!(c.offer_snapshot(committed + 50), SnapshotOffer::Busy);
        assert_eq!(c.offer_snapshot(committed + 200), SnapshotOffer::Busy);
        assert_eq!(c.offer_snapshot(committed), SnapshotOffer::Busy);
    }

    #[test]
    fn a_leader_only_proposal_needs_leadership_in_its_term() {
        let mut c = single(1_000, 10);
        let mut seen = Vec::new();
        assert!(
            matches!(
                c.propose_as_leader(b"r".to_vec(), 1),
                Err(ApiError::NotLeader)
            ),
            "a member that does not lead proposes nothing"
        );
        c.start();
        settle(&mut c, &mut seen);
        let (term, leader, _, last) = c.raft().status();
        assert_eq!(leader, 1);
        // Decided in an older term (the lessor of a leader since deposed and re-elected), or
        // in a term this member does not lead: refused, nothing appended.
        for other in [term - 1, term + 1] {
            assert!(matches!(
                c.propose_as_leader(b"r".to_vec(), other),
                Err(ApiError::NotLeader)
            ));
        }
        assert_eq!(c.raft().status().3, last);
        c.propose_as_leader(b"r".to_vec(), term)
            .expect("leader of its term");
        assert_eq!(c.raft().status().3, last + 1);
    }

    #[test]
    fn one_ready_is_persisted_at_a_time() {
        let mut c = single(1_000, 10);
        c.start();
        let mut seen = Vec::new();
        settle(&mut c, &mut seen);
        c.propose(b"x".to_vec()).expect("propose");
        let mut pending = Vec::new();
        while let Some(e) = c.poll() {
            if let Effect::Persist(p) = e {
                pending.push(p.number);
            }
        }
        assert_eq!(pending.len(), 1);
        // Proposals made while the fsync runs wait for it, then go out together.
        c.propose(b"y".to_vec()).expect("propose");
        c.propose(b"z".to_vec()).expect("propose");
        assert!(
            std::iter::from_fn(|| c.poll()).all(|e| !matches!(e, Effect::Persist(_))),
            "a second write while the first is in flight"
        );
        c.persisted(pending[0]);
        let next: Vec<usize> = std::iter::from_fn(|| c.poll())
            .filter_map(|e| match e {
                Effect::Persist(p) => Some(p.entries.len()),
                _ => None,
            })
            .collect();
        assert_eq!(next, vec![2], "both waiting proposals in one write");
    }

    #[test]
    fn a_hard_state_that_only_moves_the_commit_index_waits_for_the_next_write() {
        let (mut c, mut seen) = leading_single();
        c.propose(b"x".to_vec()).expect("propose");
        settle(&mut c, &mut seen);
        let x = c.raft().committed();
        let writes = |seen: &[String]| -> Vec<String> {
            seen.iter()
                .filter(|s| s.starts_with("persist") || s.starts_with("with commit"))
                .cloned()
                .collect()
        };
        // The entry is fsynced; committing it writes nothing (raft-rs's Ready::must_sync,
        // etcd's MustSync)...
        assert!(
            !writes(&seen).contains(&format!("with commit {x}")),
            "{seen:?}"
        );
        seen.clear();
        c.propose(b"y".to_vec()).expect("propose");
        settle(&mut c, &mut seen);
        // ...its commit index goes with the next entry's write.
        assert_eq!(
            writes(&seen),
            vec!["persist 1 entries".to_string(), format!("with commit {x}")],
            "{seen:?}"
        );
        assert_eq!(
            c.raft().committed(),
            x + 1,
            "the second entry is committed too"
        );
    }

    #[test]
    fn proposals_made_later_go_out_together_at_the_flush() {
        let (mut c, mut seen) = leading_single();
        for data in [b"x", b"y", b"z"] {
            c.propose_later(data.to_vec()).expect("propose");
        }
        assert!(c.poll().is_none(), "nothing before the flush");
        assert_eq!(c.held_bytes(), 3);
        c.flush().expect("flush");
        assert_eq!(c.held_bytes(), 0);
        settle(&mut c, &mut seen);
        // One write of all three (their commit index waits for the next write).
        let writes: Vec<&String> = seen
            .iter()
            .filter(|s| s.starts_with("persist") && *s != "persist 0 entries")
            .collect();
        assert_eq!(writes, vec!["persist 3 entries"], "{seen:?}");
    }

    /// Members 1..=`n` (peer URL `http://127.0.0.1:<id>`), and `removed`.
    fn members(n: u64, removed: Vec<u64>) -> Membership {
        Membership {
            members: (1..=n)
                .map(|id| Member {
                    id,
                    name: format!("m{id}"),
                    peer_ur_ls: vec![format!("http://127.0.0.1:{id}")],
                    ..Default::default()
                })
                .collect(),
            removed,
        }
    }

    /// Member 1 of a three-member cluster, elected leader (its peers' votes stepped in).
    fn leader_of_three() -> ConsensusCore<u32> {
        let m = members(3, Vec::new());
        let mut c = bootstrapped(&m, 3, 1_000, 10);
        c.start();
        // Until it leads and its first entry is committed (both followers replicating).
        for _ in 0..200 {
            let (_, leader, commit, last) = c.raft().status();
            if leader == 1 && commit == last {
                break;
            }
            c.tick();
            while let Some(e) = c.poll() {
                match e {
                    Effect::Apply(entries) => {
                        let last = entries.last().map(|e| e.index).unwrap_or(0);
                        c.applied(last, Some(m.clone()));
                    }
                    Effect::Persist(p) => c.persisted(p.number),
                    Effect::Send(msgs) => {
                        for msg in msgs {
                            let kind = match msg.get_msg_type() {
                                MessageType::MsgRequestPreVote => {
                                    MessageType::MsgRequestPreVoteResponse
                                }
                                MessageType::MsgRequestVote => MessageType::MsgRequestVoteResponse,
                                MessageType::MsgAppend => MessageType::MsgAppendResponse,
                                _ => continue,
                            };
                            let mut r = Message::default();
                            r.set_msg_type(kind);
                            r.from = msg.to;
                            r.to = 1;
                            r.term = msg.term;
                            r.index = msg.index + msg.entries.len() as u64;
                            c.step(r);
                        }
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(c.raft().status().1, 1, "member 1 leads");
        c
    }

    #[test]
    fn proposals_flushed_together_reach_each_follower_in_one_append() {
        let mut c = leader_of_three();
        for data in [b"x", b"y", b"z"] {
            c.propose_later(data.to_vec()).expect("propose");
        }
        c.flush().expect("flush");
        let mut appends: Vec<(u64, Vec<Vec<u8>>)> = Vec::new();
        while let Some(e) = c.poll() {
            if let Effect::Send(msgs) = e {
                for m in msgs {
                    if m.get_msg_type() == MessageType::MsgAppend && !m.entries.is_empty() {
                        appends.push((m.to, m.entries.iter().map(|e| e.data.to_vec()).collect()));
                    }
                }
            }
        }
        appends.sort();
        let all = vec![b"x".to_vec(), b"y".to_vec(), b"z".to_vec()];
        assert_eq!(appends, vec![(2, all.clone()), (3, all)]);
    }

    #[test]
    fn a_leader_holds_forwarded_writes_for_its_next_flush() {
        let mut c = leader_of_three();
        c.propose_later(b"own".to_vec()).expect("propose");
        let forwarded = |entries: &[&[u8]], entry_type: EntryType| {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgPropose);
            m.from = 2;
            m.to = 1;
            for d in entries {
                let mut e = Entry::default();
                e.set_entry_type(entry_type);
                e.data = d.to_vec().into();
                m.mut_entries().push(e);
            }
            m
        };
        assert_eq!(
            c.hold_forwarded(&mut forwarded(&[b"f1", b"f2"], EntryType::EntryNormal)),
            Some(2)
        );
        assert_eq!(
            c.held_bytes(),
            7,
            "the leader's own write and both forwarded ones"
        );
        // A configuration change, or anything not a proposal, is stepped as it comes.
        let mut cc = forwarded(&[b"cc"], EntryType::EntryConfChangeV2);
        assert_eq!(c.hold_forwarded(&mut cc), None);
        assert_eq!(cc.entries.len(), 1, "left for the step");
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeatResponse);
        heartbeat.from = 2;
        assert_eq!(c.hold_forwarded(&mut heartbeat), None);
        assert!(
            appends_until_quiet(&mut c)
                .iter()
                .all(|m| m.entries.is_empty()),
            "nothing proposed before the flush"
        );
        c.flush().expect("flush");
        let mut appends: Vec<(u64, Vec<Vec<u8>>)> = appends_until_quiet(&mut c)
            .into_iter()
            .filter(|m| !m.entries.is_empty())
            .map(|m| (m.to, m.entries.iter().map(|e| e.data.to_vec()).collect()))
            .collect();
        appends.sort();
        let all = vec![b"own".to_vec(), b"f1".to_vec(), b"f2".to_vec()];
        assert_eq!(appends, vec![(2, all.clone()), (3, all)], "one append each");
    }

    #[test]
    fn a_stopping_leader_holds_no_forwarded_write() {
        let (mut c, _) = leading_single();
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.mut_entries().push(Entry::default());
        assert_eq!(c.hold_forwarded(&mut m.clone()), Some(1));
        c.stop("removed".into());
        assert_eq!(c.hold_forwarded(&mut m), None);
    }

    /// Carries out `c`'s effects as a perfect disk would (apply completions left out) until
    /// there are none; returns the appends it sent.
    fn appends_until_quiet(c: &mut ConsensusCore<u32>) -> Vec<Message> {
        let mut appends = Vec::new();
        while let Some(e) = c.poll() {
            match e {
                Effect::Persist(p) => c.persisted(p.number),
                Effect::Send(msgs) => appends.extend(
                    msgs.into_iter()
                        .filter(|m| m.get_msg_type() == MessageType::MsgAppend),
                ),
                _ => {}
            }
        }
        appends
    }

    /// Steps into `c` a follower's acknowledgement of everything append `m` carried.
    fn acknowledge(c: &mut ConsensusCore<u32>, m: &Message) {
        let mut r = Message::default();
        r.set_msg_type(MessageType::MsgAppendResponse);
        r.from = m.to;
        r.to = 1;
        r.term = m.term;
        r.index = m.index + m.entries.len() as u64;
        c.step(r);
    }

    /// Proposes `round` in one flush on `c` (leader of three), holds `hold` proposals for the
    /// next one, and acknowledges the round from both followers; returns the appends without
    /// entries sent after the acknowledgements (`(to, commit)`).
    fn commit_round(c: &mut ConsensusCore<u32>, round: usize, hold: usize) -> Vec<(u64, u64)> {
        for i in 0..round {
            c.propose_later(format!("put {i}").into_bytes())
                .expect("propose");
        }
        c.flush().expect("flush");
        let appends = appends_until_quiet(c);
        assert!(!appends.is_empty(), "no append for a round of {round}");
        for i in 0..hold {
            c.propose_later(format!("held {i}").into_bytes())
                .expect("propose");
        }
        let mut empty = Vec::new();
        for m in appends {
            acknowledge(c, &m);
            while let Some(e) = c.poll() {
                if let Effect::Send(msgs) = e {
                    empty.extend(
                        msgs.iter()
                            .filter(|m| {
                                m.get_msg_type() == MessageType::MsgAppend && m.entries.is_empty()
                            })
                            .map(|m| (m.to, m.commit)),
                    );
                }
            }
        }
        empty
    }

    #[test]
    fn a_new_commit_index_is_broadcast_at_once_even_with_proposals_held() {
        // Followers answer the clients whose writes they forwarded once they apply them, so
        // they learn of each commit at once rather than with the next flush's appends
        // (which measured slower at 10/100: docs/performance.md).
        let mut c = leader_of_three();
        for round in [1, 12, 100] {
            let before = c.raft().committed();
            let empty = commit_round(&mut c, round, 1);
            let commit = c.raft().committed();
            assert!(commit >= before + round as u64, "{before} -> {commit}");
            assert_eq!(empty, vec![(2, commit), (3, commit)], "round of {round}");
            c.flush().expect("flush");
            settle(&mut c, &mut Vec::new());
        }
    }

    #[test]
    fn a_commit_during_a_leadership_transfer_is_broadcast_at_once() {
        let mut c = leader_of_three();
        for i in 0..12 {
            c.propose_later(format!("put {i}").into_bytes())
                .expect("propose");
        }
        c.flush().expect("flush");
        let appends = appends_until_quiet(&mut c);
        assert_eq!(appends.len(), 2, "{appends:?}");
        // A round under load, a proposal held: raft-rs refuses proposals while leadership
        // moves, so no flush would carry the commit.
        c.propose_later(b"held".to_vec()).expect("propose");
        assert_eq!(c.transfer_leadership(Some(2)), Some(2));
        let _ = appends_until_quiet(&mut c);
        let mut empty = Vec::new();
        for m in appends {
            acknowledge(&mut c, &m);
            empty.extend(
                appends_until_quiet(&mut c)
                    .into_iter()
                    .filter(|m| m.entries.is_empty())
                    .map(|m| m.to),
            );
        }
        assert!(
            empty.contains(&3),
            "follower 3 learns of the commit at once: {empty:?}"
        );
    }

    #[test]
    fn peers_heard_within_an_election_timeout_stay_active_across_check_quorum() {
        let mut c = leader_of_three();
        for from in [2, 3] {
            let mut r = Message::default();
            r.set_msg_type(MessageType::MsgHeartbeatResponse);
            r.from = from;
            r.to = 1;
            r.term = c.raft().status().0;
            c.step(r);
        }
        // raft-rs's CheckQuorum runs once per election timeout (3 ticks here) and clears its
        // own record of active peers until their next message.
        for _ in 0..3 {
            c.tick();
            while c.poll().is_some() {}
        }
        assert_eq!(c.raft().status().1, 1, "still leading");
        let mut active = c.raft().active_voters();
        active.sort();
        assert_eq!(active, vec![1, 2, 3]);
        // Silent for longer than an election timeout: inactive (and no longer leading).
        for _ in 0..4 {
            c.tick();
            while c.poll().is_some() {}
        }
        assert!(c.raft().active_voters().len() < 3);
    }

    #[test]
    fn a_follower_cannot_propose_membership_changes() {
        let mut c = single(1_000, 10);
        let m = Membership::default();
        let r = c.propose_member_change(Proposed::Remove(2), 1, &m, true, 1, |_| true);
        assert!(matches!(r, Err(ApiError::NotLeader)), "{r:?}");
    }

    #[test]
    fn a_heartbeat_past_the_log_stops_the_member_instead_of_panicking() {
        let (mut c, mut seen) = leading_single();
        // A leader of a newer term that believes this member acknowledged index 100.
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = 2;
        m.to = 1;
        m.term = c.raft().status().0 + 1;
        m.commit = 100;
        c.step(m.clone());
        settle(&mut c, &mut seen);
        assert!(
            seen.iter()
                .any(|s| s.starts_with("stop: ") && s.contains("lost entries it acknowledged")),
            "{seen:?}"
        );
        // Stopping: raft-rs is driven no further (no second stop, no refill of the log).
        seen.clear();
        c.step(m);
        c.tick();
        settle(&mut c, &mut seen);
        assert!(seen.is_empty(), "{seen:?}");
        assert!(matches!(c.propose(b"x".to_vec()), Err(ApiError::Stopped)));
    }
}
