//! Request validation (`etch_storage::mvcc::validate_*`, etcd's `checkPutRequest`,
//! `checkTxnRequest`, `checkIntervals`) against arbitrary requests: nested txns, empty and
//! colliding keys, keys at and past the store's key size limit, out-of-range enum values,
//! negative limits and revisions. Every request gives `Ok` or a clean
//! [`RequestError`](etch_storage::mvcc::RequestError); the ones that pass are then served or
//! applied by a real store, which must answer without a store error or a panic (apply runs on
//! every member: a panic there stops the whole cluster on the same entry).
//!
//! Long run (about 4 minutes): `PROPTEST_CASES=5000 cargo test --release -p etch-storage
//! --test fuzz validate`.

use bytes::Bytes;
use etch_protocol::etcdserverpb::compare::TargetUnion;
use etch_protocol::etcdserverpb::request_op::Request as Op;
use etch_protocol::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use etch_protocol::etchpb::internal_request::Request;
use etch_storage::mvcc::{
    DEFAULT_MAX_TXN_OPS, MAX_KEY_BYTES, MvccStore, RequestError, validate_delete, validate_put,
    validate_range, validate_txn,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// A key: mostly short over a tiny alphabet (so keys collide), sometimes long around the
/// store's limit, with zero bytes (which the index escapes to two bytes).
#[derive(Debug, Clone)]
enum KeySpec {
    Small(Vec<u8>),
    Long { len: usize, zero_every: usize },
}

impl KeySpec {
    fn bytes(&self) -> Bytes {
        match self {
            KeySpec::Small(k) => Bytes::copy_from_slice(k),
            KeySpec::Long { len, zero_every } => (0..*len)
                .map(|i| {
                    if *zero_every > 0 && i % zero_every == 0 {
                        0
                    } else {
                        b'k'
                    }
                })
                .collect(),
        }
    }
}

fn key() -> impl Strategy<Value = KeySpec> {
    prop_oneof![
        12 => vec(prop::sample::select(b"ab\0\xff".to_vec()), 0..4).prop_map(KeySpec::Small),
        1 => (
            prop_oneof![
                Just(MAX_KEY_BYTES),
                Just(MAX_KEY_BYTES + 1),
                Just(65_517usize),
                Just(65_536usize),
                1_000usize..70_000,
            ],
            prop_oneof![Just(0usize), Just(1usize), 2usize..5],
        )
            .prop_map(|(len, zero_every)| KeySpec::Long { len, zero_every }),
    ]
}

fn range_end() -> impl Strategy<Value = KeySpec> {
    prop_oneof![
        2 => Just(KeySpec::Small(vec![])),
        1 => Just(KeySpec::Small(vec![0])),
        2 => key(),
    ]
}

fn small_i64() -> impl Strategy<Value = i64> {
    prop_oneof![-2i64..8, Just(i64::MAX), Just(i64::MIN)]
}

fn range_req() -> impl Strategy<Value = RangeRequest> {
    (
        key(),
        range_end(),
        small_i64(),
        small_i64(),
        (-1i32..4, -1i32..6),
        any::<(bool, bool, bool)>(),
        (small_i64(), small_i64(), small_i64(), small_i64()),
    )
        .prop_map(
            |(k, e, limit, revision, (order, target), (ser, ko, co), (a, b, c, d))| RangeRequest {
                key: k.bytes(),
                range_end: e.bytes(),
                limit,
                revision,
                sort_order: order,
                sort_target: target,
                serializable: ser,
                keys_only: ko,
                count_only: co,
                min_mod_revision: a,
                max_mod_revision: b,
                min_create_revision: c,
                max_create_revision: d,
            },
        )
}

fn put_req() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        vec(any::<u8>(), 0..4),
        prop_oneof![4 => Just(0i64), 1 => 1i64..3],
        any::<(bool, bool, bool)>(),
    )
        .prop_map(
            |(k, v, lease, (prev_kv, ignore_value, ignore_lease))| PutRequest {
                key: k.bytes(),
                value: v.into(),
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
}

fn delete_req() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(k, e, prev_kv)| DeleteRangeRequest {
        key: k.bytes(),
        range_end: e.bytes(),
        prev_kv,
    })
}

fn compare() -> impl Strategy<Value = Compare> {
    (
        key(),
        range_end(),
        -1i32..6,
        -1i32..5,
        prop_oneof![
            Just(None),
            small_i64().prop_map(|v| Some(TargetUnion::Version(v))),
            small_i64().prop_map(|v| Some(TargetUnion::CreateRevision(v))),
            small_i64().prop_map(|v| Some(TargetUnion::ModRevision(v))),
            vec(any::<u8>(), 0..3).prop_map(|v| Some(TargetUnion::Value(v.into()))),
            small_i64().prop_map(|v| Some(TargetUnion::Lease(v))),
        ],
    )
        .prop_map(|(k, e, target, result, u)| Compare {
            key: k.bytes(),
            range_end: e.bytes(),
            target,
            result,
            target_union: u,
        })
}

