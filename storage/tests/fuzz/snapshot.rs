//! Snapshot chunks (`etch_storage::mvcc::snapshot`): what a follower ingests from the leader.
//!
//! Inputs are a real export of a store with history (puts, deletes, a lease, auth records, an
//! alarm, a compaction), changed record by record (flipped or cut keys and values, dropped,
//! duplicated or moved records) or byte by byte (flips, truncation, a changed length), and
//! arbitrary bytes. A chunk the ingest refuses is an error; one it accepts is installed, and
//! then every read, hash and write on the installed store must return a value or an error,
//! never panic, in the caller's thread or in the store's background threads (compaction).
//!
//! Long run (about 8 minutes): `PROPTEST_CASES=3000 cargo test --release -p etch-storage
//! --test fuzz snapshot`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use etch_protocol::authpb::UserAddOptions;
use etch_protocol::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etch_protocol::etcdserverpb::range_request::{SortOrder, SortTarget};
use etch_protocol::etcdserverpb::request_op::Request as Op;
use etch_protocol::etcdserverpb::{
    AlarmRequest, AuthRoleAddRequest, AuthUserAddRequest, CompactionRequest, Compare,
    DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use etch_protocol::etchpb::AuthInfo;
use etch_protocol::etchpb::internal_request::Request;
use etch_storage::mvcc::MvccStore;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// One record of the chunk format: keyspace id, key, value.
type Record = (u8, Vec<u8>, Vec<u8>);

/// Set when a thread the store started panicked (its panic would not fail the test itself).
static BACKGROUND_PANIC: AtomicBool = AtomicBool::new(false);

fn watch_background_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("etch-"))
            {
                BACKGROUND_PANIC.store(true, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

fn put(key: &[u8], value: &[u8], lease: i64) -> Request {
    Request::Put(PutRequest {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        lease,
        ..Default::default()
    })
}

/// The records of an export of a store with a bit of everything.
fn source_records() -> &'static [Record] {
    static R: OnceLock<Vec<Record>> = OnceLock::new();
    R.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = MvccStore::open(dir.path()).expect("open");
        s.set_identity(1, 7).expect("identity");
        let reqs = vec![
            put(b"a", b"1", 0),
            put(b"a\0b", b"2", 0),
            put(b"b", b"3", 0),
            put(b"a", b"4", 0),
            Request::DeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(b"b"),
                ..Default::default()
            }),
            Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 2 }),
            put(b"c\xff", b"5", 2),
            Request::Compaction(CompactionRequest {
                revision: 4,
                physical: true,
            }),
            put(b"d", &[0u8; 40], 0),
            Request::RoleAdd(AuthRoleAddRequest { name: "r".into() }),
            Request::UserAdd(AuthUserAddRequest {
                name: "u".into(),
                options: Some(UserAddOptions { no_password: true }),
                ..Default::default()
            }),
            Request::Alarm(AlarmRequest {
                action: 1,
                member_id: 1,
                alarm: 2,
            }),
        ];
        for (i, r) in reqs.iter().enumerate() {
            s.apply(i as u64 + 1, 1, None, Some(r)).expect("apply");
        }
        s.wait_purged(4, Duration::from_secs(30)).expect("purged");
        let mut chunks = Vec::new();
        s.export(|c| {
            chunks.push(c);
            true
        })
        .expect("export");
        let mut out = Vec::new();
        for c in chunks {
            let mut rest = &c[..];
            while !rest.is_empty() {
                let ks = rest[0];
                let kl = u32::from_be_bytes(rest[1..5].try_into().expect("4")) as usize;
                let k = rest[5..5 + kl].to_vec();
                rest = &rest[5 + kl..];
                let vl = u32::from_be_bytes(rest[..4].try_into().expect("4")) as usize;
                let v = rest[4..4 + vl].to_vec();
                rest = &rest[4 + vl..];
                out.push((ks, k, v));
            }
        }
        assert!(out.len() > 10, "the export has records: {}", out.len());
        out
    })
}

fn encode(records: &[Record]) -> Vec<u8> {
    let mut c = Vec::new();
    for (ks, k, v) in records {
        c.push(*ks);
        c.extend_from_slice(&(k.len() as u32).to_be_bytes());
        c.extend_from_slice(k);
        c.extend_from_slice(&(v.len() as u32).to_be_bytes());
        c.extend_from_slice(v);
    }
    c
}

#[derive(Debug, Clone)]
enum RecordChange {
    FlipKey(Index, Index, u8),
    FlipValue(Index, Index, u8),
    CutKey(Index, Index),
    CutValue(Index, Index),
    ExtendKey(Index, Vec<u8>),
    Drop(Index),
    Duplicate(Index, Index),
    Keyspace(Index, u8),
}

