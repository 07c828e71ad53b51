//! Applying committed raft entries to the MVCC store, with no actor around it: each entry is
//! decoded and applied in one store batch together with its applied index (etcd's consistent
//! index: replay after a crash skips what is already applied), and what the rest of the node
//! must learn from it is returned instead of sent: the proposer's answer by request id, the
//! lease and token changes, the new revision. `crate::actors::apply::ApplyActor` carries these out;
//! the cluster simulator checks them.

use std::sync::Arc;

use prost::Message as _;
use raft::eraftpb::{Entry, EntryType};

use etch_protocol::etchpb::InternalRequest;
use etch_protocol::etchpb::MemberChange;
use etch_protocol::etchpb::internal_request::Request;
use etch_storage::members::{self, Change, Membership};
use etch_storage::mvcc::{MvccStore, PutEntry, RequestError, WriteResponse};

/// What a proposer receives once its entry is applied.
pub type WriteResult = Result<WriteResponse, RequestError>;

/// A lease change every member's lessor must learn (only the leader tracks deadlines).
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseChange {
    /// Lease `id` granted with a TTL of `ttl` seconds.
    Granted(i64, i64),
    /// Lease `id` revoked (its keys are deleted).
    Revoked(i64),
    /// Remaining TTLs (seconds) checkpointed, by lease id.
    Checkpointed(Vec<(i64, i64)>),
    /// The store was replaced by a snapshot from the leader: these are all its leases now.
    Replaced(Vec<etch_storage::mvcc::LeaseRecord>),
}

/// A change to the simple auth tokens that follows an applied auth request (etcd's token
/// provider).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenChange {
    /// Authenticate succeeded: `token` now names `user`.
    Assign {
        /// The token.
        token: String,
        /// The user name.
        user: String,
    },
    /// The user was deleted or changed its password: its tokens are void.
    InvalidateUser(String),
    /// Auth was disabled: every token is void.
    Clear,
}

/// The outcome of one applied entry that carried a request.
#[derive(Debug)]
pub struct EntryApplied {
    /// Raft index of the entry.
    pub index: u64,
    /// The proposer's request id (its waiter).
    pub request_id: u64,
    /// The answer for the proposer.
    pub result: WriteResult,
    /// The store's revision after the entry.
    pub revision: i64,
    /// The lease change it made, if any.
    pub lease: Option<LeaseChange>,
    /// The token change it made, if any.
    pub token: Option<TokenChange>,
    /// The membership after the entry, for a membership entry (raft configuration change,
    /// MemberUpdate, published attributes), even one the store had already applied: raft-rs's
    /// configuration and the transport follow it.
    pub membership: Option<Membership>,
}

/// Applies committed entries to one store.
#[derive(Debug, Clone)]
pub struct ApplyCore {
    store: Arc<MvccStore>,
}

impl ApplyCore {
    /// A core over `store`.
    pub fn new(store: Arc<MvccStore>) -> ApplyCore {
        ApplyCore { store }
    }

    /// The store.
    pub fn store(&self) -> &Arc<MvccStore> {
        &self.store
    }

