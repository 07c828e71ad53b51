//! The space quota and the NOSPACE alarm over real processes, driven by Debian's etcdctl 3.4 as
//! an operator would (etcd's e2e `alarmTest`): fill a 3-member cluster past
//! `--quota-backend-bytes`, see every member refuse writes, then compact, defragment, disarm
//! and write again, with nothing acknowledged lost.

use std::collections::BTreeMap;
use std::process::Output;

use etch_tests::{Cluster, etcdctl};

/// The quota every member runs with, bytes.
const QUOTA_BYTES: &str = "65536";

/// etcd's NOSPACE message, as etcdctl prints it.
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// A 4 KiB value that differs with `seed` and does not compress to nothing (fjall compresses
/// its tables; etcd's bbolt does not).
fn value(seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

fn run(ep: &str, args: &[&str]) -> Output {
    etcdctl(ep, args, "")
}

fn ok(ep: &str, args: &[&str]) -> String {
    let o = run(ep, args);
    assert!(
        o.status.success(),
        "etcdctl {args:?} at {ep} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails_with_no_space(ep: &str, args: &[&str]) {
    let o = run(ep, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains(NO_SPACE),
        "etcdctl {args:?} at {ep} should fail with {NO_SPACE:?}: {err}"
    );
}

/// Every member's `endpoint status` JSON, in endpoint order.
fn statuses(eps: &str) -> Vec<serde_json::Value> {
    let s = ok(eps, &["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value =
        serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"));
    v.as_array().expect("status array").clone()
}

#[test]
fn nospace_alarm_is_raised_at_the_quota_and_cleared_by_compact_defrag_disarm() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &["--quota-backend-bytes", QUOTA_BYTES]);
    let all: Vec<String> = c.nodes.iter().map(|n| n.grpc.clone()).collect();
    let eps = all.join(",");
    let member0 = statuses(&all[0])[0]["Status"]["header"]["member_id"]
        .as_u64()
        .expect("member id");

    ok(&all[0], &["put", "to-delete", "x"]);
    // Fill through member 0, overwriting 4 keys, until its quota refuses a put.
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut puts = 0u64;
    loop {
        assert!(
            puts < 100,
            "64 KiB quota never reached after {puts} puts of 4 KiB"
        );
        let (k, v) = (format!("k{}", puts % 4), value(puts));
        let o = run(&all[0], &["put", &k, &v]);
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains(NO_SPACE), "put {puts} failed otherwise: {err}");
            break;
        }
        acked.insert(k, v);
        puts += 1;
    }
    assert!(puts >= 4, "the quota refused a put after only {puts}");

    // The alarm names the member whose quota was exceeded, on every member.
    for ep in &all {
        let list = ok(ep, &["alarm", "list"]);
        assert!(
            list.contains(&format!("memberID:{member0} alarm:NOSPACE")),
            "alarm list at {ep}: {list:?}"
        );
    }
    for s in statuses(&eps) {
        let errors = s["Status"]["errors"].to_string();
        assert!(errors.contains("alarm:NOSPACE"), "{s}");
    }
    // Writes are refused through the other members too, small ones included; lease grants too.
    fails_with_no_space(&all[1], &["put", "small", "v"]);
    fails_with_no_space(&all[2], &["lease", "grant", "60"]);
    // Reads and deletes work.
    assert_eq!(
        ok(&all[1], &["get", "k0", "--print-value-only"]).trim_end(),
        acked["k0"]
    );
    assert_eq!(ok(&all[2], &["del", "to-delete"]), "1\n");

    // A restarted member still knows the alarm (it is persisted with the store).
    c.nodes[2].restart();
    let restarted = c.nodes[2].grpc.clone();
    assert!(ok(&restarted, &["alarm", "list"]).contains("alarm:NOSPACE"));
    let all: Vec<String> = c.nodes.iter().map(|n| n.grpc.clone()).collect();
    let eps = all.join(",");

    // Make room as an operator does: compact to the current revision, defragment every
    // member, disarm.
    let rev = statuses(&all[0])[0]["Status"]["header"]["revision"]
        .as_i64()
        .expect("revision");
    ok(&all[0], &["compaction", &rev.to_string()]);
    // The compaction is acknowledged once the member asked applied it; defragment each member
    // once it applied it too.
    let applied = |s: &serde_json::Value| s["Status"]["raftAppliedIndex"].as_u64().unwrap_or(0);
    let target = applied(&statuses(&all[0])[0]);
    etch_tests::wait_for(
        std::time::Duration::from_secs(10),
        "every member to apply the compaction",
        || {
            statuses(&eps)
                .iter()
                .all(|s| applied(s) >= target)
                .then_some(())
        },
    );
    let defrag = ok(&eps, &["defrag"]);
    assert_eq!(
        defrag.matches("Finished defragmenting etcd member").count(),
        3,
        "{defrag}"
    );
    for s in statuses(&eps) {
        let in_use = s["Status"]["dbSizeInUse"]
            .as_i64()
            .or_else(|| s["Status"]["db_size_in_use"].as_i64())
            .unwrap_or_else(|| panic!("no db size in use: {s}"));
        assert!(in_use < 65536 / 2, "still {in_use} bytes in use: {s}");
    }
    let disarmed = ok(&all[1], &["alarm", "disarm"]);
    assert!(
        disarmed.contains(&format!("memberID:{member0} alarm:NOSPACE")),
        "{disarmed:?}"
    );
    for ep in &all {
        assert_eq!(ok(ep, &["alarm", "list"]), "", "alarm list at {ep}");
    }
    assert_eq!(ok(&all[1], &["put", "small", "v"]), "OK\n");
    assert!(ok(&all[2], &["lease", "grant", "60"]).contains("granted with TTL(60s)"));

    // Nothing acknowledged was lost, on any member.
    for ep in &all {
        for (k, v) in &acked {
            assert_eq!(
                ok(ep, &["get", k, "--print-value-only"]).trim_end(),
                v,
                "{k} at {ep}"
            );
        }
        assert_eq!(ok(ep, &["get", "small", "--print-value-only"]), "v\n");
        assert_eq!(ok(ep, &["get", "to-delete"]), "");
    }
}
