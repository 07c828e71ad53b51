//! The MVCC key-value store on fjall, with etcd v3 semantics.
//!
//! Every change creates a new cluster-wide *revision*; the store keeps every revision of every
//! key until compaction, so reads at past revisions, `Txn` compare-and-swap and watch catch-up
//! work as in etcd (`server/mvcc` in etcd v3.5 is the reference).
//!
//! Layout (fjall keyspaces in one database, encodings in [`keys`]):
//! - `kv`: revision -> `mvccpb.KeyValue`;
//! - `key_index`: user key ++ revision -> (tombstone, create_revision, version, lease);
//! - `meta`: current revision, compacted revision, applied index and term, active alarms
//!   (see Alarms below).
//!
//! Writes come only through [`MvccStore::apply`], from one thread (the apply actor): each raft
//! entry is applied in ONE fjall batch that also records the entry's index and term, so replay
//! after a crash skips what was applied (etcd's consistent index). Reads
//! ([`MvccStore::range`]) may run from any thread at the same time.
//!
//! Durability: batches are written to fjall's journal, which buffers them in the process
//! (manual journal persist) and is not fsynced; apply hands the buffer to the operating
//! system after each batch ([`MvccStore::flush_journal`]), so a kill of the process loses
//! nothing that was answered, and a power loss can lose the last batches: the raft WAL is the
//! source of truth. [`MvccStore::persist`] fsyncs before the WAL is released.
//!
//! # Alarms
//! etcd's alarms (NOSPACE, CORRUPT) are replicated state kept here: see the `alarm` module
//! doc for what an active alarm refuses and how alarms are stored. [`MvccStore::alarms`] reads
//! them.
//!
//! # Size
//! [`MvccStore::db_size_bytes`] counts every fjall file (journal included);
//! [`MvccStore::quota_size_bytes`] counts the data only, for etcd's space quota.
//! [`MvccStore::defragment`] rewrites the data files so space freed by compaction is returned.

mod alarm;
pub use crate::auth;
mod compaction;
mod etcd_restore;
mod etcd_snapshot;
pub use etcd_restore::{Buckets, Restored};
pub use etcd_snapshot::member_json;
mod hash;
pub mod keys;
mod members;
mod read;
pub mod snapshot;
mod validate;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use alarm::AlarmSet;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use prost::Message;

use etch_protocol::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, PutResponse, RangeRequest, RangeResponse, TxnResponse,
};
use etch_protocol::etchpb::internal_request::Request;
use etch_protocol::mvccpb::{Event, KeyValue};

use crate::error::{Error, Result};
pub use hash::KvHash;
use keys::{IndexValue, index_prefix, kv_key};
pub use keys::{MAX_KEY_BYTES, Revision};
pub use validate::{
    DEFAULT_MAX_TXN_OPS, validate_delete, validate_put, validate_range, validate_txn,
};

/// A request refused by etcd's rules: the client's problem, not the store's. The node maps each
/// to etcd's gRPC code and exact message (`rpctypes/error.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A request without a key (`etcdserver: key is not provided`).
    #[error("key is not provided")]
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a key that does not exist (`etcdserver: key not found`).
    #[error("key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value (`etcdserver: value is provided`).
    #[error("value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease (`etcdserver: lease is provided`).
    #[error("lease is provided")]
    LeaseProvided,
    /// A Put names a lease that does not exist (`etcdserver: requested lease not found`).
    #[error("requested lease not found")]
    LeaseNotFound,
    /// A Txn with more than the maximum compares or ops in one branch.
    #[error("too many operations in txn request")]
    TooManyOps,
    /// A Txn writes one key twice in a branch (etcd's `checkIntervals` rule).
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// A revision at or below the compaction point (`mvcc: required revision has been
    /// compacted`).
    #[error("required revision has been compacted")]
    Compacted,
    /// A revision above the current one (`mvcc: required revision is a future revision`).
    #[error("required revision is a future revision")]
    FutureRevision,
    /// LeaseGrant with an ID in use (`etcdserver: lease already exists`).
    #[error("lease already exists")]
    LeaseExists,
    /// LeaseGrant with a TTL above [`MAX_LEASE_TTL_SECONDS`] (`etcdserver: too large lease TTL`).
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    /// `etcdserver: root user does not exist` (AuthEnable without a `root` user).
    #[error("root user does not exist")]
    RootUserNotExist,
    /// `etcdserver: root user does not have root role`.
    #[error("root user does not have root role")]
    RootRoleNotExist,
    /// `etcdserver: user name already exists`.
    #[error("user name already exists")]
    UserAlreadyExist,
    /// `etcdserver: user name is empty`: also a request without identity while auth is on.
    #[error("user name is empty")]
    UserEmpty,
    /// `etcdserver: user name not found`.
    #[error("user name not found")]
    UserNotFound,
    /// `etcdserver: role name already exists`.
    #[error("role name already exists")]
    RoleAlreadyExist,
    /// `etcdserver: role name not found`.
    #[error("role name not found")]
    RoleNotFound,
    /// `etcdserver: role name is empty`.
    #[error("role name is empty")]
    RoleEmpty,
    /// `etcdserver: authentication failed, invalid user ID or password`.
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    /// `etcdserver: permission not given` (RoleGrantPermission without a permission).
    #[error("permission not given")]
    PermissionNotGiven,
    /// `etcdserver: permission denied`.
    #[error("permission denied")]
    PermissionDenied,
    /// `etcdserver: role is not granted to the user`.
    #[error("role is not granted to the user")]
    RoleNotGranted,
    /// `etcdserver: permission is not granted to the role`.
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    /// `etcdserver: authentication is not enabled`.
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    /// `etcdserver: invalid auth management` (deleting root, or its root role, while auth is
    /// on).
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    /// `etcdserver: revision of auth store is old`: the request was checked before an auth
    /// change that was applied first; the client retries.
    #[error("revision of auth store is old")]
    AuthOldRevision,
    /// A Put, a Txn that puts, or a LeaseGrant while the NOSPACE alarm is active, or refused
    /// by the space quota before proposing (`etcdserver: mvcc: database space exceeded`).
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// A write while the CORRUPT alarm is active (`etcdserver: corrupt cluster`).
    #[error("corrupt cluster")]
    Corrupt,
    /// A Put (or a user or role name) longer than [`MAX_KEY_BYTES`], which the store cannot
    /// index; answered as etcd answers an oversized request (`etcdserver: request is too
    /// large`).
    #[error("request is too large")]
    KeyTooLarge,
    /// A membership change names an ID removed from the cluster for good (etcd
    /// `membership.ErrIDRemoved`).
    #[error("ID removed")]
    MemberIdRemoved,
    /// MemberAdd with an ID already in the cluster (`etcdserver: member ID already exist`).
    #[error("member ID already exist")]
    MemberExists,
    /// MemberAdd or MemberUpdate with a peer URL another member has (`etcdserver: Peer URLs
    /// already exists`).
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    /// A membership change names no member (`etcdserver: member not found`).
    #[error("member not found")]
    MemberNotFound,
    /// MemberPromote of a voter (`etcdserver: can only promote a learner member`).
    #[error("can only promote a learner member")]
    MemberNotLearner,
}

/// Largest lease TTL, seconds (etcd `MaxLeaseTTL`).
pub const MAX_LEASE_TTL_SECONDS: i64 = 9_000_000_000;

/// A granted lease as stored: its TTL and the remaining TTL last checkpointed (0 = none),
/// both in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Lease ID.
    pub id: i64,
    /// Granted TTL, seconds.
    pub ttl: i64,
    /// Remaining TTL at the last checkpoint, seconds; 0 when never checkpointed.
    pub remaining: i64,
}

