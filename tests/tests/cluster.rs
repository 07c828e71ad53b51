//! A 3-member cluster over QUIC on loopback: replication, any-member access, failover.

use std::time::Duration;

use etch_tests::{Cluster, Node, bench, wait_for};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// The whole keyspace of `n` at revision `rev`, as etcdctl JSON key-values.
fn keyspace(n: &Node, rev: i64) -> Value {
    json(&n.ctl_ok(&[
        "get",
        "",
        "--from-key",
        "--rev",
        &rev.to_string(),
        "-w",
        "json",
    ]))["kvs"]
        .clone()
}

fn revision(n: &Node) -> i64 {
    json(&n.ctl_ok(&["get", "probe", "-w", "json"]))["header"]["revision"]
        .as_i64()
        .unwrap()
}

/// Waits until `lagging` has applied `reference`'s current revision; returns that revision.
fn caught_up(lagging: &Node, reference: &Node, what: &str) -> i64 {
    let target = revision(reference);
    wait_for(Duration::from_secs(60), what, || {
        (lagging.local_revision() >= target).then_some(())
    });
    target
}

#[test]
fn three_members_replicate_and_serve_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    // One leader, one term, on every member.
    let statuses: Vec<Value> = c.nodes.iter().map(|n| n.status().unwrap()).collect();
    let term = statuses[0]["raftTerm"].clone();
    assert!(
        statuses.iter().all(|s| s["raftTerm"] == term),
        "{statuses:?}"
    );
    let leaders = statuses
        .iter()
        .filter(|s| s["leader"] == s["header"]["member_id"])
        .count();
    assert_eq!(leaders, 1);
    let simple = c.nodes[0].ctl_ok(&["endpoint", "status"]);
    assert!(simple.contains(", 3.5."), "{simple}");

    // Writes through every member, followers included.
    for (i, n) in c.nodes.iter().enumerate() {
        assert_eq!(
            n.ctl_ok(&["put", &format!("k{i}"), &format!("from-m{i}")]),
            "OK\n"
        );
    }
    let t = c.nodes[(leader + 1) % 3].ctl_ok(&["del", "k0"]);
    assert_eq!(t, "1\n");
    // Linearizable reads on every member see every write, at the same revision.
    let rev = revision(&c.nodes[leader]);
    assert_eq!(rev, 5);
    for n in &c.nodes {
        assert_eq!(
            n.ctl_ok(&["get", "k", "--prefix", "--print-value-only"]),
            "from-m1\nfrom-m2\n"
        );
        assert_eq!(revision(n), rev);
    }
    let reference = keyspace(&c.nodes[0], rev);
    for n in &c.nodes[1..] {
        assert_eq!(keyspace(n, rev), reference);
    }
    // Every response header names the cluster and the answering member.
    let ids: std::collections::BTreeSet<u64> = c
        .nodes
        .iter()
        .map(|n| {
            json(&n.ctl_ok(&["get", "k1", "-w", "json"]))["header"]["member_id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 3);
}

/// Starts `total` puts of distinct 16-byte keys from `clients` clients over `conns`
/// connections against `c`, each acknowledged key written to `ack` (etch-bench `--ack-log`).
fn put_load_with_ack_log(
    c: &Cluster,
    ack: &std::path::Path,
    clients: u32,
    conns: u32,
    total: u32,
) -> std::thread::JoinHandle<std::process::Output> {
    let (endpoints, ack_arg) = (c.endpoints(), ack.to_string_lossy().to_string());
    std::thread::spawn(move || {
        let (clients, conns, total) = (clients.to_string(), conns.to_string(), total.to_string());
        bench(
            &endpoints,
            &[
                "--clients",
                &clients,
                "--conns",
                &conns,
                "put",
                "--total",
                &total,
                "--sequential-keys",
                "--key-space-size",
                &total,
                "--key-size",
                "16",
                "--ack-log",
                &ack_arg,
            ],
        )
    })
}

#[test]
fn leader_killed_under_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let old = c.leader();
    let ack = dir.path().join("acked.txt");
    let load = put_load_with_ack_log(&c, &ack, 30, 3, 30_000);
    let probe = (old + 1) % 3;
    wait_for(Duration::from_secs(60), "writes under load", || {
        (c.nodes[probe].local_count() > 2000).then_some(())
    });
    c.nodes[old].kill9();
    let _ = load.join().unwrap();
    // A new leader is elected among the survivors and writes resume.
    let new = c.leader();
    assert_ne!(new, old);
    etch_tests::put_load(&c.endpoints(), 500, 100);
    // The old leader comes back and catches up.
    c.nodes[old].restart();
    let target = caught_up(&c.nodes[old], &c.nodes[new], "the old leader to catch up");
    // Every member holds the same keyspace at the same revision, with every acknowledged key.
    let reference = keyspace(&c.nodes[new], target);
    for n in &c.nodes {
        assert_eq!(
            keyspace(n, target),
            reference,
            "member {} differs",
            n.native
        );
    }
    assert!(Node::assert_all_acked_present(&ack, &reference) > 2000);
}

/// Group commit and batched apply answer a put only once a majority has it on disk: killing
/// every member with SIGKILL while puts are being acknowledged, then starting them again, loses
/// none of the acknowledged ones.
#[test]
fn every_member_killed_during_a_burst_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let ack = dir.path().join("acked.txt");
    let load = put_load_with_ack_log(&c, &ack, 50, 5, 40_000);
    wait_for(Duration::from_secs(60), "a burst of writes", || {
        (c.nodes[0].local_count() > 3000).then_some(())
    });
    // All three at once, while puts are still being answered.
    for n in &mut c.nodes {
        n.kill9();
    }
    let _ = load.join().unwrap();
    for n in &mut c.nodes {
        n.relaunch();
    }
    let leader = c.leader();
    etch_tests::put_load(&c.endpoints(), 100, 100);
    let target = revision(&c.nodes[leader]);
    let reference = keyspace(&c.nodes[leader], target);
    let checked = Node::assert_all_acked_present(&ack, &reference);
    assert!(checked > 3000, "only {checked} puts acknowledged");
    for n in &c.nodes {
        wait_for(Duration::from_secs(60), "every member to catch up", || {
            (n.local_revision() >= target).then_some(())
        });
        assert_eq!(
            keyspace(n, target),
            reference,
            "member {} differs",
            n.native
        );
    }
}

