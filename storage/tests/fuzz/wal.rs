//! WAL segments written by the WAL itself (small segments, so a history spans several), then
//! damaged once, then reopened.
//!
//! The test reads the segment files back with its own parser of the format specified in
//! `etch_storage::wal` (records, chained CRCs, seeds), so it knows where every record lies and
//! what state each prefix of the records stands for. Expected outcome of a damage whose first
//! changed byte is at offset `lo` of segment `s`:
//!
//! - inside a record of a segment that is not the last: [`Error::Corrupt`];
//! - inside a record of the last segment: a torn tail: `open` succeeds with exactly the
//!   records before that one (never a damaged one), and the repaired log reopens clean and
//!   takes appends;
//! - inside the last segment's seed record with nothing written after it (a crash while the
//!   segment was being created): the segment is re-seeded and the log takes appends;
//! - past the last record: the full log (or, outside the last segment, possibly an error).
//!
//! Long run (about 2 minutes): `PROPTEST_CASES=50000 cargo test --release -p etch-storage
//! --test fuzz wal`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use etch_storage::Error;
use etch_storage::wal::{MIN_SEGMENT_BYTES, RECORD_HEADER_BYTES, Recovered, Wal};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

/// Bytes of a seed record: header and the previous segment's crc.
const SEED_RECORD_BYTES: usize = RECORD_HEADER_BYTES + 4;

#[derive(Debug, Clone)]
enum Op {
    /// Append `n` entries of `size` bytes each.
    Entries {
        n: usize,
        size: usize,
    },
    /// Rewrite the log from an index after the release point with a new term (raft log
    /// truncation).
    Rewrite {
        at: Index,
        size: usize,
    },
    HardState,
    /// Record a release point at an index in the log; optionally delete released segments.
    Snapshot {
        at: Index,
        release: bool,
    },
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..4, prop_oneof![0usize..64, 0usize..4000])
            .prop_map(|(n, size)| Op::Entries { n, size }),
        1 => (any::<Index>(), 0usize..200).prop_map(|(at, size)| Op::Rewrite { at, size }),
        2 => Just(Op::HardState),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(at, release)| Op::Snapshot { at, release }),
        1 => Just(Op::Sync),
    ]
}

/// One change to one segment file; offsets are chosen over its written records and a bit
/// past them, where damage matters.
#[derive(Debug, Clone)]
enum Damage {
    Flip {
        seg: Index,
        at: Index,
        mask: u8,
    },
    Garbage {
        seg: Index,
        at: Index,
        bytes: Vec<u8>,
    },
    /// A lost sector: zeroes.
    Zero {
        seg: Index,
        at: Index,
        len: usize,
    },
    Truncate {
        seg: Index,
        at: Index,
    },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => (any::<Index>(), any::<Index>(), 1u8..=255)
            .prop_map(|(seg, at, mask)| Damage::Flip { seg, at, mask }),
        2 => (any::<Index>(), any::<Index>(), vec(any::<u8>(), 1..24))
            .prop_map(|(seg, at, bytes)| Damage::Garbage { seg, at, bytes }),
        2 => (any::<Index>(), any::<Index>(), 1usize..600)
            .prop_map(|(seg, at, len)| Damage::Zero { seg, at, len }),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(seg, at)| Damage::Truncate { seg, at }),
    ]
}

fn entry(index: u64, term: u64, size: usize) -> Entry {
    Entry {
        index,
        term,
        data: (0..size)
            .map(|i| (i as u64 ^ index.wrapping_mul(31) ^ term) as u8)
            .collect::<Vec<u8>>()
            .into(),
        ..Default::default()
    }
}