/// The response to one applied write, without the header's cluster/member/term (the node fills
/// those in). `header.revision` is set.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResponse {
    /// Response to a Put.
    Put(PutResponse),
    /// Response to a DeleteRange.
    DeleteRange(DeleteRangeResponse),
    /// Response to a Txn.
    Txn(TxnResponse),
    /// Response to a Compaction.
    Compaction(CompactionResponse),
    /// Response to a LeaseGrant.
    LeaseGrant(etch_protocol::etcdserverpb::LeaseGrantResponse),
    /// Response to a LeaseRevoke.
    LeaseRevoke(etch_protocol::etcdserverpb::LeaseRevokeResponse),
    /// Response to a LeaseCheckpoint.
    LeaseCheckpoint(etch_protocol::etcdserverpb::LeaseCheckpointResponse),
    /// Response to a Maintenance.Alarm request (GET, ACTIVATE or DEACTIVATE).
    Alarm(etch_protocol::etcdserverpb::AlarmResponse),
    /// Response to an auth change (every Auth service mutation answers just a header);
    /// `token` is set for Authenticate.
    Auth {
        /// Header with the key-value revision.
        header: Option<etch_protocol::etcdserverpb::ResponseHeader>,
        /// The simple token assigned (Authenticate only).
        token: Option<String>,
    },
    /// Response to a membership change: the membership after it.
    Members(crate::members::Membership),
}

/// What applying one raft entry did.
#[derive(Debug)]
pub struct Applied {
    /// The answer for the waiting client, or the rule the request broke (then nothing changed
    /// but the applied index).
    pub response: std::result::Result<WriteResponse, RequestError>,
    /// The current revision after the apply.
    pub revision: i64,
}

/// One Put entry of a run for [`MvccStore::apply_puts`].
#[derive(Debug, Clone, Copy)]
pub struct PutEntry<'a> {
    /// Raft index of the entry.
    pub index: u64,
    /// Raft term of the entry.
    pub term: u64,
    /// Who proposed it (`None`: the server itself, never checked).
    pub who: Option<&'a etch_protocol::etchpb::AuthInfo>,
    /// The request: a Put for which [`MvccStore::batchable`] holds.
    pub request: &'a Request,
}

/// Where apply has got to: the last raft entry applied (0, 0 for a new store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppliedIndex {
    /// Raft index of the last applied entry.
    pub index: u64,
    /// Raft term of that entry.
    pub term: u64,
}

/// The most journal fjall keeps before flushing the memtables that pin its oldest file, in
/// bytes (fjall's minimum; its default is 512 MiB): what a reopen after a crash may replay.
const MAX_JOURNALING_BYTES: u64 = 64 * 1024 * 1024;

const META_CURRENT_REV: &str = "current_revision";
const META_COMPACT_REV: &str = "compact_revision";
const META_APPLIED: &str = "applied_index";
const META_IDENTITY: &str = "identity";
const META_KEY_COUNT: &str = "key_count";
const META_MEMBERSHIP: &str = "membership";

/// One open fjall database with the store's keyspaces.
pub(crate) struct Db {
    pub(crate) db: Database,
    pub(crate) kv: Keyspace,
    pub(crate) index: Keyspace,
    pub(crate) meta: Keyspace,
    pub(crate) lease: Keyspace,
    pub(crate) lease_keys: Keyspace,
    pub(crate) auth: Keyspace,
    /// The newest revision of every key in `index`, for the write path's lookups.
    pub(crate) newest: Newest,
    /// The directory it lives in.
    pub(crate) dir: PathBuf,
}

/// The newest index entry of every key in the key index (its revision and [`IndexValue`]), by
/// a 64-bit hash of the key's escaped form ([`index_prefix`]): 1.14-2.3 buckets of 49 bytes
/// (48 and a control byte) per key (about 55-110 MB per million keys, [`PackedNewest`]), filled
/// from the index by a thread of its own when the database opens (the member starts serving
/// meanwhile) and kept by the apply thread after each commit. Only the writer (apply) reads
/// it: it is ahead of any other reader's snapshot.
///
/// A write must find a key's newest index entry (its create revision, version and lease).
/// Without this, that is a reverse range over the memtable and every table that may hold
/// the key, which grows with the keyspace (bloom filters only serve point reads), and even a
/// point read of `index_key(key, revision)` cost an overwrite about as much as the rest of
/// its apply. With it, a key that was never written needs no read, and an existing one none
/// either: each entry also holds 31 bits of a second, independent hash of its key (`check`),
/// and an entry whose check matches is the key's (two different keys match both with a
/// probability of about 2^-95). Keys whose first hashes collide share an entry marked
/// [`COLLIDED`] that keeps the newer revision, only an upper bound for each of them: their
/// writes make a point read, and one that misses (the entry was another key's, or compaction
/// removed it) falls back to the range. Once filled, no entry means no key has it. Filling and
/// recording both keep the larger revision, so their order does not matter. Entries are never
/// removed (a hash may be shared, so a deleted key's entry cannot be dropped safely): the map
/// holds every key written since the database opened, deleted ones included (as tombstones),
/// until the next start.
pub(crate) struct Newest {
    hashers: KeyHashers,
    inner: Arc<NewestInner>,
}

/// The two independently seeded hashers of [`Newest`].
#[derive(Clone, Default)]
struct KeyHashers {
    /// The map's key.
    hasher: std::collections::hash_map::RandomState,
    /// [`NewestEntry::check`] (its low 31 bits).
    checker: std::collections::hash_map::RandomState,
}

impl KeyHashers {
    /// The two hashes of an escaped key ([`index_prefix`]) and the first one's shard.
    fn hashes(&self, prefix: &[u8]) -> KeyHash {
        use std::hash::BuildHasher;
        let check = (self.checker.hash_one(prefix) as u32) & CHECK_BITS;
        KeyHash::new(
            self.hasher.hash_one(prefix),
            if check == COLLIDED { 1 } else { check },
        )
    }
}

/// Where a key's entry lives in [`Newest`]: the two hashes of its escaped form
/// ([`Newest::hashes`]) and the first one's shard ([`newest_shard`]). A write computes it
/// once and uses it for its lookup and again for recording what it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyHash {
    /// The map's key: a 64-bit hash.
    pub(crate) h: u64,
    /// The entry's check: 31 bits of a second, independent hash, never [`COLLIDED`].
    pub(crate) check: u32,
    /// `newest_shard(h)`, below [`NEWEST_SHARDS`].
    shard: u16,
}

impl KeyHash {
    /// The place of hashes `(h, check)`.
    fn new(h: u64, check: u32) -> KeyHash {
        const _: () = assert!(NEWEST_SHARDS <= 1 << 16, "a shard's number fits a u16");
        KeyHash {
            h,
            check,
            shard: newest_shard(h) as u16,
        }
    }
}

/// Shards of [`Newest`]'s map ([`newest_shard`] picks one from a key's hash). A shard's table
/// grows by rehashing every entry it holds into a table twice its size, on the apply thread,
/// under the map's lock. Many shards keep each growth step short (one table's took 45 ms at
/// 1,000,000 keys; with 64 shards, a step took 2-8.5 ms by 4,000,000 keys and about 15 ms past
/// 7,000,000); shards of unequal shares ([`newest_shard`]) keep the steps from falling at the
/// same key count.
const NEWEST_SHARDS: usize = 1024;

/// One shard of [`Newest`]: the keys' hashes are already uniform 64-bit values (SipHash of
/// the key), used as they are instead of being hashed again. A bucket is 48 bytes (the hash
/// and a [`PackedNewest`]).
type NewestShard = HashMap<u64, PackedNewest, std::hash::BuildHasherDefault<KeyHashHasher>>;

/// One key's newest index entry in [`Newest`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewestEntry {
    /// The entry's revision (the index key's suffix).
    pub(crate) rev: Revision,
    /// The key's second hash ([`Newest::hashes`]: 31 bits, never [`COLLIDED`]).
    pub(crate) check: u32,
    /// The index value at `rev`.
    pub(crate) iv: IndexValue,
}

