//! etcd's server-side concurrency recipes: the `v3lockpb.Lock` and `v3electionpb.Election`
//! services. etcd builds them from `client/v3/concurrency` (`Mutex`, `Election`) over its own
//! KV, Watch and Lease APIs; these do the same steps over the one [`Service`], so their keys,
//! revisions and ordering are etcd's:
//!
//! - a lock or candidacy is the key `<name>/<lease ID in lower-case hex>` attached to the
//!   caller's lease, created in a Txn guarded by `create_revision == 0`;
//! - the owner is the key of the prefix with the lowest create revision; a waiter watches for
//!   the deletion of the newest key created before its own, one at a time, until none is left
//!   (etcd `waitDeletes`);
//! - errors outside etcd's error table are plain messages with gRPC code `Unknown`, as etcd's
//!   handlers return them (`election: not leader`, `election: no leader`,
//!   `mutex: session is expired`, `"leader" field must be provided`).
//!
//! As in etcd, a request with lease 0 gets a fresh 60 s lease that nobody keeps alive.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tonic::Status;

use etch_protocol::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etch_protocol::etcdserverpb::range_request::{SortOrder, SortTarget};
use etch_protocol::etcdserverpb::request_op::Request as Op;
use etch_protocol::etcdserverpb::response_op::Response as OpResponse;
use etch_protocol::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, TxnRequest, TxnResponse, WatchCreateRequest,
};
use etch_protocol::mvccpb::KeyValue;
use etch_protocol::mvccpb::event::EventType;
use etch_protocol::prefix_end;
use etch_protocol::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use etch_protocol::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

use crate::api::WatchStream;
use crate::api::errors::to_status;
use crate::service::{AuthInfo, Service};

type R<T> = Result<T, Status>;

/// TTL of the lease granted for a request with lease 0, seconds (etcd `defaultSessionTTL`).
pub const DEFAULT_SESSION_TTL_SECONDS: i64 = 60;

const ERR_NOT_LEADER: &str = "election: not leader";
const ERR_NO_LEADER: &str = "election: no leader";
const ERR_SESSION_EXPIRED: &str = "mutex: session is expired";
const ERR_MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
const ERR_LOST_WATCHER: &str = "lost watcher waiting for delete";

/// Lock: acquires `name` for `lease`, waiting while older holders exist; answers the key that
/// exists while the lock is held (etcd `v3lock.Lock`).
///
/// If the call is dropped while waiting (client cancelled), the waiting key is deleted, as
/// etcd's `Mutex.Lock` does when its context ends.
///
/// # Errors
/// Store and consensus errors (etcd's codes), `mutex: session is expired` when the lease ended
/// while waiting.
pub async fn lock(svc: &Arc<Service>, who: &AuthInfo, req: LockRequest) -> R<LockResponse> {
    let lease = session_lease(svc, who, req.lease).await?;
    let pfx = with_slash(&req.name);
    let my_key = member_key(&pfx, lease);
    let get_owner = range_op(first_created(&pfx));
    let resp = svc
        .txn(
            who,
            TxnRequest {
                compare: vec![create_revision_is(&my_key, 0)],
                success: vec![put_op(&my_key, Bytes::new(), lease), get_owner.clone()],
                failure: vec![range_op(key_only(&my_key)), get_owner],
            },
        )
        .await
        .map_err(to_status)?;
    let my_rev = if resp.succeeded {
        header_revision(&resp.header)
    } else {
        first_kv(&resp, 0).map_or(0, |kv| kv.create_revision)
    };
    let owner = first_kv(&resp, 1);
    if owner.is_none_or(|kv| kv.create_revision == my_rev) {
        return Ok(LockResponse {
            header: resp.header,
            key: my_key,
        });
    }
    let guard = DeleteOnDrop::new(svc, who, my_key.clone());
    if let Err(e) = wait_deletes(svc, who, &pfx, my_rev - 1).await {
        drop(guard);
        return Err(e);
    }
    let mine = svc.range(who, key_only(&my_key)).await.map_err(to_status)?;
    if mine.kvs.is_empty() {
        guard.disarm();
        return Err(Status::unknown(ERR_SESSION_EXPIRED));
    }
    guard.disarm();
    Ok(LockResponse {
        header: mine.header,
        key: my_key,
    })
}