/// Writes `ops` through the WAL in `dir`.
fn write(dir: &Path, ops: &[Op]) {
    let (mut w, _) = Wal::open_with_segment_bytes(dir, MIN_SEGMENT_BYTES).expect("open");
    // index -> term of the current log after the release point.
    let mut log: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut last, mut snap, mut term) = (0u64, 0u64, 1u64);
    for op in ops {
        match op {
            Op::Entries { n, size } => {
                let es: Vec<Entry> = (1..=*n as u64)
                    .map(|i| entry(last + i, term, *size))
                    .collect();
                w.append(&es, None).expect("append");
                for e in &es {
                    log.insert(e.index, e.term);
                }
                last += *n as u64;
            }
            Op::Rewrite { at, size } if last > snap => {
                let j = snap + 1 + at.index((last - snap) as usize) as u64;
                term += 1;
                w.append(&[entry(j, term, *size)], None).expect("append");
                log.retain(|&i, _| i < j);
                log.insert(j, term);
                last = j;
            }
            Op::HardState => {
                let hs = HardState {
                    term,
                    vote: term % 3,
                    commit: last / 2,
                    ..Default::default()
                };
                w.append(&[], Some(&hs)).expect("append hard state");
            }
            Op::Snapshot { at, release } if last > snap => {
                let i = snap + 1 + at.index((last - snap) as usize) as u64;
                let mut meta = SnapshotMetadata {
                    index: i,
                    term: log[&i],
                    ..Default::default()
                };
                meta.set_conf_state(ConfState {
                    voters: vec![1, 2, 3],
                    ..Default::default()
                });
                w.append_snapshot(&meta).expect("append snapshot");
                log.retain(|&k, _| k > i);
                snap = i;
                if *release {
                    w.sync().expect("sync");
                    w.release_to(i).expect("release");
                }
            }
            Op::Sync => w.sync().expect("sync"),
            _ => {}
        }
    }
    w.sync().expect("sync");
}

/// A record as the format specifies it.
#[derive(Debug)]
struct Rec {
    off: usize,
    size: usize,
    ty: u8,
    payload: Vec<u8>,
}

#[derive(Debug)]
struct Seg {
    path: PathBuf,
    data: Vec<u8>,
    recs: Vec<Rec>,
    /// Offset after the last record.
    end: usize,
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    // `{seq:016x}-...`: name order is sequence order.
    v.sort();
    v
}

/// Parses every segment of an undamaged WAL, checking the format on the way: every segment
/// starts with a seed carrying the previous segment's last crc, CRCs chain within a segment.
fn parse(dir: &Path) -> Vec<Seg> {
    let mut segs = Vec::new();
    let mut prev_last: Option<u32> = None;
    for path in segment_paths(dir) {
        let data = fs::read(&path).expect("read segment");
        let (mut off, mut crc, mut recs) = (0usize, 0u32, Vec::new());
        while off + RECORD_HEADER_BYTES <= data.len() {
            let len = u32::from_le_bytes(data[off..off + 4].try_into().expect("4")) as usize;
            if len == 0 {
                break;
            }
            let stored = u32::from_le_bytes(data[off + 4..off + 8].try_into().expect("4"));
            let body = &data[off + 8..off + 8 + len];
            let mut h = crc32fast::Hasher::new_with_initial(crc);
            h.update(body);
            crc = h.finalize();
            assert_eq!(crc, stored, "crc chain of {}", path.display());
            recs.push(Rec {
                off,
                size: 8 + len,
                ty: body[0],
                payload: body[1..].to_vec(),
            });
            off += 8 + len;
        }
        let seed = &recs[0];
        assert_eq!((seed.ty, seed.payload.len()), (1, 4), "seed record first");
        if let Some(p) = prev_last {
            assert_eq!(seed.payload, p.to_le_bytes(), "seed continues the chain");
        }
        prev_last = Some(crc);
        segs.push(Seg {
            path,
            data,
            recs,
            end: off,
        });
    }
    segs
}

/// What recovery must produce: the documented replay of records in order.
#[derive(Debug, Default, Clone, PartialEq)]
struct State {
    snapshot: Option<SnapshotMetadata>,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
}

impl State {
    fn apply(&mut self, ty: u8, payload: &[u8]) {
        match ty {
            1 => {}
            2 => self.push(Entry::parse_from_bytes(payload).expect("entry")),
            3 => self.hard_state = Some(HardState::parse_from_bytes(payload).expect("hs")),
            4 => {
                let m = SnapshotMetadata::parse_from_bytes(payload).expect("snapshot");
                self.entries.retain(|e| e.index > m.index);
                self.snapshot = Some(m);
            }
            t => panic!("record type {t}"),
        }
    }

    fn push(&mut self, e: Entry) {
        while self.entries.last().is_some_and(|l| l.index >= e.index) {
            self.entries.pop();
        }
        self.entries.push(e);
    }

    fn of(r: &Recovered) -> State {
        State {
            snapshot: r.snapshot.clone(),
            hard_state: r.hard_state.clone(),
            entries: r.entries.clone(),
        }
    }

    fn next_index(&self) -> u64 {
        self.entries
            .last()
            .map(|e| e.index)
            .or(self.snapshot.as_ref().map(|s| s.index))
            .unwrap_or(0)
            + 1
    }
}

