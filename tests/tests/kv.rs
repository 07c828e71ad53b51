//! Range/Put/DeleteRange/Txn/Compaction semantics through `etchctl` and the native client, over
//! a real TCP connection to a real `etch` process, checked against etcd 3.5's behaviour.

use etch_tests::{Node, etchctl_stdin, rt};
use etch_tools::Client;
use etch_tools::pb::request_op::Request as Op;
use etch_tools::pb::{PutRequest, RangeRequest, RequestOp, TxnRequest};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn put_get_delete_with_etcdctl_options() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    assert_eq!(n.ctl_ok(&["put", "foo", "bar"]), "OK\n");
    assert_eq!(
        n.ctl_ok(&["put", "foo", "baz", "--prev-kv"]),
        "OK\nfoo\nbar\n"
    );
    assert_eq!(n.ctl_ok(&["get", "foo"]), "foo\nbaz\n");
    assert_eq!(n.ctl_ok(&["get", "foo", "--print-value-only"]), "baz\n");

    // JSON: etcd's header ids (the default member of cluster cdf818194e3a8c32), base64 bytes.
    let j = json(&n.ctl_ok(&["get", "foo", "-w", "json"]));
    assert_eq!(j["header"]["cluster_id"], 14841639068965178418u64);
    assert_eq!(j["header"]["member_id"], 10276657743932975437u64);
    assert_eq!(j["header"]["revision"], 3);
    assert_eq!(j["kvs"][0]["key"], "Zm9v");
    assert_eq!(j["kvs"][0]["value"], "YmF6");
    assert_eq!(j["kvs"][0]["create_revision"], 2);
    assert_eq!(j["kvs"][0]["mod_revision"], 3);
    assert_eq!(j["kvs"][0]["version"], 2);
    assert_eq!(j["count"], 1);
    let fields = n.ctl_ok(&["get", "foo", "-w", "fields"]);
    assert!(fields.contains("\"Key\" : \"foo\"\n"), "{fields}");
    assert!(fields.contains("\"Version\" : 2\n"), "{fields}");

    for (k, v) in [("a/1", "z"), ("a/2", "y"), ("a/3", "x"), ("b", "w")] {
        n.ctl_ok(&["put", k, v]);
    }
    // rev: a/1=4 a/2=5 a/3=6 b=7
    assert_eq!(
        n.ctl_ok(&["get", "a/", "--prefix", "--keys-only"]),
        "a/1\na/2\na/3\n"
    );
    assert_eq!(
        n.ctl_ok(&["get", "a/2", "--from-key", "--keys-only"]),
        "a/2\na/3\nb\nfoo\n"
    );
    assert_eq!(
        n.ctl_ok(&["get", "a/1", "a/3", "--keys-only"]),
        "a/1\na/2\n"
    );
    assert_eq!(n.ctl_ok(&["get", "", "--from-key", "--count-only"]), "5\n");
    let j = json(&n.ctl_ok(&["get", "a/", "--prefix", "--limit", "2", "-w", "json"]));
    assert_eq!(j["kvs"].as_array().unwrap().len(), 2);
    assert_eq!(j["more"], true);
    assert_eq!(j["count"], 3);
    assert_eq!(
        n.ctl_ok(&[
            "get",
            "a/",
            "--prefix",
            "--sort-by",
            "VALUE",
            "--order",
            "ASCEND",
            "--print-value-only"
        ]),
        "x\ny\nz\n"
    );
    assert_eq!(
        n.ctl_ok(&[
            "get",
            "a/",
            "--prefix",
            "--sort-by",
            "MODIFY",
            "--order",
            "DESCEND",
            "--keys-only"
        ]),
        "a/3\na/2\na/1\n"
    );
    // Keys-only carries no values but keeps revisions.
    let j = json(&n.ctl_ok(&["get", "a/1", "--keys-only", "-w", "json"]));
    assert!(j["kvs"][0].get("value").is_none());
    assert_eq!(j["kvs"][0]["mod_revision"], 4);
    // Past revision, serializable read.
    assert_eq!(
        n.ctl_ok(&["get", "foo", "--rev", "2", "--print-value-only"]),
        "bar\n"
    );
    assert_eq!(
        n.ctl_ok(&["get", "foo", "--consistency", "s", "--print-value-only"]),
        "baz\n"
    );

    assert_eq!(
        n.ctl_ok(&["del", "a/", "--prefix", "--prev-kv"]),
        "3\na/1\nz\na/2\ny\na/3\nx\n"
    );
    assert_eq!(n.ctl_ok(&["del", "nothing"]), "0\n");
    assert_eq!(n.ctl_ok(&["get", "a/", "--prefix"]), "");
    // The delete made one revision (8); deleting nothing made none.
    let j = json(&n.ctl_ok(&["get", "foo", "-w", "json"]));
    assert_eq!(j["header"]["revision"], 8);
}

