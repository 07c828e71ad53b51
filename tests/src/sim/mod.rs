//! A deterministic cluster simulator: one seed drives N members built from the node's own
//! cores ([`etch_node::core::raft::RaftCore`] over raft-rs, [`etch_node::core::apply::ApplyCore`]
//! over a real [`etch_storage::mvcc::MvccStore`]) plus clients, on one thread, over a
//! simulated network and disk:
//!
//! - **network**: every raft message is delayed (1 ms to `max_delay_ms`), some are dropped or
//!   duplicated, delays reorder them; partitions cut a random minority (or the leader) off and
//!   heal later;
//! - **disk**: a member's WAL writes become durable only when their simulated fsync completes;
//!   a crash loses what was not yet durable, except a torn prefix of the write in progress
//!   (the records that reached the disk before the power went), as a real WAL may keep;
//! - **crashes**: one member, or every member at once (a power loss), stops and restarts later
//!   from its durable WAL and its store, as `etch` does;
//! - **clocks**: each member's tick length differs (and changes at each restart), which also
//!   randomizes election timeouts (the cores run with fixed timeouts: raft-rs draws its own
//!   from the thread RNG, which a seed cannot replay).
//!
//! Each member runs the node's consensus driver ([`etch_node::core::consensus::ConsensusCore`]):
//! the simulator carries out the effects it returns as the consensus actor does (messages,
//! apply, WAL writes reported back only after the simulated fsync, store persistence and log
//! release), so the Ready order, group commit and log-release rules under test are the node's.
//! Members release their raft log every `snapshot_count` applied entries; a member that falls
//! behind the release point gets the leader's store as a raft snapshot (exported and ingested
//! through the storage crate's snapshot functions, as the peer transport does) and installs it.
//!
//! Watch clients attach to a member's [`etch_node::core::watch::WatchHub`] through small
//! bounded sinks they drain at random speeds (so watchers fall behind and catch up), and resume
//! on another member from the next revision when theirs crashes.
//!
//! After every run it checks ([`check`]): the clients' history of puts and linearizable gets
//! is linearizable (each key a register with unique values; the checker is cross-checked
//! against stateright's `LinearizabilityTester`), so no
//! acknowledged write is lost and no read is stale; all members' stores hash equally at every
//! applied index; at most one leader per term; every watcher received exactly the history of
//! its keys from its start revision, in order, once, across resumes; no lease revoke that
//! commits was decided before the lease's TTL had passed since a leader granted or refreshed it
//! (each member runs the node's `Lessor` core; lease clients keep leases alive through the
//! leader, [`leases`]). A client compacts a few revisions behind now and then: apply records
//! the point, each member deletes the history in the background at its own pace, so stores
//! are compared by the hash of the history compaction keeps, and a watcher whose start was
//! compacted is canceled with `compact_revision` and resumes there (the revisions in between are
//! a gap it was told about).
//!
//! `cargo test -p etch-tests --test sim` runs a bounded number of seeds; `ETCH_SIM_SEED=<n>`
//! replays one exactly, printing its trace; `cargo run --release -p etch-tests --bin etch-sim
//! -- --seeds 100000` is the soak run. [`Bugs`] plants known bugs to prove the checks catch
//! them.

pub mod check;
mod leases;
mod membership;
mod snapshots;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

use prost::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Message, MessageType, SnapshotMetadata};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use etch_node::core::apply::ApplyCore;
use etch_node::core::consensus::{ConsensusCore, Effect, REMOVED};
use etch_node::core::raft::RaftCore;
use etch_node::core::watch::{Sink, WatchHub, WatchLimits};
use etch_protocol::etcdserverpb::{PutRequest, RangeRequest, WatchCreateRequest, WatchResponse};
use etch_protocol::etchpb::InternalRequest;
use etch_protocol::etchpb::internal_request::Request;
use etch_storage::mvcc::MvccStore;
use etch_storage::raftlog::RaftLog;
use etch_storage::wal::Recovered;

use check::{History, Op, Ret};

/// Bugs the simulator can plant, to show its checks find them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bugs {
    /// Tell raft an append is durable (and send the acknowledgements) before its fsync.
    pub ack_before_fsync: bool,
    /// Serve a linearizable read as soon as its ReadIndex is known, before the member has
    /// applied up to it.
    pub read_before_apply: bool,
    /// Let a watcher's first response after a resume repeat the revision it already had.
    pub watch_resume_repeats: bool,
    /// Run every lessor's expiry clock this many ms ahead (a leader whose clock jumps).
    pub lessor_clock_ahead_ms: u64,
}

/// One simulation's shape.
#[derive(Debug, Clone)]
pub struct Config {
    /// Members (3 or 5).
    pub members: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Watch clients (each on one member at a time, resuming elsewhere when it crashes).
    pub watchers: usize,
    /// Lease clients (each grants a lease and keeps it alive through the leader).
    pub lease_clients: usize,
    /// Mean time between compactions (a client compacting a few revisions behind), ms; 0 for
    /// none.
    pub compact_every_ms: u64,
    /// Simulated time with faults, ms.
    pub duration_ms: u64,
    /// Longest network delay, ms.
    pub max_delay_ms: u64,
    /// Probability that a message is dropped.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Longest fsync, ms.
    pub max_fsync_ms: u64,
    /// Longest wait before a batch of committed entries is applied, ms (apply runs on its own
    /// thread in a node, behind raft).
    pub max_apply_ms: u64,
    /// Mean time between faults (partition, crash, power loss), ms; 0 for none.
    pub fault_every_ms: u64,
    /// Mean time between membership steps (add a learner, promote it, remove a voter), ms;
    /// 0 for none.
    pub membership_every_ms: u64,
    /// Applied entries between raft log releases (`--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept behind a release point (etcd `SnapshotCatchUpEntries`).
    pub catch_up_entries: u64,
    /// Planted bugs.
    pub bugs: Bugs,
    /// Print the whole trace to stderr at the end (`ETCH_SIM_SEED` replays).
    pub print_trace: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            members: 3,
            clients: 4,
            watchers: 3,
            lease_clients: 2,
            compact_every_ms: 1_500,
            duration_ms: 20_000,
            max_delay_ms: 20,
            drop: 0.02,
            duplicate: 0.02,
            max_fsync_ms: 10,
            max_apply_ms: 10,
            fault_every_ms: 1_500,
            membership_every_ms: 2_500,
            // Small, so that members often fall behind a release point (a run applies a few
            // hundred entries).
            snapshot_count: 30,
            catch_up_entries: 10,
            bugs: Bugs::default(),
            print_trace: false,
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Client operations acknowledged.
    pub acknowledged: usize,
    /// Client operations whose outcome is unknown (timed out, member crashed).
    pub indeterminate: usize,
    /// Crashes (a power loss counts once per member).
    pub crashes: usize,
    /// Partitions.
    pub partitions: usize,
    /// Highest applied index reached.
    pub applied: u64,
    /// Leader elections seen (distinct terms with a leader).
    pub terms: usize,
    /// Reads served before apply reached their ReadIndex (only with the planted bug).
    pub early_reads: usize,
    /// Watch events received, all watchers.
    pub watch_events: usize,
    /// Lease keep-alives the leader's lessor answered.
    pub lease_keepalives: usize,
    /// Expired leases the leaders revoked.
    pub lease_revokes: usize,
    /// Compactions applied (on the first member to apply each).
    pub compactions: usize,
    /// Watches canceled because their start fell below the compaction point.
    pub watch_compacted: usize,
    /// Membership changes proposed (add a learner, promote, remove).
    pub member_changes: usize,
    /// Members removed (they stop for good).
    pub members_removed: usize,
    /// Raft log releases (all members).
    pub log_releases: usize,
    /// Raft snapshots installed by members that fell behind a release point.
    pub snapshots_installed: usize,
    /// Events in the trace.
    pub events: usize,
    /// A digest of the whole trace: equal for two runs of one seed.
    pub trace_digest: u64,
}

