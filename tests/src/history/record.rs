//! What clients, lease holders and watchers saw: the recorded history the checkers read.
//!
//! Times are microseconds since the run started on one monotonic clock (every client runs in
//! the test process), so "A returned before B was invoked" is a comparison of two numbers.

/// A key-value operation a client invoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Put of `value` (unique in the run).
    Put {
        /// The value written, as `v<value>`.
        value: u64,
    },
    /// Linearizable get.
    Get,
    /// Txn compare-and-swap: if the key holds `expect` (`None`: the key is absent), put `value`.
    Cas {
        /// The value the client last read.
        expect: Option<u64>,
        /// The new value (unique in the run).
        value: u64,
    },
    /// Delete of the key (a Txn with one DeleteRange).
    Delete,
}

/// What the client learned of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No answer, or an error after which the write may or may not have happened.
    Unknown,
    /// The put was applied at revision `rev`.
    Put {
        /// Its revision (`header.revision`).
        rev: i64,
    },
    /// The get was served at `rev` (`header.revision`): the key held `value` (`None`: absent),
    /// last modified at `mod_rev`.
    Get {
        /// The revision it was served at.
        rev: i64,
        /// The value read.
        value: Option<u64>,
        /// The key's mod_revision (0 when absent).
        mod_rev: i64,
    },
    /// The Txn was served at `rev`; `succeeded` says whether the compare held.
    Cas {
        /// `header.revision`: the put's revision when it succeeded.
        rev: i64,
        /// The compare held and the put was done.
        succeeded: bool,
    },
    /// The delete was served at `rev` and deleted `deleted` keys (0 or 1).
    Delete {
        /// `header.revision`.
        rev: i64,
        /// Keys deleted.
        deleted: i64,
    },
}

/// One key-value operation.
#[derive(Debug, Clone)]
pub struct Op {
    /// The client (unique in the run).
    pub client: usize,
    /// The key.
    pub key: String,
    /// What was invoked.
    pub kind: Kind,
    /// Invocation time, µs.
    pub start: u64,
    /// Return time, µs; `None` when the outcome is unknown.
    pub end: Option<u64>,
    /// The outcome.
    pub outcome: Outcome,
}

impl Op {
    /// The revision the operation took effect at, when known: a write's own revision, a read's
    /// (or a failed compare's, or a delete of nothing's) serving revision.
    pub fn revision(&self) -> Option<i64> {
        match self.outcome {
            Outcome::Unknown => None,
            Outcome::Put { rev }
            | Outcome::Get { rev, .. }
            | Outcome::Cas { rev, .. }
            | Outcome::Delete { rev, .. } => Some(rev),
        }
    }

    /// Whether it changed the keyspace (and so owns its revision).
    pub fn wrote(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Put { .. }
                | Outcome::Cas {
                    succeeded: true,
                    ..
                }
        ) || matches!(self.outcome, Outcome::Delete { deleted, .. } if deleted > 0)
    }
}

/// A lease a client granted, kept alive for a while, then revoked or let expire.
#[derive(Debug, Clone, Default)]
pub struct Lease {
    /// The lease ID.
    pub id: i64,
    /// The key put with the lease (`None` if that put was not acknowledged).
    pub key: Option<String>,
    /// When the grant was sent, µs, and the TTL granted, s.
    pub granted: (u64, i64),
    /// Acknowledged keep-alives: (when the request was sent, µs; TTL returned, s).
    pub keep_alives: Vec<(u64, i64)>,
    /// When the client sent LeaseRevoke, µs.
    pub revoked_at: Option<u64>,
}

impl Lease {
    /// The earliest moment the lease may legally expire, µs: the last acknowledged renewal's
    /// (or else the grant's) send time (the leader renewed it at or after that) plus the TTL
    /// it returned.
    pub fn earliest_expiry(&self) -> u64 {
        let (at, ttl) = self
            .keep_alives
            .iter()
            .copied()
            .max_by_key(|k| k.0)
            .unwrap_or(self.granted);
        at + ttl.max(0) as u64 * 1_000_000
    }
}

/// A change to one key at one revision, as a watch delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The revision (`mod_revision` of a put, the deleting revision of a delete).
    pub rev: i64,
    /// The key.
    pub key: String,
    /// The value put (`v<n>` parsed; `Some(0)` for a value of another shape); `None`: delete.
    pub value: Option<u64>,
}

/// Parses a value written by the workload (`v<n>`); other values read as 0.
pub fn parse_value(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.strip_prefix('v'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Converts a watch response's events.
pub fn events_of(r: &etch_protocol::etcdserverpb::WatchResponse) -> Vec<Event> {
    use etch_protocol::mvccpb::event::EventType;
    r.events
        .iter()
        .filter_map(|e| {
            let kv = e.kv.as_ref()?;
            let delete = e.r#type == EventType::Delete as i32;
            Some(Event {
                rev: kv.mod_revision,
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                value: (!delete).then(|| parse_value(&kv.value)),
            })
        })
        .collect()
}

/// Everything one watcher received, across its reconnections.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// The watcher.
    pub watcher: usize,
    /// The revision its first watch started at.
    pub from: i64,
    /// Events in the order received.
    pub events: Vec<Event>,
    /// Watches it created (1 + reconnections).
    pub watches: usize,
}

/// A fault the scheduler injected.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Its kind (`kill`, `stop`, `partition`, `fsync-delay`, ...).
    pub kind: &'static str,
    /// The member index.
    pub member: usize,
    /// When it began and ended (the member healthy again), µs.
    pub start: u64,
    /// See `start`.
    pub end: u64,
    /// What was seen (the member's exit and the message that named the failure).
    pub note: String,
}
