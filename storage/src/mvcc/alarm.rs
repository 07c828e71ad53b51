//! Alarms (etcd v3.5 `api/v3alarm`): which member raised which alarm. Replicated state: only an
//! applied `AlarmRequest` changes it ([`MvccStore::apply`]), in the same fjall batch as the
//! entry's applied index; loaded at open and after a snapshot install, kept in memory.
//!
//! While an alarm is active, apply refuses what etcd's alarm appliers refuse:
//! - `NOSPACE` (etcd `applierV3Capped`): Put, a Txn with a Put in any branch (nested Txns
//!   included), LeaseGrant -> [`RequestError::NoSpace`]. Reads, deletes, compaction and lease
//!   revocation still work, so an operator can make room.
//! - `CORRUPT` (etcd `applierV3Corrupt`): Put, DeleteRange, Txn, Compaction, LeaseGrant,
//!   LeaseRevoke -> [`RequestError::Corrupt`].
//!
//! # Encoding in `meta`
//! One entry per active alarm, empty value:
//! `"alarm/"` (6 bytes) ++ member ID (8 bytes BE) ++ alarm type (4 bytes BE, etcd's
//! `AlarmType` number: 0 NONE, 1 NOSPACE, 2 CORRUPT).
//!
//! Example: NOSPACE raised by member `0x0a` is the key
//! `61 6c 61 72 6d 2f | 00 00 00 00 00 00 00 0a | 00 00 00 01`.
//! Snapshots carry these entries with the rest of `meta`, so a member caught up by a snapshot
//! knows the cluster's alarms.

use std::collections::BTreeSet;

use etch_protocol::etcdserverpb::alarm_request::AlarmAction;
use etch_protocol::etcdserverpb::request_op::Request as Op;
use etch_protocol::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, TxnRequest,
};
use etch_protocol::etchpb::internal_request::Request;

use super::{MvccStore, RequestError};
use crate::error::{Error, Result};

/// Key prefix of the alarm entries in `meta`.
pub(crate) const ALARM_PREFIX: &[u8] = b"alarm/";

/// The active alarms, as (alarm type, member ID): the order `GET` answers in.
pub(crate) type AlarmSet = BTreeSet<(i32, u64)>;

/// The `meta` key of one alarm.
pub(crate) fn alarm_key(member_id: u64, alarm: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(ALARM_PREFIX.len() + 12);
    k.extend_from_slice(ALARM_PREFIX);
    k.extend_from_slice(&member_id.to_be_bytes());
    k.extend_from_slice(&alarm.to_be_bytes());
    k
}

/// Reads every alarm entry of `meta`.
pub(crate) fn load(meta: &fjall::Keyspace) -> Result<AlarmSet> {
    let mut set = AlarmSet::new();
    for g in meta.prefix(ALARM_PREFIX) {
        let (k, _) = g.into_inner()?;
        let rest = &k[ALARM_PREFIX.len()..];
        let bad = || Error::CorruptStore(format!("meta alarm key of {} bytes", k.len()));
        if rest.len() != 12 {
            return Err(bad());
        }
        let member = u64::from_be_bytes(rest[..8].try_into().map_err(|_| bad())?);
        let alarm = i32::from_be_bytes(rest[8..].try_into().map_err(|_| bad())?);
        set.insert((alarm, member));
    }
    Ok(set)
}

/// The alarms of type `alarm` in `set` (`NONE`: every alarm), in (type, member) order.
fn members(set: &AlarmSet, alarm: i32) -> Vec<AlarmMember> {
    set.iter()
        .filter(|(a, _)| alarm == AlarmType::None as i32 || *a == alarm)
        .map(|&(alarm, member_id)| AlarmMember { member_id, alarm })
        .collect()
}

/// What applying an `AlarmRequest` does: the response's alarms, and the entry to write or
/// remove (`Some(true)` insert, `Some(false)` remove) with the set it leaves.
pub(crate) struct AlarmChange {
    pub(crate) alarms: Vec<AlarmMember>,
    pub(crate) write: Option<(Vec<u8>, bool, AlarmSet)>,
}

