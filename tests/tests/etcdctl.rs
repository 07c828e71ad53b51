//! Compatibility with Debian's etcdctl 3.4 over the etcd v3 gRPC API: against a 3-member etch
//! cluster, and output for output against a real etcd 3.4.

use std::time::Duration;

use etch_tests::{Cluster, Etcd, Node, etcdctl, wait_for};

fn out(endpoints: &str, args: &[&str], stdin: &str) -> String {
    let o = etcdctl(endpoints, args, stdin);
    let mut s = String::from_utf8_lossy(&o.stdout).to_string();
    if !o.status.success() {
        // etcdctl's last stderr line is the error it reports.
        let err = String::from_utf8_lossy(&o.stderr);
        s.push_str(&format!("FAILED: {}", err.lines().last().unwrap_or("")));
    }
    s
}

/// Masks what legitimately differs between two clusters: 16-hex-digit IDs (members, leases)
/// and the numbers after `"revision"`, `"raft_term"`, `"cluster_id"`, `"member_id"`.
fn mask(s: &str) -> String {
    let mut out = String::new();
    for word in s.split_inclusive(|c: char| !c.is_ascii_alphanumeric()) {
        let w = word.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        let tail = &word[w.len()..];
        if w.len() >= 12
            && w.chars().all(|c| c.is_ascii_hexdigit())
            && w.chars().any(|c| c.is_ascii_digit())
        {
            out.push_str("<id>");
        } else {
            out.push_str(w);
        }
        out.push_str(tail);
    }
    out
}

/// The command list run against both; each entry is (args, stdin).
fn script() -> Vec<(Vec<&'static str>, &'static str)> {
    vec![
        (vec!["put", "a", "1"], ""),
        (vec!["put", "a", "2", "--prev-kv"], ""),
        (vec!["put", "b", "3"], ""),
        (vec!["put", "c/x", "4"], ""),
        (vec!["put", "c/y", "5"], ""),
        (vec!["get", "a"], ""),
        (vec!["get", "a", "--print-value-only"], ""),
        (vec!["get", "", "--from-key", "--keys-only"], ""),
        (vec!["get", "c/", "--prefix"], ""),
        (vec!["get", "a", "c", "--limit", "1"], ""),
        (
            vec![
                "get",
                "",
                "--from-key",
                "--sort-by",
                "VALUE",
                "--order",
                "DESCEND",
                "--print-value-only",
            ],
            "",
        ),
        (
            vec!["get", "c/", "--prefix", "--count-only", "-w", "fields"],
            "",
        ),
        (vec!["get", "a", "--rev", "2", "--print-value-only"], ""),
        (vec!["get", "a", "--rev", "99"], ""),
        (vec!["put", "", "x"], ""),
        (vec!["del", "c/", "--prefix", "--prev-kv"], ""),
        (vec!["del", "nothing"], ""),
        (
            vec!["txn"],
            "value(\"a\") = \"2\"\n\nput a 10\nget b\n\nput a 20\n\n",
        ),
        (
            vec!["txn"],
            "value(\"a\") = \"2\"\n\nput a 10\n\nput a 20\n\n",
        ),
        (vec!["get", "a", "--print-value-only"], ""),
        (vec!["compaction", "3"], ""),
        (vec!["get", "a", "--rev", "2"], ""),
        (vec!["lease", "grant", "100"], ""),
        (vec!["lease", "revoke", "1234"], ""),
        (vec!["put", "x", "y", "--lease", "1234"], ""),
        (vec!["put", "x", "--ignore-value"], ""),
        (vec!["lock", "mylock", "echo", "held"], ""),
        (vec!["alarm", "list"], ""),
        (vec!["alarm", "disarm"], ""),
        (vec!["defrag"], ""),
    ]
}

#[test]
fn etcdctl_output_matches_real_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let etch = Node::start(&dir.path().join("etch"), &[]);
    for (args, stdin) in script() {
        let want = mask(&out(&etcd.endpoint, &args, stdin).replace(&etcd.endpoint, "<ep>"));
        let got = mask(&out(&etch.grpc, &args, stdin).replace(&etch.grpc, "<ep>"));
        assert_eq!(got, want, "etcdctl {args:?}");
    }
}

