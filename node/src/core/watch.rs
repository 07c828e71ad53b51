//! The watch fanout core: delivers every change, in revision order, exactly once, to every
//! watcher, without ever slowing apply.
//!
//! Apply publishes only its latest revision (a coalescing channel); this actor reads the new
//! events from the store's revision-ordered `kv` keyspace, once per advance for all synced
//! watchers, and hands each watcher its matching events. Apply therefore never waits for
//! watchers and nothing is buffered without bound: a watcher whose stream cannot take a response
//! right now becomes *unsynced* and later catches up from the store at its own pace, from the
//! first revision it has not received, then rejoins the synced set (etcd's synced/unsynced
//! watcher groups; a slow stream never delays the others, etcd #17529).
//!
//! Rules kept from etcd:
//! - a watch starting below the compaction point gets a response with `compact_revision` and
//!   is canceled; so does an unsynced watcher overtaken by a compaction (never a silent gap,
//!   etcd #18089/#19179);
//! - a watch on a future revision sends nothing older (etcd #20221);
//! - all events of one revision travel in one response unless `fragment` is set and the
//!   response is over the byte limit;
//! - a progress notification never names a revision past an event the watcher has not
//!   received (etcd #15220): periodic ones go to synced watchers only; an explicit progress
//!   request answers with the lowest revision every watcher of the stream has reached.
//!
//! [`WatchHub`] has no actix, tokio or clock types; `crate::actors::watch::WatchActor` is its
//! shell.

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message as _;

use etch_protocol::etcdserverpb::watch_create_request::FilterType;
use etch_protocol::etcdserverpb::{
    RangeRequest, ResponseHeader, WatchCreateRequest, WatchResponse,
};
use etch_protocol::mvccpb::{Event, event::EventType};
use etch_storage::mvcc::MvccStore;

pub use crate::config::WatchLimits;

/// Revisions read from the store per catch-up step of one unsynced watcher.
pub const CATCH_UP_REVISIONS: i64 = 1000;

/// Where a stream's responses go; `false` when it cannot take one now.
pub trait Sink {
    /// Queues `r` without waiting.
    fn try_send(&self, r: WatchResponse) -> bool;
    /// Responses that can be queued now without waiting.
    fn capacity(&self) -> usize;
}

/// A stream is named by (connection id, stream id).
pub type StreamKey = (u64, u64);

#[derive(Debug, Clone)]
struct Watcher {
    key: Bytes,
    range_end: Bytes,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// The first revision not yet delivered.
    next_rev: i64,
    synced: bool,
    /// The `created` response has not been delivered yet.
    created_pending: bool,
}

impl Watcher {
    fn matches(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return key == self.key.as_ref();
        }
        key >= self.key.as_ref()
            && (self.range_end.as_ref() == [0] || key < self.range_end.as_ref())
    }

    /// This watcher's events among `events`: from `next_rev` on, in its range, through its
    /// filters, with `prev_kv` filled in when asked.
    fn select(&self, store: &MvccStore, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| {
                e.kv.as_ref()
                    .is_some_and(|kv| kv.mod_revision >= self.next_rev)
                    && self.wants(e)
            })
            .map(|e| {
                if self.prev_kv {
                    with_prev(store, e)
                } else {
                    e.clone()
                }
            })
            .collect()
    }

    fn wants(&self, ev: &Event) -> bool {
        let is_put = ev.r#type == EventType::Put as i32;
        if (is_put && self.no_put) || (!is_put && self.no_delete) {
            return false;
        }
        ev.kv.as_ref().is_some_and(|kv| self.matches(&kv.key))
    }
}

struct Stream<S> {
    sink: S,
    watchers: BTreeMap<i64, Watcher>,
    /// Next server-chosen watch id to try (etcd: ids count up from 0, skipping used ones).
    next_id: i64,
}

