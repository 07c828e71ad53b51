//! Watch over real processes: etcd's WatchCreate/Cancel/Progress semantics, etchctl watch, and a
//! recorded-history check (every watcher receives exactly the store's history for its range).

use std::time::Duration;

use bytes::Bytes;
use etch_tests::{Node, rt};
use etch_tools::pb::watch_create_request::FilterType;
use etch_tools::pb::{DeleteRangeRequest, PutRequest, WatchCreateRequest, WatchResponse};
use etch_tools::{Client, WatchStream};

async fn next(s: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("a watch response within 10 s")
        .expect("stream open")
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
        ..Default::default()
    }
}

fn create(k: &str, end: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        range_end: Bytes::copy_from_slice(end.as_bytes()),
        ..Default::default()
    }
}

fn keys(r: &WatchResponse) -> Vec<String> {
    r.events
        .iter()
        .map(|e| String::from_utf8(e.kv.as_ref().unwrap().key.to_vec()).unwrap())
        .collect()
}

#[test]
fn watch_semantics_match_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    rt().block_on(async {
        let c = Client::connect(&n.native).await.unwrap();
        c.put(put("w/a", "1")).await.unwrap(); // 2
        let mut s = c.watch_stream().unwrap();
        // Server-chosen ids start at 0, as etcd's.
        s.create(create("w/", "w0")).await.unwrap();
        let r = next(&mut s).await;
        assert!(r.created);
        assert_eq!(r.watch_id, 0);
        assert_eq!(r.header.unwrap().revision, 2);
        // A client-chosen id, NOPUT filter, prev_kv.
        s.create(WatchCreateRequest {
            watch_id: 7,
            filters: vec![FilterType::Noput as i32],
            prev_kv: true,
            ..create("w/a", "")
        })
        .await
        .unwrap();
        let r = next(&mut s).await;
        assert!(r.created && r.watch_id == 7);
        c.put(put("w/a", "2")).await.unwrap(); // 3
        let r = next(&mut s).await;
        assert_eq!((r.watch_id, keys(&r)), (0, vec!["w/a".to_owned()]));
        c.delete_range(DeleteRangeRequest {
            key: "w/a".into(),
            ..Default::default()
        })
        .await
        .unwrap(); // 4
        let mut got = [next(&mut s).await, next(&mut s).await];
        got.sort_by_key(|r| r.watch_id);
        assert_eq!(got[0].events[0].r#type, 1, "DELETE");
        assert_eq!(got[1].watch_id, 7);
        let prev = got[1].events[0].prev_kv.as_ref().expect("prev_kv");
        assert_eq!(&prev.value[..], b"2");
        // A txn's events arrive together, in one response.
        let txn = etch_tools::pb::TxnRequest {
            success: ["w/x", "w/y", "w/z"]
                .iter()
                .map(|k| etch_tools::pb::RequestOp {
                    request: Some(etch_tools::pb::request_op::Request::RequestPut(put(k, "t"))),
                })
                .collect(),
            ..Default::default()
        };
        c.txn(txn).await.unwrap(); // 5
        let r = next(&mut s).await;
        assert_eq!(keys(&r), ["w/x", "w/y", "w/z"]);
        assert_eq!(r.header.unwrap().revision, 5);
        // Progress request: watch id -1, current revision.
        s.request_progress().await.unwrap();
        let r = next(&mut s).await;
        assert_eq!((r.watch_id, r.header.unwrap().revision), (-1, 5));
        // Cancel.
        s.cancel(0).await.unwrap();
        let r = next(&mut s).await;
        assert!(r.canceled && r.watch_id == 0);
        // A second stream on the same connection, from a past revision.
        let mut s2 = c.watch_stream().unwrap();
        s2.create(WatchCreateRequest {
            start_revision: 2,
            ..create("w/a", "")
        })
        .await
        .unwrap();
        assert!(next(&mut s2).await.created);
        let mut revs = Vec::new();
        while revs.len() < 3 {
            let r = next(&mut s2).await;
            revs.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
        }
        assert_eq!(revs, [2, 3, 4]);
        // Compacted start: canceled with compact_revision.
        c.compact(etch_tools::pb::CompactionRequest {
            revision: 4,
            physical: true,
        })
        .await
        .unwrap();
        s2.create(WatchCreateRequest {
            start_revision: 2,
            ..create("w/", "w0")
        })
        .await
        .unwrap();
        assert!(next(&mut s2).await.created);
        let r = next(&mut s2).await;
        assert!(r.canceled);
        assert_eq!(r.compact_revision, 4);
    });
}

