//! Criterion micro-benchmarks of the node's per-write pieces outside storage, so a regression
//! shows without a cluster (`cargo bench -p etch-node`; storage's are in
//! `storage/benches/write_path.rs`):
//!
//! - `peer_frame/encode/64` and `peer_frame/decode/64`: a leader's append (`MsgAppend` with 64
//!   entries of 300 bytes, about one batch of puts) turned into a peer frame
//!   (`core::peer::outbound`) and a received frame decoded (`core::peer::decode`). Throughput
//!   is in entries.
//! - `watch/fanout/10000`: one put to a key 10,000 watchers watch (100 streams of 100
//!   watchers), applied to the store and fanned out (`WatchHub::advance`). Throughput is in
//!   events delivered.

#![allow(
    missing_docs,
    reason = "criterion_group! generates `pub fn benches()` without a doc comment"
)]

use std::cell::Cell;
use std::rc::Rc;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use etch_node::core::peer::{Inbound, Outbound, decode, outbound};
use etch_node::core::watch::{Sink, WatchHub, WatchLimits};
use etch_protocol::etcdserverpb::{PutRequest, WatchCreateRequest, WatchResponse};
use etch_protocol::etchpb::internal_request::Request;
use etch_storage::mvcc::MvccStore;
use raft::eraftpb::{Entry, Message, MessageType};

/// Entries in the benchmarked append.
const ENTRIES: u64 = 64;
/// Watchers of the fanned-out key: 100 streams of 100.
const STREAMS: u64 = 100;
const WATCHERS_PER_STREAM: u64 = 100;

fn append() -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = 1;
    m.to = 2;
    m.term = 3;
    m.index = 1_000;
    m.log_term = 3;
    m.commit = 1_000;
    m.entries = (1..=ENTRIES)
        .map(|i| Entry {
            index: 1_000 + i,
            term: 3,
            data: vec![9u8; 300].into(),
            ..Default::default()
        })
        .collect();
    m
}

fn peer_frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("peer_frame");
    g.throughput(Throughput::Elements(ENTRIES));
    let msg = append();
    g.bench_function(format!("encode/{ENTRIES}"), |b| {
        b.iter_batched(|| msg.clone(), outbound, BatchSize::SmallInput)
    });
    let Some(Outbound::Frame(frame)) = outbound(msg) else {
        panic!("an append travels as a frame");
    };
    g.bench_function(format!("decode/{ENTRIES}"), |b| {
        b.iter(|| match decode(frame.clone(), 1, 2) {
            Ok(Inbound::Raft(m)) => m,
            other => panic!("the frame decodes as a raft message: {other:?}"),
        })
    });
    g.finish();
}

/// A stream that always has room and counts what it is given.
#[derive(Clone, Default)]
struct Counting(Rc<Cell<u64>>);

impl Sink for Counting {
    fn try_send(&self, _r: WatchResponse) -> bool {
        self.0.set(self.0.get() + 1);
        true
    }
    fn capacity(&self) -> usize {
        usize::MAX
    }
}

fn put(key: &str) -> Request {
    Request::Put(PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from(vec![b'v'; 256]),
        ..Default::default()
    })
}

fn watch_fanout(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = MvccStore::open(dir.path()).expect("open the store");
    let mut index = 1;
    store.apply(index, 1, None, Some(&put("k"))).expect("apply");
    let mut hub: WatchHub<Counting> =
        WatchHub::new(store.current_revision(), WatchLimits::default());
    let delivered = Counting::default();
    let req = WatchCreateRequest {
        key: Bytes::from_static(b"k"),
        ..Default::default()
    };
    for stream in 0..STREAMS {
        for _ in 0..WATCHERS_PER_STREAM {
            hub.create((1, stream), delivered.clone(), &req, 0);
        }
    }
    let mut g = c.benchmark_group("watch");
    let watchers = STREAMS * WATCHERS_PER_STREAM;
    g.throughput(Throughput::Elements(watchers));
    // The `created` responses are counted already; from here on, only events.
    let created = delivered.0.get();
    let mut puts = 0u64;
    g.bench_function(format!("fanout/{watchers}"), |b| {
        b.iter(|| {
            puts += 1;
            index += 1;
            store.apply(index, 1, None, Some(&put("k"))).expect("apply");
            hub.advance(&store, store.current_revision())
                .expect("fan out");
        })
    });
    g.finish();
    assert_eq!(
        delivered.0.get() - created,
        puts * watchers,
        "every put reaches every watcher in a response of its own"
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = peer_frame, watch_fanout
}
criterion_main!(benches);