#[test]
fn errors_match_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    n.ctl_ok(&["put", "k", "v1"]); // 2
    n.ctl_ok(&["put", "k", "v2"]); // 3
    n.ctl_ok(&["put", "k", "v3"]); // 4
    assert_eq!(
        n.ctl_err(&["get", "k", "--rev", "9"]),
        "Error: etcdserver: mvcc: required revision is a future revision\n"
    );
    assert_eq!(n.ctl_ok(&["compaction", "3"]), "compacted revision 3\n");
    assert_eq!(
        n.ctl_err(&["get", "k", "--rev", "2"]),
        "Error: etcdserver: mvcc: required revision has been compacted\n"
    );
    assert_eq!(
        n.ctl_ok(&["get", "k", "--rev", "3", "--print-value-only"]),
        "v2\n"
    );
    assert_eq!(
        n.ctl_err(&["compaction", "3"]),
        "Error: etcdserver: mvcc: required revision has been compacted\n"
    );
    assert_eq!(
        n.ctl_err(&["compaction", "99"]),
        "Error: etcdserver: mvcc: required revision is a future revision\n"
    );
    assert_eq!(
        n.ctl_err(&["put", "", "v"]),
        "Error: etcdserver: key is not provided\n"
    );
    assert_eq!(
        n.ctl_err(&["put", "missing", "--ignore-value"]),
        "Error: etcdserver: key not found\n"
    );
    assert_eq!(
        n.ctl_err(&["put", "k", "x", "--ignore-value"]),
        "Error: etcdserver: value is provided\n"
    );
    assert_eq!(
        n.ctl_err(&["put", "k", "x", "--lease", "1234abcd"]),
        "Error: etcdserver: requested lease not found\n"
    );
    // ignore_value keeps the value and bumps the version.
    assert_eq!(n.ctl_ok(&["put", "k", "--ignore-value"]), "OK\n");
    let j = json(&n.ctl_ok(&["get", "k", "-w", "json"]));
    assert_eq!(j["kvs"][0]["version"], 4);
    assert_eq!(j["kvs"][0]["value"], "djM=");

    // Txn limits and the duplicate-key rule, through the client library.
    rt().block_on(async {
        let c = Client::connect(&n.native).await.unwrap();
        let put = |k: &str| RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: k.to_owned().into(),
                value: "v".into(),
                ..Default::default()
            })),
        };
        let many = TxnRequest {
            success: (0..129).map(|i| put(&format!("t{i}"))).collect(),
            ..Default::default()
        };
        let e = c.txn(many).await.unwrap_err().to_string();
        assert_eq!(e, "etcdserver: too many operations in txn request");
        let dup = TxnRequest {
            success: vec![put("d"), put("d")],
            ..Default::default()
        };
        let e = c.txn(dup).await.unwrap_err().to_string();
        assert_eq!(e, "etcdserver: duplicate key given in txn request");
        let ok = TxnRequest {
            success: (0..128).map(|i| put(&format!("t{i}"))).collect(),
            ..Default::default()
        };
        assert!(c.txn(ok).await.unwrap().succeeded);
        // 128 puts in one txn share one revision.
        let r = c
            .range(RangeRequest {
                key: "t0".into(),
                range_end: "t99".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let revs: std::collections::BTreeSet<i64> =
            r.kvs.iter().map(|kv| kv.mod_revision).collect();
        assert_eq!(revs.len(), 1);
        // Requests above --max-request-bytes are refused with etcd's error.
        let big = PutRequest {
            key: "big".into(),
            value: vec![b'x'; 1_600_000].into(),
            ..Default::default()
        };
        assert_eq!(
            c.put(big).await.unwrap_err().to_string(),
            "etcdserver: request is too large"
        );
    });
}

