//! The node's errors: fatal failures ([`Error`]) and the request failures a client sees
//! ([`ApiError`], mapped to etcd's codes and messages in [`crate::api::errors`]).

use etch_storage::mvcc::RequestError;

/// A failure that stops the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Storage (WAL or MVCC store) failed or is corrupt.
    #[error(transparent)]
    Storage(#[from] etch_storage::Error),
    /// raft-rs refused to start (inconsistent log state).
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A socket or file operation outside storage failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// An actor hit a fatal error while the node was running (WAL or store failure).
    #[error("fatal: {0}")]
    Fatal(String),
}

/// Result with the node [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Why a client request failed: etcd's rules, or the cluster's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request broke one of etcd's rules (see [`RequestError`]).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The cluster has no leader now (election in progress or no quorum).
    #[error("no leader")]
    NoLeader,
    /// The request did not finish within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// Apply is too far behind commit to take more proposals (etcd: 5000 entries).
    #[error("too many requests")]
    TooManyRequests,
    /// The request is larger than `--max-request-bytes`.
    #[error("request is too large")]
    TooLarge,
    /// The node is shutting down.
    #[error("server stopped")]
    Stopped,
    /// The request needs the leader and this member is not it (etcd `ErrGRPCNotLeader`).
    #[error("not leader")]
    NotLeader,
    /// MoveLeader to a member that is not another voter (etcd `ErrBadLeaderTransferee`).
    #[error("bad leader transferee")]
    BadLeaderTransferee,
    /// MoveLeader did not finish within the request timeout (etcd `ErrTimeoutLeaderTransfer`).
    #[error("leader transfer took too long")]
    LeaderTransferTimeout,
    /// The request has no body this node understands.
    #[error("unknown request")]
    Unimplemented,
    /// A second Hello on a native connection.
    #[error("hello repeated")]
    HelloRepeated,
    /// The auth token is unknown or expired (etcd `ErrInvalidAuthToken`): the client
    /// authenticates again.
    #[error("invalid auth token")]
    InvalidAuthToken,
    /// A membership change while another is pending, or one that would leave the cluster
    /// without a quorum of active members (etcd `ErrUnhealthy`).
    #[error("unhealthy cluster")]
    Unhealthy,
    /// `--strict-reconfig-check`: the change would leave fewer started voters than a quorum
    /// (etcd `ErrNotEnoughStartedMembers`).
    #[error("re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    /// MemberPromote of a learner that is behind the leader (etcd `ErrLearnerNotReady`).
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// MemberAdd of a learner past `--experimental-max-learners` (etcd `ErrTooManyLearners`).
    #[error("too many learner members in cluster")]
    TooManyLearners,
    /// A request a learner does not serve (etcd `ErrGRPCNotSupportedForLearner`).
    #[error("rpc not supported for learner")]
    NotSupportedForLearner,
    /// MemberAdd or MemberUpdate with peer URLs that do not parse (etcd
    /// `ErrGRPCMemberBadURLs`).
    #[error("given member URLs are invalid")]
    MemberBadUrls,
    /// An error etcd returns outside its error table, with gRPC code `Unknown` and this
    /// message (the lock and election recipes' `election: not leader`, ...).
    #[error("{0}")]
    Unknown(&'static str),
    /// A snapshot could not be written or read back (the member's log says why).
    #[error("snapshot failed")]
    SnapshotFailed,
}

mod table;
pub use table::{from_status, status_of};