/// A failed run: the seed, what broke, and the trace of events.
#[derive(Debug)]
pub struct Failure {
    /// The seed that reproduces it (`ETCH_SIM_SEED`).
    pub seed: u64,
    /// What broke.
    pub why: String,
    /// Every event of the run, in order.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "simulation seed {} failed: {}", self.seed, self.why)?;
        writeln!(f, "replay it with ETCH_SIM_SEED={}", self.seed)?;
        let skip = self.trace.len().saturating_sub(400);
        if skip > 0 {
            writeln!(f, "... {skip} earlier events")?;
        }
        for l in &self.trace[skip..] {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// Runs one seed. A panic inside the cores (raft-rs asserts its invariants) is a failure too.
///
/// # Errors
/// The [`Failure`] with its trace.
pub fn run(seed: u64, cfg: &Config) -> Result<Stats, Failure> {
    let dir = tempfile::tempdir().map_err(|e| Failure {
        seed,
        why: format!("tempdir: {e}"),
        trace: Vec::new(),
    })?;
    let trace = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let t2 = trace.clone();
    let path = dir.path().to_owned();
    let cfg2 = cfg.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut sim = Sim::new(seed, cfg2, &path);
        let r = sim.run();
        *t2.lock().unwrap_or_else(|p| p.into_inner()) = std::mem::take(&mut sim.trace);
        r
    }));
    let trace = std::mem::take(&mut *trace.lock().unwrap_or_else(|p| p.into_inner()));
    match outcome {
        Ok(Ok(stats)) => Ok(stats),
        Ok(Err(why)) => Err(Failure { seed, why, trace }),
        Err(p) => Err(Failure {
            seed,
            why: format!("panic: {}", etch_node::state::panic_message(&*p)),
            trace,
        }),
    }
}

/// A linearizable read waiting in a member.
#[derive(Debug, Clone)]
struct ReadReq {
    client: usize,
    op: u64,
    key: String,
}

#[derive(Debug)]
enum Event {
    Tick(u64, u64),
    Deliver(Message),
    /// A snapshot stream: the `MsgSnapshot`, the sender's incarnation, the store's chunks.
    DeliverSnapshot(Message, u64, Rc<Vec<Vec<u8>>>),
    WalDone(u64, u64),
    /// The member proposes the client writes it holds (the consensus actor's flush).
    Flush(u64, u64),
    Apply(u64, u64),
    ClientNext(usize),
    ClientTimeout(usize, u64),
    Request(u64, usize, u64, Op),
    Response(usize, u64, Result<Ret, String>),
    Fault,
    WatchDrain(usize),
    LeaseNext(usize),
    Compact,
    LeaseTick(u64, u64),
    WatchResume(usize),
    Restart(u64),
    Heal,
    Reconfigure,
}

struct Pending {
    number: u64,
    snapshot: Option<SnapshotMetadata>,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
    /// Already reported to raft (the planted bug).
    acked: bool,
}

#[derive(Default)]
struct Disk {
    hard_state: HardState,
    /// The last release point (or installed snapshot): entries at or below it are gone.
    snapshot: Option<SnapshotMetadata>,
    /// Durable entries after the release point, in index order.
    entries: Vec<Entry>,
    pending: std::collections::VecDeque<Pending>,
}