/// A [`NewestEntry::check`] for an entry several keys share (their first hashes collide), or
/// whose sub-revision was clamped ([`PackedNewest`]): its revision is only a guess for a
/// point read, which the index confirms or not. A key's own check is never 0.
const COLLIDED: u32 = 0;

/// The bits of a [`NewestEntry::check`]; the top bit of [`PackedNewest::check_tombstone`]
/// holds the tombstone flag.
const CHECK_BITS: u32 = 0x7FFF_FFFF;

/// A [`NewestEntry`] as [`Newest`]'s map holds it: 40 bytes instead of 56. The map holds one
/// per key ever written, with a table per shard of 1.14-2.3 buckets per entry: at 10,000,000
/// keys about 0.8 GB with 48-byte buckets instead of 1.1 GB with 64-byte ones.
///
/// A sub-revision over `u32::MAX` (a DeleteRange or Txn of over 4,294,967,295 changes) is
/// kept as `u32::MAX` with the check [`COLLIDED`]: not a bound within its main revision (it
/// sorts below the real one), so the write path's point read at it misses for that key (a
/// key has at most one entry per main revision) and the index's range decides.
#[derive(Debug, Clone, Copy)]
struct PackedNewest {
    main: i64,
    create_revision: i64,
    version: i64,
    lease: i64,
    sub: u32,
    /// The check (low 31 bits) and the tombstone flag (top bit).
    check_tombstone: u32,
}

impl PackedNewest {
    fn pack(e: NewestEntry) -> PackedNewest {
        let (sub, check) = match u32::try_from(e.rev.sub) {
            Ok(sub) => (sub, e.check & CHECK_BITS),
            Err(_) => (u32::MAX, COLLIDED),
        };
        PackedNewest {
            main: e.rev.main,
            create_revision: e.iv.create_revision,
            version: e.iv.version,
            lease: e.iv.lease,
            sub,
            check_tombstone: check | if e.iv.tombstone { !CHECK_BITS } else { 0 },
        }
    }

    fn rev(&self) -> Revision {
        Revision {
            main: self.main,
            sub: i64::from(self.sub),
        }
    }

    fn check(&self) -> u32 {
        self.check_tombstone & CHECK_BITS
    }

    fn set_collided(&mut self) {
        self.check_tombstone &= !CHECK_BITS;
    }

