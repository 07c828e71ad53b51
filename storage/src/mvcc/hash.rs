//! Consistency hashes of the store (etcd's Maintenance `Hash` and `HashKV`), computed from one
//! fjall snapshot so a concurrent apply or compaction never mixes two states into one hash.
//!
//! Members that applied the same log hold byte-identical keyspaces, so equal hashes at the same
//! `(hash_revision, compact_revision)` mean equal histories (etcd's corruption check compares
//! exactly these). The values differ from etcd's own (which hashes bbolt's key encoding).

use fjall::Readable;

use super::{META_COMPACT_REV, META_CURRENT_REV, MvccStore, RequestError, Revision};
use crate::error::{Error, Result};

/// The answer to `HashKV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32 (IEEE) of every `kv` entry (revision key, then encoded `KeyValue`) with main
    /// revision <= `hash_revision`, in revision order.
    pub hash: u32,
    /// The compaction point when the hash was taken (0 = never compacted).
    pub compact_revision: i64,
    /// The revision the hash covers up to (the request's, or the current one for 0).
    pub hash_revision: i64,
}

impl MvccStore {
    /// The hash of the MVCC history up to `revision` (0 = the current revision): etcd's
    /// `HashKV`.
    ///
    /// # Errors
    /// Outer: store errors. Inner: [`RequestError::Compacted`] when `revision` is at or below
    /// the compaction point, [`RequestError::FutureRevision`] above the current revision.
    pub fn hash_kv(&self, revision: i64) -> Result<std::result::Result<KvHash, RequestError>> {
        let d = self.db();
        let snap = d.db.snapshot();
        let meta = |k: &str| -> Result<i64> {
            match snap.get(&d.meta, k)? {
                None => Ok(0),
                Some(v) => Ok(i64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    Error::CorruptStore(format!("meta {k}: {} bytes", v.len()))
                })?)),
            }
        };
        let current = meta(META_CURRENT_REV)?.max(1);
        let compacted = meta(META_COMPACT_REV)?;
        let rev = if revision <= 0 { current } else { revision };
        if rev > current {
            return Ok(Err(RequestError::FutureRevision));
        }
        if revision > 0 && rev <= compacted {
            return Ok(Err(RequestError::Compacted));
        }
        let hi = Revision::new(rev.saturating_add(1), 0).to_bytes();
        let mut h = crc32fast::Hasher::new();
        h.update(b"key");
        for g in snap.range(&d.kv, ..hi.as_slice()) {
            let (k, v) = g.into_inner()?;
            h.update(&k);
            h.update(&v);
        }
        Ok(Ok(KvHash {
            hash: h.finalize(),
            compact_revision: compacted,
            hash_revision: rev,
        }))
    }

    /// The hash of every replicated keyspace (`kv`, `key_index`, `lease`, `lease_keys`) as
    /// they are now: etcd's `Hash` (a testing aid; use [`MvccStore::hash_kv`] to compare
    /// members that may be at different revisions).
    ///
    /// # Errors
    /// Store errors.
    pub fn hash_all(&self) -> Result<u32> {
        let d = self.db();
        let snap = d.db.snapshot();
        let mut h = crc32fast::Hasher::new();
        for (name, ks) in [
            ("kv", &d.kv),
            ("key_index", &d.index),
            ("lease", &d.lease),
            ("lease_keys", &d.lease_keys),
        ] {
            h.update(name.as_bytes());
            for g in snap.iter(ks) {
                let (k, v) = g.into_inner()?;
                h.update(&k);
                h.update(&v);
            }
        }
        Ok(h.finalize())
    }
}