#[test]
fn etcdctl_against_a_three_member_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let all: Vec<String> = c.nodes.iter().map(|n| n.grpc.clone()).collect();
    let eps = all.join(",");
    // Through every member, followers included.
    for (i, ep) in all.iter().enumerate() {
        assert_eq!(out(ep, &["put", &format!("k{i}"), "v"], ""), "OK\n");
    }
    for ep in &all {
        assert_eq!(
            out(ep, &["get", "k", "--prefix", "--keys-only"], ""),
            "k0\n\nk1\n\nk2\n\n"
        );
    }
    let status = out(&eps, &["endpoint", "status", "-w", "json"], "");
    let v: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    let leaders: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Status"]["leader"].clone())
        .collect();
    assert!(leaders.windows(2).all(|w| w[0] == w[1]), "{status}");
    assert!(out(&eps, &["endpoint", "status", "-w", "table"], "").contains("3.5."));
    // etcdctl 3.4 prints health results on stderr.
    let health = etcdctl(&eps, &["endpoint", "health"], "");
    assert_eq!(
        String::from_utf8_lossy(&health.stderr)
            .matches("is healthy")
            .count(),
        3
    );
    let members = out(&all[0], &["member", "list"], "");
    assert_eq!(members.lines().count(), 3, "{members}");
    // A lease through a follower: grant, attach, keep alive once, time to live, revoke.
    let grant = out(&all[1], &["lease", "grant", "30"], "");
    let id = grant.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(
        out(&all[2], &["put", "leased", "v", "--lease", &id], ""),
        "OK\n"
    );
    assert!(
        out(&all[2], &["lease", "keep-alive", "--once", &id], "")
            .contains("keepalived with TTL(30)")
    );
    assert!(
        out(&all[1], &["lease", "timetolive", &id, "--keys"], "")
            .contains("attached keys([leased])")
    );
    assert!(out(&all[0], &["lease", "list"], "").contains(&id));
    assert_eq!(
        out(&all[2], &["lease", "revoke", &id], ""),
        format!("lease {id} revoked\n")
    );
    assert_eq!(out(&all[0], &["get", "leased"], ""), "");
    // Watch from a past revision with prev-kv, on a follower.
    let mut w = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &all[1],
            "watch",
            "k",
            "--prefix",
            "--rev",
            "2",
            "--prev-kv",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(w.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "PUT");
    assert_eq!(lines.next().unwrap().unwrap(), "k0");
    let _ = w.kill();
    let _ = w.wait();

    // Every member reports the same history hash.
    let hashes = out(&eps, &["endpoint", "hashkv", "-w", "json"], "");
    let v: serde_json::Value = serde_json::from_str(hashes.trim()).unwrap();
    let hs: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["HashKV"]["hash"].as_u64().unwrap())
        .collect();
    assert_eq!(hs.len(), 3);
    assert!(hs.windows(2).all(|w| w[0] == w[1]), "{hashes}");
    let table = out(&eps, &["endpoint", "hashkv", "-w", "table"], "");
    assert!(
        table.contains("HASH") && table.matches(&hs[0].to_string()).count() == 3,
        "{table}"
    );
    // Health as JSON: every member healthy (etcdctl 3.4 prints it on stdout with -w json).
    let health = etcdctl(&eps, &["endpoint", "health", "-w", "json"], "");
    let text = String::from_utf8_lossy(&health.stdout);
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(
        v.as_array()
            .unwrap()
            .iter()
            .filter(|h| h["health"] == true)
            .count(),
        3,
        "{text}"
    );
    // Members learn each other's client URLs from their peer Hellos.
    let members = out(&all[0], &["member", "list", "-w", "json"], "");
    let v: serde_json::Value = serde_json::from_str(members.trim()).unwrap();
    for m in v["members"].as_array().unwrap() {
        let urls = m["clientURLs"].as_array().map_or(0, Vec::len);
        assert_eq!(urls, 1, "{members}");
    }

    // Lock: a second holder on another member waits for the first.
    let mut first = Held::spawn(&all[1], &["lock", "L"]);
    let key1 = first.line();
    assert!(key1.starts_with("L/"), "{key1}");
    let mut second = Held::spawn(&all[2], &["lock", "L"]);
    wait_for(Duration::from_secs(20), "second lock waiter", || {
        let keys = out(&all[0], &["get", "L/", "--prefix", "--keys-only"], "");
        (keys.lines().filter(|l| !l.is_empty()).count() == 2).then_some(())
    });
    assert!(
        second.try_line().is_none(),
        "second lock acquired while held"
    );
    first.terminate();
    let key2 = second.line();
    assert!(key2.starts_with("L/") && key2 != key1, "{key2}");
    second.terminate();

    // Elect: a candidate, an observer on another member, a successor on a third.
    let mut leader = Held::spawn(&all[1], &["elect", "E", "p1"]);
    assert!(leader.line().starts_with("E/"));
    assert_eq!(leader.line(), "p1");
    let mut observer = Held::spawn(&all[0], &["elect", "-l", "E"]);
    assert!(observer.line().starts_with("E/"));
    assert_eq!(observer.line(), "p1");
    let mut next = Held::spawn(&all[2], &["elect", "E", "p2"]);
    wait_for(Duration::from_secs(20), "second candidate", || {
        let keys = out(&all[0], &["get", "E/", "--prefix", "--keys-only"], "");
        (keys.lines().filter(|l| !l.is_empty()).count() == 2).then_some(())
    });
    assert!(
        next.try_line().is_none(),
        "second candidate elected while p1 leads"
    );
    leader.terminate();
    assert!(next.line().starts_with("E/"));
    assert_eq!(next.line(), "p2");
    assert!(observer.line().starts_with("E/"));
    assert_eq!(observer.line(), "p2");
    next.terminate();
    observer.terminate();

    // move-leader: etcdctl finds the leader among the endpoints and hands leadership over.
    let status = |eps: &str| -> Vec<serde_json::Value> {
        let s = out(eps, &["endpoint", "status", "-w", "json"], "");
        serde_json::from_str::<serde_json::Value>(s.trim())
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let before = status(&eps);
    let leader_id = before[0]["Status"]["leader"].as_u64().unwrap();
    let target = before
        .iter()
        .map(|s| s["Status"]["header"]["member_id"].as_u64().unwrap())
        .find(|id| *id != leader_id)
        .unwrap();
    let moved = out(&eps, &["move-leader", &format!("{target:x}")], "");
    assert!(
        moved.contains(&format!(
            "Leadership transferred from {leader_id:x} to {target:x}"
        )),
        "{moved}"
    );
    let after = status(&eps);
    assert!(
        after
            .iter()
            .all(|s| s["Status"]["leader"].as_u64() == Some(target)),
        "{after:?}"
    );
    let bad = out(&eps, &["move-leader", "1234"], "");
    assert!(bad.contains("etcdserver: bad leader transferee"), "{bad}");
}