#[test]
fn etchctl_watch_prints_like_etcdctl() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    n.ctl_ok(&["put", "p/old", "0"]);
    let mut child = std::process::Command::new(etch_tests::bin("etchctl"))
        .args([
            "--endpoints",
            &n.native,
            "watch",
            "p/",
            "--prefix",
            "--prev-kv",
            "--rev",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut line = || out.next().unwrap().unwrap();
    // History from revision 2 first.
    assert_eq!([line(), line(), line()], ["PUT", "p/old", "0"]);
    n.ctl_ok(&["put", "p/old", "1"]);
    assert_eq!(
        [line(), line(), line(), line(), line()],
        ["PUT", "p/old", "0", "p/old", "1"]
    );
    n.ctl_ok(&["del", "p/old"]);
    assert_eq!(
        [line(), line(), line(), line(), line()],
        ["DELETE", "p/old", "1", "p/old", ""]
    );
    let _ = child.kill();
    let _ = child.wait();
}

// ---- recorded history -------------------------------------------------------------------

use std::collections::BTreeMap;

use etch_tools::pb::compare::{CompareResult, CompareTarget, TargetUnion};
use etch_tools::pb::request_op::Request as Op;
use etch_tools::pb::response_op::Response as OpResp;
use etch_tools::pb::{Compare, RequestOp, TxnRequest};
use rand::{Rng, SeedableRng};

/// One event of the history: (revision, key, Some(value) for a put / None for a delete).
type Ev = (i64, String, Option<String>);

fn key(i: u32) -> String {
    format!("h/k{i}")
}

/// Runs one writer: `ops` random writes against `endpoint`; returns the events of every write
/// it saw acknowledged, and how many failed (outcome unknown).
async fn writer(endpoints: Vec<String>, seed: u64, ops: usize, id: usize) -> (Vec<Ev>, usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut events = Vec::new();
    let mut failed = 0;
    let mut turn = id;
    let mut client = Client::connect(&endpoints[turn % endpoints.len()])
        .await
        .ok();
    for n in 0..ops {
        if client.is_none() {
            // Another member after a failure (the one we used may be gone).
            turn += 1;
            client = Client::connect(&endpoints[turn % endpoints.len()])
                .await
                .ok();
        }
        let Some(c) = client.clone() else {
            failed += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let value = format!("w{id}-{n}");
        let k = key(rng.random_range(0..10));
        let result: Result<Vec<Ev>, ()> = match rng.random_range(0..10) {
            0..=4 => c
                .put(put(&k, &value))
                .await
                .map(|r| vec![(r.header.unwrap().revision, k.clone(), Some(value.clone()))])
                .map_err(|_| ()),
            5..=6 => {
                let (start, end) = if rng.random_bool(0.5) {
                    (k.clone(), String::new())
                } else {
                    (key(3), key(7))
                };
                c.delete_range(DeleteRangeRequest {
                    key: start.into(),
                    range_end: end.into(),
                    prev_kv: true,
                })
                .await
                .map(|r| {
                    let rev = r.header.unwrap().revision;
                    r.prev_kvs
                        .iter()
                        .map(|kv| (rev, String::from_utf8(kv.key.to_vec()).unwrap(), None))
                        .collect()
                })
                .map_err(|_| ())
            }
            _ => {
                // Compare-and-swap over overlapping keys; both branches write.
                let (a, b) = (key(rng.random_range(0..10)), key(rng.random_range(0..10)));
                let b = if a == b {
                    key((b[3..].parse::<u32>().unwrap() + 1) % 10)
                } else {
                    b
                };
                let t = TxnRequest {
                    compare: vec![Compare {
                        key: a.clone().into(),
                        target: CompareTarget::Version as i32,
                        result: CompareResult::Greater as i32,
                        target_union: Some(TargetUnion::Version(1)),
                        ..Default::default()
                    }],
                    success: vec![
                        RequestOp {
                            request: Some(Op::RequestPut(put(&a, &value))),
                        },
                        RequestOp {
                            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                                key: b.clone().into(),
                                prev_kv: true,
                                ..Default::default()
                            })),
                        },
                    ],
                    failure: vec![RequestOp {
                        request: Some(Op::RequestPut(put(&b, &value))),
                    }],
                };
                c.txn(t)
                    .await
                    .map(|r| {
                        let rev = r.header.unwrap().revision;
                        let mut evs = Vec::new();
                        for (i, op) in r.responses.iter().enumerate() {
                            match (&op.response, r.succeeded, i) {
                                (Some(OpResp::ResponsePut(_)), true, 0) => {
                                    evs.push((rev, a.clone(), Some(value.clone())))
                                }
                                (Some(OpResp::ResponsePut(_)), false, 0) => {
                                    evs.push((rev, b.clone(), Some(value.clone())))
                                }
                                (Some(OpResp::ResponseDeleteRange(d)), true, 1) => {
                                    evs.extend(d.prev_kvs.iter().map(|kv| {
                                        (rev, String::from_utf8(kv.key.to_vec()).unwrap(), None)
                                    }))
                                }
                                _ => {}
                            }
                        }
                        evs
                    })
                    .map_err(|_| ())
            }
        };
        match result {
            Ok(evs) => events.extend(evs),
            Err(()) => {
                failed += 1;
                client = None;
            }
        }
    }
    (events, failed)
}

