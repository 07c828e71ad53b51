//! Membership changes driven the way an operator drives them: etcdctl's `member add`, `member
//! remove`, `member update` and `member promote` against real members, new members started with
//! the `--initial-cluster` that `member add` printed and `--initial-cluster-state existing`.

use std::time::Duration;

use etch_tests::{Cluster, Node, etcdctl, free_udp_port, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

/// Runs etcdctl against `endpoint`; returns (success, stdout, stderr).
fn ctl(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let o = etcdctl(endpoint, args, "");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn ctl_ok(endpoint: &str, args: &[&str]) -> String {
    let (ok, out, err) = ctl(endpoint, args);
    assert!(ok, "etcdctl {args:?} failed: {err}");
    out
}

fn ctl_err(endpoint: &str, args: &[&str]) -> String {
    let (ok, out, err) = ctl(endpoint, args);
    assert!(!ok, "etcdctl {args:?} should fail, printed {out}");
    err
}

/// `member list` lines as (hex ID, status, name, is learner).
fn members(endpoint: &str) -> Vec<(String, String, String, bool)> {
    ctl_ok(endpoint, &["member", "list"])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(", ").collect();
            (
                f[0].to_owned(),
                f[1].to_owned(),
                f[2].to_owned(),
                f[f.len() - 1] == "true",
            )
        })
        .collect()
}

/// Adds member `name` through `endpoint` with etcdctl and starts it with what `member add`
/// printed; returns the new member, its hex ID and its peer URL.
fn add_and_start(
    dir: &std::path::Path,
    endpoint: &str,
    name: &str,
    learner: bool,
) -> (Node, String, String) {
    let url = format!("http://127.0.0.1:{}", free_udp_port());
    let peer_urls = format!("--peer-urls={url}");
    let mut args = vec!["member", "add", name, &peer_urls];
    if learner {
        args.push("--learner");
    }
    let out = ctl_ok(endpoint, &args);
    let id = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("member add printed {out}"))
        .to_owned();
    let env = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing in {out}"))
            .trim_matches('"')
            .to_owned()
    };
    assert_eq!(env("ETCD_NAME"), name);
    assert_eq!(env("ETCD_INITIAL_CLUSTER_STATE"), "existing");
    let initial = env("ETCD_INITIAL_CLUSTER");
    assert!(initial.contains(&format!("{name}={url}")), "{initial}");
    let node = Node::launch(
        dir.join(name),
        &[
            "--name",
            name,
            "--listen-peer-urls",
            &url,
            "--initial-advertise-peer-urls",
            &url,
            "--initial-cluster",
            &initial,
            "--initial-cluster-state",
            "existing",
        ],
    );
    (node, id, url)
}

/// Puts `total` sequential keys through every member of `c` with etch-bench in the background
/// (`clients` clients on 3 connections), logging each acknowledged key to `ack`.
fn acked_load(
    c: &Cluster,
    clients: u32,
    total: u32,
    ack: &std::path::Path,
) -> std::thread::JoinHandle<std::process::Output> {
    let (endpoints, ack) = (c.endpoints(), ack.to_string_lossy().to_string());
    let (clients, total) = (clients.to_string(), total.to_string());
    std::thread::spawn(move || {
        etch_tests::bench(
            &endpoints,
            &[
                "--clients",
                &clients,
                "--conns",
                "3",
                "put",
                "--total",
                &total,
                "--sequential-keys",
                "--key-space-size",
                &total,
                "--ack-log",
                &ack,
            ],
        )
    })
}

/// The hex ID of member `name` in `endpoint`'s member list.
fn id_named(endpoint: &str, name: &str) -> String {
    members(endpoint)
        .into_iter()
        .find(|m| m.2 == name)
        .unwrap_or_else(|| panic!("no member {name}"))
        .0
}

/// Waits until `endpoint` serves `key` = `value` from its own store.
fn has_locally(endpoint: &str, key: &str, value: &str) {
    wait_for(DEADLINE, "the member to have the key", || {
        let (ok, out, _) = ctl(
            endpoint,
            &["get", key, "--consistency=s", "--print-value-only"],
        );
        (ok && out.trim() == value).then_some(())
    });
}