fn txn_req() -> impl Strategy<Value = TxnRequest> {
    let leaf = prop_oneof![
        1 => Just(RequestOp { request: None }),
        3 => range_req().prop_map(|r| RequestOp { request: Some(Op::RequestRange(r)) }),
        4 => put_req().prop_map(|r| RequestOp { request: Some(Op::RequestPut(r)) }),
        3 => delete_req().prop_map(|r| RequestOp { request: Some(Op::RequestDeleteRange(r)) }),
    ];
    let ops = leaf.prop_recursive(3, 24, 4, |inner| {
        (
            vec(compare(), 0..3),
            vec(inner.clone(), 0..4),
            vec(inner, 0..3),
        )
            .prop_map(|(compare, success, failure)| RequestOp {
                request: Some(Op::RequestTxn(TxnRequest {
                    compare,
                    success,
                    failure,
                })),
            })
    });
    (vec(compare(), 0..3), vec(ops.clone(), 0..5), vec(ops, 0..4)).prop_map(
        |(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        },
    )
}

#[derive(Debug, Clone)]
enum Req {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
}

fn req() -> impl Strategy<Value = Req> {
    prop_oneof![
        2 => range_req().prop_map(Req::Range),
        3 => put_req().prop_map(Req::Put),
        1 => delete_req().prop_map(Req::Delete),
        3 => txn_req().prop_map(Req::Txn),
    ]
}

fn has_writes(ops: &[RequestOp]) -> bool {
    ops.iter().any(|o| match &o.request {
        Some(Op::RequestPut(_) | Op::RequestDeleteRange(_)) => true,
        Some(Op::RequestTxn(t)) => has_writes(&t.success) || has_writes(&t.failure),
        _ => false,
    })
}

/// Applies `r` as the next raft entry: the store must answer, not fail.
fn apply(s: &MvccStore, index: &mut u64, r: Request) -> Result<(), RequestError> {
    *index += 1;
    s.apply(*index, 1, None, Some(&r))
        .expect("a validated request never makes a store error")
        .expect("a new index is applied")
        .response
        .map(drop)
}

proptest! {
    #![proptest_config(super::config(96))]

    #[test]
    fn validated_requests_are_served_without_store_errors(reqs in vec(req(), 1..8)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = MvccStore::open(dir.path()).expect("open");
        let mut index = 0;
        // Lease 1 exists; lease 2 does not.
        let _ = apply(&s, &mut index, Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 1 }));
        for r in reqs {
            match r {
                Req::Range(r) => {
                    if validate_range(&r).is_ok() {
                        let _ = s.range(&r).expect("range: no store error");
                    }
                }
                Req::Put(p) => {
                    if validate_put(&p).is_ok() {
                        let _ = apply(&s, &mut index, Request::Put(p));
                    }
                }
                Req::Delete(d) => {
                    if validate_delete(&d).is_ok() {
                        let _ = apply(&s, &mut index, Request::DeleteRange(d));
                    }
                }
                Req::Txn(t) => {
                    if validate_txn(&t, DEFAULT_MAX_TXN_OPS).is_ok() {
                        if !has_writes(&t.success) && !has_writes(&t.failure) {
                            let _ = s.txn_read(&t).expect("txn read: no store error");
                        }
                        let _ = apply(&s, &mut index, Request::Txn(t));
                    }
                }
            }
        }
        let all = RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            ..Default::default()
        };
        let r = s.range(&all).expect("no store error").expect("current revision");
        prop_assert_eq!(r.count, s.key_count());
    }

    /// A Put whose key is longer than the store takes is refused by validation and, should
    /// one reach the log anyway, by apply: never a panic in the write path.
    #[test]
    fn long_keys_are_refused_cleanly(len in MAX_KEY_BYTES - 2..MAX_KEY_BYTES + 2, zero_every in 0usize..3, in_txn in any::<bool>()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = MvccStore::open(dir.path()).expect("open");
        let p = PutRequest {
            key: KeySpec::Long { len, zero_every }.bytes(),
            ..Default::default()
        };
        let too_long = len > MAX_KEY_BYTES;
        let r = if in_txn {
            let t = TxnRequest {
                success: vec![RequestOp { request: Some(Op::RequestPut(p)) }],
                ..Default::default()
            };
            prop_assert_eq!(validate_txn(&t, DEFAULT_MAX_TXN_OPS).is_err(), too_long);
            Request::Txn(t)
        } else {
            prop_assert_eq!(validate_put(&p).err(), too_long.then_some(RequestError::KeyTooLarge));
            Request::Put(p)
        };
        let mut index = 0;
        let got = apply(&s, &mut index, r);
        prop_assert_eq!(got.err(), too_long.then_some(RequestError::KeyTooLarge));
        prop_assert_eq!(s.current_revision(), if too_long { 1 } else { 2 });
    }
}