#[test]
fn without_quorum_requests_fail_promptly_with_no_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    c.nodes[0].ctl_ok(&["put", "a", "1"]);
    c.nodes[1].kill9();
    c.nodes[2].kill9();
    // Within a few election timeouts the survivor knows it has no leader (check-quorum or
    // pre-vote), and then says so at once instead of hanging.
    let err = wait_for(Duration::from_secs(30), "no leader", || {
        let o = c.nodes[0].etchctl(&["put", "a", "2", "--command-timeout", "20s"]);
        let e = String::from_utf8_lossy(&o.stderr).to_string();
        e.contains("no leader").then_some(e)
    });
    assert_eq!(err, "Error: etcdserver: no leader\n");
    let o = c.nodes[0].etchctl(&["get", "a", "--command-timeout", "20s"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "Error: etcdserver: no leader\n"
    );
    // Serializable reads still work from the local copy.
    assert_eq!(
        c.nodes[0].ctl_ok(&["get", "a", "--consistency", "s", "--print-value-only"]),
        "1\n"
    );
    // Quorum back: writes work again.
    c.nodes[1].restart();
    c.leader();
    wait_for(
        Duration::from_secs(30),
        "writes after quorum returns",
        || {
            c.nodes[0]
                .etchctl(&["put", "a", "3"])
                .status
                .success()
                .then_some(())
        },
    );
}

#[test]
fn peer_with_wrong_token_is_rejected_and_garbage_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    // A member of another cluster (other token) that lists m0's peer URL as its peer.
    let _outsider = Node::launch_outsider(dir.path(), &c.peer_urls[0], "another-cluster", &[]);
    wait_for(Duration::from_secs(30), "the rejection in m0's log", || {
        let log = c.nodes[0].log();
        (log.contains("rejected peer connection") && log.contains("cluster ID mismatch"))
            .then_some(())
    });
    // Random datagrams and truncated QUIC-looking packets at every member's peer port.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for url in &c.peer_urls {
        let addr = url.trim_start_matches("http://");
        for i in 0..200u32 {
            let len = (i as usize * 37) % 1400 + 1;
            let packet: Vec<u8> = (0..len)
                .map(|j| (j as u32 ^ i.wrapping_mul(2654435761)) as u8)
                .collect();
            let _ = sock.send_to(&packet, addr);
        }
        let _ = sock.send_to(&[0xc0, 0, 0, 0, 1, 8], addr);
        let _ = sock.send_to(&[0xff; 1200], addr);
    }
    // The cluster is unaffected.
    for n in &c.nodes {
        assert_eq!(n.ctl_ok(&["put", "still", "here"]), "OK\n");
        assert!(!n.log().contains("panicked"));
    }
    c.leader();
}

