//! etcd's Maintenance service (alarms, status, defragment, hashes, leader moves) and the space
//! quota the KV and Lease services check before proposing a write (etcd v3.5
//! `etcdserver/quota.go`, `api/v3rpc/quota.go`, `api/v3rpc/maintenance.go`).
//!
//! The quota compares this member's [`MvccStore::quota_size_bytes`] plus the request's
//! estimated cost with `--quota-backend-bytes`. Past it, the member proposes
//! `Alarm{ACTIVATE, NOSPACE, itself}` and refuses the request; from the moment that alarm is
//! applied, every member's apply refuses puts and lease grants until an operator compacts,
//! defragments and disarms it (`etcdctl alarm disarm`).

use etch_protocol::etcdserverpb::alarm_request::AlarmAction;
use etch_protocol::etcdserverpb::request_op::Request as Op;
use etch_protocol::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, DefragmentResponse, HashKvResponse, HashResponse,
    MoveLeaderResponse, PutRequest, StatusResponse, TxnRequest,
};
use etch_protocol::etchpb::internal_request::Request;
use etch_storage::mvcc::{MvccStore, RequestError, WriteResponse};

use super::{AuthInfo, Res, Service};
use crate::config::ETCD_API_VERSION;
use crate::error::ApiError;

/// Estimated bytes a key's metadata costs in the store, on top of key and value (etcd
/// `kvOverhead`).
pub(crate) const KV_OVERHEAD_BYTES: u64 = 256;

/// Estimated bytes a lease costs in the store (etcd `leaseOverhead`).
pub(crate) const LEASE_OVERHEAD_BYTES: u64 = 64;

/// The quota cost of a Put (etcd `costPut`): overhead + key + value, bytes.
pub(crate) fn cost_put(p: &PutRequest) -> u64 {
    KV_OVERHEAD_BYTES + p.key.len() as u64 + p.value.len() as u64
}

