//! etcd's HTTP JSON gateway over plain HTTP/1.1 on the gRPC port: the same requests against
//! a real etcd 3.4 and etch give the same JSON (field names, encodings, error bodies and
//! statuses; IDs, terms and sizes aside), streams included; on a 3-member cluster, every
//! member serves the gateway and `/health`, which turns false when the member loses its
//! leader.

use std::time::Duration;

use etch_tests::{Cluster, Etcd, HttpStream, Node, http, wait_for};
use serde_json::Value;

/// Values that legitimately differ between two clusters.
const MASKED: [&str; 9] = [
    "cluster_id",
    "member_id",
    "raft_term",
    "leader",
    "raftIndex",
    "raftTerm",
    "raftAppliedIndex",
    "dbSize",
    "dbSizeInUse",
];

fn mask(v: &mut Value, extra: &[&str]) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if MASKED.contains(&k.as_str()) || extra.contains(&k.as_str()) {
                    *v = Value::String("<x>".into());
                } else {
                    mask(v, extra);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| mask(v, extra)),
        _ => {}
    }
}

fn canon(status: u16, body: &str, extra: &[&str]) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(mut v) => {
            mask(&mut v, extra);
            format!("{status} {v}")
        }
        Err(_) => format!("{status} {body}"),
    }
}

