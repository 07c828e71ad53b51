//! The raft-rs messages decoded from untrusted bytes with protobuf 2.28: `eraftpb.Message`
//! (what a peer sends in a `PeerFrame.raft`), `Entry`, `HardState`, `SnapshotMetadata` (WAL
//! records), `ConfChange`/`ConfChangeV2` (the data of configuration entries), `Snapshot`;
//! and the in-memory raft log ([`RaftLog`]) that raft-rs reads through its `Storage` trait,
//! driven by random operations against a model of the contract in `etch_storage::raftlog`.
//!
//! Long run (about a minute): `PROPTEST_CASES=200000 cargo test --release -p etch-storage
//! --test fuzz raft`.

use std::fmt::Debug;

use etch_storage::raftlog::RaftLog;
use etch_storage::wal::Recovered;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message, MessageType,
    Snapshot, SnapshotMetadata,
};
use raft::{GetEntriesContext, Storage, StorageError};

/// Decoding either fails or gives a message whose encoding decodes to it, twice over
/// (protobuf 2 keeps unknown fields, so they survive too; it writes them in hash-map order,
/// so the bytes of a message with several unknown fields are not a fixpoint, the message is).
fn check<M: protobuf::Message + PartialEq + Debug>(bytes: &[u8]) {
    let Ok(m) = M::parse_from_bytes(bytes) else {
        return;
    };
    let e = m.write_to_bytes().expect("a decoded message encodes");
    let again = M::parse_from_bytes(&e).expect("a re-encoded message decodes");
    assert_eq!(again, m);
    let e2 = again.write_to_bytes().expect("encodes");
    assert_eq!(e2.len(), e.len());
    assert_eq!(M::parse_from_bytes(&e2).expect("decodes"), m);
}

fn check_all(bytes: &[u8]) {
    check::<Message>(bytes);
    check::<Entry>(bytes);
    check::<HardState>(bytes);
    check::<SnapshotMetadata>(bytes);
    check::<Snapshot>(bytes);
    check::<ConfChange>(bytes);
    check::<ConfChangeV2>(bytes);
}

fn entry_strategy() -> impl Strategy<Value = Entry> {
    (
        0u64..1000,
        0u64..1000,
        vec(any::<u8>(), 0..24),
        vec(any::<u8>(), 0..4),
        0..3u8,
    )
        .prop_map(|(index, term, data, context, ty)| Entry {
            index,
            term,
            data: data.into(),
            context: context.into(),
            entry_type: match ty {
                0 => EntryType::EntryNormal,
                1 => EntryType::EntryConfChange,
                _ => EntryType::EntryConfChangeV2,
            },
            ..Default::default()
        })
}

fn message_strategy() -> impl Strategy<Value = Message> {
    (
        0..19i32,
        (any::<u64>(), any::<u64>(), 0u64..100, 0u64..100, 0u64..1000),
        vec(entry_strategy(), 0..4),
        prop_oneof![
            Just(None),
            (0u64..1000, 0u64..100, vec(1u64..5, 0..3)).prop_map(Some)
        ],
        (any::<bool>(), 0u64..1000, vec(any::<u8>(), 0..8)),
    )
        .prop_map(
            |(ty, (to, from, term, log_term, index), entries, snap, (reject, hint, ctx))| {
                let mut m = Message {
                    msg_type: MessageType::from_i32_or_default(ty),
                    to,
                    from,
                    term,
                    log_term,
                    index,
                    commit: index / 2,
                    reject,
                    reject_hint: hint,
                    context: ctx.into(),
                    ..Default::default()
                };
                m.set_entries(entries.into());
                if let Some((i, t, voters)) = snap {
                    let s = m.mut_snapshot();
                    s.data = b"etch-mvcc-stream-v1".to_vec().into();
                    let meta = s.mut_metadata();
                    meta.index = i;
                    meta.term = t;
                    meta.set_conf_state(ConfState {
                        voters,
                        ..Default::default()
                    });
                }
                m
            },
        )
}

trait OrDefault {
    fn from_i32_or_default(v: i32) -> Self;
}

impl OrDefault for MessageType {
    fn from_i32_or_default(v: i32) -> MessageType {
        <MessageType as protobuf::ProtobufEnum>::from_i32(v).unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    /// Overwrite a byte with a large varint start (often turns a length into a huge one).
    Varint(Index, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), vec(any::<u8>(), 1..6)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), any::<u64>()).prop_map(|(i, v)| Mutation::Varint(i, v)),
    ]
}