#[test]
fn a_member_is_added_replaced_and_the_cluster_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let first = c.nodes[0].grpc.clone();
    ctl_ok(&first, &["put", "before", "1"]);

    // Grow to four: the new member joins, gets the data, publishes its name.
    let (mut m3, m3_id, _) = add_and_start(dir.path(), &first, "m3", false);
    has_locally(&m3.grpc, "before", "1");
    wait_for(DEADLINE, "the new member to be started", || {
        members(&first)
            .iter()
            .any(|(id, status, name, _)| *id == m3_id && status == "started" && name == "m3")
            .then_some(())
    });
    ctl_ok(&m3.grpc, &["put", "through-new", "2"]);
    has_locally(&c.nodes[1].grpc, "through-new", "2");

    // Remove m1 through another follower: it stops by itself, cleanly, as etcd's does.
    let leader = c.leader();
    let victim = (1..3).find(|i| *i != leader).unwrap();
    let via = (0..3).find(|i| *i != leader && *i != victim).unwrap();
    let victim_id = id_named(&first, &format!("m{victim}"));
    let out = ctl_ok(&c.nodes[via].grpc, &["member", "remove", &victim_id]);
    assert!(
        out.contains(&victim_id) && out.contains("removed from cluster"),
        "{out}"
    );
    let status = c.nodes[victim].wait_exit(DEADLINE);
    assert!(
        status.success(),
        "a removed member exits 0, as etcd: {status}"
    );
    assert!(
        c.nodes[victim]
            .log()
            .contains("the member has been permanently removed from the cluster")
    );
    // Started again on its data dir, it stops again.
    let (status, log) = c.nodes[victim].start_expecting_failure();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("data-dir used by this member must be removed"),
        "{log}"
    );
    assert_eq!(members(&first).len(), 3);

    // Removing it twice, or an unknown member: etcd's "member not found".
    let err = ctl_err(&first, &["member", "remove", &victim_id]);
    assert!(err.contains("etcdserver: member not found"), "{err}");

    // Every remaining member restarts with the right voters and the data.
    for i in (0..3).filter(|i| *i != victim) {
        c.nodes[i].relaunch();
    }
    m3.relaunch();
    for i in (0..3).filter(|i| *i != victim) {
        c.nodes[i].wait_leader();
    }
    m3.wait_leader();
    ctl_ok(&m3.grpc, &["put", "after-restart", "3"]);
    for i in (0..3).filter(|i| *i != victim) {
        has_locally(&c.nodes[i].grpc, "after-restart", "3");
        has_locally(&c.nodes[i].grpc, "before", "1");
    }
}

#[test]
fn a_learner_serves_only_serializable_reads_until_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 1, &[]);
    let first = c.nodes[0].grpc.clone();
    ctl_ok(&first, &["put", "k", "v"]);
    // A learner that never started is not in sync: not promoted; removed again.
    let out = ctl_ok(
        &first,
        &[
            "member",
            "add",
            "idle",
            "--learner",
            "--peer-urls=http://127.0.0.1:9",
        ],
    );
    let idle = out.split_whitespace().nth(1).unwrap().to_owned();
    let err = ctl_err(&first, &["member", "promote", &idle]);
    assert!(
        err.contains("etcdserver: can only promote a learner member which is in sync with leader"),
        "{err}"
    );
    ctl_ok(&first, &["member", "remove", &idle]);
    let (learner, id, url) = add_and_start(dir.path(), &first, "l", true);
    has_locally(&learner.grpc, "k", "v");
    assert!(members(&first).iter().any(|(i, _, _, l)| *i == id && *l));

    // etcd's learner rules and messages.
    for args in [
        &["get", "k"][..],
        &["put", "x", "1"][..],
        &["member", "list"][..],
    ] {
        let err = ctl_err(&learner.grpc, args);
        assert!(
            err.contains("etcdserver: rpc not supported for learner"),
            "{args:?}: {err}"
        );
    }
    let out = ctl_ok(&learner.grpc, &["endpoint", "status", "-w", "json"]);
    assert!(out.contains("\"isLearner\":true"), "{out}");
    let err = ctl_err(
        &first,
        &[
            "member",
            "add",
            "l2",
            "--learner",
            "--peer-urls=http://127.0.0.1:1",
        ],
    );
    assert!(
        err.contains("etcdserver: too many learner members in cluster"),
        "{err}"
    );
    let err = ctl_err(
        &first,
        &["member", "add", "dup", &format!("--peer-urls={url}")],
    );
    assert!(
        err.contains("etcdserver: Peer URLs already exists"),
        "{err}"
    );
    let voter = members(&first)
        .into_iter()
        .find(|(_, _, _, l)| !l)
        .unwrap()
        .0;
    let err = ctl_err(&first, &["member", "promote", &voter]);
    assert!(
        err.contains("etcdserver: can only promote a learner member"),
        "{err}"
    );

    // Promoted once caught up, it serves everything and counts for quorum.
    wait_for(DEADLINE, "the learner to be promoted", || {
        ctl(&first, &["member", "promote", &id]).0.then_some(())
    });
    assert!(members(&first).iter().all(|(_, _, _, l)| !l));
    wait_for(DEADLINE, "the promoted member to take writes", || {
        ctl(&learner.grpc, &["put", "x", "1"]).0.then_some(())
    });
    has_locally(&first, "x", "1");
}