/// Unlock: deletes the key [`lock`] answered (etcd `v3lock.Unlock`).
///
/// # Errors
/// Store and consensus errors.
pub async fn unlock(svc: &Service, who: &AuthInfo, req: UnlockRequest) -> R<UnlockResponse> {
    let resp = svc
        .delete_range(
            who,
            DeleteRangeRequest {
                key: req.key,
                ..Default::default()
            },
        )
        .await
        .map_err(to_status)?;
    Ok(UnlockResponse {
        header: resp.header,
    })
}

/// Campaign: becomes a candidate of election `name` with `value` and waits until it is the
/// oldest candidate (etcd `Election.Campaign`). A candidate that already exists for the lease
/// keeps its place and proclaims the new value.
///
/// # Errors
/// Store and consensus errors; `election: not leader` if the candidacy vanished.
pub async fn campaign(
    svc: &Arc<Service>,
    who: &AuthInfo,
    req: CampaignRequest,
) -> R<CampaignResponse> {
    let lease = session_lease(svc, who, req.lease).await?;
    let pfx = with_slash(&req.name);
    let key = member_key(&pfx, lease);
    let resp = svc
        .txn(
            who,
            TxnRequest {
                compare: vec![create_revision_is(&key, 0)],
                success: vec![put_op(&key, req.value.clone(), lease)],
                failure: vec![range_op(key_only(&key))],
            },
        )
        .await
        .map_err(to_status)?;
    let mut leader = LeaderKey {
        name: req.name.clone(),
        key: key.clone(),
        rev: header_revision(&resp.header),
        lease,
    };
    let guard = DeleteOnDrop::new(svc, who, key.clone());
    if !resp.succeeded {
        let kv = first_kv(&resp, 0).cloned().unwrap_or_default();
        leader.rev = kv.create_revision;
        if kv.value != req.value
            && let Err(e) = proclaim_value(svc, who, &leader, req.value.clone()).await
        {
            drop(guard);
            return Err(e);
        }
    }
    if let Err(e) = wait_deletes(svc, who, &pfx, leader.rev - 1).await {
        drop(guard);
        return Err(e);
    }
    guard.disarm();
    Ok(CampaignResponse {
        header: resp.header,
        leader: Some(leader),
    })
}

/// Proclaim: the leader posts a new value (etcd `Election.Proclaim`).
///
/// # Errors
/// `"leader" field must be provided`; `election: not leader` when `leader` no longer holds
/// the election; store and consensus errors.
pub async fn proclaim(svc: &Service, who: &AuthInfo, req: ProclaimRequest) -> R<ProclaimResponse> {
    let leader = req
        .leader
        .ok_or_else(|| Status::unknown(ERR_MISSING_LEADER_KEY))?;
    let header = proclaim_value(svc, who, &leader, req.value).await?;
    Ok(ProclaimResponse { header })
}

/// Leader: the current leader's key-value (etcd `Election.Leader`).
///
/// # Errors
/// `election: no leader` when nobody campaigns; store and consensus errors.
pub async fn leader(svc: &Service, who: &AuthInfo, req: LeaderRequest) -> R<LeaderResponse> {
    let resp = svc
        .range(who, first_created(&with_slash(&req.name)))
        .await
        .map_err(to_status)?;
    let kv = resp
        .kvs
        .into_iter()
        .next()
        .ok_or_else(|| Status::unknown(ERR_NO_LEADER))?;
    Ok(LeaderResponse {
        header: resp.header,
        kv: Some(kv),
    })
}