    fn index_value(&self) -> IndexValue {
        IndexValue {
            tombstone: self.check_tombstone & !CHECK_BITS != 0,
            create_revision: self.create_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// A `Hasher` for keys that are already hashes: returns the `u64` it was given.
#[derive(Default)]
pub(crate) struct KeyHashHasher(u64);

impl std::hash::Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed with it; any other input still hashes deterministically.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The shard of hash `h`: shard `s` takes the share `2^((s+1)/N) - 2^(s/N)` of uniform hashes
/// (`N` = [`NEWEST_SHARDS`]), so the last shard takes twice the first's and the shares step
/// evenly, in proportion, between them. Filled evenly, every shard's table would double at
/// about the same key count (at about 917,000 keys with 1,024 shards: all 1,024 steps, which
/// together rehash every entry and first touch about 100 MB of new tables, within a few
/// thousand writes); with these shares each shard reaches its next size at its own key count,
/// spread evenly (in proportion) over each doubling of the key count, so a write batch meets
/// at most a step or two and the work of growing is the same in every stretch of a load.
///
/// The share is read from bits 33..57 of the hash: neither the low ones hashbrown picks
/// buckets with (15 for a shard's share of 10,000,000 keys) nor the top 7 it tags them with,
/// so each shard's entries still spread over its buckets.
fn newest_shard(h: u64) -> usize {
    const BITS: u32 = 24;
    let u = ((h >> 33) & ((1 << BITS) - 1)) as f64 / f64::from(1u32 << BITS);
    // u in [0, 1): log2(1 + u) in [0, 1).
    (((1.0 + u).log2() * NEWEST_SHARDS as f64) as usize).min(NEWEST_SHARDS - 1)
}

struct NewestInner {
    /// Every shard ([`NEWEST_SHARDS`]), under one lock: once the fill is done only the apply
    /// thread takes it (the fill thread takes it once, to put its maps in), and a run of puts
    /// looks all its keys up under one acquisition ([`Newest::get_many`]). A lock per lookup
    /// (an atomic read-modify-write, which x86 does not reorder loads across) would make each
    /// lookup's cache miss wait for the one before; without it they overlap.
    shards: Mutex<Vec<NewestShard>>,
    /// Every key of the index is in `shards` (the fill finished).
    filled: AtomicBool,
}

/// Keeps the entry with the larger revision for hash `h`, marking it [`COLLIDED`] when another
/// key had it.
fn newest_keep(shard: &mut NewestShard, h: u64, e: PackedNewest) {
    use std::collections::hash_map::Entry;
    match shard.entry(h) {
        Entry::Vacant(v) => {
            v.insert(e);
        }
        Entry::Occupied(mut o) => {
            let cur = o.get_mut();
            let collided = cur.check() == COLLIDED || cur.check() != e.check();
            if e.rev() > cur.rev() {
                *cur = e;
            }
            if collided {
                cur.set_collided();
            }
        }
    }
}

/// What [`Newest`] knows of a key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NewestRev {
    /// Still filling: look in the index.
    Unknown,
    /// No such key in the index.
    Absent,
    /// A guess at the key's newest revision: the entry under its first hash is shared or
    /// clamped ([`COLLIDED`]), or another key's. A point read at it tells; when it misses,
    /// the index's range does.
    AtMost(Revision),
    /// The key's newest index entry: its revision and value.
    Known(Revision, IndexValue),
}

impl Newest {
    /// Starts filling from every key of `index` on a thread of its own.
    fn start(index: &Keyspace) -> Newest {
        let n = Newest {
            hashers: KeyHashers::default(),
            inner: Arc::new(NewestInner {
                shards: Mutex::new((0..NEWEST_SHARDS).map(|_| NewestShard::default()).collect()),
                filled: AtomicBool::new(false),
            }),
        };
        let (index, inner, hashers) = (index.clone(), n.inner.clone(), n.hashers.clone());
        let fill = move || {
            let mut local: Vec<NewestShard> =
                (0..NEWEST_SHARDS).map(|_| NewestShard::default()).collect();
            for (i, g) in index.iter().enumerate() {
                // The database was dropped (replaced by a snapshot, or the member stops).
                if i % 4_096 == 0 && Arc::strong_count(&inner) == 1 {
                    return;
                }
                let (k, v) = match g.into_inner() {
                    Ok(kv) => kv,
                    Err(e) => {
                        tracing::error!(error = %e, "reading the key index; writes look keys up in it");
                        return;
                    }
                };
                let (Some((prefix, rev)), Some(iv)) =
                    (keys::split_index_key(&k), IndexValue::decode(&v))
                else {
                    tracing::error!("bad entry in the key index; writes look keys up in it");
                    return;
                };
                let k = hashers.hashes(prefix);
                newest_keep(
                    &mut local[usize::from(k.shard)],
                    k.h,
                    PackedNewest::pack(NewestEntry {
                        rev,
                        check: k.check,
                        iv,
                    }),
                );
            }
            // The shards stay locked while the filled maps replace them, so no record falls
            // between the swap and the flag.
            let mut shards = inner.shards.lock().unwrap_or_else(|p| p.into_inner());
            for (shard, mut filled) in shards.iter_mut().zip(local) {
                for (h, e) in shard.drain() {
                    newest_keep(&mut filled, h, e);
                }
                *shard = filled;
            }
            inner.filled.store(true, Ordering::Release);
            drop(shards);
        };
        if let Err(e) = std::thread::Builder::new()
            .name("etch-key-index".into())
            .spawn(fill)
        {
            tracing::error!(error = %e, "cannot start the key index thread; writes look keys up in the index");
        }
        n
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<NewestShard>> {
        self.inner.shards.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The two independent hashes of an escaped key ([`index_prefix`]): the map's key and the
    /// entry's check (never [`COLLIDED`]), with the first one's shard.
    pub(crate) fn hashes(&self, prefix: &[u8]) -> KeyHash {
        self.hashers.hashes(prefix)
    }

    /// What is known of the key at `k`.
    pub(crate) fn get(&self, k: KeyHash) -> NewestRev {
        if !self.inner.filled.load(Ordering::Acquire) {
            return NewestRev::Unknown;
        }
        lookup(&self.lock(), k)
    }

    /// What is known of each key of `keys`, in order, into `out` (emptied first): as
    /// [`Newest::get`] of each, under one lock, so the lookups' cache misses overlap.
    pub(crate) fn get_many(&self, keys: &[KeyHash], out: &mut Vec<NewestRev>) {
        out.clear();
        if !self.inner.filled.load(Ordering::Acquire) {
            out.resize(keys.len(), NewestRev::Unknown);
            return;
        }
        let shards = self.lock();
        out.extend(keys.iter().map(|&k| lookup(&shards, k)));
    }

    /// Whether the fill finished.
    #[cfg(test)]
    pub(crate) fn filled(&self) -> bool {
        self.inner.filled.load(Ordering::Acquire)
    }

    /// Records index entries a committed batch wrote (`(key's place, entry)`).
    pub(crate) fn record(&self, written: &[(KeyHash, NewestEntry)]) {
        let mut shards = self.lock();
        for &(k, e) in written {
            newest_keep(
                &mut shards[usize::from(k.shard)],
                k.h,
                PackedNewest::pack(e),
            );
        }
    }
}

/// What `shards` (a filled [`Newest`]'s) know of the key at `k`.
fn lookup(shards: &[NewestShard], k: KeyHash) -> NewestRev {
    let check = k.check;
    match shards[usize::from(k.shard)].get(&k.h) {
        Some(e) if e.check() == check && check != COLLIDED => {
            NewestRev::Known(e.rev(), e.index_value())
        }
        Some(e) => NewestRev::AtMost(e.rev()),
        None => NewestRev::Absent,
    }
}

impl Db {
    /// Every keyspace of the store.
    fn keyspaces(&self) -> [&Keyspace; 6] {
        [
            &self.kv,
            &self.index,
            &self.meta,
            &self.lease,
            &self.lease_keys,
            &self.auth,
        ]
    }
}

impl Db {
    fn open(dir: &Path) -> Result<Db> {
        // fjall replays its journal at open; its default bound of 512 MiB of journal took
        // 4.6 s to replay after a 1,000,000-key load. 64 MiB (fjall's minimum) makes fjall
        // flush the memtables pinning the oldest journal sooner, bounding replay after a crash.
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .max_journaling_size(MAX_JOURNALING_BYTES)
            .open()?;
        let index = db.keyspace("key_index", KeyspaceCreateOptions::default)?;
        // Index keys (a key, then a revision) arrive in the order clients write keys, not in
        // key order; each insert would otherwise wait on a chain of cache misses down the
        // memtable (vendor/fjall/ETCH-PATCH.md). The `kv` keyspace's revisions arrive in order.
        index.set_prefetch_inserts(true);
        Ok(Db {
            kv: db.keyspace("kv", KeyspaceCreateOptions::default)?,
            newest: Newest::start(&index),
            index,
            meta: db.keyspace("meta", KeyspaceCreateOptions::default)?,
            lease: db.keyspace("lease", KeyspaceCreateOptions::default)?,
            lease_keys: db.keyspace("lease_keys", KeyspaceCreateOptions::default)?,
            auth: db.keyspace("auth", KeyspaceCreateOptions::default)?,
            db,
            dir: dir.to_owned(),
        })
    }

    fn read_i64(&self, k: &str) -> Result<Option<i64>> {
        match self.meta.get(k)? {
            None => Ok(None),
            Some(v) => Ok(Some(i64::from_be_bytes(v.as_ref().try_into().map_err(
                |_| Error::CorruptStore(format!("meta {k}: {} bytes", v.len())),
            )?))),
        }
    }

    /// Live keys: the recorded count, or (a store written before the count existed) a scan
    /// of the key index counting keys whose newest entry is not a tombstone.
    fn key_count(&self) -> Result<i64> {
        if let Some(n) = self.read_i64(META_KEY_COUNT)? {
            return Ok(n);
        }
        let (mut n, mut last): (i64, Option<(Vec<u8>, bool)>) = (0, None);
        for g in self.index.iter() {
            let (k, v) = g.into_inner()?;
            let prefix = k[..k.len().saturating_sub(16)].to_vec();
            let live = IndexValue::decode(&v).is_some_and(|iv| !iv.tombstone);
            if let Some((p, l)) = &last
                && *p != prefix
            {
                n += i64::from(*l);
            }
            last = Some((prefix, live));
        }
        Ok(n + last.map_or(0, |(_, l)| i64::from(l)))
    }

    fn applied(&self) -> Result<AppliedIndex> {
        match self.meta.get(META_APPLIED)? {
            None => Ok(AppliedIndex::default()),
            Some(v) if v.len() == 16 => Ok(AppliedIndex {
                index: u64::from_be_bytes(v[..8].try_into().unwrap_or_default()),
                term: u64::from_be_bytes(v[8..].try_into().unwrap_or_default()),
            }),
            Some(v) => Err(Error::CorruptStore(format!(
                "meta {META_APPLIED}: {} bytes",
                v.len()
            ))),
        }
    }
}

/// One consistent read of a database: every read of one request, or of one applied entry,
/// goes through the same fjall snapshot, so a batch written meanwhile (above all the
/// background deletion of compacted history, [`compaction`]) is seen whole or not at all.
/// Reading the keyspaces directly sees such a batch half-applied: a key's old revision read
/// before it, its tombstone missed after it, and that old revision's value already gone
/// ("missing kv").
pub(crate) struct View<'a> {
    pub(crate) d: &'a Db,
    pub(crate) snap: &'a fjall::Snapshot,
}

/// The store. Cheap to share behind an `Arc`: reads take `&self`.
///
/// The fjall database can be replaced as a whole by a snapshot from the leader
/// ([`MvccStore::install`]); readers keep the database they started with until they finish.
pub struct MvccStore {
    /// `<member>/`: holds `db.current` and the database directories.
    root: PathBuf,
    inner: RwLock<Arc<Db>>,
    current: AtomicI64,
    compacted: AtomicI64,
    applied: Mutex<AppliedIndex>,
    /// Live keys (etcd `keys_total`), kept in `meta` with every write.
    keys: AtomicI64,
    /// Users, roles, permissions; replaced as a whole by each auth change.
    auth: RwLock<Arc<auth::AuthState>>,
    /// Active alarms, as persisted in `meta`; replaced as a whole by each alarm change.
    alarm_state: RwLock<AlarmSet>,
    /// Deletes compacted history in the background.
    purger: compaction::Purger,
    /// The last [`MvccStore::quota_size_bytes`] and when it was measured, for
    /// [`MvccStore::recent_quota_size_bytes`]; `None` after a change that may shrink it.
    quota_size: Mutex<Option<(std::time::Instant, u64)>>,
}

/// How long [`MvccStore::defragment`] waits for fjall to flush the memtables before it gives
/// up with [`Error::FlushTimeout`] (a flush writes at most 64 MiB per keyspace).
pub const DEFRAG_FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// How old a [`MvccStore::recent_quota_size_bytes`] may be, ms.
pub const QUOTA_SIZE_MAX_AGE_MS: u64 = 100;

impl std::fmt::Debug for MvccStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MvccStore")
            .field("current", &self.current_revision())
            .field("compacted", &self.compact_revision())
            .finish()
    }
}

impl MvccStore {
    /// Opens (or creates) the store under `root` (a member directory): the database lives in
    /// the directory named by `root/db.current` (`db` when there is no such file). Database
    /// directories left by an interrupted snapshot install are removed.
    ///
    /// A new store is at revision 1 with nothing in it, as a new etcd cluster is.
    ///
    /// # Errors
    /// [`Error::StoreOpen`] (naming `root`) around what failed: fjall cannot open the
    /// directory or read it back (a damaged table fails its block checksum), or metadata is
    /// undecodable ([`Error::CorruptStore`]); [`Error::Io`] for the directory itself.
    pub fn open(root: &Path) -> Result<MvccStore> {
        Self::open_in(root).map_err(|e| match e {
            Error::Io { .. } => e,
            e => Error::StoreOpen {
                path: root.to_owned(),
                source: Box::new(e),
            },
        })
    }

