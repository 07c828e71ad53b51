//! Which members the transport talks to: it follows the applied membership (connects to added
//! members, reconnects to moved ones, drops removed ones) and turns removed members away.

use super::*;

impl TransportActor {
    /// Starts talking to `p`: a queue and a sender task of its own.
    pub(super) fn add_peer(&mut self, p: Peer) {
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MESSAGES);
        self.queues.insert(p.id, tx);
        let (hello_tx, hello_rx) = watch::channel(None);
        self.hellos.insert(p.id, hello_tx);
        self.peers.insert(p.id, p.clone());
        let state = self.state.clone();
        state.spawn_essential(
            "a peer sender",
            send_loop(
                self.endpoint.clone(),
                p,
                rx,
                hello_rx,
                self.hello.clone(),
                self.consensus.clone(),
                self.state.clone(),
                self.stop.clone(),
            ),
        );
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
        let current: Vec<u64> = self.peers.keys().copied().collect();
        let plan = self
            .members
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .follow(&m.0, me, &current);
        let (gone, wanted) = (plan.gone, plan.wanted);
        for id in gone {
            tracing::info!(peer = %MemberId(id), "member removed: disconnecting");
            self.drop_peer(id);
        }
        for (id, urls) in wanted {
            let peer = match Peer::new(id, &urls) {
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