/// Resign: gives up leadership (deletes the leader key if it is still the one `leader`
/// names; a no-op otherwise, as in etcd).
///
/// # Errors
/// `"leader" field must be provided`; store and consensus errors.
pub async fn resign(svc: &Service, who: &AuthInfo, req: ResignRequest) -> R<ResignResponse> {
    let leader = req
        .leader
        .ok_or_else(|| Status::unknown(ERR_MISSING_LEADER_KEY))?;
    let resp = svc
        .txn(
            who,
            TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![RequestOp {
                    request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                        key: leader.key,
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            },
        )
        .await
        .map_err(to_status)?;
    Ok(ResignResponse {
        header: resp.header,
    })
}

/// Observe: every leader and every value a leader proclaims, in order, into `tx` until the
/// receiver is dropped or the store fails (etcd `Election.Observe`).
pub async fn observe(
    svc: Arc<Service>,
    who: AuthInfo,
    req: LeaderRequest,
    tx: mpsc::Sender<R<LeaderResponse>>,
) {
    let who = &who;
    let pfx = with_slash(&req.name);
    loop {
        let resp = match svc.range(who, first_created(&pfx)).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(to_status(e))).await;
                return;
            }
        };
        let (mut header, kv) = match resp.kvs.into_iter().next() {
            Some(kv) => (resp.header.unwrap_or_default(), kv),
            None => {
                // Wait for the first candidate's put.
                let Some((h, kv)) = first_put(&svc, who, &pfx, header_revision(&resp.header)).await
                else {
                    return;
                };
                (h, kv)
            }
        };
        if tx
            .send(Ok(LeaderResponse {
                header: Some(header),
                kv: Some(kv.clone()),
            }))
            .await
            .is_err()
        {
            return;
        }
        header.revision = header.revision.max(kv.mod_revision);
        // Follow this leader's key until it is deleted: each put is a proclamation.
        let Ok(mut w) = WatchStream::open(
            &svc,
            who,
            WatchCreateRequest {
                key: kv.key.clone(),
                start_revision: header.revision + 1,
                ..Default::default()
            },
        )
        .await
        else {
            return;
        };
        'key: loop {
            let Some(wr) = w.next().await else { return };
            if wr.canceled {
                return;
            }
            for ev in wr.events {
                if ev.r#type == EventType::Delete as i32 {
                    break 'key;
                }
                let resp = LeaderResponse {
                    header: wr.header,
                    kv: ev.kv,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The first put under `pfx` from revision `rev` on, with the header's revision set to that
/// put's (etcd's observe does the same); `None` if the watch ends first.
async fn first_put(
    svc: &Service,
    who: &AuthInfo,
    pfx: &Bytes,
    rev: i64,
) -> Option<(ResponseHeader, KeyValue)> {
    let mut w = WatchStream::open(
        svc,
        who,
        WatchCreateRequest {
            key: pfx.clone(),
            range_end: Bytes::from(prefix_end(pfx)),
            start_revision: rev,
            ..Default::default()
        },
    )
    .await
    .ok()?;
    loop {
        let wr = w.next().await?;
        if wr.canceled {
            return None;
        }
        for ev in wr.events {
            if ev.r#type == EventType::Put as i32 {
                let kv = ev.kv?;
                let mut h = wr.header.unwrap_or_default();
                h.revision = kv.mod_revision;
                return Some((h, kv));
            }
        }
    }
}

async fn proclaim_value(
    svc: &Service,
    who: &AuthInfo,
    leader: &LeaderKey,
    value: Bytes,
) -> R<Option<ResponseHeader>> {
    let resp = svc
        .txn(
            who,
            TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![put_op(&leader.key, value, leader.lease)],
                failure: vec![],
            },
        )
        .await
        .map_err(to_status)?;
    if !resp.succeeded {
        return Err(Status::unknown(ERR_NOT_LEADER));
    }
    Ok(resp.header)
}

