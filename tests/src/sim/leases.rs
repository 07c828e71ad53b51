//! Leases in the simulator: each member runs the node's [`Lessor`] core as the lease actor
//! does (following leadership before every answer and tick, learning grants and revokes from
//! apply, proposing a revoke for each expired lease); lease clients grant leases and keep them
//! alive through the member that leads. The check: no revoke that commits was decided before
//! the lease's TTL had passed since a leader last granted or refreshed it (a deposed leader
//! may still decide one, but it proposes only as the leader of the lessor's term, so the
//! proposal never commits).

use prost::Message as _;
use rand::Rng;

use etch_node::core::apply::LeaseChange;
use etch_node::core::lease::{LEASE_TICK, Lessor, MAX_REVOKES_PER_SECOND};
use etch_protocol::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
use etch_protocol::etchpb::InternalRequest;
use etch_protocol::etchpb::internal_request::Request;

use super::{Event, Sim};

/// A revoke a lessor proposed: (member, when in ms, the lease's last refresh then as (ms, TTL
/// in s)).
pub(super) type RevokeDecision = (u64, u64, Option<(u64, i64)>);

/// A lease client: holds at most one lease, keeps it alive every third of its TTL.
#[derive(Debug, Default)]
pub(super) struct LeaseClient {
    /// (lease ID, TTL in seconds) once granted.
    lease: Option<(i64, i64)>,
    /// The grant in flight: (request id, lease ID, TTL), and when it was sent.
    granting: Option<(u64, i64, i64, u64)>,
}

impl Sim {
    pub(super) fn lease_start(&mut self) {
        for l in 0..self.cfg.lease_clients {
            self.lease_clients.push(LeaseClient::default());
            let d = self.rng.random_range(0..2_000);
            self.at(d, Event::LeaseNext(l));
        }
    }

    /// The lessor of member `id` follows its leadership (before every answer and tick).
    fn lessor_follow(&mut self, id: u64) {
        let now = self.now;
        let m = self.members.get_mut(&id).expect("member");
        let Some(core) = m.core.as_ref() else { return };
        let (term, leader, _, _) = core.raft().status();
        if let Some(lessor) = m.lessor.as_mut()
            && lessor.follow(leader == id, term, now)
        {
            self.trace
                .push(format!("{:>7}ms m{id} lessor promoted in term {term}", now));
        }
    }

    /// A fresh lessor for a (re)started member, from its store's leases.
    pub(super) fn lessor_for(store: &etch_storage::mvcc::MvccStore) -> Lessor {
        Lessor::new(&store.leases().expect("leases"))
    }

    /// What apply tells the lessor of member `id`; a grant on the primary is a refresh.
    pub(super) fn lease_applied(&mut self, id: u64, change: LeaseChange, request_id: u64) {
        let now = self.now;
        let m = self.members.get_mut(&id).expect("member");
        let Some(lessor) = m.lessor.as_mut() else {
            return;
        };
        match change {
            LeaseChange::Granted(lease, ttl) => {
                lessor.granted(lease, ttl, 0, now);
                if lessor.is_primary() {
                    self.lease_refreshed.insert(lease, (now, ttl));
                }
            }
            LeaseChange::Revoked(lease) => {
                lessor.revoked(lease);
                if let Some((by, decided, refreshed)) = self.revoke_decisions.remove(&request_id)
                    && let Some((at, ttl)) = refreshed
                    && decided < at + ttl as u64 * 1000
                {
                    self.lease_violation.get_or_insert(format!(
                        "lease {lease} revoked: m{by} decided at {decided} ms, {} ms before its {ttl} s TTL since the refresh at {at} ms",
                        at + ttl as u64 * 1000 - decided
                    ));
                }
            }
            LeaseChange::Checkpointed(cps) => {
                for (lease, remaining) in cps {
                    lessor.checkpointed(lease, remaining);
                }
            }
            LeaseChange::Replaced(records) => lessor.replace(&records, now),
        }
        // A grant answered to a lease client waiting for it.
        let waiting = self
            .lease_clients
            .iter()
            .position(|c| c.granting.is_some_and(|(req, _, _, _)| req == request_id));
        if let Some(l) = waiting
            && let Some((_, lease, ttl, _)) = self.lease_clients[l].granting.take()
        {
            self.lease_clients[l].lease = Some((lease, ttl));
            self.trace.push(format!(
                "{:>7}ms lease client {l} granted lease {lease} ({ttl} s)",
                now
            ));
            let d = (ttl as u64 * 1000) / 3;
            self.at(d, Event::LeaseNext(l));
        }
    }

