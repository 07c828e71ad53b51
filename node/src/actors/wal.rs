//! The WAL actor: a thin shell over [`etch_storage::wal::Wal`], started on the consensus
//! actor's arbiter (thread), as etcd's raft loop saves its WAL itself: a Ready's write and
//! `fdatasync` need no hand-off between threads, and block neither a tokio worker nor apply.
//! While one runs, consensus and the peer transport on the same thread wait (ticks, peer
//! packets and proposals queue); a leader's appends leave first ([`AppendEntries`]).
//!
//! Group commit: each [`AppendEntries`] carries everything one raft `Ready` produced (all
//! proposals that arrived while the previous fsync ran), and is made durable with one fsync.
//! A Ready that only moves the commit index never comes here: its hard state rides with the
//! next write (`crate::core::consensus::ConsensusCore`).

use actix::prelude::*;
use raft::eraftpb::{Entry, HardState, SnapshotMetadata};

use etch_storage::wal::Wal;

/// The actor; owns the open WAL.
pub struct WalActor {
    wal: Wal,
    /// A write, fsync or release failed: every later message is refused without touching the
    /// files (a later fsync could report success for pages the kernel dropped after the failed
    /// one), even those queued before consensus saw the failure (the write at stop, a release).
    failed: bool,
}

impl WalActor {
    /// Wraps an opened WAL.
    pub fn new(wal: Wal) -> WalActor {
        WalActor { wal, failed: false }
    }

    /// `Err` once an earlier message failed.
    fn check(&self) -> Result<(), etch_storage::Error> {
        if self.failed {
            return Err(etch_storage::Error::Io {
                path: self.wal.dir().to_owned(),
                source: std::io::Error::other("an earlier WAL write failed"),
            });
        }
        Ok(())
    }
}

impl Actor for WalActor {
    type Context = Context<Self>;
}

/// Sent by consensus for each raft `Ready` with entries, a snapshot or a new term or vote,
/// and at stop with the last commit-only hard state (`number` 0): append, fsync, and reply
/// with the Ready's number (raft-rs `on_persist_ready`). An `Err` is fatal.
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
    type Result = AtomicResponse<Self, Result<u64, etch_storage::Error>>;

    /// Writes after one yield to the thread's other tasks: consensus hands the transport a
    /// leader's appends just before this message, and quinn's tasks on this thread send them
    /// only once they run. Without the yield they would wait for the fsync, and the followers'
    /// fsyncs would start after the leader's instead of beside it (Raft thesis 10.2.1). The
    /// atomic response keeps later messages (a release) behind this write.
    fn handle(&mut self, m: AppendEntries, _: &mut Self::Context) -> Self::Result {
        crate::metrics::dequeued("wal");
        AtomicResponse::new(Box::pin(
            tokio::task::yield_now()
                .into_actor(self)
                .map(move |(), act, _| act.append(m)),
        ))
    }
}

impl WalActor {
    /// Appends, fsyncs, then releases what an installed snapshot covers.
    fn append(&mut self, m: AppendEntries) -> Result<u64, etch_storage::Error> {
        self.check()?;
        let start = std::time::Instant::now();
        let wal = &mut self.wal;
        let written = (|| -> Result<(), etch_storage::Error> {
            if let Some(meta) = &m.snapshot {
                wal.append_install(meta)?;
            }
            wal.append(&m.entries, m.hard_state.as_ref())?;
            wal.sync()?;
            if let Some(meta) = &m.snapshot {
                wal.release_to(meta.index)?;
            }
            Ok(())
        })();
        self.failed = written.is_err();
        written?;
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
        let wal = &mut self.wal;
        let released = wal
            .append_snapshot(&m.meta)
            .and_then(|()| wal.sync())
            .and_then(|()| wal.release_to(m.meta.index));
        self.failed = released.is_err();
        released
    }
}
