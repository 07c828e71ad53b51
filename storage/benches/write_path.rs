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
//! - `keys/...`: the byte encodings every write and read goes through (`mvcc::keys`), over
//!   1,024 keys per iteration (throughput in keys): a key's index key (`index_key/zeros-8B`:
//!   8-byte keys ending in `00` bytes, which are escaped, as the etcd benchmark tool's keys
//!   end; `index_key/registry-32B`: Kubernetes-like paths without `00` bytes), an index key
//!   split back into user key and revision (`split_unescape/registry-32B`), an index value
//!   encoded and decoded (`index_value/round_trip`) and a revision's `kv` key (`kv_key`).
//! - `memtable/...`: fjall's memtable as a flush finds it (`vendor/lsm-tree`), 190,000 items
//!   (one memtable of etch's key index at a flush of a growing keyspace: random 33-byte keys,
//!   12-byte values, inserted in no order): every item read as a flush reads it
//!   (`flush_read`: `Memtable::iter_sealed`, one walk of the skiplist with overlapping cache
//!   misses; `plain_read`: `Memtable::iter` through lsm-tree's merger, as a flush read before),
//!   the memtable dropped (`drop`), and the memtable built, one insert after the other, each
//!   searching the skiplist and comparing keys at every node it visits: of those keys
//!   (`insert`, whose first four bytes differ), of 16-byte `kv` keys in revision order
//!   (`insert_revisions`), and of index keys of Kubernetes-like paths, which share their first
//!   bytes, in no order (`insert_paths`). Throughput is in items.
//!
//! The stores and WAL live in a temporary directory on the machine's disk: fsync costs what it
//! costs there. Memory comes from mimalloc, the allocator the etch binary uses.

#![allow(
    missing_docs,
    reason = "criterion_group! generates `pub fn benches()` without a doc comment"
)]

/// The etch binary's allocator (`node/src/main.rs`): frees and allocations cost here what they
/// cost in a member.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Keys per iteration of the `keys` group.
const KEYS: usize = 1024;

/// Key `i` of the `zeros-8B` set: three bytes of `i`, then five `00` bytes, as the etcd
/// benchmark tool's 8-byte keys end (a varint of the key number, zero-padded).
fn zero_padded_key(i: u32) -> Vec<u8> {
    let mut k = vec![0u8; 8];
    k[..3].copy_from_slice(&(i | 1).to_le_bytes()[..3]);
    k
}

fn key_encodings(c: &mut Criterion) {
    use etch_storage::mvcc::Revision;
    use etch_storage::mvcc::keys::{
        IndexValue, index_key, index_key_into, kv_key, split_index_key, unescape,
    };
    use std::hint::black_box;
    let zeros: Vec<Vec<u8>> = (0..KEYS as u32).map(|i| zero_padded_key(i * 97)).collect();
    let registry: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| format!("/registry/pods/default/pod-{i:06}").into_bytes())
        .collect();
    let index_keys: Vec<Vec<u8>> = registry
        .iter()
        .zip(1..)
        .map(|(k, main)| index_key(k, Revision::new(main, 0)))
        .collect();
    let mut g = c.benchmark_group("keys");
    g.throughput(Throughput::Elements(KEYS as u64));
    let mut buf = Vec::new();
    for (name, keys) in [("zeros-8B", &zeros), ("registry-32B", &registry)] {
        g.bench_function(format!("index_key/{name}"), |b| {
            b.iter(|| {
                for (k, main) in keys.iter().zip(1..) {
                    index_key_into(&mut buf, black_box(k), Revision::new(main, 0));
                    black_box(&buf);
                }
            })
        });
    }
    g.bench_function("split_unescape/registry-32B", |b| {
        b.iter(|| {
            for k in &index_keys {
                let (prefix, rev) = split_index_key(black_box(k)).expect("an index key");
                black_box((unescape(prefix).expect("an escaped key"), rev));
            }
        })
    });
    g.bench_function("index_value/round_trip", |b| {
        b.iter(|| {
            for i in 0..KEYS as i64 {
                let v = IndexValue {
                    tombstone: false,
                    create_revision: i,
                    version: 1,
                    lease: 0,
                };
                black_box(IndexValue::decode(&black_box(v.encode())));
            }
        })
    });
    g.bench_function("kv_key", |b| {
        b.iter(|| {
            for main in 0..KEYS as i64 {
                black_box(kv_key(Revision::new(black_box(main), 0), false));
            }
        })
    });
    g.finish();
}