#[test]
fn graceful_stop_of_the_leader_hands_leadership_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    c.nodes[0].ctl_ok(&["put", "before", "1"]);
    let old = c.leader();
    let status = c.nodes[old].terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    let log = c.nodes[old].log();
    assert!(log.contains("transferring leadership"), "{log}");
    let new = c.leader();
    assert_ne!(new, old);
    assert_eq!(
        c.nodes[new].ctl_ok(&["get", "before", "--print-value-only"]),
        "1\n"
    );
    c.nodes[new].ctl_ok(&["put", "after", "2"]);
}

/// A 3-member cluster (`args` added to every member's) that releases its log often, with a
/// follower stopped (SIGKILL) while 8,000 puts go in and the leader released the entries it
/// missed: restarted, it can only catch up by snapshot. Returns (cluster, leader, lagging).
fn follower_behind_a_released_log(dir: &std::path::Path, args: &[&str]) -> (Cluster, usize, usize) {
    // Release the log often; 5,000 entries stay for slow followers, so write well past that.
    let mut args = args.to_vec();
    args.extend(["--snapshot-count", "200"]);
    let mut c = Cluster::start(dir, 3, &args);
    let leader = c.leader();
    let lagging = (leader + 1) % 3;
    c.nodes[lagging].kill9();
    etch_tests::bench_ok(
        &c.endpoints(),
        &[
            "--clients",
            "20",
            "--conns",
            "2",
            "put",
            "--total",
            "8000",
            "--sequential-keys",
            "--key-space-size",
            "8000",
            "--val-size",
            "32",
        ],
    );
    wait_for(
        Duration::from_secs(60),
        "the leader to release its log",
        || {
            c.nodes[leader]
                .log()
                .contains("raft log released")
                .then_some(())
        },
    );
    (c, leader, lagging)
}

#[test]
fn follower_far_behind_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, leader, lagging) = follower_behind_a_released_log(dir.path(), &[]);
    c.nodes[lagging].restart();
    let target = caught_up(
        &c.nodes[lagging],
        &c.nodes[leader],
        "the lagging member to catch up",
    );
    // The store serves the snapshot's revision as soon as apply has ingested it; the sender and
    // the receiver's consensus log the transfer a moment later, so wait for both lines.
    for (node, line) in [(leader, "snapshot sent"), (lagging, "installed a snapshot")] {
        wait_for(Duration::from_secs(30), line, || {
            c.nodes[node].log().contains(line).then_some(())
        });
    }
    let reference = keyspace(&c.nodes[leader], target);
    assert_eq!(reference.as_array().unwrap().len(), 8000);
    for n in &c.nodes {
        assert_eq!(
            keyspace(n, target),
            reference,
            "member {} differs",
            n.native
        );
    }
    // The member keeps working from its installed store, also after a restart.
    c.nodes[lagging].ctl_ok(&["put", "after-snapshot", "1"]);
    c.nodes[lagging].restart();
    assert_eq!(
        c.nodes[lagging].ctl_ok(&["get", "", "--from-key", "--count-only"]),
        "8001\n"
    );
}

/// A snapshot transfer that fails partway (a disk fault on the leader's read of its store) is
/// abandoned by the follower, which installs nothing of it, and is sent again once the leader
/// reads its store again; the follower then holds what the leader holds.
#[test]
fn a_failed_snapshot_transfer_is_abandoned_and_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults");
    std::fs::write(&faults, "").unwrap();
    let faults_arg = faults.to_str().unwrap();
    let (mut c, leader, lagging) =
        follower_behind_a_released_log(dir.path(), &["--debug-disk-faults", faults_arg]);
    std::fs::write(&faults, "snapshot-read=eio\n").unwrap();
    c.nodes[lagging].restart();
    for (node, line) in [
        (leader, "snapshot send failed"),
        (lagging, "snapshot receive failed"),
    ] {
        wait_for(Duration::from_secs(30), line, || {
            c.nodes[node].log().contains(line).then_some(())
        });
    }
    assert!(
        c.nodes[leader].log().contains("Input/output error"),
        "the send failed for another reason: {}",
        c.nodes[leader].log()
    );
    assert!(!c.nodes[lagging].log().contains("installed a snapshot"));
    std::fs::write(&faults, "").unwrap();
    let target = caught_up(
        &c.nodes[lagging],
        &c.nodes[leader],
        "the lagging member to catch up once the leader reads its store again",
    );
    wait_for(Duration::from_secs(30), "installed a snapshot", || {
        c.nodes[lagging]
            .log()
            .contains("installed a snapshot")
            .then_some(())
    });
    let reference = keyspace(&c.nodes[leader], target);
    assert_eq!(reference.as_array().unwrap().len(), 8000);
    assert_eq!(keyspace(&c.nodes[lagging], target), reference);
}

