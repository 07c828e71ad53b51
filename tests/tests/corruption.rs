//! etcd's corruption checks across real members: one member's store is changed on disk behind
//! its back (as etcd's e2e `TestEtcdCorruptHash` edits bbolt), then
//! - restarted with `--experimental-initial-corrupt-check`, it refuses to start with etcd's
//!   "found data inconsistency with peers";
//! - restarted without it, the leader's periodic check (`--experimental-corrupt-check-time`)
//!   raises the CORRUPT alarm for exactly that member, and the cluster refuses writes with
//!   etcd's "etcdserver: corrupt cluster" while reads work.

use std::path::Path;
use std::time::Duration;

use etch_tests::{Cluster, Node, etcdctl, wait_for};
use prost::Message as _;

const T: Duration = Duration::from_secs(60);

/// Rewrites the value of the newest revision of `key` in the stopped member's store (its
/// `kv` keyspace), leaving revisions and everything else as they were.
fn corrupt_value(data_dir: &Path, key: &[u8]) {
    let member = data_dir.join("member");
    let name = std::fs::read_to_string(member.join("db.current")).unwrap_or_else(|_| "db".into());
    let db = fjall::Database::builder(member.join(name.trim()))
        .manual_journal_persist(true)
        .open()
        .expect("open the member's store");
    let kv = db
        .keyspace("kv", fjall::KeyspaceCreateOptions::default)
        .expect("kv keyspace");
    let mut target = None;
    for g in kv.iter() {
        let (k, v) = g.into_inner().expect("read kv");
        let Ok(mut entry) = etch_protocol::mvccpb::KeyValue::decode(&v[..]) else {
            continue;
        };
        if entry.key.as_ref() == key {
            entry.value = bytes::Bytes::from_static(b"silently changed");
            target = Some((k.to_vec(), entry.encode_to_vec()));
        }
    }
    let (k, v) = target.expect("the key is in the store");
    kv.insert(k, v).expect("write");
    db.persist(fjall::PersistMode::SyncAll).expect("persist");
}

#[test]
fn a_member_whose_data_differs_is_refused_at_start_and_alarmed_by_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let checks = [
        "--experimental-initial-corrupt-check",
        "--experimental-corrupt-check-time",
        "1s",
    ];
    let mut c = Cluster::start(dir.path(), 3, &checks);
    let leader = c.leader();
    for i in 0..20 {
        c.nodes[leader].ctl_ok(&["put", &format!("k{i}"), &format!("v{i}")]);
    }
    let rev = c.nodes[leader].local_revision();
    for n in &c.nodes {
        wait_for(T, "every member applied the writes", || {
            (n.local_revision() >= rev).then_some(())
        });
    }
    // Equal stores: the leader's periodic check raises nothing.
    let grpc: Vec<String> = c.nodes.iter().map(|n| n.grpc.clone()).collect();
    let eps = grpc.join(",");
    let alarms = |eps: &str| {
        let o = etcdctl(eps, &["alarm", "list"], "");
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    wait_for(T, "the leader to run a check", || {
        c.nodes[leader]
            .log()
            .contains("enabled corruption checking")
            .then_some(())
    });
    assert_eq!(alarms(&eps), "");

    let f = (leader + 1) % 3;
    let f_id = c.nodes[f].status().expect("status")["header"]["member_id"]
        .as_u64()
        .expect("member id");
    // A graceful stop writes the store out (after kill -9 the WAL would rebuild it).
    assert!(c.nodes[f].terminate().success());
    corrupt_value(&c.nodes[f].data_dir, b"k7");

    // With the initial check, the changed member refuses to start.
    let (status, log) = c.nodes[f].start_expecting_failure();
    assert!(!status.success());
    assert!(
        log.contains(&format!("{f_id:x} found data inconsistency with peers")),
        "{log}"
    );

    // Without it, it starts; the leader's check finds it and raises CORRUPT for it alone.
    let args = c.member_args(f, &["--experimental-corrupt-check-time", "1s"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data_dir = c.nodes[f].data_dir.clone();
    c.nodes[f] = Node::launch(data_dir, &args);
    let list = wait_for(T, "the CORRUPT alarm", || {
        let l = alarms(&c.nodes[leader].grpc);
        l.contains("CORRUPT").then_some(l)
    });
    assert_eq!(list.trim(), format!("memberID:{f_id} alarm:CORRUPT"));
    let o = etcdctl(&c.nodes[leader].grpc, &["put", "k", "v"], "");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("etcdserver: corrupt cluster"),
        "{o:?}"
    );
    let o = etcdctl(
        &c.nodes[leader].grpc,
        &["get", "k3", "--print-value-only"],
        "",
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "v3");
}