fn mutate(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        match m {
            Mutation::Flip(i, mask) if !b.is_empty() => {
                let at = i.index(b.len());
                b[at] ^= mask;
            }
            Mutation::Truncate(i) => {
                let n = i.index(b.len() + 1);
                b.truncate(n);
            }
            Mutation::Insert(i, x) => {
                let at = i.index(b.len() + 1);
                b.splice(at..at, x.iter().copied());
            }
            Mutation::Varint(i, v) if !b.is_empty() => {
                let at = i.index(b.len());
                let mut x = Vec::new();
                let mut v = *v;
                while v >= 0x80 {
                    x.push(v as u8 | 0x80);
                    v >>= 7;
                }
                x.push(v as u8);
                let end = (at + x.len()).min(b.len());
                b.splice(at..end, x);
            }
            _ => {}
        }
    }
    b
}

/// The log as the contract describes it.
#[derive(Debug, Clone)]
struct Model {
    snap: (u64, u64),
    /// (index, term) of `snap.0 + 1 ..`.
    entries: Vec<(u64, u64)>,
    applied: u64,
}

impl Model {
    fn last(&self) -> u64 {
        self.snap.0 + self.entries.len() as u64
    }
    fn term(&self, i: u64) -> Option<u64> {
        if i == self.snap.0 {
            return Some(self.snap.1);
        }
        self.entries.iter().find(|e| e.0 == i).map(|e| e.1)
    }
}

#[derive(Debug, Clone)]
enum LogOp {
    /// Append entries from an index in `(snap, last + 1]` with a term.
    Append {
        at: Index,
        n: usize,
        term_bump: u64,
    },
    CompactTo(u64),
    ApplySnapshot {
        ahead: u64,
        term_bump: u64,
    },
    SetApplied(u64),
    Entries {
        lo: u64,
        hi: u64,
        max_size: Option<u64>,
    },
    Term(u64),
    Snapshot(u64),
}

fn log_op() -> impl Strategy<Value = LogOp> {
    prop_oneof![
        3 => (any::<Index>(), 1usize..5, 0u64..2)
            .prop_map(|(at, n, term_bump)| LogOp::Append { at, n, term_bump }),
        1 => (0u64..40).prop_map(LogOp::CompactTo),
        1 => (0u64..10, 0u64..2).prop_map(|(ahead, term_bump)| LogOp::ApplySnapshot { ahead, term_bump }),
        1 => (0u64..40).prop_map(LogOp::SetApplied),
        3 => (0u64..40, 0u64..42, prop_oneof![Just(None), (0u64..64).prop_map(Some)])
            .prop_map(|(lo, hi, max_size)| LogOp::Entries { lo, hi, max_size }),
        2 => (0u64..42).prop_map(LogOp::Term),
        1 => (0u64..42).prop_map(LogOp::Snapshot),
    ]
}