/// Waits until no key under `pfx` has a create revision <= `max_create_rev` (etcd
/// `waitDeletes`): watches the newest such key for its deletion, then looks again.
async fn wait_deletes(svc: &Service, who: &AuthInfo, pfx: &Bytes, max_create_rev: i64) -> R<()> {
    loop {
        let resp = svc
            .range(
                who,
                RangeRequest {
                    max_create_revision: max_create_rev,
                    sort_order: SortOrder::Descend as i32,
                    ..first_created(pfx)
                },
            )
            .await
            .map_err(to_status)?;
        let Some(kv) = resp.kvs.into_iter().next() else {
            return Ok(());
        };
        wait_delete(svc, who, kv.key, header_revision(&resp.header)).await?;
    }
}

/// Waits for a delete of `key` at or after revision `rev` (etcd `waitDelete`).
async fn wait_delete(svc: &Service, who: &AuthInfo, key: Bytes, rev: i64) -> R<()> {
    let mut w = WatchStream::open(
        svc,
        who,
        WatchCreateRequest {
            key,
            start_revision: rev,
            ..Default::default()
        },
    )
    .await
    .map_err(|_| to_status(crate::error::ApiError::Stopped))?;
    while let Some(wr) = w.next().await {
        if wr.canceled {
            break;
        }
        if wr
            .events
            .iter()
            .any(|e| e.r#type == EventType::Delete as i32)
        {
            return Ok(());
        }
    }
    Err(Status::unknown(ERR_LOST_WATCHER))
}

/// The request's lease, or a fresh [`DEFAULT_SESSION_TTL_SECONDS`] lease for 0 (etcd
/// `concurrency.NewSession`).
async fn session_lease(svc: &Service, who: &AuthInfo, lease: i64) -> R<i64> {
    if lease != 0 {
        return Ok(lease);
    }
    let g = svc
        .lease_grant(
            who,
            LeaseGrantRequest {
                ttl: DEFAULT_SESSION_TTL_SECONDS,
                id: 0,
            },
        )
        .await
        .map_err(to_status)?;
    Ok(g.id)
}

/// Deletes a key when dropped unless disarmed: a waiter whose call ends early (client gone)
/// leaves no key behind to block the others.
struct DeleteOnDrop {
    svc: Arc<Service>,
    who: AuthInfo,
    key: Option<Bytes>,
}

impl DeleteOnDrop {
    fn new(svc: &Arc<Service>, who: &AuthInfo, key: Bytes) -> DeleteOnDrop {
        DeleteOnDrop {
            svc: svc.clone(),
            who: who.clone(),
            key: Some(key),
        }
    }

    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let (svc, who) = (self.svc.clone(), self.who.clone());
            tokio::spawn(async move {
                let req = DeleteRangeRequest {
                    key,
                    ..Default::default()
                };
                if let Err(e) = svc.delete_range(&who, req).await {
                    tracing::warn!(error = %e, "cannot delete an abandoned lock/election key");
                }
            });
        }
    }
}

fn with_slash(name: &[u8]) -> Bytes {
    let mut p = name.to_vec();
    p.push(b'/');
    Bytes::from(p)
}

fn member_key(pfx: &[u8], lease: i64) -> Bytes {
    let mut k = pfx.to_vec();
    k.extend_from_slice(etch_protocol::ids::LeaseId(lease).to_string().as_bytes());
    Bytes::from(k)
}

fn header_revision(h: &Option<ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

fn key_only(key: &Bytes) -> RangeRequest {
    RangeRequest {
        key: key.clone(),
        ..Default::default()
    }
}

/// The oldest key under `pfx` (etcd `WithFirstCreate`).
fn first_created(pfx: &Bytes) -> RangeRequest {
    RangeRequest {
        key: pfx.clone(),
        range_end: Bytes::from(prefix_end(pfx)),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

fn create_revision_is(key: &Bytes, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn put_op(key: &Bytes, value: Bytes, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: key.clone(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

fn range_op(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(r)),
    }
}

/// The first key-value of the `i`-th response of a Txn, if it is a range with any.
fn first_kv(resp: &TxnResponse, i: usize) -> Option<&KeyValue> {
    match resp.responses.get(i)?.response.as_ref()? {
        OpResponse::ResponseRange(RangeResponse { kvs, .. }) => kvs.first(),
        _ => None,
    }
}