#[test]
fn isolated_leader_steps_down_and_never_serves_stale_reads() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    c.nodes[0].ctl_ok(&["put", "k", "before"]);
    let old = c.leader();
    let old_id = c.nodes[old].status().unwrap()["header"]["member_id"]
        .as_u64()
        .unwrap();
    let port: u16 = c.peer_urls[old]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let cut = etch_tests::Isolation::udp_port(port);
    // The majority elects a new leader and keeps taking writes.
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    wait_for(
        Duration::from_secs(30),
        "a new leader in the majority",
        || {
            let s = c.nodes[others[0]].status()?;
            let l = s["leader"].as_u64()?;
            (l != 0 && l != old_id).then_some(())
        },
    );
    wait_for(Duration::from_secs(30), "writes in the majority", || {
        c.nodes[others[0]]
            .etchctl(&["put", "k", "after"])
            .status
            .success()
            .then_some(())
    });
    // The isolated old leader steps down (check-quorum) and knows no leader.
    wait_for(
        Duration::from_secs(30),
        "the old leader to step down",
        || {
            let s = c.nodes[old].status()?;
            (s["leader"].as_u64() != Some(old_id)).then_some(())
        },
    );
    // It refuses linearizable reads and writes: never the stale "before".
    let o = c.nodes[old].etchctl(&["get", "k", "--print-value-only", "--command-timeout", "15s"]);
    assert!(
        !o.status.success(),
        "stale linearizable read served: {:?}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        !c.nodes[old]
            .etchctl(&["put", "x", "1", "--command-timeout", "15s"])
            .status
            .success()
    );
    // Serializable reads are local by definition: they may be stale, and say so by revision.
    assert_eq!(
        c.nodes[old].ctl_ok(&["get", "k", "--consistency", "s", "--print-value-only"]),
        "before\n"
    );
    // Healed, it follows the new leader and catches up.
    drop(cut);
    wait_for(
        Duration::from_secs(60),
        "the healed member to catch up",
        || {
            let o = c.nodes[old].etchctl(&["get", "k", "--print-value-only"]);
            (String::from_utf8_lossy(&o.stdout) == "after\n").then_some(())
        },
    );
    let new = c.leader();
    assert_ne!(new, old);
}

#[test]
fn sigstopped_follower_resumes_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    c.nodes[follower].signal("STOP");
    etch_tests::bench_ok(
        &c.nodes[leader].native,
        &[
            "--clients",
            "10",
            "put",
            "--total",
            "3000",
            "--sequential-keys",
            "--key-space-size",
            "3000",
        ],
    );
    c.nodes[follower].signal("CONT");
    let target = caught_up(
        &c.nodes[follower],
        &c.nodes[leader],
        "the resumed follower to catch up",
    );
    assert_eq!(
        keyspace(&c.nodes[follower], target),
        keyspace(&c.nodes[leader], target)
    );
}

