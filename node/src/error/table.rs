//! The one table from request failures to etcd v3.5's gRPC codes and exact messages
//! (`api/v3rpc/rpctypes/error.go`). Clients match on these strings: change none of them.

use etch_protocol::Code;
use etch_storage::mvcc::RequestError;

use crate::error::ApiError;

/// The gRPC code and message etcd returns for `e`.
pub fn status_of(e: &ApiError) -> (Code, &'static str) {
    use RequestError as R;
    match e {
        ApiError::Request(r) => match r {
            R::EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
            R::KeyNotFound => (Code::InvalidArgument, "etcdserver: key not found"),
            R::ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
            R::LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
            R::LeaseNotFound => (Code::NotFound, "etcdserver: requested lease not found"),
            R::TooManyOps => (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            R::DuplicateKey => (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            R::Compacted => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            R::FutureRevision => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            R::LeaseExists => (Code::FailedPrecondition, "etcdserver: lease already exists"),
            R::LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
            // A key the store cannot index: etcd's answer to an oversized request.
            R::KeyTooLarge => (Code::InvalidArgument, "etcdserver: request is too large"),
            R::RootUserNotExist => (
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            R::RootRoleNotExist => (
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            R::UserAlreadyExist => (
                Code::FailedPrecondition,
                "etcdserver: user name already exists",
            ),
            R::UserEmpty => (Code::InvalidArgument, "etcdserver: user name is empty"),
            R::UserNotFound => (Code::FailedPrecondition, "etcdserver: user name not found"),
            R::RoleAlreadyExist => (
                Code::FailedPrecondition,
                "etcdserver: role name already exists",
            ),
            R::RoleNotFound => (Code::FailedPrecondition, "etcdserver: role name not found"),
            R::RoleEmpty => (Code::InvalidArgument, "etcdserver: role name is empty"),
            R::AuthFailed => (
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            R::PermissionNotGiven => (Code::InvalidArgument, "etcdserver: permission not given"),
            R::PermissionDenied => (Code::PermissionDenied, "etcdserver: permission denied"),
            R::RoleNotGranted => (
                Code::FailedPrecondition,
                "etcdserver: role is not granted to the user",
            ),
            R::PermissionNotGranted => (
                Code::FailedPrecondition,
                "etcdserver: permission is not granted to the role",
            ),
            R::AuthNotEnabled => (
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            R::InvalidAuthMgmt => (Code::InvalidArgument, "etcdserver: invalid auth management"),
            R::AuthOldRevision => (
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
            R::NoSpace => (
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            R::Corrupt => (Code::DataLoss, "etcdserver: corrupt cluster"),
            R::MemberExists => (
                Code::FailedPrecondition,
                "etcdserver: member ID already exist",
            ),
            R::PeerUrlExists => (
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            // etcd answers a removed ID as an unknown one (`togRPCError`).
            R::MemberNotFound | R::MemberIdRemoved => {
                (Code::NotFound, "etcdserver: member not found")
            }
            R::MemberNotLearner => (
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            _ => (Code::Unknown, "etcdserver: unknown request error"),
        },
        ApiError::NoLeader => (Code::Unavailable, "etcdserver: no leader"),
        ApiError::Timeout => (Code::Unavailable, "etcdserver: request timed out"),
        ApiError::TooManyRequests => (Code::ResourceExhausted, "etcdserver: too many requests"),
        ApiError::TooLarge => (Code::InvalidArgument, "etcdserver: request is too large"),
        ApiError::Stopped => (Code::Unavailable, "etcdserver: server stopped"),
        ApiError::NotLeader => (Code::FailedPrecondition, "etcdserver: not leader"),
        ApiError::BadLeaderTransferee => (
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee",
        ),
        ApiError::LeaderTransferTimeout => (
            Code::Unavailable,
            "etcdserver: request timed out, leader transfer took too long",
        ),
        ApiError::Unimplemented => (Code::Unimplemented, "etch: unknown request type"),
        ApiError::HelloRepeated => (Code::FailedPrecondition, "etch: Hello already received"),
        ApiError::InvalidAuthToken => (Code::Unauthenticated, "etcdserver: invalid auth token"),
        ApiError::Unhealthy => (Code::Unavailable, "etcdserver: unhealthy cluster"),
        // Unknown, not FailedPrecondition: etcd's error map sends this one to the client-side
        // error value, which gRPC reports as Unknown (etcd 3.4 and 3.5 alike).
        ApiError::NotEnoughStartedMembers => (
            Code::Unknown,
            "etcdserver: re-configuration failed due to not enough started members",
        ),
        ApiError::LearnerNotReady => (
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader",
        ),
        ApiError::TooManyLearners => (
            Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster",
        ),
        ApiError::NotSupportedForLearner => (
            Code::Unavailable,
            "etcdserver: rpc not supported for learner",
        ),
        ApiError::MemberBadUrls => (
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        ),
        ApiError::Unknown(m) => (Code::Unknown, m),
        ApiError::SnapshotFailed => (
            Code::Internal,
            "etch: snapshot failed (the member's log says why)",
        ),
    }
}

/// The error a forwarded request's answer carried, back from its code and message (the
/// inverse of [`status_of`] for the errors a leader returns to forwarded requests).
pub fn from_status(code: u32, message: &str) -> ApiError {
    use etch_storage::mvcc::RequestError as R;
    let all: [ApiError; 16] = [
        R::LeaseNotFound.into(),
        R::MemberExists.into(),
        R::PeerUrlExists.into(),
        R::MemberNotFound.into(),
        R::MemberNotLearner.into(),
        ApiError::Unhealthy,
        ApiError::NotEnoughStartedMembers,
        ApiError::LearnerNotReady,
        ApiError::TooManyLearners,
        ApiError::NotSupportedForLearner,
        ApiError::MemberBadUrls,
        ApiError::NoLeader,
        ApiError::Timeout,
        ApiError::Stopped,
        ApiError::NotLeader,
        ApiError::TooManyRequests,
    ];
    all.into_iter()
        .find(|e| {
            let (c, m) = status_of(e);
            c as u32 == code && m == message
        })
        .unwrap_or(ApiError::Unimplemented)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the strings clients match on.
    #[test]
    fn messages_are_etcds() {
        let cases: &[(ApiError, Code, &str)] = &[
            (
                RequestError::EmptyKey.into(),
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                RequestError::KeyNotFound.into(),
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                RequestError::ValueProvided.into(),
                Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                RequestError::LeaseProvided.into(),
                Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                RequestError::LeaseNotFound.into(),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                RequestError::TooManyOps.into(),
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                RequestError::DuplicateKey.into(),
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                RequestError::Compacted.into(),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                RequestError::FutureRevision.into(),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                ApiError::NoLeader,
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                ApiError::Timeout,
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                ApiError::TooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                ApiError::Stopped,
                Code::Unavailable,
                "etcdserver: server stopped",
            ),
            (
                ApiError::NotLeader,
                Code::FailedPrecondition,
                "etcdserver: not leader",
            ),
            (
                RequestError::LeaseExists.into(),
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                RequestError::LeaseTtlTooLarge.into(),
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                ApiError::BadLeaderTransferee,
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            (
                ApiError::LeaderTransferTimeout,
                Code::Unavailable,
                "etcdserver: request timed out, leader transfer took too long",
            ),
            (
                RequestError::NoSpace.into(),
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                RequestError::Corrupt.into(),
                Code::DataLoss,
                "etcdserver: corrupt cluster",
            ),
        ];
        let auth: &[(ApiError, Code, &str)] = &[
            (
                RequestError::PermissionDenied.into(),
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                RequestError::UserEmpty.into(),
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                ApiError::InvalidAuthToken,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                RequestError::AuthFailed.into(),
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                RequestError::RootUserNotExist.into(),
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
        ];
        for (e, code, msg) in cases.iter().chain(auth) {
            assert_eq!(status_of(e), (*code, *msg), "{e:?}");
        }
    }
}