/// The state after the non-seed records before record `rec` of segment `seg` (all records
/// when `seg` is past the end).
fn state_before(segs: &[Seg], seg: usize, rec: usize) -> State {
    let mut st = State::default();
    for (si, s) in segs.iter().enumerate() {
        for (ri, r) in s.recs.iter().enumerate() {
            if (si, ri) >= (seg, rec) {
                return st;
            }
            st.apply(r.ty, &r.payload);
        }
    }
    st
}

#[derive(Debug)]
enum Expect {
    Ok(State),
    Corrupt,
    /// Damage outside the last segment that may or may not be looked at.
    OkOrError(State),
    /// Damage to a record of the last segment that others follow, where recovery may read it
    /// as a torn tail (a damaged length it cannot see past) or as corruption.
    TornOrCorrupt(State),
}

fn apply_damage(segs: &[Seg], d: &Damage) -> (usize, Vec<u8>) {
    let pick = |seg: &Index| seg.index(segs.len());
    let span = |s: &Seg, at: &Index| at.index(s.end + 256).min(s.data.len());
    match d {
        Damage::Flip { seg, at, mask } => {
            let s = &segs[pick(seg)];
            let mut b = s.data.clone();
            let i = span(s, at).min(b.len() - 1);
            b[i] ^= mask;
            (pick(seg), b)
        }
        Damage::Garbage { seg, at, bytes } => {
            let s = &segs[pick(seg)];
            let mut b = s.data.clone();
            let i = span(s, at);
            let n = bytes.len().min(b.len() - i);
            b[i..i + n].copy_from_slice(&bytes[..n]);
            (pick(seg), b)
        }
        Damage::Zero { seg, at, len } => {
            let s = &segs[pick(seg)];
            let mut b = s.data.clone();
            let i = span(s, at);
            let n = (*len).min(b.len() - i);
            b[i..i + n].fill(0);
            (pick(seg), b)
        }
        Damage::Truncate { seg, at } => {
            let s = &segs[pick(seg)];
            let mut b = s.data.clone();
            b.truncate(span(s, at));
            (pick(seg), b)
        }
    }
}

fn expect(segs: &[Seg], s: usize, new: &[u8]) -> Expect {
    let old = &segs[s].data;
    let last = s == segs.len() - 1;
    let full = state_before(segs, usize::MAX, 0);
    let lo = old
        .iter()
        .zip(new)
        .position(|(a, b)| a != b)
        .or((old.len() != new.len()).then(|| old.len().min(new.len())));
    let Some(lo) = lo else {
        return Expect::Ok(full);
    };
    if lo >= segs[s].end {
        return if last {
            Expect::Ok(full)
        } else {
            Expect::OkOrError(full)
        };
    }
    let ri = segs[s]
        .recs
        .iter()
        .position(|r| r.off <= lo && lo < r.off + r.size)
        .expect("a written offset lies in a record");
    if !last {
        return Expect::Corrupt;
    }
    if ri > 0 {
        // A record damaged after it was written, with valid records after it, is corruption
        // (a torn write only ever leaves the end unfinished): certainly so when the damage
        // stays within its payload, or within its stored crc, as the next record then still
        // chains from it.
        let r = &segs[s].recs[ri];
        let hi = old
            .iter()
            .zip(new)
            .rposition(|(a, b)| a != b)
            .unwrap_or(lo)
            .max(if old.len() != new.len() {
                usize::MAX
            } else {
                0
            });
        let followed = ri + 1 < segs[s].recs.len();
        let within =
            (lo >= r.off + 8 && hi < r.off + r.size) || (lo >= r.off + 4 && hi < r.off + 8);
        // An all-zero sector within the record reads as an unwritten one: a torn write.
        let end = r.off + r.size;
        let zero_sector = (r.off.div_ceil(512) * 512..end).step_by(512).any(|x| {
            x + 512 <= end
                && new
                    .get(x..x + 512)
                    .is_some_and(|b| b.iter().all(|&v| v == 0))
        });
        let within = within && !zero_sector;
        return match (followed, within) {
            (false, _) => Expect::Ok(state_before(segs, s, ri)),
            (true, true) => Expect::Corrupt,
            (true, false) => Expect::TornOrCorrupt(state_before(segs, s, ri)),
        };
    }
    // The seed of the last segment: a segment whose creation was torn is re-seeded; with
    // records after the seed it is corruption.
    if new
        .get(SEED_RECORD_BYTES..)
        .is_none_or(|r| r.iter().all(|&b| b == 0))
    {
        Expect::Ok(state_before(segs, s, 0))
    } else {
        Expect::Corrupt
    }
}