    fn open_in(root: &Path) -> Result<MvccStore> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let current_name = snapshot::current_dir_name(root)?;
        snapshot::remove_stale_dirs(root, &current_name);
        let db = Db::open(&root.join(&current_name))?;
        let current = db.read_i64(META_CURRENT_REV)?.unwrap_or(1);
        let compacted = db.read_i64(META_COMPACT_REV)?.unwrap_or(0);
        let applied = db.applied()?;
        let keys = db.key_count()?;
        let auth = auth::AuthState::load(&db.auth)?;
        let alarms = alarm::load(&db.meta)?;
        let (_, purged) = compaction::points(&db)?;
        let purger = compaction::Purger::start(purged)?;
        let db = Arc::new(db);
        if compacted > purged {
            purger.schedule(db.clone(), compacted);
        }
        Ok(MvccStore {
            root: root.to_owned(),
            inner: RwLock::new(db),
            current: AtomicI64::new(current),
            compacted: AtomicI64::new(compacted),
            applied: Mutex::new(applied),
            keys: AtomicI64::new(keys),
            auth: RwLock::new(Arc::new(auth)),
            alarm_state: RwLock::new(alarms),
            quota_size: Mutex::new(None),
            purger,
        })
    }

    /// The database in use now.
    pub(crate) fn db(&self) -> Arc<Db> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The auth state as of the last applied entry.
    pub fn auth(&self) -> Arc<auth::AuthState> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_auth(&self, s: auth::AuthState) {
        *self.auth.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
    }

    /// The latest revision (1 for an empty new store).
    pub fn current_revision(&self) -> i64 {
        self.current.load(Ordering::Acquire)
    }

    /// The compaction point: reads below it fail with [`RequestError::Compacted`]; 0 if never
    /// compacted.
    pub fn compact_revision(&self) -> i64 {
        self.compacted.load(Ordering::Acquire)
    }

    /// Blocks until the history below compaction point `rev` is deleted (etcd's physical
    /// compaction), at most `timeout`. Returns at once for a point already deleted.
    ///
    /// # Errors
    /// [`Error::CorruptStore`] if the deletion failed or is still running after `timeout`.
    pub fn wait_purged(&self, rev: i64, timeout: std::time::Duration) -> Result<()> {
        self.purger.wait(rev, timeout)
    }

    /// The number of live keys (etcd's `etcd_debugging_mvcc_keys_total`).
    pub fn key_count(&self) -> i64 {
        self.keys.load(Ordering::Acquire)
    }

