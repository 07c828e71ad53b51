//! The store as an etcd v3 backend file (bbolt, etcd's bucket layout): what
//! `Maintenance.Snapshot` streams, so `etcdctl snapshot save` keeps a file that `etcdctl
//! snapshot status` reads and `etcdctl snapshot restore` (or `etcdutl`) turns into an etcd data
//! dir, and that `etchctl snapshot restore` turns back into an etch one.
//!
//! Buckets written (etcd 3.5 `server/mvcc/buckets`), from one consistent fjall snapshot:
//! - `auth`: `authEnabled` -> 1 byte, `authRevision` -> u64 BE;
//! - `authRoles`, `authUsers`: name -> `authpb.Role` / `authpb.User`;
//! - `cluster`: `clusterVersion` -> `3.5.0`;
//! - `key`: `main u64 BE | '_' | sub u64 BE` (plus `'t'` for a deletion) -> `mvccpb.KeyValue`;
//! - `lease`: ID i64 BE -> `leasepb.Lease{ID, TTL, RemainingTTL}`;
//! - `members`: hex ID -> JSON `{"id","peerURLs","name","clientURLs","isLearner"}`;
//!   `members_removed`: hex ID -> `removed`;
//! - `meta`: `consistent_index` (the applied index) and `term`, u64 BE; after a compaction
//!   `scheduledCompactRev` and `finishedCompactRev` as `main | '_' | 0`.

use std::io::{Seek, Write};

use etch_protocol::etcdserverpb::Member;
use fjall::Readable as _;

use super::{META_APPLIED, META_COMPACT_REV, MvccStore};
use crate::bbolt::Writer;
use crate::{Error, Result};