/// After a successful open: a second open finds the same state with nothing to repair, and
/// the log takes an append that survives a reopen.
fn check_repaired(dir: &Path, st: &State) {
    let (w, rec) = Wal::open_with_segment_bytes(dir, MIN_SEGMENT_BYTES).expect("second open");
    assert_eq!(&State::of(&rec), st, "second open");
    assert_eq!(rec.truncated_bytes, 0, "the first open repaired the tail");
    let mut w = w;
    let e = entry(st.next_index(), 99, 17);
    w.append(std::slice::from_ref(&e), None)
        .expect("append after repair");
    w.sync().expect("sync");
    drop(w);
    let (_, rec) = Wal::open_with_segment_bytes(dir, MIN_SEGMENT_BYTES).expect("third open");
    let mut want = st.clone();
    want.push(e);
    assert_eq!(State::of(&rec), want, "append after repair");
    assert_eq!(rec.truncated_bytes, 0);
}

proptest! {
    #![proptest_config(super::config(64))]

    #[test]
    fn damaged_segments_are_detected_or_truncated(ops in vec(op(), 1..30), d in damage()) {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), &ops);
        let segs = parse(dir.path());
        // Undamaged, recovery replays every record.
        {
            let (_, rec) = Wal::open_with_segment_bytes(dir.path(), MIN_SEGMENT_BYTES).expect("clean open");
            prop_assert_eq!(State::of(&rec), state_before(&segs, usize::MAX, 0));
            prop_assert_eq!(rec.truncated_bytes, 0);
        }
        let (s, new) = apply_damage(&segs, &d);
        fs::write(&segs[s].path, &new).expect("damage");
        let want = expect(&segs, s, &new);
        let got = Wal::open_with_segment_bytes(dir.path(), MIN_SEGMENT_BYTES);
        match (&want, got) {
            (Expect::Ok(st) | Expect::OkOrError(st), Ok((_, rec))) => {
                prop_assert_eq!(&State::of(&rec), st, "segment {} of {}", s, segs.len());
                check_repaired(dir.path(), st);
            }
            (Expect::Corrupt, Err(Error::Corrupt { file, .. })) => {
                prop_assert_eq!(file, segs[s].path.clone());
            }
            (Expect::OkOrError(_), Err(_)) => {}
            (Expect::TornOrCorrupt(st), Ok((_, rec))) => {
                prop_assert_eq!(&State::of(&rec), st, "segment {} of {}", s, segs.len());
                check_repaired(dir.path(), st);
            }
            (Expect::TornOrCorrupt(_), Err(Error::Corrupt { file, .. })) => {
                prop_assert_eq!(file, segs[s].path.clone());
            }
            (want, got) => {
                prop_assert!(false, "segment {} of {}: expected {:?}, got {:?}", s, segs.len(), want, got.map(|(_, r)| State::of(&r)));
            }
        }
    }

    /// Segment files of arbitrary bytes (and arbitrary names) never panic the recovery.
    #[test]
    fn arbitrary_segment_files(
        files in vec((0u64..4, prop_oneof![0u64..3, any::<u64>()], vec(any::<u8>(), 0..2048)), 1..4),
        valid_prefix in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (seq, first, bytes) in &files {
            let path = dir.path().join(format!("{seq:016x}-{first:016x}.wal"));
            let mut data = Vec::new();
            if valid_prefix {
                // A valid seed, so the reader gets past the first record.
                let mut h = crc32fast::Hasher::new_with_initial(0);
                h.update(&[1, 0, 0, 0, 0]);
                data.extend_from_slice(&5u32.to_le_bytes());
                data.extend_from_slice(&h.finalize().to_le_bytes());
                data.extend_from_slice(&[1, 0, 0, 0, 0]);
            }
            data.extend_from_slice(bytes);
            fs::write(&path, &data).expect("write");
        }
        if let Ok((mut w, rec)) = Wal::open_with_segment_bytes(dir.path(), MIN_SEGMENT_BYTES) {
            let st = State::of(&rec);
            // Whatever was accepted is a log the WAL can continue.
            w.append(&[entry(st.next_index(), 1, 3)], None).expect("append");
            w.sync().expect("sync");
        }
    }
}
