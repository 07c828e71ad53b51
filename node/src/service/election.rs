//! etcd's `v3electionpb.Election` service (`server/etcdserver/api/v3election`): a candidacy
//! is a key under the election's name attached to the caller's lease; the leader is the oldest
//! one. See [`super::concurrency`] for the steps it shares with locks.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use etch_protocol::etcdserverpb::request_op::Request as Op;
use etch_protocol::etcdserverpb::{
    DeleteRangeRequest, RequestOp, ResponseHeader, TxnRequest, WatchCreateRequest,
};
use etch_protocol::mvccpb::KeyValue;
use etch_protocol::mvccpb::event::EventType;
use etch_protocol::prefix_end;
use etch_protocol::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};

use super::watch::WatchStream;
use super::{AuthInfo, Service};
use crate::error::ApiError;

use super::concurrency::*;

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
        .await?;
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
        .ok_or(ApiError::Unknown(ERR_MISSING_LEADER_KEY))?;
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
        .await?;
    let kv = resp
        .kvs
        .into_iter()
        .next()
        .ok_or(ApiError::Unknown(ERR_NO_LEADER))?;
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
        .ok_or(ApiError::Unknown(ERR_MISSING_LEADER_KEY))?;
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
        .await?;
    Ok(ResignResponse {
        header: resp.header,
    })
}

/// [`observe`] as a stream (etcd `Election.Observe`): it stops following the election as
/// soon as the stream is dropped (the client went away), not at the next event.
pub fn observe_stream(
    svc: Arc<Service>,
    who: AuthInfo,
    req: LeaderRequest,
) -> tokio_stream::wrappers::ReceiverStream<R<LeaderResponse>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let gone = tx.clone();
        tokio::select! {
            _ = gone.closed() => {}
            _ = observe(svc, who, req, tx) => {}
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
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
                let _ = tx.send(Err(e)).await;
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
        .await?;
    if !resp.succeeded {
        return Err(ApiError::Unknown(ERR_NOT_LEADER));
    }
    Ok(resp.header)
}
