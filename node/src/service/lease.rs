//! etcd's Lease service (`etcdserverpb.Lease`): grant and revoke through consensus; keep-alive
//! and time-to-live served by the leader's lessor (followers forward them over the peer
//! transport); the lease list.

use super::*;

impl Service {
    /// LeaseGrant through consensus. ID 0 lets the server choose; TTLs below the minimum are
    /// raised to it (etcd).
    ///
    /// # Errors
    /// Lease exists, TTL too large, no leader, timeout, no space.
    pub async fn lease_grant(
        &self,
        who: &AuthInfo,
        mut req: LeaseGrantRequest,
    ) -> Res<LeaseGrantResponse> {
        self.check_quota(maintenance::LEASE_OVERHEAD_BYTES).await?;
        if req.id == 0 {
            // Unique across members and restarts, positive: the request id generator.
            req.id = (self.proposer.next_id() & (i64::MAX as u64)) as i64;
        }
        req.ttl = req.ttl.max(self.limits.min_lease_ttl);
        match self.propose(Some(who), Request::LeaseGrant(req)).await? {
            WriteResponse::LeaseGrant(mut r) => {
                r.header = self.header(r.header);
                Ok(r)
            }
            _ => Err(ApiError::Unimplemented),
        }
    }

    /// LeaseRevoke through consensus: every attached key is deleted in one revision. With
    /// auth, `who` must be allowed to write every attached key (checked at apply). `None` is
    /// the lessor revoking an expired lease (never checked).
    ///
    /// # Errors
    /// Lease not found, permission denied, no leader, timeout.
    pub async fn lease_revoke(
        &self,
        who: Option<&AuthInfo>,
        req: LeaseRevokeRequest,
    ) -> Res<LeaseRevokeResponse> {
        match self.propose(who, Request::LeaseRevoke(req)).await? {
            WriteResponse::LeaseRevoke(mut r) => {
                r.header = self.header(r.header);
                Ok(r)
            }
            _ => Err(ApiError::Unimplemented),
        }
    }

