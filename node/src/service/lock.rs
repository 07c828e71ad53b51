//! etcd's `v3lockpb.Lock` service (`server/etcdserver/api/v3lock`): a lock is a key under the
//! lock's name attached to the caller's lease; see [`super::concurrency`] for the steps it
//! shares with elections.

use std::sync::Arc;

use bytes::Bytes;

use etch_protocol::etcdserverpb::{DeleteRangeRequest, TxnRequest};
use etch_protocol::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

use super::{AuthInfo, Service};
use crate::error::ApiError;

use super::concurrency::*;

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
        .await?;
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
    let mine = svc.range(who, key_only(&my_key)).await?;
    if mine.kvs.is_empty() {
        guard.disarm();
        return Err(ApiError::Unknown(ERR_SESSION_EXPIRED));
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
        .await?;
    Ok(UnlockResponse {
        header: resp.header,
    })
}