#[derive(Clone, Debug)]
struct Spec {
    key: String,
    end: String,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    start: i64,
    reconnect_after: Option<usize>,
}

impl Spec {
    fn wants(&self, e: &Ev) -> bool {
        let k = e.1.as_str();
        let in_range = if self.end.is_empty() {
            k == self.key
        } else {
            k >= self.key.as_str() && (self.end == "\0" || k < self.end.as_str())
        };
        in_range
            && e.0 >= self.start
            && !(e.2.is_some() && self.no_put)
            && !(e.2.is_none() && self.no_delete)
    }
}

/// What a watcher got: per response, its events as (rev, key, value, prev value + mod rev).
type Got = Vec<Vec<(Ev, Option<(String, i64)>)>>;

/// Watches per `spec` on `endpoints` (round-robin on reconnect) until a progress notification
/// reaches `done` (a revision the watcher must reach), reconnecting once mid-way if asked.
async fn watcher(
    endpoints: Vec<String>,
    spec: Spec,
    done: tokio::sync::watch::Receiver<i64>,
) -> Got {
    let mut got: Got = Vec::new();
    let mut start = spec.start;
    let mut received = 0usize;
    let mut attempt = 0usize;
    'connect: loop {
        let ep = &endpoints[attempt % endpoints.len()];
        attempt += 1;
        let Ok(c) = Client::connect(ep).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(mut s) = c.watch_stream() else {
            continue;
        };
        let req = WatchCreateRequest {
            key: spec.key.clone().into(),
            range_end: spec.end.clone().into(),
            start_revision: start,
            prev_kv: spec.prev_kv,
            filters: [
                (spec.no_put, FilterType::Noput),
                (spec.no_delete, FilterType::Nodelete),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, f)| *f as i32)
            .collect(),
            ..Default::default()
        };
        if s.create(req).await.is_err() {
            continue;
        }
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        loop {
            let r = tokio::select! {
                r = s.next() => r,
                _ = ticker.tick() => {
                    let _ = s.request_progress().await;
                    continue;
                }
            };
            let Some(r) = r else { continue 'connect };
            assert!(!r.canceled, "watch canceled: {r:?}");
            if r.watch_id == -1 {
                let target = *done.borrow();
                if target > 0 && r.header.unwrap().revision >= target {
                    return got;
                }
                continue;
            }
            if r.events.is_empty() {
                continue;
            }
            let evs: Vec<_> =
                r.events
                    .iter()
                    .map(|e| {
                        let kv = e.kv.as_ref().unwrap();
                        let ev = (
                            kv.mod_revision,
                            String::from_utf8(kv.key.to_vec()).unwrap(),
                            (e.r#type == 0).then(|| String::from_utf8(kv.value.to_vec()).unwrap()),
                        );
                        let prev = e.prev_kv.as_ref().map(|p| {
                            (String::from_utf8(p.value.to_vec()).unwrap(), p.mod_revision)
                        });
                        (ev, prev)
                    })
                    .collect();
            start = evs.last().unwrap().0.0 + 1;
            received += evs.len();
            got.push(evs);
            if spec
                .reconnect_after
                .is_some_and(|n| received >= n && attempt == 1)
            {
                // Resume from the last revision seen + 1 on a new connection.
                drop(s);
                drop(c);
                continue 'connect;
            }
        }
    }
}

