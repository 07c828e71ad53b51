//! etcd v3.5's corruption checks (`server/etcdserver/corrupt.go`): members compare their MVCC
//! hashes ([`etch_storage::mvcc::MvccStore::hash_kv`]) at one revision.
//!
//! - **Initial** (`--experimental-initial-corrupt-check`): before serving clients, a member
//!   hashes its store at its current revision and asks every peer for its hash at that
//!   revision. A peer at the same compaction point with another hash means this member's data
//!   differs: it refuses to start with "<member ID> found data inconsistency with peers".
//!   Peers that do not answer, are behind (future revision) or compacted further are logged and
//!   skipped, as in etcd.
//! - **Periodic** (`--experimental-corrupt-check-time`): every interval, the leader hashes its
//!   store, asks the followers for their hashes at its revision, hashes again, and raises the
//!   `CORRUPT` alarm (through consensus, so every member refuses writes) for the first member
//!   found inconsistent: itself when its own hash changed at an unchanged revision, or a
//!   follower ahead of it, compacted further, or with another hash at the same compaction
//!   point.
//!
//! Peers answer over the peer transport ([`crate::actors::transport::Ask`]) where etcd uses the peer
//! URL's `/members/hashkv`. The decisions are pure functions, unit-tested below.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use etch_protocol::etcdserverpb::{AlarmRequest, AlarmType, HashKvRequest, alarm_request};
use etch_protocol::etchpb::{AuthInfo, peer_answer, peer_request};

use crate::actors::transport::{Ask, TransportActor};
use crate::service::Service;
use etch_protocol::ids::MemberId;

/// A member's hash as HashKV answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hash {
    /// The member.
    pub member: u64,
    /// CRC-32 of the history kept up to `hash_revision`.
    pub hash: u32,
    /// The revision hashed up to.
    pub hash_revision: i64,
    /// The member's current revision when it answered (response header).
    pub revision: i64,
    /// The member's compaction point.
    pub compact_revision: i64,
}

/// A peer's answer: its hash, or why there is none (etcd's error text, or no answer).
pub type PeerHash = (u64, Result<Hash, String>);

/// etcd `CheckInitialHashKV`: the peers whose hash at `local`'s revision differs from it at the
/// same compaction point. Everything else is logged as etcd does and skipped.
pub fn initial_mismatches(local: &Hash, peers: &[PeerHash]) -> Vec<u64> {
    let mut bad = Vec::new();
    for (id, answer) in peers {
        let peer = MemberId(*id).to_string();
        match answer {
            Ok(p) if p.hash == local.hash => {}
            Ok(p) if p.compact_revision == local.compact_revision => {
                tracing::warn!(
                    remote_peer_id = %peer,
                    local_hash = local.hash,
                    remote_hash = p.hash,
                    revision = local.hash_revision,
                    compact_revision = local.compact_revision,
                    "found different hash values from remote peer"
                );
                bad.push(*id);
            }
            Ok(p) => tracing::warn!(
                remote_peer_id = %peer,
                local_compact_revision = local.compact_revision,
                remote_compact_revision = p.compact_revision,
                "found different compact revision values from remote peer"
            ),
            Err(e) => tracing::warn!(
                remote_peer_id = %peer,
                error = %e,
                "cannot fetch hash from remote peer"
            ),
        }
    }
    bad
}

/// etcd `checkHashKV` (leader only): the member to raise `CORRUPT` for, if any. `before` and
/// `after` are the leader's own hashes taken before and after asking the peers (at
/// `before.hash_revision`).
pub fn periodic_mismatch(before: &Hash, after: &Hash, peers: &[PeerHash]) -> Option<u64> {
    if after.hash != before.hash
        && after.hash_revision == before.hash_revision
        && after.compact_revision == before.compact_revision
    {
        tracing::warn!(
            leader_hash = before.hash,
            leader_hash_now = after.hash,
            revision = before.hash_revision,
            "the leader's hash changed at an unchanged revision"
        );
        return Some(before.member);
    }
    for (id, answer) in peers {
        let Ok(p) = answer else { continue };
        let peer = MemberId(*id).to_string();
        if p.revision > after.revision {
            tracing::warn!(
                remote_peer_id = %peer,
                leader_revision = after.revision,
                follower_revision = p.revision,
                "a follower's revision is ahead of the leader's"
            );
            return Some(*id);
        }
        if p.compact_revision > after.compact_revision {
            tracing::warn!(
                remote_peer_id = %peer,
                leader_compact_revision = after.compact_revision,
                follower_compact_revision = p.compact_revision,
                "a follower's compact revision is ahead of the leader's"
            );
            return Some(*id);
        }
        if p.compact_revision == before.compact_revision && p.hash != before.hash {
            tracing::warn!(
                remote_peer_id = %peer,
                leader_hash = before.hash,
                follower_hash = p.hash,
                revision = before.hash_revision,
                compact_revision = p.compact_revision,
                "a follower's hash differs from the leader's"
            );
            return Some(*id);
        }
    }
    None
}

/// This member's hash at its current revision.
async fn local_hash(svc: &Service) -> Result<Hash, String> {
    let r = svc.peer_hash_kv(0).await.map_err(|e| e.to_string())?;
    Ok(Hash {
        member: svc.state().member_id.0,
        hash: r.hash,
        hash_revision: r.hash_revision,
        revision: r.header.map_or(r.hash_revision, |h| h.revision),
        compact_revision: r.compact_revision,
    })
}