#[test]
fn strict_reconfig_check_protects_the_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    let down = (0..3).find(|i| *i != leader).unwrap();
    let up = (0..3).find(|i| *i != leader && *i != down).unwrap();
    let seen = c.nodes[leader].log().matches("peer disconnected").count();
    c.nodes[down].terminate();
    wait_for(DEADLINE, "the leader to see the member go", || {
        (c.nodes[leader].log().matches("peer disconnected").count() > seen).then_some(())
    });
    // Adding a voter while a voter is down could leave no quorum: refused.
    let ep = c.nodes[up].grpc.clone();
    let err = ctl_err(
        &ep,
        &["member", "add", "x", "--peer-urls=http://127.0.0.1:1"],
    );
    assert!(err.contains("etcdserver: unhealthy cluster"), "{err}");
    // Removing the member that is down is allowed; removing one that is up is not, since the
    // two left would need both.
    let id_of = |i: usize| id_named(&ep, &format!("m{i}"));
    let err = ctl_err(&ep, &["member", "remove", &id_of(up)]);
    assert!(err.contains("etcdserver: unhealthy cluster"), "{err}");
    ctl_ok(&ep, &["member", "remove", &id_of(down)]);
    assert_eq!(members(&ep).len(), 2);
    // MemberUpdate moves a member's peer URL; the others reconnect to it (through the leader:
    // it answers once it applied the change, whereas the moved member, which does not listen
    // there, may not hear of the commit before it is restarted on its new URL).
    let new_url = format!("http://127.0.0.1:{}", free_udp_port());
    let lep = c.nodes[leader].grpc.clone();
    let out = ctl_ok(
        &lep,
        &[
            "member",
            "update",
            &id_of(up),
            &format!("--peer-urls={new_url}"),
        ],
    );
    assert!(out.contains("updated in cluster"), "{out}");
    assert!(ctl_ok(&lep, &["member", "list"]).contains(&new_url));
}

/// etcd's runbook "replace a failed member", while clients write: kill a member, remove it, add
/// a new one on a new data dir and port; every acknowledged write is on all three members
/// afterwards, which hash equally at one revision.
#[test]
fn a_failed_member_is_replaced_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    let failed = (leader + 1) % 3;
    let survivor = (leader + 2) % 3;
    let ack = dir.path().join("acked.txt");
    let load = acked_load(&c, 20, 20000, &ack);
    wait_for(DEADLINE, "writes under load", || {
        (c.nodes[survivor].local_count() > 1000).then_some(())
    });
    let failed_id = id_named(&c.nodes[leader].grpc, &format!("m{failed}"));
    c.nodes[failed].kill9();
    let ep = c.nodes[survivor].grpc.clone();
    ctl_ok(&ep, &["member", "remove", &failed_id]);
    let (new, _, _) = add_and_start(dir.path(), &ep, "m3", false);
    let _ = load.join().unwrap();
    new.wait_leader();
    agree_and_keep_every_acknowledged_write(&[&c.nodes[leader], &c.nodes[survivor], &new], &ack);
}

/// Waits until every member of `alive` applied the same last revision, then checks that they
/// hash equally there, list the same members, and hold every key of `ack` (an etch-bench
/// `--ack-log`).
fn agree_and_keep_every_acknowledged_write(alive: &[&Node], ack: &std::path::Path) {
    let target = alive.iter().map(|n| n.local_revision()).max().unwrap_or(0);
    wait_for(DEADLINE, "every member to apply the last write", || {
        alive
            .iter()
            .all(|n| n.local_revision() >= target)
            .then_some(())
    });
    let rev = target.to_string();
    let eps = alive
        .iter()
        .map(|n| n.grpc.clone())
        .collect::<Vec<_>>()
        .join(",");
    let out = ctl_ok(&eps, &["endpoint", "hashkv", "--rev", &rev, "-w", "json"]);
    let hashes: Vec<u64> = serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["HashKV"]["hash"].as_u64().unwrap())
        .collect();
    assert_eq!(hashes.len(), alive.len(), "{out}");
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{out}");
    wait_for(DEADLINE, "every member to list the same members", || {
        let lists: Vec<String> = alive
            .iter()
            .map(|n| ctl_ok(&n.grpc, &["member", "list"]))
            .collect();
        lists.iter().all(|l| *l == lists[0]).then_some(())
    });
    for n in alive {
        let get = [
            "get",
            "",
            "--from-key",
            "--keys-only",
            "--consistency=s",
            "-w",
            "json",
            "--rev",
            &rev,
        ];
        let kvs = serde_json::from_str::<serde_json::Value>(&ctl_ok(&n.grpc, &get)).unwrap()["kvs"]
            .clone();
        assert!(Node::assert_all_acked_present(ack, &kvs) > 0);
    }
}

