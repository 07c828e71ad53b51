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
        let mut got = vec![next(&mut s).await, next(&mut s).await];
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
