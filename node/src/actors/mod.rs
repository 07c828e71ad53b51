//! The actors of a member, each a shell around its state on an actix arbiter: consensus
//! (raft, over [`crate::core::raft`]), the WAL, apply (over [`crate::core::apply`]), watch
//! fanout, lease expiry, and the peer transport (QUIC). The [`proposer::Proposer`] handle is
//! how the services and the lessor propose. Actors use `core`, `state`, `tls`, `config`;
//! nothing here imports the services or the front ends.

pub mod apply;
pub mod consensus;
pub mod lease;
pub mod proposer;
pub mod transport;
pub mod wal;
pub mod watch;

/// Queues `m` in `addr`'s mailbox without waiting for it to be handled: its answer, if any,
/// travels through a channel the message carries, so the caller's task is woken once, by that
/// answer, or never. Messages queued by one task are handled in the order queued. A full
/// mailbox is waited out (backpressure).
///
/// # Errors
/// [`ApiError::Stopped`] once the actor stopped.
pub async fn enqueue<A, M>(addr: &actix::Addr<A>, m: M) -> Result<(), crate::error::ApiError>
where
    A: actix::Actor + actix::Handler<M>,
    A::Context: actix::dev::ToEnvelope<A, M>,
    M: actix::Message<Result = ()> + Send + 'static,
{
    match addr.try_send(m) {
        Ok(()) => Ok(()),
        Err(actix::dev::SendError::Full(m)) => addr
            .send(m)
            .await
            .map_err(|_| crate::error::ApiError::Stopped),
        Err(actix::dev::SendError::Closed(_)) => Err(crate::error::ApiError::Stopped),
    }
}