/// The fanout core: streams, their watchers, and the revision synced watchers have reached.
pub struct WatchHub<S> {
    streams: BTreeMap<StreamKey, Stream<S>>,
    /// The watchers catching up, so catch-up never scans the synced ones.
    unsynced: std::collections::BTreeSet<(StreamKey, i64)>,
    /// Synced watchers have been given every event up to this revision.
    synced_rev: i64,
    limits: WatchLimits,
}

fn response(watch_id: i64, rev: i64) -> WatchResponse {
    WatchResponse {
        header: Some(ResponseHeader {
            revision: rev,
            ..Default::default()
        }),
        watch_id,
        ..Default::default()
    }
}

/// Fills `prev_kv` from the store: the key at the revision before the event (etcd reads it the
/// same way). Left empty when that revision is compacted or the key did not exist.
fn with_prev(store: &MvccStore, ev: &Event) -> Event {
    let mut ev = ev.clone();
    if let Some(kv) = &ev.kv {
        let req = RangeRequest {
            key: kv.key.clone(),
            revision: kv.mod_revision - 1,
            ..Default::default()
        };
        if let Ok(Ok(r)) = store.range(&req) {
            ev.prev_kv = r.kvs.into_iter().next();
        }
    }
    ev
}

/// Splits `events` (ordered by revision) into responses of at most `max_bytes`, never
/// splitting one revision unless `fragment` allows it.
fn build_responses(
    watch_id: i64,
    rev: i64,
    events: Vec<Event>,
    fragment: bool,
    max_bytes: usize,
) -> Vec<WatchResponse> {
    let total: usize = events.iter().map(|e| e.encoded_len()).sum();
    if total <= max_bytes {
        let mut r = response(watch_id, rev);
        r.events = events;
        return vec![r];
    }
    let mut out = Vec::new();
    let mut cur: Vec<Event> = Vec::new();
    let mut size = 0;
    let rev_of = |e: &Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
    for e in events {
        let n = e.encoded_len();
        let boundary = cur.last().is_some_and(|l| rev_of(l) != rev_of(&e));
        if !cur.is_empty() && size + n > max_bytes && (fragment || boundary) {
            let mut r = response(watch_id, rev);
            // A split inside one revision is a fragment; the last piece of it is not.
            r.fragment = !boundary;
            r.events = std::mem::take(&mut cur);
            out.push(r);
            size = 0;
        }
        size += n;
        cur.push(e);
    }
    let mut r = response(watch_id, rev);
    r.events = cur;
    out.push(r);
    out
}

impl<S: Sink> WatchHub<S> {
    /// A hub whose synced watchers start after revision `current`.
    pub fn new(current: i64, limits: WatchLimits) -> WatchHub<S> {
        WatchHub {
            streams: BTreeMap::new(),
            unsynced: std::collections::BTreeSet::new(),
            synced_rev: current,
            limits,
        }
    }

    /// Number of streams with at least one watcher.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Number of watchers (all streams).
    pub fn watcher_count(&self) -> usize {
        self.streams.values().map(|s| s.watchers.len()).sum()
    }

    /// Number of watchers catching up from the store.
    pub fn unsynced_count(&self) -> usize {
        self.unsynced.len()
    }

