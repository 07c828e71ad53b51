//! The WAL actor: a thin shell over [`etch_storage::wal::Wal`] started on an arbiter (thread)
//! of its own, so `fdatasync` never blocks an async thread or another actor.
//!
//! Group commit: each [`AppendEntries`] carries everything one raft `Ready` produced (all
//! proposals that arrived while the previous fsync ran), and is made durable with one fsync.
//! A Ready that only moves the commit index is written without an fsync ([`must_sync`]).

use actix::prelude::*;
use raft::eraftpb::{Entry, HardState, SnapshotMetadata};

use etch_storage::wal::Wal;

/// The actor; owns the open WAL.
pub struct WalActor {
    wal: Wal,
    /// The last hard state appended (none yet since the start).
    hard_state: Option<HardState>,
}

impl WalActor {
    /// Wraps an opened WAL.
    pub fn new(wal: Wal) -> WalActor {
        WalActor {
            wal,
            hard_state: None,
        }
    }
}

/// Whether an append must be fsynced before raft-rs is told it is persisted: when it carries
/// entries or a snapshot, or a hard state whose term or vote differs from the last one
/// appended (`prev`; none yet: always). A hard state that only moves the commit index needs
/// no fsync: the commit index is recovered from the leader (and the store's applied index)
/// after a crash, as in etcd (`raft.MustSync`, etcd v3.5 `raft/node.go`, used by
/// `server/wal/wal.go` `Save`). The record still reaches the OS at once and is made durable by
/// the next fsync (a segment is fsynced before the next one starts).
pub fn must_sync(prev: Option<&HardState>, m: &AppendEntries) -> bool {
    if !m.entries.is_empty() || m.snapshot.is_some() {
        return true;
    }
    match (prev, &m.hard_state) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(p), Some(h)) => p.term != h.term || p.vote != h.vote,
    }
}

impl Actor for WalActor {
    type Context = Context<Self>;
}

/// Sent by consensus for each raft `Ready` with entries or a hard state: append, fsync (when
/// [`must_sync`]), and reply with the Ready's number (raft-rs `on_persist_ready`). An `Err`
/// is fatal.
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
        let start = std::time::Instant::now();
        if let Some(meta) = &m.snapshot {
            self.wal.append_install(meta)?;
        }
        self.wal.append(&m.entries, m.hard_state.as_ref())?;
        let sync = must_sync(self.hard_state.as_ref(), &m);
        if sync {
            self.wal.sync()?;
        }
        if let Some(hs) = &m.hard_state {
            self.hard_state = Some(hs.clone());
        }
        if let Some(meta) = &m.snapshot {
            self.wal.release_to(meta.index)?;
        }
        // As etcd's wal_fsync_duration_seconds: only writes that were fsynced.
        if sync {
            let took = start.elapsed();
            crate::metrics::hot().wal_fsync.record(took.as_secs_f64());
            if took > std::time::Duration::from_secs(1) {
                tracing::warn!(?took, entries = m.entries.len(), "slow WAL fsync");
            }
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
        self.wal.append_snapshot(&m.meta)?;
        self.wal.sync()?;
        self.wal.release_to(m.meta.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    fn append(entries: usize, hard_state: Option<HardState>) -> AppendEntries {
        AppendEntries {
            entries: vec![Entry::default(); entries],
            hard_state,
            number: 1,
            snapshot: None,
        }
    }

    #[test]
    fn only_a_commit_index_change_skips_the_fsync() {
        let prev = hs(3, 1, 10);
        // Commit moved, term and vote unchanged: no fsync (etcd's MustSync).
        assert!(!must_sync(Some(&prev), &append(0, Some(hs(3, 1, 11)))));
        // Entries, a new term, a new vote, or no known previous state: fsync.
        assert!(must_sync(Some(&prev), &append(1, Some(hs(3, 1, 11)))));
        assert!(must_sync(Some(&prev), &append(1, None)));
        assert!(must_sync(Some(&prev), &append(0, Some(hs(4, 1, 10)))));
        assert!(must_sync(Some(&prev), &append(0, Some(hs(3, 2, 10)))));
        assert!(must_sync(None, &append(0, Some(hs(3, 1, 11)))));
        // A snapshot install: fsync.
        let mut m = append(0, None);
        m.snapshot = Some(SnapshotMetadata::default());
        assert!(must_sync(Some(&prev), &m));
        // Nothing to persist: nothing to sync.
        assert!(!must_sync(Some(&prev), &append(0, None)));
    }
}
