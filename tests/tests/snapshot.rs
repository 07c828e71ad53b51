//! Backup and restore the way operators do it: `etcdctl snapshot save` against a member (etch
//! or etcd), `etcdctl snapshot status` (etcd's own reader of the file), `etchctl snapshot
//! restore` into new data dirs, and etch started on them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use etch_tests::{Etcd, Node, etcdctl, etchctl_at, free_udp_port};
use serde_json::Value;

fn ok(endpoint: &str, args: &[&str]) -> String {
    let o = etcdctl(endpoint, args, "");
    assert!(
        o.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// Every key-value at `rev` (0: current) as etcdctl's JSON prints them, and the revision.
fn kvs(endpoint: &str, rev: i64) -> (Value, i64) {
    let r = rev.to_string();
    let v = json(&ok(
        endpoint,
        &["get", "", "--from-key", "--rev", &r, "-w", "json"],
    ));
    (v["kvs"].clone(), v["header"]["revision"].as_i64().unwrap())
}

/// `etchctl snapshot restore` of `file` as member `i` of `peers` (names r0, r1, ...).
fn restore(file: &std::path::Path, dir: &std::path::Path, peers: &[String], i: usize) -> String {
    let cluster = peers
        .iter()
        .enumerate()
        .map(|(j, u)| format!("r{j}={u}"))
        .collect::<Vec<_>>()
        .join(",");
    let o = etchctl_at(
        "127.0.0.1:1",
        &[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--name",
            &format!("r{i}"),
            "--initial-cluster",
            &cluster,
            "--initial-cluster-token",
            "restored",
            "--initial-advertise-peer-urls",
            &peers[i],
            "--data-dir",
            dir.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Starts restored member `i` of `peers` on `dir`.
fn start_restored(dir: &std::path::Path, peers: &[String], i: usize) -> Node {
    let cluster = peers
        .iter()
        .enumerate()
        .map(|(j, u)| format!("r{j}={u}"))
        .collect::<Vec<_>>()
        .join(",");
    Node::launch(
        dir.to_path_buf(),
        &[
            "--name",
            &format!("r{i}"),
            "--listen-peer-urls",
            &peers[i],
            "--initial-advertise-peer-urls",
            &peers[i],
            "--initial-cluster",
            &cluster,
            "--initial-cluster-token",
            "restored",
        ],
    )
}

#[test]
fn a_snapshot_under_load_restores_into_a_new_three_member_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let peer = format!("http://127.0.0.1:{}", free_udp_port());
    let src = Node::start(
        dir.path(),
        &[
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ],
    );
    let ep = src.grpc.clone();
    for i in 0..3 {
        ok(&ep, &["put", "key", &format!("v{i}")]);
    }
    let lease = ok(&ep, &["lease", "grant", "600"]);
    let lease = lease.split_whitespace().nth(1).unwrap().to_owned();
    ok(&ep, &["put", "leased", "x", "--lease", &lease]);
    ok(&ep, &["user", "add", "alice:secret"]);
    ok(&ep, &["del", "key"]);
    // Writes go on while the snapshot is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, ep) = (stop.clone(), ep.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 2000 {
                let _ = etcdctl(&ep, &["put", &format!("load/{n}"), "v"], "");
                n += 1;
            }
        })
    };
    let file = dir.path().join("backup.db");
    let saved = ok(&ep, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // etcd's own reader accepts the file.
    let status = json(&ok(
        &ep,
        &["snapshot", "status", "-w", "json", file.to_str().unwrap()],
    ));
    let rev = status["revision"].as_i64().unwrap();
    let (want, _) = kvs(&ep, rev);
    assert!(!want.as_array().unwrap().is_empty());

    let peers: Vec<String> = (0..3)
        .map(|_| format!("http://127.0.0.1:{}", free_udp_port()))
        .collect();
    let dirs: Vec<_> = (0..3).map(|i| dir.path().join(format!("r{i}"))).collect();
    for (i, d) in dirs.iter().enumerate() {
        let out = restore(&file, d, &peers, i);
        assert!(out.contains(&format!("revision {rev}")), "{out}");
    }
    let nodes: Vec<Node> = (0..3)
        .map(|i| start_restored(&dirs[i], &peers, i))
        .collect();
    for n in &nodes {
        n.wait_leader();
    }
    for n in &nodes {
        let (got, current) = kvs(&n.grpc, 0);
        assert_eq!(current, rev, "the revision is kept");
        assert_eq!(got, want, "every key at the snapshot's revision");
        assert!(ok(&n.grpc, &["lease", "list"]).contains(&lease));
        assert!(ok(&n.grpc, &["user", "list"]).contains("alice"));
        assert_eq!(ok(&n.grpc, &["member", "list"]).lines().count(), 3);
    }
    ok(&nodes[0].grpc, &["put", "after", "1"]);

    // A damaged file is refused, naming the problem.
    let bytes = std::fs::read(&file).unwrap();
    let mut flipped = bytes.clone();
    let at = bytes.len() / 2;
    flipped[at] ^= 0x40;
    let bad = dir.path().join("flipped.db");
    std::fs::write(&bad, &flipped).unwrap();
    assert!(refused(&bad, &dir.path().join("x")).contains("expected sha256"));
    let cut = dir.path().join("truncated.db");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    assert!(refused(&cut, &dir.path().join("y")).contains("missing hash"));
}

/// `etchctl snapshot restore` of `file` into `data_dir`, which must fail; its stderr.
fn refused(file: &std::path::Path, data_dir: &std::path::Path) -> String {
    let (f, d) = (file.to_str().unwrap(), data_dir.to_str().unwrap());
    let o = etchctl_at("127.0.0.1:1", &["snapshot", "restore", f, "--data-dir", d]);
    assert!(!o.status.success(), "{f} was restored");
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn an_etcd_cluster_moves_to_etch_with_its_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let ep = etcd.endpoint.clone();
    for i in 1..=3 {
        ok(&ep, &["put", "a", &format!("v{i}")]);
    }
    ok(&ep, &["put", "b", "1"]);
    ok(&ep, &["del", "b"]);
    let lease = ok(&ep, &["lease", "grant", "600"]);
    let lease = lease.split_whitespace().nth(1).unwrap().to_owned();
    ok(&ep, &["put", "c", "leased", "--lease", &lease]);
    ok(&ep, &["compact", "3"]);
    ok(&ep, &["put", "d", "1"]);
    ok(&ep, &["user", "add", "bob:pw"]);
    let (now, rev) = kvs(&ep, 0);
    let (older, _) = kvs(&ep, 5);
    let file = dir.path().join("etcd.db");
    ok(&ep, &["snapshot", "save", file.to_str().unwrap()]);
    drop(etcd);

    let peers = vec![format!("http://127.0.0.1:{}", free_udp_port())];
    let data = dir.path().join("moved");
    restore(&file, &data, &peers, 0);
    let n = start_restored(&data, &peers, 0);
    n.wait_leader();
    assert_eq!(kvs(&n.grpc, 0), (now, rev));
    assert_eq!(kvs(&n.grpc, 5).0, older);
    let o = etcdctl(&n.grpc, &["get", "a", "--rev", "2"], "");
    assert!(String::from_utf8_lossy(&o.stderr).contains("required revision has been compacted"));
    assert!(ok(&n.grpc, &["lease", "list"]).contains(&lease));
    assert!(ok(&n.grpc, &["user", "list"]).contains("bob"));
}
