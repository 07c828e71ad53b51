//! etcd's Cluster service (`api/v3rpc/member.go`): MemberList, and the membership changes
//! MemberAdd, MemberRemove, MemberUpdate and MemberPromote with etcd v3.5's checks and errors.
//!
//! Adds, removals and promotions are raft configuration changes decided by the leader (it
//! knows which voters are active and how far a learner has caught up), so a follower forwards
//! its client's request to the leader over the peer transport. MemberUpdate and a member's
//! published name and client URLs are normal entries any member proposes. Every member
//! re-checks the change when it applies it (`etch_storage::members`).

use etch_protocol::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use etch_protocol::etchpb::internal_request::Request;
use etch_protocol::etchpb::{peer_answer, peer_request};
use etch_storage::members::Membership;
use etch_storage::mvcc::WriteResponse;

use super::{Res, Service};
use crate::core::members::{Proposed, new_member_id};
use crate::error::ApiError;

impl Service {
    /// Every member, in ID order. `linearizable` (etcd 3.5's clients always set it) first
    /// waits for a ReadIndex, so the list is the cluster's latest; otherwise this member's
    /// applied view. A member that has not published its client URLs yet shows those its peer
    /// Hello announced.
    ///
    /// # Errors
    /// With `linearizable`: no leader, timeout.
    pub async fn member_list(&self, req: MemberListRequest) -> Res<MemberListResponse> {
        if req.linearizable {
            self.linearizable().await?;
        }
        Ok(MemberListResponse {
            header: self.cluster_header(),
            members: self.members_with_urls(self.state.membership()),
        })
    }

    /// The members of `m`, with client URLs from peer Hellos where none were published.
    fn members_with_urls(&self, m: Membership) -> Vec<Member> {
        m.members
            .into_iter()
            .map(|mut x| {
                if x.client_ur_ls.is_empty() {
                    x.client_ur_ls = self.state.client_urls(x.id).unwrap_or_default();
                }
                x
            })
            .collect()
    }

