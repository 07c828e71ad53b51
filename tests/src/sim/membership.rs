//! Membership changes in the simulation, made as an operator makes them and carried out as the
//! node does: a new member is added as a learner and started with an empty log (it learns the
//! whole membership history by replaying the log from the bootstrap entries), promoted once the
//! leader finds it caught up, and a voter (the leader too) is removed when there are more than
//! the configured number; a member that learns of its own removal stops for good, as does one
//! its peers know removed. Every member re-derives raft's configuration from the applied
//! membership (`RaftCore::set_conf`), as the consensus actor does.

use etch_node::core::members::Proposed;
use etch_protocol::etcdserverpb::Member;
use etch_storage::members::{self, Membership};
use rand::Rng;

use super::{Event, Sim};

impl Sim {
    /// The bootstrap member record of initial member `id` (the same on every member).
    pub(super) fn initial_member(id: u64) -> Member {
        Member {
            id,
            name: format!("m{id}"),
            peer_ur_ls: vec![format!("sim://m{id}")],
            client_ur_ls: Vec::new(),
            is_learner: false,
        }
    }

    /// One membership step, through the current leader.
    pub(super) fn reconfigure(&mut self) -> Result<(), String> {
        if !self.faults_on {
            return Ok(());
        }
        let every = self.cfg.membership_every_ms;
        let d = self.rng.random_range(every / 2..every * 3 / 2);
        self.at(d, Event::Reconfigure);
        let Some(leader) = self.current_leader() else {
            return Ok(());
        };
        let Some(lm) = self.members.get(&leader).filter(|m| m.up) else {
            return Ok(());
        };
        let current = lm
            .apply
            .as_ref()
            .expect("apply")
            .store()
            .membership()
            .map_err(|e| format!("m{leader} membership: {e}"))?;
        let learner = current.members.iter().find(|m| m.is_learner).map(|m| m.id);
        let voters: Vec<u64> = current
            .members
            .iter()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect();
        let (change, what, id) = if let Some(l) = learner {
            let ready = lm.core.as_ref().expect("core").raft().learner_ready(l);
            if !ready {
                self.log(format!("learner m{l} not caught up yet"));
                return Ok(());
            }
            (Proposed::Promote(l), "promote", l)
        } else if voters.len() as u64 > self.cfg.members {
            let gone = if self.rng.random_bool(0.3) {
                leader
            } else {
                voters[self.rng.random_range(0..voters.len())]
            };
            (Proposed::Remove(gone), "remove", gone)
        } else {
            let id = self.members.keys().next_back().copied().unwrap_or(0) + 1;
            let mut m = Sim::initial_member(id);
            m.is_learner = true;
            (Proposed::Add(m), "add learner", id)
        };
        let adding = matches!(change, Proposed::Add(_));
        // The leader's checks as a node's leader makes them (strict reconfiguration: a voter
        // counts as active when it is running and not cut off from the leader).
        let up: Vec<u64> = self
            .members
            .values()
            .filter(|m| m.up && !self.cut(leader, m.id))
            .map(|m| m.id)
            .collect();
        let core = self
            .members
            .get_mut(&leader)
            .and_then(|m| m.core.as_mut())
            .expect("core");
        match core.propose_member_change(change, 0, &current, true, 1, |x| up.contains(&x)) {
            Ok(true) => {
                self.stats.member_changes += 1;
                self.log(format!("m{leader} proposes: {what} m{id}"));
            }
            Ok(false) => {
                self.log(format!("m{leader}: a configuration change is pending"));
                return Ok(());
            }
            Err(e) => {
                self.log(format!("m{leader} cannot {what} m{id}: {e}"));
                return Ok(());
            }
        }
        if adding {
            // The operator starts the new member right after `member add`.
            let dir = self.dir.join(format!("m{id}"));
            self.members.insert(id, super::Member::new(id, dir, 100));
            self.start(id);
        }
        self.drive(leader)
    }

    /// Member `id` applied an entry that changed (or replayed) the membership `m`: its core
    /// already moved raft's configuration; members it finds removed stop for good.
    pub(super) fn on_membership(&mut self, id: u64, m: &Membership) {
        let cs = members::conf_state(m);
        self.log(format!(
            "m{id} membership: voters {:?} learners {:?}",
            cs.voters, cs.learners
        ));
        for r in &m.removed {
            let Some(x) = self.members.get_mut(r) else {
                continue;
            };
            if x.removed {
                continue;
            }
            x.removed = true;
            let up = x.up;
            self.stats.members_removed += 1;
            self.log(format!(
                "m{r} is removed from the cluster: it stops for good"
            ));
            if up {
                self.crash(*r);
            }
        }
    }

    /// Every running member holds the same membership once the cluster is quiet.
    pub(super) fn check_memberships(&self) -> Result<(), String> {
        let mut seen: Option<(u64, u64, Membership)> = None;
        for m in self.members.values().filter(|m| m.up) {
            let store = m.apply.as_ref().expect("apply").store();
            let index = store.applied_index().index;
            let ms = store.membership().map_err(|e| e.to_string())?;
            match &seen {
                Some((other, at, theirs)) if *at == index && *theirs != ms => {
                    return Err(format!(
                        "member lists differ at applied index {index}: m{other} {theirs:?}, m{} {ms:?}",
                        m.id
                    ));
                }
                Some(_) => {}
                None => seen = Some((m.id, index, ms)),
            }
        }
        Ok(())
    }
}