/// Checks every watcher against `history` (all events, in revision order).
fn verify(history: &[Ev], specs: &[Spec], results: &[Got]) {
    // The value and mod revision of every key before each event, for prev_kv.
    let mut state: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let mut prev_of: Vec<Option<(String, i64)>> = Vec::new();
    for e in history {
        prev_of.push(state.get(&e.1).cloned());
        match &e.2 {
            Some(v) => {
                state.insert(e.1.clone(), (v.clone(), e.0));
            }
            None => {
                state.remove(&e.1);
            }
        }
    }
    for (spec, got) in specs.iter().zip(results) {
        let expected: Vec<(Ev, Option<(String, i64)>)> = history
            .iter()
            .zip(&prev_of)
            .filter(|(e, _)| spec.wants(e))
            .map(|(e, p)| (e.clone(), if spec.prev_kv { p.clone() } else { None }))
            .collect();
        let flat: Vec<_> = got.iter().flatten().cloned().collect();
        assert_eq!(flat.len(), expected.len(), "event count for {spec:?}");
        for (i, (g, w)) in flat.iter().zip(&expected).enumerate() {
            assert_eq!(g, w, "event {i} for {spec:?}");
        }
        // Atomic revisions: the events of one revision are in one response.
        let mut seen_in: BTreeMap<i64, usize> = BTreeMap::new();
        for (n, resp) in got.iter().enumerate() {
            for (e, _) in resp {
                let first = *seen_in.entry(e.0).or_insert(n);
                assert_eq!(
                    first, n,
                    "revision {} split across responses for {spec:?}",
                    e.0
                );
            }
        }
    }
}

fn random_specs(rng: &mut rand::rngs::StdRng, count: usize, max_start: i64) -> Vec<Spec> {
    (0..count)
        .map(|i| {
            let (k, e) = match rng.random_range(0..4) {
                0 => (key(rng.random_range(0..10)), String::new()),
                1 => ("h/k".to_owned(), "h/l".to_owned()),
                2 => (key(2), key(7)),
                _ => ("\0".to_owned(), "\0".to_owned()),
            };
            let filter = rng.random_range(0..4);
            Spec {
                key: k,
                end: e,
                no_put: filter == 1,
                no_delete: filter == 2,
                prev_kv: rng.random_bool(0.5),
                start: rng.random_range(1..=max_start.max(1)),
                reconnect_after: (i % 3 == 0).then_some(rng.random_range(5..40)),
            }
        })
        .collect()
}

