//! Allocation bounds of the raft-rs decoders (protobuf 2.28) that read untrusted bytes: a
//! peer's `eraftpb.Message` (the node decodes `PeerFrame.raft` with it), and the WAL's
//! `Entry`, `HardState` and `SnapshotMetadata` records, and configuration-change entries.
//! Decoding `n` bytes must not hold more than [`MESSAGE_BYTES_PER_INPUT_BYTE`]` * n` plus
//! [`PROTOBUF_READ_AHEAD_BYTES`]: protobuf 2.28 reserves a `bytes` field's claimed length,
//! up to 10,000,000 bytes, before reading it (its `READ_RAW_BYTES_MAX_ALLOC`), so a 5-byte
//! input can briefly cost ~10 MB; the bound pins that it is never more. Parsing from `Bytes`
//! (`parse_from_carllerche_bytes`) does not avoid it: unknown length-delimited fields are
//! still read into a `Vec` reserved to their claimed length.
//!
//! Allocation counters are process-wide, so this file holds ONE test running the cases in
//! sequence, each decode under an allocator limit of its bound above the baseline. An
//! allocation past it aborts the process ("memory allocation of N bytes failed"); the cases
//! come from a fixed seed (or `PROPTEST_RNG_SEED`), so rerunning reproduces it.
//!
//! Long run:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test --release -p etch-storage --test decoder_alloc
//! ```

use std::alloc::System;

use cap::Cap;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, Entry, HardState, Message, Snapshot, SnapshotMetadata,
};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// The seed of the cases unless `PROPTEST_RNG_SEED` is set.
const SEED: u64 = 0x00e7_c4a1_10c6;

/// Bytes of decoded message per input byte a decode may hold at its peak (a repeated message
/// of empty entries costs a ~150-byte struct per 2 input bytes, in a `Vec` that doubles).
const MESSAGE_BYTES_PER_INPUT_BYTE: usize = 256;

/// Fixed allowance for small buffers (error values, first `Vec` capacities).
const SLACK_BYTES: usize = 64 << 10;

/// protobuf 2.28's read-ahead reservation for one `bytes` field read from a slice
/// (10,000,000 bytes) plus small buffers.
const PROTOBUF_READ_AHEAD_BYTES: usize = 10_000_000 + SLACK_BYTES;

fn runner(default_cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let mut c = Config::with_cases(cases);
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(SEED);
    }
    TestRunner::new(c)
}

/// Runs `f` with at most `bound` bytes allocatable above what is allocated now.
fn within<T>(bound: usize, f: impl FnOnce() -> T) -> T {
    let base = ALLOC.allocated();
    ALLOC
        .set_limit(base + bound)
        .expect("the limit is above what is allocated");
    let out = f();
    ALLOC.set_limit(usize::MAX).expect("lifting the limit");
    out
}

fn decode_bounded(bytes: &[u8]) -> Result<(), TestCaseError> {
    let bound = MESSAGE_BYTES_PER_INPUT_BYTE * bytes.len() + PROTOBUF_READ_AHEAD_BYTES;
    within(bound, || {
        let _ = Message::parse_from_bytes(bytes);
        let _ = Entry::parse_from_bytes(bytes);
        let _ = HardState::parse_from_bytes(bytes);
        let _ = SnapshotMetadata::parse_from_bytes(bytes);
        let _ = Snapshot::parse_from_bytes(bytes);
        let _ = ConfChange::parse_from_bytes(bytes);
        let _ = ConfChangeV2::parse_from_bytes(bytes);
    });
    // From `Bytes` the same: known `bytes` fields are sliced, but unknown length-delimited
    // fields are still read into a reserved `Vec`.
    let input = bytes::Bytes::copy_from_slice(bytes);
    within(bound, || {
        let _ = Message::parse_from_carllerche_bytes(&input);
        let _ = Entry::parse_from_carllerche_bytes(&input);
    });
    Ok(())
}

/// A valid `Message` with entries, to be damaged.
fn message() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u64>(),
        vec((any::<u64>(), vec(any::<u8>(), 0..32)), 0..6),
    )
        .prop_map(|(index, entries)| {
            let mut m = Message {
                index,
                ..Default::default()
            };
            m.set_entries(
                entries
                    .into_iter()
                    .map(|(i, data)| Entry {
                        index: i,
                        data: data.into(),
                        ..Default::default()
                    })
                    .collect::<Vec<_>>()
                    .into(),
            );
            m.write_to_bytes().expect("encodes")
        })
}

#[test]
fn raft_decoders_allocate_within_their_bounds() {
    let mut r = runner(1024);
    r.run(&vec(any::<u8>(), 0..512), |b| decode_bounded(&b))
        .expect("arbitrary bytes");

    // Valid messages with one varint overwritten (often a length made huge) or truncated.
    let mut r = runner(1024);
    r.run(
        &(message(), any::<Index>(), any::<u64>(), any::<bool>()),
        |(mut b, at, v, truncate)| {
            if !b.is_empty() {
                let i = at.index(b.len());
                if truncate {
                    b.truncate(i);
                } else {
                    let mut x = Vec::new();
                    let mut v = v;
                    while v >= 0x80 {
                        x.push(v as u8 | 0x80);
                        v >>= 7;
                    }
                    x.push(v as u8);
                    let end = (i + x.len()).min(b.len());
                    b.splice(i..end, x);
                }
            }
            decode_bounded(&b)
        },
    )
    .expect("damaged messages");
}