    /// Applies one committed entry. Leader no-ops and configuration changes only advance the
    /// applied index (`None`); an entry at or below the applied index is skipped by the store
    /// (`None`). The store's `RequestError`s (a failed compare, a missing lease...) are the
    /// proposer's answer, not errors of the apply.
    ///
    /// # Errors
    /// Store failures, and an entry that does not decode: it passed the WAL's CRC, so it was
    /// written like this (a bug or an incompatible version); never guess, stop.
    pub fn apply(&self, e: &Entry) -> Result<Option<EntryApplied>, etch_storage::Error> {
        if e.get_entry_type() == EntryType::EntryConfChangeV2 {
            return self.apply_conf_change(e);
        }
        if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
            self.store.mark_applied(e.index, e.term)?;
            return Ok(None);
        }
        let req = decode(e)?;
        self.apply_decoded(e, req)
    }

    /// Applies committed `entries` in order, as [`ApplyCore::apply`] one by one would, but
    /// runs of consecutive Puts ([`MvccStore::batchable`]) in one store batch
    /// ([`MvccStore::apply_puts`]: one snapshot, one commit per run). Returns what each entry
    /// that changed anything did, in order; everything returned is committed and handed to the
    /// operating system ([`MvccStore::flush_journal`]), so its clients may be answered.
    ///
    /// # Errors
    /// As [`ApplyCore::apply`]; entries before the failing one may have been applied.
    pub fn apply_entries(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<EntryApplied>, etch_storage::Error> {
        let mut out = Vec::with_capacity(entries.len());
        let mut run: Vec<(&Entry, InternalRequest)> = Vec::new();
        for e in entries {
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                let req = decode(e)?;
                if self.store.batchable(req.request.as_ref()) {
                    run.push((e, req));
                    continue;
                }
                self.apply_run(&mut run, &mut out)?;
                out.extend(self.apply_decoded(e, req)?);
            } else {
                self.apply_run(&mut run, &mut out)?;
                out.extend(self.apply(e)?);
            }
        }
        self.apply_run(&mut run, &mut out)?;
        // Before any client is answered: a kill of the process then keeps what was answered.
        self.store.flush_journal()?;
        Ok(out)
    }

    /// Applies (and empties) a run of Puts in one store batch, appending what they did.
    fn apply_run(
        &self,
        run: &mut Vec<(&Entry, InternalRequest)>,
        out: &mut Vec<EntryApplied>,
    ) -> Result<(), etch_storage::Error> {
        if run.is_empty() {
            return Ok(());
        }
        let puts = run
            .iter()
            .map(|(e, req)| {
                let request = req.request.as_ref().ok_or_else(|| {
                    etch_storage::Error::CorruptStore(format!("raft entry {}: no request", e.index))
                })?;
                Ok(PutEntry {
                    index: e.index,
                    term: e.term,
                    who: req.auth.as_ref(),
                    request,
                })
            })
            .collect::<Result<Vec<_>, etch_storage::Error>>()?;
        let applied = self.store.apply_puts(&puts)?;
        for ((e, req), a) in run.iter().zip(applied) {
            if let Some(a) = a {
                out.push(entry_applied(e, req, a, None));
            }
        }
        run.clear();
        Ok(())
    }

    /// [`ApplyCore::apply`] of a normal entry whose request `req` is decoded.
    fn apply_decoded(
        &self,
        e: &Entry,
        req: InternalRequest,
    ) -> Result<Option<EntryApplied>, etch_storage::Error> {
        let membership_entry = req.request.as_ref().and_then(members::change_of).is_some();
        let Some(applied) =
            self.store
                .apply(e.index, e.term, req.auth.as_ref(), req.request.as_ref())?
        else {
            return Ok(None);
        };
        let membership = match membership_entry {
            true => Some(self.store.membership()?),
            false => None,
        };
        Ok(Some(entry_applied(e, &req, applied, membership)))
    }
}

/// What entry `e` carrying `req` did, from the store's answer.
fn entry_applied(
    e: &Entry,
    req: &InternalRequest,
    applied: etch_storage::mvcc::Applied,
    membership: Option<Membership>,
) -> EntryApplied {
    EntryApplied {
        membership,
        index: e.index,
        request_id: req.id,
        lease: lease_change(&applied.response, req.request.as_ref()),
        token: token_change(&applied.response, req.request.as_ref()),
        result: applied.response,
        revision: applied.revision,
    }
}

/// The request a normal entry carries.
///
/// # Errors
/// It does not decode: it passed the WAL's CRC, so it was written like this; never guess.
fn decode(e: &Entry) -> Result<InternalRequest, etch_storage::Error> {
    // From the entry's `Bytes`: the request's keys and values are slices of it, not copies.
    InternalRequest::decode(e.data.clone()).map_err(|err| {
        etch_storage::Error::CorruptStore(format!("raft entry {} does not decode: {err}", e.index))
    })
}

impl ApplyCore {
    /// A raft configuration change: its context names the member and the proposer; the
    /// change type says what happens to it (an `AddNode` of a learner promotes it).
    fn apply_conf_change(&self, e: &Entry) -> Result<Option<EntryApplied>, etch_storage::Error> {
        use protobuf::Message as _;
        use raft::eraftpb::{ConfChangeType, ConfChangeV2};
        let corrupt = |what: String| {
            etch_storage::Error::CorruptStore(format!("raft entry {}: {what}", e.index))
        };
        let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(|err| corrupt(err.to_string()))?;
        let ctx = MemberChange::decode(&e.context[..]).map_err(|err| corrupt(err.to_string()))?;
        let (Some(single), Some(member)) = (cc.changes.first(), ctx.member) else {
            return Err(corrupt("configuration change without a member".into()));
        };
        let id = single.node_id;
        let current = self.store.membership()?;
        let change = match single.get_change_type() {
            ConfChangeType::AddNode if members::get(&current, id).is_some_and(|m| m.is_learner) => {
                Change::Promote(id)
            }
            ConfChangeType::AddNode => Change::Add(etch_protocol::etcdserverpb::Member {
                is_learner: false,
                ..member
            }),
            ConfChangeType::AddLearnerNode => Change::Add(etch_protocol::etcdserverpb::Member {
                is_learner: true,
                ..member
            }),
            ConfChangeType::RemoveNode => Change::Remove(id),
        };
        let outcome = self.store.apply_membership(e.index, e.term, &change)?;
        let membership = match &outcome {
            Some(Ok(m)) => m.clone(),
            _ => self.store.membership()?,
        };
        Ok(Some(EntryApplied {
            index: e.index,
            // Nobody waits for an entry applied before (a replay): 0 names no waiter.
            request_id: if outcome.is_some() { ctx.request_id } else { 0 },
            result: outcome
                .unwrap_or_else(|| Ok(membership.clone()))
                .map(WriteResponse::Members),
            revision: self.store.current_revision(),
            lease: None,
            token: None,
            membership: Some(membership),
        }))
    }
}

