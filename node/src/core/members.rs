//! The leader's checks before it proposes a membership change, with no IO: etcd v3.5's
//! `mayAddMember`, `mayRemoveMember` and `mayPromoteMember` (`server/etcdserver/server.go`)
//! and `RaftCluster.IsReadyTo*` (`membership/cluster.go`). The rules that every member checks
//! again at apply (IDs, URLs) are in `etch_storage::members`.
//!
//! A member is *started* once it has a name: the initial members have theirs from
//! `--initial-cluster`, an added member once it has published its own (etcd `IsStarted`).
//! *Active* voters are those the leader heard from within the last election timeout (a
//! window over raft ticks, `RaftCore::active_voters`; etcd asks its transport for peers active
//! for 5 s).

use etch_protocol::etcdserverpb::Member;
use etch_storage::members::Membership;

use crate::error::ApiError;

/// A membership change the leader is asked to make.
#[derive(Debug, Clone, PartialEq)]
pub enum Proposed {
    /// Add this member (voter or learner).
    Add(Member),
    /// Remove member `id`.
    Remove(u64),
    /// Promote learner `id`.
    Promote(u64),
}

/// What the leader knows when it checks a change.
#[derive(Debug, Clone)]
pub struct LeaderView<'a> {
    /// The applied membership.
    pub membership: &'a Membership,
    /// This member (the leader).
    pub me: u64,
    /// Voters heard from recently, the leader included.
    pub active_voters: &'a [u64],
    /// `--strict-reconfig-check`.
    pub strict: bool,
    /// `--experimental-max-learners`.
    pub max_learners: usize,
}

/// Majority of `n` voters.
fn quorum(n: usize) -> usize {
    n / 2 + 1
}

fn voters(m: &Membership) -> impl Iterator<Item = &Member> {
    m.members.iter().filter(|x| !x.is_learner)
}

/// Checks `p` as etcd's leader would before proposing it; `learner_ready` says whether a
/// learner's log is within 90% of the leader's (asked only for a promotion).
///
/// # Errors
/// [`ApiError::TooManyLearners`], [`ApiError::NotEnoughStartedMembers`],
/// [`ApiError::Unhealthy`], [`ApiError::LearnerNotReady`], and the membership rules of
/// `etch_storage::members` checked early (not found, not a learner, exists).
pub fn check(
    p: &Proposed,
    v: &LeaderView<'_>,
    learner_ready: impl Fn(u64) -> bool,
) -> Result<(), ApiError> {
    use etch_storage::mvcc::RequestError as R;
    let m = v.membership;
    let all_voters_active = || voters(m).all(|x| v.active_voters.contains(&x.id));
    match p {
        Proposed::Add(new) => {
            if etch_storage::members::get(m, new.id).is_some() {
                return Err(R::MemberExists.into());
            }
            if new.is_learner
                && m.members.iter().filter(|x| x.is_learner).count() + 1 > v.max_learners
            {
                return Err(ApiError::TooManyLearners);
            }
            if !v.strict {
                return Ok(());
            }
            if !new.is_learner {
                // IsReadyToAddVotingMember: the new voter counts, unstarted.
                let n = voters(m).count() + 1;
                let started = voters(m).filter(|x| !x.name.is_empty()).count();
                let one_to_two = started == 1 && n == 2;
                if !one_to_two && started < quorum(n) {
                    return Err(ApiError::NotEnoughStartedMembers);
                }
            }
            if !all_voters_active() {
                return Err(ApiError::Unhealthy);
            }
            Ok(())
        }
        Proposed::Remove(id) => {
            let Some(gone) = etch_storage::members::get(m, *id) else {
                return Err(R::MemberNotFound.into());
            };
            if !v.strict || gone.is_learner {
                return Ok(());
            }
            // IsReadyToRemoveVotingMember: the voters left must have a started quorum.
            let n = voters(m).count() - 1;
            let started = voters(m)
                .filter(|x| x.id != *id && !x.name.is_empty())
                .count();
            if started < quorum(n) {
                return Err(ApiError::NotEnoughStartedMembers);
            }
            // A member that is down is safe to remove: it is not part of the active quorum.
            if *id != v.me && !v.active_voters.contains(id) {
                return Ok(());
            }
            let active = voters(m)
                .filter(|x| v.active_voters.contains(&x.id))
                .count();
            if active - 1 < quorum(voters(m).count() - 1) {
                return Err(ApiError::Unhealthy);
            }
            Ok(())
        }
        Proposed::Promote(id) => {
            let Some(x) = etch_storage::members::get(m, *id) else {
                return Err(R::MemberNotFound.into());
            };
            if !x.is_learner {
                return Err(R::MemberNotLearner.into());
            }
            if !learner_ready(*id) {
                return Err(ApiError::LearnerNotReady);
            }
            if !v.strict {
                return Ok(());
            }
            // IsReadyToPromoteMember: the promoted learner counts as a started voter.
            let n = voters(m).count() + 1;
            let started = voters(m).filter(|x| !x.name.is_empty()).count() + 1;
            if started < quorum(n) {
                return Err(ApiError::NotEnoughStartedMembers);
            }
            // No health check: etcd 3.5 promotes with a voter down, which is how a failed
            // member is replaced.
            Ok(())
        }
    }
}