/// etcd's disaster recovery: with a majority lost for good, a survivor restarted with
/// `--force-new-cluster` serves alone with all its data, and grows again by `member add`.
#[test]
fn force_new_cluster_recovers_from_a_lost_majority() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let first = c.nodes[0].grpc.clone();
    ctl_ok(&first, &["put", "kept", "1"]);
    has_locally(&c.nodes[2].grpc, "kept", "1");
    c.nodes[0].kill9();
    c.nodes[1].kill9();
    // Alone, the survivor has no quorum: it restarts as a new one-member cluster.
    let args = c.member_args(2, &["--force-new-cluster"]);
    let data = c.nodes[2].data_dir.clone();
    c.nodes[2].kill9();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut survivor = Node::launch(data.clone(), &args);
    survivor.wait_leader();
    let ep = survivor.grpc.clone();
    assert_eq!(members(&ep).len(), 1);
    let (ok_, out, _) = ctl(&ep, &["get", "kept", "--print-value-only"]);
    assert!(ok_ && out.trim() == "1", "{out}");
    ctl_ok(&ep, &["put", "after", "2"]);
    // Restarted without the flag it stays a one-member cluster, and takes a new member.
    let plain = c.member_args(2, &[]);
    let plain: Vec<&str> = plain.iter().map(String::as_str).collect();
    survivor.kill9();
    let survivor = Node::launch(data, &plain);
    survivor.wait_leader();
    let (new, _, _) = add_and_start(dir.path(), &survivor.grpc, "n1", false);
    has_locally(&new.grpc, "after", "2");
    assert_eq!(members(&survivor.grpc).len(), 2);
}

/// Grow 3 -> 5 through learners and shrink back to 3, removing the leader itself, while clients
/// write: nothing acknowledged is lost and the three left agree.
#[test]
fn the_cluster_grows_to_five_and_shrinks_to_three_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let ack = dir.path().join("acked.txt");
    let load = acked_load(&c, 10, 15000, &ack);
    let ep = c.nodes[0].grpc.clone();
    let mut added = Vec::new();
    for name in ["m3", "m4"] {
        let (n, id, _) = add_and_start(dir.path(), &ep, name, true);
        wait_for(DEADLINE, "the learner to catch up and be promoted", || {
            ctl(&ep, &["member", "promote", &id]).0.then_some(())
        });
        added.push(n);
    }
    assert_eq!(members(&ep).iter().filter(|m| !m.3).count(), 5);
    // Remove the leader itself, then another of the first three.
    let leader = c.leader();
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let id_of = |i: usize| id_named(&added[0].grpc, &format!("m{i}"));
    let leader_id = id_of(leader);
    ctl_ok(&added[0].grpc, &["member", "remove", &leader_id]);
    assert!(c.nodes[leader].wait_exit(DEADLINE).success());
    // A new leader is elected among the four left (a membership change during the election
    // fails with "no leader", as etcd's does, and is not retried by etcdctl).
    wait_for(DEADLINE, "a new leader", || {
        ctl(&added[1].grpc, &["put", "probe", "1"]).0.then_some(())
    });
    let second = others[0];
    let second_id = id_of(second);
    ctl_ok(&added[1].grpc, &["member", "remove", &second_id]);
    assert!(c.nodes[second].wait_exit(DEADLINE).success());
    let _ = load.join().unwrap();
    let kept = others[1];
    let alive = [&c.nodes[kept], &added[0], &added[1]];
    assert_eq!(members(&alive[1].grpc).len(), 3);
    agree_and_keep_every_acknowledged_write(&alive, &ack);
}

/// A member that joins after the leader released its log (past the bootstrap entries) gets the
/// leader's snapshot, and with it the membership: it serves, lists the members, takes writes.
#[test]
fn a_member_joins_from_a_snapshot_once_the_log_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 1, &["--snapshot-count", "100"]);
    let first = c.nodes[0].grpc.clone();
    ctl_ok(&first, &["put", "marker", "before"]);
    // The leader keeps 5,000 entries behind its release point: write more than that.
    etch_tests::put_load(&c.endpoints(), 6000, 500);
    wait_for(DEADLINE, "the leader to release its log", || {
        c.nodes[0].log().contains("raft log released").then_some(())
    });
    let (new, _, _) = add_and_start(dir.path(), &first, "m1", false);
    has_locally(&new.grpc, "marker", "before");
    assert!(new.log().contains("installed a snapshot from the leader"));
    wait_for(DEADLINE, "the new member to list both members", || {
        (ctl(&new.grpc, &["member", "list"]).1.lines().count() == 2).then_some(())
    });
    ctl_ok(&new.grpc, &["put", "marker", "after"]);
    has_locally(&first, "marker", "after");
}