/// The quota cost of a Txn (etcd `costTxn`): the puts of the costlier branch, since only one
/// branch runs. Unlike etcd, puts in nested Txns count too (etcd counts top-level puts only).
/// 0 for a Txn that does not put.
pub(crate) fn cost_txn(t: &TxnRequest) -> u64 {
    let branch = |ops: &[etch_protocol::etcdserverpb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Op::RequestPut(p)) => cost_put(p),
                Some(Op::RequestTxn(t)) => cost_txn(t),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

/// An alarm as etcd prints it in `StatusResponse.errors` (the gogo-protobuf compact text of
/// `AlarmMember`, trailing space included): `memberID:10 alarm:NOSPACE `.
fn alarm_text(member_id: u64, alarm: i32) -> String {
    let name = AlarmType::try_from(alarm)
        .map_or_else(|_| alarm.to_string(), |a| a.as_str_name().to_owned());
    format!("memberID:{member_id} alarm:{name} ")
}

impl Service {
    /// etcd's `quotaAlarmer.check`: if this member's store (as measured at most
    /// [`etch_storage::mvcc::QUOTA_SIZE_MAX_AGE_MS`] ago) plus `cost` bytes reaches the quota
    /// (etcd: available while `size + cost < quota`), raises NOSPACE for this member through
    /// consensus (waiting for it, ignoring its failure, and skipped when this member's NOSPACE
    /// is already active) and refuses the request.
    ///
    /// # Errors
    /// [`RequestError::NoSpace`] when over the quota.
    pub(super) async fn check_quota(&self, cost: u64) -> Res<()> {
        let size = self.store.recent_quota_size_bytes();
        if size.saturating_add(cost) < self.limits.quota_backend_bytes {
            return Ok(());
        }
        let me = self.state.member_id;
        let raised = self
            .store
            .alarms(AlarmType::Nospace)
            .iter()
            .any(|m| m.member_id == me.0);
        if !raised {
            tracing::warn!(
                size,
                cost,
                quota = self.limits.quota_backend_bytes,
                "backend quota exceeded: raising the NOSPACE alarm"
            );
            let req = AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: me.0,
                alarm: AlarmType::Nospace as i32,
            };
            if let Err(e) = self.propose(None, Request::Alarm(req)).await {
                tracing::warn!(error = %e, "cannot raise the NOSPACE alarm");
            }
        }
        Err(RequestError::NoSpace.into())
    }

    /// A peer's request to raise NOSPACE for itself (its disk is full: ENOSPC on its WAL or
    /// store, and it is about to stop). Only `ACTIVATE NOSPACE` with the asking member's own
    /// ID is served.
    ///
    /// # Errors
    /// [`RequestError::PermissionDenied`] for any other alarm request; the proposal's errors.
    pub(super) async fn peer_no_space(&self, from: u64, req: AlarmRequest) -> Res<AlarmResponse> {
        if req.action != AlarmAction::Activate as i32
            || req.alarm != AlarmType::Nospace as i32
            || req.member_id != from
        {
            return Err(RequestError::PermissionDenied.into());
        }
        tracing::warn!(member = %etch_protocol::ids::MemberId(from), "peer's disk is full: raising the NOSPACE alarm");
        // The full member may be the leader: its proposals are lost until the others elect a
        // new one, so retry for a while (this goes on after the asker stopped waiting).
        let deadline = tokio::time::Instant::now() + 10 * self.limits.request_timeout;
        loop {
            match self.propose(None, Request::Alarm(req)).await {
                Ok(WriteResponse::Alarm(r)) => return Ok(r),
                Ok(_) => return Err(ApiError::Unimplemented),
                Err(
                    ApiError::NoLeader
                    | ApiError::Timeout
                    | ApiError::NotLeader
                    | ApiError::TooManyRequests,
                ) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Maintenance.Alarm: GET, ACTIVATE and DEACTIVATE all go through consensus, as in etcd
    /// v3.5, and answer what apply did (see `etch_storage::mvcc` alarms). Not permission
    /// checked (etcd v3.5 checks none).
    ///
    /// # Errors
    /// No leader, timeout.
    pub async fn alarm(&self, who: &AuthInfo, req: AlarmRequest) -> Res<AlarmResponse> {
        match self.propose(Some(who), Request::Alarm(req)).await? {
            WriteResponse::Alarm(mut r) => {
                r.header = self.header(r.header);
                Ok(r)
            }
            _ => Err(ApiError::Unimplemented),
        }
    }

    /// Why `/health` must say false because of an alarm (etcd v3.5 `checkHealth`): `ALARM
    /// NOSPACE`, `ALARM CORRUPT` or `ALARM UNKNOWN` for the first active alarm whose type name
    /// is not in `excluded` (`/health?exclude=NOSPACE`); `None` when no alarm counts.
    pub fn alarm_health(&self, excluded: &[&str]) -> Option<String> {
        self.store.alarms(AlarmType::None).iter().find_map(|m| {
            let t = AlarmType::try_from(m.alarm).ok();
            if t.is_some_and(|t| excluded.contains(&t.as_str_name())) {
                return None;
            }
            Some(
                match t {
                    Some(AlarmType::Nospace) => "ALARM NOSPACE",
                    Some(AlarmType::Corrupt) => "ALARM CORRUPT",
                    _ => "ALARM UNKNOWN",
                }
                .to_owned(),
            )
        })
    }

    /// Maintenance.Defragment: rewrites this member's store so the space compaction freed is
    /// returned ([`MvccStore::defragment`], on the blocking pool). Root only with auth on.
    /// etcd answers it without a header; so does this.
    ///
    /// # Errors
    /// Permission errors; a store failure.
    pub async fn defragment(&self, who: &AuthInfo) -> Res<DefragmentResponse> {
        self.check_admin(who)?;
        let started = std::time::Instant::now();
        let before = self.store.quota_size_bytes();
        self.blocking(MvccStore::defragment).await?;
        tracing::info!(
            took = ?started.elapsed(),
            size_in_use_before = before,
            size_in_use_after = self.store.quota_size_bytes(),
            "defragmented"
        );
        Ok(DefragmentResponse { header: None })
    }

    /// The hash of this member's MVCC history up to `revision` (0 = current): etcd
    /// Maintenance.HashKV, answered locally (members are compared by the caller).
    ///
    /// # Errors
    /// Compacted or future revision; store failure.
    pub async fn hash_kv(&self, who: &AuthInfo, revision: i64) -> Res<HashKvResponse> {
        self.check_admin(who)?;
        self.peer_hash_kv(revision).await
    }

    /// HashKV for a peer's corruption check (etcd serves it on the peer URL's
    /// `/members/hashkv`, without client auth: peers are authenticated by the transport).
    ///
    /// # Errors
    /// Compacted or future revision; store failure.
    pub async fn peer_hash_kv(&self, revision: i64) -> Res<HashKvResponse> {
        let h = self.blocking(move |s| s.hash_kv(revision)).await??;
        Ok(HashKvResponse {
            header: self.header(None),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.hash_revision,
        })
    }

    /// The hash of this member's whole store as it is now (etcd Maintenance.Hash).
    ///
    /// # Errors
    /// Store failure.
    pub async fn hash(&self, who: &AuthInfo) -> Res<HashResponse> {
        self.check_admin(who)?;
        let hash = self.blocking(MvccStore::hash_all).await?;
        Ok(HashResponse {
            header: self.header(None),
            hash,
        })
    }

    /// Hands leadership to member `target` and waits until it leads (etcd
    /// Maintenance.MoveLeader; must be sent to the leader, as in etcd). Moving it to the
    /// leader itself succeeds at once (etcd v3.5 waits for `Lead() == transferee`, which
    /// already holds).
    ///
    /// # Errors
    /// Not the leader; `target` is not another voter; the transfer did not finish within the
    /// request timeout.
    pub async fn move_leader(&self, who: &AuthInfo, target: u64) -> Res<MoveLeaderResponse> {
        self.check_admin(who)?;
        if self.state.leader() != self.state.member_id {
            return Err(ApiError::NotLeader);
        }
        if target == self.state.member_id.0 {
            return Ok(MoveLeaderResponse { header: None });
        }
        let started = self
            .consensus
            .send(crate::actors::consensus::TransferLeadership(Some(target)))
            .await
            .map_err(|_| ApiError::Stopped)?;
        if started != Some(target) {
            return Err(ApiError::BadLeaderTransferee);
        }
        let mut leader = self.state.leader_changes();
        match tokio::time::timeout(
            self.limits.request_timeout,
            leader.wait_for(|l| *l == target),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(ApiError::Stopped),
            Err(_) => return Err(ApiError::LeaderTransferTimeout),
        }
        // etcd's reply carries no header (v3rpc maintenance.go `MoveLeader`).
        Ok(MoveLeaderResponse { header: None })
    }

    /// The response header for requests that only report this member's state.
    pub fn local_header(&self) -> Option<super::ResponseHeader> {
        self.header(None)
    }

    /// This member's status (etcd Maintenance.Status): `db_size` is every file of the store
    /// (fjall's journal included), `db_size_in_use` the data the quota counts
    /// ([`MvccStore::quota_size_bytes`]); `errors` lists the active alarms as etcd does.
    pub fn status(&self) -> StatusResponse {
        StatusResponse {
            header: self.header(None),
            version: ETCD_API_VERSION.to_owned(),
            db_size: self.store.db_size_bytes() as i64,
            leader: self.state.leader().0,
            raft_index: self.state.last_index(),
            raft_term: self.state.term(),
            raft_applied_index: self.store.applied_index().index,
            errors: self
                .store
                .alarms(AlarmType::None)
                .iter()
                .map(|m| alarm_text(m.member_id, m.alarm))
                .collect(),
            db_size_in_use: self.store.quota_size_bytes() as i64,
            is_learner: self.state.is_learner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use etch_protocol::etcdserverpb::{DeleteRangeRequest, RequestOp};

    fn put(k: &str, v: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Bytes::copy_from_slice(v.as_bytes()),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn costs_follow_etcd() {
        let p = PutRequest {
            key: Bytes::from_static(b"key"),
            value: Bytes::from_static(b"value"),
            lease: 7,
            ..Default::default()
        };
        assert_eq!(cost_put(&p), 256 + 3 + 5);
        let del = RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest::default())),
        };
        assert_eq!(
            cost_txn(&TxnRequest {
                success: vec![del.clone()],
                ..Default::default()
            }),
            0
        );
        let t = TxnRequest {
            success: vec![put("a", "1"), put("b", "22")],
            failure: vec![put("c", "1"), del],
            ..Default::default()
        };
        assert_eq!(cost_txn(&t), 258 + 259, "the costlier branch");
        let nested = TxnRequest {
            failure: vec![RequestOp {
                request: Some(Op::RequestTxn(t)),
            }],
            ..Default::default()
        };
        assert_eq!(cost_txn(&nested), 258 + 259);
    }

    #[test]
    fn alarm_text_is_etcds() {
        assert_eq!(
            alarm_text(10, AlarmType::Nospace as i32),
            "memberID:10 alarm:NOSPACE "
        );
        assert_eq!(alarm_text(1, 9), "memberID:1 alarm:9 ");
    }
}
