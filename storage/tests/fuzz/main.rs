//! Fuzz tests (proptest, stable Rust) of every decoder in etch-storage that reads bytes from
//! disk or from a peer, one module each:
//!
//! - [`bbolt`]: snapshot files (etcd backend files) read for `etchctl snapshot status|restore`;
//! - [`wal`]: WAL segments written by the WAL itself, then damaged (flipped bytes, garbage,
//!   lost sectors, truncation) in a tempdir: a bad record is an error outside the last
//!   segment, a truncated torn tail inside it, and never used;
//! - [`raft`]: the raft-rs protobuf messages a peer sends and the WAL stores, and the raft
//!   log rebuilt from what the WAL recovered;
//! - [`snapshot`]: snapshot chunks a follower ingests from the leader, then installed and read;
//! - [`validate`]: arbitrary Range/Put/DeleteRange/Txn requests against the checks made before
//!   proposing, and the valid ones applied to a store.
//!
//! Contract for each: never panic, never allocate beyond the input's size, and either an
//! error or a value that re-encodes consistently.
//!
//! Default case counts keep `cargo test` quick (about 8 s in debug). A long run of every module
//! (about 10 minutes on 2 cores; the snapshot cases, ~50 ms each with two fjall databases, are
//! most of it), or of one module with the command in its doc:
//!
//! ```text
//! PROPTEST_CASES=3000 cargo test --release -p etch-storage --test fuzz
//! ```
//!
//! A failure is shrunk and its seed saved in `storage/tests/proptest-regressions/<module>.txt`;
//! commit that file so the case is replayed first by every later run.

mod bbolt;
mod raft;
mod snapshot;
mod validate;
mod wal;

use proptest::test_runner::Config;

/// The proptest config: `default_cases` unless `PROPTEST_CASES` is set (an explicit `cases`
/// would otherwise hide the variable).
pub(crate) fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        max_shrink_iters: 1024,
        ..Config::default()
    }
}