#[test]
fn mutual_tls_between_peers_refuses_an_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = etch_tests::make_pki(&dir.path().join("pki"), "cluster");
    let c = Cluster::start(
        dir.path(),
        3,
        &[
            "--peer-cert-file",
            &cert,
            "--peer-key-file",
            &key,
            "--peer-trusted-ca-file",
            &ca,
            "--peer-client-cert-auth",
        ],
    );
    for (i, n) in c.nodes.iter().enumerate() {
        n.ctl_ok(&["put", &format!("tls{i}"), "ok"]);
    }
    assert_eq!(
        c.nodes[2].ctl_ok(&["get", "tls", "--prefix", "--count-only"]),
        "3\n"
    );
    // A process with a certificate from another CA reaches m0's peer port.
    let (other_ca, other_cert, other_key) =
        etch_tests::make_pki(&dir.path().join("pki"), "intruder");
    let _outsider = Node::launch_outsider(
        dir.path(),
        &c.peer_urls[0],
        "etch-test",
        &[
            "--peer-cert-file",
            &other_cert,
            "--peer-key-file",
            &other_key,
            "--peer-trusted-ca-file",
            &other_ca,
        ],
    );
    wait_for(
        Duration::from_secs(30),
        "m0 to refuse the intruder's handshake",
        || {
            c.nodes[0]
                .log()
                .contains("rejected peer connection: TLS handshake failed")
                .then_some(())
        },
    );
    assert!(
        !c.nodes[0].log().contains("cluster ID mismatch"),
        "refused at TLS, before any frame"
    );
    for n in &c.nodes {
        n.ctl_ok(&["put", "still", "fine"]);
    }
}

/// Peer certificates are reloaded when their files change: a member whose files are replaced
/// presents the new certificate on its next connections, in both directions, without a
/// restart (here first an untrusted one, refused by a peer, then a good one, accepted).
#[test]
fn peer_certificate_rotates_when_its_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let (ca, cert, key) = etch_tests::make_pki(&pki, "cluster");
    let (_, bad_cert, bad_key) = etch_tests::make_pki(&pki, "intruder");
    // m0 reads its own copies, which the test replaces; the others use the originals.
    let (m0_cert, m0_key) = (
        dir.path().join("m0-peer.pem"),
        dir.path().join("m0-peer-key.pem"),
    );
    std::fs::copy(&cert, &m0_cert).unwrap();
    std::fs::copy(&key, &m0_key).unwrap();
    let replace = |from: &str, to: &std::path::Path| {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    };
    let tls = |c: &str, k: &str| -> Vec<String> {
        [
            "--peer-cert-file",
            c,
            "--peer-key-file",
            k,
            "--peer-trusted-ca-file",
            &ca,
            "--peer-client-cert-auth",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let peer_urls: Vec<String> = (0..3)
        .map(|_| format!("http://127.0.0.1:{}", etch_tests::free_udp_port()))
        .collect();
    let initial: Vec<String> = peer_urls
        .iter()
        .enumerate()
        .map(|(i, u)| format!("m{i}={u}"))
        .collect();
    let initial = initial.join(",");
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let name = format!("m{i}");
            let files = if i == 0 {
                tls(&m0_cert.to_string_lossy(), &m0_key.to_string_lossy())
            } else {
                tls(&cert, &key)
            };
            let mut args = vec![
                "--name",
                &name,
                "--listen-peer-urls",
                &peer_urls[i],
                "--initial-advertise-peer-urls",
                &peer_urls[i],
                "--initial-cluster",
                &initial,
                "--initial-cluster-token",
                "rotate",
            ];
            args.extend(files.iter().map(String::as_str));
            Node::launch(dir.path().join(&name), &args)
        })
        .collect();
    for n in &nodes {
        n.wait_leader();
    }
    let m0_id = format!(
        "{:x}",
        nodes[0].status().unwrap()["header"]["member_id"]
            .as_u64()
            .unwrap()
    );
    // An untrusted certificate in m0's files: m1, restarted, dials m0 and refuses the
    // certificate m0 now presents (m0 reloaded it for that handshake, without a restart).
    replace(&bad_cert, &m0_cert);
    replace(&bad_key, &m0_key);
    nodes[1].relaunch();
    wait_for(
        Duration::from_secs(30),
        "m1 to refuse m0's new certificate",
        || {
            let log = nodes[0].log();
            (log.contains("certificate reloaded") && log.contains("invalid peer certificate"))
                .then_some(())
        },
    );
    assert!(
        !nodes[1].log().contains(&format!("peer={m0_id}")),
        "m1 reached m0"
    );
    // The cluster's certificate again: m1 connects to m0.
    replace(&cert, &m0_cert);
    replace(&key, &m0_key);
    wait_for(Duration::from_secs(30), "m1 to connect to m0", || {
        let log = nodes[1].log();
        (log.contains("connected to peer") && log.contains(&format!("peer={m0_id}"))).then_some(())
    });
    // m1 connected to m0 only once m0's certificate was good again: m0's own connection to
    // m1 is then replaced, and writes through m1 go through once m1 hears from the leader.
    for n in &nodes {
        wait_for(
            Duration::from_secs(30),
            "a write through every member",
            || {
                n.etchctl(&["put", "rotated", "yes"])
                    .status
                    .success()
                    .then_some(())
            },
        );
    }
}

