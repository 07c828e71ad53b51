use super::*;
use etch_protocol::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etch_protocol::etcdserverpb::range_request::{SortOrder, SortTarget};
use etch_protocol::etcdserverpb::request_op::Request as Op;
use etch_protocol::etcdserverpb::response_op::Response as OpResp;
use etch_protocol::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};

struct T {
    _dir: tempfile::TempDir,
    s: MvccStore,
    index: u64,
}

impl T {
    fn new() -> T {
        let d = tempfile::tempdir().unwrap();
        let s = MvccStore::open(d.path()).unwrap();
        T {
            _dir: d,
            s,
            index: 0,
        }
    }
    fn apply(&mut self, r: Request) -> std::result::Result<WriteResponse, RequestError> {
        self.index += 1;
        self.s
            .apply(self.index, 1, None, Some(&r))
            .unwrap()
            .unwrap()
            .response
    }
    fn put(&mut self, k: &str, v: &str) -> PutResponse {
        match self.apply(Request::Put(put(k, v))).unwrap() {
            WriteResponse::Put(p) => p,
            o => panic!("{o:?}"),
        }
    }
    fn get(&self, r: RangeRequest) -> std::result::Result<RangeResponse, RequestError> {
        self.s.range(&r).unwrap()
    }
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
        ..Default::default()
    }
}

fn rng(k: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        range_end: Bytes::copy_from_slice(end.as_bytes()),
        ..Default::default()
    }
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect()
}

#[test]
fn revisions_versions_and_history() {
    let mut t = T::new();
    assert_eq!(t.s.current_revision(), 1);
    assert_eq!(t.put("a", "1").header.unwrap().revision, 2);
    assert_eq!(t.put("a", "2").header.unwrap().revision, 3);
    let r = t.get(rng("a", "")).unwrap();
    let kv = &r.kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(&kv.value[..], b"2");
    assert_eq!(r.header.unwrap().revision, 3);
    // Read at a past revision.
    let mut old = rng("a", "");
    old.revision = 2;
    assert_eq!(&t.get(old).unwrap().kvs[0].value[..], b"1");
    // Future revision.
    let mut fut = rng("a", "");
    fut.revision = 4;
    assert_eq!(t.get(fut).unwrap_err(), RequestError::FutureRevision);
    // Delete resets the version; re-create starts a new life.
    let d = t
        .apply(Request::DeleteRange(DeleteRangeRequest {
            key: Bytes::from_static(b"a"),
            prev_kv: true,
            ..Default::default()
        }))
        .unwrap();
    match d {
        WriteResponse::DeleteRange(d) => {
            assert_eq!(d.deleted, 1);
            assert_eq!(d.prev_kvs.len(), 1);
            assert_eq!(d.header.unwrap().revision, 4);
        }
        o => panic!("{o:?}"),
    }
    assert!(t.get(rng("a", "")).unwrap().kvs.is_empty());
    t.put("a", "3");
    let kv = t.get(rng("a", "")).unwrap().kvs[0].clone();
    assert_eq!((kv.create_revision, kv.version), (5, 1));
    // Deleting nothing does not bump the revision.
    match t
        .apply(Request::DeleteRange(DeleteRangeRequest {
            key: Bytes::from_static(b"zz"),
            ..Default::default()
        }))
        .unwrap()
    {
        WriteResponse::DeleteRange(d) => {
            assert_eq!(d.deleted, 0);
            assert_eq!(d.header.unwrap().revision, 5);
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(t.s.current_revision(), 5);
    let ev = t.s.events(2, 5).unwrap();
    assert_eq!(ev.len(), 4);
}

#[test]
fn ranges_limits_sorting_and_filters() {
    let mut t = T::new();
    for (k, v) in [
        ("b", "3"),
        ("a", "2"),
        ("c", "1"),
        ("a\0x", "0"),
        ("d", "9"),
    ] {
        t.put(k, v);
    }
    t.put("c", "1b");
    assert_eq!(keys(&t.get(rng("a", "c")).unwrap()), ["a", "a\0x", "b"]);
    // "\0" range end: every key >= key.
    let all = t.get(rng("b", "\0")).unwrap();
    assert_eq!(keys(&all), ["b", "c", "d"]);
    assert_eq!(all.count, 3);
    // Prefix of "a": [a, b).
    assert_eq!(t.get(rng("a", "b")).unwrap().count, 2);
    // Limit + more, count is the total.
    let mut r = rng("\0", "\0");
    r.limit = 2;
    let res = t.get(r).unwrap();
    assert_eq!(keys(&res), ["a", "a\0x"]);
    assert!(res.more);
    assert_eq!(res.count, 5);
    // Sort by value descending.
    let mut r = rng("a", "\0");
    r.sort_order = SortOrder::Descend as i32;
    r.sort_target = SortTarget::Value as i32;
    assert_eq!(keys(&t.get(r).unwrap()), ["d", "b", "a", "c", "a\0x"]);
    // Target without an order sorts ascending (etcd).
    let mut r = rng("a", "\0");
    r.sort_target = SortTarget::Mod as i32;
    assert_eq!(keys(&t.get(r).unwrap()), ["b", "a", "a\0x", "d", "c"]);
    // keys_only and count_only.
    let mut r = rng("a", "\0");
    r.keys_only = true;
    let res = t.get(r).unwrap();
    assert!(
        res.kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.version > 0)
    );
    let mut r = rng("a", "\0");
    r.count_only = true;
    let res = t.get(r).unwrap();
    assert!(res.kvs.is_empty());
    assert_eq!(res.count, 5);
    // Filters: mod revision >= 5, create revision <= 4.
    let mut r = rng("a", "\0");
    r.min_mod_revision = 5;
    assert_eq!(keys(&t.get(r).unwrap()), ["a\0x", "c", "d"]);
    let mut r = rng("a", "\0");
    r.max_create_revision = 3;
    assert_eq!(keys(&t.get(r).unwrap()), ["a", "b"]);
}

#[test]
fn put_options_and_errors() {
    let mut t = T::new();
    let mut p = put("k", "");
    p.ignore_value = true;
    assert_eq!(
        t.apply(Request::Put(p.clone())).unwrap_err(),
        RequestError::KeyNotFound
    );
    assert_eq!(t.s.current_revision(), 1);
    assert_eq!(t.s.applied_index().index, 1);
    t.put("k", "v1");
    p.prev_kv = true;
    match t.apply(Request::Put(p)).unwrap() {
        WriteResponse::Put(r) => assert_eq!(&r.prev_kv.unwrap().value[..], b"v1"),
        o => panic!("{o:?}"),
    }
    assert_eq!(&t.get(rng("k", "")).unwrap().kvs[0].value[..], b"v1");
    assert_eq!(t.get(rng("k", "")).unwrap().kvs[0].version, 2);
    let mut p = put("k", "x");
    p.lease = 42;
    assert_eq!(
        t.apply(Request::Put(p)).unwrap_err(),
        RequestError::LeaseNotFound
    );
    let mut p = put("k", "x");
    p.ignore_value = true;
    assert_eq!(validate_put(&p), Err(RequestError::ValueProvided));
    let mut p = put("k", "");
    p.ignore_lease = true;
    p.lease = 1;
    assert_eq!(validate_put(&p), Err(RequestError::LeaseProvided));
    assert_eq!(validate_put(&put("", "v")), Err(RequestError::EmptyKey));
    // Replay of an applied index is skipped.
    assert!(
        t.s.apply(1, 1, None, Some(&Request::Put(put("z", "z"))))
            .unwrap()
            .is_none()
    );
}

fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(put(k, v))),
    }
}
fn op_get(k: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(rng(k, ""))),
    }
}
fn op_del(k: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key: Bytes::copy_from_slice(k.as_bytes()),
            range_end: Bytes::copy_from_slice(end.as_bytes()),
            ..Default::default()
        })),
    }
}
fn cmp(k: &str, target: CompareTarget, result: CompareResult, u: TargetUnion) -> Compare {
    Compare {
        key: Bytes::copy_from_slice(k.as_bytes()),
        target: target as i32,
        result: result as i32,
        target_union: Some(u),
        ..Default::default()
    }
}

