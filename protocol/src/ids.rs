//! Identifiers as types, each with the one textual form etcd uses for it: member, cluster and
//! lease IDs in lower-case hex (etcd `types.ID`, `etcdctl lease grant`'s "lease 694d7b8a8b5c3a04
//! granted"), revisions, raft indexes and terms in decimal. The wire keeps the bare integers
//! (etcd's protos); these wrap them where a node passes them around or prints them.

use std::fmt;
use std::str::FromStr;

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:x}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:x})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;
            /// Parses the hex form [`fmt::Display`] writes.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$inner>::from_str_radix(s, 16).map($name)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                $name(v)
            }
        }

        impl From<$name> for $inner {
            fn from(v: $name) -> Self {
                v.0
            }
        }
    };
}

macro_rules! decimal_id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                $name(v)
            }
        }

        impl From<$name> for $inner {
            fn from(v: $name) -> Self {
                v.0
            }
        }
    };
}

hex_id!(
    /// A member's ID: the first 8 bytes of SHA-1 over its peer URLs and the cluster token
    /// (etcd `membership.NewMember`); also raft-rs's node ID. 0 means "none" (no leader).
    MemberId(u64)
);
hex_id!(
    /// A cluster's ID: the first 8 bytes of SHA-1 over its members' IDs (etcd `genID`).
    ClusterId(u64)
);
hex_id!(
    /// A lease's ID (etcd `LeaseID`), chosen by the client or the server; positive.
    LeaseId(i64)
);
decimal_id!(
    /// An MVCC revision: bumped by every write request that changes something (etcd `main`
    /// revision); 1 for an empty store.
    Revision(i64)
);
decimal_id!(
    /// A raft log index.
    Index(u64)
);
decimal_id!(
    /// A raft term.
    Term(u64)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_as_etcd_prints_them() {
        let m = MemberId(0x8e9e05c52164694d);
        assert_eq!(m.to_string(), "8e9e05c52164694d");
        assert_eq!("8e9e05c52164694d".parse::<MemberId>().unwrap(), m);
        assert_eq!(format!("{m:?}"), "MemberId(8e9e05c52164694d)");
        assert_eq!(LeaseId(0x694d7b8a8b5c3a04).to_string(), "694d7b8a8b5c3a04");
        assert_eq!(Revision(42).to_string(), "42");
        assert_eq!(u64::from(Term(3)), 3);
        assert!("zz".parse::<ClusterId>().is_err());
    }
}
