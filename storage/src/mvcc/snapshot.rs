//! Whole-store snapshots: how a member that fell behind the leader's released log gets the
//! state machine (the fjall database) instead of log entries.
//!
//! # Stream format
//! [`MvccStore::export`] produces chunks (each at most [`CHUNK_BYTES`] plus one record); a
//! chunk is a sequence of records:
//! ```text
//! keyspace  u8        0 = kv, 1 = key_index, 2 = meta, 3 = lease, 4 = lease_keys, 5 = auth
//! key_len   u32 BE    then key_len bytes of key
//! val_len   u32 BE    then val_len bytes of value
//! ```
//! Example: the meta entry `current_revision -> 00..05` is
//! `02 | 00 00 00 10 | "current_revision" | 00 00 00 08 | 00 00 00 00 00 00 00 05`.
//! Everything is read from one fjall snapshot, so it is consistent: its `applied_index`
//! names the last raft entry it contains. The member identity is not exported.
//!
//! # Install
//! [`MvccStore::begin_ingest`] writes chunks into a fresh database directory `db-<n>`;
//! [`MvccStore::install`] makes it durable, then atomically points `db.current` at it (write a
//! temporary file, fsync, rename, fsync the directory) and swaps it in. A crash before the
//! rename leaves the old database in use and the new directory is removed at the next open.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fjall::{PersistMode, Readable};

use super::keys::FJALL_MAX_KEY_BYTES;
use super::{Db, META_APPLIED, META_CURRENT_REV, META_IDENTITY, MvccStore};
use crate::error::{Error, Result};

/// Target size of one exported chunk: 1 MiB.
pub const CHUNK_BYTES: usize = 1024 * 1024;

const POINTER: &str = "db.current";
const DEFAULT_DIR: &str = "db";

/// The database directory name `db.current` names (`db` without the file).
pub(crate) fn current_dir_name(root: &Path) -> Result<String> {
    let p = root.join(POINTER);
    match std::fs::read_to_string(&p) {
        Ok(s) => {
            let name = s.trim().to_owned();
            if name.is_empty() || name.contains('/') {
                return Err(Error::CorruptStore(format!(
                    "{} names {name:?}",
                    p.display()
                )));
            }
            Ok(name)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DEFAULT_DIR.to_owned()),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// Removes database directories other than `current` (left by an interrupted or superseded
/// install). Failures are logged: they cost disk space, not correctness.
pub(crate) fn remove_stale_dirs(root: &Path, current: &str) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let is_db = name == DEFAULT_DIR || (name.starts_with("db-") && !name.contains('.'));
        if is_db
            && name != current
            && let Err(err) = std::fs::remove_dir_all(e.path())
        {
            tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove an old database");
        }
    }
}

fn keyspace_of(d: &Db, id: u8) -> Option<&fjall::Keyspace> {
    Some(match id {
        0 => &d.kv,
        1 => &d.index,
        2 => &d.meta,
        3 => &d.lease,
        4 => &d.lease_keys,
        5 => &d.auth,
        _ => return None,
    })
}

pub(super) fn push_record(chunk: &mut Vec<u8>, ks: u8, k: &[u8], v: &[u8]) {
    chunk.push(ks);
    chunk.extend_from_slice(&(k.len() as u32).to_be_bytes());
    chunk.extend_from_slice(k);
    chunk.extend_from_slice(&(v.len() as u32).to_be_bytes());
    chunk.extend_from_slice(v);
}

/// A database being filled from snapshot chunks.
pub struct Ingest {
    db: Db,
    pending: usize,
    batch: Option<fjall::OwnedWriteBatch>,
}

