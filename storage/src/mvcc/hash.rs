//! Consistency hashes of the store (etcd's Maintenance `Hash` and `HashKV`), computed from one
//! fjall snapshot so a concurrent apply or compaction never mixes two states into one hash.
//!
//! Members that applied the same log hold byte-identical keyspaces, so equal hashes at the same
//! `(hash_revision, compact_revision)` mean equal histories (etcd's corruption check compares
//! exactly these). The values differ from etcd's own (which hashes bbolt's key encoding).

use fjall::Readable;

use super::keys::{IndexValue, kv_key, split_index_key};
use super::{META_COMPACT_REV, META_CURRENT_REV, MvccStore, RequestError, Revision};
use crate::error::{Error, Result};

/// The answer to `HashKV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32 (IEEE) of the history compaction keeps up to `hash_revision`: first, when the
    /// store was compacted, each key's newest revision at or below `compact_revision` unless
    /// it is a tombstone (key order); then every `kv` entry (revision key, then encoded
    /// `KeyValue`) above `compact_revision` and at or below `hash_revision` (revision order).
    /// Revisions the background compaction has yet to delete are not hashed, so the value
    /// never depends on its progress.
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
        let mut h = crc32fast::Hasher::new();
        h.update(b"key");
        if compacted > 0 {
            // The history compaction keeps at the point, whether or not the background
            // deletion of the rest is done: each key's newest revision at or below it,
            // unless a tombstone, in key order.
            let mut newest: Option<(Vec<u8>, Revision, bool)> = None;
            let mut kept = |n: Option<(Vec<u8>, Revision, bool)>| -> Result<()> {
                if let Some((_, r, false)) = n {
                    let k = kv_key(r, false);
                    let v = snap.get(&d.kv, &k)?.ok_or_else(|| {
                        Error::CorruptStore(format!("revision {r:?} indexed but not stored"))
                    })?;
                    h.update(&k);
                    h.update(&v);
                }
                Ok(())
            };
            for g in snap.iter(&d.index) {
                let (k, v) = g.into_inner()?;
                let (prefix, r) = split_index_key(&k)
                    .ok_or_else(|| Error::CorruptStore("short index key".into()))?;
                if r.main > compacted {
                    continue;
                }
                let iv = IndexValue::decode(&v)
                    .ok_or_else(|| Error::CorruptStore("bad index value".into()))?;
                if newest
                    .as_ref()
                    .is_some_and(|(p, _, _)| p.as_slice() != prefix)
                {
                    kept(newest.take())?;
                }
                newest = Some((prefix.to_vec(), r, iv.tombstone));
            }
            kept(newest)?;
        }
        let lo = Revision::new(compacted.saturating_add(1), 0).to_bytes();
        let hi = Revision::new(rev.saturating_add(1), 0).to_bytes();
        if lo < hi {
            for g in snap.range(&d.kv, lo.as_slice()..hi.as_slice()) {
                let (k, v) = g.into_inner()?;
                h.update(&k);
                h.update(&v);
            }
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
