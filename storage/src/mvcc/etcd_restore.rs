//! Building a store from an etcd backend file's buckets (an etcd or etch snapshot, see
//! `etcd_snapshot`): every revision of every key with its create/mod revision, version and
//! lease, the leases, users, roles and the auth switch, and the compaction point, so a cluster
//! moved from etcd keeps its revisions (Kubernetes' resourceVersions). The membership is not
//! taken over: a restored member starts a new cluster with the members it is given.

use prost::Message as _;

use etch_protocol::mvccpb::KeyValue;

use super::keys::{IndexValue, Revision, index_key, kv_key};
use super::snapshot::push_record;
use super::{META_COMPACT_REV, META_CURRENT_REV, META_KEY_COUNT, MvccStore};
use crate::{Error, Result};

/// What a restore took over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restored {
    /// The current revision.
    pub revision: i64,
    /// Key revisions (puts and deletions) kept.
    pub revisions: u64,
    /// Live keys.
    pub keys: i64,
    /// Leases.
    pub leases: u64,
    /// The compaction point (0: never compacted).
    pub compact_revision: i64,
}

/// An etcd backend file's buckets, as [`crate::bbolt::read_buckets`] returns them.
pub type Buckets = [crate::bbolt::Bucket];

fn bucket<'a>(b: &'a Buckets, name: &[u8]) -> &'a [(Vec<u8>, Vec<u8>)] {
    b.iter()
        .find(|(n, _)| n == name)
        .map_or(&[][..], |(_, e)| e.as_slice())
}

fn corrupt(what: String) -> Error {
    Error::CorruptStore(format!("snapshot: {what}"))
}

impl MvccStore {
    /// Replaces this (new, empty) store's data by the etcd buckets `b`.
    ///
    /// # Errors
    /// [`Error::CorruptStore`] naming the first record that does not decode (a `key` entry
    /// that is not a revision with a `KeyValue`, a lease that is not a `leasepb.Lease`), and
    /// store errors.
    pub fn restore_etcd(&self, b: &Buckets) -> Result<Restored> {
        let mut out = Restored::default();
        let mut ingest = self.begin_ingest()?;
        let mut chunk = Vec::new();
        let flush = |ingest: &mut super::snapshot::Ingest, chunk: &mut Vec<u8>, force: bool| {
            if force || chunk.len() >= 1 << 20 {
                ingest.write_chunk(chunk)?;
                chunk.clear();
            }
            Ok::<(), Error>(())
        };
        // The latest state of each key, for the live-key count and lease attachments.
        let mut latest: std::collections::BTreeMap<Vec<u8>, (bool, i64)> = Default::default();
        for (k, v) in bucket(b, b"key") {
            if !(k.len() == 17 || (k.len() == 18 && k[17] == b't')) || k[8] != b'_' {
                return Err(corrupt(format!("key bucket entry of {} bytes", k.len())));
            }
            let tombstone = k.len() == 18;
            let rev = Revision::new(
                i64::from_be_bytes(k[..8].try_into().unwrap_or_default()),
                i64::from_be_bytes(k[9..17].try_into().unwrap_or_default()),
            );
            let kv = KeyValue::decode(&v[..])
                .map_err(|e| corrupt(format!("KeyValue at revision {}: {e}", rev.main)))?;
            if kv.key.is_empty() {
                return Err(corrupt(format!("empty key at revision {}", rev.main)));
            }
            let iv = IndexValue {
                tombstone,
                create_revision: if tombstone { 0 } else { kv.create_revision },
                version: if tombstone { 0 } else { kv.version },
                lease: if tombstone { 0 } else { kv.lease },
            };
            push_record(&mut chunk, 0, &kv_key(rev, tombstone), v);
            push_record(&mut chunk, 1, &index_key(&kv.key, rev), &iv.encode());
            latest.insert(kv.key.to_vec(), (tombstone, iv.lease));
            out.revision = out.revision.max(rev.main);
            out.revisions += 1;
            flush(&mut ingest, &mut chunk, false)?;
        }
        for (key, (tombstone, lease)) in &latest {
            if *tombstone {
                continue;
            }
            out.keys += 1;
            if *lease != 0 {
                push_record(&mut chunk, 4, &super::lease_key(*lease, key), &[]);
            }
        }
        for (k, v) in bucket(b, b"lease") {
            let l = LeasePb::decode(&v[..]).map_err(|e| corrupt(format!("lease: {e}")))?;
            if k.len() != 8 {
                return Err(corrupt(format!("lease key of {} bytes", k.len())));
            }
            push_record(
                &mut chunk,
                3,
                k,
                &super::encode_lease(l.ttl, l.remaining_ttl),
            );
            out.leases += 1;
        }
        for (k, v) in bucket(b, b"auth") {
            match k.as_slice() {
                b"authEnabled" => push_record(&mut chunk, 5, b"enabled", v),
                b"authRevision" => push_record(&mut chunk, 5, b"revision", v),
                _ => {}
            }
        }
        for (prefix, name) in [(&b"user/"[..], &b"authUsers"[..]), (b"role/", b"authRoles")] {
            for (k, v) in bucket(b, name) {
                push_record(&mut chunk, 5, &[prefix, k.as_slice()].concat(), v);
            }
        }
        // etcd's compaction point: the newer of the finished and the scheduled one.
        for (k, v) in bucket(b, b"meta") {
            if (k == b"finishedCompactRev" || k == b"scheduledCompactRev") && v.len() >= 8 {
                let rev = i64::from_be_bytes(v[..8].try_into().unwrap_or_default());
                out.compact_revision = out.compact_revision.max(rev);
            }
        }
        if out.compact_revision > 0 {
            // Only the point: the history below it that the file still holds (a snapshot
            // taken while its member was still deleting) is deleted by the store's background
            // purge, which starts from purged revision 0.
            let rev = out.compact_revision.to_be_bytes();
            push_record(&mut chunk, 2, META_COMPACT_REV.as_bytes(), &rev);
        }
        // As etcd: the current revision is never below the compaction point (the newest
        // revisions may have been deletions that compaction removed).
        out.revision = out.revision.max(out.compact_revision);
        let current = out.revision.max(1);
        out.revision = current;
        push_record(
            &mut chunk,
            2,
            META_CURRENT_REV.as_bytes(),
            &current.to_be_bytes(),
        );
        push_record(
            &mut chunk,
            2,
            META_KEY_COUNT.as_bytes(),
            &out.keys.to_be_bytes(),
        );
        flush(&mut ingest, &mut chunk, true)?;
        self.install(ingest)?;
        Ok(out)
    }
}