fn record_change() -> impl Strategy<Value = RecordChange> {
    let i = any::<Index>;
    prop_oneof![
        (i(), i(), 1u8..=255).prop_map(|(r, at, m)| RecordChange::FlipKey(r, at, m)),
        (i(), i(), 1u8..=255).prop_map(|(r, at, m)| RecordChange::FlipValue(r, at, m)),
        (i(), i()).prop_map(|(r, at)| RecordChange::CutKey(r, at)),
        (i(), i()).prop_map(|(r, at)| RecordChange::CutValue(r, at)),
        (i(), vec(any::<u8>(), 1..4)).prop_map(|(r, b)| RecordChange::ExtendKey(r, b)),
        i().prop_map(RecordChange::Drop),
        (i(), i()).prop_map(|(r, to)| RecordChange::Duplicate(r, to)),
        (i(), 0u8..7).prop_map(|(r, ks)| RecordChange::Keyspace(r, ks)),
    ]
}

fn change(records: &mut Vec<Record>, c: &RecordChange) {
    if records.is_empty() {
        return;
    }
    let n = records.len();
    match c {
        RecordChange::FlipKey(r, at, m) => {
            let k = &mut records[r.index(n)].1;
            if !k.is_empty() {
                let i = at.index(k.len());
                k[i] ^= m;
            }
        }
        RecordChange::FlipValue(r, at, m) => {
            let v = &mut records[r.index(n)].2;
            if !v.is_empty() {
                let i = at.index(v.len());
                v[i] ^= m;
            }
        }
        RecordChange::CutKey(r, at) => {
            let k = &mut records[r.index(n)].1;
            let l = at.index(k.len() + 1);
            k.truncate(l);
        }
        RecordChange::CutValue(r, at) => {
            let v = &mut records[r.index(n)].2;
            let l = at.index(v.len() + 1);
            v.truncate(l);
        }
        RecordChange::ExtendKey(r, b) => records[r.index(n)].1.extend_from_slice(b),
        RecordChange::Drop(r) => {
            records.remove(r.index(n));
        }
        RecordChange::Duplicate(r, to) => {
            let rec = records[r.index(n)].clone();
            records.insert(to.index(n + 1), rec);
        }
        RecordChange::Keyspace(r, ks) => records[r.index(n)].0 = *ks,
    }
}

/// Byte-level damage of an encoded chunk.
#[derive(Debug, Clone)]
enum ByteChange {
    Flip(Index, u8),
    Truncate(Index),
    /// Overwrites 4 bytes (often a length) with a value.
    Length(Index, u32),
}

fn byte_change() -> impl Strategy<Value = ByteChange> {
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(i, m)| ByteChange::Flip(i, m)),
        any::<Index>().prop_map(ByteChange::Truncate),
        (
            any::<Index>(),
            prop_oneof![any::<u32>(), Just(u32::MAX), 0u32..64]
        )
            .prop_map(|(i, v)| ByteChange::Length(i, v)),
    ]
}

fn damage(c: &mut Vec<u8>, d: &ByteChange) {
    if c.is_empty() {
        return;
    }
    match d {
        ByteChange::Flip(i, m) => {
            let at = i.index(c.len());
            c[at] ^= m;
        }
        ByteChange::Truncate(i) => {
            let l = i.index(c.len());
            c.truncate(l);
        }
        ByteChange::Length(i, v) => {
            let at = i.index(c.len());
            let end = (at + 4).min(c.len());
            c[at..end].copy_from_slice(&v.to_be_bytes()[..end - at]);
        }
    }
}

fn key(k: &[u8]) -> Bytes {
    Bytes::copy_from_slice(k)
}