/// (path, body, masked fields): run in order against both servers.
fn script() -> Vec<(&'static str, &'static str, &'static [&'static str])> {
    vec![
        ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#, &[]),
        (
            "/v3/kv/put",
            r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#,
            &[],
        ),
        ("/v3/kv/put", r#"{"key":"Zm9vMg==","value":"eA=="}"#, &[]),
        ("/v3/kv/range", r#"{"key":"Zm9v"}"#, &[]),
        (
            "/v3/kv/range",
            r#"{"key":"Zm9v","range_end":"Zm9w","sort_order":"DESCEND","keys_only":true}"#,
            &[],
        ),
        (
            "/v3/kv/range",
            r#"{"key":"Zm9v","range_end":"Zm9w","count_only":true}"#,
            &[],
        ),
        (
            "/v3/kv/range",
            r#"{"key":"Zm9v","range_end":"Zm9w","limit":1}"#,
            &[],
        ),
        ("/v3/kv/range", r#"{"key":"Zm9v","revision":"100"}"#, &[]),
        ("/v3/kv/range", r#"{"key":"Zm9v","ignored_field":1}"#, &[]),
        ("/v3/kv/range", "", &[]),
        ("/v3beta/kv/range", r#"{"key":"Zm9v"}"#, &[]),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmF6"}],"success":[{"request_put":{"key":"Zm9v","value":"cXV4"}},{"request_range":{"key":"Zm9vMg=="}}],"failure":[]}"#,
            &[],
        ),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Zm9v","target":"VERSION","version":"1"}],"success":[],"failure":[{"request_delete_range":{"key":"Zm9vMg==","prev_kv":true}}]}"#,
            &[],
        ),
        ("/v3/kv/compaction", r#"{"revision":"3"}"#, &[]),
        ("/v3/kv/range", r#"{"key":"Zm9v","revision":"2"}"#, &[]),
        ("/v3/lease/grant", r#"{"TTL":"60","ID":"1000"}"#, &[]),
        ("/v3/lease/grant", r#"{"TTL":"60","ID":"1000"}"#, &[]),
        (
            "/v3/kv/put",
            r#"{"key":"bGVhc2Vk","value":"dg==","lease":"1000"}"#,
            &[],
        ),
        (
            "/v3/lease/timetolive",
            r#"{"ID":"1000","keys":true}"#,
            &["TTL"],
        ),
        ("/v3/lease/leases", "{}", &[]),
        ("/v3/kv/lease/revoke", r#"{"ID":"1000"}"#, &[]),
        ("/v3/lease/revoke", r#"{"ID":"1000"}"#, &[]),
        ("/v3/kv/put", r#"{"key":""}"#, &[]),
        ("/v3/maintenance/status", "{}", &["version"]),
        ("/v3/nothing/here", "{}", &[]),
    ]
}

#[test]
fn gateway_json_matches_real_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let etch = Node::start(&dir.path().join("etch"), &[]);
    for (path, body, extra) in script() {
        let want = http(&etcd.endpoint, "POST", path, body);
        let got = http(&etch.grpc, "POST", path, body);
        assert_eq!(
            canon(got.status, &got.body, extra),
            canon(want.status, &want.body, extra),
            "POST {path} {body}"
        );
    }
    // A watch stream from revision 1 (compacted at 3: canceled with compact_revision), then
    // from the current revision with an event; and a keep-alive stream.
    for body in [
        r#"{"create_request":{"key":"Zm9v","start_revision":"1"}}"#,
        r#"{"create_request":{"key":"Zm9v","range_end":"Zm9w","prev_kv":true}}"#,
    ] {
        let mut want = HttpStream::open(&etcd.endpoint, "POST", "/v3/watch", body);
        let mut got = HttpStream::open(&etch.grpc, "POST", "/v3/watch", body);
        assert_eq!((got.status, want.status), (200, 200));
        let created = |s: &mut HttpStream| canon(200, &s.line().expect("created"), &[]);
        assert_eq!(created(&mut got), created(&mut want), "{body}");
        for (ep, s) in [(&etcd.endpoint, &mut want), (&etch.grpc, &mut got)] {
            let r = http(ep, "POST", "/v3/kv/put", r#"{"key":"Zm9v","value":"bmV3"}"#);
            assert_eq!(r.status, 200);
            let _ = s; // the event is read below
        }
        if body.contains("start_revision") {
            // Canceled watches end with the created response carrying compact_revision
            // (etcd 3.4 sends created+canceled in one response).
            continue;
        }
        let ev = |s: &mut HttpStream| canon(200, &s.line().expect("event"), &[]);
        assert_eq!(ev(&mut got), ev(&mut want), "{body}");
    }
    let ka = |ep: &str| {
        http(ep, "POST", "/v3/lease/grant", r#"{"TTL":"60","ID":"77"}"#);
        let r = http(ep, "POST", "/v3/lease/keepalive", r#"{"ID":"77"}"#);
        canon(r.status, &r.body, &[])
    };
    assert_eq!(ka(&etch.grpc), ka(&etcd.endpoint));
    // /version's fields (etch reports an etcd 3.5 version).
    let v: Value = serde_json::from_str(&http(&etch.grpc, "GET", "/version", "").body).unwrap();
    assert!(v["etcdserver"].as_str().unwrap().starts_with("3.5."), "{v}");
    assert!(
        v["etcdcluster"].as_str().unwrap().starts_with("3.5."),
        "{v}"
    );
    // etch also answers the /v3alpha aliases.
    let r = http(&etch.grpc, "POST", "/v3alpha/kv/range", r#"{"key":"Zm9v"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn gateway_on_three_members_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    let f: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (a, b) = (c.nodes[f[0]].grpc.clone(), c.nodes[f[1]].grpc.clone());
    for n in &c.nodes {
        let h = http(&n.grpc, "GET", "/health", "");
        assert_eq!(
            (h.status, h.body.as_str()),
            (200, r#"{"health":"true","reason":""}"#)
        );
    }
    // A watch on one follower sees a put made through the other.
    let mut w = HttpStream::open(
        &b,
        "POST",
        "/v3/watch",
        r#"{"create_request":{"key":"dy8=","range_end":"dzA="}}"#,
    );
    assert!(w.line().unwrap().contains(r#""created":true"#));
    let put = http(&a, "POST", "/v3/kv/put", r#"{"key":"dy94","value":"MQ=="}"#);
    assert_eq!(put.status, 200, "{}", put.body);
    let ev: Value = serde_json::from_str(&w.line().expect("event")).unwrap();
    assert_eq!(ev["result"]["events"][0]["kv"]["key"], "dy94");
    assert_eq!(ev["result"]["events"][0]["kv"]["value"], "MQ==");
    // Lock and election through the gateway.
    let lock = http(&a, "POST", "/v3/lock/lock", r#"{"name":"bA=="}"#);
    assert_eq!(lock.status, 200, "{}", lock.body);
    let key: Value = serde_json::from_str(&lock.body).unwrap();
    let camp = http(
        &b,
        "POST",
        "/v3/election/campaign",
        r#"{"name":"ZQ==","value":"djE="}"#,
    );
    assert_eq!(camp.status, 200, "{}", camp.body);
    let mut obs = HttpStream::open(&a, "POST", "/v3/election/observe", r#"{"name":"ZQ=="}"#);
    let seen: Value = serde_json::from_str(&obs.line().expect("observe")).unwrap();
    assert_eq!(seen["result"]["kv"]["value"], "djE=");
    let unlock = http(
        &b,
        "POST",
        "/v3/lock/unlock",
        &format!(r#"{{"key":{}}}"#, key["key"]),
    );
    assert_eq!(unlock.status, 200, "{}", unlock.body);
    let none = http(&a, "POST", "/v3/election/leader", r#"{"name":"bm8="}"#);
    assert_eq!(
        (none.status, none.body.as_str()),
        (
            500,
            r#"{"error":"election: no leader","message":"election: no leader","code":2}"#
        )
    );
    // A member left alone has no leader: /health says so with 503.
    let last = f[0];
    for i in 0..3 {
        if i != last {
            c.nodes[i].terminate();
        }
    }
    let ep = c.nodes[last].grpc.clone();
    let h = wait_for(Duration::from_secs(30), "health false", || {
        let h = http(&ep, "GET", "/health", "");
        (h.status == 503 && h.body.contains("RAFT NO LEADER")).then_some(h)
    });
    assert_eq!(h.body, r#"{"health":"false","reason":"RAFT NO LEADER"}"#);
}