/// An added member's ID, as etcd's MemberAdd (`NewMember` with no cluster name and the
/// time): the first 8 bytes (big-endian) of the SHA-1 of its sorted peer URLs and the time in
/// seconds, so that a member re-added at the same address gets a new ID (a removed ID can never
/// rejoin).
pub fn new_member_id(peer_urls: &[String], unix_seconds: u64) -> u64 {
    crate::config::member_id(peer_urls, &unix_seconds.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, learner: bool) -> Member {
        Member {
            id,
            name: name.into(),
            peer_ur_ls: vec![format!("http://m{id}")],
            client_ur_ls: Vec::new(),
            is_learner: learner,
        }
    }

    fn view<'a>(m: &'a Membership, active: &'a [u64]) -> LeaderView<'a> {
        LeaderView {
            membership: m,
            me: 1,
            active_voters: active,
            strict: true,
            max_learners: 1,
        }
    }

    #[test]
    fn strict_reconfig_rules() {
        let m = Membership {
            members: vec![
                member(1, "a", false),
                member(2, "b", false),
                member(3, "", false),
            ],
            removed: vec![],
        };
        // 3 voters, 2 started: a fourth voter needs 3 started.
        let add = Proposed::Add(member(4, "", false));
        assert_eq!(
            check(&add, &view(&m, &[1, 2, 3]), |_| true),
            Err(ApiError::NotEnoughStartedMembers)
        );
        // Learners do not count for quorum, but only one is allowed.
        let learner = Proposed::Add(member(4, "", true));
        assert_eq!(check(&learner, &view(&m, &[1, 2, 3]), |_| true), Ok(()));
        let mut with_learner = m.clone();
        with_learner.members.push(member(5, "", true));
        assert_eq!(
            check(&learner, &view(&with_learner, &[1, 2, 3]), |_| true),
            Err(ApiError::TooManyLearners)
        );
        // A voter that is down may be removed; removing an active one must keep a quorum.
        assert_eq!(
            check(&Proposed::Remove(2), &view(&m, &[1, 2]), |_| true),
            Err(ApiError::NotEnoughStartedMembers)
        );
        let started = Membership {
            members: vec![
                member(1, "a", false),
                member(2, "b", false),
                member(3, "c", false),
            ],
            removed: vec![],
        };
        assert_eq!(
            check(&Proposed::Remove(3), &view(&started, &[1, 2]), |_| true),
            Ok(())
        );
        assert_eq!(
            check(&Proposed::Remove(2), &view(&started, &[1, 2]), |_| true),
            Err(ApiError::Unhealthy)
        );
        // Promotion needs a caught-up learner.
        assert_eq!(
            check(
                &Proposed::Promote(5),
                &view(&with_learner, &[1, 2, 3]),
                |_| false
            ),
            Err(ApiError::LearnerNotReady)
        );
        assert!(check(&Proposed::Promote(1), &view(&m, &[1, 2, 3]), |_| true).is_err());
        // As etcd 3.5, a caught-up learner is promoted with a voter down (replacing it).
        let mut started_learner = started.clone();
        started_learner.members.push(member(5, "e", true));
        assert_eq!(
            check(
                &Proposed::Promote(5),
                &view(&started_learner, &[1, 2]),
                |_| true
            ),
            Ok(())
        );
        // Without the strict check only the learner limit and readiness remain.
        let lax = LeaderView {
            strict: false,
            ..view(&m, &[1])
        };
        assert_eq!(check(&add, &lax, |_| true), Ok(()));
    }

    #[test]
    fn member_ids_differ_by_time() {
        let urls = vec!["http://127.0.0.1:2380".to_owned()];
        assert_ne!(new_member_id(&urls, 1), new_member_id(&urls, 2));
    }
}