/// A member restarted with kill -9 dials its peers at once; they take that as the sign their
/// own connections to it are stale and replace them right away, instead of writing into the
/// dead connection until QUIC's idle timeout (5 s) ends it.
#[test]
fn peers_replace_their_connection_to_a_restarted_member_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    c.nodes[follower].ctl_ok(&["put", "before", "1"]);
    // Connections younger than 1 s are never replaced (two members dialing each other at the
    // same time must not redial forever): let the cluster's age past that first. This sleep
    // sets up the scenario; nothing below depends on timing.
    std::thread::sleep(Duration::from_millis(1500));
    c.nodes[follower].relaunch();
    wait_for(
        Duration::from_secs(30),
        "the leader to replace its connection",
        || {
            c.nodes[leader]
                .log()
                .contains("peer reconnected to us: replacing the connection to it")
                .then_some(())
        },
    );
    c.nodes[follower].wait_leader();
    c.nodes[follower].ctl_ok(&["put", "after", "1"]);
    assert_eq!(
        c.nodes[follower].ctl_ok(&["get", "after", "--print-value-only"]),
        "1\n"
    );
}

#[test]
fn bad_peer_tls_flags_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(etch_tests::bin("etch"))
        .args([
            "--data-dir",
            &dir.path().join("d").to_string_lossy(),
            "--peer-client-cert-auth",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--peer-client-cert-auth"));
}

/// Runs `test` as a peer of the member listening on `peer_url`: on a runtime of its own,
/// with etch's own QUIC endpoint (auto TLS, which accepts the member's generated
/// certificate) and the member's peer address.
fn as_peer<F: std::future::Future<Output = ()>>(
    peer_url: &str,
    test: impl FnOnce(quinn::Endpoint, std::net::SocketAddr) -> F,
) {
    let addr: std::net::SocketAddr = peer_url.trim_start_matches("http://").parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ep = etch_node::actors::transport::endpoint(sock, None).unwrap();
        test(ep, addr).await;
    });
}

/// A raft message of type `t` from member `from` to member `to`, every other field default.
fn raft_message(t: raft::eraftpb::MessageType, from: u64, to: u64) -> raft::eraftpb::Message {
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(t);
    m.from = from;
    m.to = to;
    m
}

/// A raft message as the peer transport frames it.
fn raft_frame(m: raft::eraftpb::Message) -> bytes::Bytes {
    use etch_node::core::peer::{Outbound, outbound};
    match outbound(m) {
        Some(Outbound::Frame(b)) => b,
        other => panic!("{other:?}"),
    }
}

/// `log` has a "rejected peer connection" line giving each of `reasons`, and no panic.
fn assert_rejected(log: &str, reasons: &[&str]) {
    for why in reasons {
        assert!(
            log.lines()
                .any(|l| l.contains("rejected peer connection") && l.contains(why)),
            "{why}: {log}"
        );
    }
    assert!(!log.contains("panicked"), "{log}");
}

/// Every member still takes a write.
fn assert_unharmed(c: &Cluster) {
    for n in &c.nodes {
        n.ctl_ok(&["put", "unharmed", "yes"]);
    }
}

/// Connects to the member at `addr` from `ep`, opens a stream, sends `hello` then `frame`;
/// when `closes`, waits (10 s at most) for the member to close the connection on it.
async fn send_as_peer(
    ep: quinn::Endpoint,
    addr: std::net::SocketAddr,
    hello: bytes::Bytes,
    frame: bytes::Bytes,
    closes: bool,
) -> quinn::Connection {
    use futures::SinkExt;
    let conn = ep.connect(addr, "127.0.0.1").unwrap().await.unwrap();
    let send = conn.open_uni().await.unwrap();
    let mut w = tokio_util::codec::FramedWrite::new(send, etch_protocol::frame::codec(1 << 20));
    let _ = w.send(hello).await;
    let _ = w.send(frame).await;
    let _ = SinkExt::<bytes::Bytes>::flush(&mut w).await;
    if closes {
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    }
    conn
}