    /// Creates a watch on `stream` (registering the stream with `sink` on first use) and sends
    /// its `created` response; a start below `compacted` cancels it at once with
    /// `compact_revision`, as etcd does.
    pub fn create(&mut self, stream: StreamKey, sink: S, req: &WatchCreateRequest, compacted: i64) {
        let limit = self.limits.max_watchers_per_stream;
        let current = self.synced_rev;
        let st = self.streams.entry(stream).or_insert_with(|| Stream {
            sink,
            watchers: BTreeMap::new(),
            next_id: 0,
        });
        let id = if req.watch_id != 0 {
            req.watch_id
        } else {
            while st.watchers.contains_key(&st.next_id) {
                st.next_id += 1;
            }
            st.next_id
        };
        let mut created = response(id, current);
        created.created = true;
        if st.watchers.contains_key(&id) || st.watchers.len() >= limit {
            created.canceled = true;
            created.cancel_reason = if st.watchers.len() >= limit {
                format!("etcdserver: too many watchers on one stream (limit {limit})")
            } else {
                "etcdserver: mvcc: duplicate watch ID provided".to_owned()
            };
            created.watch_id = if st.watchers.contains_key(&id) {
                -1
            } else {
                id
            };
            st.sink.try_send(created);
            return;
        }
        let start = if req.start_revision > 0 {
            req.start_revision
        } else {
            current + 1
        };
        if req.start_revision > 0 && start < compacted {
            st.sink.try_send(created);
            let mut c = response(id, current);
            c.canceled = true;
            c.compact_revision = compacted;
            st.sink.try_send(c);
            return;
        }
        let filters = &req.filters;
        let w = Watcher {
            key: req.key.clone(),
            range_end: req.range_end.clone(),
            no_put: filters.contains(&(FilterType::Noput as i32)),
            no_delete: filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: req.prev_kv,
            progress_notify: req.progress_notify,
            fragment: req.fragment,
            next_rev: start,
            synced: start > current,
            created_pending: !st.sink.try_send(created),
        };
        let w = Watcher {
            synced: w.synced && !w.created_pending,
            ..w
        };
        if !w.synced {
            self.unsynced.insert((stream, id));
        }
        st.watchers.insert(id, w);
    }

    /// Cancels watch `id` of `stream` (a `canceled` response), if it exists.
    pub fn cancel(&mut self, stream: StreamKey, id: i64) {
        self.unsynced.remove(&(stream, id));
        if let Some(st) = self.streams.get_mut(&stream)
            && st.watchers.remove(&id).is_some()
        {
            let mut r = response(id, self.synced_rev);
            r.canceled = true;
            st.sink.try_send(r);
        }
    }

    /// Answers a progress request on `stream` (watch id -1, as etcd): the lowest revision
    /// every watcher of the stream has reached, so it is never past an undelivered event.
    pub fn progress(&mut self, stream: StreamKey) {
        let Some(st) = self.streams.get(&stream) else {
            return;
        };
        let rev = st
            .watchers
            .values()
            .map(|w| (w.next_rev - 1).min(self.synced_rev))
            .min()
            .unwrap_or(self.synced_rev);
        st.sink.try_send(response(-1, rev));
    }

    /// Forgets every stream of connection `conn`.
    pub fn close_connection(&mut self, conn: u64) {
        self.streams.retain(|(c, _), _| *c != conn);
        self.unsynced.retain(|((c, _), _)| *c != conn);
    }

    /// Forgets one stream.
    pub fn close_stream(&mut self, stream: StreamKey) {
        self.streams.remove(&stream);
        self.unsynced.retain(|(s, _)| *s != stream);
    }

    /// Delivers the events of `(synced_rev, current]` to synced watchers. `compacted` is read
    /// after the events: a compaction that may have removed part of what was read cancels the
    /// watchers that needed it instead of leaving a gap.
    ///
    /// # Errors
    /// Store errors (fatal for the node).
    pub fn advance(&mut self, store: &MvccStore, current: i64) -> etch_storage::Result<()> {
        if current <= self.synced_rev {
            return Ok(());
        }
        if self.watcher_count() == self.unsynced.len() {
            // Nobody to deliver to now: unsynced watchers read from the store themselves.
            self.synced_rev = current;
            return Ok(());
        }
        let from = self.synced_rev + 1;
        let events = store.events(from, current)?;
        let compacted = store.compact_revision();
        let max_bytes = self.limits.max_response_bytes;
        for (sk, st) in self.streams.iter_mut() {
            let mut dead = Vec::new();
            for (id, w) in st.watchers.iter_mut().filter(|(_, w)| w.synced) {
                if compacted > from && w.next_rev < compacted {
                    let mut c = response(*id, current);
                    c.canceled = true;
                    c.compact_revision = compacted;
                    st.sink.try_send(c);
                    dead.push(*id);
                    continue;
                }
                let mine = w.select(store, &events);
                if mine.is_empty() {
                    w.next_rev = w.next_rev.max(current + 1);
                    continue;
                }
                let resps = build_responses(*id, current, mine, w.fragment, max_bytes);
                if send_all(&st.sink, resps) {
                    w.next_rev = current + 1;
                } else {
                    // The stream is full: catch up from the store later, from the first
                    // revision this watcher has not been given.
                    w.synced = false;
                    self.unsynced.insert((*sk, *id));
                }
            }
            for id in dead {
                st.watchers.remove(&id);
            }
        }
        self.synced_rev = current;
        Ok(())
    }

