//! The cluster's membership as a state machine: the members (ID, name, peer and client URLs,
//! learner flag) and the IDs removed for good, changed only by applied raft entries and kept in
//! the store (`MvccStore::membership`), so it travels with every store snapshot.
//!
//! The rules are etcd v3.5's `membership.RaftCluster.ValidateConfigurationChange`, checked when
//! an entry is applied (every member decides the same way): an added ID must be new and never
//! removed, its peer URLs unused; a removed, promoted or updated ID must be a member; only a
//! learner can be promoted. The raft configuration follows from the membership: voters are the
//! members that are not learners (etch makes one change at a time, so there is never a joint
//! configuration to keep).

use etch_protocol::etcdserverpb::Member;
pub use etch_protocol::etchpb::Membership;
use raft::eraftpb::ConfState;

use crate::mvcc::RequestError;

/// One membership change, as applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Add `member` (a voter, or a learner when `is_learner`).
    Add(Member),
    /// Remove member `id`.
    Remove(u64),
    /// Make learner `id` a voter.
    Promote(u64),
    /// Give member `id` new peer URLs.
    Update(u64, Vec<String>),
    /// Member `.id` publishes its name and client URLs.
    Attributes(Member),
}

/// The membership change a normal entry's request makes, if it is one (MemberUpdate and a
/// member's published attributes travel as normal entries, not raft configuration changes).
pub fn change_of(r: &etch_protocol::etchpb::internal_request::Request) -> Option<Change> {
    use etch_protocol::etchpb::internal_request::Request as R;
    match r {
        R::MemberUpdate(u) => Some(Change::Update(u.id, u.peer_ur_ls.clone())),
        R::MemberAttributes(m) => Some(Change::Attributes(m.clone())),
        _ => None,
    }
}

/// The member with `id`, if any.
pub fn get(m: &Membership, id: u64) -> Option<&Member> {
    m.members.iter().find(|x| x.id == id)
}

/// Whether `id` was removed from the cluster.
pub fn is_removed(m: &Membership, id: u64) -> bool {
    m.removed.contains(&id)
}

/// Applies `c` to `m`, or says which of etcd's rules it breaks (then `m` is unchanged).
///
/// # Errors
/// [`RequestError::MemberIdRemoved`], [`RequestError::MemberExists`],
/// [`RequestError::PeerUrlExists`], [`RequestError::MemberNotFound`],
/// [`RequestError::MemberNotLearner`].
pub fn apply(m: &mut Membership, c: &Change) -> Result<(), RequestError> {
    let id = match c {
        Change::Add(x) | Change::Attributes(x) => x.id,
        Change::Remove(id) | Change::Promote(id) | Change::Update(id, _) => *id,
    };
    if is_removed(m, id) {
        return Err(RequestError::MemberIdRemoved);
    }
    let urls_taken = |m: &Membership, urls: &[String]| {
        m.members
            .iter()
            .filter(|x| x.id != id)
            .any(|x| x.peer_ur_ls.iter().any(|u| urls.contains(u)))
    };
    match c {
        Change::Add(x) => {
            if get(m, id).is_some() {
                return Err(RequestError::MemberExists);
            }
            if urls_taken(m, &x.peer_ur_ls) {
                return Err(RequestError::PeerUrlExists);
            }
            let pos = m.members.partition_point(|y| y.id < id);
            m.members.insert(pos, x.clone());
        }
        Change::Remove(_) => {
            let pos = m
                .members
                .iter()
                .position(|x| x.id == id)
                .ok_or(RequestError::MemberNotFound)?;
            m.members.remove(pos);
            m.removed.push(id);
            m.removed.sort_unstable();
        }
        Change::Promote(_) => {
            let x = m
                .members
                .iter_mut()
                .find(|x| x.id == id)
                .ok_or(RequestError::MemberNotFound)?;
            if !x.is_learner {
                return Err(RequestError::MemberNotLearner);
            }
            x.is_learner = false;
        }
        Change::Update(_, urls) => {
            if get(m, id).is_none() {
                return Err(RequestError::MemberNotFound);
            }
            if urls_taken(m, urls) {
                return Err(RequestError::PeerUrlExists);
            }
            if let Some(x) = m.members.iter_mut().find(|x| x.id == id) {
                x.peer_ur_ls = urls.clone();
            }
        }
        Change::Attributes(a) => {
            let x = m
                .members
                .iter_mut()
                .find(|x| x.id == id)
                .ok_or(RequestError::MemberNotFound)?;
            x.name = a.name.clone();
            x.client_ur_ls = a.client_ur_ls.clone();
        }
    }
    Ok(())
}

