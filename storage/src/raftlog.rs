//! The in-memory raft log that raft-rs reads through its [`raft::Storage`] trait.
//!
//! Durability comes from the WAL: the node writes every entry and hard state there first (or
//! concurrently, for the leader), and rebuilds a [`RaftLog`] from [`crate::wal::Recovered`] at
//! start. The log holds the entries after the last release point (`snapshot` index); raft-rs
//! asks for them to replicate and to hand out committed entries.
//!
//! Contract (raft-rs `Storage`): `first_index = snapshot.index + 1`, `last_index = first_index
//! + len - 1`; `term(snapshot.index)` is answered from the release point's metadata; indexes
//! below it are `Compacted`, above the last are `Unavailable`.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::wal::Recovered;

#[derive(Debug, Default)]
struct Inner {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last released entry (0, 0 for a fresh log).
    snapshot: SnapshotMetadata,
    /// Entries `snapshot.index + 1 ..`, contiguous.
    entries: Vec<Entry>,
    /// The applied index, for snapshots sent to followers.
    applied: u64,
}

/// The `data` of every raft snapshot etch produces: the state itself travels separately, as a
/// stream of the MVCC store (see `etch_storage::mvcc::snapshot`).
pub const SNAPSHOT_MARKER: &[u8] = b"etch-mvcc-stream-v1";

/// The raft log; clones share the same log.
#[derive(Debug, Clone, Default)]
pub struct RaftLog {
    inner: Arc<RwLock<Inner>>,
}

impl RaftLog {
    /// A log holding what the WAL recovered; `conf_state` is used when the WAL has no release
    /// point yet (a new member's initial voters).
    pub fn from_recovered(rec: &Recovered, conf_state: ConfState) -> RaftLog {
        let mut inner = Inner::default();
        match &rec.snapshot {
            Some(m) => {
                inner.snapshot = m.clone();
                inner.conf_state = m.get_conf_state().clone();
            }
            None => inner.conf_state = conf_state,
        }
        inner.entries = rec
            .entries
            .iter()
            .filter(|e| e.index > inner.snapshot.index)
            .cloned()
            .collect();
        if let Some(hs) = &rec.hard_state {
            inner.hard_state = hs.clone();
        }
        if inner.hard_state.commit < inner.snapshot.index {
            inner.hard_state.commit = inner.snapshot.index;
        }
        if inner.hard_state.term < inner.snapshot.term {
            inner.hard_state.term = inner.snapshot.term;
        }
        RaftLog {
            inner: Arc::new(RwLock::new(inner)),
        }
    }

    fn r(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn w(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `entries`, first dropping any existing entries at or after the first new index
    /// (raft log truncation). Entries at or below the release point are ignored.
    pub fn append(&self, entries: &[Entry]) {
        let mut g = self.w();
        let Some(first) = entries.iter().find(|e| e.index > g.snapshot.index) else {
            return;
        };
        let keep = (first.index - g.snapshot.index - 1) as usize;
        g.entries.truncate(keep);
        let from = entries.len() - entries.iter().filter(|e| e.index >= first.index).count();
        g.entries.extend_from_slice(&entries[from..]);
    }

    /// Records the latest hard state.
    pub fn set_hard_state(&self, hs: HardState) {
        self.w().hard_state = hs;
    }

    /// Records a new configuration (after applying a conf change).
    pub fn set_conf_state(&self, cs: ConfState) {
        self.w().conf_state = cs;
    }

    /// The current configuration.
    pub fn conf_state(&self) -> ConfState {
        self.r().conf_state.clone()
    }

    /// Releases entries up to and including `index` (which must be in the log or be the current
    /// release point). Returns the release point's metadata, with the current conf state, to
    /// record in the WAL; `None` if `index` is not in the log.
    pub fn compact_to(&self, index: u64) -> Option<SnapshotMetadata> {
        let mut g = self.w();
        if index <= g.snapshot.index {
            return None;
        }
        let pos = (index - g.snapshot.index - 1) as usize;
        let term = g.entries.get(pos)?.term;
        g.entries.drain(..=pos);
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(g.conf_state.clone());
        g.snapshot = meta.clone();
        Some(meta)
    }

    /// Index of the last entry (the release point's when empty).
    pub fn last_index(&self) -> u64 {
        let g = self.r();
        g.snapshot.index + g.entries.len() as u64
    }

    /// Index of the last released entry.
    pub fn release_index(&self) -> u64 {
        self.r().snapshot.index
    }

    /// Records the applied index (snapshots for followers are taken at it).
    pub fn set_applied(&self, index: u64) {
        let mut g = self.w();
        g.applied = g.applied.max(index);
    }

    /// Replaces the log by a snapshot received from the leader: every entry goes, the release
    /// point becomes `meta`, the commit index at least its index.
    pub fn apply_snapshot(&self, meta: &SnapshotMetadata) {
        let mut g = self.w();
        g.entries.clear();
        g.snapshot = meta.clone();
        g.conf_state = meta.get_conf_state().clone();
        g.hard_state.commit = g.hard_state.commit.max(meta.index);
        g.hard_state.term = g.hard_state.term.max(meta.term);
        g.applied = g.applied.max(meta.index);
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let g = self.r();
        Ok(RaftState::new(g.hard_state.clone(), g.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let g = self.r();
        let first = g.snapshot.index + 1;
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let last = g.snapshot.index + g.entries.len() as u64;
        if high > last + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - first) as usize;
        let hi = (high - first) as usize;
        let mut ents = g.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let g = self.r();
        if idx == g.snapshot.index {
            return Ok(g.snapshot.term);
        }
        if idx < g.snapshot.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let pos = (idx - g.snapshot.index - 1) as usize;
        g.entries
            .get(pos)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.r().snapshot.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index())
    }

    /// A snapshot at the applied index: metadata only, with [`SNAPSHOT_MARKER`] as data; the
    /// transport streams the store with it. The store may be ahead of this index when it is
    /// streamed: apply is idempotent by applied index, so the follower skips what it has.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let g = self.r();
        let index = g.applied.max(g.snapshot.index);
        let unavailable = raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        if index < request_index {
            return Err(unavailable);
        }
        let term = if index == g.snapshot.index {
            g.snapshot.term
        } else {
            let pos = (index - g.snapshot.index - 1) as usize;
            match g.entries.get(pos) {
                Some(e) => e.term,
                None => return Err(unavailable),
            }
        };
        let mut snap = Snapshot {
            data: SNAPSHOT_MARKER.to_vec().into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(g.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn append_truncates_and_compact_keeps_term() {
        let log = RaftLog::default();
        log.append(&[e(1, 1), e(2, 1), e(3, 1)]);
        log.append(&[e(3, 2), e(4, 2)]);
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.term(3).unwrap(), 2);
        let meta = log.compact_to(2).unwrap();
        assert_eq!((meta.index, meta.term), (2, 1));
        assert_eq!(log.first_index().unwrap(), 3);
        assert_eq!(log.term(2).unwrap(), 1);
        assert!(log.term(1).is_err());
        assert!(
            log.entries(2, 4, None, GetEntriesContext::empty(false))
                .is_err()
        );
        assert_eq!(
            log.entries(3, 5, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            2
        );
        assert!(log.compact_to(9).is_none());
    }
}