/// Everything a member does with its store after installing a snapshot.
fn exercise(s: &MvccStore) {
    let cur = s.current_revision();
    let all = |f: fn(&mut RangeRequest)| {
        let mut r = RangeRequest {
            key: key(b"\0"),
            range_end: key(b"\0"),
            ..Default::default()
        };
        f(&mut r);
        let _ = s.range(&r);
    };
    all(|_| {});
    all(|r| r.keys_only = true);
    all(|r| r.count_only = true);
    all(|r| r.limit = 1);
    all(|r| {
        r.sort_order = SortOrder::Descend as i32;
        r.sort_target = SortTarget::Value as i32;
    });
    all(|r| r.min_create_revision = 3);
    for rev in [1, cur - 1, cur, s.compact_revision()] {
        let _ = s.range(&RangeRequest {
            key: key(b"\0"),
            range_end: key(b"\0"),
            revision: rev,
            ..Default::default()
        });
    }
    for k in [&b"a"[..], b"a\0b", b"b", b"c\xff", b"d", b"\0"] {
        let _ = s.range(&RangeRequest {
            key: key(k),
            ..Default::default()
        });
        let _ = s.range(&RangeRequest {
            key: key(k),
            range_end: key(b"z"),
            ..Default::default()
        });
    }
    let _ = s.hash_kv(0);
    let _ = s.hash_kv(cur);
    let _ = s.hash_all();
    let _ = s.events(0, cur);
    let _ = s.leases();
    for id in [0, 1, 2, 3] {
        let _ = s.lease(id, true);
    }
    let _ = s.identity();
    let _ = (s.key_count(), s.applied_index(), s.auth().enabled());
    let txn = TxnRequest {
        compare: vec![Compare {
            key: key(b"a"),
            target: CompareTarget::Value as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::Value(key(b"4"))),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(Op::RequestRange(RangeRequest {
                key: key(b"a"),
                range_end: key(b"\0"),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    let _ = s.txn_read(&txn);
    // Writes, as the next raft entries would apply them (the installed applied index may be
    // anything: use indexes above it).
    let base = s.applied_index().index.saturating_add(1);
    let root = AuthInfo {
        username: "root".into(),
        auth_revision: s.auth().revision(),
    };
    let writes = [
        put(b"a", b"x", 0),
        put(b"e", b"y", 2),
        Request::Txn(TxnRequest {
            success: vec![RequestOp {
                request: Some(Op::RequestPut(PutRequest {
                    key: key(b"a"),
                    value: key(b"z"),
                    ..Default::default()
                })),
            }],
            ..txn.clone()
        }),
        Request::DeleteRange(DeleteRangeRequest {
            key: key(b"\0"),
            range_end: key(b"\0"),
            prev_kv: true,
        }),
        Request::LeaseRevoke(LeaseRevokeRequest { id: 2 }),
        Request::Compaction(CompactionRequest {
            revision: s.current_revision(),
            physical: false,
        }),
    ];
    for (i, w) in writes.iter().enumerate() {
        let who = (i % 2 == 1).then_some(&root);
        let _ = s.apply(base.saturating_add(i as u64), 1, who, Some(w));
    }
    // Let the background deletion of whatever the installed store holds run.
    let _ = s.wait_purged(s.compact_revision(), Duration::from_secs(5));
    let _ = s.range(&RangeRequest {
        key: key(b"\0"),
        range_end: key(b"\0"),
        ..Default::default()
    });
}

/// Ingests `chunks` into a fresh store; when accepted, installs and exercises it.
fn ingest_and_use(chunks: &[Vec<u8>]) -> Result<(), TestCaseError> {
    watch_background_panics();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = MvccStore::open(dir.path()).expect("open");
    s.set_identity(9, 7).expect("identity");
    let mut ingest = s.begin_ingest().expect("begin ingest");
    for c in chunks {
        if ingest.write_chunk(c).is_err() {
            ingest.abandon();
            // A refused snapshot leaves the store as it was.
            prop_assert_eq!(s.current_revision(), 1);
            prop_assert_eq!(s.identity().expect("identity"), Some((9, 7)));
            return Ok(());
        }
    }
    if s.install(ingest).is_ok() {
        prop_assert_eq!(
            s.identity().expect("identity"),
            Some((9, 7)),
            "identity kept"
        );
        exercise(&s);
    }
    drop(s);
    prop_assert!(
        !BACKGROUND_PANIC.load(Ordering::SeqCst),
        "a store thread panicked"
    );
    Ok(())
}

proptest! {
    #![proptest_config(super::config(24))]

    /// A real export changed record by record, split into two chunks anywhere.
    #[test]
    fn record_changes(changes in vec(record_change(), 0..4), split in any::<Index>()) {
        let mut records = source_records().to_vec();
        for c in &changes {
            change(&mut records, c);
        }
        let at = split.index(records.len() + 1);
        ingest_and_use(&[encode(&records[..at]), encode(&records[at..])])?;
    }

    #[test]
    fn byte_changes(changes in vec(byte_change(), 1..3)) {
        let mut c = encode(source_records());
        for d in &changes {
            damage(&mut c, d);
        }
        ingest_and_use(&[c])?;
    }

    #[test]
    fn arbitrary_chunks(chunks in vec(vec(any::<u8>(), 0..200), 1..3)) {
        ingest_and_use(&chunks)?;
    }
}

/// A record whose length runs past the chunk is refused before anything is allocated for it.
#[test]
fn lengths_past_the_chunk_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = MvccStore::open(dir.path()).expect("open");
    let mut ingest = s.begin_ingest().expect("begin ingest");
    for chunk in [
        &[0, 0xff, 0xff, 0xff, 0xff, b'k'][..],
        &[0, 0, 0, 0, 1, b'k', 0xff, 0xff, 0xff, 0xff][..],
        &[0, 0, 0, 0][..],
    ] {
        assert!(ingest.write_chunk(chunk).is_err(), "{chunk:?}");
    }
    ingest.abandon();
}