#[test]
fn recorded_history_every_watcher_gets_exactly_its_events() {
    let seed: u64 = std::env::var("ETCH_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261121);
    eprintln!("seed {seed} (ETCH_TEST_SEED replays it)");
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    rt().block_on(async {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let c = Client::connect(&n.native).await.unwrap();
        // Some history before the watchers start, so that some start in the past.
        let (mut history, failed) = writer(vec![n.native.clone()], seed ^ 1, 60, 9).await;
        assert_eq!(failed, 0);
        let head = c.status().await.unwrap().header.unwrap().revision;
        let specs = random_specs(&mut rng, 12, head);
        let (done_tx, done_rx) = tokio::sync::watch::channel(0i64);
        let watchers: Vec<_> = specs
            .iter()
            .map(|s| tokio::spawn(watcher(vec![n.native.clone()], s.clone(), done_rx.clone())))
            .collect();
        let writers: Vec<_> = (0..3)
            .map(|w| tokio::spawn(writer(vec![n.native.clone()], seed + w, 150, w as usize)))
            .collect();
        for w in writers {
            let (evs, failed) = w.await.unwrap();
            assert_eq!(failed, 0);
            history.extend(evs);
        }
        let last = c.status().await.unwrap().header.unwrap().revision;
        done_tx.send_replace(last);
        let mut results = Vec::new();
        for w in watchers {
            results.push(
                tokio::time::timeout(Duration::from_secs(60), w)
                    .await
                    .expect("watcher finished")
                    .unwrap(),
            );
        }
        // Events within a revision are in sub-revision order: the order the ops ran.
        history.sort_by_key(|e| e.0);
        verify(&history, &specs, &results);
    });
}

#[test]
fn recorded_history_on_a_cluster_with_a_leader_kill() {
    let seed: u64 = std::env::var("ETCH_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    eprintln!("seed {seed} (ETCH_TEST_SEED replays it)");
    let dir = tempfile::tempdir().unwrap();
    let mut c = etch_tests::Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    let eps: Vec<String> = c.nodes.iter().map(|n| n.native.clone()).collect();
    let survivor = (leader + 1) % 3;
    rt().block_on(async {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut acked, failed) = writer(eps.clone(), seed ^ 1, 60, 9).await;
        assert_eq!(failed, 0);
        let probe = Client::connect(&eps[survivor]).await.unwrap();
        let head = probe.status().await.unwrap().header.unwrap().revision;
        let specs = random_specs(&mut rng, 9, head);
        let (done_tx, done_rx) = tokio::sync::watch::channel(0i64);
        let watchers: Vec<_> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                // Each watcher starts on a different member and rotates on reconnect.
                let mut e = eps.clone();
                e.rotate_left(i % 3);
                tokio::spawn(watcher(e, s.clone(), done_rx.clone()))
            })
            .collect();
        let writers: Vec<_> = (0..3)
            .map(|w| tokio::spawn(writer(eps.clone(), seed + w, 200, w as usize)))
            .collect();
        // Kill the leader once the writers are well under way.
        loop {
            let r = probe.status().await.unwrap().header.unwrap().revision;
            if r > head + 150 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c.nodes[leader].kill9();
        for w in writers {
            acked.extend(w.await.unwrap().0);
        }
        // The last revision, read linearizably from a survivor.
        let last = loop {
            if let Ok(r) = probe
                .range(etch_tools::pb::RangeRequest {
                    key: "probe".into(),
                    ..Default::default()
                })
                .await
            {
                break r.header.unwrap().revision;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        done_tx.send_replace(last);
        let mut results = Vec::new();
        for w in watchers {
            results.push(
                tokio::time::timeout(Duration::from_secs(90), w)
                    .await
                    .expect("watcher finished")
                    .unwrap(),
            );
        }
        // The reference: the whole history from revision 1, read by a fresh watch (catch-up
        // from the store) on a survivor.
        let all = Spec {
            key: "\0".into(),
            end: "\0".into(),
            no_put: false,
            no_delete: false,
            prev_kv: true,
            start: 1,
            reconnect_after: None,
        };
        let reference: Vec<Ev> = watcher(vec![eps[survivor].clone()], all.clone(), done_rx.clone())
            .await
            .into_iter()
            .flatten()
            .map(|(e, _)| e)
            .collect();
        assert_eq!(reference.last().map(|e| e.0), Some(last));
        // Every acknowledged write is in it, exactly, at its revision.
        acked.sort_by_key(|e| e.0);
        let mut by_rev: BTreeMap<i64, Vec<Ev>> = BTreeMap::new();
        for e in &reference {
            by_rev.entry(e.0).or_default().push(e.clone());
        }
        let mut acked_by_rev: BTreeMap<i64, Vec<Ev>> = BTreeMap::new();
        for e in &acked {
            acked_by_rev.entry(e.0).or_default().push(e.clone());
        }
        for (rev, evs) in &acked_by_rev {
            assert_eq!(by_rev.get(rev), Some(evs), "acknowledged revision {rev}");
        }
        verify(&reference, &specs, &results);
    });
}

fn watch_req(prefix: &str, id: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        watch_id: id,
        ..create(prefix, &format!("{}0", prefix.trim_end_matches('/')))
    }
}

#[test]
fn unsynced_watchers_under_compaction_get_every_event_or_a_compacted_cancel() {
    use etch_protocol::etchpb::frame::Body;
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &["--watch-stream-buffer-responses", "8"]);
    let first = rt().block_on(async {
        let c = Client::connect(&n.native).await.unwrap();
        c.status().await.unwrap().header.unwrap().revision + 1
    });
    let mut raw = etch_tests::RawConn::connect(&n.native);
    for id in 1..=20 {
        // An explicit start: the creates are asynchronous and must not race the puts.
        raw.create_watch(
            1,
            WatchCreateRequest {
                start_revision: first,
                ..watch_req("c/", id)
            },
        );
    }
    rt().block_on(async {
        let c = Client::connect(&n.native).await.unwrap();
        // Big values fill the socket and the stream buffer while nobody reads.
        let value = "x".repeat(4096);
        for i in 0..1500 {
            c.put(put(&format!("c/{}", i % 50), &value)).await.unwrap();
        }
        let now = c.status().await.unwrap().header.unwrap().revision;
        c.compact(etch_tools::pb::CompactionRequest {
            revision: now,
            physical: true,
        })
        .await
        .unwrap();
        for i in 0..50 {
            c.put(put(&format!("c/{i}"), "after")).await.unwrap();
        }
    });
    let last = first + 1500 + 50 - 1;
    // Now read: each watcher must see a gap-free run of revisions from `first`, then either
    // reach `last` or be canceled with compact_revision.
    let mut next: BTreeMap<i64, i64> = (1..=20).map(|id| (id, first)).collect();
    let mut done: BTreeMap<i64, &str> = BTreeMap::new();
    while done.len() < 20 {
        let f = raw.read().expect("frames until every watcher is done");
        let Some(Body::WatchResponse(r)) = f.body else {
            continue;
        };
        if r.created {
            continue;
        }
        let want = next.get_mut(&r.watch_id).unwrap();
        for e in &r.events {
            assert_eq!(
                e.kv.as_ref().unwrap().mod_revision,
                *want,
                "gap or duplicate for watch {}",
                r.watch_id
            );
            *want += 1;
        }
        if r.canceled {
            assert!(r.compact_revision > 0, "canceled without compaction: {r:?}");
            assert!(
                *want <= r.compact_revision,
                "canceled although nothing was missing"
            );
            done.insert(r.watch_id, "compacted");
        } else if *want > last {
            done.insert(r.watch_id, "complete");
        }
    }
    eprintln!("outcomes: {done:?}");
}