/// The lease change an applied request made.
fn lease_change(r: &WriteResult, req: Option<&Request>) -> Option<LeaseChange> {
    match (r, req) {
        (Ok(WriteResponse::LeaseGrant(g)), _) => Some(LeaseChange::Granted(g.id, g.ttl)),
        (Ok(WriteResponse::LeaseRevoke(_)), Some(Request::LeaseRevoke(rv))) => {
            Some(LeaseChange::Revoked(rv.id))
        }
        (Ok(WriteResponse::LeaseCheckpoint(_)), Some(Request::LeaseCheckpoint(c))) => {
            Some(LeaseChange::Checkpointed(
                c.checkpoints
                    .iter()
                    .map(|cp| (cp.id, cp.remaining_ttl))
                    .collect(),
            ))
        }
        _ => None,
    }
}

/// The token change an applied auth request made: Authenticate assigns one; deleting a user or
/// changing its password voids its tokens; disabling auth voids all.
fn token_change(r: &WriteResult, req: Option<&Request>) -> Option<TokenChange> {
    let Ok(WriteResponse::Auth { token, .. }) = r else {
        return None;
    };
    match (req, token) {
        (Some(Request::Authenticate(a)), Some(t)) => Some(TokenChange::Assign {
            token: t.clone(),
            user: a.name.clone(),
        }),
        (Some(Request::UserDelete(u)), _) => Some(TokenChange::InvalidateUser(u.name.clone())),
        (Some(Request::UserChangePassword(u)), _) => {
            Some(TokenChange::InvalidateUser(u.name.clone()))
        }
        (Some(Request::AuthDisable(_)), _) => Some(TokenChange::Clear),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etch_protocol::etcdserverpb::{LeaseGrantRequest, PutRequest};

    fn entry(index: u64, id: u64, r: Request) -> Entry {
        Entry {
            index,
            term: 1,
            data: InternalRequest {
                id,
                request: Some(r),
                auth: None,
            }
            .encode_to_vec()
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_apply_once_and_report_their_changes() {
        let dir = tempfile::tempdir().unwrap();
        let core = ApplyCore::new(Arc::new(MvccStore::open(dir.path()).unwrap()));
        // A leader's empty entry only advances the applied index.
        let noop = Entry {
            index: 1,
            term: 1,
            ..Default::default()
        };
        assert!(core.apply(&noop).unwrap().is_none());
        let put = entry(
            2,
            77,
            Request::Put(PutRequest {
                key: b"k".to_vec().into(),
                value: b"v".to_vec().into(),
                ..Default::default()
            }),
        );
        let a = core.apply(&put).unwrap().unwrap();
        assert_eq!((a.index, a.request_id, a.revision), (2, 77, 2));
        assert!(a.result.is_ok() && a.lease.is_none() && a.token.is_none());
        // Replay of an applied entry is skipped.
        assert!(core.apply(&put).unwrap().is_none());
        assert_eq!(core.store().current_revision(), 2);
        let grant = entry(
            3,
            78,
            Request::LeaseGrant(LeaseGrantRequest { id: 5, ttl: 10 }),
        );
        let a = core.apply(&grant).unwrap().unwrap();
        assert_eq!(a.lease, Some(LeaseChange::Granted(5, 10)));
        // Garbage that passed the WAL stops the member.
        let bad = Entry {
            index: 4,
            data: vec![0xff, 0xff, 0xff].into(),
            ..Default::default()
        };
        assert!(core.apply(&bad).is_err());
    }
}
