//! Compaction in two steps, as etcd v3.5 does it (`mvcc/kvstore.go` `Compact` records the
//! scheduled revision, `scheduleCompaction` deletes in the background):
//!
//! 1. **At apply**, a `Compaction` request only records the new compaction point in `meta`
//!    (`compact_revision`), in the same fjall batch as the applied index, so reads below it fail
//!    at once with "required revision has been compacted". Apply never waits for the deletion.
//! 2. **In the background**, one thread per store (`etch-compact`) deletes the history below the
//!    point: for every key, every revision below the point except the newest at or below it, and
//!    that one too when it is a tombstone. Deletions are written in batches of
//!    [`PURGE_BATCH`] entries; when all are written, `meta` records `purged_revision`.
//!
//! A restart (or a snapshot installed from the leader) whose `purged_revision` is below its
//! `compact_revision` resumes the deletion. Everything that must not depend on how far a
//! deletion got ignores what lies below the compaction point except the kept revisions: reads
//! (they refuse revisions below it) and [`MvccStore::hash_kv`] (it hashes exactly the kept
//! entries), so two members that applied the same log hash alike whatever their progress.
//! That holds between deletion batches, where each key has lost only its oldest entries;
//! within one, a reader could see a key's old revision, then miss its tombstone and find that
//! revision's value gone. So reads and apply read through a fjall snapshot ([`super::View`]):
//! a batch is in it whole or not at all.
//!
//! `CompactionRequest.physical = true` (etcdctl `compact --physical`) is answered once the
//! deletion is written: callers wait with [`MvccStore::wait_purged`].

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::keys::{IndexValue, Revision, kv_key, split_index_key};
use super::{Db, META_COMPACT_REV};
use crate::error::{Error, Result};

/// `meta` key: the compaction point whose deletion is fully written (8 bytes, big endian).
pub(super) const META_PURGED_REV: &str = "purged_revision";

/// Deletions per fjall batch while purging (each removes one `kv` and one `key_index` entry).
pub(super) const PURGE_BATCH: usize = 10_000;

/// Where the background deletion stands.
#[derive(Debug, Default)]
struct Progress {
    /// The highest compaction point whose deletion is written.
    purged: i64,
    /// The last deletion that failed, with its revision: a waiter for it gets the error.
    failed: Option<(i64, String)>,
}

/// The background deleter of one store: a thread fed with (database, revision) jobs.
pub(super) struct Purger {
    jobs: Mutex<mpsc::Sender<(Arc<Db>, i64)>>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
}

impl Purger {
    /// Starts the thread; `purged` is the database's recorded `purged_revision`.
    pub(super) fn start(purged: i64) -> Result<Purger> {
        let (tx, rx) = mpsc::channel::<(Arc<Db>, i64)>();
        let progress = Arc::new((
            Mutex::new(Progress {
                purged,
                failed: None,
            }),
            Condvar::new(),
        ));
        let p = progress.clone();
        std::thread::Builder::new()
            .name("etch-compact".into())
            .spawn(move || {
                // Ends when the store (the only sender) is dropped.
                while let Ok((db, rev)) = rx.recv() {
                    let started = std::time::Instant::now();
                    let outcome = purge(&db, rev);
                    // Released before waiters wake: one that then drops the store closes the
                    // database (and fjall's lock on its directory), so it can be opened again.
                    drop(db);
                    let (lock, cv) = &*p;
                    let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
                    match outcome {
                        Ok(removed) => {
                            tracing::info!(
                                revision = rev,
                                removed,
                                took = ?started.elapsed(),
                                "finished scheduled compaction"
                            );
                            g.purged = g.purged.max(rev);
                        }
                        Err(e) => {
                            tracing::error!(revision = rev, error = %e, "compaction failed");
                            g.failed = Some((rev, e.to_string()));
                        }
                    }
                    cv.notify_all();
                }
            })
            .map_err(|e| Error::CorruptStore(format!("cannot start the compaction thread: {e}")))?;
        Ok(Purger {
            jobs: Mutex::new(tx),
            progress,
        })
    }

    /// Queues the deletion of `db`'s history below `rev`.
    pub(super) fn schedule(&self, db: Arc<Db>, rev: i64) {
        let tx = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if tx.send((db, rev)).is_err() {
            tracing::error!(revision = rev, "the compaction thread is gone");
        }
    }

    /// After a snapshot install: the new database's recorded progress replaces the old one.
    pub(super) fn reset(&self, purged: i64) {
        let (lock, cv) = &*self.progress;
        let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
        *g = Progress {
            purged,
            failed: None,
        };
        cv.notify_all();
    }

    /// Blocks until the deletion for `rev` is written, it failed, or `timeout` passed.
    ///
    /// # Errors
    /// [`Error::CorruptStore`] naming the failure or the timeout.
    pub(super) fn wait(&self, rev: i64, timeout: Duration) -> Result<()> {
        let (lock, cv) = &*self.progress;
        let g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = cv
            .wait_timeout_while(g, timeout, |p| {
                p.purged < rev && p.failed.as_ref().is_none_or(|(r, _)| *r < rev)
            })
            .unwrap_or_else(|e| e.into_inner());
        if g.purged >= rev {
            return Ok(());
        }
        match &g.failed {
            Some((r, e)) if *r >= rev => Err(Error::CorruptStore(format!(
                "compaction to revision {r} failed: {e}"
            ))),
            _ => Err(Error::CorruptStore(format!(
                "compaction to revision {rev} still running after {timeout:?}"
            ))),
        }
    }
}