#[test]
fn stalled_watchers_neither_block_writes_nor_grow_memory() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    let pid = n.pid().unwrap();
    let load = |prefix: &str| {
        let out = etch_tests::bench(
            &n.native,
            &[
                "--clients",
                "50",
                "--conns",
                "5",
                "--json",
                "put",
                "--total",
                "20000",
                "--sequential-keys",
                "--key-space-size",
                "1000",
                "--key-size",
                "4",
                "--val-size",
                "256",
            ],
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["errors"], 0, "{prefix}: {report}");
        report["qps"].as_f64().unwrap()
    };
    // Throughput is printed for docs/benchmarks.md, never asserted (timing is not a test).
    let baseline = load("without stalled watchers");
    // 1,000 watchers over 10 streams on a connection that never reads. The bench's keys start
    // with a 0 byte (etcd benchmark's varint keys), so watch everything.
    let mut raw = etch_tests::RawConn::connect(&n.native);
    for s in 0..10u64 {
        for w in 0..100 {
            raw.create_watch(
                s + 1,
                WatchCreateRequest {
                    watch_id: w,
                    ..create("\0", "\0")
                },
            );
        }
    }
    // Until the never-read socket and the stream buffers are full, those watchers are synced
    // and really receive events; measure again once they are stalled for good.
    let before = etch_tests::rss_bytes(pid);
    let filling = load("while the stalled buffers fill");
    let stalled = load("with stalled watchers");
    eprintln!(
        "put throughput: {baseline:.0} req/s without watchers, {filling:.0} req/s while 1,000 \
         watchers' buffers fill, {stalled:.0} req/s once they are stalled"
    );
    let grown = etch_tests::rss_bytes(pid).saturating_sub(before);
    // Buffering every event for every stalled watcher would take 1,000 x 20,000 x ~300 B = 6 GB.
    assert!(grown < 400 << 20, "memory grew by {} MiB", grown >> 20);
    // A healthy watcher on another connection is not held back by the stalled ones.
    rt().block_on(async {
        let c = Client::connect(&n.native).await.unwrap();
        let mut s = c.watch_stream().unwrap();
        s.create(create("s/fresh", "")).await.unwrap();
        assert!(next(&mut s).await.created);
        c.put(put("s/fresh", "1")).await.unwrap();
        assert_eq!(keys(&next(&mut s).await), ["s/fresh"]);
    });
    drop(raw);
}

#[test]
fn periodic_progress_notifications_reach_synced_watchers() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(
        dir.path(),
        &["--experimental-watch-progress-notify-interval", "200ms"],
    );
    rt().block_on(async {
        let c = Client::connect(&n.native).await.unwrap();
        c.put(put("pn", "1")).await.unwrap();
        let mut s = c.watch_stream().unwrap();
        s.create(WatchCreateRequest {
            progress_notify: true,
            ..create("pn", "")
        })
        .await
        .unwrap();
        assert!(next(&mut s).await.created);
        let r = next(&mut s).await;
        assert_eq!(r.watch_id, 0);
        assert!(r.events.is_empty() && !r.canceled);
        assert_eq!(r.header.unwrap().revision, 2);
    });
}