impl Ingest {
    /// Writes one chunk's records.
    ///
    /// # Errors
    /// [`Error::CorruptStore`] for a malformed chunk (the sender's bytes are checked, never
    /// trusted), [`Error::Fjall`].
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<()> {
        let bad = |why: &str| Error::CorruptStore(format!("snapshot chunk: {why}"));
        let mut rest = chunk;
        let mut take = |n: usize| -> Result<&[u8]> {
            if rest.len() < n {
                return Err(bad("truncated record"));
            }
            let (a, b) = rest.split_at(n);
            rest = b;
            Ok(a)
        };
        let mut batch = self.batch.take().unwrap_or_else(|| self.db.db.batch());
        while let Ok(ks) = take(1) {
            let ks = ks[0];
            let klen = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("length"))?) as usize;
            // fjall panics on an empty or over-long key: refuse them as malformed.
            if klen == 0 || klen > FJALL_MAX_KEY_BYTES {
                return Err(bad("key length"));
            }
            let k = take(klen)?.to_vec();
            let vlen = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("length"))?) as usize;
            let v = take(vlen)?.to_vec();
            let target = keyspace_of(&self.db, ks).ok_or_else(|| bad("unknown keyspace"))?;
            batch.insert(target, k, v);
            self.pending += 1;
        }
        if self.pending >= 10_000 {
            batch.commit()?;
            self.pending = 0;
        } else {
            self.batch = Some(batch);
        }
        Ok(())
    }

    /// The directory being filled.
    pub fn dir(&self) -> &Path {
        &self.db.dir
    }

    /// Gives up: closes and deletes the partial database.
    pub fn abandon(self) {
        let dir = self.db.dir.clone();
        drop(self);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an abandoned snapshot");
        }
    }
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").field("dir", &self.db.dir).finish()
    }
}

impl MvccStore {
    /// The fault file's verdict before one more chunk of an export is handed on
    /// (`crate::faults::Point::SnapshotRead`).
    fn check_snapshot_read(&self) -> Result<()> {
        crate::faults::check(crate::faults::Point::SnapshotRead)
            .map_err(|e| Error::io(&self.root, e))
    }

    /// Exports the whole store from one consistent fjall snapshot, calling `out` with each
    /// chunk in order; stops at the first error `out` returns. Returns the applied index the
    /// export contains.
    ///
    /// # Errors
    /// Store errors, and [`Error::Io`] when a disk fault is injected at `snapshot-read`
    /// (`crate::faults`, tests only); `out`'s error as [`Error::CorruptStore`]-free
    /// passthrough is the caller's.
    pub fn export(&self, mut out: impl FnMut(Vec<u8>) -> bool) -> Result<u64> {
        let d = self.db();
        let snap = d.db.snapshot();
        let mut chunk = Vec::with_capacity(CHUNK_BYTES + 1024);
        let mut applied = 0;
        for (id, ks) in [
            (0u8, &d.kv),
            (1, &d.index),
            (2, &d.meta),
            (3, &d.lease),
            (4, &d.lease_keys),
            (5, &d.auth),
        ] {
            for g in snap.iter(ks) {
                let (k, v) = g.into_inner()?;
                if id == 2 && k.as_ref() == META_IDENTITY.as_bytes() {
                    continue;
                }
                if id == 2 && k.as_ref() == META_APPLIED.as_bytes() && v.len() == 16 {
                    applied = u64::from_be_bytes(v[..8].try_into().unwrap_or_default());
                }
                push_record(&mut chunk, id, &k, &v);
                if chunk.len() >= CHUNK_BYTES {
                    self.check_snapshot_read()?;
                    if !out(std::mem::take(&mut chunk)) {
                        return Ok(applied);
                    }
                }
            }
        }
        if !chunk.is_empty() {
            self.check_snapshot_read()?;
            out(chunk);
        }
        Ok(applied)
    }

    /// Starts filling a fresh database directory from snapshot chunks.
    ///
    /// # Errors
    /// [`Error::Fjall`], [`Error::Io`].
    pub fn begin_ingest(&self) -> Result<Ingest> {
        let current = self.db().dir.clone();
        let mut n = 1u64;
        let dir = loop {
            let candidate = self.root.join(format!("db-{n:016x}"));
            if candidate != current && !candidate.exists() {
                break candidate;
            }
            n += 1;
        };
        Ok(Ingest {
            db: Db::open(&dir)?,
            pending: 0,
            batch: None,
        })
    }