impl Disk {
    /// One WAL write: the snapshot record first (raft-rs restarts its log there), then the
    /// entries (replacing any at the same indexes and after), then the hard state.
    fn write(
        &mut self,
        snapshot: Option<&SnapshotMetadata>,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) {
        if let Some(meta) = snapshot {
            self.snapshot = Some(meta.clone());
            self.entries.clear();
        }
        if let Some(first) = entries.first() {
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend_from_slice(entries);
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
    }

    /// A log release: entries at or below `meta.index` are dropped.
    fn release(&mut self, meta: SnapshotMetadata) {
        self.entries.retain(|e| e.index > meta.index);
        self.snapshot = Some(meta);
    }
}

struct Member {
    id: u64,
    up: bool,
    incarnation: u64,
    tick_ms: u64,
    core: Option<ConsensusCore<ReadReq>>,
    apply: Option<ApplyCore>,
    disk: Disk,
    /// Proposals made here, by request id: (client, op).
    waiters: BTreeMap<u64, (usize, u64)>,
    /// Client writes held for the next flush: (client, op).
    held: Vec<(usize, u64)>,
    /// Reads whose ReadIndex is known, waiting for apply.
    reads: Vec<(ReadReq, u64)>,
    /// Committed entries handed to apply, oldest first.
    to_apply: std::collections::VecDeque<Vec<Entry>>,
    /// Watch fanout of this incarnation (streams die with the member).
    hub: Option<WatchHub<SimSink>>,
    /// The lessor of this incarnation.
    lessor: Option<etch_node::core::lease::Lessor>,
    store_dir: std::path::PathBuf,
    /// Removed from the cluster: never starts again.
    removed: bool,
}

impl Member {
    fn new(id: u64, store_dir: std::path::PathBuf, tick_ms: u64) -> Member {
        Member {
            id,
            up: false,
            incarnation: 0,
            tick_ms,
            core: None,
            apply: None,
            disk: Disk::default(),
            waiters: BTreeMap::new(),
            held: Vec::new(),
            reads: Vec::new(),
            to_apply: std::collections::VecDeque::new(),
            hub: None,
            lessor: None,
            store_dir,
            removed: false,
        }
    }
}

struct Client {
    member: u64,
    /// The op in flight: (op id, deadline passed?).
    busy: Option<u64>,
}

/// A watch stream's receiving end: a bounded inbox the client drains at its own pace.
#[derive(Clone)]
struct SimSink {
    inbox: Rc<RefCell<VecDeque<WatchResponse>>>,
    room: usize,
}

impl Sink for SimSink {
    fn try_send(&self, r: WatchResponse) -> bool {
        let mut q = self.inbox.borrow_mut();
        if q.len() >= self.room {
            return false;
        }
        q.push_back(r);
        true
    }
    fn capacity(&self) -> usize {
        self.room.saturating_sub(self.inbox.borrow().len())
    }
}

/// A watch client: all keys or one key, from `start`; resumes from the revision after the last
/// it received when its member goes away.
struct Watcher {
    key: Option<String>,
    start: i64,
    next_rev: i64,
    /// (member, stream) it is attached to.
    at: Option<(u64, u64, (u64, u64))>,
    inbox: Rc<RefCell<VecDeque<WatchResponse>>>,
    /// (revision, key, value) of every event received, in order.
    got: Vec<(i64, String, Vec<u8>)>,
    /// Whether its first response was seen (the `created` one) on this attachment.
    resumed: bool,
    /// Revision ranges `[from, to)` it was told were compacted away before it got them.
    gaps: Vec<(i64, i64)>,
}

struct Sim {
    cfg: Config,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: BTreeMap<usize, Event>,
    next_event: usize,
    members: BTreeMap<u64, Member>,
    clients: Vec<Client>,
    watchers: Vec<Watcher>,
    next_stream: u64,
    lease_clients: Vec<leases::LeaseClient>,
    /// Per lease: when a leader last granted or refreshed it (ms) and its TTL (s).
    lease_refreshed: BTreeMap<i64, (u64, i64)>,
    /// Revokes proposed by lessors, by request id.
    revoke_decisions: BTreeMap<u64, leases::RevokeDecision>,
    /// The first committed revoke that came too early.
    lease_violation: Option<String>,
    /// Every event, by revision, as the first member to apply it stored it: the history
    /// watchers are checked against (compaction later deletes it from the stores).
    history_events: BTreeMap<i64, (String, Vec<u8>)>,
    /// Highest compaction point applied anywhere.
    compacted: i64,
    history: History,
    next_request: u64,
    next_value: u64,
    isolated: BTreeSet<u64>,
    leaders: BTreeMap<u64, u64>,
    hashes: BTreeMap<u64, (u64, u32)>,
    stats: Stats,
    trace: Vec<String>,
    faults_on: bool,
    logger: slog::Logger,
    /// Where the members' stores live.
    dir: std::path::PathBuf,
}

/// Keys the clients use: few, so that reads often follow writes of the same key.
const KEYS: [&str; 3] = ["a", "b", "c"];
const ELECTION_TICKS: usize = 10;
const CLIENT_TIMEOUT_MS: u64 = 3_000;

impl Sim {
    fn new(seed: u64, cfg: Config, dir: &std::path::Path) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut members = BTreeMap::new();
        // A new cluster's log starts with the same bootstrap entries on every member.
        let initial: Vec<_> = (1..=cfg.members).map(Sim::initial_member).collect();
        let bootstrap = etch_node::core::raft::bootstrap_entries(&initial);
        for id in 1..=cfg.members {
            let mut m = Member::new(id, dir.join(format!("m{id}")), rng.random_range(80..=130));
            m.disk.entries = bootstrap.clone();
            m.disk.hard_state = HardState {
                term: 1,
                commit: bootstrap.len() as u64,
                ..Default::default()
            };
            members.insert(id, m);
        }
        let clients = (0..cfg.clients)
            .map(|_| Client {
                member: rng.random_range(1..=cfg.members),
                busy: None,
            })
            .collect();
        Sim {
            history: History::new(&KEYS),
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            members,
            clients,
            watchers: Vec::new(),
            next_stream: 1,
            lease_clients: Vec::new(),
            lease_refreshed: BTreeMap::new(),
            revoke_decisions: BTreeMap::new(),
            lease_violation: None,
            history_events: BTreeMap::new(),
            compacted: 0,
            next_request: 1,
            next_value: 1,
            isolated: BTreeSet::new(),
            leaders: BTreeMap::new(),
            hashes: BTreeMap::new(),
            stats: Stats::default(),
            trace: Vec::new(),
            faults_on: true,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            dir: dir.to_owned(),
        }
    }

    fn log(&mut self, what: String) {
        self.trace.push(format!("{:>7}ms {what}", self.now));
    }

    fn at(&mut self, delay: u64, e: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.seq += 1;
        self.events.insert(id, e);
        self.queue.push(Reverse((self.now + delay, self.seq, id)));
    }

    fn run(&mut self) -> Result<Stats, String> {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        for id in ids {
            self.start(id);
        }
        for c in 0..self.clients.len() {
            let d = self.rng.random_range(0..500);
            self.at(d, Event::ClientNext(c));
        }
        for w in 0..self.cfg.watchers {
            let key = (w % 2 == 1).then(|| KEYS[self.rng.random_range(0..KEYS.len())].to_string());
            let start = self.rng.random_range(1..=3);
            self.watchers.push(Watcher {
                key,
                start,
                next_rev: start,
                at: None,
                inbox: Rc::new(RefCell::new(VecDeque::new())),
                got: Vec::new(),
                resumed: false,
                gaps: Vec::new(),
            });
            let d = self.rng.random_range(0..2_000);
            self.at(d, Event::WatchResume(w));
        }
        self.lease_start();
        if self.cfg.compact_every_ms > 0 {
            let d = self.rng.random_range(0..self.cfg.compact_every_ms * 2);
            self.at(d, Event::Compact);
        }
        if self.cfg.fault_every_ms > 0 {
            let d = self.rng.random_range(0..self.cfg.fault_every_ms * 2);
            self.at(d, Event::Fault);
        }
        if self.cfg.membership_every_ms > 0 {
            let d = self.rng.random_range(0..self.cfg.membership_every_ms * 2);
            self.at(d, Event::Reconfigure);
        }
        let end = self.cfg.duration_ms;
        self.loop_until(end)?;
        // Quiesce: heal, restart everyone, then let clients finish and read every key.
        self.faults_on = false;
        self.log("faults stop: heal and restart every member".into());
        self.isolated.clear();
        let down: Vec<u64> = self
            .live_members()
            .into_iter()
            .filter(|id| !self.members[id].up)
            .collect();
        for id in down {
            self.start(id);
        }
        self.loop_until(end + 8_000)?;
        self.final_reads()?;
        self.check_end()
    }