    /// One catch-up step for every unsynced watcher (streams in turn): up to
    /// [`CATCH_UP_REVISIONS`] revisions each from the store; a watcher that reaches the synced
    /// revision rejoins the synced set. Returns whether any watcher is still unsynced.
    ///
    /// # Errors
    /// Store errors (fatal for the node).
    pub fn catch_up(&mut self, store: &MvccStore) -> etch_storage::Result<bool> {
        let target = self.synced_rev;
        let max_bytes = self.limits.max_response_bytes;
        let pending: Vec<(StreamKey, i64)> = self.unsynced.iter().copied().collect();
        for (sk, id) in pending {
            let Some(st) = self.streams.get_mut(&sk) else {
                self.unsynced.remove(&(sk, id));
                continue;
            };
            let Some(w) = st.watchers.get_mut(&id) else {
                self.unsynced.remove(&(sk, id));
                continue;
            };
            // A stream with no room (a client that stopped reading) costs nothing: no store
            // read until it drains.
            if st.sink.capacity() == 0 {
                continue;
            }
            if w.created_pending {
                let mut created = response(id, target);
                created.created = true;
                if !st.sink.try_send(created) {
                    continue;
                }
                w.created_pending = false;
            }
            if w.next_rev <= target {
                let to = (w.next_rev + CATCH_UP_REVISIONS - 1).min(target);
                let events = store.events(w.next_rev, to)?;
                // Read first, then check: a compaction that overtook this watcher cancels it.
                let compacted = store.compact_revision();
                if w.next_rev < compacted {
                    let mut c = response(id, target);
                    c.canceled = true;
                    c.compact_revision = compacted;
                    if st.sink.try_send(c) {
                        st.watchers.remove(&id);
                        self.unsynced.remove(&(sk, id));
                    }
                    continue;
                }
                let mine = w.select(store, &events);
                let delivered = mine.is_empty()
                    || send_all(
                        &st.sink,
                        build_responses(id, to, mine, w.fragment, max_bytes),
                    );
                if !delivered {
                    continue;
                }
                w.next_rev = to + 1;
            }
            if w.next_rev > target {
                w.synced = true;
                self.unsynced.remove(&(sk, id));
            }
        }
        Ok(!self.unsynced.is_empty())
    }

    /// Sends a progress notification to every synced `progress_notify` watcher.
    pub fn notify_progress(&mut self) {
        for st in self.streams.values() {
            for (id, w) in &st.watchers {
                if w.synced && w.progress_notify {
                    st.sink.try_send(response(*id, self.synced_rev));
                }
            }
        }
    }
}

