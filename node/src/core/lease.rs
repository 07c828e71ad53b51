//! The lessor core (etcd's lessor): deadlines for every lease, kept only while this
//! member is the leader, and turned into `LeaseRevoke` proposals through consensus when they
//! pass. Followers never delete on their own.
//!
//! - Promotion (this member becomes leader): every deadline is set to a full TTL from now, or
//!   to the remaining TTL last checkpointed when there is one (etcd `Promote`), so a leader
//!   change never revokes a live lease.
//! - Demotion: deadlines are dropped. The shell proposes revokes only while this member leads
//!   in the lessor's [`Lessor::term`], never forwarded to a newer leader (etcd #15247).
//! - A revoke whose proposal timed out stays in flight (it is in the leader's log): the lease
//!   is not renewed meanwhile, since the revoke may still commit.
//! - Revokes are rate-limited ([`MAX_REVOKES_PER_SECOND`], etcd's 1000/s) so a mass expiry
//!   cannot starve client writes.
//! - Remaining TTLs of long leases are checkpointed through consensus every
//!   [`CHECKPOINT_INTERVAL`] (etcd's lease checkpoint), so they survive leader changes.
//!
//! [`Lessor`] takes time as milliseconds; `crate::actors::lease::LeaseActor` is its shell.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etch_storage::mvcc::LeaseRecord;

/// Revoke proposals per second at most (etcd `leaseRevokeRate`).
pub const MAX_REVOKES_PER_SECOND: usize = 1000;

/// How often the lessor checks deadlines.
pub const LEASE_TICK: Duration = Duration::from_millis(100);

/// How often remaining TTLs are checkpointed (etcd: 5 min).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Lease {
    ttl_ms: u64,
    /// Remaining TTL at the last checkpoint (0 = none), ms.
    checkpoint_ms: u64,
    /// Deadline, ms on the lessor's clock; only while primary.
    deadline: Option<u64>,
}

/// The lessor core.
#[derive(Debug, Default)]
pub struct Lessor {
    leases: BTreeMap<i64, Lease>,
    deadlines: BTreeSet<(u64, i64)>,
    primary: bool,
    /// Revokes proposed and not yet applied.
    revoking: BTreeSet<i64>,
    /// The raft term of the last [`Lessor::follow`].
    term: u64,
    /// Leases whose checkpointed remaining TTL a renewal made stale, to be cleared through
    /// consensus on every member ([`Lessor::take_stale_checkpoints`]).
    stale_checkpoints: BTreeSet<i64>,
}

impl Lessor {
    /// A lessor knowing `records` (from the store).
    pub fn new(records: &[LeaseRecord]) -> Lessor {
        let mut l = Lessor::default();
        for r in records {
            l.granted(r.id, r.ttl, r.remaining, 0);
        }
        l
    }

    /// Whether this member tracks deadlines (is the leader).
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// The raft term this lessor last followed (the term it leads in while primary).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Follows the member's leadership: promotes on becoming leader, or on a new term as
    /// leader (etcd refreshes deadlines at every promotion); demotes on losing it. Call before
    /// every answer and tick, so a new leader never answers from a lessor not yet promoted.
    /// Returns whether it promoted.
    pub fn follow(&mut self, is_leader: bool, term: u64, now: u64) -> bool {
        let promote = is_leader && (!self.primary || term != self.term);
        if promote {
            self.promote(now);
        } else if !is_leader && self.primary {
            self.demote();
        }
        self.term = term;
        promote
    }

    fn set_deadline(&mut self, id: i64, deadline: Option<u64>) {
        if let Some(l) = self.leases.get_mut(&id) {
            if let Some(d) = l.deadline.take() {
                self.deadlines.remove(&(d, id));
            }
            l.deadline = deadline;
            if let Some(d) = deadline {
                self.deadlines.insert((d, id));
            }
        }
    }

    /// A grant was applied (every member).
    pub fn granted(&mut self, id: i64, ttl_s: i64, remaining_s: i64, now: u64) {
        let ttl_ms = (ttl_s.max(0) as u64) * 1000;
        self.leases.insert(
            id,
            Lease {
                ttl_ms,
                checkpoint_ms: (remaining_s.max(0) as u64) * 1000,
                deadline: None,
            },
        );
        if self.primary {
            self.set_deadline(id, Some(now + ttl_ms));
        }
    }

    /// A revoke was applied (every member).
    pub fn revoked(&mut self, id: i64) {
        self.set_deadline(id, None);
        self.leases.remove(&id);
        self.revoking.remove(&id);
    }

    /// The store was replaced by a snapshot from the leader: the lease table becomes
    /// `records`. A primary (a leader cannot receive a snapshot, but a deposed one may still
    /// believe it leads) gives every lease a full TTL from `now`, as at a promotion.
    pub fn replace(&mut self, records: &[LeaseRecord], now: u64) {
        let primary = self.primary;
        let term = self.term;
        *self = Lessor::new(records);
        self.term = term;
        if primary {
            self.promote(now);
        }
    }

