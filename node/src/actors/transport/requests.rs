//! Requests between members ([`PeerRequest`] and [`PeerAnswer`]): this member's own
//! questions (the corruption check's HashKV) and clients' requests a follower forwards to the
//! leader (lease keep-alive and time-to-live), answered by a [`PeerServer`].

use super::*;

/// What this member answers to its peers' requests ([`PeerRequest`]): implemented above the
/// actors (by the services), handed to the transport once they exist.
pub trait PeerServer: Send + Sync + 'static {
    /// Serves `request` from peer `from`; failures are answered as
    /// [`peer_answer::Body::Error`] with etcd's code and message.
    fn serve(
        &self,
        from: u64,
        request: peer_request::Body,
    ) -> futures::future::BoxFuture<'static, peer_answer::Body>;
}

/// Sent by `run` once the services exist: peers' requests are served by `0`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPeerServer(pub Arc<dyn PeerServer>);

impl Handler<SetPeerServer> for TransportActor {
    type Result = ();
    fn handle(&mut self, m: SetPeerServer, _: &mut Context<Self>) {
        self.server = Some(m.0);
    }
}

/// Sends peer `to` a request (this member's own question, or a client's request forwarded to
/// the leader). Replies with a receiver for the answer (dropped if it never comes; the caller
/// bounds the wait), or `None` for an unknown peer or a full queue.
#[derive(Message)]
#[rtype(result = "Option<tokio::sync::oneshot::Receiver<PeerAnswer>>")]
pub struct Ask {
    /// The peer.
    pub to: u64,
    /// The question.
    pub body: peer_request::Body,
    /// How long the asker waits for the answer; the bookkeeping is dropped a little later.
    pub timeout: Duration,
}

impl Handler<Ask> for TransportActor {
    type Result = Option<tokio::sync::oneshot::Receiver<PeerAnswer>>;
    fn handle(&mut self, m: Ask, _: &mut Context<Self>) -> Self::Result {
        let q = self.queues.get(&m.to)?;
        let id = self.asks.next_id();
        q.try_send(core::request_frame(id, m.body)).ok()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.asks.ask(std::time::Instant::now(), m.timeout, tx);
        Some(rx)
    }
}

/// A peer's question to this member.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Asked {
    pub(super) from: u64,
    pub(super) request: etch_protocol::etchpb::PeerRequest,
}

impl Handler<Asked> for TransportActor {
    type Result = ();
    /// Served on tokio's workers, not on the consensus thread this actor runs on: a request
    /// may read the store (a lease's keys, a hash) and must not hold raft's messages back.
    fn handle(&mut self, m: Asked, _: &mut Context<Self>) {
        let Some(q) = self.queues.get(&m.from).cloned() else {
            return;
        };
        let server = self.server.clone();
        let from = m.from;
        self.workers.spawn(async move {
            let body = match (m.request.body, server) {
                (Some(body), Some(server)) => server.serve(from, body).await,
                (None, _) => answer_error(&crate::error::ApiError::Unimplemented),
                (_, None) => answer_error(&crate::error::ApiError::Stopped),
            };
            let _ = q.send(core::answer_frame(m.request.id, body)).await;
        });
    }
}

/// An error as a peer answer: etcd's code and message.
pub fn answer_error(e: &crate::error::ApiError) -> peer_answer::Body {
    let (code, message) = crate::error::status_of(e);
    peer_answer::Body::Error(etch_protocol::etchpb::Error {
        code: code as u32,
        message: message.to_owned(),
    })
}

/// A peer's answer to this member's question.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Answered(pub(super) PeerAnswer);

impl Handler<Answered> for TransportActor {
    type Result = ();
    fn handle(&mut self, m: Answered, _: &mut Context<Self>) {
        if let Some(tx) = self.asks.answered(m.0.id) {
            let _ = tx.send(m.0);
        }
    }
}