#[test]
fn txn_compare_and_swap() {
    let mut t = T::new();
    t.put("a", "1");
    let txn = |v: &str| TxnRequest {
        compare: vec![cmp(
            "a",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(Bytes::copy_from_slice(v.as_bytes())),
        )],
        success: vec![op_put("a", "2"), op_get("a")],
        failure: vec![op_get("a")],
    };
    match t.apply(Request::Txn(txn("1"))).unwrap() {
        WriteResponse::Txn(r) => {
            assert!(r.succeeded);
            assert_eq!(r.header.unwrap().revision, 3);
            // The range after the put in the same txn sees the put.
            match &r.responses[1].response {
                Some(OpResp::ResponseRange(rr)) => assert_eq!(&rr.kvs[0].value[..], b"2"),
                o => panic!("{o:?}"),
            }
        }
        o => panic!("{o:?}"),
    }
    match t.apply(Request::Txn(txn("1"))).unwrap() {
        WriteResponse::Txn(r) => {
            assert!(!r.succeeded);
            assert_eq!(r.header.unwrap().revision, 3);
        }
        o => panic!("{o:?}"),
    }
    // Missing key: version == 0 holds; value compares are false.
    let r = TxnRequest {
        compare: vec![cmp(
            "nope",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(0),
        )],
        success: vec![op_put("nope", "x"), op_put("b", "y")],
        failure: vec![],
    };
    match t.apply(Request::Txn(r)).unwrap() {
        WriteResponse::Txn(r) => {
            assert!(r.succeeded);
            assert_eq!(r.header.unwrap().revision, 4);
        }
        o => panic!("{o:?}"),
    }
    // Both puts share main revision 4 with sub revisions 0 and 1.
    assert_eq!(t.get(rng("b", "")).unwrap().kvs[0].mod_revision, 4);
    // Range compare: every key in [a, c) has mod revision > 2.
    let r = TxnRequest {
        compare: vec![Compare {
            range_end: Bytes::from_static(b"c"),
            ..cmp(
                "a",
                CompareTarget::Mod,
                CompareResult::Greater,
                TargetUnion::ModRevision(2),
            )
        }],
        success: vec![op_del("a", "c")],
        failure: vec![],
    };
    match t.apply(Request::Txn(r)).unwrap() {
        WriteResponse::Txn(r) => assert!(r.succeeded),
        o => panic!("{o:?}"),
    }
    assert_eq!(t.get(rng("a", "c")).unwrap().count, 0);
    // Nested txn.
    let r = TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(Op::RequestTxn(TxnRequest {
                compare: vec![],
                success: vec![op_put("n", "1")],
                failure: vec![],
            })),
        }],
        failure: vec![],
    };
    t.apply(Request::Txn(r)).unwrap();
    assert_eq!(t.get(rng("n", "")).unwrap().count, 1);
}

