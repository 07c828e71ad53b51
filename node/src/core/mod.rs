//! Pure cores: the decisions of a member with no actix, tokio, sockets or clocks (time is
//! passed in), so unit tests and the cluster simulator drive exactly the code a node runs.
//! The actors are shells that carry out what a core returns.

pub mod apply;
pub mod consensus;
pub mod lease;
pub mod members;
pub mod peer;
pub mod raft;
pub mod watch;
