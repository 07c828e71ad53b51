//! What etcd's server-side concurrency recipes share (`lock`, `election`): the `v3lockpb.Lock`
//! and `v3electionpb.Election` services. etcd builds them from `client/v3/concurrency` (`Mutex`, `Election`) over its own
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

use etch_protocol::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etch_protocol::etcdserverpb::range_request::{SortOrder, SortTarget};
use etch_protocol::etcdserverpb::request_op::Request as Op;
use etch_protocol::etcdserverpb::response_op::Response as OpResponse;
use etch_protocol::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, TxnResponse, WatchCreateRequest,
};
use etch_protocol::mvccpb::KeyValue;
use etch_protocol::mvccpb::event::EventType;
use etch_protocol::prefix_end;

use super::watch::WatchStream;
use super::{AuthInfo, Service};
use crate::error::ApiError;

pub(super) type R<T> = Result<T, ApiError>;

pub(super) const ERR_NOT_LEADER: &str = "election: not leader";
pub(super) const ERR_NO_LEADER: &str = "election: no leader";
pub(super) const ERR_SESSION_EXPIRED: &str = "mutex: session is expired";
pub(super) const ERR_MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
pub(super) const ERR_LOST_WATCHER: &str = "lost watcher waiting for delete";

/// TTL of the lease granted for a request with lease 0, seconds (etcd `defaultSessionTTL`).
pub(super) const DEFAULT_SESSION_TTL_SECONDS: i64 = 60;

/// Waits until no key under `pfx` has a create revision <= `max_create_rev` (etcd
/// `waitDeletes`): watches the newest such key for its deletion, then looks again.
pub(super) async fn wait_deletes(
    svc: &Service,
    who: &AuthInfo,
    pfx: &Bytes,
    max_create_rev: i64,
) -> R<()> {
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
            .await?;
        let Some(kv) = resp.kvs.into_iter().next() else {
            return Ok(());
        };
        wait_delete(svc, who, kv.key, header_revision(&resp.header)).await?;
    }
}

/// Waits for a delete of `key` at or after revision `rev` (etcd `waitDelete`).
pub(super) async fn wait_delete(svc: &Service, who: &AuthInfo, key: Bytes, rev: i64) -> R<()> {
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
    .map_err(|_| ApiError::Stopped)?;
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
    Err(ApiError::Unknown(ERR_LOST_WATCHER))
}

/// The request's lease, or a fresh [`DEFAULT_SESSION_TTL_SECONDS`] lease for 0 (etcd
/// `concurrency.NewSession`).
pub(super) async fn session_lease(svc: &Service, who: &AuthInfo, lease: i64) -> R<i64> {
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
        .await?;
    Ok(g.id)
}

/// Deletes a key when dropped unless disarmed: a waiter whose call ends early (client gone)
/// leaves no key behind to block the others.
pub(super) struct DeleteOnDrop {
    svc: Arc<Service>,
    who: AuthInfo,
    key: Option<Bytes>,
}

impl DeleteOnDrop {
    pub(super) fn new(svc: &Arc<Service>, who: &AuthInfo, key: Bytes) -> DeleteOnDrop {
        DeleteOnDrop {
            svc: svc.clone(),
            who: who.clone(),
            key: Some(key),
        }
    }

    pub(super) fn disarm(mut self) {
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

pub(super) fn with_slash(name: &[u8]) -> Bytes {
    let mut p = name.to_vec();
    p.push(b'/');
    Bytes::from(p)
}

pub(super) fn member_key(pfx: &[u8], lease: i64) -> Bytes {
    let mut k = pfx.to_vec();
    k.extend_from_slice(etch_protocol::ids::LeaseId(lease).to_string().as_bytes());
    Bytes::from(k)
}

pub(super) fn header_revision(h: &Option<ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

pub(super) fn key_only(key: &Bytes) -> RangeRequest {
    RangeRequest {
        key: key.clone(),
        ..Default::default()
    }
}

/// The oldest key under `pfx` (etcd `WithFirstCreate`).
pub(super) fn first_created(pfx: &Bytes) -> RangeRequest {
    RangeRequest {
        key: pfx.clone(),
        range_end: Bytes::from(prefix_end(pfx)),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

pub(super) fn create_revision_is(key: &Bytes, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

pub(super) fn put_op(key: &Bytes, value: Bytes, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: key.clone(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

pub(super) fn range_op(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(r)),
    }
}

/// The first key-value of the `i`-th response of a Txn, if it is a range with any.
pub(super) fn first_kv(resp: &TxnResponse, i: usize) -> Option<&KeyValue> {
    match resp.responses.get(i)?.response.as_ref()? {
        OpResponse::ResponseRange(RangeResponse { kvs, .. }) => kvs.first(),
        _ => None,
    }
}