#[test]
fn txn_validation_follows_etcd() {
    let many = TxnRequest {
        success: (0..129).map(|i| op_put(&format!("k{i}"), "v")).collect(),
        ..Default::default()
    };
    assert_eq!(
        validate_txn(&many, DEFAULT_MAX_TXN_OPS),
        Err(RequestError::TooManyOps)
    );
    let dup = TxnRequest {
        success: vec![op_put("a", "1"), op_put("a", "2")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&dup, 128), Err(RequestError::DuplicateKey));
    let put_in_del = TxnRequest {
        success: vec![op_del("a", "c"), op_put("b", "2")],
        ..Default::default()
    };
    assert_eq!(
        validate_txn(&put_in_del, 128),
        Err(RequestError::DuplicateKey)
    );
    // Puts in different branches, and overlapping deletes, are fine.
    let ok = TxnRequest {
        success: vec![op_put("a", "1"), op_del("x", "z"), op_del("y", "")],
        failure: vec![op_put("a", "2")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&ok, 128), Ok(()));
    let nested_ok = TxnRequest {
        success: vec![RequestOp {
            request: Some(Op::RequestTxn(TxnRequest {
                success: vec![op_put("a", "1")],
                failure: vec![op_put("a", "2")],
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    assert_eq!(validate_txn(&nested_ok, 128), Ok(()));
    let nested_dup = TxnRequest {
        success: vec![
            op_put("a", "0"),
            RequestOp {
                request: Some(Op::RequestTxn(TxnRequest {
                    success: vec![op_put("a", "1")],
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    assert_eq!(
        validate_txn(&nested_dup, 128),
        Err(RequestError::DuplicateKey)
    );
}

#[test]
fn compaction_removes_history_and_refuses_old_reads() {
    let mut t = T::new();
    t.put("a", "1"); // 2
    t.put("a", "2"); // 3
    t.put("b", "1"); // 4
    t.apply(Request::DeleteRange(DeleteRangeRequest {
        key: Bytes::from_static(b"b"),
        ..Default::default()
    }))
    .unwrap(); // 5
    t.put("c", "1"); // 6
    let c = |rev| {
        Request::Compaction(CompactionRequest {
            revision: rev,
            physical: true,
        })
    };
    assert_eq!(t.apply(c(7)).unwrap_err(), RequestError::FutureRevision);
    t.apply(c(5)).unwrap();
    assert_eq!(t.apply(c(5)).unwrap_err(), RequestError::Compacted);
    assert_eq!(t.s.compact_revision(), 5);
    let mut r = rng("a", "");
    r.revision = 4;
    assert_eq!(t.get(r).unwrap_err(), RequestError::Compacted);
    let mut r = rng("a", "\0");
    r.revision = 5;
    assert_eq!(keys(&t.get(r).unwrap()), ["a"]);
    assert_eq!(keys(&t.get(rng("a", "\0")).unwrap()), ["a", "c"]);
    // Once the background deletion is done, only a's newest revision (3) and c remain.
    t.s.wait_purged(5, std::time::Duration::from_secs(30))
        .unwrap();
    assert_eq!(t.s.db().index.iter().count(), 2);
    // Reopen keeps revisions and the compaction point.
    let dir = t._dir;
    drop(t.s);
    let s = MvccStore::open(dir.path()).unwrap();
    assert_eq!(s.current_revision(), 6);
    assert_eq!(s.compact_revision(), 5);
    assert_eq!(s.applied_index().index, 8);
}

#[test]
fn leases_attach_move_detach_and_revoke_in_one_revision() {
    use etch_protocol::etcdserverpb::{
        LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseRevokeRequest,
    };
    let mut t = T::new();
    let grant = |id, ttl| Request::LeaseGrant(LeaseGrantRequest { ttl, id });
    t.apply(grant(1, 10)).unwrap();
    t.apply(grant(2, 20)).unwrap();
    assert_eq!(t.apply(grant(1, 5)).unwrap_err(), RequestError::LeaseExists);
    assert_eq!(
        t.apply(grant(3, MAX_LEASE_TTL_SECONDS + 1)).unwrap_err(),
        RequestError::LeaseTtlTooLarge
    );
    assert_eq!(
        t.s.current_revision(),
        1,
        "lease grants do not create revisions"
    );
    let with_lease = |k: &str, l| {
        let mut p = put(k, "v");
        p.lease = l;
        Request::Put(p)
    };
    t.apply(with_lease("a", 1)).unwrap(); // 2
    t.apply(with_lease("b", 1)).unwrap(); // 3
    t.apply(with_lease("c", 1)).unwrap(); // 4
    t.apply(with_lease("c", 2)).unwrap(); // 5: c moves to lease 2
    t.apply(Request::DeleteRange(DeleteRangeRequest {
        key: Bytes::from_static(b"b"),
        ..Default::default()
    }))
    .unwrap(); // 6
    let (rec, keys) = t.s.lease(1, true).unwrap().unwrap();
    assert_eq!(rec.ttl, 10);
    assert_eq!(keys, vec![Bytes::from_static(b"a")]);
    assert_eq!(
        t.s.lease(2, true).unwrap().unwrap().1,
        vec![Bytes::from_static(b"c")]
    );
    t.apply(Request::LeaseCheckpoint(LeaseCheckpointRequest {
        checkpoints: vec![LeaseCheckpoint {
            id: 2,
            remaining_ttl: 7,
        }],
    }))
    .unwrap();
    assert_eq!(t.s.lease(2, false).unwrap().unwrap().0.remaining, 7);
    // Revoke: every attached key goes in one revision.
    t.apply(with_lease("d", 2)).unwrap(); // 7
    match t
        .apply(Request::LeaseRevoke(LeaseRevokeRequest { id: 2 }))
        .unwrap()
    {
        WriteResponse::LeaseRevoke(r) => assert_eq!(r.header.unwrap().revision, 8),
        o => panic!("{o:?}"),
    }
    let ev = t.s.events(8, 8).unwrap();
    assert_eq!(ev.len(), 2);
    assert_eq!(t.get(rng("c", "e")).unwrap().count, 0);
    assert!(t.s.lease(2, false).unwrap().is_none());
    assert_eq!(
        t.apply(Request::LeaseRevoke(LeaseRevokeRequest { id: 2 }))
            .unwrap_err(),
        RequestError::LeaseNotFound
    );
    assert_eq!(
        t.s.leases()
            .unwrap()
            .iter()
            .map(|l| l.id)
            .collect::<Vec<_>>(),
        vec![1]
    );
}

#[test]
fn hash_kv_is_deterministic_and_bounded_by_revision() {
    let (mut a, mut b) = (T::new(), T::new());
    for t in [&mut a, &mut b] {
        t.put("x", "1");
        t.put("y", "2");
        t.put("x", "3");
    }
    // Same history -> same hash at every revision; a later write changes only later hashes.
    let at3 = a.s.hash_kv(3).unwrap().unwrap();
    assert_eq!(at3, b.s.hash_kv(3).unwrap().unwrap());
    assert_eq!((at3.hash_revision, at3.compact_revision), (3, 0));
    b.put("z", "4");
    assert_eq!(b.s.hash_kv(3).unwrap().unwrap(), at3);
    assert_ne!(
        b.s.hash_kv(0).unwrap().unwrap().hash,
        a.s.hash_kv(0).unwrap().unwrap().hash
    );
    assert_eq!(b.s.hash_kv(0).unwrap().unwrap().hash_revision, 5);
    assert_ne!(a.s.hash_kv(2).unwrap().unwrap().hash, at3.hash);
    assert_eq!(a.s.hash_kv(9).unwrap(), Err(RequestError::FutureRevision));
    a.apply(Request::Compaction(CompactionRequest {
        revision: 3,
        physical: true,
    }))
    .unwrap();
    assert_eq!(a.s.hash_kv(3).unwrap(), Err(RequestError::Compacted));
    assert_eq!(a.s.hash_kv(4).unwrap().unwrap().compact_revision, 3);
    assert_eq!(a.s.hash_all().unwrap(), a.s.hash_all().unwrap());
}

/// Applies the same history to a fresh store and records compaction point `rev` in its `meta`
/// by hand, as a crash right after applying a compaction leaves it: nothing deleted yet.
fn compacted_not_purged(history: impl Fn(&mut T), rev: i64) -> T {
    let mut t = T::new();
    history(&mut t);
    let d = t.s.db();
    d.meta
        .insert(META_COMPACT_REV, rev.to_be_bytes().to_vec())
        .unwrap();
    t.s.compacted.store(rev, Ordering::Release);
    t
}

fn history_with_tombstones(t: &mut T) {
    t.put("a", "1"); // 2
    t.put("a", "2"); // 3
    t.put("b", "1"); // 4
    t.apply(Request::DeleteRange(DeleteRangeRequest {
        key: Bytes::from_static(b"b"),
        ..Default::default()
    }))
    .unwrap(); // 5
    t.put("c", "1"); // 6
    t.put("a", "3"); // 7
}

/// Compaction at apply only records the point; the hash of the kept history is the same
/// before and after the background deletion, so members compare equal whatever its progress.
#[test]
fn hash_kv_does_not_depend_on_the_deletion_progress() {
    let pending = compacted_not_purged(history_with_tombstones, 5);
    let mut done = T::new();
    history_with_tombstones(&mut done);
    done.apply(Request::Compaction(CompactionRequest {
        revision: 5,
        physical: true,
    }))
    .unwrap();
    done.s
        .wait_purged(5, std::time::Duration::from_secs(30))
        .unwrap();
    assert_eq!(done.s.db().index.iter().count(), 3, "a@3, c@6, a@7");
    assert!(
        pending.s.db().index.iter().count() > 3,
        "nothing deleted yet"
    );
    for rev in [0, 6, 7] {
        assert_eq!(
            pending.s.hash_kv(rev).unwrap().unwrap(),
            done.s.hash_kv(rev).unwrap().unwrap(),
            "at {rev}"
        );
    }
    // A changed kept revision changes the hash.
    let mut other = compacted_not_purged(
        |t| {
            history_with_tombstones(t);
        },
        4,
    );
    other.put("z", "1");
    assert_ne!(
        other.s.hash_kv(7).unwrap().unwrap().hash,
        done.s.hash_kv(7).unwrap().unwrap().hash
    );
}

/// A compaction point recorded without its deletion (a crash) is deleted after a reopen.
#[test]
fn reopen_resumes_an_unfinished_compaction() {
    let t = compacted_not_purged(history_with_tombstones, 5);
    let before = t.s.hash_kv(0).unwrap().unwrap();
    let dir = t._dir;
    drop(t.s);
    let s = MvccStore::open(dir.path()).unwrap();
    s.wait_purged(5, std::time::Duration::from_secs(30))
        .unwrap();
    assert_eq!(s.db().index.iter().count(), 3);
    assert_eq!(s.hash_kv(0).unwrap().unwrap(), before);
    // A point that was never scheduled times out rather than passing.
    assert!(
        s.wait_purged(6, std::time::Duration::from_millis(10))
            .is_err()
    );
}

#[test]
fn key_count_follows_puts_deletes_and_reopen() {
    let mut t = T::new();
    t.put("a", "1");
    t.put("b", "1");
    t.put("a", "2");
    assert_eq!(t.s.key_count(), 2);
    t.apply(Request::DeleteRange(DeleteRangeRequest {
        key: Bytes::from_static(b"a"),
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(t.s.key_count(), 1);
    t.put("a", "3");
    assert_eq!(t.s.key_count(), 2);
    let dir = t._dir.path().to_owned();
    drop(t.s);
    assert_eq!(MvccStore::open(&dir).unwrap().key_count(), 2);
}

/// Auth changes go through apply, are refused with etcd's errors, are checked at apply for
/// writes, and survive a reopen.
#[test]
fn auth_changes_apply_check_writes_and_persist() {
    use etch_protocol::authpb::{Permission, permission::Type};
    use etch_protocol::etcdserverpb::*;
    use etch_protocol::etchpb::AuthInfo;
    let mut t = T::new();
    let as_user = |t: &mut T, who: Option<&AuthInfo>, r: Request| {
        t.index += 1;
        t.s.apply(t.index, 1, who, Some(&r))
            .unwrap()
            .unwrap()
            .response
    };
    let root = AuthInfo {
        username: "root".into(),
        auth_revision: 0,
    };
    assert_eq!(
        as_user(&mut t, None, Request::AuthEnable(AuthEnableRequest {})).unwrap_err(),
        RequestError::RootUserNotExist
    );
    let add = |name: &str| {
        Request::UserAdd(AuthUserAddRequest {
            name: name.into(),
            hashed_password: "$2b$hash".into(),
            ..Default::default()
        })
    };
    as_user(&mut t, None, add("root")).unwrap();
    assert_eq!(
        as_user(&mut t, None, add("root")).unwrap_err(),
        RequestError::UserAlreadyExist
    );
    assert_eq!(
        as_user(&mut t, None, Request::AuthEnable(AuthEnableRequest {})).unwrap_err(),
        RequestError::RootRoleNotExist
    );
    let grant = |user: &str, role: &str| {
        Request::UserGrantRole(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
    };
    as_user(&mut t, None, grant("root", "root")).unwrap();
    as_user(&mut t, None, add("u")).unwrap();
    as_user(
        &mut t,
        None,
        Request::RoleAdd(AuthRoleAddRequest { name: "r".into() }),
    )
    .unwrap();
    as_user(
        &mut t,
        None,
        Request::RoleGrantPermission(AuthRoleGrantPermissionRequest {
            name: "r".into(),
            perm: Some(Permission {
                perm_type: Type::Readwrite as i32,
                key: Bytes::from_static(b"/a/"),
                range_end: Bytes::from_static(b"/a0"),
            }),
        }),
    )
    .unwrap();
    as_user(&mut t, None, grant("u", "r")).unwrap();
    as_user(&mut t, None, Request::AuthEnable(AuthEnableRequest {})).unwrap();
    let rev = t.s.auth().revision();
    assert!(t.s.auth().enabled());
    let u = AuthInfo {
        username: "u".into(),
        auth_revision: rev,
    };
    let root = AuthInfo {
        auth_revision: rev,
        ..root
    };
    // Writes are checked at apply; the server's own requests (None) are not.
    as_user(&mut t, Some(&u), Request::Put(put("/a/x", "1"))).unwrap();
    assert_eq!(
        as_user(&mut t, Some(&u), Request::Put(put("/b/x", "1"))).unwrap_err(),
        RequestError::PermissionDenied
    );
    assert_eq!(
        as_user(&mut t, Some(&u), add("v")).unwrap_err(),
        RequestError::PermissionDenied
    );
    assert_eq!(
        as_user(&mut t, None, add("v")).unwrap_err(),
        RequestError::UserEmpty
    );
    assert_eq!(
        as_user(
            &mut t,
            Some(&root),
            Request::UserDelete(AuthUserDeleteRequest {
                name: "root".into()
            })
        )
        .unwrap_err(),
        RequestError::InvalidAuthMgmt
    );
    // An identity checked before an auth change is stale.
    as_user(
        &mut t,
        Some(&root),
        Request::RoleAdd(AuthRoleAddRequest { name: "r2".into() }),
    )
    .unwrap();
    assert_eq!(
        as_user(&mut t, Some(&u), Request::Put(put("/a/x", "2"))).unwrap_err(),
        RequestError::AuthOldRevision
    );
    let u = AuthInfo {
        username: "u".into(),
        auth_revision: t.s.auth().revision(),
    };
    let token = match as_user(
        &mut t,
        Some(&u),
        Request::Authenticate(etch_protocol::etchpb::InternalAuthenticate {
            name: "u".into(),
            token: "abc".into(),
        }),
    )
    .unwrap()
    {
        WriteResponse::Auth { token, .. } => token,
        o => panic!("{o:?}"),
    };
    assert_eq!(token, Some(format!("abc.{}", t.index)));
    let rev = t.s.auth().revision();
    let path = t._dir.path().to_owned();
    drop(t.s);
    let s = MvccStore::open(&path).unwrap();
    let a = s.auth();
    assert!(a.enabled());
    assert_eq!(a.revision(), rev);
    assert_eq!(a.user_names(), vec!["root".to_owned(), "u".to_owned()]);
    assert_eq!(a.role_names(), vec!["r".to_owned(), "r2".to_owned()]);
    assert!(a.has_role("u", "r"));
}

#[test]
fn a_run_of_puts_in_one_batch_applies_as_one_by_one() {
    // The same entries, one store applying them one by one, the other as one run: the same
    // answers, revisions, key count, applied index and contents.
    let reqs: Vec<Request> = vec![
        Request::Put(put("a", "1")),
        Request::Put(put("b", "1")),
        // The same key again: version 2, created by the first Put of the run.
        Request::Put(PutRequest {
            prev_kv: true,
            ..put("a", "2")
        }),
        // Fails (no such lease): consumes its entry and changes nothing.
        Request::Put(PutRequest {
            lease: 42,
            ..put("c", "1")
        }),
        // Reads the run's own write of "b".
        Request::Put(PutRequest {
            ignore_value: true,
            ..put("b", "")
        }),
        // A key that does not exist yet: ignore_value fails.
        Request::Put(PutRequest {
            ignore_value: true,
            ..put("z", "")
        }),
    ];
    let mut one = T::new();
    one.put("before", "x");
    let want: Vec<_> = reqs.iter().map(|r| one.apply(r.clone())).collect();
    let mut run = T::new();
    run.put("before", "x");
    // Entry 2 (the first Put) was applied before a restart: skipped.
    let mut got = vec![run.apply(reqs[0].clone())];
    // With the newest-entry map filled, the run's keys are looked up in it first, one place
    // per entry, none for the skipped one, so a later entry never takes another's.
    wait_filled(&run.s);
    let entries = put_entries(&reqs, 2);
    let looked_up = run.s.look_up_run(&entries);
    assert_eq!(looked_up.len(), entries.len());
    assert!(looked_up[0].is_none(), "at or below the applied index");
    for (e, l) in entries.iter().zip(&looked_up).skip(1) {
        let Request::Put(p) = e.request else {
            unreachable!("a run of Puts")
        };
        let (at, _) = l.expect("looked up");
        assert_eq!(at, run.s.db().newest.hashes(&keys::index_prefix(&p.key)));
    }
    let applied = run.s.apply_puts(&entries).unwrap();
    assert!(applied[0].is_none(), "at or below the applied index");
    got.extend(applied.into_iter().skip(1).map(|a| a.unwrap().response));
    assert_eq!(format!("{got:?}"), format!("{want:?}"));
    assert_eq!(run.s.current_revision(), one.s.current_revision());
    assert_eq!(run.s.key_count(), one.s.key_count());
    assert_eq!(run.s.applied_index(), one.s.applied_index());
    assert_eq!(run.s.hash_all().unwrap(), one.s.hash_all().unwrap());
    let all = rng("\0", "\u{7f}");
    assert_eq!(
        format!("{:?}", run.get(all.clone())),
        format!("{:?}", one.get(all))
    );
    // A store reopened after the run holds it (one atomic commit).
    let dir = run._dir;
    drop(run.s);
    let s = MvccStore::open(dir.path()).unwrap();
    assert_eq!(s.current_revision(), one.s.current_revision());
    assert_eq!(s.applied_index(), one.s.applied_index());
}

#[test]
fn a_long_run_of_keys_in_no_order_reads_back_as_one_by_one() {
    // Several hundred puts in one fjall batch, keys scrambled (some written twice, all sharing
    // a prefix), so the key index's inserts are prefetched in many chunks of 32 between the
    // `kv` items (vendor/fjall/ETCH-PATCH.md): every key, version and past revision reads as
    // from a store that applied them one by one.
    let reqs: Vec<Request> = (0..600u32)
        .map(|i| {
            let k = format!("/registry/pods/ns/p{:04}", (i * 7919) % 450);
            Request::Put(put(&k, &i.to_string()))
        })
        .collect();
    let mut one = T::new();
    one.put("before", "x");
    for r in &reqs {
        one.apply(r.clone()).unwrap();
    }
    let mut run = T::new();
    run.put("before", "x");
    // With the newest-entry map filled, the run's keys are looked up in it together first
    // (`MvccStore::look_up_run`); a key's second write must read its first from the run.
    wait_filled(&run.s);
    let applied = run.s.apply_puts(&put_entries(&reqs, 2)).unwrap();
    assert!(applied.iter().all(|a| a.as_ref().unwrap().response.is_ok()));
    assert_eq!(run.s.current_revision(), one.s.current_revision());
    assert_eq!(run.s.key_count(), 451);
    assert_eq!(run.s.hash_all().unwrap(), one.s.hash_all().unwrap());
    let all = rng("\0", "\u{7f}");
    let got = run.get(all.clone()).unwrap();
    assert_eq!(format!("{got:?}"), format!("{:?}", one.get(all).unwrap()));
    let mut sorted = keys(&got);
    sorted.sort();
    assert_eq!(keys(&got), sorted);
    // A key written twice: version 2; at a revision between its writes, its first value.
    let twice = got
        .kvs
        .iter()
        .find(|kv| kv.version == 2)
        .expect("a key written twice");
    let at = RangeRequest {
        revision: twice.create_revision,
        ..rng(std::str::from_utf8(&twice.key).unwrap(), "")
    };
    let old = run.get(at.clone()).unwrap();
    assert_eq!(old.kvs[0].version, 1);
    assert_eq!(format!("{old:?}"), format!("{:?}", one.get(at).unwrap()));
}

#[test]
fn a_key_moved_between_leases_within_one_run_ends_on_the_last() {
    // One fjall batch both attaches "a" to lease 7 and detaches it again (then attaches it to
    // lease 8): the batch's last write of each lease-key record wins, as one by one.
    let grant =
        |id| Request::LeaseGrant(etch_protocol::etcdserverpb::LeaseGrantRequest { ttl: 60, id });
    let mut t = T::new();
    t.apply(grant(7)).unwrap();
    t.apply(grant(8)).unwrap();
    let reqs = [
        Request::Put(PutRequest {
            lease: 7,
            ..put("a", "1")
        }),
        Request::Put(put("a", "2")),
        Request::Put(PutRequest {
            lease: 7,
            ..put("a", "3")
        }),
        Request::Put(PutRequest {
            lease: 8,
            ..put("a", "4")
        }),
        Request::Put(PutRequest {
            lease: 7,
            ..put("b", "1")
        }),
    ];
    let entries = put_entries(&reqs, 3);
    assert!(reqs.iter().all(|r| t.s.batchable(Some(r))));
    let applied = t.s.apply_puts(&entries).unwrap();
    assert!(applied.iter().all(|a| a.as_ref().unwrap().response.is_ok()));
    let keys = |id| t.s.lease(id, true).unwrap().unwrap().1;
    assert_eq!(keys(7), vec![Bytes::from_static(b"b")]);
    assert_eq!(keys(8), vec![Bytes::from_static(b"a")]);
    // Revoking lease 7 deletes "b" only.
    t.index = 7;
    t.apply(Request::LeaseRevoke(
        etch_protocol::etcdserverpb::LeaseRevokeRequest { id: 7 },
    ))
    .unwrap();
    let r = t.get(rng("a", "c")).unwrap();
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(r.kvs[0].key, Bytes::from_static(b"a"));
    assert_eq!(r.kvs[0].lease, 8);
}

/// `reqs` as the entries of one run from raft index `first` (term 1, no auth).
fn put_entries(reqs: &[Request], first: u64) -> Vec<PutEntry<'_>> {
    reqs.iter()
        .zip(first..)
        .map(|(r, index)| PutEntry {
            index,
            term: 1,
            who: None,
            request: r,
        })
        .collect()
}

/// Waits (at most 10 s) until the store's newest-revision map is filled.
fn wait_filled(s: &MvccStore) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !s.db().newest.filled() {
        assert!(
            std::time::Instant::now() < deadline,
            "key index never filled"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn writes_after_a_reopen_find_keys_through_the_filled_newest_map() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = T {
        s: MvccStore::open(dir.path()).unwrap(),
        _dir: tempfile::tempdir().unwrap(),
        index: 0,
    };
    for i in 0..200 {
        t.put(&format!("k{i:03}"), "v");
    }
    t.put("k007", "v2");
    t.apply(Request::DeleteRange(DeleteRangeRequest {
        key: Bytes::from_static(b"k008"),
        ..Default::default()
    }))
    .unwrap();
    drop(t.s);
    t.s = MvccStore::open(dir.path()).unwrap();
    wait_filled(&t.s);
    let kv = |t: &T, k: &str| {
        t.get(RangeRequest {
            key: Bytes::copy_from_slice(k.as_bytes()),
            ..Default::default()
        })
        .unwrap()
        .kvs
        .first()
        .cloned()
    };
    let before = kv(&t, "k007").expect("k007");
    t.put("k007", "v3");
    let after = kv(&t, "k007").expect("k007");
    assert_eq!(
        (after.create_revision, after.version),
        (before.create_revision, 3)
    );
    // A deleted key starts over; a new one is created; a key written twice in one run of
    // Puts sees its first write.
    t.put("k008", "again");
    let k8 = kv(&t, "k008").expect("k008");
    assert_eq!((k8.version, k8.create_revision), (1, k8.mod_revision));
    t.put("new", "n");
    assert_eq!(kv(&t, "new").expect("new").version, 1);
    t.put("new", "n2");
    assert_eq!(kv(&t, "new").expect("new").version, 2);
    assert_eq!(t.s.key_count(), 201);
}

#[test]
fn flushed_memtables_leave_nothing_sealed_and_a_reopen_keeps_every_key() {
    let mut t = T::new();
    for i in 0..500 {
        t.put(&format!("k{i:03}"), "v");
    }
    assert!(
        t.s.db().keyspaces().iter().any(|k| k.approximate_len() > 0),
        "the puts are in the memtables"
    );
    assert!(
        t.s.flush_memtables(std::time::Duration::from_secs(30))
            .unwrap(),
        "flushed within the deadline"
    );
    let d = t.s.db();
    assert!(d.keyspaces().iter().all(|k| k.sealed_memtable_count() == 0));
    // The revisions and the key index are now in tables.
    assert!(d.kv.table_count() > 0 && d.index.table_count() > 0);
    drop(d);
    let rev = t.s.current_revision();
    let path = t._dir.path().to_owned();
    drop(t.s);
    t.s = MvccStore::open(&path).unwrap();
    assert_eq!(t.s.current_revision(), rev);
    assert_eq!(t.s.key_count(), 500);
    let r = t.get(rng("k", "l")).unwrap();
    assert_eq!(r.kvs.len(), 500);
}

/// The newest-revision map's shards: shard `s` gets its share `2^((s+1)/N) - 2^(s/N)` of
/// uniformly spread key hashes, each shard's table buckets them by their own value, and a hash
/// keeps its larger revision.
#[test]
fn newest_map_shards_spread_hashes_and_keep_the_larger_revision() {
    use std::hash::{BuildHasher, Hasher};
    let hasher = std::collections::hash_map::RandomState::new();
    let shards = super::NEWEST_SHARDS;
    let total = shards * 1_000;
    let mut per_shard = vec![0usize; shards];
    for i in 0..total as u64 {
        per_shard[super::newest_shard(hasher.hash_one(i))] += 1;
    }
    // From about 690 expected in the first shard to about 1,385 in the last.
    for (s, n) in per_shard.iter().enumerate() {
        let share = |s: usize| 2f64.powf(s as f64 / shards as f64);
        let expected = total as f64 * (share(s + 1) - share(s));
        assert!(
            (*n as f64 - expected).abs() < expected * 0.2,
            "shard {s}: {n}, expected {expected:.0}"
        );
    }
    assert_eq!(super::newest_shard(0), 0);
    assert_eq!(super::newest_shard(u64::MAX), shards - 1);
    let first: usize = per_shard[..shards / 8].iter().sum();
    let last: usize = per_shard[shards - shards / 8..].iter().sum();
    assert!(
        (1.75..2.05).contains(&(last as f64 / first as f64)),
        "{first} {last}"
    );
    let mut h = super::KeyHashHasher::default();
    h.write_u64(0xDEAD_BEEF_0123_4567);
    assert_eq!(h.finish(), 0xDEAD_BEEF_0123_4567);
    let mut shard = super::NewestShard::default();
    let e = |main, check, version| {
        super::PackedNewest::pack(super::NewestEntry {
            rev: Revision { main, sub: 0 },
            check,
            iv: keys::IndexValue {
                version,
                ..Default::default()
            },
        })
    };
    let got = |shard: &super::NewestShard, h| {
        shard
            .get(&h)
            .map(|e| (e.rev().main, e.check(), e.index_value().version))
    };
    super::newest_keep(&mut shard, 7, e(5, 11, 2));
    super::newest_keep(&mut shard, 7, e(3, 11, 1));
    super::newest_keep(&mut shard, 8, e(1, 12, 1));
    assert_eq!(got(&shard, 7), Some((5, 11, 2)));
    assert_eq!(got(&shard, 8), Some((1, 12, 1)));
    // Another key with the same first hash: the entry is shared from then on, with the newer
    // revision, whichever key wrote it.
    super::newest_keep(&mut shard, 8, e(4, 13, 1));
    assert_eq!(got(&shard, 8), Some((4, super::COLLIDED, 1)));
    super::newest_keep(&mut shard, 8, e(2, 12, 2));
    assert_eq!(got(&shard, 8), Some((4, super::COLLIDED, 1)));
    super::newest_keep(&mut shard, 7, e(2, 14, 1));
    assert_eq!(got(&shard, 7), Some((5, super::COLLIDED, 2)));
}

/// A write reads a key's create revision, version and lease from the newest-entry map; when
/// the key's entry is shared with another key (their first hashes collide), it reads them
/// from the index instead, and finds them right.
#[test]
fn writes_find_a_keys_state_when_its_newest_entry_is_shared() {
    let mut t = T::new();
    wait_filled(&t.s);
    t.put("a", "1");
    t.put("a", "2");
    let at = t.s.db().newest.hashes(&keys::index_prefix(b"a"));
    let check = at.check;
    assert!(matches!(
        t.s.db().newest.get(at),
        super::NewestRev::Known(_, iv) if iv.version == 2
    ));
    // Another key's entry under a's hash, at a later revision than a's newest.
    let other = super::NewestEntry {
        rev: Revision {
            main: t.s.current_revision() + 1,
            sub: 0,
        },
        check: if check == 1 { 2 } else { 1 },
        iv: keys::IndexValue {
            version: 7,
            create_revision: 1,
            ..Default::default()
        },
    };
    t.s.db().newest.record(&[(at, other)]);
    assert!(matches!(
        t.s.db().newest.get(at),
        super::NewestRev::AtMost(_)
    ));
    let a = |t: &T| {
        t.get(RangeRequest {
            key: Bytes::from_static(b"a"),
            ..Default::default()
        })
        .unwrap()
        .kvs[0]
            .clone()
    };
    let first = a(&t);
    t.put("a", "3");
    let kv = a(&t);
    assert_eq!((kv.version, kv.create_revision), (3, first.create_revision));
    // Looked up together (a run of puts), each key reads as it does alone: a's shared entry,
    // a key the map holds as its own, a key it has never seen.
    t.put("b", "1");
    let b = t.s.db().newest.hashes(&keys::index_prefix(b"b"));
    let never = t.s.db().newest.hashes(&keys::index_prefix(b"never"));
    let mut many = Vec::new();
    t.s.db().newest.get_many(&[at, b, never], &mut many);
    assert_eq!(
        format!("{many:?}"),
        format!("{:?}", [at, b, never].map(|k| t.s.db().newest.get(k)))
    );
    assert!(matches!(many[0], super::NewestRev::AtMost(_)));
    assert!(matches!(many[1], super::NewestRev::Known(_, iv) if iv.version == 1));
    assert!(matches!(many[2], super::NewestRev::Absent));
    // A run that puts a (twice) and b: a's state comes from the index, then from the run's
    // own first write.
    let reqs = [
        Request::Put(put("a", "4")),
        Request::Put(put("b", "2")),
        Request::Put(put("a", "5")),
    ];
    let applied = t.s.apply_puts(&put_entries(&reqs, t.index + 1)).unwrap();
    assert!(applied.iter().all(|r| r.as_ref().unwrap().response.is_ok()));
    let kv = a(&t);
    assert_eq!((kv.version, kv.create_revision), (5, first.create_revision));
    let b = t.get(rng("b", "")).unwrap().kvs[0].clone();
    assert_eq!(b.version, 2);
}

/// The newest-revision map's shards grow at key counts spread over each doubling of the key
/// count, not all at one: over the second half of 400,000 keys every shard's table grows once
/// or so, and every eighth of that half holds some of those growth steps and none holds most.
#[test]
fn newest_map_shards_grow_at_spread_key_counts() {
    use std::hash::BuildHasher;
    let hasher = std::collections::hash_map::RandomState::new();
    let shards = super::NEWEST_SHARDS;
    let total = 400_000u64;
    let mut maps: Vec<super::NewestShard> = (0..shards).map(|_| Default::default()).collect();
    let entry = super::NewestEntry {
        rev: Revision { main: 1, sub: 0 },
        check: 1,
        iv: keys::IndexValue::default(),
    };
    // Growth steps in each eighth of the second half of the keys.
    let mut steps = [0usize; 8];
    for i in 0..total {
        let h = hasher.hash_one(i);
        let map = &mut maps[super::newest_shard(h)];
        let before = map.capacity();
        map.insert(h, super::PackedNewest::pack(entry));
        if map.capacity() != before && i >= total / 2 {
            steps[((i - total / 2) * 8 / (total / 2)) as usize] += 1;
        }
    }
    let all: usize = steps.iter().sum();
    assert!((shards * 3 / 4..shards * 5 / 4).contains(&all), "{steps:?}");
    assert!(
        steps.iter().all(|n| (all / 32..all / 3).contains(n)),
        "{steps:?}"
    );
}

/// The newest-entry map's packed entries (48-byte buckets) give back the entry they were made
/// from, tombstone included, also once marked shared; a sub-revision past `u32::MAX` is kept
/// as `u32::MAX`, marked shared, so it is only a guess the index confirms; a key's check
/// fits its 31 bits.
#[test]
fn newest_entries_pack_into_48_byte_buckets_and_unpack() {
    assert_eq!(std::mem::size_of::<(u64, super::PackedNewest)>(), 48);
    let entry = |sub, tombstone| super::NewestEntry {
        rev: Revision { main: 1 << 40, sub },
        check: super::CHECK_BITS,
        iv: keys::IndexValue {
            tombstone,
            create_revision: 3,
            version: i64::MAX,
            lease: -5,
        },
    };
    for tombstone in [false, true] {
        let e = entry(7, tombstone);
        let p = super::PackedNewest::pack(e);
        assert_eq!(
            (p.rev(), p.check(), p.index_value()),
            (e.rev, e.check, e.iv)
        );
    }
    let mut shard = super::NewestShard::default();
    super::newest_keep(
        &mut shard,
        1,
        super::PackedNewest::pack(entry(1 << 33, true)),
    );
    let p = shard[&1];
    assert_eq!(
        p.rev(),
        Revision {
            main: 1 << 40,
            sub: i64::from(u32::MAX)
        }
    );
    assert_eq!(p.check(), super::COLLIDED);
    assert!(p.index_value().tombstone);
    // Marked shared, an entry keeps its tombstone flag.
    super::newest_keep(&mut shard, 2, super::PackedNewest::pack(entry(1, true)));
    let mut other = entry(2, false);
    other.check = 5;
    super::newest_keep(&mut shard, 2, super::PackedNewest::pack(other));
    assert_eq!(shard[&2].check(), super::COLLIDED);
    assert!(!shard[&2].index_value().tombstone && shard[&2].rev().sub == 2);
    super::newest_keep(&mut shard, 2, super::PackedNewest::pack(entry(3, true)));
    assert!(shard[&2].index_value().tombstone && shard[&2].check() == super::COLLIDED);
    // Every key's check fits its 31 bits and is never the shared mark.
    let t = T::new();
    for i in 0..10_000u32 {
        let check = t.s.db().newest.hashes(&i.to_be_bytes()).check;
        assert!((1..=super::CHECK_BITS).contains(&check), "{check}");
    }
    // A clamped entry is only a guess, even for the key whose check it was made with.
    wait_filled(&t.s);
    let at = t.s.db().newest.hashes(b"clamped");
    let mut clamped = entry(1 << 33, false);
    clamped.check = at.check;
    t.s.db().newest.record(&[(at, clamped)]);
    assert!(matches!(
        t.s.db().newest.get(at),
        super::NewestRev::AtMost(rev) if rev.sub == i64::from(u32::MAX)
    ));
}