/// Items of the `memtable` benchmarks' memtable: about what etch's key index holds when a
/// flush comes (fjall flushes every 64 MiB of journal, about 190,000 puts of 256-byte values).
const MEMTABLE_ITEMS: u64 = 190_000;

/// A memtable of [`MEMTABLE_ITEMS`] index-like items: 33-byte keys in a scrambled order
/// (a key's first 8 bytes from a multiplicative hash of its number, so no two keys share
/// their first four bytes), 12-byte values.
fn index_memtable() -> lsm_tree::Memtable {
    memtable_of((0..MEMTABLE_ITEMS).map(|i| {
        let mut k = Vec::with_capacity(33);
        k.extend_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        k.extend_from_slice(&[1u8; 9]);
        k.extend_from_slice(&(i + 1).to_be_bytes());
        k.extend_from_slice(&[0u8; 8]);
        k
    }))
}

/// A memtable of the given keys, inserted one by one in that order (sequence numbers from
/// 0), each with a 12-byte value.
fn memtable_of(keys: impl Iterator<Item = Vec<u8>>) -> lsm_tree::Memtable {
    let mt = lsm_tree::Memtable::new(1);
    for (seqno, k) in (0..).zip(keys) {
        mt.insert(lsm_tree::InternalValue::from_components(
            k,
            vec![0u8; 12],
            seqno,
            lsm_tree::ValueType::Value,
        ));
    }
    mt
}

/// [`MEMTABLE_ITEMS`] `kv` keys in revision order, as the store's `kv` keyspace takes them:
/// 16 bytes, kept inline in fjall's slices, all sharing their first four bytes.
fn revision_keys() -> impl Iterator<Item = Vec<u8>> {
    (1..=MEMTABLE_ITEMS).map(|main| {
        let main = i64::try_from(main).expect("a revision");
        etch_storage::mvcc::keys::kv_key(etch_storage::mvcc::Revision::new(main, 0), false)
    })
}

/// [`MEMTABLE_ITEMS`] index keys of Kubernetes-like paths (`/registry/pods/ns-N/pod-M`,
/// numbered in a scrambled order), all sharing their first four bytes, so every comparison
/// reads both keys' bytes.
fn path_index_keys() -> impl Iterator<Item = Vec<u8>> {
    (0..MEMTABLE_ITEMS).map(|i| {
        let n = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        let path = format!("/registry/pods/ns-{}/pod-{n}", n % 97);
        etch_storage::mvcc::keys::index_key(
            path.as_bytes(),
            etch_storage::mvcc::Revision::new(i64::try_from(i + 1).expect("a revision"), 0),
        )
    })
}

fn memtable(c: &mut Criterion) {
    use std::hint::black_box;
    let mut g = c.benchmark_group("memtable");
    g.throughput(Throughput::Elements(MEMTABLE_ITEMS));
    g.sample_size(10);
    let read = |it: &mut dyn Iterator<Item = lsm_tree::InternalValue>| {
        let mut bytes = 0usize;
        for v in it {
            bytes += v.key.user_key.len() + v.value.len();
        }
        black_box(bytes)
    };
    g.bench_function("flush_read", |b| {
        b.iter_batched(
            index_memtable,
            |mt| {
                read(&mut mt.iter_sealed());
                mt
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("plain_read", |b| {
        b.iter_batched(
            index_memtable,
            |mt| {
                let merger =
                    lsm_tree::merge::Merger::new(vec![mt.iter().map(Ok::<_, lsm_tree::Error>)]);
                read(&mut merger.map(|v| v.expect("a memtable item")));
                mt
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("drop", |b| {
        b.iter_batched(index_memtable, drop, BatchSize::PerIteration)
    });
    g.bench_function("insert", |b| b.iter_with_large_drop(index_memtable));
    g.bench_function("insert_revisions", |b| {
        b.iter_with_large_drop(|| memtable_of(revision_keys()))
    });
    g.bench_function("insert_paths", |b| {
        b.iter_with_large_drop(|| memtable_of(path_index_keys()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = wal, apply_puts, key_encodings, memtable
}
criterion_main!(benches);