/// `leasepb.Lease` (etcd `server/lease/leasepb/lease.proto`).
#[derive(Clone, PartialEq, prost::Message)]
struct LeasePb {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev_key(main: i64, tombstone: bool) -> Vec<u8> {
        let mut k = main.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend_from_slice(&0i64.to_be_bytes());
        if tombstone {
            k.push(b't');
        }
        k
    }

    #[test]
    fn the_revision_is_never_below_the_compaction_point() {
        let dir = tempfile::tempdir().unwrap();
        let store = MvccStore::open(dir.path()).unwrap();
        let kv = KeyValue {
            key: b"a".to_vec().into(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: b"1".to_vec().into(),
            lease: 0,
        };
        // The last writes (revisions 3..5, deletions) were compacted away at 5.
        let mut compact = 5i64.to_be_bytes().to_vec();
        compact.push(b'_');
        compact.extend_from_slice(&0i64.to_be_bytes());
        let b = vec![
            (
                b"key".to_vec(),
                vec![(rev_key(2, false), kv.encode_to_vec())],
            ),
            (
                b"meta".to_vec(),
                vec![(b"finishedCompactRev".to_vec(), compact)],
            ),
        ];
        let r = store.restore_etcd(&b).unwrap();
        assert_eq!((r.revision, r.compact_revision, r.keys), (5, 5, 1));
        assert_eq!(store.current_revision(), 5);
        // A key bucket entry that is not a revision is refused, naming it.
        let bad = vec![(
            b"key".to_vec(),
            vec![(
                rev_key(2, true)[..17].iter().chain(b"x").copied().collect(),
                vec![],
            )],
        )];
        let other = tempfile::tempdir().unwrap();
        let s2 = MvccStore::open(other.path()).unwrap();
        assert!(s2.restore_etcd(&bad).is_err());
    }
}