#[test]
fn malformed_peer_frames_over_quic_are_rejected_without_harm() {
    use etch_node::core::peer::hello_frame;
    use etch_protocol::etchpb::{PeerFrame, peer_frame::Body};
    use futures::SinkExt;
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let status = c.nodes[0].status().unwrap();
    let cluster_id = status["header"]["cluster_id"].as_u64().unwrap();
    let member_id = c.nodes[1].status().unwrap()["header"]["member_id"]
        .as_u64()
        .unwrap();
    as_peer(&c.peer_urls[0], |ep, addr| async move {
        let hello = |cluster_id| hello_frame(cluster_id, member_id, Vec::new());
        let attempts: Vec<Vec<bytes::Bytes>> = vec![
            // Not a Hello first.
            vec![etch_protocol::frame::encode_payload_of(&PeerFrame {
                body: Some(Body::Raft(vec![1, 2, 3].into())),
            })],
            // Garbage protobuf.
            vec![bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])],
            // A good Hello, then raft bytes that do not decode.
            vec![
                hello(cluster_id),
                etch_protocol::frame::encode_payload_of(&PeerFrame {
                    body: Some(Body::Raft(vec![0xff; 64].into())),
                }),
            ],
            // A good Hello, then a snapshot stream with a broken chunk.
            vec![
                hello(cluster_id),
                etch_protocol::frame::encode_payload_of(&PeerFrame {
                    body: Some(Body::SnapshotBegin(vec![0x08, 0xff].into())),
                }),
            ],
        ];
        for frames in attempts {
            let conn = ep.connect(addr, "127.0.0.1").unwrap().await.unwrap();
            let send = conn.open_uni().await.unwrap();
            let mut w =
                tokio_util::codec::FramedWrite::new(send, etch_protocol::frame::codec(1 << 20));
            for f in frames {
                let _ = w.send(f).await;
            }
            let _ = SinkExt::<bytes::Bytes>::flush(&mut w).await;
            // The member closes the connection on us.
            let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        }
        // An oversized length prefix, written raw.
        let conn = ep.connect(addr, "127.0.0.1").unwrap().await.unwrap();
        let mut send = conn.open_uni().await.unwrap();
        let _ = send.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0]).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    });
    let log = c.nodes[0].log();
    assert!(
        log.matches("rejected peer connection").count() >= 5,
        "{log}"
    );
    assert!(!log.contains("panicked"));
    assert_unharmed(&c);
    c.leader();
}

/// Raft messages that decode, come on a stream the member admitted, and would make raft-rs
/// panic (or corrupt its log) if stepped: each is refused or dropped, and the cluster goes on.
#[test]
fn raft_messages_that_would_panic_raft_rs_are_refused() {
    use etch_node::core::peer::hello_frame;
    use raft::eraftpb::{Entry, Message, MessageType};
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    // The frames go to a follower, on a stream that says it is the third member.
    let (f, k) = ((leader + 1) % 3, (leader + 2) % 3);
    let id = |i: usize| {
        c.nodes[i].status().unwrap()["header"]["member_id"]
            .as_u64()
            .unwrap()
    };
    let status = c.nodes[f].status().unwrap();
    let cluster_id = status["header"]["cluster_id"].as_u64().unwrap();
    let term = status["raftTerm"].as_u64().unwrap();
    let (target, sender) = (id(f), id(k));
    let raft = |t: MessageType, term: u64, edit: &dyn Fn(&mut Message)| -> bytes::Bytes {
        let mut m = raft_message(t, sender, target);
        m.term = term;
        edit(&mut m);
        raft_frame(m)
    };
    let entry = |index: u64, term: u64| Entry {
        index,
        term,
        ..Default::default()
    };
    let refused = vec![
        // Term 0: raft-rs takes it as local and skips its term checks; a commit index past
        // the log then panics it ("out of range").
        raft(MessageType::MsgHeartbeat, 0, &|m| m.commit = 1_000_000),
        // Entries that do not follow the index they are appended after.
        raft(MessageType::MsgAppend, term, &|m| {
            m.index = 1;
            m.log_term = 1;
            m.set_entries(vec![entry(7, term)].into());
        }),
        // A forwarded proposal never has a term: the follower would panic forwarding it.
        raft(MessageType::MsgPropose, term, &|m| {
            m.set_entries(vec![entry(0, 0)].into())
        }),
    ];
    let transfer = raft(MessageType::MsgTransferLeader, term, &|_| {});
    let hello = hello_frame(cluster_id, sender, Vec::new());
    let log = || c.nodes[f].log();
    as_peer(&c.peer_urls[f], |ep, addr| async move {
        let send = |frame: bytes::Bytes, closes: bool| {
            send_as_peer(ep.clone(), addr, hello.clone(), frame, closes)
        };
        for frame in refused {
            send(frame, true).await;
        }
        // A leader transfer a follower would forward (and panic on its term): dropped, the
        // stream stays up.
        let conn = send(transfer, false).await;
        // The wait polls the log with sleeps: off the runtime's worker, which keeps the
        // connection alive meanwhile.
        tokio::task::block_in_place(|| {
            wait_for(
                Duration::from_secs(10),
                "the leader transfer dropped",
                || {
                    log()
                        .contains("a leader transfer to a member that does not lead")
                        .then_some(())
                },
            )
        });
        conn.close(0u32.into(), b"done");
    });
    assert_rejected(
        &c.nodes[f].log(),
        &[
            "MsgHeartbeat from",
            "entry 0 has index 7",
            "MsgPropose from",
        ],
    );
    assert_unharmed(&c);
    c.leader();
}

