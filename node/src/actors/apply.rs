//! The MVCC apply actor: applies committed raft entries to the MVCC store, in order, on its own
//! arbiter (thread): fjall writes are blocking IO), answers the waiting client
//! of each entry by request id, and publishes the applied index for linearizable reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use raft::eraftpb::Entry;
use tokio::sync::{oneshot, watch};

use etch_storage::members::Membership;
use etch_storage::mvcc::MvccStore;

use crate::core::apply::{ApplyCore, EntryApplied, TokenChange};
use crate::error::ApiError;
use etch_storage::mvcc::WriteResponse;

/// Apply slower than this for one batch is logged at warn (etcd: 100 ms).
const SLOW_APPLY: Duration = Duration::from_millis(100);

pub use crate::core::apply::WriteResult;

/// What a proposer waits for: the applied result of its request, or why it was never
/// proposed (no leader, not leader in the asked term, the member stopping).
pub type Answer = Result<WriteResponse, ApiError>;

/// Clients waiting for their proposals, by request id (etcd `wait.Wait`): apply answers the
/// applied ones, consensus the ones raft refused, so a proposer waits on one channel only
/// (a proposal costs no wake-up of its task before its answer).
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
}

impl Waiters {
    /// Registers request `id`; the receiver resolves when the entry carrying it is applied,
    /// or when it fails before reaching the log ([`Waiters::fail`]).
    pub fn register(&self, id: u64) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    /// Drops the waiter of `id` (its proposal timed out, or never reached consensus).
    pub fn cancel(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Answers the waiter of `id` with `e`: its proposal was not taken.
    pub fn fail(&self, id: u64, e: ApiError) {
        self.trigger(id, Err(e));
    }

    fn trigger(&self, id: u64, r: Answer) {
        if let Some(tx) = self.lock().remove(&id) {
            let _ = tx.send(r);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Answer>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The actor.
pub struct ApplyActor {
    core: ApplyCore,
    waiters: Arc<Waiters>,
    applied_tx: watch::Sender<u64>,
    revision_tx: watch::Sender<i64>,
    /// Whether any watcher exists ([`crate::actors::watch::WatchActor::new`]): without one, a
    /// new revision is recorded in `revision_tx` without waking the watch actor.
    watched: Arc<AtomicBool>,
    lessor: Addr<crate::actors::lease::LeaseActor>,
    tokens: Arc<crate::state::Tokens>,
    /// Consensus, told of batches with a configuration change or a new membership, and of
    /// failures ([`Applied`]).
    consensus: Recipient<Applied>,
    /// A store write failed: no later entry is applied on a store that misses an earlier one.
    failed: bool,
}

impl ApplyActor {
    /// An apply actor over `store`, answering `waiters`, publishing the applied index to
    /// `applied_tx` and the store's revision to `revision_tx` (watch fanout; its receiver is
    /// woken only while `watched` is set), keeping the simple `tokens` in step with applied
    /// auth changes, reporting to `consensus` what it must hear of ([`Applied`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<MvccStore>,
        waiters: Arc<Waiters>,
        applied_tx: watch::Sender<u64>,
        revision_tx: watch::Sender<i64>,
        watched: Arc<AtomicBool>,
        lessor: Addr<crate::actors::lease::LeaseActor>,
        tokens: Arc<crate::state::Tokens>,
        consensus: Recipient<Applied>,
    ) -> ApplyActor {
        ApplyActor {
            core: ApplyCore::new(store),
            waiters,
            applied_tx,
            revision_tx,
            watched,
            lessor,
            tokens,
            consensus,
            failed: false,
        }
    }
}

impl ApplyActor {
    /// Carries out what applying one entry changed beyond the store: the lessor and the simple
    /// tokens learn their changes, the proposer gets its answer.
    fn deliver(&self, a: EntryApplied) {
        if let Some(change) = a.lease {
            self.lessor
                .do_send(crate::actors::lease::LeaseApplied(change));
        }
        match a.token {
            Some(TokenChange::Assign { token, user }) => self.tokens.assign(token, user),
            Some(TokenChange::InvalidateUser(u)) => self.tokens.invalidate_user(&u),
            Some(TokenChange::Clear) => self.tokens.clear(),
            None => {}
        }
        self.waiters
            .trigger(a.request_id, a.result.map_err(ApiError::from));
    }

    /// Records the store's revision for the watch actor, waking it only while a watcher
    /// exists: with none (most writes of a plain key-value load) the wake-up would cost a
    /// thread switch per applied batch for nothing. `watched` is read after the revision is
    /// written, under the channel's lock, and the watch actor sets it before it reads the
    /// revision for a new watcher, so either the actor is woken or it reads this revision.
    fn publish_revision(&self) {
        let now = self.core.store().current_revision();
        self.revision_tx.send_if_modified(|r| {
            let changed = now != *r;
            *r = now;
            changed && self.watched.load(Ordering::SeqCst)
        });
    }
}

impl Actor for ApplyActor {
    type Context = Context<Self>;
}

/// Sent by consensus with entries that are committed and persisted locally, in log order. No
/// reply: the applied index reaches consensus through the applied-index channel (read at its
/// next turn, [`crate::actors::consensus::ConsensusActor`]), so an apply batch costs no
/// wake-up of the consensus thread. A batch holding a configuration change entry, one that
/// changed the membership (a member's published attributes too), and any batch that fails, is
/// reported with [`Applied`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyCommitted {
    /// Committed entries, in index order.
    pub entries: Vec<Entry>,
    /// Whether they hold a configuration change entry ([`has_conf_change`], found by
    /// consensus, which counts such batches until they are reported).
    pub conf_change: bool,
}

/// Sent by apply to consensus for a batch holding a configuration change entry, one that
/// changed the membership (with the membership after it), or a batch that failed (the store is
/// broken: fatal).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Applied {
    /// The batch's last index.
    pub index: u64,
    /// Whether the batch held a configuration change entry ([`has_conf_change`]).
    pub conf_change: bool,
    /// The membership after the batch when it changed; the store's error when it failed.
    pub outcome: Result<Option<Membership>, etch_storage::Error>,
}

/// Whether `entries` hold a configuration change, whose batch consensus must hear about
/// ([`Applied`]): raft-rs takes the new configuration before the next one may be proposed.
pub fn has_conf_change(entries: &[Entry]) -> bool {
    entries
        .iter()
        .any(|e| e.get_entry_type() != raft::eraftpb::EntryType::EntryNormal)
}

impl Handler<ApplyCommitted> for ApplyActor {
    type Result = ();

