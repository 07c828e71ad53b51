//! etch wire formats, without IO.
//!
//! - [`mvccpb`] and [`etcdserverpb`]: messages wire-compatible with etcd v3's `.proto` files
//!   (same packages, field numbers and types), shared by every front end.
//! - [`v3lockpb`], [`v3electionpb`]: etcd's Lock and Election service messages.
//! - [`etchpb`]: the native protocol's [`etchpb::Frame`] envelope and the
//!   [`etchpb::InternalRequest`] carried in raft log entries.
//! - [`frame`]: the native frame format (`u32` big-endian length, then a protobuf `Frame`) and,
//!   with the `codec` feature, its tokio-util codec.
//! - [`Code`]: gRPC status codes, used by error frames exactly as etcd uses them.
//!
//! The protocol is specified in `protocol/README.md`.

pub mod frame;
pub mod ids;

/// etcd's `mvccpb` package: `KeyValue` and `Event`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

/// etcd's `authpb` package: users, roles and key permissions.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
}

/// etcd's `etcdserverpb` package: request and response messages of the v3 API.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

/// etcd's `v3lockpb` package: the server-side Lock service's messages.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}

/// etcd's `v3electionpb` package: the server-side Election service's messages.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}

/// The encoded `FileDescriptorSet` of every message above (protobuf reflection, e.g. for the
/// HTTP JSON gateway's protobuf <-> JSON mapping).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// etch's own messages: the native frame envelope and the raft entry payload.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod etchpb {
    include!(concat!(env!("OUT_DIR"), "/etchpb.rs"));
}

/// The native protocol version this build speaks (sent in `Hello`).
pub const PROTOCOL_VERSION: u32 = 1;

/// gRPC status codes (<https://grpc.github.io/grpc/core/md_doc_statuscodes.html>), carried in
/// native error frames with the same values etcd returns over gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The code for a wire value; values outside 0..=16 map to `Unknown` as gRPC specifies.
    pub fn from_u32(v: u32) -> Code {
        use Code::*;
        match v {
            0 => Ok,
            1 => Cancelled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }

    /// gRPC's canonical upper-case name, e.g. `OUT_OF_RANGE`.
    pub fn name(self) -> &'static str {
        use Code::*;
        match self {
            Ok => "OK",
            Cancelled => "CANCELLED",
            Unknown => "UNKNOWN",
            InvalidArgument => "INVALID_ARGUMENT",
            DeadlineExceeded => "DEADLINE_EXCEEDED",
            NotFound => "NOT_FOUND",
            AlreadyExists => "ALREADY_EXISTS",
            PermissionDenied => "PERMISSION_DENIED",
            ResourceExhausted => "RESOURCE_EXHAUSTED",
            FailedPrecondition => "FAILED_PRECONDITION",
            Aborted => "ABORTED",
            OutOfRange => "OUT_OF_RANGE",
            Unimplemented => "UNIMPLEMENTED",
            Internal => "INTERNAL",
            Unavailable => "UNAVAILABLE",
            DataLoss => "DATA_LOSS",
            Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// etcd's prefix rule (`clientv3.GetPrefixRangeEnd`): the range end of all keys starting with
/// `key`, i.e. the key with its last byte below 0xff incremented and the rest dropped; `"\0"`
/// (every key) when every byte is 0xff or the key is empty.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            let n = end.len();
            end[n - 1] = last + 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn codes_round_trip() {
        for v in 0..=16 {
            assert_eq!(Code::from_u32(v) as u32, v);
        }
        assert_eq!(Code::from_u32(99), Code::Unknown);
        assert_eq!(Code::OutOfRange.name(), "OUT_OF_RANGE");
    }
}