/// A proposal forwarded by a peer becomes an entry every member applies, and apply stops a
/// member on an entry it cannot decode (it passed the WAL's CRC, so never guess): a leader
/// that took such a proposal would stop the whole cluster. The transport refuses, before
/// raft sees them, forwarded entries that are not writes a member could have proposed:
/// data that is not a request, and configuration changes (only the leader proposes them,
/// after etcd's checks).
#[test]
fn forwarded_proposals_that_are_not_requests_are_refused() {
    use etch_node::core::peer::hello_frame;
    use raft::eraftpb::{Entry, EntryType, MessageType};
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    let header = |i: usize| c.nodes[i].status().unwrap()["header"].clone();
    let (to, from) = (header(leader), header((leader + 1) % 3));
    let proposal = |entry_type: EntryType, data: &[u8]| -> bytes::Bytes {
        let mut m = raft_message(
            MessageType::MsgPropose,
            from["member_id"].as_u64().unwrap(),
            to["member_id"].as_u64().unwrap(),
        );
        let mut e = Entry::default();
        e.set_entry_type(entry_type);
        e.data = data.to_vec().into();
        m.set_entries(vec![e].into());
        raft_frame(m)
    };
    // Field 1 (the request id) as a length-delimited field: not an InternalRequest.
    let garbage = proposal(EntryType::EntryNormal, &[0x0a, 0x05, 0xff]);
    let conf_change = proposal(EntryType::EntryConfChangeV2, b"");
    let hello = hello_frame(
        to["cluster_id"].as_u64().unwrap(),
        from["member_id"].as_u64().unwrap(),
        Vec::new(),
    );
    as_peer(&c.peer_urls[leader], |ep, addr| async move {
        for frame in [garbage, conf_change] {
            send_as_peer(ep.clone(), addr, hello.clone(), frame, true).await;
        }
    });
    assert_rejected(
        &c.nodes[leader].log(),
        &["is not a request", "EntryConfChangeV2"],
    );
    assert_unharmed(&c);
    for n in &c.nodes {
        assert!(!n.log().contains("does not decode"), "{}", n.log());
    }
    assert_eq!(c.leader(), leader);
}

#[test]
fn a_member_that_lost_its_data_stops_with_an_error_instead_of_panicking() {
    // A follower's data directory is wiped while it is down: started again with the same
    // flags (so the same member ID), it has forgotten entries it acknowledged, and the
    // leader's heartbeat carries a commit index beyond its log (raft-rs panics on that, as
    // etcd does). It must stop with a clear error; the others go on.
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    for i in 0..20 {
        c.nodes[leader].ctl_ok(&["put", &format!("k{i}"), "v"]);
    }
    let victim = (leader + 1) % 3;
    // Every member has the puts (and acknowledged them).
    wait_for(
        Duration::from_secs(30),
        "the victim to apply the puts",
        || (c.nodes[victim].local_count() >= 20).then_some(()),
    );
    c.nodes[victim].kill9();
    std::fs::remove_dir_all(&c.nodes[victim].data_dir).unwrap();
    let (status, log) = c.nodes[victim].start_expecting_failure();
    // A clean fatal stop (1), not a panic (2).
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("lost entries it acknowledged"), "{log}");
    // The other two still form a quorum.
    c.nodes[leader].ctl_ok(&["put", "after", "1"]);
}
