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