/// Deletes `db`'s history below `rev` (etcd `scheduleCompaction`) and records `rev` as purged.
/// Returns the number of revisions removed. Concurrent writes only add revisions above `rev`,
/// which this never touches; a key's entries are removed oldest first, so a reader at `rev` or
/// above sees the same result at every step.
fn purge(d: &Db, rev: i64) -> Result<usize> {
    let remove = |batch: &mut fjall::OwnedWriteBatch, prefix: &[u8], r: Revision, t: bool| {
        batch.remove(&d.index, [prefix, &r.to_bytes()].concat());
        batch.remove(&d.kv, kv_key(r, t));
    };
    let mut batch = d.db.batch();
    let mut pending = 0usize;
    let mut removed = 0usize;
    // (prefix, revision, tombstone) of the newest entry <= rev in the current key.
    let mut group: Option<(Vec<u8>, Revision, bool)> = None;
    for g in d.index.iter() {
        let (k, v) = g.into_inner()?;
        let (prefix, r) =
            split_index_key(&k).ok_or_else(|| Error::CorruptStore("short index key".into()))?;
        let iv =
            IndexValue::decode(&v).ok_or_else(|| Error::CorruptStore("bad index value".into()))?;
        if r.main > rev {
            continue;
        }
        match &group {
            // An older entry of the same key, superseded by `r` at or below `rev`.
            Some((p, prev, prev_tomb)) if p.as_slice() == prefix => {
                remove(&mut batch, p, *prev, *prev_tomb);
                pending += 1;
            }
            // The previous key ended on a tombstone at or below `rev`: nothing to keep.
            Some((p, prev, true)) => {
                remove(&mut batch, p, *prev, true);
                pending += 1;
            }
            _ => {}
        }
        if pending >= PURGE_BATCH {
            std::mem::replace(&mut batch, d.db.batch()).commit()?;
            removed += pending;
            pending = 0;
        }
        group = Some((prefix.to_vec(), r, iv.tombstone));
    }
    if let Some((p, prev, true)) = group {
        remove(&mut batch, &p, prev, true);
        pending += 1;
    }
    batch.insert(&d.meta, META_PURGED_REV, rev.to_be_bytes().to_vec());
    batch.commit()?;
    Ok(removed + pending)
}

/// Reads `META_COMPACT_REV` and `META_PURGED_REV` of `d` (0 when absent).
pub(super) fn points(d: &Db) -> Result<(i64, i64)> {
    Ok((
        d.read_i64(META_COMPACT_REV)?.unwrap_or(0),
        d.read_i64(META_PURGED_REV)?.unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{MvccStore, View, read};
    use bytes::Bytes;
    use etch_protocol::etcdserverpb::{DeleteRangeRequest, PutRequest};
    use etch_protocol::etchpb::internal_request::Request;

    /// Reads go through a snapshot (`View`): one taken before a deletion batch still reads
    /// the deleted revisions and their values, so a read racing the background deletion never
    /// sees a key's old revision without its tombstone, nor an indexed revision without its
    /// value. (Reading the keyspaces directly did: "missing kv" under load.)
    #[test]
    fn a_view_taken_before_a_deletion_reads_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let s = MvccStore::open(dir.path()).unwrap();
        let put = |k: &'static [u8], v: &'static [u8]| {
            Request::Put(PutRequest {
                key: Bytes::from_static(k),
                value: Bytes::from_static(v),
                ..Default::default()
            })
        };
        let del = Request::DeleteRange(DeleteRangeRequest {
            key: Bytes::from_static(b"b"),
            ..Default::default()
        });
        for (i, r) in [put(b"a", b"1"), put(b"a", b"2"), put(b"b", b"1"), del]
            .iter()
            .enumerate()
        {
            s.apply(i as u64 + 1, 1, None, Some(r)).unwrap().unwrap();
        }
        let d = s.db();
        let before = d.db.snapshot();
        // Deletes a@2, b@4 and b's tombstone @5, values included.
        assert_eq!(purge(&d, 5).unwrap(), 3);
        let live_at = |snap: &fjall::Snapshot, rev: i64| -> Vec<(Bytes, Bytes)> {
            let v = View { d: &d, snap };
            let (hits, _) = read::collect(&s, &v, b"\0", b"\0", rev, None, usize::MAX).unwrap();
            hits.iter()
                .map(|h| (h.key.clone(), h.full_kv(&s, &v).unwrap().value))
                .collect()
        };
        let kv =
            |k: &'static [u8], v: &'static [u8]| (Bytes::from_static(k), Bytes::from_static(v));
        // The old view still holds b@4 and its value, and its tombstone.
        assert_eq!(live_at(&before, 4), [kv(b"a", b"2"), kv(b"b", b"1")]);
        assert_eq!(live_at(&before, 5), [kv(b"a", b"2")]);
        // A new view has neither.
        let after = d.db.snapshot();
        assert_eq!(live_at(&after, 5), [kv(b"a", b"2")]);
        assert!(
            d.kv.get(kv_key(Revision::new(4, 0), false))
                .unwrap()
                .is_none()
        );
    }
}
