//! Leases over real processes: TTL expiry through consensus, keep-alives (forwarded by
//! followers), leader changes that must not revoke live leases, restarts.

use std::time::{Duration, Instant};

use bytes::Bytes;
use etch_tests::{Cluster, Node, rt, wait_for};
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