    /// Renews a lease. Served by the leader's lessor.
    ///
    /// # Errors
    /// [`ApiError::NotLeader`] on a follower.
    pub async fn lease_keep_alive(
        &self,
        req: LeaseKeepAliveRequest,
    ) -> Res<LeaseKeepAliveResponse> {
        let deadline = tokio::time::Instant::now() + self.limits.request_timeout;
        loop {
            // etcd v3.5's `ensureLeadership` and `waitAppliedIndex` in one ReadIndex: a quorum
            // confirms this member still leads (a deposed leader that does not know it yet,
            // stalled or cut off, must not renew a lease the new leader will expire: etcd
            // issue 15247), and apply reaches the leader's commit index (a lease granted
            // through another member may be committed but not applied yet; renewing before
            // would answer "not found"). A follower only forwards: nothing to wait for.
            let mut confirmed_term = 0;
            if self.state.leader() == self.state.member_id {
                let term = self.state.term();
                self.linearizable().await?;
                confirmed_term = term;
            }
            let local = self
                .lessor
                .send(KeepAlive {
                    id: req.id,
                    confirmed_term,
                })
                .await
                .map_err(|_| ApiError::Stopped)?;
            if let Some(ttl) = local {
                return Ok(LeaseKeepAliveResponse {
                    header: self.header(None),
                    id: req.id,
                    ttl,
                });
            }
            match self
                .forward(peer_request::Body::LeaseKeepAlive(req), deadline)
                .await
            {
                Ok(peer_answer::Body::LeaseKeepAlive(r)) => return Ok(r),
                Ok(_) => return Err(ApiError::Unimplemented),
                // The leader changed while we waited: ask again, maybe of ourselves.
                Err(ApiError::NotLeader) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A lease's remaining and granted TTL, and its keys when asked.
    ///
    /// # Errors
    /// [`ApiError::NotLeader`] on a follower (only the leader knows deadlines).
    pub async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Res<LeaseTimeToLiveResponse> {
        if self.state.leader() != self.state.member_id {
            let deadline = tokio::time::Instant::now() + self.limits.request_timeout;
            return match self
                .forward(peer_request::Body::LeaseTimeToLive(req), deadline)
                .await?
            {
                peer_answer::Body::LeaseTimeToLive(r) => Ok(r),
                _ => Err(ApiError::Unimplemented),
            };
        }
        // As for keep-alives: a lease granted through a follower must be applied here first.
        self.wait_applied(self.state.commit_index()).await?;
        let ttl = self
            .lessor
            .send(TimeToLive(req.id))
            .await
            .map_err(|_| ApiError::Stopped)?;
        let Some((remaining, granted)) = ttl else {
            // etcd answers an unknown lease with TTL -1.
            return Ok(LeaseTimeToLiveResponse {
                header: self.header(None),
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            });
        };
        let keys = match self
            .store
            .lease(req.id, req.keys)
            .map_err(Self::store_err)?
        {
            Some((_, keys)) => keys,
            None => Vec::new(),
        };
        Ok(LeaseTimeToLiveResponse {
            header: self.header(None),
            id: req.id,
            ttl: remaining,
            granted_ttl: granted,
            keys,
        })
    }

    /// Sends a request only the leader serves to the leader (over the peer transport) and
    /// returns its answer, or the error it answered with. Gives up with
    /// [`ApiError::NotLeader`] as soon as the leader changes (the caller asks again), so a
    /// request sent to a leader that died does not wait out the whole timeout.
    pub(super) async fn forward(
        &self,
        body: peer_request::Body,
        deadline: tokio::time::Instant,
    ) -> Res<peer_answer::Body> {
        self.forward_to_leader(body, deadline, false).await
    }

    /// [`Service::forward`]; with `patient`, a request that must not be sent twice (a
    /// membership change) waits for the old leader's answer until the deadline even when the
    /// leader changes: a leader that removed itself still answers before it stops.
    pub(super) async fn forward_to_leader(
        &self,
        body: peer_request::Body,
        deadline: tokio::time::Instant,
        patient: bool,
    ) -> Res<peer_answer::Body> {
        let Some(t) = &self.transport else {
            return Err(ApiError::NotLeader);
        };
        let leader = loop {
            match self.state.leader().0 {
                0 if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                0 => return Err(ApiError::NoLeader),
                l if l == self.state.member_id.0 => return Err(ApiError::NotLeader),
                l => break l,
            }
        };
        let mut rx = t
            .send(crate::actors::transport::Ask {
                to: leader,
                body,
                timeout: deadline.saturating_duration_since(tokio::time::Instant::now()),
            })
            .await
            .map_err(|_| ApiError::Stopped)?
            .ok_or(ApiError::NoLeader)?;
        let resp = loop {
            tokio::select! {
                r = &mut rx => match r {
                    Ok(a) => break a,
                    Err(_) => return Err(ApiError::Stopped),
                },
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if !patient && self.state.leader().0 != leader {
                        return Err(ApiError::NotLeader);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ApiError::Timeout);
                    }
                }
            }
        };
        match resp.body {
            Some(peer_answer::Body::Error(e)) => Err(crate::error::from_status(e.code, &e.message)),
            Some(b) => Ok(b),
            None => Err(ApiError::Unimplemented),
        }
    }

    /// Every lease (linearizable, as etcd's LeaseLeases).
    ///
    /// # Errors
    /// No leader, timeout.
    pub async fn lease_leases(&self) -> Res<LeaseLeasesResponse> {
        self.linearizable().await?;
        let leases = self.store.leases().map_err(Self::store_err)?;
        Ok(LeaseLeasesResponse {
            header: self.header(None),
            leases: leases
                .into_iter()
                .map(|l| LeaseStatus { id: l.id })
                .collect(),
        })
    }
}