/// etcd `applierV3backend.Alarm`: GET lists the alarms of the requested type (NONE = all);
/// ACTIVATE adds (member, type) and lists it (the existing one when it was already active:
/// etcd's `AlarmStore.Activate` returns it); DEACTIVATE removes it and lists what it removed
/// (nothing when it was not active). An unknown action changes nothing and lists nothing.
pub(crate) fn apply(set: &AlarmSet, r: &AlarmRequest) -> AlarmChange {
    let entry = (r.alarm, r.member_id);
    let one = vec![AlarmMember {
        member_id: r.member_id,
        alarm: r.alarm,
    }];
    match AlarmAction::try_from(r.action) {
        Ok(AlarmAction::Get) => AlarmChange {
            alarms: members(set, r.alarm),
            write: None,
        },
        Ok(AlarmAction::Activate) if set.contains(&entry) => AlarmChange {
            alarms: one,
            write: None,
        },
        Ok(AlarmAction::Activate) => {
            let mut next = set.clone();
            next.insert(entry);
            AlarmChange {
                alarms: one,
                write: Some((alarm_key(r.member_id, r.alarm), true, next)),
            }
        }
        Ok(AlarmAction::Deactivate) if set.contains(&entry) => {
            let mut next = set.clone();
            next.remove(&entry);
            AlarmChange {
                alarms: one,
                write: Some((alarm_key(r.member_id, r.alarm), false, next)),
            }
        }
        Ok(AlarmAction::Deactivate) | Err(_) => AlarmChange {
            alarms: Vec::new(),
            write: None,
        },
    }
}

/// Whether any branch of `t` (nested Txns included) puts.
pub(crate) fn txn_puts(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(Op::RequestPut(_)) => true,
            Some(Op::RequestTxn(t)) => txn_puts(t),
            _ => false,
        })
}

/// The refusal an active alarm imposes on `req`, if any (CORRUPT before NOSPACE).
pub(crate) fn gate(set: &AlarmSet, req: Option<&Request>) -> std::result::Result<(), RequestError> {
    let active = |t: AlarmType| set.iter().any(|(a, _)| *a == t as i32);
    if active(AlarmType::Corrupt)
        && matches!(
            req,
            Some(
                Request::Put(_)
                    | Request::DeleteRange(_)
                    | Request::Txn(_)
                    | Request::Compaction(_)
                    | Request::LeaseGrant(_)
                    | Request::LeaseRevoke(_)
            )
        )
    {
        return Err(RequestError::Corrupt);
    }
    if active(AlarmType::Nospace) {
        let refused = match req {
            Some(Request::Put(_) | Request::LeaseGrant(_)) => true,
            Some(Request::Txn(t)) => txn_puts(t),
            _ => false,
        };
        if refused {
            return Err(RequestError::NoSpace);
        }
    }
    Ok(())
}

impl MvccStore {
    /// The active alarms of type `alarm` (`NONE`: all of them), ordered by type then member:
    /// this member's view as of its last applied entry (etcd `AlarmStore.Get`).
    pub fn alarms(&self, alarm: AlarmType) -> Vec<AlarmMember> {
        members(&self.alarm_set(), alarm as i32)
    }

    /// Whether an alarm of type `alarm` is active for any member.
    pub fn alarm_active(&self, alarm: AlarmType) -> bool {
        self.alarm_set().iter().any(|(a, _)| *a == alarm as i32)
    }