/// A long-running etcdctl (lock, elect, watch) whose stdout lines arrive on a channel.
struct Held {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Held {
    fn spawn(endpoint: &str, args: &[&str]) -> Held {
        use std::io::BufRead;
        let mut child = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Held { child, lines }
    }

    /// The next stdout line, waiting up to 20 s.
    fn line(&mut self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .expect("etcdctl printed nothing within 20 s")
    }

    /// A line already printed, if any.
    fn try_line(&mut self) -> Option<String> {
        self.lines.try_recv().ok()
    }

    /// SIGTERM (etcdctl then unlocks / resigns) and wait for it to exit.
    fn terminate(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcdctl 3.4 sends an endpoint given with its scheme as the whole URL in `:authority` on the
/// connection it opens for Maintenance calls; etch repairs it (`api::h2fix`) instead of
/// resetting the stream as h2 alone would.
#[test]
fn etcdctl_maintenance_calls_with_a_scheme_in_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let etch = Node::start(dir.path(), &[]);
    let ep = format!("http://{}", etch.grpc);
    assert_eq!(out(&ep, &["put", "k", "v"], ""), "OK\n");
    let status = out(&ep, &["endpoint", "status", "-w", "json"], "");
    assert!(!status.contains("FAILED"), "{status}");
    let v: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    assert_eq!(v[0]["Endpoint"], ep.as_str(), "{status}");
    assert!(
        v[0]["Status"]["leader"].as_u64().unwrap_or(0) != 0,
        "{status}"
    );
    let table = out(&ep, &["endpoint", "status", "-w", "table"], "");
    assert!(table.contains(&ep) && !table.contains("FAILED"), "{table}");
    let hashkv = out(&ep, &["endpoint", "hashkv", "-w", "json"], "");
    let v: serde_json::Value =
        serde_json::from_str(hashkv.trim()).unwrap_or_else(|e| panic!("{e}: {hashkv}"));
    assert!(v[0]["HashKV"]["hash"].as_u64().is_some(), "{hashkv}");
    assert_eq!(
        out(&ep, &["defrag"], ""),
        format!("Finished defragmenting etcd member[{ep}]\n")
    );
}