/// Sends all of `resps` or none: a partial send would be sent again on catch-up (duplicates).
/// The hub is the sink's only producer, so free capacity can only grow between the check and
/// the sends.
fn send_all<S: Sink>(sink: &S, resps: Vec<WatchResponse>) -> bool {
    if sink.capacity() < resps.len() {
        return false;
    }
    resps.into_iter().all(|r| sink.try_send(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    use etch_protocol::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest};
    use etch_protocol::etchpb::internal_request::Request;

    #[derive(Clone, Default)]
    struct TestSink {
        got: Rc<RefCell<Vec<WatchResponse>>>,
        room: Rc<RefCell<usize>>,
    }

    impl Sink for TestSink {
        fn try_send(&self, r: WatchResponse) -> bool {
            let mut room = self.room.borrow_mut();
            if *room == 0 {
                return false;
            }
            *room -= 1;
            self.got.borrow_mut().push(r);
            true
        }
        fn capacity(&self) -> usize {
            *self.room.borrow()
        }
    }

    struct Env {
        _dir: tempfile::TempDir,
        store: MvccStore,
        index: u64,
    }

    impl Env {
        fn new() -> Env {
            let d = tempfile::tempdir().unwrap();
            let store = MvccStore::open(d.path()).unwrap();
            Env {
                _dir: d,
                store,
                index: 0,
            }
        }
        fn apply(&mut self, r: Request) {
            self.index += 1;
            self.store.apply(self.index, 1, None, Some(&r)).unwrap();
        }
        fn put(&mut self, k: &str, v: &str) {
            self.apply(Request::Put(PutRequest {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Bytes::copy_from_slice(v.as_bytes()),
                ..Default::default()
            }));
        }
    }

    fn create(key: &str, end: &str, start: i64) -> WatchCreateRequest {
        WatchCreateRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(end.as_bytes()),
            start_revision: start,
            ..Default::default()
        }
    }

    /// (revision, key) of every event received, in order.
    fn events(sink: &TestSink) -> Vec<(i64, String)> {
        sink.got
            .borrow()
            .iter()
            .flat_map(|r| r.events.iter())
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                (kv.mod_revision, String::from_utf8(kv.key.to_vec()).unwrap())
            })
            .collect()
    }

    #[test]
    fn full_stream_falls_back_to_catch_up_without_gaps_or_duplicates() {
        let mut env = Env::new();
        let mut hub: WatchHub<TestSink> =
            WatchHub::new(env.store.current_revision(), WatchLimits::default());
        let sink = TestSink::default();
        *sink.room.borrow_mut() = 2; // created + one response
        hub.create((1, 1), sink.clone(), &create("a", "b", 0), 0);
        assert!(sink.got.borrow()[0].created);
        for i in 0..5 {
            env.put(&format!("a{i}"), "v");
            hub.advance(&env.store, env.store.current_revision())
                .unwrap();
        }
        // One response fitted; the watcher is now unsynced at revision 3.
        assert_eq!(hub.unsynced_count(), 1);
        *sink.room.borrow_mut() = 100;
        env.put("zz", "not watched");
        hub.advance(&env.store, env.store.current_revision())
            .unwrap();
        assert!(!hub.catch_up(&env.store).unwrap());
        assert_eq!(hub.unsynced_count(), 0);
        env.put("a9", "v");
        hub.advance(&env.store, env.store.current_revision())
            .unwrap();
        let got = events(&sink);
        let want: Vec<(i64, String)> = (0..5)
            .map(|i| (i + 2, format!("a{i}")))
            .chain([(8, "a9".into())])
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn past_start_future_start_and_compaction() {
        let mut env = Env::new();
        for i in 0..4 {
            env.put("k", &i.to_string()); // revisions 2..=5
        }
        let mut hub: WatchHub<TestSink> =
            WatchHub::new(env.store.current_revision(), WatchLimits::default());
        let past = TestSink::default();
        *past.room.borrow_mut() = 100;
        hub.create((1, 1), past.clone(), &create("k", "", 3), 0);
        // A watch on a future revision gets nothing older (etcd #20221).
        let future = TestSink::default();
        *future.room.borrow_mut() = 100;
        hub.create((1, 2), future.clone(), &create("k", "", 7), 0);
        hub.catch_up(&env.store).unwrap();
        env.put("k", "x"); // 6
        env.put("k", "y"); // 7
        hub.advance(&env.store, env.store.current_revision())
            .unwrap();
        let revs = |s: &TestSink| events(s).into_iter().map(|e| e.0).collect::<Vec<_>>();
        assert_eq!(revs(&past), vec![3, 4, 5, 6, 7]);
        assert_eq!(revs(&future), vec![7]);
        // A start below the compaction point: created, then canceled with compact_revision.
        env.apply(Request::Compaction(CompactionRequest {
            revision: 6,
            physical: true,
        }));
        let old = TestSink::default();
        *old.room.borrow_mut() = 100;
        hub.create(
            (2, 1),
            old.clone(),
            &create("k", "", 2),
            env.store.compact_revision(),
        );
        let got = old.got.borrow();
        assert!(got[0].created);
        assert!(got[1].canceled);
        assert_eq!(got[1].compact_revision, 6);
    }

    #[test]
    fn unsynced_watcher_overtaken_by_compaction_is_canceled_not_gapped() {
        let mut env = Env::new();
        let mut hub: WatchHub<TestSink> =
            WatchHub::new(env.store.current_revision(), WatchLimits::default());
        let sink = TestSink::default();
        *sink.room.borrow_mut() = 1; // only `created`
        hub.create((1, 1), sink.clone(), &create("k", "", 0), 0);
        for i in 0..3 {
            env.put("k", &i.to_string());
            hub.advance(&env.store, env.store.current_revision())
                .unwrap();
        }
        env.apply(Request::DeleteRange(DeleteRangeRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        }));
        env.apply(Request::Compaction(CompactionRequest {
            revision: 5,
            physical: true,
        }));
        hub.advance(&env.store, env.store.current_revision())
            .unwrap();
        *sink.room.borrow_mut() = 100;
        hub.catch_up(&env.store).unwrap();
        let got = sink.got.borrow();
        let last = got.last().unwrap();
        assert!(last.canceled && last.compact_revision == 5, "{got:?}");
        assert!(got.iter().all(|r| r.events.is_empty()));
        assert_eq!(hub.watcher_count(), 0);
    }

    #[test]
    fn responses_keep_revisions_whole_unless_fragmenting() {
        let ev = |rev: i64, n: u8| Event {
            kv: Some(etch_protocol::mvccpb::KeyValue {
                key: Bytes::from(vec![n]),
                mod_revision: rev,
                value: Bytes::from(vec![0u8; 100]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let evs = vec![ev(2, 1), ev(2, 2), ev(2, 3), ev(3, 4)];
        // Without fragment: split only between revisions.
        let r = build_responses(0, 3, evs.clone(), false, 150);
        assert_eq!(
            r.iter().map(|r| r.events.len()).collect::<Vec<_>>(),
            vec![3, 1]
        );
        assert!(r.iter().all(|r| !r.fragment));
        // With fragment: pieces of revision 2 are fragments, its last piece is not.
        let r = build_responses(0, 3, evs, true, 150);
        assert_eq!(
            r.iter().map(|r| r.fragment).collect::<Vec<_>>(),
            vec![true, true, false, false]
        );
    }

    #[test]
    fn progress_never_passes_an_undelivered_event() {
        let mut env = Env::new();
        let mut hub: WatchHub<TestSink> =
            WatchHub::new(env.store.current_revision(), WatchLimits::default());
        let sink = TestSink::default();
        *sink.room.borrow_mut() = 1;
        hub.create((1, 1), sink.clone(), &create("k", "", 0), 0);
        env.put("k", "v"); // 2, not deliverable: the stream is full
        hub.advance(&env.store, env.store.current_revision())
            .unwrap();
        *sink.room.borrow_mut() = 1;
        hub.progress((1, 1));
        let got = sink.got.borrow();
        let p = got.last().unwrap();
        assert_eq!(p.watch_id, -1);
        assert_eq!(
            p.header.unwrap().revision,
            1,
            "must not claim revision 2 before sending it"
        );
    }
}