    fn loop_until(&mut self, end: u64) -> Result<(), String> {
        while let Some(Reverse((t, _, id))) = self.queue.peek().copied() {
            if t > end {
                break;
            }
            self.queue.pop();
            self.now = t;
            let Some(e) = self.events.remove(&id) else {
                continue;
            };
            self.handle(e)?;
        }
        self.now = self.now.max(end);
        Ok(())
    }

    fn handle(&mut self, e: Event) -> Result<(), String> {
        match e {
            Event::Tick(id, inc) => {
                let Some(m) = self.members.get_mut(&id) else {
                    return Ok(());
                };
                if !m.up || m.incarnation != inc {
                    return Ok(());
                }
                if let Some(c) = m.core.as_mut() {
                    c.tick();
                }
                let d = m.tick_ms;
                self.at(d, Event::Tick(id, inc));
                self.drive(id)?;
            }
            Event::Deliver(msg) => {
                let to = msg.to;
                if self.cut(msg.from, to) {
                    return Ok(());
                }
                let Some(m) = self.members.get_mut(&to) else {
                    return Ok(());
                };
                if !m.up {
                    return Ok(());
                }
                let mut flush = None;
                if let Some(c) = m.core.as_mut() {
                    // A leader holds a follower's forwarded writes for its next flush, as the
                    // consensus actor does.
                    let mut msg = msg;
                    if c.hold_forwarded(&mut msg).is_some() {
                        flush = Some(m.incarnation);
                    } else {
                        c.step(msg);
                    }
                }
                if let Some(inc) = flush {
                    self.at(1, Event::Flush(to, inc));
                }
                self.drive(to)?;
            }
            Event::DeliverSnapshot(msg, inc, chunks) => self.deliver_snapshot(msg, inc, &chunks)?,
            Event::WalDone(id, inc) => self.wal_done(id, inc)?,
            Event::Flush(id, inc) => self.flush(id, inc)?,
            Event::Apply(id, inc) => {
                let m = self.members.get_mut(&id).expect("member");
                if !m.up || m.incarnation != inc {
                    return Ok(());
                }
                let Some(batch) = m.to_apply.pop_front() else {
                    return Ok(());
                };
                let mut responses = Vec::new();
                self.apply(id, &batch, &mut responses)?;
                self.serve_reads(id, self.cfg.bugs.read_before_apply, &mut responses);
                self.respond(responses);
                self.drive(id)?;
            }
            Event::ClientNext(c) => self.client_next(c),
            Event::ClientTimeout(c, op) => {
                if self.clients[c].busy == Some(op) {
                    self.log(format!("client {c} op {op} timed out"));
                    self.history.indeterminate(c);
                    self.stats.indeterminate += 1;
                    self.clients[c].busy = None;
                    self.clients[c].member = self.pick_member();
                    self.at(1, Event::ClientNext(c));
                }
            }
            Event::Request(member, c, op, what) => self.request(member, c, op, what)?,
            Event::Response(c, op, ret) => {
                if self.clients[c].busy != Some(op) {
                    return Ok(());
                }
                self.clients[c].busy = None;
                match ret {
                    Ok(r) => {
                        self.log(format!("client {c} op {op} -> {r:?}"));
                        self.history.complete(c, r);
                        self.stats.acknowledged += 1;
                    }
                    Err(e) => {
                        self.log(format!("client {c} op {op} failed: {e}"));
                        self.history.indeterminate(c);
                        self.stats.indeterminate += 1;
                        self.clients[c].member = self.pick_member();
                    }
                }
                let d = self.rng.random_range(0..30);
                self.at(d, Event::ClientNext(c));
            }
            Event::Fault => self.fault(),
            Event::WatchDrain(w) => self.watch_drain(w)?,
            Event::WatchResume(w) => self.watch_resume(w),
            Event::LeaseNext(l) => self.lease_next(l)?,
            Event::Compact => self.compact()?,
            Event::LeaseTick(id, inc) => self.lease_tick(id, inc)?,
            Event::Restart(id) => {
                if self.faults_on && !self.members[&id].up && !self.members[&id].removed {
                    self.start(id);
                }
            }
            Event::Reconfigure => self.reconfigure()?,
            Event::Heal => {
                if !self.isolated.is_empty() {
                    self.log(format!("heal partition of {:?}", self.isolated));
                    self.isolated.clear();
                }
            }
        }
        Ok(())
    }