    fn handle(&mut self, m: ApplyCommitted, _: &mut Self::Context) {
        crate::metrics::dequeued("apply");
        let last = m
            .entries
            .last()
            .map_or(self.core.store().applied_index().index, |e| e.index);
        let outcome = self.apply(&m.entries, last);
        if m.conf_change || !matches!(outcome, Ok(None)) {
            self.consensus.do_send(Applied {
                index: last,
                conf_change: m.conf_change,
                outcome,
            });
        }
    }
}

impl ApplyActor {
    /// Applies `entries` (ending at `last`), answers their proposers and publishes the applied
    /// index and revision. Returns the membership after them when they changed it.
    fn apply(
        &mut self,
        entries: &[Entry],
        last: u64,
    ) -> Result<Option<Membership>, etch_storage::Error> {
        if self.failed {
            return Err(etch_storage::Error::CorruptStore(
                "an earlier write to the store failed".into(),
            ));
        }
        let start = Instant::now();
        let mut membership = None;
        let applied = self
            .core
            .apply_entries(entries)
            .inspect_err(|_| self.failed = true)?;
        let took = start.elapsed();
        crate::metrics::hot()
            .backend_commit
            .record(took.as_secs_f64());
        // Publish the revision before answering: a watch created by a client after its write
        // was acknowledged must start after that write.
        self.publish_revision();
        for mut applied in applied {
            if let Some(m) = applied.membership.take() {
                membership = Some(m);
            }
            count_applied(&applied.result);
            tracing::trace!(
                index = applied.index,
                revision = applied.revision,
                "applied"
            );
            self.deliver(applied);
        }
        if took > SLOW_APPLY {
            tracing::warn!(?took, entries = entries.len(), "apply took too long");
        }
        self.applied_tx.send_replace(last);
        self.publish_revision();
        Ok(membership)
    }
}

/// Counts an applied write in etcd's `etcd_mvcc_*_total` counters (a Txn also counts the
/// puts and deletes of its branch, as etcd's store does).
fn count_applied(r: &Result<etch_storage::mvcc::WriteResponse, etch_storage::mvcc::RequestError>) {
    use crate::metrics as m;
    use etch_protocol::etcdserverpb::response_op::Response as Op;
    use etch_storage::mvcc::WriteResponse as W;
    fn txn(t: &etch_protocol::etcdserverpb::TxnResponse) {
        m::hot().txn_total.increment(1);
        for op in &t.responses {
            match &op.response {
                Some(Op::ResponsePut(_)) => m::hot().put_total.increment(1),
                Some(Op::ResponseDeleteRange(_)) => m::hot().delete_total.increment(1),
                Some(Op::ResponseRange(_)) => m::hot().range_total.increment(1),
                Some(Op::ResponseTxn(t)) => txn(t),
                None => {}
            }
        }
    }
    match r {
        Ok(W::Put(_)) => m::hot().put_total.increment(1),
        Ok(W::DeleteRange(_)) => m::hot().delete_total.increment(1),
        Ok(W::Txn(t)) => txn(t),
        _ => {}
    }
}

/// Sent by consensus before releasing the raft log: make the store durable (fsync).
#[derive(Message)]
#[rtype(result = "Result<(), etch_storage::Error>")]
pub struct PersistStore;

impl Handler<PersistStore> for ApplyActor {
    type Result = Result<(), etch_storage::Error>;

    fn handle(&mut self, _: PersistStore, _: &mut Self::Context) -> Self::Result {
        self.core.store().persist()
    }
}

/// Sent by consensus to replace the store by a snapshot received from the leader. Replies
/// with the new store's applied index and its membership.
#[derive(Message)]
#[rtype(result = "Result<(u64, Membership), etch_storage::Error>")]
pub struct InstallStore(pub etch_storage::mvcc::snapshot::Ingest);

impl Handler<InstallStore> for ApplyActor {
    type Result = Result<(u64, Membership), etch_storage::Error>;

    fn handle(&mut self, m: InstallStore, _: &mut Self::Context) -> Self::Result {
        let applied = self.core.store().install(m.0)?;
        // The lessor's table was the old store's: it takes the snapshot's leases.
        self.lessor.do_send(crate::actors::lease::LeaseApplied(
            crate::core::apply::LeaseChange::Replaced(self.core.store().leases()?),
        ));
        self.revision_tx
            .send_replace(self.core.store().current_revision());
        self.applied_tx.send_if_modified(|a| {
            let grew = applied > *a;
            *a = (*a).max(applied);
            grew
        });
        Ok((applied, self.core.store().membership()?))
    }
}