    /// Adds a member (a voter, or a learner with `is_learner`) with a new ID; it is
    /// "unstarted" until it joins and publishes its name.
    ///
    /// # Errors
    /// [`ApiError::MemberBadUrls`], the leader's checks (not enough started members, unhealthy
    /// cluster, too many learners), "Peer URLs already exists", no leader, timeout.
    pub async fn member_add(&self, req: MemberAddRequest) -> Res<MemberAddResponse> {
        let peer_urls = check_urls(&req.peer_ur_ls)?;
        if !self.is_leader() {
            match self
                .forward_retrying(peer_request::Body::MemberAdd(req.clone()), |_| false)
                .await
            {
                // This member leads now: it decides below.
                Err(ApiError::NotLeader) if self.is_leader() => {}
                Ok(Some(peer_answer::Body::MemberAdd(r))) => return Ok(r),
                Ok(_) => return Err(ApiError::Unimplemented),
                Err(e) => return Err(e),
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let member = Member {
            id: new_member_id(&peer_urls, now),
            name: String::new(),
            peer_ur_ls: peer_urls,
            client_ur_ls: Vec::new(),
            is_learner: req.is_learner,
        };
        let m = self.change(Proposed::Add(member.clone())).await?;
        Ok(MemberAddResponse {
            header: self.cluster_header(),
            member: Some(member),
            members: self.members_with_urls(m),
        })
    }

    /// Removes member `id` (this member included: it then stops).
    ///
    /// # Errors
    /// "member not found", the leader's checks, no leader, timeout.
    pub async fn member_remove(&self, req: MemberRemoveRequest) -> Res<MemberRemoveResponse> {
        let was_removed = etch_storage::members::is_removed(&self.state.membership(), req.id);
        if !self.is_leader() {
            match self
                .forward_retrying(peer_request::Body::MemberRemove(req), |m| {
                    !was_removed && etch_storage::members::is_removed(m, req.id)
                })
                .await
            {
                // This member leads now: it decides below.
                Err(ApiError::NotLeader) if self.is_leader() => {}
                Ok(Some(peer_answer::Body::MemberRemove(r))) => return Ok(r),
                Ok(None) => {
                    return Ok(MemberRemoveResponse {
                        header: self.cluster_header(),
                        members: self.members_with_urls(self.state.membership()),
                    });
                }
                Ok(_) => return Err(ApiError::Unimplemented),
                Err(e) => return Err(e),
            }
        }
        let m = self.change(Proposed::Remove(req.id)).await?;
        Ok(MemberRemoveResponse {
            header: self.cluster_header(),
            members: self.members_with_urls(m),
        })
    }

    /// Makes learner `id` a voter once it has caught up with the leader.
    ///
    /// # Errors
    /// "member not found", "can only promote a learner member", "... which is in sync with
    /// leader", not enough started members, no leader, timeout.
    pub async fn member_promote(&self, req: MemberPromoteRequest) -> Res<MemberPromoteResponse> {
        let was_learner = etch_storage::members::get(&self.state.membership(), req.id)
            .is_some_and(|x| x.is_learner);
        if !self.is_leader() {
            match self
                .forward_retrying(peer_request::Body::MemberPromote(req), |m| {
                    was_learner
                        && etch_storage::members::get(m, req.id).is_some_and(|x| !x.is_learner)
                })
                .await
            {
                // This member leads now: it decides below.
                Err(ApiError::NotLeader) if self.is_leader() => {}
                Ok(Some(peer_answer::Body::MemberPromote(r))) => return Ok(r),
                Ok(None) => {
                    return Ok(MemberPromoteResponse {
                        header: self.cluster_header(),
                        members: self.members_with_urls(self.state.membership()),
                    });
                }
                Ok(_) => return Err(ApiError::Unimplemented),
                Err(e) => return Err(e),
            }
        }
        let m = self.change(Proposed::Promote(req.id)).await?;
        Ok(MemberPromoteResponse {
            header: self.cluster_header(),
            members: self.members_with_urls(m),
        })
    }

    /// Gives member `id` new peer URLs (peers reconnect to them once applied).
    ///
    /// # Errors
    /// [`ApiError::MemberBadUrls`], "member not found", "Peer URLs already exists", no leader,
    /// timeout.
    pub async fn member_update(&self, req: MemberUpdateRequest) -> Res<MemberUpdateResponse> {
        let peer_urls = check_urls(&req.peer_ur_ls)?;
        let r = self
            .proposer
            .propose(
                None,
                Request::MemberUpdate(MemberUpdateRequest {
                    id: req.id,
                    peer_ur_ls: peer_urls,
                }),
            )
            .await?;
        let WriteResponse::Members(m) = r else {
            return Err(ApiError::Unimplemented);
        };
        Ok(MemberUpdateResponse {
            header: self.cluster_header(),
            members: self.members_with_urls(m),
        })
    }

    /// Publishes this member's name and client URLs through raft once it serves, unless the
    /// applied membership already has them (etcd's `publish`).
    ///
    /// # Errors
    /// No leader, timeout (the caller retries).
    pub async fn publish_attributes(&self, name: &str, client_urls: &[String]) -> Res<()> {
        let me = self.state.member_id.0;
        let m = self.state.membership();
        // A joining member learns of itself when it applies its own addition: until then, wait.
        let current = etch_storage::members::get(&m, me).ok_or(ApiError::Request(
            etch_storage::mvcc::RequestError::MemberNotFound,
        ))?;
        if current.name == name && current.client_ur_ls == client_urls {
            return Ok(());
        }
        self.proposer
            .propose(
                None,
                Request::MemberAttributes(Member {
                    id: me,
                    name: name.to_owned(),
                    client_ur_ls: client_urls.to_vec(),
                    ..Default::default()
                }),
            )
            .await?;
        Ok(())
    }

    /// The header of Cluster responses: no revision, as etcd's (`ClusterServer.header`).
    fn cluster_header(&self) -> Option<etch_protocol::etcdserverpb::ResponseHeader> {
        self.header(None)
            .map(|h| etch_protocol::etcdserverpb::ResponseHeader { revision: 0, ..h })
    }

    fn is_leader(&self) -> bool {
        self.state.leader() == self.state.member_id
    }

    /// Proposes a change on the leader (this member) and returns the membership after it.
    async fn change(&self, p: Proposed) -> Res<Membership> {
        let r = self
            .proposer
            .propose_member_change(
                p,
                self.limits.strict_reconfig_check,
                self.limits.max_learners,
            )
            .await?;
        match r {
            WriteResponse::Members(m) => Ok(m),
            _ => Err(ApiError::Unimplemented),
        }
    }

    /// Forwards a membership change to the leader. It is sent once: if the leader changes
    /// meanwhile, the old leader's answer is still awaited (within the request timeout), since
    /// asking the new one again could make the change twice. When `done` says the applied
    /// membership already shows the change (a leader that removed itself may stop before its
    /// answer leaves), that is the answer: `Ok(None)`. Not sent at all while no other member
    /// leads: `NotLeader` then, when this member has become the leader.
    async fn forward_retrying(
        &self,
        body: peer_request::Body,
        done: impl Fn(&Membership) -> bool,
    ) -> Res<Option<peer_answer::Body>> {
        let deadline = tokio::time::Instant::now() + self.limits.request_timeout;
        let mut changes = self.state.membership_changes();
        let forwarded = self.forward_to_leader(body, deadline, true);
        tokio::pin!(forwarded);
        loop {
            tokio::select! {
                r = &mut forwarded => return r.map(Some),
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Err(ApiError::Stopped);
                    }
                    if done(&changes.borrow_and_update()) {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// Checks peer URLs as etcd's `types.NewURLs` does (scheme http, https, unix or unixs, a
/// `host:port`, no path) and returns them trimmed and sorted.
///
/// # Errors
/// [`ApiError::MemberBadUrls`].
pub(super) fn check_urls(urls: &[String]) -> Res<Vec<String>> {
    if urls.is_empty() {
        return Err(ApiError::MemberBadUrls);
    }
    let mut out = Vec::with_capacity(urls.len());
    for u in urls {
        let u = u.trim();
        let (scheme, rest) = u.split_once("://").ok_or(ApiError::MemberBadUrls)?;
        // A query is allowed (Go's url.Parse keeps it apart), a path is not, not even "/".
        let hostport = rest.split_once('?').map_or(rest, |(h, _)| h);
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h, p),
            _ => return Err(ApiError::MemberBadUrls),
        };
        let host_ok = match host.strip_prefix('[') {
            Some(v6) => v6
                .strip_suffix(']')
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok()),
            None => !host.is_empty() && !host.contains(':'),
        };
        let scheme_ok = matches!(scheme, "http" | "https" | "unix" | "unixs");
        if !scheme_ok || !host_ok || port.is_empty() || hostport.contains('/') {
            return Err(ApiError::MemberBadUrls);
        }
        out.push(u.to_owned());
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_are_checked_as_etcd_does() {
        assert_eq!(
            check_urls(&[" http://b:2380".into(), "https://a:2380".into()]).unwrap(),
            ["http://b:2380", "https://a:2380"]
        );
        assert!(check_urls(&["http://[::1]:2380".into(), "http://a:1?q=1".into()]).is_ok());
        for bad in [
            "foo",
            "ftp://a:1",
            "http://a",
            "http://a:1/path",
            "http://a:1/",
            "http://127.0.0.1:1:2",
            "http://[zz]:1",
        ] {
            assert_eq!(
                check_urls(&[bad.into()]),
                Err(ApiError::MemberBadUrls),
                "{bad}"
            );
        }
        assert!(check_urls(&[]).is_err());
    }
}
