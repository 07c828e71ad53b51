//! Criterion micro-benchmarks of the storage half of a write, so a regression shows without a
//! cluster (`cargo bench -p etch-storage`; docs/performance.md lists them beside the cluster
//! benchmarks):
//!
//! - `wal/append_sync/N`: one WAL record batch of N entries (256-byte payloads) and a hard
//!   state, appended and fsynced (`Wal::append` + `Wal::sync`), as the WAL actor writes one
//!   Ready. Throughput is in entries.
//! - `apply/new_keys/100`: `MvccStore::apply_puts` of a run of 100 Puts of keys never written
//!   (16-byte keys, 256-byte values) on a store already holding 200,000 keys; every iteration
//!   adds 100 more, so the keyspace grows as the benchmark runs (to several hundred thousand
//!   keys: the start of the one-member load of `tools/scripts/bench-writes.sh`, without raft;
//!   the store still largely fits in fjall's memtables and cache, unlike 1,000,000 keys).
//! - `apply/existing_keys/100`: the same run size overwriting keys the store holds (each Put
//!   looks its key's newest revision up).
//!
//! The stores and WAL live in a temporary directory on the machine's disk: fsync costs what it
//! costs there.

#![allow(
    missing_docs,
    reason = "criterion_group! generates `pub fn benches()` without a doc comment"
)]

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use etch_protocol::etcdserverpb::PutRequest;
use etch_protocol::etchpb::internal_request::Request;
use etch_storage::mvcc::{MvccStore, PutEntry};
use etch_storage::wal::Wal;
use raft::eraftpb::{Entry, HardState};

/// Bytes of each value and WAL entry payload: the etcd benchmark's `--val-size 256`.
const VALUE_BYTES: usize = 256;
/// Keys in the store before the apply benchmarks measure.
const PRELOADED_KEYS: u64 = 200_000;
/// Puts per `apply_puts` run.
const RUN: u64 = 100;

fn wal(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal");
    for n in [1u64, 64, 512] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (mut wal, _) = Wal::open(dir.path()).expect("open the WAL");
        let mut index = 0u64;
        g.throughput(Throughput::Elements(n));
        g.bench_function(format!("append_sync/{n}"), |b| {
            b.iter_batched(
                || {
                    let entries: Vec<Entry> = (0..n)
                        .map(|_| {
                            index += 1;
                            Entry {
                                index,
                                term: 1,
                                data: vec![7u8; VALUE_BYTES].into(),
                                ..Default::default()
                            }
                        })
                        .collect();
                    let hs = HardState {
                        term: 1,
                        commit: index,
                        ..Default::default()
                    };
                    (entries, hs)
                },
                |(entries, hs)| {
                    wal.append(&entries, Some(&hs)).expect("append");
                    wal.sync().expect("fsync");
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The etcd benchmark's key for number `i`: 16 bytes, the number's decimal digits padded.
fn key(i: u64) -> Bytes {
    Bytes::from(format!("{i:016}"))
}

/// Puts of keys `first..first + RUN`.
fn puts(first: u64) -> Vec<Request> {
    (first..first + RUN)
        .map(|i| {
            Request::Put(PutRequest {
                key: key(i),
                value: Bytes::from(vec![b'v'; VALUE_BYTES]),
                ..Default::default()
            })
        })
        .collect()
}

/// Applies `reqs` as raft entries from `index` on, returning the next index.
///
/// # Panics
/// If an entry is skipped or its Put refused: the benchmark would time a no-op.
fn apply(store: &MvccStore, reqs: &[Request], index: u64) -> u64 {
    let entries: Vec<PutEntry<'_>> = reqs
        .iter()
        .zip(index..)
        .map(|(r, index)| PutEntry {
            index,
            term: 1,
            who: None,
            request: r,
        })
        .collect();
    for a in store.apply_puts(&entries).expect("apply") {
        assert!(a.is_some_and(|a| a.response.is_ok()), "every Put applies");
    }
    index + reqs.len() as u64
}

fn apply_puts(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = MvccStore::open(dir.path()).expect("open the store");
    let mut index = 1;
    for first in (0..PRELOADED_KEYS).step_by(RUN as usize) {
        index = apply(&store, &puts(first), index);
    }
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(RUN));
    let mut next_key = PRELOADED_KEYS;
    g.bench_function(format!("new_keys/{RUN}"), |b| {
        b.iter_batched(
            || {
                next_key += RUN;
                puts(next_key - RUN)
            },
            |reqs| index = apply(&store, &reqs, index),
            BatchSize::SmallInput,
        )
    });
    // Existing keys, spread over the preloaded ones (a multiplicative step modulo the count).
    let mut n = 0u64;
    g.bench_function(format!("existing_keys/{RUN}"), |b| {
        b.iter_batched(
            || {
                n += 1;
                puts((n * 7_919 * RUN) % (PRELOADED_KEYS - RUN))
            },
            |reqs| index = apply(&store, &reqs, index),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = wal, apply_puts
}
criterion_main!(benches);