/// The `key` bucket's key for etch's `kv` key `k` (16-byte revision, maybe a tombstone mark).
fn etcd_rev_key(k: &[u8]) -> Option<Vec<u8>> {
    let (main, rest) = (k.get(..8)?, k.get(8..)?);
    let mut out = Vec::with_capacity(18);
    out.extend_from_slice(main);
    out.push(b'_');
    out.extend_from_slice(rest);
    Some(out)
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// etcd's JSON of a member (`membership.Member`, empty fields left out as etcd does).
pub fn member_json(m: &Member) -> String {
    let list = |v: &[String]| v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(",");
    let mut o = format!("{{\"id\":{},\"peerURLs\":[{}]", m.id, list(&m.peer_ur_ls));
    if !m.name.is_empty() {
        o.push_str(&format!(",\"name\":{}", json_str(&m.name)));
    }
    if !m.client_ur_ls.is_empty() {
        o.push_str(&format!(",\"clientURLs\":[{}]", list(&m.client_ur_ls)));
    }
    if m.is_learner {
        o.push_str(",\"isLearner\":true");
    }
    o.push('}');
    o
}

/// `leasepb.Lease{ID=1, TTL=2, RemainingTTL=3}`, protobuf.
fn lease_pb(id: i64, ttl: i64, remaining: i64) -> Vec<u8> {
    let mut b = Vec::new();
    for (tag, v) in [(1u32, id), (2, ttl), (3, remaining)] {
        if v != 0 {
            prost::encoding::int64::encode(tag, &v, &mut b);
        }
    }
    b
}

/// One bucket entry (key, value).
type Pair = (Vec<u8>, Vec<u8>);

/// Picks and converts one record of a keyspace into a bucket entry.
type Pick<'a> = &'a dyn Fn(&[u8], &[u8]) -> Option<Pair>;

impl MvccStore {
    /// Writes the store, as of one moment, as an etcd backend file on `out`; returns its size,
    /// bytes. Writes go on meanwhile: they are not in the file.
    ///
    /// # Errors
    /// Store errors; IO errors of `out` as [`Error::Io`].
    pub fn write_etcd_snapshot<W: Write + Seek>(&self, out: W) -> Result<u64> {
        let d = self.db();
        let snap = d.db.snapshot();
        let membership = match snap.get(&d.meta, super::META_MEMBERSHIP)? {
            Some(v) => <crate::members::Membership as prost::Message>::decode(&v[..])
                .map_err(|e| Error::CorruptStore(format!("membership: {e}")))?,
            None => Default::default(),
        };
        let io = |e| Error::io("etcd snapshot", e);
        let mut w = Writer::new(out).map_err(io)?;
        let collect = |ks: &fjall::Keyspace, f: Pick<'_>| {
            let mut v = Vec::new();
            for g in snap.iter(ks) {
                let (k, val) = g.into_inner()?;
                if let Some(e) = f(&k, &val) {
                    v.push(e);
                }
            }
            v.sort();
            Ok::<_, Error>(v)
        };
        // auth
        let auth = collect(&d.auth, &|k, v| match k {
            b"enabled" => Some((b"authEnabled".to_vec(), v.to_vec())),
            b"revision" => Some((b"authRevision".to_vec(), v.to_vec())),
            _ => None,
        })?;
        w.bucket(b"auth", auth.into_iter().map(Ok)).map_err(io)?;
        let roles = collect(&d.auth, &|k, v| {
            k.strip_prefix(b"role/").map(|n| (n.to_vec(), v.to_vec()))
        })?;
        w.bucket(b"authRoles", roles.into_iter().map(Ok))
            .map_err(io)?;
        let users = collect(&d.auth, &|k, v| {
            k.strip_prefix(b"user/").map(|n| (n.to_vec(), v.to_vec()))
        })?;
        w.bucket(b"authUsers", users.into_iter().map(Ok))
            .map_err(io)?;
        w.bucket(
            b"cluster",
            [Ok((b"clusterVersion".to_vec(), b"3.5.0".to_vec()))].into_iter(),
        )
        .map_err(io)?;
        // key: etch's kv keys sort as etcd's do (same revision bytes, '_' inserted).
        let keys = snap.iter(&d.kv).map(|g| {
            let (k, v) = g.into_inner().map_err(std::io::Error::other)?;
            let key = etcd_rev_key(&k)
                .ok_or_else(|| std::io::Error::other(format!("kv key of {} bytes", k.len())))?;
            Ok((key, v.to_vec()))
        });
        w.bucket(b"key", keys).map_err(io)?;
        let leases = collect(&d.lease, &|k, v| {
            let id = i64::from_be_bytes(k.try_into().ok()?);
            let ttl = i64::from_be_bytes(v.get(..8)?.try_into().ok()?);
            let rem = i64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
            Some((k.to_vec(), lease_pb(id, ttl, rem)))
        })?;
        w.bucket(b"lease", leases.into_iter().map(Ok)).map_err(io)?;
        let mut members: Vec<Pair> = membership
            .members
            .iter()
            .map(|m| {
                (
                    format!("{:x}", m.id).into_bytes(),
                    member_json(m).into_bytes(),
                )
            })
            .collect();
        members.sort();
        w.bucket(b"members", members.into_iter().map(Ok))
            .map_err(io)?;
        let mut removed: Vec<Pair> = membership
            .removed
            .iter()
            .map(|id| (format!("{id:x}").into_bytes(), b"removed".to_vec()))
            .collect();
        removed.sort();
        w.bucket(b"members_removed", removed.into_iter().map(Ok))
            .map_err(io)?;
        let mut meta = Vec::new();
        if let Some(v) = snap.get(&d.meta, META_APPLIED)?
            && v.len() == 16
        {
            meta.push((b"consistent_index".to_vec(), v[..8].to_vec()));
            meta.push((b"term".to_vec(), v[8..].to_vec()));
        }
        if let Some(v) = snap.get(&d.meta, META_COMPACT_REV)?
            && v.len() == 8
        {
            let mut rev = v.to_vec();
            rev.push(b'_');
            rev.extend_from_slice(&0u64.to_be_bytes());
            meta.push((b"finishedCompactRev".to_vec(), rev.clone()));
            meta.push((b"scheduledCompactRev".to_vec(), rev));
        }
        meta.sort();
        w.bucket(b"meta", meta.into_iter().map(Ok)).map_err(io)?;
        w.finish().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etch_protocol::etcdserverpb::{LeaseGrantRequest, PutRequest};
    use etch_protocol::etchpb::internal_request::Request;

    #[test]
    fn the_etcd_file_holds_every_revision_and_lease() {
        let dir = tempfile::tempdir().unwrap();
        let s = MvccStore::open(dir.path()).unwrap();
        s.apply(
            1,
            1,
            None,
            Some(&Request::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 60 })),
        )
        .unwrap();
        for (i, v) in ["a", "b"].iter().enumerate() {
            let put = PutRequest {
                key: b"k".to_vec().into(),
                value: v.as_bytes().to_vec().into(),
                lease: 7,
                ..Default::default()
            };
            s.apply(2 + i as u64, 1, None, Some(&Request::Put(put)))
                .unwrap();
        }
        let mut out = std::io::Cursor::new(Vec::new());
        let size = s.write_etcd_snapshot(&mut out).unwrap();
        let bytes = out.into_inner();
        assert_eq!(size as usize, bytes.len());
        let buckets = crate::bbolt::read_buckets(&bytes).unwrap();
        let names: Vec<&[u8]> = buckets.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(
            names,
            [
                &b"auth"[..],
                b"authRoles",
                b"authUsers",
                b"cluster",
                b"key",
                b"lease",
                b"members",
                b"members_removed",
                b"meta"
            ]
        );
        let key = &buckets[4].1;
        assert_eq!(key.len(), 2);
        assert_eq!(
            key[1].0[..8],
            3i64.to_be_bytes(),
            "the last key is revision 3"
        );
        assert_eq!(key[1].0[8], b'_');
        assert_eq!(buckets[5].1[0].1, lease_pb(7, 60, 0));
        let meta = &buckets[8].1;
        assert_eq!(meta[0].0, b"consistent_index");
        assert_eq!(meta[0].1, 3u64.to_be_bytes());
    }
}