    /// Whether the network between `a` and `b` is cut now.
    fn cut(&self, a: u64, b: u64) -> bool {
        self.isolated.contains(&a) != self.isolated.contains(&b)
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(m);
                continue;
            }
            if self.faults_on && self.rng.random_bool(self.cfg.drop) {
                continue;
            }
            let copies = if self.faults_on && self.rng.random_bool(self.cfg.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let d = self.rng.random_range(1..=self.cfg.max_delay_ms);
                self.at(d, Event::Deliver(m.clone()));
            }
        }
    }

    /// Starts (or restarts) member `id` from its durable WAL and its store.
    fn start(&mut self, id: u64) {
        let tick_ms = self.rng.random_range(80..=130);
        let logger = self.logger.clone();
        let m = self.members.get_mut(&id).expect("member");
        let store = Arc::new(MvccStore::open(&m.store_dir).expect("open store"));
        let applied = store.applied_index().index;
        let rec = Recovered {
            snapshot: m.disk.snapshot.clone(),
            hard_state: Some(m.disk.hard_state.clone()),
            entries: m.disk.entries.clone(),
            truncated_bytes: 0,
        };
        // raft's configuration as of the store's applied index (later entries replay on top),
        // as `etch` starts.
        let membership = store.membership().expect("membership");
        let log = RaftLog::from_recovered(&rec, ConfState::default());
        if applied > log.release_index() && !membership.members.is_empty() {
            log.set_conf_state(etch_storage::members::conf_state(&membership));
        }
        let raft = RaftCore::new_fixed_timeout(id, log, applied, ELECTION_TICKS, &logger)
            .expect("raft core");
        let mut core =
            ConsensusCore::new(raft, id, self.cfg.snapshot_count, self.cfg.catch_up_entries);
        core.start();
        m.core = Some(core);
        m.hub = Some(WatchHub::new(
            store.current_revision(),
            WatchLimits::default(),
        ));
        m.lessor = Some(Sim::lessor_for(&store));
        m.apply = Some(ApplyCore::new(store));
        m.up = true;
        m.incarnation += 1;
        m.tick_ms = tick_ms;
        let (inc, last) = (m.incarnation, m.disk.entries.len());
        self.log(format!(
            "m{id} starts (incarnation {inc}, {last} entries durable, applied {applied}, tick {tick_ms} ms)"
        ));
        let phase = self.rng.random_range(1..=tick_ms);
        self.at(phase, Event::Tick(id, inc));
        let phase = self.rng.random_range(1..=100);
        self.at(phase, Event::LeaseTick(id, inc));
    }

    /// Stops member `id` as a power loss would: un-fsynced writes are lost, except a torn
    /// prefix of the first.
    fn crash(&mut self, id: u64) {
        let torn = self.rng.random_range(0..=3usize);
        let m = self.members.get_mut(&id).expect("member");
        if !m.up {
            return;
        }
        m.up = false;
        m.core = None;
        m.apply = None;
        m.hub = None;
        m.lessor = None;
        m.waiters.clear();
        m.held.clear();
        m.reads.clear();
        m.to_apply.clear();
        let mut kept = 0;
        if let Some(p) = m.disk.pending.pop_front() {
            // The snapshot record is written first: a torn write keeps it and a prefix of the
            // entries after it, or nothing.
            match (&p.snapshot, torn) {
                (Some(_), 0) => {}
                (Some(meta), n) => {
                    kept = (n - 1).min(p.entries.len());
                    m.disk.write(Some(meta), &p.entries[..kept], None);
                }
                (None, n) => {
                    kept = n.min(p.entries.len());
                    m.disk.write(None, &p.entries[..kept], None);
                }
            }
        }
        let lost = m.disk.pending.len();
        m.disk.pending.clear();
        self.stats.crashes += 1;
        for w in 0..self.watchers.len() {
            if self.watchers[w].at.is_some_and(|(m, _, _)| m == id) {
                self.watchers[w].at = None;
                let d = self.rng.random_range(50..500);
                self.at(d, Event::WatchResume(w));
            }
        }
        self.log(format!(
            "m{id} crashes ({kept} entries of the write in flight survive, {lost} later writes lost)"
        ));
    }

    fn fault(&mut self) {
        if !self.faults_on {
            return;
        }
        let live = self.live_members();
        let n = live.len() as u64;
        let leader = self.current_leader();
        match self.rng.random_range(0..10) {
            0..=2 => {
                // Isolate a minority: often the leader.
                let size = self.rng.random_range(1..=(n - 1) / 2);
                let mut set = BTreeSet::new();
                if let Some(l) = leader.filter(|_| self.rng.random_bool(0.5)) {
                    set.insert(l);
                }
                while (set.len() as u64) < size {
                    set.insert(live[self.rng.random_range(0..live.len())]);
                }
                self.log(format!("partition: {set:?} cut off"));
                self.isolated = set;
                self.stats.partitions += 1;
                let d = self.rng.random_range(300..3_000);
                self.at(d, Event::Heal);
            }
            3..=5 => {
                let id = match leader.filter(|_| self.rng.random_bool(0.5)) {
                    Some(l) => l,
                    None => live[self.rng.random_range(0..live.len())],
                };
                self.crash(id);
                let d = self.rng.random_range(100..2_000);
                self.at(d, Event::Restart(id));
            }
            6..=7 => {
                self.log("power loss: every member crashes".into());
                for id in live {
                    self.crash(id);
                    let d = self.rng.random_range(50..1_000);
                    self.at(d, Event::Restart(id));
                }
            }
            _ => {
                // A slow disk on one member (the next fsyncs are delayed by the queue).
                let id = live[self.rng.random_range(0..live.len())];
                self.log(format!("m{id} member pauses (clock jump)"));
                if let Some(m) = self.members.get_mut(&id) {
                    m.tick_ms = 400;
                }
            }
        }
        let d = self
            .rng
            .random_range(self.cfg.fault_every_ms / 2..self.cfg.fault_every_ms * 3 / 2);
        self.at(d, Event::Fault);
    }

    /// A member a client turns to: any that is not removed.
    fn pick_member(&mut self) -> u64 {
        let live = self.live_members();
        live[self.rng.random_range(0..live.len())]
    }

    /// The members not removed from the cluster (running or not), in ID order.
    fn live_members(&self) -> Vec<u64> {
        self.members
            .values()
            .filter(|m| !m.removed)
            .map(|m| m.id)
            .collect()
    }

    /// The members running now, in ID order.
    fn up_members(&self) -> Vec<u64> {
        self.members
            .values()
            .filter(|m| m.up)
            .map(|m| m.id)
            .collect()
    }

    fn current_leader(&self) -> Option<u64> {
        self.members
            .values()
            .filter(|m| m.up)
            .filter_map(|m| m.core.as_ref())
            .map(|c| c.raft().status())
            .max_by_key(|s| s.0)
            .map(|s| s.1)
            .filter(|l| *l != 0)
    }

    /// Carries out what member `id`'s consensus core asks for, as the consensus actor does,
    /// over the simulated disk and network, until it asks for nothing more.
    fn drive(&mut self, id: u64) -> Result<(), String> {
        loop {
            let bug = self.cfg.bugs;
            let Some(m) = self.members.get_mut(&id) else {
                break;
            };
            if !m.up {
                break;
            }
            let Some(effect) = m.core.as_mut().and_then(|c| c.poll()) else {
                break;
            };
            match effect {
                Effect::Status(st) => {
                    if st.leader == id {
                        match self.leaders.get(&st.term) {
                            Some(l) if *l != id => {
                                return Err(format!(
                                    "two leaders in term {}: m{l} and m{id}",
                                    st.term
                                ));
                            }
                            Some(_) => {}
                            None => {
                                self.leaders.insert(st.term, id);
                                self.stats.terms += 1;
                                self.log(format!("m{id} leads term {}", st.term));
                            }
                        }
                    }
                }
                Effect::Send(msgs) => self.send(msgs),
                Effect::ReadsReady(reads) => {
                    m.reads.extend(reads);
                    let mut responses = Vec::new();
                    self.serve_reads(id, bug.read_before_apply, &mut responses);
                    self.respond(responses);
                }
                Effect::ReadsFailed(reads) => {
                    let responses = reads
                        .into_iter()
                        .map(|r| (r.client, r.op, Err("no leader".to_string())))
                        .collect();
                    self.respond(responses);
                }
                Effect::Apply(entries) => {
                    // In order, a little later (apply runs on its own thread in a node).
                    m.to_apply.push_back(entries);
                    let inc = m.incarnation;
                    let d = self.slow(self.cfg.max_apply_ms);
                    self.at(d, Event::Apply(id, inc));
                }
                Effect::Persist(p) => {
                    let inc = m.incarnation;
                    let acked = bug.ack_before_fsync;
                    let number = p.number;
                    m.disk.pending.push_back(Pending {
                        number,
                        snapshot: p.snapshot,
                        entries: p.entries,
                        hard_state: p.hard_state,
                        acked,
                    });
                    if acked {
                        m.core.as_mut().expect("core").persisted(number);
                    }
                    let d = self.slow(self.cfg.max_fsync_ms).max(1);
                    self.at(d, Event::WalDone(id, inc));
                }
                Effect::PersistStore => {
                    // The simulated store is durable as soon as it is written.
                    m.core.as_mut().expect("core").store_persisted();
                }
                Effect::ReleaseLog(meta) => {
                    let index = meta.index;
                    m.disk.release(meta);
                    m.core.as_mut().expect("core").log_released();
                    self.stats.log_releases += 1;
                    self.log(format!("m{id} releases its raft log up to {index}"));
                }
                Effect::Membership(ms) => self.on_membership(id, &ms),
                Effect::Stop(why) if why == REMOVED => self.crash(id),
                Effect::Stop(why) => return Err(format!("m{id} stops: {why}")),
            }
        }
        Ok(())
    }

    /// A disk or apply latency: up to `max` ms, and one time in ten a stall of up to 30 times
    /// that (a busy disk, a long fjall flush) while faults run.
    fn slow(&mut self, max: u64) -> u64 {
        if self.faults_on && self.rng.random_bool(0.1) {
            self.rng.random_range(max..=max * 30)
        } else {
            self.rng.random_range(0..=max)
        }
    }

    fn respond(&mut self, responses: Vec<(usize, u64, Result<Ret, String>)>) {
        for (c, op, r) in responses {
            let d = self.rng.random_range(1..=self.cfg.max_delay_ms);
            self.at(d, Event::Response(c, op, r));
        }
    }

    fn flush(&mut self, id: u64, inc: u64) -> Result<(), String> {
        let m = self.members.get_mut(&id).expect("member");
        if !m.up || m.incarnation != inc {
            return Ok(());
        }
        let held = std::mem::take(&mut m.held);
        let failed = match m.core.as_mut().expect("core").flush() {
            Ok(()) => Vec::new(),
            Err(e) => {
                for (_, op) in &held {
                    m.waiters.remove(op);
                }
                held.into_iter().map(|x| (x, e.to_string())).collect()
            }
        };
        for ((c, op), e) in failed {
            let d = self.rng.random_range(1..=self.cfg.max_delay_ms);
            self.at(d, Event::Response(c, op, Err(e)));
        }
        self.drive(id)
    }

    fn wal_done(&mut self, id: u64, inc: u64) -> Result<(), String> {
        let m = self.members.get_mut(&id).expect("member");
        if !m.up || m.incarnation != inc {
            return Ok(());
        }
        let Some(p) = m.disk.pending.pop_front() else {
            return Ok(());
        };
        m.disk
            .write(p.snapshot.as_ref(), &p.entries, p.hard_state.as_ref());
        if !p.acked {
            m.core.as_mut().expect("core").persisted(p.number);
        }
        self.drive(id)
    }

    fn apply(
        &mut self,
        id: u64,
        entries: &[Entry],
        responses: &mut Vec<(usize, u64, Result<Ret, String>)>,
    ) -> Result<(), String> {
        let m = self.members.get_mut(&id).expect("member");
        let apply = m.apply.clone().expect("apply");
        let before = apply.store().applied_index().index;
        let mut last = before;
        let mut lease_changes = Vec::new();
        let mut membership = None;
        if let Some(e) = entries.last() {
            last = e.index;
        }
        // As the apply actor does: runs of Puts in one store batch.
        let applied = apply.apply_entries(entries).map_err(|err| {
            format!(
                "m{id} apply {}..={last}: {err}",
                entries.first().map_or(0, |e| e.index)
            )
        })?;
        for mut a in applied {
            if let Some(ms) = a.membership.take() {
                membership = Some(ms);
            }
            if let Some(change) = &a.lease {
                lease_changes.push((change.clone(), a.request_id));
            }
            if let Some((c, op)) = m.waiters.remove(&a.request_id) {
                responses.push((
                    c,
                    op,
                    a.result.map(|_| Ret::Written).map_err(|e| e.to_string()),
                ));
            }
        }
        // The membership (raft's configuration, the peers, a removal) follows through the
        // core's effects.
        m.core.as_mut().expect("core").applied(last, membership);
        for (change, req) in lease_changes {
            self.lease_applied(id, change, req);
        }
        self.applied_store(id, before)
    }

    /// Member `id`'s store moved from applied index `before` (apply or an installed
    /// snapshot): its watch fanout advances, and its hash is recorded and compared with the
    /// other members' at the same applied index.
    fn applied_store(&mut self, id: u64, before: u64) -> Result<(), String> {
        let m = self.members.get_mut(&id).expect("member");
        let apply = m.apply.clone().expect("apply");
        let store = apply.store();
        if let Some(hub) = m.hub.as_mut() {
            hub.advance(store, store.current_revision())
                .and_then(|_| hub.catch_up(store).map(|_| ()))
                .map_err(|e| format!("m{id} watch: {e}"))?;
        }
        let now = store.applied_index().index;
        if now > before {
            // The kept history only: members delete compacted history in the background, each
            // at its own pace.
            let kv = store
                .hash_kv(0)
                .map_err(|e| format!("m{id} hash: {e}"))?
                .map_err(|e| format!("m{id} hash: {e}"))?;
            let members = store
                .membership()
                .map_err(|e| format!("m{id} membership: {e}"))?;
            let hash = kv.hash
                ^ (kv.compact_revision as u32).rotate_left(16)
                ^ crc32fast::hash(&members.encode_to_vec());
            // Record the history before any later compaction deletes it.
            let from = self.history_events.keys().next_back().map_or(1, |r| r + 1);
            let to = store.current_revision();
            if to >= from && from > store.compact_revision() {
                for ev in store
                    .events(from, to)
                    .map_err(|e| format!("m{id} events: {e}"))?
                {
                    if let Some(kv) = ev.kv {
                        self.history_events.insert(
                            kv.mod_revision,
                            (
                                String::from_utf8_lossy(&kv.key).into_owned(),
                                kv.value.to_vec(),
                            ),
                        );
                    }
                }
            }
            if store.compact_revision() > self.compacted {
                self.compacted = store.compact_revision();
                self.stats.compactions += 1;
            }
            self.stats.applied = self.stats.applied.max(now);
            match self.hashes.get(&now) {
                Some((other, h)) if *h != hash => {
                    return Err(format!(
                        "stores differ at applied index {now}: m{other} {h:08x}, m{id} {hash:08x}"
                    ));
                }
                Some(_) => {}
                None => {
                    self.hashes.insert(now, (id, hash));
                }
            }
        }
        Ok(())
    }

    fn serve_reads(
        &mut self,
        id: u64,
        early: bool,
        responses: &mut Vec<(usize, u64, Result<Ret, String>)>,
    ) {
        let m = self.members.get_mut(&id).expect("member");
        let Some(apply) = m.apply.clone() else { return };
        let applied = apply.store().applied_index().index;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut m.reads)
            .into_iter()
            .partition(|(_, index)| early || applied >= *index);
        m.reads = waiting;
        for (r, index) in ready {
            if applied < index {
                self.stats.early_reads += 1;
            }
            let got = apply.store().range(&RangeRequest {
                key: r.key.clone().into_bytes().into(),
                ..Default::default()
            });
            let ret = match got {
                Ok(Ok(resp)) => Ok(Ret::Read(resp.kvs.first().map(|kv| {
                    String::from_utf8_lossy(&kv.value)
                        .parse::<u64>()
                        .unwrap_or(0)
                }))),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            responses.push((r.client, r.op, ret));
        }
    }

    fn client_next(&mut self, c: usize) {
        if self.clients[c].busy.is_some() {
            return;
        }
        if !self.faults_on && self.now > self.cfg.duration_ms + 6_000 {
            return;
        }
        let key = KEYS[self.rng.random_range(0..KEYS.len())].to_string();
        let op = if self.rng.random_bool(0.5) {
            let v = self.next_value;
            self.next_value += 1;
            Op::Write(key, v)
        } else {
            Op::Read(key)
        };
        self.issue(c, op);
    }

    fn issue(&mut self, c: usize, op: Op) {
        let id = self.next_request;
        self.next_request += 1;
        self.history.invoke(c, op.clone());
        self.clients[c].busy = Some(id);
        let member = self.clients[c].member;
        self.log(format!("client {c} op {id}: {op:?} at m{member}"));
        let d = self.rng.random_range(1..=self.cfg.max_delay_ms);
        self.at(d, Event::Request(member, c, id, op));
        self.at(CLIENT_TIMEOUT_MS, Event::ClientTimeout(c, id));
    }

    fn request(&mut self, member: u64, c: usize, op: u64, what: Op) -> Result<(), String> {
        let m = self.members.get_mut(&member).expect("member");
        if !m.up {
            return Ok(());
        }
        let core = m.core.as_mut().expect("core");
        match what {
            Op::Write(key, v) => {
                let req = InternalRequest {
                    id: op,
                    request: Some(Request::Put(PutRequest {
                        key: key.into_bytes().into(),
                        value: v.to_string().into_bytes().into(),
                        ..Default::default()
                    })),
                    auth: None,
                };
                // Held and proposed together with the writes that arrive within a
                // millisecond, as the consensus actor does with its mailbox.
                match core.propose_later(req.encode_to_vec()) {
                    Ok(()) => {
                        m.waiters.insert(op, (c, op));
                        m.held.push((c, op));
                        if m.held.len() == 1 {
                            let inc = m.incarnation;
                            self.at(1, Event::Flush(member, inc));
                        }
                    }
                    Err(e) => {
                        let d = self.rng.random_range(1..=self.cfg.max_delay_ms);
                        self.at(d, Event::Response(c, op, Err(e.to_string())));
                    }
                }
            }
            Op::Read(key) => core.read(ReadReq { client: c, op, key }),
        }
        self.drive(member)
    }

    /// After the faults: each client reads every key until it gets an answer, so a lost
    /// acknowledged write shows up as a stale read.
    fn final_reads(&mut self) -> Result<(), String> {
        for round in 0..KEYS.len() {
            for c in 0..self.clients.len() {
                let key = KEYS[(c + round) % KEYS.len()].to_string();
                for attempt in 0..20 {
                    if self.clients[c].busy.is_none() {
                        self.issue(c, Op::Read(key.clone()));
                    }
                    let end = self.now + CLIENT_TIMEOUT_MS + 100;
                    let op = self.clients[c].busy;
                    while self.clients[c].busy == op && self.now < end {
                        let Some(Reverse((t, _, id))) = self.queue.pop() else {
                            break;
                        };
                        self.now = t;
                        if let Some(e) = self.events.remove(&id) {
                            self.handle(e)?;
                        }
                    }
                    if self.history.last_acknowledged(c) {
                        break;
                    }
                    if attempt == 19 {
                        return Err(format!("client {c} cannot read {key} after the faults"));
                    }
                }
            }
        }
        Ok(())
    }

    /// A client compacts a few revisions behind a running member's current revision (etcd's
    /// auto-compaction does the same through the leader).
    fn compact(&mut self) -> Result<(), String> {
        if !self.faults_on {
            return Ok(());
        }
        let d = self
            .rng
            .random_range(self.cfg.compact_every_ms / 2..self.cfg.compact_every_ms * 3 / 2);
        self.at(d, Event::Compact);
        let up = self.up_members();
        if up.is_empty() {
            return Ok(());
        }
        let member = up[self.rng.random_range(0..up.len())];
        let m = self.members.get_mut(&member).expect("member");
        let current = m.apply.as_ref().expect("apply").store().current_revision();
        let keep = self.rng.random_range(1..20);
        if current <= keep + 1 {
            return Ok(());
        }
        let revision = current - keep;
        let req = self.next_request;
        self.next_request += 1;
        let data = InternalRequest {
            id: req,
            request: Some(Request::Compaction(
                etch_protocol::etcdserverpb::CompactionRequest {
                    revision,
                    physical: false,
                },
            )),
            auth: None,
        }
        .encode_to_vec();
        let _ = m.core.as_mut().expect("core").propose(data);
        self.log(format!(
            "compaction to revision {revision} proposed at m{member}"
        ));
        self.drive(member)
    }

    /// Attaches watcher `w` to a running member, from the revision after the last it received.
    fn watch_resume(&mut self, w: usize) {
        if self.watchers[w].at.is_some() {
            return;
        }
        let up = self.up_members();
        if up.is_empty() {
            let d = self.rng.random_range(50..500);
            self.at(d, Event::WatchResume(w));
            return;
        }
        let member = up[self.rng.random_range(0..up.len())];
        let stream = (w as u64 + 1, self.next_stream);
        self.next_stream += 1;
        let room = self.rng.random_range(1..=4);
        let wt = &mut self.watchers[w];
        wt.inbox.borrow_mut().clear();
        let (key, range_end) = match &wt.key {
            Some(k) => (k.clone().into_bytes(), Vec::new()),
            None => (b"\0".to_vec(), b"\0".to_vec()),
        };
        let start_revision = if self.cfg.bugs.watch_resume_repeats && !wt.got.is_empty() {
            wt.next_rev - 1
        } else {
            wt.next_rev
        };
        let req = WatchCreateRequest {
            key: key.into(),
            range_end: range_end.into(),
            start_revision,
            ..Default::default()
        };
        let sink = SimSink {
            inbox: wt.inbox.clone(),
            room,
        };
        wt.at = Some((member, self.members[&member].incarnation, stream));
        wt.resumed = true;
        let m = self.members.get_mut(&member).expect("member");
        let store = m.apply.as_ref().expect("apply").store().clone();
        if let Some(hub) = m.hub.as_mut() {
            hub.create(stream, sink, &req, store.compact_revision());
        }
        self.log(format!(
            "watcher {w} attaches to m{member} from revision {start_revision}"
        ));
        let d = self.rng.random_range(1..30);
        self.at(d, Event::WatchDrain(w));
    }

    /// Watcher `w` reads what its stream holds, then its member catches it up (as the watch
    /// actor does every 20 ms).
    fn watch_drain(&mut self, w: usize) -> Result<(), String> {
        let Some((member, inc, _)) = self.watchers[w].at else {
            return Ok(());
        };
        if !self.members[&member].up || self.members[&member].incarnation != inc {
            return Ok(());
        }
        let take = self.rng.random_range(1..=4);
        for _ in 0..take {
            let Some(r) = self.watchers[w].inbox.borrow_mut().pop_front() else {
                break;
            };
            if r.canceled && r.compact_revision > 0 {
                // etcd's answer to a watch whose start was compacted: the client restarts at
                // the compaction point; the revisions in between are gone for it.
                let wt = &mut self.watchers[w];
                wt.gaps.push((wt.next_rev, r.compact_revision));
                wt.next_rev = r.compact_revision;
                wt.at = None;
                self.stats.watch_compacted += 1;
                let d = self.rng.random_range(1..50);
                self.at(d, Event::WatchResume(w));
                return Ok(());
            }
            if r.canceled {
                return Err(format!("watcher {w} canceled: {}", r.cancel_reason));
            }
            let wt = &mut self.watchers[w];
            for ev in &r.events {
                let Some(kv) = ev.kv.as_ref() else { continue };
                let rev = kv.mod_revision;
                if rev < wt.next_rev {
                    return Err(format!(
                        "watcher {w} got revision {rev} again (expected {} or later) from m{member}",
                        wt.next_rev
                    ));
                }
                wt.got.push((
                    rev,
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.value.to_vec(),
                ));
                wt.next_rev = rev + 1;
                self.stats.watch_events += 1;
            }
        }
        let m = self.members.get_mut(&member).expect("member");
        let store = m.apply.as_ref().expect("apply").store().clone();
        if let Some(hub) = m.hub.as_mut() {
            hub.catch_up(&store)
                .map_err(|e| format!("m{member} watch: {e}"))?;
        }
        let d = self.rng.random_range(1..30);
        self.at(d, Event::WatchDrain(w));
        Ok(())
    }

    /// Each watcher received exactly a prefix of the history of its keys from its start: every
    /// change, in order, once.
    fn check_watches(&self) -> Result<(), String> {
        for (i, w) in self.watchers.iter().enumerate() {
            let want: Vec<(i64, String, Vec<u8>)> = self
                .history_events
                .range(w.start..)
                .filter(|(rev, _)| !w.gaps.iter().any(|(a, b)| (*a..*b).contains(*rev)))
                .filter(|(_, (k, _))| w.key.as_ref().is_none_or(|wk| wk == k))
                .map(|(rev, (k, v))| (*rev, k.clone(), v.clone()))
                .collect();
            let n = w.got.len();
            if n > want.len() || w.got[..] != want[..n] {
                let at = w
                    .got
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(n.min(want.len()));
                return Err(format!(
                    "watcher {i} ({:?} from {}) differs from the history at its event {at}: got {:?}, history {:?}",
                    w.key,
                    w.start,
                    w.got.get(at),
                    want.get(at)
                ));
            }
        }
        Ok(())
    }

    fn check_end(&mut self) -> Result<Stats, String> {
        if let Some(v) = &self.lease_violation {
            return Err(v.clone());
        }
        self.history.check()?;
        self.check_watches()?;
        self.check_memberships()?;
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.trace.hash(&mut h);
        self.stats.events = self.trace.len();
        self.stats.trace_digest = h.finish();
        if self.cfg.print_trace {
            for l in &self.trace {
                eprintln!("{l}");
            }
        }
        Ok(self.stats.clone())
    }
}