/// Asks every peer for its hash at `revision`, concurrently, each bounded by `timeout`.
async fn peer_hashes(
    transport: &Addr<TransportActor>,
    peers: &[u64],
    revision: i64,
    timeout: Duration,
) -> Vec<PeerHash> {
    let ask = |id: u64| async move {
        let body = peer_request::Body::HashKv(HashKvRequest { revision });
        let rx = match transport
            .send(Ask {
                to: id,
                body,
                timeout,
            })
            .await
        {
            Ok(Some(rx)) => rx,
            _ => return (id, Err("peer unknown or its queue is full".to_owned())),
        };
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(a)) => a,
            _ => return (id, Err(format!("no answer within {timeout:?}"))),
        };
        match answer.body {
            Some(peer_answer::Body::HashKv(r)) => (
                id,
                Ok(Hash {
                    member: id,
                    hash: r.hash,
                    hash_revision: r.hash_revision,
                    revision: r.header.map_or(r.hash_revision, |h| h.revision),
                    compact_revision: r.compact_revision,
                }),
            ),
            Some(peer_answer::Body::Error(e)) => (id, Err(e.message)),
            Some(_) | None => (id, Err("unexpected answer".to_owned())),
        }
    };
    futures::future::join_all(peers.iter().map(|&id| ask(id))).await
}

/// The initial check: `Err` with etcd's message when a peer at the same compaction point has
/// another hash; `Ok` otherwise (peers that cannot answer are skipped, as in etcd).
///
/// # Errors
/// "<member ID> found data inconsistency with peers"; this member's own hash failing.
pub async fn initial_check(
    svc: &Service,
    transport: &Addr<TransportActor>,
    peers: &[u64],
    timeout: Duration,
) -> Result<(), String> {
    let me = svc.state().member_id;
    tracing::info!(local_member_id = %me, ?timeout, "starting initial corruption check");
    let local = local_hash(svc).await?;
    let answers = peer_hashes(transport, peers, local.hash_revision, timeout).await;
    if !initial_mismatches(&local, &answers).is_empty() {
        return Err(format!("{me} found data inconsistency with peers"));
    }
    tracing::info!(local_member_id = %me, "initial corruption checking passed; no corruption");
    Ok(())
}

/// Runs the periodic check every `interval` while this member leads, for as long as the
/// service lives.
pub fn spawn_periodic(
    svc: Arc<Service>,
    transport: Addr<TransportActor>,
    peers: Vec<u64>,
    interval: Duration,
    timeout: Duration,
) -> tokio::task::JoinHandle<()> {
    let state = svc.state_arc();
    state.spawn_essential("the corruption check", async move {
        let me = svc.state().member_id;
        tracing::info!(local_member_id = %me, ?interval, "enabled corruption checking");
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if svc.state().leader() != me {
                continue;
            }
            let check = async {
                let before = local_hash(&svc).await?;
                let answers = peer_hashes(&transport, &peers, before.hash_revision, timeout).await;
                let after = local_hash(&svc).await?;
                Ok::<_, String>(periodic_mismatch(&before, &after, &answers))
            };
            let member = match check.await {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "failed to check hash KV");
                    continue;
                }
            };
            let req = AlarmRequest {
                action: alarm_request::AlarmAction::Activate as i32,
                member_id: member,
                alarm: AlarmType::Corrupt as i32,
            };
            match svc.alarm(&AuthInfo::default(), req).await {
                Ok(_) => tracing::error!(
                    member_id = %MemberId(member),
                    "raised the CORRUPT alarm: member data differs from the leader's"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot raise the CORRUPT alarm"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(member: u64, hash: u32, rev: i64, crev: i64) -> Hash {
        Hash {
            member,
            hash,
            hash_revision: rev,
            revision: rev,
            compact_revision: crev,
        }
    }

    #[test]
    fn initial_check_flags_only_a_different_hash_at_the_same_compaction_point() {
        let local = h(1, 7, 10, 3);
        let peers = vec![
            (2, Ok(h(2, 7, 10, 3))),
            (3, Ok(h(3, 8, 10, 5))),
            (
                4,
                Err("etcdserver: mvcc: required revision is a future revision".into()),
            ),
        ];
        assert!(initial_mismatches(&local, &peers).is_empty());
        let peers = vec![(2, Ok(h(2, 7, 10, 3))), (3, Ok(h(3, 9, 10, 3)))];
        assert_eq!(initial_mismatches(&local, &peers), [3]);
    }

    #[test]
    fn periodic_check_blames_as_etcd_does() {
        let before = h(1, 7, 10, 3);
        // All equal: nothing.
        let same = vec![(2, Ok(h(2, 7, 10, 3))), (3, Err("no answer".into()))];
        assert_eq!(periodic_mismatch(&before, &before, &same), None);
        // The leader's own hash changed at the same revision.
        assert_eq!(periodic_mismatch(&before, &h(1, 8, 10, 3), &same), Some(1));
        // A write in between changes the hash and the revision: not a mismatch.
        let mut later = h(1, 8, 11, 3);
        later.revision = 11;
        assert_eq!(periodic_mismatch(&before, &later, &same), None);
        // A follower with another hash at the same compaction point.
        let bad = vec![(2, Ok(h(2, 7, 10, 3))), (3, Ok(h(3, 9, 10, 3)))];
        assert_eq!(periodic_mismatch(&before, &before, &bad), Some(3));
        // A follower ahead of the leader, or compacted further.
        let mut ahead = h(2, 7, 10, 3);
        ahead.revision = 12;
        assert_eq!(
            periodic_mismatch(&before, &before, &[(2, Ok(ahead))]),
            Some(2)
        );
        assert_eq!(
            periodic_mismatch(&before, &before, &[(2, Ok(h(2, 9, 10, 4)))]),
            Some(2)
        );
        // A follower at an older compaction point hashes other history: not comparable.
        assert_eq!(
            periodic_mismatch(&before, &before, &[(2, Ok(h(2, 9, 10, 2)))]),
            None
        );
    }
}
