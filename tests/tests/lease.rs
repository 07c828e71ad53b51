//! Leases over real processes: TTL expiry through consensus, keep-alives (forwarded by
//! followers), leader changes that must not revoke live leases, restarts.

use std::time::{Duration, Instant};

use bytes::Bytes;
use etch_tests::{Cluster, Node, rt};
use etch_tools::Client;
use etch_tools::pb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest, WatchCreateRequest,
};

async fn grant(c: &Client, ttl: i64) -> i64 {
    c.lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .unwrap()
        .id
}

async fn put_with(c: &Client, k: &str, lease: i64) {
    c.put(PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: "v".into(),
        lease,
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn exists(c: &Client, k: &str) -> bool {
    c.range(RangeRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        serializable: true,
        ..Default::default()
    })
    .await
    .map(|r| r.count == 1)
    .unwrap_or(false)
}

/// Keeps `ids` alive through any of `endpoints` every 500 ms until `stop`; returns how many
/// keep-alives answered "lease gone" (TTL 0), which must stay 0 for live leases.
async fn keep_alive(
    endpoints: Vec<String>,
    ids: Vec<i64>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> usize {
    let mut gone = 0;
    let mut turn = 0;
    let mut client: Option<Client> = None;
    while !*stop.borrow() {
        if client.is_none() {
            client = Client::connect(&endpoints[turn % endpoints.len()])
                .await
                .ok();
            turn += 1;
        }
        if let Some(c) = &client {
            for id in &ids {
                match c.lease_keep_alive(LeaseKeepAliveRequest { id: *id }).await {
                    Ok(r) if r.ttl == 0 => gone += 1,
                    Ok(_) => {}
                    Err(_) => {
                        client = None;
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    gone
}

#[test]
fn lease_expires_with_a_delete_event_and_lives_while_kept_alive() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    rt().block_on(async {
        let c = Client::connect(&n.native).await.unwrap();
        let kept = grant(&c, 2).await;
        let dropped = grant(&c, 2).await;
        put_with(&c, "kept", kept).await;
        put_with(&c, "dropped", dropped).await;
        let mut s = c.watch_stream().unwrap();
        s.create(WatchCreateRequest {
            key: "dropped".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(s.next().await.unwrap().created);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let ka = tokio::spawn(keep_alive(vec![n.native.clone()], vec![kept], stop));
        let start = Instant::now();
        // The unkept lease expires: its key goes, with a DELETE event, within TTL + a few ticks.
        let ev = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev.events[0].r#type, 1, "DELETE");
        assert!(!exists(&c, "dropped").await);
        // The kept one survives several TTLs.
        while start.elapsed() < Duration::from_secs(7) {
            assert!(exists(&c, "kept").await, "kept-alive key vanished");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        stop_tx.send_replace(true);
        assert_eq!(ka.await.unwrap(), 0);
        let ttl = c
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: kept,
                keys: true,
            })
            .await
            .unwrap();
        assert_eq!((ttl.granted_ttl, ttl.keys.len()), (2, 1));
        let gone = c
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: dropped,
                keys: false,
            })
            .await
            .unwrap();
        assert_eq!(gone.ttl, -1);
        assert_eq!(
            c.lease_revoke(LeaseRevokeRequest { id: dropped })
                .await
                .unwrap_err()
                .to_string(),
            "etcdserver: requested lease not found"
        );
    });
    // etchctl's lease commands print like etcdctl's.
    let out = n.ctl_ok(&["lease", "grant", "1"]);
    assert!(
        out.starts_with("lease ") && out.ends_with(" granted with TTL(2s)\n"),
        "minimum TTL 2 s: {out}"
    );
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(
        n.ctl_ok(&["lease", "keep-alive", &id, "--once"]),
        format!("lease {id} keepalived with TTL(2)\n")
    );
    assert!(n.ctl_ok(&["lease", "list"]).contains(&id));
    assert_eq!(
        n.ctl_ok(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
}

#[test]
fn revoking_a_lease_with_10000_keys_deletes_them_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    rt().block_on(async {
        let c = Client::connect(&n.native).await.unwrap();
        let id = grant(&c, 3600).await;
        let mut puts = Vec::new();
        for i in 0..10_000 {
            let c = c.clone();
            puts.push(tokio::spawn(async move {
                put_with(&c, &format!("many/{i:05}"), id).await
            }));
        }
        for p in puts {
            p.await.unwrap();
        }
        let mut s = c.watch_stream().unwrap();
        s.create(WatchCreateRequest {
            key: "many/".into(),
            range_end: "many0".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(s.next().await.unwrap().created);
        let r = c.lease_revoke(LeaseRevokeRequest { id }).await.unwrap();
        let rev = r.header.unwrap().revision;
        let resp = tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            resp.events.len(),
            10_000,
            "one response for the whole revision"
        );
        assert!(
            resp.events
                .iter()
                .all(|e| e.r#type == 1 && e.kv.as_ref().unwrap().mod_revision == rev)
        );
        let left = c
            .range(RangeRequest {
                key: "many/".into(),
                range_end: "many0".into(),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(left.count, 0);
    });
}

/// Grants `n` leases of `ttl` seconds, each with one key `prefix<i>`.
async fn leases_with_keys(c: &Client, prefix: &str, n: usize, ttl: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = grant(c, ttl).await;
        put_with(c, &format!("{prefix}{i:03}"), id).await;
        ids.push(id);
    }
    ids
}

async fn count(c: &Client, prefix: &str) -> i64 {
    let end = format!("{}0", prefix.trim_end_matches('/'));
    c.range(RangeRequest {
        key: prefix.to_owned().into(),
        range_end: end.into(),
        count_only: true,
        serializable: true,
        ..Default::default()
    })
    .await
    .map(|r| r.count)
    .unwrap_or(-1)
}

#[test]
fn leader_kill_revokes_no_kept_alive_lease() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    let eps: Vec<String> = c.nodes.iter().map(|n| n.native.clone()).collect();
    let survivor = eps[(leader + 1) % 3].clone();
    rt().block_on(async {
        let client = Client::connect(&survivor).await.unwrap();
        // Twenty owners keep 10 leases each, through every member (followers forward); each
        // starts as soon as its leases exist (on a loaded machine, granting many leases before
        // any keep-alive could outlast the 5 s TTL of the first ones).
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut owners = Vec::new();
        for i in 0..20 {
            let ids = leases_with_keys(&client, &format!("kept/{i:02}"), 10, 5).await;
            let mut e = eps.clone();
            e.rotate_left(i % 3);
            owners.push(tokio::spawn(keep_alive(e, ids, stop.clone())));
        }
        let abandoned = leases_with_keys(&client, "abandoned/", 20, 5).await;
        assert!(!abandoned.is_empty());
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.nodes[leader].kill9();
        // Through the election and for several TTLs after it, every kept key stays.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(12) {
            let n = count(&client, "kept/").await;
            assert!(
                n == 200 || n == -1,
                "kept-alive keys revoked: {n} of 200 left"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The abandoned ones expire under the new leader.
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(&client, "abandoned/").await != 0 {
            assert!(Instant::now() < deadline, "abandoned leases never expired");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop_tx.send_replace(true);
        for o in owners {
            assert_eq!(o.await.unwrap(), 0, "a keep-alive found its lease gone");
        }
        assert_eq!(count(&client, "kept/").await, 200);
    });
}

#[test]
fn stalled_leader_that_resumes_revokes_nothing_kept_alive() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    let followers: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| c.nodes[i].native.clone())
        .collect();
    rt().block_on(async {
        let client = Client::connect(&followers[0]).await.unwrap();
        let kept = leases_with_keys(&client, "s/", 20, 3).await;
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let owner = tokio::spawn(keep_alive(followers.clone(), kept, stop));
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.nodes[leader].signal("STOP");
        // Stalled for twice the TTL: the others elect a leader that takes the keep-alives.
        tokio::time::sleep(Duration::from_secs(6)).await;
        c.nodes[leader].signal("CONT");
        // The resumed old leader still holds stale deadlines: nothing may be revoked.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(6) {
            let n = count(&client, "s/").await;
            assert!(
                n == 20 || n == -1,
                "leases kept alive through the new leader were revoked: {n} left"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop_tx.send_replace(true);
        assert_eq!(owner.await.unwrap(), 0);
    });
}

#[test]
fn leases_and_attachments_survive_a_full_cluster_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let ids = rt().block_on(async {
        let client = Client::connect(&c.nodes[0].native).await.unwrap();
        leases_with_keys(&client, "r/", 10, 60).await
    });
    for n in &mut c.nodes {
        n.kill9();
    }
    for n in &mut c.nodes {
        n.relaunch();
    }
    for n in &c.nodes {
        n.wait_leader();
    }
    let leader = c.leader();
    let ep = c.nodes[leader].native.clone();
    rt().block_on(async {
        let client = Client::connect(&ep).await.unwrap();
        let listed = client.lease_leases().await.unwrap();
        assert_eq!(listed.leases.len(), 10);
        for (i, id) in ids.iter().enumerate() {
            let t = client
                .lease_time_to_live(LeaseTimeToLiveRequest {
                    id: *id,
                    keys: true,
                })
                .await
                .unwrap();
            assert_eq!(t.granted_ttl, 60);
            assert!(t.ttl > 0 && t.ttl <= 60, "{t:?}");
            assert_eq!(t.keys, vec![Bytes::from(format!("r/{i:03}"))]);
        }
        assert_eq!(count(&client, "r/").await, 10);
    });
}

#[test]
fn checkpointed_remaining_ttl_survives_a_leader_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(
        dir.path(),
        3,
        &["--experimental-lease-checkpoint-interval", "500ms"],
    );
    let leader = c.leader();
    let survivor = c.nodes[(leader + 1) % 3].native.clone();
    let id = rt().block_on(async {
        let client = Client::connect(&survivor).await.unwrap();
        let id = grant(&client, 60).await;
        // Let several checkpoints pass without keep-alives.
        tokio::time::sleep(Duration::from_secs(4)).await;
        id
    });
    c.nodes[leader].kill9();
    c.leader();
    rt().block_on(async {
        let client = Client::connect(&survivor).await.unwrap();
        let t = loop {
            if let Ok(t) = client
                .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
                .await
            {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(t.granted_ttl, 60);
        // Without checkpoints the new leader would start over at 60 s.
        assert!(
            t.ttl <= 57,
            "remaining TTL reset by the leader change: {t:?}"
        );
        assert!(t.ttl > 40, "{t:?}");
    });
}

#[test]
fn bench_lease_keepalive_through_a_follower() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let follower = c.nodes[(c.leader() + 1) % 3].native.clone();
    let r = etch_tests::bench_ok(
        &follower,
        &["--clients", "10", "lease-keepalive", "--total", "3000"],
    );
    assert_eq!(r["ok"], 3000);
}

/// A lease granted through one member and renewed at once through another: the leader must
/// not answer "expired" because it has not applied the grant yet (etcd waits for its applied
/// index first). 100 clients over all members, both protocols, several rounds.
#[test]
fn renewals_right_after_grants_never_see_an_unknown_lease() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let grpc: Vec<String> = c.nodes.iter().map(|n| n.grpc.clone()).collect();
    for round in 0..3 {
        for (protocol, eps) in [("native", c.endpoints()), ("grpc", grpc.join(","))] {
            let r = etch_tests::bench_ok(
                &eps,
                &[
                    "--protocol",
                    protocol,
                    "--clients",
                    "100",
                    "--conns",
                    "6",
                    "lease-keepalive",
                    "--total",
                    "1000",
                ],
            );
            assert_eq!(r["ok"], 1000, "round {round} {protocol}: {r}");
        }
    }
}