    /// A checkpoint was applied.
    pub fn checkpointed(&mut self, id: i64, remaining_s: i64) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.checkpoint_ms = (remaining_s.max(0) as u64) * 1000;
        }
    }

    /// This member became leader at `now`: every lease gets its full TTL (or its checkpointed
    /// remaining TTL) from now.
    pub fn promote(&mut self, now: u64) {
        self.primary = true;
        self.revoking.clear();
        let ids: Vec<(i64, u64)> = self
            .leases
            .iter()
            .map(|(id, l)| {
                (
                    *id,
                    if l.checkpoint_ms > 0 {
                        l.checkpoint_ms.min(l.ttl_ms)
                    } else {
                        l.ttl_ms
                    },
                )
            })
            .collect();
        for (id, ttl) in ids {
            self.set_deadline(id, Some(now + ttl));
        }
    }

    /// This member is no longer leader: no deadlines.
    pub fn demote(&mut self) {
        self.primary = false;
        let ids: Vec<i64> = self.leases.keys().copied().collect();
        for id in ids {
            self.set_deadline(id, None);
        }
        self.revoking.clear();
    }

    /// Renews lease `id` (leader only): returns its TTL in seconds, or `None` if it is unknown
    /// or being revoked. A remaining TTL checkpointed before is stale from now on (a promotion
    /// would cut the renewed lease short): it is dropped here and queued for
    /// [`Lessor::take_stale_checkpoints`] (etcd `Renew` proposes a checkpoint of 0).
    pub fn keep_alive(&mut self, id: i64, now: u64) -> Option<i64> {
        if self.revoking.contains(&id) {
            return None;
        }
        let l = self.leases.get_mut(&id)?;
        let ttl = l.ttl_ms;
        if std::mem::take(&mut l.checkpoint_ms) > 0 {
            self.stale_checkpoints.insert(id);
        }
        self.set_deadline(id, Some(now + ttl));
        Some((ttl / 1000) as i64)
    }

    /// Leases whose checkpoint a renewal made stale since the last call: the shell proposes
    /// a checkpoint of 0 (none) for each, so no member's promotion uses the stale one.
    pub fn take_stale_checkpoints(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.stale_checkpoints)
            .into_iter()
            .collect()
    }

    /// (remaining TTL, granted TTL) in seconds; remaining is -1 once expired. `None` when the
    /// lease is unknown.
    pub fn time_to_live(&self, id: i64, now: u64) -> Option<(i64, i64)> {
        let l = self.leases.get(&id)?;
        let granted = (l.ttl_ms / 1000) as i64;
        let remaining = match l.deadline {
            Some(d) if d > now => (d - now).div_ceil(1000) as i64,
            Some(_) => -1,
            None => granted,
        };
        Some((remaining, granted))
    }

    /// Up to `limit` leases whose deadline passed, marked as being revoked.
    pub fn expired(&mut self, now: u64, limit: usize) -> Vec<i64> {
        if !self.primary {
            return Vec::new();
        }
        let due: Vec<i64> = self
            .deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, id)| *id)
            .filter(|id| !self.revoking.contains(id))
            .take(limit)
            .collect();
        self.revoking.extend(due.iter().copied());
        due
    }

    /// A revoke proposal was refused (nothing entered the log): try again at the next tick.
    /// A proposal that timed out is not a failure: it is in the leader's log and commits
    /// unless leadership moves (which demotes, clearing it), so the lease stays revoking and
    /// keep-alives keep answering that it expired; renewing it meanwhile would promise a TTL
    /// that the revoke, once committed, breaks.
    pub fn revoke_failed(&mut self, id: i64) {
        self.revoking.remove(&id);
    }

    /// Remaining TTLs worth checkpointing (leases with more than `interval` left).
    pub fn checkpoints(&self, now: u64, interval: Duration) -> Vec<(i64, i64)> {
        let interval = interval.as_millis() as u64;
        self.leases
            .iter()
            .filter_map(|(id, l)| {
                let d = l.deadline?;
                let left = d.saturating_sub(now);
                (left > interval).then_some((*id, left.div_ceil(1000) as i64))
            })
            .collect()
    }

    /// Every lease ID.
    pub fn ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_primary_expires_and_promotion_refreshes() {
        let mut l = Lessor::new(&[LeaseRecord {
            id: 1,
            ttl: 2,
            remaining: 0,
        }]);
        assert!(l.expired(10_000, 10).is_empty(), "followers never expire");
        l.promote(10_000);
        assert!(l.expired(11_999, 10).is_empty());
        assert_eq!(l.expired(12_000, 10), vec![1]);
        assert!(
            l.expired(13_000, 10).is_empty(),
            "one revoke in flight per lease"
        );
        // Leadership moves away and back: a full TTL from the new promotion.
        l.demote();
        l.promote(20_000);
        assert!(l.expired(21_000, 10).is_empty());
        assert_eq!(l.keep_alive(1, 21_500), Some(2));
        assert!(l.expired(23_000, 10).is_empty());
        assert_eq!(l.expired(23_500, 10), vec![1]);
    }

    #[test]
    fn revokes_are_rate_limited_and_checkpoints_shorten_promotion() {
        let records: Vec<LeaseRecord> = (0..50)
            .map(|id| LeaseRecord {
                id,
                ttl: 1,
                remaining: 0,
            })
            .collect();
        let mut l = Lessor::new(&records);
        l.promote(0);
        assert_eq!(l.expired(5_000, 20).len(), 20);
        assert_eq!(l.expired(5_000, 100).len(), 30);
        let mut l = Lessor::new(&[LeaseRecord {
            id: 7,
            ttl: 3600,
            remaining: 10,
        }]);
        l.promote(0);
        assert_eq!(l.time_to_live(7, 0), Some((10, 3600)));
        // A renewal makes the checkpoint stale: it is dropped (and queued for clearing on
        // every member), so a later promotion gives the full TTL.
        assert!(l.take_stale_checkpoints().is_empty());
        assert_eq!(l.keep_alive(7, 5_000), Some(3600));
        assert_eq!(l.take_stale_checkpoints(), vec![7]);
        l.demote();
        l.promote(6_000);
        assert_eq!(l.time_to_live(7, 6_000), Some((3600, 3600)));
    }
}