    /// Makes the ingested database durable and the one in use (atomically), keeping this
    /// member's identity. Returns its applied index.
    ///
    /// # Errors
    /// [`Error::Fjall`], [`Error::Io`], [`Error::CorruptStore`] for undecodable metadata.
    pub fn install(&self, mut ingest: Ingest) -> Result<u64> {
        if let Some(b) = ingest.batch.take() {
            b.commit()?;
        }
        let mut new = ingest.db;
        // The chunks went into the key index directly, not through the write path.
        new.newest = super::Newest::start(&new.index);
        if let Some((m, c)) = self.identity()? {
            let mut v = m.to_be_bytes().to_vec();
            v.extend_from_slice(&c.to_be_bytes());
            new.meta.insert(META_IDENTITY, v)?;
        }
        new.db.persist(PersistMode::SyncAll)?;
        let name = new
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .ok_or_else(|| Error::CorruptStore("database directory has no name".into()))?;
        let tmp = self.root.join(format!("{POINTER}.tmp"));
        std::fs::write(&tmp, name.as_bytes())
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        let ptr = self.root.join(POINTER);
        std::fs::rename(&tmp, &ptr).map_err(|e| Error::io(&ptr, e))?;
        std::fs::File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(&self.root, e))?;
        let current = new.read_i64(META_CURRENT_REV)?.unwrap_or(1);
        let (compacted, purged) = super::compaction::points(&new)?;
        let applied = new.applied()?;
        let keys = new.key_count()?;
        let auth = crate::auth::AuthState::load(&new.auth)?;
        let alarms = super::alarm::load(&new.meta)?;
        let new = Arc::new(new);
        let old = {
            let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *g, new.clone())
        };
        self.purger.reset(purged);
        if compacted > purged {
            self.purger.schedule(new, compacted);
        }
        self.current.store(current, Ordering::Release);
        self.compacted.store(compacted, Ordering::Release);
        self.set_applied(applied);
        self.keys.store(keys, Ordering::Release);
        self.set_auth(auth);
        self.set_alarms(alarms);
        self.forget_quota_size();
        retire(old);
        Ok(applied.index)
    }
}

/// Drops the old database once no reader holds it, then deletes its directory.
fn retire(old: Arc<Db>) {
    let spawned = std::thread::Builder::new()
        .name("etch-retire-db".into())
        .spawn(move || {
            let mut old = old;
            for _ in 0..600 {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        let dir: PathBuf = db.dir.clone();
                        drop(db);
                        if let Err(e) = std::fs::remove_dir_all(&dir) {
                            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the replaced database");
                        }
                        return;
                    }
                    Err(still) => {
                        old = still;
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
            }
            tracing::warn!("replaced database still in use after 60 s; removed at next start");
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the database retirement thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use etch_protocol::etcdserverpb::{PutRequest, RangeRequest};
    use etch_protocol::etchpb::internal_request::Request;

    fn put(s: &MvccStore, index: u64, k: &str) {
        let p = PutRequest {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        };
        s.apply(index, 1, None, Some(&Request::Put(p))).unwrap();
    }

    #[test]
    fn export_then_install_replaces_the_state() {
        let a_dir = tempfile::tempdir().unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let a = MvccStore::open(a_dir.path()).unwrap();
        a.set_identity(1, 9).unwrap();
        for i in 0..500 {
            put(&a, i + 1, &format!("k{i:04}"));
        }
        let b = MvccStore::open(b_dir.path()).unwrap();
        b.set_identity(2, 9).unwrap();
        put(&b, 1, "only-on-b");
        let mut ingest = b.begin_ingest().unwrap();
        let applied = a.export(|c| ingest.write_chunk(&c).is_ok()).unwrap();
        assert_eq!(applied, 500);
        assert_eq!(b.install(ingest).unwrap(), 500);
        assert_eq!(b.current_revision(), 501);
        assert_eq!(b.identity().unwrap(), Some((2, 9)));
        let all = RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            count_only: true,
            ..Default::default()
        };
        assert_eq!(b.range(&all).unwrap().unwrap().count, 500);
        // A write after the install knows the installed keys (their newest revisions came
        // with the snapshot, not through the write path).
        let one = RangeRequest {
            key: Bytes::from_static(b"k0007"),
            ..Default::default()
        };
        let before = b.range(&one).unwrap().unwrap().kvs[0].clone();
        put(&b, 501, "k0007");
        let after = b.range(&one).unwrap().unwrap().kvs[0].clone();
        assert_eq!(
            (after.create_revision, after.version, after.mod_revision),
            (before.create_revision, 2, 502)
        );
        assert_eq!(b.range(&all).unwrap().unwrap().count, 500);
        // Reopening finds the installed database through db.current.
        drop(b);
        let b = MvccStore::open(b_dir.path()).unwrap();
        assert_eq!(b.range(&all).unwrap().unwrap().count, 500);
        assert_eq!(b.applied_index().index, 501);
    }

    #[test]
    fn malformed_chunks_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let s = MvccStore::open(d.path()).unwrap();
        let mut ingest = s.begin_ingest().unwrap();
        assert!(
            ingest
                .write_chunk(&[9, 0, 0, 0, 1, b'k', 0, 0, 0, 0])
                .is_err()
        );
        assert!(ingest.write_chunk(&[0, 0, 0, 0, 5, b'k']).is_err());
    }
}
