//! etch storage: synchronous and runtime-free.
//!
//! - [`wal`]: the write-ahead log of raft entries and hard state (segment files, chained
//!   CRC32 records, torn-tail repair, corruption detection).
//! - [`mvcc`]: the multi-version key-value store on fjall with etcd v3 semantics (revisions,
//!   Range/Put/DeleteRange/Txn/Compaction), applied index kept in the same batch as the data.
//!
//! Nothing here spawns threads of its own or needs an async runtime; the node wraps these types
//! in actors.

pub mod auth;
pub mod bbolt;
pub mod error;
pub mod faults;
pub mod members;
pub mod mvcc;
pub mod raftlog;
pub mod wal;

pub use error::{Error, Result};