/// etcd's member ID: the first 8 bytes (big-endian) of SHA-1(sorted peer URLs joined ++
/// `salt`), the salt being the cluster token for a bootstrap member (etcd
/// `membership.NewMember`).
pub fn member_id(peer_urls: &[String], salt: &str) -> u64 {
    use sha1::{Digest, Sha1};
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    h.update(urls.join("").as_bytes());
    h.update(salt.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// etcd's cluster ID: the first 8 bytes of SHA-1 over the sorted member IDs, each 8 bytes
/// big-endian (etcd `RaftCluster.genID`).
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    use sha1::{Digest, Sha1};
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The raft configuration of `m`: voters and learners, each in ID order.
pub fn conf_state(m: &Membership) -> ConfState {
    let (learners, voters): (Vec<&Member>, Vec<&Member>) =
        m.members.iter().partition(|x| x.is_learner);
    ConfState {
        voters: voters.iter().map(|x| x.id).collect(),
        learners: learners.iter().map(|x| x.id).collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, url: &str, learner: bool) -> Member {
        Member {
            id,
            name: String::new(),
            peer_ur_ls: vec![url.to_owned()],
            client_ur_ls: Vec::new(),
            is_learner: learner,
        }
    }

    #[test]
    fn etcd_rules_for_each_change() {
        let mut m = Membership::default();
        apply(&mut m, &Change::Add(member(2, "http://b", false))).unwrap();
        apply(&mut m, &Change::Add(member(1, "http://a", false))).unwrap();
        assert_eq!(
            m.members.iter().map(|x| x.id).collect::<Vec<_>>(),
            [1, 2],
            "kept in ID order"
        );
        assert_eq!(
            apply(&mut m, &Change::Add(member(1, "http://c", false))),
            Err(RequestError::MemberExists)
        );
        assert_eq!(
            apply(&mut m, &Change::Add(member(3, "http://a", false))),
            Err(RequestError::PeerUrlExists)
        );
        apply(&mut m, &Change::Add(member(3, "http://c", true))).unwrap();
        assert_eq!(conf_state(&m).voters, [1, 2]);
        assert_eq!(conf_state(&m).learners, [3]);
        assert_eq!(
            apply(&mut m, &Change::Promote(1)),
            Err(RequestError::MemberNotLearner)
        );
        apply(&mut m, &Change::Promote(3)).unwrap();
        assert_eq!(conf_state(&m).voters, [1, 2, 3]);
        // An update may keep the member's own URL, not take another's.
        apply(&mut m, &Change::Update(3, vec!["http://c".into()])).unwrap();
        assert_eq!(
            apply(&mut m, &Change::Update(3, vec!["http://b".into()])),
            Err(RequestError::PeerUrlExists)
        );
        apply(&mut m, &Change::Remove(2)).unwrap();
        assert_eq!(
            apply(&mut m, &Change::Remove(2)),
            Err(RequestError::MemberIdRemoved)
        );
        // A removed ID never comes back, whatever its URLs.
        assert_eq!(
            apply(&mut m, &Change::Add(member(2, "http://z", false))),
            Err(RequestError::MemberIdRemoved)
        );
        assert_eq!(
            apply(&mut m, &Change::Remove(9)),
            Err(RequestError::MemberNotFound)
        );
        let before = m.clone();
        assert!(apply(&mut m, &Change::Update(9, vec![])).is_err());
        assert_eq!(m, before, "a refused change changes nothing");
    }
}