    pub(crate) fn alarm_set(&self) -> AlarmSet {
        self.alarm_state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_alarms(&self, set: AlarmSet) {
        *self.alarm_state.write().unwrap_or_else(|p| p.into_inner()) = set;
    }
}

/// An `AlarmResponse` with `alarms` and the header revision `rev` (the node fills the rest).
pub(crate) fn response(alarms: Vec<AlarmMember>, rev: i64) -> AlarmResponse {
    AlarmResponse {
        header: Some(etch_protocol::etcdserverpb::ResponseHeader {
            revision: rev,
            ..Default::default()
        }),
        alarms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_matches_module_doc() {
        let k = alarm_key(0x0a, AlarmType::Nospace as i32);
        assert_eq!(&k[..6], b"alarm/");
        assert_eq!(&k[6..], &[0, 0, 0, 0, 0, 0, 0, 0x0a, 0, 0, 0, 1]);
    }

    #[test]
    fn txn_puts_sees_both_branches_and_nesting() {
        use etch_protocol::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp};
        let put = RequestOp {
            request: Some(Op::RequestPut(PutRequest::default())),
        };
        let del = RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest::default())),
        };
        let nested = |inner: RequestOp| RequestOp {
            request: Some(Op::RequestTxn(TxnRequest {
                failure: vec![inner],
                ..Default::default()
            })),
        };
        let t = |ops: Vec<RequestOp>| TxnRequest {
            success: ops,
            ..Default::default()
        };
        assert!(txn_puts(&t(vec![put.clone()])));
        assert!(!txn_puts(&t(vec![del.clone()])));
        assert!(txn_puts(&t(vec![del.clone(), nested(put)])));
        assert!(!txn_puts(&t(vec![nested(del)])));
    }

    use crate::mvcc::WriteResponse;
    use bytes::Bytes;
    use etch_protocol::etcdserverpb::{
        CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
        RangeRequest, RequestOp,
    };

    struct T {
        dir: tempfile::TempDir,
        s: MvccStore,
        index: u64,
    }

    impl T {
        fn new() -> T {
            let dir = tempfile::tempdir().unwrap();
            let s = MvccStore::open(dir.path()).unwrap();
            T { dir, s, index: 0 }
        }
        fn apply(&mut self, r: Request) -> std::result::Result<WriteResponse, RequestError> {
            self.index += 1;
            let a = self
                .s
                .apply(self.index, 1, None, Some(&r))
                .unwrap()
                .unwrap();
            assert_eq!(self.s.applied_index().index, self.index);
            a.response
        }
        fn alarm(&mut self, action: AlarmAction, member_id: u64, t: AlarmType) -> Vec<(u64, i32)> {
            let r = Request::Alarm(AlarmRequest {
                action: action as i32,
                member_id,
                alarm: t as i32,
            });
            match self.apply(r).unwrap() {
                WriteResponse::Alarm(a) => {
                    assert!(a.header.is_some());
                    a.alarms.iter().map(|m| (m.member_id, m.alarm)).collect()
                }
                o => panic!("{o:?}"),
            }
        }
        fn reopen(&mut self) {
            let fresh = tempfile::tempdir().unwrap();
            let s = std::mem::replace(&mut self.s, MvccStore::open(fresh.path()).unwrap());
            drop(s);
            self.s = MvccStore::open(self.dir.path()).unwrap();
        }
    }

    fn put(k: &str, v: &[u8]) -> PutRequest {
        PutRequest {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v),
            ..Default::default()
        }
    }

    const NOSPACE: i32 = AlarmType::Nospace as i32;
    const CORRUPT: i32 = AlarmType::Corrupt as i32;

    #[test]
    fn alarms_apply_as_etcd_and_persist_across_reopen() {
        use AlarmAction::{Activate, Deactivate, Get};
        let mut t = T::new();
        assert!(t.alarm(Get, 0, AlarmType::None).is_empty());
        assert_eq!(t.alarm(Activate, 7, AlarmType::Nospace), [(7, NOSPACE)]);
        // Already active: etcd's AlarmStore.Activate answers the existing alarm.
        assert_eq!(t.alarm(Activate, 7, AlarmType::Nospace), [(7, NOSPACE)]);
        assert_eq!(t.alarm(Activate, 3, AlarmType::Corrupt), [(3, CORRUPT)]);
        assert_eq!(t.alarm(Activate, 5, AlarmType::Nospace), [(5, NOSPACE)]);
        let all = [(5, NOSPACE), (7, NOSPACE), (3, CORRUPT)];
        assert_eq!(t.alarm(Get, 0, AlarmType::None), all);
        assert_eq!(t.alarm(Get, 0, AlarmType::Corrupt), [(3, CORRUPT)]);
        assert!(t.s.alarm_active(AlarmType::Nospace));
        assert_eq!(t.s.current_revision(), 1, "alarms create no revision");
        t.reopen();
        assert_eq!(
            t.s.alarms(AlarmType::None)
                .iter()
                .map(|m| (m.member_id, m.alarm))
                .collect::<Vec<_>>(),
            all
        );
        assert_eq!(t.alarm(Deactivate, 7, AlarmType::Nospace), [(7, NOSPACE)]);
        assert!(t.alarm(Deactivate, 7, AlarmType::Nospace).is_empty());
        assert!(t.alarm(Deactivate, 3, AlarmType::Nospace).is_empty());
        assert_eq!(t.alarm(Deactivate, 3, AlarmType::Corrupt), [(3, CORRUPT)]);
        t.reopen();
        assert_eq!(t.alarm(Get, 0, AlarmType::None), [(5, NOSPACE)]);
        // A snapshot carries the alarms to the member that installs it.
        let other = T::new();
        let mut ingest = other.s.begin_ingest().unwrap();
        t.s.export(|c| ingest.write_chunk(&c).is_ok()).unwrap();
        other.s.install(ingest).unwrap();
        assert!(other.s.alarm_active(AlarmType::Nospace));
        assert!(!other.s.alarm_active(AlarmType::Corrupt));
    }

    #[test]
    fn nospace_refuses_puts_and_grants_but_not_deletes_compaction_or_revoke() {
        use AlarmAction::{Activate, Deactivate};
        let mut t = T::new();
        t.apply(Request::Put(put("a", b"1"))).unwrap(); // rev 2
        t.apply(Request::Put(put("b", b"1"))).unwrap(); // rev 3
        t.apply(Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 1 }))
            .unwrap();
        t.alarm(Activate, 1, AlarmType::Nospace);
        let op_put = RequestOp {
            request: Some(Op::RequestPut(put("c", b"1"))),
        };
        let op_del = RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(b"a"),
                ..Default::default()
            })),
        };
        let nested_put = RequestOp {
            request: Some(Op::RequestTxn(TxnRequest {
                success: vec![op_put.clone()],
                ..Default::default()
            })),
        };
        let txn = |success: Vec<RequestOp>, failure: Vec<RequestOp>| {
            Request::Txn(TxnRequest {
                success,
                failure,
                ..Default::default()
            })
        };
        for refused in [
            Request::Put(put("c", b"1")),
            txn(vec![op_put.clone()], vec![]),
            txn(vec![], vec![op_put.clone()]),
            txn(vec![op_del.clone(), nested_put], vec![]),
            Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 2 }),
        ] {
            assert_eq!(t.apply(refused).unwrap_err(), RequestError::NoSpace);
        }
        assert_eq!(t.s.current_revision(), 3, "nothing refused was applied");
        assert!(t.s.lease(2, false).unwrap().is_none());
        // What makes room still works.
        t.apply(txn(vec![op_del], vec![])).unwrap(); // rev 4
        t.apply(Request::DeleteRange(DeleteRangeRequest {
            key: Bytes::from_static(b"b"),
            ..Default::default()
        }))
        .unwrap(); // rev 5
        t.apply(Request::Compaction(CompactionRequest {
            revision: 4,
            physical: true,
        }))
        .unwrap();
        t.apply(Request::LeaseRevoke(LeaseRevokeRequest { id: 1 }))
            .unwrap();
        let all = RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            ..Default::default()
        };
        assert_eq!(t.s.range(&all).unwrap().unwrap().count, 0);
        t.alarm(Deactivate, 1, AlarmType::Nospace);
        t.apply(Request::Put(put("c", b"1"))).unwrap();
        assert_eq!(t.s.range(&all).unwrap().unwrap().count, 1);
    }

    #[test]
    fn corrupt_refuses_every_write() {
        let mut t = T::new();
        t.apply(Request::Put(put("a", b"1"))).unwrap();
        t.alarm(AlarmAction::Activate, 2, AlarmType::Corrupt);
        for refused in [
            Request::Put(put("a", b"2")),
            Request::DeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(b"a"),
                ..Default::default()
            }),
            Request::Txn(TxnRequest::default()),
            Request::Compaction(CompactionRequest {
                revision: 2,
                physical: true,
            }),
            Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 1 }),
            Request::LeaseRevoke(LeaseRevokeRequest { id: 1 }),
        ] {
            assert_eq!(t.apply(refused).unwrap_err(), RequestError::Corrupt);
        }
        assert_eq!(t.s.current_revision(), 2);
    }

    /// The quota size follows the data: it grows with puts, and after compaction plus
    /// defragment it falls back near the live data (the tombstones and history are gone).
    #[test]
    fn quota_size_drops_after_compaction_and_defragment() {
        let mut t = T::new();
        assert_eq!(t.s.quota_size_bytes(), 0, "a new store holds no data");
        let value = vec![b'x'; 4096];
        for _ in 0..200 {
            t.apply(Request::Put(put("k", &value))).unwrap();
        }
        let full = t.s.quota_size_bytes();
        assert!(full >= 200 * 4096, "{full}");
        assert!(t.s.db_size_bytes() > full, "db_size counts the journal too");
        // The write path's measure (kept up to 100 ms) starts from the same size...
        assert_eq!(t.s.recent_quota_size_bytes(), full);
        t.apply(Request::Compaction(CompactionRequest {
            revision: t.s.current_revision(),
            physical: true,
        }))
        .unwrap();
        t.s.wait_purged(t.s.current_revision(), std::time::Duration::from_secs(30))
            .unwrap();
        t.s.defragment().unwrap();
        let after = t.s.quota_size_bytes();
        assert!(after < 64 * 1024, "{full} -> {after}");
        // ...and sees the defragmented size at once, not the one it kept.
        assert_eq!(t.s.recent_quota_size_bytes(), after);
        // The data is intact.
        let r =
            t.s.range(&RangeRequest {
                key: Bytes::from_static(b"k"),
                ..Default::default()
            })
            .unwrap()
            .unwrap();
        assert_eq!(r.kvs[0].value.len(), 4096);
        assert_eq!(r.kvs[0].version, 200);
        // And so after a reopen.
        t.reopen();
        assert!(t.s.quota_size_bytes() < 64 * 1024);
    }
}