#[test]
fn txn_from_stdin_like_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    n.ctl_ok(&["put", "key1", "1"]);
    let input = "value(\"key1\") = \"1\"\nmod(\"key1\") > \"0\"\n\nput key1 2\nput \"key 2\" \"two words\"\nget key1\n\nget key1\n\n";
    let o = etchctl_stdin(&n.native, &["txn"], input);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "SUCCESS\n\nOK\n\nOK\n\nkey1\n2\n"
    );
    // Same compare again fails now: the failure branch runs.
    let o = etchctl_stdin(&n.native, &["txn"], input);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "FAILURE\n\nkey1\n2\n");
    assert_eq!(
        n.ctl_ok(&["get", "key 2", "--print-value-only"]),
        "two words\n"
    );
    // Version and create-revision compares, a delete in the success branch, JSON output.
    let input = "ver(\"key1\") = \"2\"\nc(\"key1\") = \"2\"\n\ndel key1\n\n\n";
    let o = etchctl_stdin(&n.native, &["txn", "-w", "json"], input);
    let j = json(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(j["succeeded"], true);
    assert_eq!(
        j["responses"][0]["Response"]["response_delete_range"]["deleted"],
        1
    );
    // A malformed compare is refused before anything is sent.
    let o = etchctl_stdin(&n.native, &["txn"], "bogus\n\n\n\n");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("malformed comparison"));
}

#[test]
fn endpoint_status_reports_leader_and_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    n.ctl_ok(&["put", "a", "1"]);
    let j = json(&n.ctl_ok(&["endpoint", "status", "-w", "json"]));
    let s = &j[0]["Status"];
    assert_eq!(s["leader"], s["header"]["member_id"]);
    assert!(s["raftIndex"].as_u64().unwrap() >= 2);
    assert_eq!(s["raftIndex"], s["raftAppliedIndex"]);
    assert!(s["version"].as_str().unwrap().starts_with("3.5."));
    let simple = n.ctl_ok(&["endpoint", "status"]);
    assert!(
        simple.starts_with(&format!("{}, 8e9e05c52164694d, 3.5.", n.native)),
        "{simple}"
    );
    assert!(simple.contains(", true, false, "), "{simple}");
}