/// The deepest Txn a client can send (prost refuses more than 100 nested messages: about 50
/// txns) is validated and applied on a 2 MiB stack, the default of the node's threads.
#[test]
fn deepest_decodable_txn_validates_and_applies_on_a_small_stack() {
    fn nest(depth: usize) -> TxnRequest {
        let mut t = TxnRequest {
            success: vec![RequestOp {
                request: Some(Op::RequestPut(PutRequest {
                    key: Bytes::from_static(b"k"),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        for _ in 1..depth {
            t = TxnRequest {
                compare: vec![Compare {
                    key: Bytes::from_static(b"k"),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(Op::RequestTxn(t)),
                }],
                failure: vec![RequestOp {
                    request: Some(Op::RequestRange(RangeRequest {
                        key: Bytes::from_static(b"k"),
                        ..Default::default()
                    })),
                }],
            };
        }
        t
    }
    let h = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let s = MvccStore::open(dir.path()).expect("open");
            let t = nest(50);
            validate_txn(&t, DEFAULT_MAX_TXN_OPS).expect("valid");
            let mut index = 0;
            apply(&s, &mut index, Request::Txn(t)).expect("applied");
            s.current_revision()
        })
        .expect("spawn");
    assert_eq!(h.join().expect("no stack overflow"), 2);
}

/// Keys longer than any stored key (their index key would not fit in a fjall key) in reads,
/// deletes and compares: answered like any absent key, never a panic (a compare or a delete
/// runs at apply, on every member).
#[test]
fn keys_past_the_index_limit_in_reads_deletes_and_compares() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = MvccStore::open(dir.path()).expect("open");
    let mut index = 0;
    for k in [&b"\0"[..], b"a", b"b"] {
        apply(
            &s,
            &mut index,
            Request::Put(PutRequest {
                key: Bytes::copy_from_slice(k),
                ..Default::default()
            }),
        )
        .expect("put");
    }
    let zeros = Bytes::from(vec![0u8; 40_000]);
    let a_long: Bytes = std::iter::once(b'a')
        .chain(std::iter::repeat_n(0u8, 40_000))
        .collect();
    let count = |key: &Bytes, end: &Bytes| {
        s.range(&RangeRequest {
            key: key.clone(),
            range_end: end.clone(),
            ..Default::default()
        })
        .expect("no store error")
        .expect("current revision")
        .count
    };
    assert_eq!(count(&zeros, &Bytes::new()), 0);
    // [40000 zeros, "\0"...): "a" and "b" (the key "\0" sorts before the long key).
    assert_eq!(count(&zeros, &Bytes::from_static(b"\0")), 2);
    // ["\0", "a" ++ 40000 zeros): "\0" and "a".
    assert_eq!(count(&Bytes::from_static(b"\0"), &a_long), 2);
    // ["a" ++ 40000 zeros, "b"\0): "b" only.
    assert_eq!(count(&a_long, &Bytes::from_static(b"b\0")), 1);
    let txn = TxnRequest {
        compare: vec![Compare {
            key: zeros.clone(),
            range_end: a_long.clone(),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: a_long.clone(),
                range_end: Bytes::from_static(b"\0"),
                prev_kv: true,
            })),
        }],
        failure: vec![],
    };
    validate_txn(&txn, DEFAULT_MAX_TXN_OPS).expect("valid");
    apply(&s, &mut index, Request::Txn(txn)).expect("txn applied");
    // The compare saw "a" (version 1 != 0): the failure branch ran, nothing deleted.
    assert_eq!(
        count(&Bytes::from_static(b"\0"), &Bytes::from_static(b"\0")),
        3
    );
    apply(
        &s,
        &mut index,
        Request::DeleteRange(DeleteRangeRequest {
            key: a_long,
            range_end: Bytes::from_static(b"\0"),
            prev_kv: false,
        }),
    )
    .expect("delete applied");
    assert_eq!(
        count(&Bytes::from_static(b"\0"), &Bytes::from_static(b"\0")),
        2
    );
}
