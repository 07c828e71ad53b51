//! The WAL actor: a thin shell over [`etch_storage::wal::Wal`] started on an arbiter (thread)
//! of its own, so `fdatasync` never blocks an async thread or another actor.
//!
//! Group commit: each [`AppendEntries`] carries everything one raft `Ready` produced (all
//! proposals that arrived while the previous fsync ran), and is made durable with one fsync.
//! A hard state that only moves the commit index comes as [`RecordHardState`]: written
//! without an fsync and without a reply.

use actix::prelude::*;
use raft::eraftpb::{Entry, HardState, SnapshotMetadata};

use etch_storage::wal::Wal;

/// The actor; owns the open WAL.
pub struct WalActor {
    wal: Wal,
    /// A [`RecordHardState`] write failed: nothing is written any more, and every later
    /// [`AppendEntries`] or [`ReleaseLog`] fails (the first with this error), which stops
    /// the member.
    failed: Option<Option<etch_storage::Error>>,
}

impl WalActor {
    /// Wraps an opened WAL.
    pub fn new(wal: Wal) -> WalActor {
        WalActor { wal, failed: None }
    }

    /// `Err` once a write without a reply failed: the first time with its error.
    fn check(&mut self) -> Result<(), etch_storage::Error> {
        match self.failed.as_mut() {
            None => Ok(()),
            Some(first) => Err(first.take().unwrap_or_else(|| etch_storage::Error::Io {
                path: self.wal.dir().to_owned(),
                source: std::io::Error::other("an earlier WAL write failed"),
            })),
        }
    }
}

impl Actor for WalActor {
    type Context = Context<Self>;
}

/// Sent by consensus for each raft `Ready` with entries, a snapshot or a new term or vote:
/// append, fsync, and reply with the Ready's number (raft-rs `on_persist_ready`). An `Err` is
/// fatal.
#[derive(Message)]
#[rtype(result = "Result<u64, etch_storage::Error>")]
pub struct AppendEntries {
    /// New log entries (may rewrite a suffix: raft log truncation).
    pub entries: Vec<Entry>,
    /// The hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// The raft-rs Ready number.
    pub number: u64,
    /// A snapshot installed from the leader: recorded first, and the segments it covers are
    /// released after the fsync.
    pub snapshot: Option<SnapshotMetadata>,
}

impl Handler<AppendEntries> for WalActor {
    type Result = Result<u64, etch_storage::Error>;

    fn handle(&mut self, m: AppendEntries, _: &mut Self::Context) -> Self::Result {
        crate::metrics::dequeued("wal");
        self.check()?;
        let start = std::time::Instant::now();
        if let Some(meta) = &m.snapshot {
            self.wal.append_install(meta)?;
        }
        self.wal.append(&m.entries, m.hard_state.as_ref())?;
        self.wal.sync()?;
        if let Some(meta) = &m.snapshot {
            self.wal.release_to(meta.index)?;
        }
        let took = start.elapsed();
        crate::metrics::hot().wal_fsync.record(took.as_secs_f64());
        if took > std::time::Duration::from_secs(1) {
            tracing::warn!(?took, entries = m.entries.len(), "slow WAL fsync");
        }
        Ok(m.number)
    }
}

/// Sent by consensus once the MVCC store is durable up to `meta.index`: record the release
/// point, fsync, delete segments it covers. Replies with the number of segments deleted.
#[derive(Message)]
#[rtype(result = "Result<usize, etch_storage::Error>")]
pub struct ReleaseLog {
    /// Index, term and conf state of the release point.
    pub meta: SnapshotMetadata,
}

impl Handler<ReleaseLog> for WalActor {
    type Result = Result<usize, etch_storage::Error>;

    fn handle(&mut self, m: ReleaseLog, _: &mut Self::Context) -> Self::Result {
        self.check()?;
        self.wal.append_snapshot(&m.meta)?;
        self.wal.sync()?;
        self.wal.release_to(m.meta.index)
    }
}

/// Sent by consensus for a raft `Ready` whose hard state only moved the commit index: append
/// it without an fsync (raft-rs's `Ready::must_sync`, etcd's `raft.MustSync`: the commit index
/// is learned again from the leader after a crash) and without a reply, so consensus neither
/// waits nor is woken. It reaches the OS as soon as the WAL actor takes it (beside apply, as
/// etcd's raft loop saves it beside its apply); the next fsync makes it durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordHardState(pub HardState);

impl Handler<RecordHardState> for WalActor {
    type Result = ();

    fn handle(&mut self, m: RecordHardState, _: &mut Self::Context) {
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = self.wal.append(&[], Some(&m.0)) {
            tracing::error!(error = %e, "WAL: recording the commit index failed");
            self.failed = Some(Some(e));
        }
    }
}