#[test]
fn range_filters_and_txn_compares_through_the_client() {
    use etch_tools::pb::compare::{CompareResult, CompareTarget, TargetUnion};
    use etch_tools::pb::response_op::Response as OpResp;
    use etch_tools::pb::{Compare, DeleteRangeRequest};
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    rt().block_on(async {
        let c = Client::connect(&n.native).await.unwrap();
        let put = |k: &'static str, v: &'static str| PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        };
        for (k, v) in [("f/a", "1"), ("f/b", "2"), ("f/c", "3")] {
            c.put(put(k, v)).await.unwrap(); // revisions 2, 3, 4
        }
        c.put(put("f/a", "1b")).await.unwrap(); // 5: f/a created at 2, modified at 5
        let rr = |f: fn(&mut RangeRequest)| {
            let mut r = RangeRequest {
                key: "f/".into(),
                range_end: "f0".into(),
                ..Default::default()
            };
            f(&mut r);
            r
        };
        let keys = |r: etch_tools::pb::RangeResponse| -> Vec<String> {
            r.kvs
                .iter()
                .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
                .collect()
        };
        let r = c.range(rr(|r| r.min_mod_revision = 4)).await.unwrap();
        assert_eq!(keys(r.clone()), ["f/a", "f/c"]);
        assert_eq!(r.count, 3, "count is taken before the filters, as etcd");
        let r = c.range(rr(|r| r.max_mod_revision = 3)).await.unwrap();
        assert_eq!(keys(r), ["f/b"]);
        let r = c.range(rr(|r| r.min_create_revision = 3)).await.unwrap();
        assert_eq!(keys(r), ["f/b", "f/c"]);
        let r = c.range(rr(|r| r.max_create_revision = 2)).await.unwrap();
        assert_eq!(keys(r), ["f/a"]);
        let r = c.range(rr(|r| r.count_only = true)).await.unwrap();
        assert!(r.kvs.is_empty());
        assert_eq!(r.count, 3);

        // ignore_lease on a missing key, and with a lease.
        let mut p = put("nope", "");
        p.ignore_lease = true;
        assert_eq!(
            c.put(p).await.unwrap_err().to_string(),
            "etcdserver: key not found"
        );
        let mut p = put("f/a", "");
        p.ignore_lease = true;
        p.lease = 5;
        assert_eq!(
            c.put(p).await.unwrap_err().to_string(),
            "etcdserver: lease is provided"
        );

        let cmp = |key: &'static str,
                   end: &'static str,
                   t: CompareTarget,
                   r: CompareResult,
                   u: TargetUnion| Compare {
            key: key.into(),
            range_end: end.into(),
            target: t as i32,
            result: r as i32,
            target_union: Some(u),
        };
        let get = |k: &'static str| RequestOp {
            request: Some(Op::RequestRange(RangeRequest {
                key: k.into(),
                ..Default::default()
            })),
        };
        // Range compare: every key under f/ has version >= 1 and create revision < 5.
        let t = TxnRequest {
            compare: vec![
                cmp(
                    "f/",
                    "f0",
                    CompareTarget::Version,
                    CompareResult::Greater,
                    TargetUnion::Version(0),
                ),
                cmp(
                    "f/",
                    "f0",
                    CompareTarget::Create,
                    CompareResult::Less,
                    TargetUnion::CreateRevision(5),
                ),
                cmp(
                    "f/a",
                    "",
                    CompareTarget::Lease,
                    CompareResult::Equal,
                    TargetUnion::Lease(0),
                ),
                cmp(
                    "f/b",
                    "",
                    CompareTarget::Value,
                    CompareResult::NotEqual,
                    TargetUnion::Value("x".into()),
                ),
            ],
            success: vec![
                get("f/a"),
                RequestOp {
                    request: Some(Op::RequestTxn(TxnRequest {
                        compare: vec![cmp(
                            "f/c",
                            "",
                            CompareTarget::Mod,
                            CompareResult::Equal,
                            TargetUnion::ModRevision(4),
                        )],
                        success: vec![RequestOp {
                            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                                key: "f/c".into(),
                                prev_kv: true,
                                ..Default::default()
                            })),
                        }],
                        failure: vec![],
                    })),
                },
                get("f/c"),
            ],
            failure: vec![],
        };
        let r = c.txn(t).await.unwrap();
        assert!(r.succeeded);
        assert_eq!(r.header.unwrap().revision, 6);
        match (
            &r.responses[0].response,
            &r.responses[1].response,
            &r.responses[2].response,
        ) {
            (
                Some(OpResp::ResponseRange(a)),
                Some(OpResp::ResponseTxn(inner)),
                Some(OpResp::ResponseRange(after)),
            ) => {
                assert_eq!(&a.kvs[0].value[..], b"1b");
                assert!(inner.succeeded);
                match &inner.responses[0].response {
                    Some(OpResp::ResponseDeleteRange(d)) => {
                        assert_eq!(d.deleted, 1);
                        assert_eq!(&d.prev_kvs[0].value[..], b"3");
                    }
                    o => panic!("{o:?}"),
                }
                // The read after the nested delete, in the same txn, no longer sees f/c.
                assert_eq!(after.count, 0);
            }
            o => panic!("{o:?}"),
        }
        // A VALUE compare on a missing key is false; a read-only txn does not bump the revision.
        let t = TxnRequest {
            compare: vec![cmp(
                "f/zz",
                "",
                CompareTarget::Value,
                CompareResult::NotEqual,
                TargetUnion::Value("x".into()),
            )],
            success: vec![],
            failure: vec![get("f/b")],
        };
        let r = c.txn(t).await.unwrap();
        assert!(!r.succeeded);
        assert_eq!(r.header.unwrap().revision, 6);
    });
}
