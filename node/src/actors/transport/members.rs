//! Which members the transport talks to: it follows the applied membership (connects to added
//! members, reconnects to moved ones, drops removed ones) and turns removed members away.

use super::*;

/// The members the accept loop admits, and the removed ones it turns away for good.
#[derive(Debug, Default)]
pub struct PeerSets {
    /// Current members' IDs (this member included).
    pub known: std::collections::HashSet<u64>,
    /// Removed members' IDs.
    pub removed: std::collections::HashSet<u64>,
}

/// The close reason a removed member's connection gets; the removed member stops on it.
pub(super) const REMOVED_REASON: &[u8] = b"removed member";

impl TransportActor {
    /// Starts talking to `p`: a queue and a sender task of its own.
    pub(super) fn add_peer(&mut self, p: Peer) {
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MESSAGES);
        self.queues.insert(p.id, tx);
        let (hello_tx, hello_rx) = watch::channel(None);
        self.hellos.insert(p.id, hello_tx);
        self.peers.insert(p.id, p.clone());
        tokio::spawn(send_loop(
            self.endpoint.clone(),
            p,
            rx,
            hello_rx,
            self.hello.clone(),
            self.consensus.clone(),
            self.state.clone(),
            self.stop.clone(),
        ));
    }

    /// Stops talking to member `id` (its sender task ends with its queue).
    fn drop_peer(&mut self, id: u64) {
        self.queues.remove(&id);
        self.hellos.remove(&id);
        self.peers.remove(&id);
    }
}

/// Sent by consensus when an applied entry changed the membership: connect to added members,
/// reconnect to moved ones, drop removed ones, and admit or refuse their streams accordingly.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetMembers(pub etch_storage::members::Membership);

impl Handler<SetMembers> for TransportActor {
    type Result = ();

    fn handle(&mut self, m: SetMembers, _: &mut Context<Self>) {
        let me = self.state.member_id.0;
        {
            let mut sets = self.members.write().unwrap_or_else(|p| p.into_inner());
            let mut known: std::collections::HashSet<u64> =
                m.0.members.iter().map(|x| x.id).chain([me]).collect();
            if !m.0.members.iter().any(|x| x.id == me) {
                // Not joined yet (replaying old history): keep admitting today's members.
                known.extend(sets.known.iter().copied());
            }
            known.retain(|id| !m.0.removed.contains(id));
            sets.known = known;
            sets.removed = m.0.removed.iter().copied().collect();
        }
        let wanted: HashMap<u64, &etch_protocol::etcdserverpb::Member> =
            m.0.members
                .iter()
                .filter(|x| x.id != me)
                .map(|x| (x.id, x))
                .collect();
        // A member still replaying the history before its own addition sees old memberships:
        // it drops only members removed for good, so it keeps hearing the current leader.
        let joined = m.0.members.iter().any(|x| x.id == me);
        let gone: Vec<u64> = self
            .peers
            .keys()
            .filter(|id| {
                if joined {
                    !wanted.contains_key(id)
                } else {
                    m.0.removed.contains(id)
                }
            })
            .copied()
            .collect();
        for id in gone {
            tracing::info!(peer = %MemberId(id), "member removed: disconnecting");
            self.drop_peer(id);
        }
        for (id, x) in wanted {
            let peer = match Peer::new(id, &x.peer_ur_ls) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(peer = %MemberId(id), error = %e, "member's peer URL unusable");
                    continue;
                }
            };
            match self.peers.get(&id) {
                Some(p) if *p == peer => {}
                Some(_) => {
                    tracing::info!(peer = %MemberId(id), addr = %peer.addr, "member's peer URLs changed: reconnecting");
                    self.drop_peer(id);
                    self.add_peer(peer);
                }
                None => {
                    tracing::info!(peer = %MemberId(id), addr = %peer.addr, "member added: connecting");
                    self.add_peer(peer);
                }
            }
        }
    }
}