    /// Every lease tick of member `id`: expired leases become revoke proposals.
    pub(super) fn lease_tick(&mut self, id: u64, inc: u64) -> Result<(), String> {
        let m = &self.members[&id];
        if !m.up || m.incarnation != inc {
            return Ok(());
        }
        self.lessor_follow(id);
        let now = self.now;
        let per_tick = (MAX_REVOKES_PER_SECOND as u128 * LEASE_TICK.as_millis() / 1000) as usize;
        let m = self.members.get_mut(&id).expect("member");
        let expired = m
            .lessor
            .as_mut()
            .map(|l| l.expired(now + self.cfg.bugs.lessor_clock_ahead_ms, per_tick))
            .unwrap_or_default();
        for lease in expired {
            self.trace
                .push(format!("{:>7}ms m{id} revokes expired lease {lease}", now));
            self.stats.lease_revokes += 1;
            let req = self.next_request;
            self.next_request += 1;
            // Checked when (if) it is applied: a deposed leader that still believes it leads
            // may decide a revoke too early, but its proposal never commits.
            let refreshed = self.lease_refreshed.get(&lease).copied();
            self.revoke_decisions.insert(req, (id, now, refreshed));
            let data = InternalRequest {
                id: req,
                request: Some(Request::LeaseRevoke(LeaseRevokeRequest { id: lease })),
                auth: None,
            }
            .encode_to_vec();
            let m = self.members.get_mut(&id).expect("member");
            let term = m.lessor.as_ref().map(Lessor::term).unwrap_or(0);
            if m.core
                .as_mut()
                .expect("core")
                .propose_as_leader(data, term)
                .is_err()
                && let Some(l) = m.lessor.as_mut()
            {
                l.revoke_failed(lease);
            }
        }
        let t = LEASE_TICK.as_millis() as u64;
        self.at(t, Event::LeaseTick(id, inc));
        self.drive(id)
    }

    /// Lease client `l`'s next step: grant a lease, or keep its lease alive at the leader.
    pub(super) fn lease_next(&mut self, l: usize) -> Result<(), String> {
        if !self.faults_on && self.now > self.cfg.duration_ms + 6_000 {
            return Ok(());
        }
        let now = self.now;
        match (self.lease_clients[l].lease, self.lease_clients[l].granting) {
            (None, Some((_, _, _, sent))) if now < sent + 3_000 => Ok(()),
            (None, _) => {
                // Grant through any running member.
                let up = self.up_members();
                if up.is_empty() {
                    self.at(100, Event::LeaseNext(l));
                    return Ok(());
                }
                let member = up[self.rng.random_range(0..up.len())];
                let lease = 10_000 + self.next_request as i64;
                let ttl = self.rng.random_range(1..=3);
                let req = self.next_request;
                self.next_request += 1;
                let data = InternalRequest {
                    id: req,
                    request: Some(Request::LeaseGrant(LeaseGrantRequest { ttl, id: lease })),
                    auth: None,
                }
                .encode_to_vec();
                let m = self.members.get_mut(&member).expect("member");
                let ok = m.core.as_mut().expect("core").propose(data).is_ok();
                if ok {
                    self.lease_clients[l].granting = Some((req, lease, ttl, now));
                }
                // Retry after a while whether or not the grant went through.
                self.at(3_100, Event::LeaseNext(l));
                self.drive(member)
            }
            (Some((lease, ttl)), _) => {
                // Keep-alives are served by the leader's lessor once it applied what is
                // committed (etcd `waitAppliedIndex`); anything else: try again shortly.
                let Some(leader) = self.current_leader() else {
                    self.at(100, Event::LeaseNext(l));
                    return Ok(());
                };
                let ready = self.members.get(&leader).is_some_and(|m| {
                    m.up && m.core.as_ref().is_some_and(|c| {
                        let (_, led, commit, _) = c.raft().status();
                        led == leader
                            && m.apply
                                .as_ref()
                                .is_some_and(|a| a.store().applied_index().index >= commit)
                    })
                });
                if !ready {
                    self.at(20, Event::LeaseNext(l));
                    return Ok(());
                }
                self.lessor_follow(leader);
                let m = self.members.get_mut(&leader).expect("member");
                let Some(lessor) = m.lessor.as_mut().filter(|l| l.is_primary()) else {
                    self.at(20, Event::LeaseNext(l));
                    return Ok(());
                };
                match lessor.keep_alive(lease, now) {
                    Some(t) if t > 0 => {
                        self.lease_refreshed.insert(lease, (now, ttl));
                        self.stats.lease_keepalives += 1;
                        let d = (ttl as u64 * 1000) / 3;
                        self.at(d, Event::LeaseNext(l));
                    }
                    _ => {
                        self.trace.push(format!(
                            "{:>7}ms lease client {l}: lease {lease} is gone",
                            now
                        ));
                        self.lease_clients[l].lease = None;
                        self.at(1, Event::LeaseNext(l));
                    }
                }
                Ok(())
            }
        }
    }
}
