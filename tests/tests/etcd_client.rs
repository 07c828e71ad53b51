//! The `etcd-client` Rust crate, used as applications use it against etcd, talking to a
//! 3-member etch cluster through its followers: KV, Txn, errors, Watch (live and from a
//! compacted revision), lease keep-alive streams, Lock, Election and Maintenance; and the
//! standard `grpc.health.v1` service.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, Error, EventType, GetOptions, LockOptions, ProclaimOptions,
    PutOptions, ResignOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use etch_tests::{Cluster, rt};
use tonic::Code;

const T: Duration = Duration::from_secs(20);

async fn connect(endpoint: &str) -> Client {
    Client::connect([format!("http://{endpoint}")], None)
        .await
        .expect("connect")
}

/// The gRPC status of a failed call: (code, message).
fn status(e: Error) -> (Code, String) {
    match e {
        Error::GRpcStatus(s) => (s.code(), s.message().to_owned()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

async fn timeout<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[test]
fn etcd_client_crate_against_three_members() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    let followers: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| c.nodes[i].grpc.clone())
        .collect();
    rt().block_on(async {
        let mut a = connect(&followers[0]).await;
        let mut b = connect(&followers[1]).await;

        // KV.
        a.put("k/1", "one", None).await.unwrap();
        let p = a
            .put("k/1", "uno", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert_eq!(p.prev_key().unwrap().value(), b"one");
        a.put("k/2", "two", None).await.unwrap();
        let g = b
            .get("k/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let kvs: Vec<_> = g.kvs().iter().map(|kv| kv.value_str().unwrap()).collect();
        assert_eq!(kvs, ["uno", "two"]);
        assert_eq!(g.kvs()[0].version(), 2);
        let rev = g.header().unwrap().revision();

        // Txn: compare-and-swap, both branches.
        let cas = |expect: &str, new: &str| {
            Txn::new()
                .when([Compare::value("k/1", CompareOp::Equal, expect)])
                .and_then([TxnOp::put("k/1", new, None)])
                .or_else([TxnOp::get("k/1", None)])
        };
        assert!(b.txn(cas("uno", "eins")).await.unwrap().succeeded());
        let lost = b.txn(cas("uno", "un")).await.unwrap();
        assert!(!lost.succeeded());
        match &lost.op_responses()[0] {
            TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"eins"),
            other => panic!("{other:?}"),
        }

        // Errors come back with etcd's codes and messages.
        let e = a
            .get("k/1", Some(GetOptions::new().with_revision(rev + 100)))
            .await
            .unwrap_err();
        assert_eq!(
            status(e),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision".into()
            )
        );
        let e = a
            .put("k/3", "x", Some(PutOptions::new().with_lease(12345)))
            .await
            .unwrap_err();
        assert_eq!(
            status(e),
            (
                Code::NotFound,
                "etcdserver: requested lease not found".into()
            )
        );

        // Watch: live with prev_kv, then from a compacted revision.
        let mut w = b
            .watch(
                "k/",
                Some(WatchOptions::new().with_prefix().with_prev_key()),
            )
            .await
            .unwrap();
        let created = timeout("watch created", w.message())
            .await
            .unwrap()
            .unwrap();
        assert!(created.created());
        a.put("k/2", "zwei", None).await.unwrap();
        let ev = loop {
            let r = timeout("watch event", w.message()).await.unwrap().unwrap();
            if let Some(ev) = r.events().first() {
                break ev.clone();
            }
        };
        assert_eq!(ev.event_type(), EventType::Put);
        assert_eq!(ev.kv().unwrap().value(), b"zwei");
        assert_eq!(ev.prev_kv().unwrap().value(), b"two");
        let now = a
            .get("k/2", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        a.compact(now, None).await.unwrap();
        let mut old = b
            .watch(
                "k/",
                Some(WatchOptions::new().with_prefix().with_start_revision(2)),
            )
            .await
            .unwrap();
        let cancel = loop {
            let r = timeout("compacted watch", old.message())
                .await
                .unwrap()
                .unwrap();
            if r.canceled() {
                break r;
            }
        };
        assert_eq!(cancel.compact_revision(), now);

        // Lease keep-alive stream through a follower.
        let lease = a.lease_grant(30, None).await.unwrap().id();
        a.put("leased", "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
        let (mut keeper, mut acks) = a.lease_keep_alive(lease).await.unwrap();
        for _ in 0..3 {
            keeper.keep_alive().await.unwrap();
            let ack = timeout("keep-alive", acks.message())
                .await
                .unwrap()
                .unwrap();
            assert_eq!((ack.id(), ack.ttl()), (lease, 30));
        }
        let ttl = b
            .lease_time_to_live(
                lease,
                Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
            )
            .await
            .unwrap();
        assert_eq!(ttl.keys(), [b"leased".to_vec()]);
        b.lease_revoke(lease).await.unwrap();
        assert!(a.get("leased", None).await.unwrap().kvs().is_empty());

        // Lock: a second holder waits until the first unlocks.
        let l1 = a.lease_grant(30, None).await.unwrap().id();
        let l2 = b.lease_grant(30, None).await.unwrap().id();
        let first = a
            .lock("L", Some(LockOptions::new().with_lease(l1)))
            .await
            .unwrap();
        assert_eq!(first.key(), format!("L/{l1:x}").as_bytes());
        let mut b2 = b.clone();
        let second = tokio::spawn(async move {
            b2.lock("L", Some(LockOptions::new().with_lease(l2)))
                .await
                .map(|r| r.key().to_vec())
        });
        // The waiter's key is in place, and it still waits.
        loop {
            let n = a
                .get(
                    "L/",
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .unwrap()
                .count();
            if n == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!second.is_finished());
        a.unlock(first.key()).await.unwrap();
        let got = timeout("second lock", second).await.unwrap().unwrap();
        assert_eq!(got, format!("L/{l2:x}").as_bytes());
        b.unlock(got).await.unwrap();

        // Election: campaign, observe from another member, proclaim, hand over by resigning.
        let e = a.campaign("E", "v1", l1).await.unwrap();
        let lk = e.leader().unwrap().clone();
        let mut obs = b.observe("E").await.unwrap();
        let first = timeout("observe", obs.message()).await.unwrap().unwrap();
        assert_eq!(first.kv().unwrap().value(), b"v1");
        assert_eq!(b.leader("E").await.unwrap().kv().unwrap().value(), b"v1");
        a.proclaim("v2", Some(ProclaimOptions::new().with_leader(lk.clone())))
            .await
            .unwrap();
        let next = timeout("observe proclaim", obs.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.kv().unwrap().value(), b"v2");
        let mut b3 = b.clone();
        let challenger = tokio::spawn(async move { b3.campaign("E", "w1", l2).await });
        a.resign(Some(ResignOptions::new().with_leader(lk.clone())))
            .await
            .unwrap();
        let won = timeout("challenger", challenger).await.unwrap().unwrap();
        assert_eq!(won.leader().unwrap().lease(), l2);
        let handed = timeout("observe new leader", obs.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(handed.kv().unwrap().value(), b"w1");
        let e = a
            .proclaim("v3", Some(ProclaimOptions::new().with_leader(lk)))
            .await
            .unwrap_err();
        assert_eq!(status(e), (Code::Unknown, "election: not leader".into()));
        let e = a.leader("nobody").await.unwrap_err();
        assert_eq!(status(e), (Code::Unknown, "election: no leader".into()));

        // Maintenance: every member reports the same history hash at one revision.
        let at = a
            .get("k/1", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let mut hashes = Vec::new();
        for n in &c.nodes {
            let mut m = connect(&n.grpc).await;
            let h = loop {
                match m.hash_kv(at).await {
                    Ok(h) => break h,
                    // A member that has not applied `at` yet says it is a future revision.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            assert_eq!(h.compact_version(), now);
            hashes.push(h.hash());
            assert_eq!(m.status().await.unwrap().version(), "3.5.17");
            assert!(
                m.alarm(
                    etcd_client::AlarmAction::Get,
                    etcd_client::AlarmType::None,
                    None
                )
                .await
                .unwrap()
                .alarms()
                .is_empty()
            );
        }
        assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");

        // The standard gRPC health service says SERVING.
        let ch = tonic::transport::Channel::from_shared(format!("http://{}", followers[0]))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    });
}