    /// The last raft entry applied.
    pub fn applied_index(&self) -> AppliedIndex {
        *self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes the store occupies on disk (all fjall files, journal included): etcd's `db_size`.
    pub fn db_size_bytes(&self) -> u64 {
        self.db().db.disk_space().unwrap_or(0)
    }

    /// Bytes of data the store holds: the SST files of every keyspace plus the memtables
    /// (active and sealed) not flushed yet. This is the size etcd's space quota compares
    /// (`--quota-backend-bytes`) and what Status reports as `db_size_in_use`.
    ///
    /// fjall's journal is left out on purpose: its files are preallocated (64 MiB each), so
    /// counting them would exceed any small quota on an empty store, and what they hold is
    /// already counted in the memtables. Like etcd's bbolt file, this size does not shrink
    /// when compaction deletes history (deletions are written as tombstones) until fjall
    /// compacts its tables, which [`MvccStore::defragment`] forces.
    pub fn quota_size_bytes(&self) -> u64 {
        let d = self.db();
        d.keyspaces().iter().map(|k| k.disk_space()).sum::<u64>() + d.db.write_buffer_size()
    }

    /// [`MvccStore::quota_size_bytes`] as measured at most [`QUOTA_SIZE_MAX_AGE_MS`] ago, for
    /// the quota check of every write request. Measuring sums the size of every table of
    /// every keyspace (about 1 us per put at 1,000,000 keys, growing with the number of
    /// tables); etcd's own check (`quotaAlarmer`, etcd v3.5 `server/etcdserver/quota.go`) reads
    /// bbolt's size, which also changes only when its batch commits (every 100 ms by default).
    /// Writes admitted meanwhile can pass the quota by what 100 ms of writes add, as in etcd.
    /// [`MvccStore::defragment`] and a snapshot install measure afresh at the next call.
    pub fn recent_quota_size_bytes(&self) -> u64 {
        let now = std::time::Instant::now();
        let max_age = std::time::Duration::from_millis(QUOTA_SIZE_MAX_AGE_MS);
        // Measured under the lock: a measure that began before a defragment finished cannot
        // be stored after `forget_quota_size` (it waits for the lock) and outlive it.
        let mut kept = self.quota_size.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, size)) = *kept
            && now.duration_since(at) < max_age
        {
            return size;
        }
        let size = self.quota_size_bytes();
        *kept = Some((now, size));
        size
    }

    /// Makes the next [`MvccStore::recent_quota_size_bytes`] measure afresh.
    fn forget_quota_size(&self) {
        *self.quota_size.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Returns the space compaction freed (etcd Maintenance.Defragment): waits until the last
    /// compaction's deletion is written ([`MvccStore::wait_purged`], at most
    /// [`DEFRAG_FLUSH_DEADLINE`]: a defragment right after a compaction reclaims its space),
    /// flushes every keyspace's memtable to a table ([`MvccStore::flush_memtables`], waiting
    /// at most [`DEFRAG_FLUSH_DEADLINE`]), then major-compacts each keyspace's tables into one
    /// level, dropping overwritten entries and tombstones. Blocking, and long on a big store:
    /// call it off async threads. Safe while apply writes (fjall serialises them).
    ///
    /// # Errors
    /// [`Error::Fjall`]; [`Error::FlushTimeout`] when the flush does not finish in time (a
    /// failed fjall flush never makes it wait forever); [`Error::CorruptStore`] when the last
    /// compaction's deletion failed or is still running after the deadline.
    pub fn defragment(&self) -> Result<()> {
        self.wait_purged(self.compact_revision(), DEFRAG_FLUSH_DEADLINE)?;
        if !self.flush_memtables(DEFRAG_FLUSH_DEADLINE)? {
            return Err(Error::FlushTimeout(DEFRAG_FLUSH_DEADLINE));
        }
        let d = self.db();
        for ks in d.keyspaces() {
            ks.major_compact()?;
        }
        self.forget_quota_size();
        Ok(())
    }

    /// The (member ID, cluster ID) recorded when this member was bootstrapped, if any.
    ///
    /// # Errors
    /// [`Error::Fjall`], [`Error::CorruptStore`].
    pub fn identity(&self) -> Result<Option<(u64, u64)>> {
        match self.db().meta.get(META_IDENTITY)? {
            None => Ok(None),
            Some(v) if v.len() == 16 => Ok(Some((
                u64::from_be_bytes(v[..8].try_into().unwrap_or_default()),
                u64::from_be_bytes(v[8..].try_into().unwrap_or_default()),
            ))),
            Some(v) => Err(Error::CorruptStore(format!(
                "meta {META_IDENTITY}: {} bytes",
                v.len()
            ))),
        }
    }

    /// Records this member's (member ID, cluster ID), durably.
    ///
    /// # Errors
    /// [`Error::Fjall`].
    pub fn set_identity(&self, member_id: u64, cluster_id: u64) -> Result<()> {
        let mut v = member_id.to_be_bytes().to_vec();
        v.extend_from_slice(&cluster_id.to_be_bytes());
        self.db().meta.insert(META_IDENTITY, v)?;
        self.persist()
    }

    /// The directory the store lives in (`<data dir>/member`).
    pub fn dir(&self) -> &std::path::Path {
        &self.root
    }

    /// Seals every keyspace's memtable and waits at most `deadline` for fjall to flush them
    /// to tables, then fsyncs (fjall `PersistMode::SyncAll`); returns whether every flush
    /// finished in time. Called at a graceful stop, so the next open replays (almost) no
    /// journal; the flush only saves time at the next start (what it would write is in the
    /// journal and the WAL either way). Blocking: up to one memtable (64 MiB) written per
    /// keyspace, polled every 10 ms. A flush that fails (fjall's worker stops, the database
    /// refuses writes) shows as `false` at the deadline, never as a hang. Uses fjall 3.1's
    /// `rotate_memtable` and `sealed_memtable_count` (public, but hidden from its docs).
    ///
    /// # Errors
    /// [`Error::Fjall`] from sealing a memtable or from the fsync.
    pub fn flush_memtables(&self, deadline: std::time::Duration) -> Result<bool> {
        let d = self.db();
        for ks in d.keyspaces() {
            ks.rotate_memtable()?;
        }
        let until = std::time::Instant::now() + deadline;
        let mut flushed = true;
        while d.keyspaces().iter().any(|k| k.sealed_memtable_count() > 0) {
            if std::time::Instant::now() >= until {
                flushed = false;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.persist()?;
        Ok(flushed)
    }

    /// Hands what was applied so far to the operating system (fjall `PersistMode::Buffer`:
    /// the journal's in-process buffer, at most 8 KiB, is written out without an fsync), so
    /// it survives a kill of the process, though not a power loss. Called after each applied
    /// batch, before its clients are answered: after a `kill -9` the store's applied index
    /// then covers every acknowledged write, which `--force-new-cluster` relies on (it keeps
    /// everything up to the larger of the WAL's commit index and the applied index).
    ///
    /// # Errors
    /// [`Error::Fjall`] from the write; fjall then refuses every later write (it poisons
    /// the database), as for any journal write that fails.
    pub fn flush_journal(&self) -> Result<()> {
        Ok(self.db().db.persist(PersistMode::Buffer)?)
    }

    /// Makes everything applied so far durable (fjall `PersistMode::SyncAll`).
    ///
    /// # Errors
    /// [`Error::Fjall`].
    pub fn persist(&self) -> Result<()> {
        Ok(self.db().db.persist(PersistMode::SyncAll)?)
    }

    /// Serves a Range at `req.revision` (0 = current) with etcd's semantics: `range_end` (empty =
    /// one key, `"\0"` = every key >= `key`), `limit` + `more`, `count`, sorting, the
    /// min/max mod/create revision filters, `keys_only`, `count_only`.
    ///
    /// # Errors
    /// Outer: fatal store errors. Inner: [`RequestError::Compacted`],
    /// [`RequestError::FutureRevision`].
    pub fn range(
        &self,
        req: &RangeRequest,
    ) -> Result<std::result::Result<RangeResponse, RequestError>> {
        // Order matters: the current revision before the snapshot (so the snapshot holds
        // it), the compaction point after it (a deletion scheduled later is not in it).
        let current = self.current_revision();
        let d = self.db();
        let snap = d.db.snapshot();
        let view = View { d: &d, snap: &snap };
        read::range(self, &view, req, None, current, self.compact_revision())
    }

    /// Serves a Txn that only reads (no Put/DeleteRange in any branch) at the current revision,
    /// without a raft entry (etcd serves read-only txns the same way).
    ///
    /// # Errors
    /// Outer: fatal store errors. Inner: the request errors of its ranges.
    pub fn txn_read(
        &self,
        req: &etch_protocol::etcdserverpb::TxnRequest,
    ) -> Result<std::result::Result<TxnResponse, RequestError>> {
        let current = self.current_revision();
        let mut txn = write::WriteTxn::new(self);
        match txn.txn(req) {
            Ok(mut r) => {
                r.header = Some(etch_protocol::etcdserverpb::ResponseHeader {
                    revision: current,
                    ..Default::default()
                });
                Ok(Ok(r))
            }
            Err(write::Fail::Request(e)) => Ok(Err(e)),
            Err(write::Fail::Store(e)) => Err(e),
        }
    }

    /// Applies the write carried by raft entry (`index`, `term`), proposed by `who` (`None`:
    /// by the server itself, never checked). Entries at or below the applied index return
    /// `None` (already applied before a restart).
    ///
    /// With auth enabled, writes are checked here against the auth state at this index, as
    /// etcd's `authApplierV3` does: the key(s) a Put/DeleteRange/Txn touch, the keys attached
    /// to a lease a Put names or a LeaseRevoke revokes, root for auth changes.
    ///
    /// Before that, an active alarm refuses what etcd's alarm appliers refuse (NOSPACE:
    /// [`RequestError::NoSpace`] for puts and lease grants; CORRUPT: [`RequestError::Corrupt`]
    /// for every key-value and lease write). An `AlarmRequest` changes the alarms.
    ///
    /// # Errors
    /// Fatal store errors only: request-level failures are in [`Applied::response`].
    pub fn apply(
        &self,
        index: u64,
        term: u64,
        who: Option<&etch_protocol::etchpb::AuthInfo>,
        req: Option<&Request>,
    ) -> Result<Option<Applied>> {
        if index <= self.applied_index().index {
            return Ok(None);
        }
        if let Some(change) = req.and_then(crate::members::change_of) {
            let revision = self.current_revision();
            return Ok(self
                .apply_membership(index, term, &change)?
                .map(|r| Applied {
                    response: r.map(WriteResponse::Members),
                    revision,
                }));
        }
        let applied = AppliedIndex { index, term };
        let mut txn = write::WriteTxn::new(self);
        let allowed = alarm::gate(&self.alarm_set(), req)
            .map_err(write::Fail::Request)
            .and_then(|()| self.authorize(who, req));
        let response = match req {
            _ if allowed.is_err() => allowed.map(|()| WriteResponse::Auth {
                header: None,
                token: None,
            }),
            // An entry without a request: nothing to change (kept for forward compatibility).
            None => Err(write::Fail::Request(RequestError::EmptyKey)),
            Some(Request::Put(p)) => txn.put(p, None).map(WriteResponse::Put),
            Some(Request::DeleteRange(d)) => txn.delete_range(d).map(WriteResponse::DeleteRange),
            Some(Request::Txn(t)) => txn.txn(t).map(WriteResponse::Txn),
            Some(Request::Compaction(c)) => txn
                .compact(c)
                .map(WriteResponse::Compaction)
                .map_err(write::Fail::Request),
            Some(Request::LeaseGrant(g)) => txn.lease_grant(g).map(WriteResponse::LeaseGrant),
            Some(Request::LeaseRevoke(r)) => txn.lease_revoke(r).map(WriteResponse::LeaseRevoke),
            Some(Request::LeaseCheckpoint(c)) => {
                txn.lease_checkpoint(c).map(WriteResponse::LeaseCheckpoint)
            }
            Some(Request::Alarm(a)) => Ok(txn.alarm(a)),
            Some(
                r @ (Request::AuthEnable(_)
                | Request::AuthDisable(_)
                | Request::Authenticate(_)
                | Request::UserAdd(_)
                | Request::UserDelete(_)
                | Request::UserChangePassword(_)
                | Request::UserGrantRole(_)
                | Request::UserRevokeRole(_)
                | Request::RoleAdd(_)
                | Request::RoleDelete(_)
                | Request::RoleGrantPermission(_)
                | Request::RoleRevokePermission(_)),
            ) => txn.auth(r, who, index),
            // Handled above.
            Some(Request::MemberUpdate(_) | Request::MemberAttributes(_)) => {
                Err(write::Fail::Request(RequestError::MemberNotFound))
            }
        };
        let outcome = match response {
            Ok(resp) => txn.commit(applied, resp)?,
            Err(write::Fail::Store(e)) => return Err(e),
            Err(write::Fail::Request(err)) => {
                // Nothing changes but the applied index: the entry is consumed.
                let d = self.db();
                let mut batch = d.db.batch();
                Self::put_applied(&d, &mut batch, applied);
                batch.commit()?;
                self.set_applied(applied);
                Applied {
                    response: Err(err),
                    revision: self.current_revision(),
                }
            }
        };
        Ok(Some(outcome))
    }

    /// Whether `request` may join a run of [`MvccStore::apply_puts`]: a Put, unless auth is on
    /// and it names a lease (its permission check reads the keys attached to the lease, which
    /// earlier Puts of a run may have changed without committing yet).
    pub fn batchable(&self, request: Option<&Request>) -> bool {
        match request {
            Some(Request::Put(p)) => p.lease == 0 || !self.auth().enabled(),
            _ => false,
        }
    }

    /// Applies a run of consecutive raft entries that are all Puts in one fjall batch: one
    /// snapshot, one journal write and one applied-index record for the run instead of one
    /// per entry. Each Put still gets its own revision, checks (alarms, auth, lease) and
    /// answer, and reads what earlier Puts of the run wrote (the batch's overlay), exactly as
    /// if [`MvccStore::apply`] had applied them one by one; the run becomes visible (revision,
    /// applied index) at once, when the batch commits, so callers answer its clients after
    /// this returns. Entries at or below the applied index give `None`.
    ///
    /// Only [`MvccStore::batchable`] Puts: an entry that reads what a Put writes through
    /// another path (a lease grant or revoke, a Txn at an explicit revision, a compaction) is
    /// applied on its own, after the run before it has committed.
    ///
    /// # Errors
    /// Fatal store errors only (nothing of the run is applied then).
    pub fn apply_puts(&self, puts: &[PutEntry<'_>]) -> Result<Vec<Option<Applied>>> {
        let mut out = Vec::with_capacity(puts.len());
        let mut txn: Option<write::WriteTxn<'_>> = None;
        let mut last = None;
        let mut looked_up = self.look_up_run(puts).into_iter();
        for p in puts {
            let found = looked_up.next().flatten();
            if p.index <= self.applied_index().index {
                out.push(None);
                continue;
            }
            let t = txn.get_or_insert_with(|| write::WriteTxn::new(self));
            last = Some(AppliedIndex {
                index: p.index,
                term: p.term,
            });
            let Request::Put(put) = p.request else {
                return Err(Error::CorruptStore(format!(
                    "raft entry {} is not a Put in a run of Puts",
                    p.index
                )));
            };
            let allowed = alarm::gate(&self.alarm_set(), Some(p.request))
                .map_err(write::Fail::Request)
                .and_then(|()| self.authorize(p.who, Some(p.request)));
            let response = allowed.and_then(|()| t.put(put, found));
            let applied = match response {
                Ok(resp) => {
                    let revision = t.end_entry();
                    Applied {
                        response: Ok(WriteResponse::Put(resp)),
                        revision,
                    }
                }
                Err(write::Fail::Store(e)) => return Err(e),
                // Nothing changes but the applied index: the entry is consumed.
                Err(write::Fail::Request(err)) => Applied {
                    response: Err(err),
                    revision: t.revision(),
                },
            };
            out.push(Some(applied));
        }
        if let (Some(t), Some(applied)) = (txn, last) {
            t.commit_run(applied)?;
        }
        Ok(out)
    }

    /// Each Put's key's place in [`Newest`] and what the map holds there, in the order of
    /// `puts`, looked up together ([`Newest::get_many`]) before any of them is applied: the
    /// map changes only when the run commits, and the overlay of the run's own writes comes
    /// first ([`write::WriteTxn`]). `None` for an entry that is no Put, already applied, or
    /// whose key is too long to store.
    fn look_up_run(&self, puts: &[PutEntry<'_>]) -> Vec<Option<(KeyHash, NewestRev)>> {
        let applied = self.applied_index().index;
        let d = self.db();
        let mut escaped = Vec::new();
        let places: Vec<Option<KeyHash>> = puts
            .iter()
            .map(|p| match p.request {
                Request::Put(put) if p.index > applied && put.key.len() <= keys::MAX_KEY_BYTES => {
                    keys::index_prefix_into(&mut escaped, &put.key);
                    Some(d.newest.hashes(&escaped))
                }
                _ => None,
            })
            .collect();
        let wanted: Vec<KeyHash> = places.iter().flatten().copied().collect();
        let mut found = Vec::with_capacity(wanted.len());
        d.newest.get_many(&wanted, &mut found);
        let mut found = found.into_iter();
        places
            .into_iter()
            .map(|at| at.and_then(|at| found.next().map(|f| (at, f))))
            .collect()
    }

    /// The key-level permission check of a client write (auth changes are checked by
    /// [`auth::apply`]).
    fn authorize(
        &self,
        who: Option<&etch_protocol::etchpb::AuthInfo>,
        req: Option<&Request>,
    ) -> std::result::Result<(), write::Fail> {
        let Some(who) = who else { return Ok(()) };
        let a = self.auth();
        if !a.enabled() {
            return Ok(());
        }
        let d = self.db();
        match req {
            Some(Request::Put(p)) => {
                a.check(who, &p.key, &[], true)?;
                if p.prev_kv {
                    a.check(who, &p.key, &[], false)?;
                }
                if p.lease != 0 {
                    self.lease_keys_writable(&d, &a, who, p.lease)??;
                }
            }
            Some(Request::DeleteRange(r)) => {
                a.check(who, &r.key, &r.range_end, true)?;
                if r.prev_kv {
                    a.check(who, &r.key, &r.range_end, false)?;
                }
            }
            Some(Request::Txn(t)) => {
                let mut store_err = None;
                let r = a.check_txn(who, t, &mut |lease| match self
                    .lease_keys_writable(&d, &a, who, lease)
                {
                    Ok(r) => r,
                    Err(e) => {
                        store_err = Some(e);
                        Err(RequestError::PermissionDenied)
                    }
                });
                if let Some(e) = store_err {
                    return Err(e.into());
                }
                r?;
            }
            Some(Request::LeaseRevoke(r)) => self.lease_keys_writable(&d, &a, who, r.id)??,
            _ => {}
        }
        Ok(())
    }

    /// May `who` write every key attached to `lease` (etcd `checkLeasePuts`: revoking a lease,
    /// or attaching a key to it, deletes those keys in the end)?
    fn lease_keys_writable(
        &self,
        d: &Db,
        a: &auth::AuthState,
        who: &etch_protocol::etchpb::AuthInfo,
        lease: i64,
    ) -> Result<std::result::Result<(), RequestError>> {
        for g in d.lease_keys.prefix(lease.to_be_bytes()) {
            let (k, _) = g.into_inner()?;
            if let Err(e) = a.check(who, &k[8..], &[], true) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    /// Records `applied` for an entry that carries no key-value write (empty entries, config
    /// changes), in its own batch.
    ///
    /// # Errors
    /// [`Error::Fjall`].
    pub fn mark_applied(&self, index: u64, term: u64) -> Result<()> {
        if index <= self.applied_index().index {
            return Ok(());
        }
        let applied = AppliedIndex { index, term };
        let d = self.db();
        let mut batch = d.db.batch();
        Self::put_applied(&d, &mut batch, applied);
        batch.commit()?;
        self.set_applied(applied);
        Ok(())
    }

    /// Every event with main revision in `[from, to]`, in revision order: the history watch
    /// catch-up reads.
    ///
    /// # Errors
    /// [`Error::Fjall`], [`Error::CorruptStore`].
    pub fn events(&self, from: i64, to: i64) -> Result<Vec<Event>> {
        let lo = Revision::new(from, 0).to_bytes();
        let hi = Revision::new(to.saturating_add(1), 0).to_bytes();
        let mut out = Vec::new();
        for g in self.db().kv.range(lo.as_slice()..hi.as_slice()) {
            let (k, v) = g.into_inner()?;
            let kv = decode_kv(&v)?;
            let ty = if k.len() == 17 {
                etch_protocol::mvccpb::event::EventType::Delete
            } else {
                etch_protocol::mvccpb::event::EventType::Put
            };
            out.push(Event {
                r#type: ty as i32,
                kv: Some(kv),
                prev_kv: None,
            });
        }
        Ok(out)
    }

    fn put_applied(d: &Db, batch: &mut fjall::OwnedWriteBatch, a: AppliedIndex) {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&a.index.to_be_bytes());
        v[8..].copy_from_slice(&a.term.to_be_bytes());
        batch.insert(&d.meta, META_APPLIED, v.to_vec());
    }

    fn set_applied(&self, a: AppliedIndex) {
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = a;
    }

    /// The newest index entry of `key` as of the committed state `v` (the write path: `v` is
    /// the snapshot a batch started from, and only the apply thread commits), from
    /// [`Newest`]: read there for a key of its own, a point read for a shared entry, and
    /// [`MvccStore::latest`] when that misses.
    ///
    /// `key`'s escaped form ([`index_prefix`]) is `prefix` and its place in [`Newest`] is `at`
    /// (`Newest::hashes(prefix)`): a write computes both once for its lookup and its index
    /// entry. `found` is what [`Newest`] knew of `at` if the caller looked it up already (a run
    /// of puts, [`Newest::get_many`], which no write changes before the run commits).
    pub(crate) fn newest(
        &self,
        v: &View,
        key: &[u8],
        prefix: &[u8],
        at: KeyHash,
        found: Option<NewestRev>,
    ) -> Result<Option<(Revision, IndexValue)>> {
        debug_assert_eq!(prefix, &index_prefix(key)[..], "the prefix is the key's");
        if prefix.len() + 16 > keys::FJALL_MAX_KEY_BYTES {
            return Ok(None);
        }
        let rev = match found.unwrap_or_else(|| v.d.newest.get(at)) {
            NewestRev::Absent => return Ok(None),
            NewestRev::Unknown => return self.latest(v, key, i64::MAX),
            NewestRev::Known(rev, iv) => return Ok(Some((rev, iv))),
            NewestRev::AtMost(rev) => rev,
        };
        let mut k = Vec::with_capacity(prefix.len() + 16);
        k.extend_from_slice(prefix);
        k.extend_from_slice(&rev.to_bytes());
        if let Some(value) = v.snap.get(&v.d.index, &k)? {
            let iv = IndexValue::decode(&value)
                .ok_or_else(|| Error::CorruptStore("bad index value".into()))?;
            return Ok(Some((rev, iv)));
        }
        self.latest(v, key, i64::MAX)
    }

    /// The newest index entry of `key` at or below `rev` (tombstones included).
    fn latest(&self, v: &View, key: &[u8], rev: i64) -> Result<Option<(Revision, IndexValue)>> {
        let lo = index_prefix(key);
        // A key whose index key would not fit in a fjall key was never stored (and fjall
        // panics on such a bound): a client may send one, in a Range or a Txn compare.
        if lo.len() + 16 > keys::FJALL_MAX_KEY_BYTES {
            return Ok(None);
        }
        let mut hi = lo.clone();
        hi.extend_from_slice(&Revision::new(rev, i64::MAX).to_bytes());
        let Some(g) = v
            .snap
            .range(&v.d.index, lo.as_slice()..=hi.as_slice())
            .next_back()
        else {
            return Ok(None);
        };
        let (k, v) = g.into_inner()?;
        // Checked, not sliced: an index key shorter than a revision (a damaged store or
        // snapshot) is corruption, not a panic.
        let (_, rev) = keys::split_index_key(&k)
            .ok_or_else(|| Error::CorruptStore("short index key".into()))?;
        let iv =
            IndexValue::decode(&v).ok_or_else(|| Error::CorruptStore("bad index value".into()))?;
        Ok(Some((rev, iv)))
    }

    /// Every granted lease, by ID.
    ///
    /// # Errors
    /// Store errors.
    pub fn leases(&self) -> Result<Vec<LeaseRecord>> {
        let d = self.db();
        let mut out = Vec::new();
        for g in d.lease.iter() {
            let (k, v) = g.into_inner()?;
            out.push(decode_lease(&k, &v)?);
        }
        Ok(out)
    }

    /// Lease `id` and the keys attached to it (when `with_keys`), or `None` when not granted.
    ///
    /// # Errors
    /// Store errors.
    pub fn lease(&self, id: i64, with_keys: bool) -> Result<Option<(LeaseRecord, Vec<Bytes>)>> {
        let d = self.db();
        let Some(v) = d.lease.get(id.to_be_bytes())? else {
            return Ok(None);
        };
        let rec = decode_lease(&id.to_be_bytes(), &v)?;
        let mut keys = Vec::new();
        if with_keys {
            for g in d.lease_keys.prefix(id.to_be_bytes()) {
                let (k, _) = g.into_inner()?;
                keys.push(Bytes::copy_from_slice(&k[8..]));
            }
        }
        Ok(Some((rec, keys)))
    }

    /// Whether lease `id` is granted (the `lease` keyspace: lease id, 8 bytes BE -> TTL).
    /// A failed read counts as absent; the Put is then refused, never applied wrongly.
    fn lease_exists(&self, d: &Db, id: i64) -> bool {
        matches!(d.lease.contains_key(id.to_be_bytes()), Ok(true))
    }

    /// The stored KeyValue of a live (non-tombstone) revision.
    fn kv_at(&self, v: &View, rev: Revision) -> Result<KeyValue> {
        let value = v
            .snap
            .get(&v.d.kv, kv_key(rev, false))?
            .ok_or_else(|| Error::CorruptStore(format!("missing kv at {rev:?}")))?;
        decode_kv(&value)
    }
}

/// `lease`: 8-byte BE id -> ttl (8 bytes BE) ++ remaining (8 bytes BE).
pub(crate) fn encode_lease(ttl: i64, remaining: i64) -> Vec<u8> {
    let mut v = ttl.to_be_bytes().to_vec();
    v.extend_from_slice(&remaining.to_be_bytes());
    v
}

fn decode_lease(k: &[u8], v: &[u8]) -> Result<LeaseRecord> {
    let bad = || Error::CorruptStore("bad lease record".into());
    let id = i64::from_be_bytes(k.try_into().map_err(|_| bad())?);
    if v.len() != 16 {
        return Err(bad());
    }
    Ok(LeaseRecord {
        id,
        ttl: i64::from_be_bytes(v[..8].try_into().map_err(|_| bad())?),
        remaining: i64::from_be_bytes(v[8..].try_into().map_err(|_| bad())?),
    })
}

/// `lease_keys`: lease id (8 bytes BE) ++ user key -> empty.
pub(crate) fn lease_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut k = id.to_be_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

fn decode_kv(v: &[u8]) -> Result<KeyValue> {
    KeyValue::decode(Bytes::copy_from_slice(v))
        .map_err(|e| Error::CorruptStore(format!("bad KeyValue: {e}")))
}

#[cfg(test)]
mod tests;