fn e(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8; 4].into(),
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(super::config(512))]

    #[test]
    fn arbitrary_bytes(bytes in vec(any::<u8>(), 0..256)) {
        check_all(&bytes);
    }

    #[test]
    fn mutated_messages(m in message_strategy(), muts in vec(mutation(), 0..4)) {
        let b = m.write_to_bytes().expect("encodes");
        prop_assert_eq!(&Message::parse_from_bytes(&b).expect("decodes"), &m);
        check_all(&mutate(b, &muts));
    }

    #[test]
    fn mutated_entries(en in entry_strategy(), muts in vec(mutation(), 1..4)) {
        check_all(&mutate(en.write_to_bytes().expect("encodes"), &muts));
    }

    /// A log rebuilt from what the WAL recovered answers raft-rs as its contract says, through
    /// random appends (with truncation), releases, snapshots and reads.
    #[test]
    fn raft_log_follows_its_contract(
        snap in (0u64..5, 1u64..3).prop_map(|(i, t)| (i, if i == 0 { 0 } else { t })),
        n in 0usize..8,
        ops in vec(log_op(), 0..40),
    ) {
        let mut model = Model {
            snap,
            entries: (1..=n as u64).map(|i| (snap.0 + i, snap.1)).collect(),
            applied: 0,
        };
        let rec = Recovered {
            snapshot: (snap.0 > 0).then(|| SnapshotMetadata {
                index: snap.0,
                term: snap.1,
                ..Default::default()
            }),
            hard_state: Some(HardState { term: snap.1, ..Default::default() }),
            entries: model.entries.iter().map(|&(i, t)| e(i, t)).collect(),
            truncated_bytes: 0,
        };
        let log = RaftLog::from_recovered(&rec, ConfState { voters: vec![1], ..Default::default() });
        let ctx = || GetEntriesContext::empty(false);
        for op in ops {
            match op {
                LogOp::Append { at, n, term_bump } => {
                    let first = model.snap.0 + 1 + at.index((model.last() - model.snap.0 + 1) as usize) as u64;
                    let term = model.entries.last().map_or(model.snap.1, |l| l.1) + term_bump;
                    let es: Vec<Entry> = (0..n as u64).map(|k| e(first + k, term)).collect();
                    log.append(&es);
                    model.entries.retain(|x| x.0 < first);
                    model.entries.extend(es.iter().map(|x| (x.index, x.term)));
                }
                LogOp::CompactTo(i) => {
                    let got = log.compact_to(i);
                    if i <= model.snap.0 || i > model.last() {
                        prop_assert!(got.is_none());
                    } else {
                        let t = model.term(i).expect("in the log");
                        let m = got.expect("compacted");
                        prop_assert_eq!((m.index, m.term), (i, t));
                        model.entries.retain(|x| x.0 > i);
                        model.snap = (i, t);
                    }
                }
                LogOp::ApplySnapshot { ahead, term_bump } => {
                    let meta = SnapshotMetadata {
                        index: model.last() + ahead,
                        term: model.entries.last().map_or(model.snap.1, |l| l.1) + term_bump,
                        ..Default::default()
                    };
                    log.apply_snapshot(&meta);
                    model.entries.clear();
                    model.snap = (meta.index, meta.term);
                    model.applied = model.applied.max(meta.index);
                }
                LogOp::SetApplied(i) => {
                    // raft-rs only applies what is in the log.
                    let i = i.min(model.last());
                    log.set_applied(i);
                    model.applied = model.applied.max(i);
                }
                LogOp::Entries { lo, hi, max_size } => {
                    let got = log.entries(lo, hi, max_size, ctx());
                    if lo <= model.snap.0 {
                        prop_assert!(matches!(got, Err(raft::Error::Store(StorageError::Compacted))), "{:?}", got);
                    } else if hi > model.last() + 1 || lo > hi {
                        prop_assert!(matches!(got, Err(raft::Error::Store(StorageError::Unavailable))), "{:?}", got);
                    } else {
                        let got: Vec<(u64, u64)> = got.expect("in range").iter().map(|x| (x.index, x.term)).collect();
                        let want: Vec<(u64, u64)> = model.entries.iter().copied().filter(|x| x.0 >= lo && x.0 < hi).collect();
                        prop_assert!(want.starts_with(&got), "{:?} is not a prefix of {:?}", got, want);
                        prop_assert!(max_size.is_some() || got == want);
                        prop_assert!(want.is_empty() || !got.is_empty(), "at least one entry");
                    }
                }
                LogOp::Term(i) => {
                    let got = log.term(i);
                    match model.term(i) {
                        Some(t) => prop_assert_eq!(got.ok(), Some(t)),
                        None if i < model.snap.0 => prop_assert!(matches!(got, Err(raft::Error::Store(StorageError::Compacted)))),
                        None => prop_assert!(matches!(got, Err(raft::Error::Store(StorageError::Unavailable)))),
                    }
                }
                LogOp::Snapshot(req) => {
                    let index = model.applied.max(model.snap.0);
                    match log.snapshot(req, 2) {
                        Ok(s) => {
                            prop_assert!(index >= req);
                            prop_assert_eq!(s.get_metadata().index, index);
                            prop_assert_eq!(Some(s.get_metadata().term), model.term(index));
                        }
                        Err(_) => prop_assert!(index < req || model.term(index).is_none()),
                    }
                }
            }
            prop_assert_eq!(log.first_index().expect("first"), model.snap.0 + 1);
            prop_assert_eq!(Storage::last_index(&log).expect("last"), model.last());
        }
    }
}
