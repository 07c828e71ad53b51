//! Writes: one [`WriteTxn`] per applied raft entry. Changes accumulate in a fjall batch and an
//! overlay (so later ops of a Txn read earlier ones' writes, as in etcd); [`WriteTxn::commit`]
//! writes the batch with the new revision and the applied index, atomically.

use std::sync::Arc;

use etch_protocol::etcdserverpb::request_op::Request as Op;
use etch_protocol::etcdserverpb::response_op::Response as OpResponse;
use etch_protocol::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseCheckpointRequest, LeaseCheckpointResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, ResponseHeader,
    ResponseOp, TxnRequest, TxnResponse,
};
use etch_protocol::mvccpb::KeyValue;

use super::keys::{IndexValue, MAX_KEY_BYTES, Revision, index_prefix_into, kv_key};
use super::read::{self, Overlay};
use super::{
    Applied, AppliedIndex, Db, KeyHash, MAX_LEASE_TTL_SECONDS, META_COMPACT_REV, META_CURRENT_REV,
    META_KEY_COUNT, MvccStore, RequestError, View, WriteResponse, encode_lease, lease_key,
};
use crate::error::{Error, Result};

type Res<T> = std::result::Result<T, RequestError>;

/// A key's state as a write sees it ([`WriteTxn::current`]).
struct Current {
    create_revision: i64,
    version: i64,
    lease: i64,
    /// The whole key-value, when asked for.
    kv: Option<KeyValue>,
}

pub(super) struct WriteTxn<'a> {
    store: &'a MvccStore,
    d: Arc<Db>,
    /// What this entry reads: the database as of the previous entry (see [`View`]).
    snap: fjall::Snapshot,
    batch: fjall::OwnedWriteBatch,
    /// Revision before this write.
    base: i64,
    /// Next sub revision within `base + 1`.
    sub: i64,
    overlay: Overlay,
    /// Keys created minus keys deleted by the current entry (its changes are counted by
    /// `sub`; the events watchers get are read back from the `kv` keyspace,
    /// [`MvccStore::events`]).
    entry_delta: i64,
    compact_to: Option<i64>,
    /// The auth state this entry makes current (auth changes only).
    auth_next: Option<crate::auth::AuthState>,
    /// The alarms this entry makes current (alarm changes only).
    alarms_next: Option<super::alarm::AlarmSet>,
    /// Keys created minus keys deleted by the entries ended so far (a run of Puts).
    key_delta: i64,
    /// Index entries in the batch, as `(key's place, entry)` for [`super::Newest`] once
    /// committed.
    written: Vec<(KeyHash, super::NewestEntry)>,
    /// The escaped form ([`super::index_prefix`]) of the key whose index entry is written
    /// next ([`WriteTxn::escape`]); reused, like `scratch`.
    escaped: Vec<u8>,
    /// Reused for each put's `kv` value and for every index key this transaction encodes:
    /// fjall copies what it is given into its own buffer, so a fresh `Vec` per item would only
    /// be freed again.
    scratch: Vec<u8>,
}

/// Request-level failure, or a fatal store error.
pub(super) enum Fail {
    Request(RequestError),
    Store(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Store(e)
    }
}
impl From<fjall::Error> for Fail {
    fn from(e: fjall::Error) -> Fail {
        Fail::Store(e.into())
    }
}
impl From<RequestError> for Fail {
    fn from(e: RequestError) -> Fail {
        Fail::Request(e)
    }
}

type FResult<T> = std::result::Result<T, Fail>;

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

impl<'a> WriteTxn<'a> {
    pub(super) fn new(store: &'a MvccStore) -> WriteTxn<'a> {
        let d = store.db();
        WriteTxn {
            store,
            batch: d.db.batch(),
            snap: d.db.snapshot(),
            d,
            base: store.current_revision(),
            sub: 0,
            overlay: Overlay::new(),
            entry_delta: 0,
            compact_to: None,
            auth_next: None,
            alarms_next: None,
            key_delta: 0,
            written: Vec::new(),
            scratch: Vec::new(),
            escaped: Vec::new(),
        }
    }

    fn main(&self) -> i64 {
        self.base + 1
    }

    fn view(&self) -> View<'_> {
        View {
            d: &self.d,
            snap: &self.snap,
        }
    }

    /// Revision a read in this txn sees: the base, plus this txn's changes (overlay).
    fn read_rev(&self) -> i64 {
        self.base
    }

    /// Applies Put `p`; `looked_up` is its key's place in [`super::Newest`] and what the map
    /// held there, when the caller looked the run's keys up together
    /// ([`super::Newest::get_many`]; they must be the key's own).
    pub(super) fn put(
        &mut self,
        p: &PutRequest,
        looked_up: Option<(KeyHash, super::NewestRev)>,
    ) -> FResult<PutResponse> {
        self.put_inner(p, looked_up)
    }

    pub(super) fn delete_range(&mut self, d: &DeleteRangeRequest) -> FResult<DeleteRangeResponse> {
        self.delete_inner(d)
    }

    pub(super) fn txn(&mut self, r: &TxnRequest) -> FResult<TxnResponse> {
        self.txn_inner(r)
    }

    pub(super) fn lease_grant(&mut self, g: &LeaseGrantRequest) -> FResult<LeaseGrantResponse> {
        if g.ttl > MAX_LEASE_TTL_SECONDS {
            return Err(RequestError::LeaseTtlTooLarge.into());
        }
        if self.store.lease_exists(&self.d, g.id) {
            return Err(RequestError::LeaseExists.into());
        }
        self.batch
            .insert(&self.d.lease, g.id.to_be_bytes(), encode_lease(g.ttl, 0));
        Ok(LeaseGrantResponse {
            header: header(self.base),
            id: g.id,
            ttl: g.ttl,
            error: String::new(),
        })
    }

    /// Revokes lease `id`: every attached key is deleted in ONE revision (etcd lessor Revoke).
    pub(super) fn lease_revoke(&mut self, r: &LeaseRevokeRequest) -> FResult<LeaseRevokeResponse> {
        if !self.store.lease_exists(&self.d, r.id) {
            return Err(RequestError::LeaseNotFound.into());
        }
        let mut keys = Vec::new();
        for g in self.d.lease_keys.prefix(r.id.to_be_bytes()) {
            let (k, _) = g.into_inner()?;
            keys.push(k[8..].to_vec());
        }
        for k in keys {
            self.delete_inner(&DeleteRangeRequest {
                key: k.into(),
                ..Default::default()
            })?;
        }
        self.batch.remove(&self.d.lease, r.id.to_be_bytes());
        Ok(LeaseRevokeResponse {
            header: header(if self.sub > 0 { self.main() } else { self.base }),
        })
    }

    /// Records remaining TTLs (etcd lease checkpoints), for leases still granted.
    pub(super) fn lease_checkpoint(
        &mut self,
        c: &LeaseCheckpointRequest,
    ) -> FResult<LeaseCheckpointResponse> {
        for cp in &c.checkpoints {
            if let Some(v) = self.d.lease.get(cp.id.to_be_bytes())?
                && v.len() == 16
            {
                let ttl = i64::from_be_bytes(v[..8].try_into().unwrap_or_default());
                self.batch.insert(
                    &self.d.lease,
                    cp.id.to_be_bytes(),
                    encode_lease(ttl, cp.remaining_ttl),
                );
            }
        }
        Ok(LeaseCheckpointResponse {
            header: header(self.base),
        })
    }

    /// Applies an auth change (see [`crate::auth::apply`]), writing the changed records.
    pub(super) fn auth(
        &mut self,
        req: &etch_protocol::etchpb::internal_request::Request,
        who: Option<&etch_protocol::etchpb::AuthInfo>,
        index: u64,
    ) -> FResult<WriteResponse> {
        use crate::auth::{ENABLED_KEY, REVISION_KEY};
        let cur = self.store.auth();
        let (change, token) = crate::auth::apply(&cur, who, req, index)?;
        if let Some(c) = change {
            for (k, v) in c.records {
                match v {
                    Some(v) => self.batch.insert(&self.d.auth, k, v),
                    None => self.batch.remove(&self.d.auth, k),
                }
            }
            self.batch
                .insert(&self.d.auth, ENABLED_KEY, vec![u8::from(c.state.enabled())]);
            self.batch.insert(
                &self.d.auth,
                REVISION_KEY,
                c.state.revision().to_be_bytes().to_vec(),
            );
            self.auth_next = Some(c.state);
        }
        Ok(WriteResponse::Auth {
            header: header(self.base),
            token,
        })
    }

    /// Applies a Maintenance.Alarm request (see [`super::alarm::apply`]).
    pub(super) fn alarm(&mut self, r: &etch_protocol::etcdserverpb::AlarmRequest) -> WriteResponse {
        let change = super::alarm::apply(&self.store.alarm_set(), r);
        if let Some((key, insert, next)) = change.write {
            let alarm = etch_protocol::etcdserverpb::AlarmType::try_from(r.alarm)
                .map_or_else(|_| r.alarm.to_string(), |a| a.as_str_name().to_owned());
            let from = format!("{:x}", r.member_id);
            if insert {
                tracing::warn!(%alarm, %from, "alarm raised");
                self.batch.insert(&self.d.meta, key, Vec::<u8>::new());
            } else {
                tracing::warn!(%alarm, %from, "alarm disarmed");
                self.batch.remove(&self.d.meta, key);
            }
            self.alarms_next = Some(next);
        }
        WriteResponse::Alarm(super::alarm::response(change.alarms, self.base))
    }

    pub(super) fn compact(&mut self, c: &CompactionRequest) -> Res<CompactionResponse> {
        let current = self.store.current_revision();
        if c.revision <= self.store.compact_revision() {
            return Err(RequestError::Compacted);
        }
        if c.revision > current {
            return Err(RequestError::FutureRevision);
        }
        self.compact_to = Some(c.revision);
        Ok(CompactionResponse {
            header: header(current),
        })
    }

    /// Escapes `key` into `self.escaped` ([`super::index_prefix`]) and returns its place in
    /// [`super::Newest`]: what [`WriteTxn::current`] looks up and
    /// [`WriteTxn::insert_escaped`] writes.
    fn escape(&mut self, key: &[u8]) -> KeyHash {
        index_prefix_into(&mut self.escaped, key);
        self.d.newest.hashes(&self.escaped)
    }

    /// The state of `key` (escaped in `self.escaped`, at `at`: [`WriteTxn::escape`]) as this
    /// txn sees it, its whole key-value only `with_kv`; `None` if it does not exist.
    /// `found` is what [`super::Newest`] held at `at`, if already looked up.
    fn current(
        &self,
        key: &[u8],
        at: KeyHash,
        found: Option<super::NewestRev>,
        with_kv: bool,
    ) -> FResult<Option<Current>> {
        if let Some(state) = self.overlay.get(key) {
            return Ok(state.as_ref().map(|kv| Current {
                create_revision: kv.create_revision,
                version: kv.version,
                lease: kv.lease,
                kv: with_kv.then(|| kv.clone()),
            }));
        }
        let v = self.view();
        match self.store.newest(&v, key, &self.escaped, at, found)? {
            Some((rev, iv)) if !iv.tombstone => Ok(Some(Current {
                create_revision: iv.create_revision,
                version: iv.version,
                lease: iv.lease,
                kv: if with_kv {
                    Some(self.store.kv_at(&v, rev)?)
                } else {
                    None
                },
            })),
            _ => Ok(None),
        }
    }

    fn put_inner(
        &mut self,
        p: &PutRequest,
        looked_up: Option<(KeyHash, super::NewestRev)>,
    ) -> FResult<PutResponse> {
        // Checked before proposing too; here because the log is the contract: a longer key
        // would make fjall panic on every member applying this entry.
        if p.key.len() > MAX_KEY_BYTES {
            return Err(RequestError::KeyTooLarge.into());
        }
        let (at, found) = match looked_up {
            Some((at, found)) => {
                index_prefix_into(&mut self.escaped, &p.key);
                debug_assert_eq!(
                    at,
                    self.d.newest.hashes(&self.escaped),
                    "the key's own place"
                );
                (at, Some(found))
            }
            None => (self.escape(&p.key), None),
        };
        let with_kv = p.prev_kv || p.ignore_value || p.ignore_lease;
        let cur = self.current(&p.key, at, found, with_kv)?;
        let (create, version, old_lease) = match &cur {
            Some(c) => (c.create_revision, c.version + 1, c.lease),
            None => (self.main(), 1, 0),
        };
        let prev = cur.and_then(|c| c.kv);
        let mut lease = p.lease;
        let mut value = p.value.clone();
        if p.ignore_value || p.ignore_lease {
            let Some(prev) = &prev else {
                return Err(RequestError::KeyNotFound.into());
            };
            if p.ignore_value {
                value = prev.value.clone();
            }
            if p.ignore_lease {
                lease = prev.lease;
            }
        }
        // Leases are granted through the lease API; until one exists, any lease id is unknown.
        if lease != 0 && !self.store.lease_exists(&self.d, lease) {
            return Err(RequestError::LeaseNotFound.into());
        }
        // Attach the key to its lease, moving it from a previous one (etcd lessor Attach/Detach).
        if old_lease != lease {
            if old_lease != 0 {
                self.batch
                    .remove(&self.d.lease_keys, lease_key(old_lease, &p.key));
            }
            if lease != 0 {
                self.batch.insert(
                    &self.d.lease_keys,
                    lease_key(lease, &p.key),
                    Vec::<u8>::new(),
                );
            }
        }
        let rev = Revision::new(self.main(), self.sub);
        self.sub += 1;
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: create,
            mod_revision: rev.main,
            version,
            value,
            lease,
        };
        let iv = IndexValue {
            tombstone: false,
            create_revision: create,
            version,
            lease,
        };
        self.scratch.clear();
        prost::Message::encode(&kv, &mut self.scratch)
            .map_err(|e| Error::CorruptStore(format!("encoding revision {}: {e}", rev.main)))?;
        self.batch
            .insert(&self.d.kv, &rev.to_bytes()[..], &self.scratch[..]);
        self.insert_escaped(at, rev, &iv);
        self.entry_delta += i64::from(version == 1);
        self.overlay.insert(p.key.clone(), Some(kv));
        Ok(PutResponse {
            header: header(rev.main),
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete_inner(&mut self, d: &DeleteRangeRequest) -> FResult<DeleteRangeResponse> {
        let (hits, _) = read::collect(
            self.store,
            &self.view(),
            &d.key,
            &d.range_end,
            self.read_rev(),
            Some(&self.overlay),
            usize::MAX,
        )?;
        let mut prev_kvs = Vec::new();
        for h in &hits {
            if d.prev_kv {
                prev_kvs.push(h.full_kv(self.store, &self.view())?);
            }
            if h.iv.lease != 0 {
                self.batch
                    .remove(&self.d.lease_keys, lease_key(h.iv.lease, &h.key));
            }
            let rev = Revision::new(self.main(), self.sub);
            self.sub += 1;
            let tomb = KeyValue {
                key: h.key.clone(),
                mod_revision: rev.main,
                ..Default::default()
            };
            let iv = IndexValue {
                tombstone: true,
                ..Default::default()
            };
            self.batch.insert(
                &self.d.kv,
                kv_key(rev, true),
                prost::Message::encode_to_vec(&tomb),
            );
            self.insert_index(&h.key, rev, &iv);
            self.entry_delta -= 1;
            self.overlay.insert(h.key.clone(), None);
        }
        let rev = if hits.is_empty() && self.sub == 0 {
            self.base
        } else {
            self.main()
        };
        Ok(DeleteRangeResponse {
            header: header(rev),
            deleted: hits.len() as i64,
            prev_kvs,
        })
    }

    fn txn_inner(&mut self, r: &TxnRequest) -> FResult<TxnResponse> {
        let mut ok = true;
        for c in &r.compare {
            if !read::compare(self.store, &self.view(), c, self.read_rev(), &self.overlay)? {
                ok = false;
                break;
            }
        }
        let ops = if ok { &r.success } else { &r.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match &op.request {
                None => continue,
                Some(Op::RequestRange(rr)) => OpResponse::ResponseRange(self.txn_range(rr)?),
                Some(Op::RequestPut(p)) => OpResponse::ResponsePut(self.put_inner(p, None)?),
                Some(Op::RequestDeleteRange(d)) => {
                    OpResponse::ResponseDeleteRange(self.delete_inner(d)?)
                }
                Some(Op::RequestTxn(t)) => OpResponse::ResponseTxn(self.txn_inner(t)?),
            };
            responses.push(ResponseOp {
                response: Some(resp),
            });
        }
        Ok(TxnResponse {
            header: header(self.base),
            succeeded: ok,
            responses,
        })
    }

    fn txn_range(
        &mut self,
        rr: &RangeRequest,
    ) -> FResult<etch_protocol::etcdserverpb::RangeResponse> {
        // After a write in this txn, reads are at the txn's own revision (etcd's
        // `storeTxnWrite.Range`): the header says so and the overlay holds the writes.
        let current = if self.sub == 0 {
            self.base
        } else {
            self.main()
        };
        // etcd's `checkRange` checks a revision against the one the txn started from, and a
        // read at a past revision does not see this txn's writes (they are at `base + 1`).
        if rr.revision > self.base {
            return Err(RequestError::FutureRevision.into());
        }
        let overlay = (rr.revision <= 0).then_some(&self.overlay);
        match read::range(
            self.store,
            &self.view(),
            rr,
            overlay,
            current,
            self.store.compact_revision(),
        )? {
            Ok(r) => Ok(r),
            Err(e) => Err(e.into()),
        }
    }

    /// Adds `key`'s index entry at `rev` to the batch.
    fn insert_index(&mut self, key: &[u8], rev: Revision, iv: &IndexValue) {
        let at = self.escape(key);
        self.insert_escaped(at, rev, iv);
    }

    /// Adds the index entry at `rev` of the key escaped in `self.escaped`, at `at`
    /// ([`WriteTxn::escape`]), to the batch.
    fn insert_escaped(&mut self, at: KeyHash, rev: Revision, iv: &IndexValue) {
        let k = &mut self.scratch;
        k.clear();
        k.extend_from_slice(&self.escaped);
        k.extend_from_slice(&rev.to_bytes());
        self.written.push((
            at,
            super::NewestEntry {
                rev,
                check: at.check,
                iv: *iv,
            },
        ));
        self.batch.insert(&self.d.index, &k[..], &iv.encode()[..]);
    }

    /// Ends one entry of a run of Puts ([`MvccStore::apply_puts`]): the next entry reads this
    /// one's writes (overlay) and writes at the next revision. Returns the revision after this
    /// entry.
    pub(super) fn end_entry(&mut self) -> i64 {
        if self.sub > 0 {
            self.key_delta += std::mem::take(&mut self.entry_delta);
            self.base += 1;
            self.sub = 0;
        }
        self.base
    }

    /// The revision after the entries ended so far.
    pub(super) fn revision(&self) -> i64 {
        self.base
    }

    /// Commits a run of Puts ended with [`WriteTxn::end_entry`], with `applied` (the run's
    /// last entry) as the applied index, in one batch.
    pub(super) fn commit_run(self, applied: AppliedIndex) -> Result<()> {
        debug_assert_eq!(self.sub, 0, "every entry of the run was ended");
        let rev = self.base;
        let keys = self.store.key_count() + self.key_delta;
        let changed = rev != self.store.current_revision();
        self.commit_batch(rev, keys, changed, applied)
    }

    /// Records the revision and key count (when `changed`) and the applied index in the batch,
    /// commits it (atomically, with the changes), then makes them the store's current ones.
    fn commit_batch(
        mut self,
        rev: i64,
        keys: i64,
        changed: bool,
        applied: AppliedIndex,
    ) -> Result<()> {
        if changed {
            self.batch
                .insert(&self.d.meta, META_CURRENT_REV, rev.to_be_bytes().to_vec());
            self.batch
                .insert(&self.d.meta, META_KEY_COUNT, keys.to_be_bytes().to_vec());
        }
        MvccStore::put_applied(&self.d, &mut self.batch, applied);
        crate::faults::check(crate::faults::Point::StoreWrite)
            .map_err(|e| Error::io(&self.store.root, e))?;
        self.batch.commit()?;
        self.d.newest.record(&self.written);
        self.store
            .current
            .store(rev, std::sync::atomic::Ordering::Release);
        self.store.set_applied(applied);
        self.store
            .keys
            .store(keys, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Writes the batch: the changes, the new current revision (if anything changed), the
    /// applied index, a requested compaction point; then schedules that compaction's deletion
    /// ([`super::compaction`]).
    pub(super) fn commit(
        mut self,
        applied: AppliedIndex,
        mut resp: WriteResponse,
    ) -> Result<Applied> {
        let changed = self.sub > 0;
        let new_rev = if changed { self.main() } else { self.base };
        let keys = self.store.key_count() + self.entry_delta;
        if let WriteResponse::Txn(t) = &mut resp {
            t.header = header(new_rev);
        }
        if let Some(rev) = self.compact_to {
            // Only the point, with the applied index; the history goes in the background.
            self.batch
                .insert(&self.d.meta, META_COMPACT_REV, rev.to_be_bytes().to_vec());
        }
        let (store, d, compact_to) = (self.store, self.d.clone(), self.compact_to);
        let (auth_next, alarms_next) = (self.auth_next.take(), self.alarms_next.take());
        self.commit_batch(new_rev, keys, changed, applied)?;
        if let Some(a) = auth_next {
            store.set_auth(a);
        }
        if let Some(a) = alarms_next {
            store.set_alarms(a);
        }
        if let Some(rev) = compact_to {
            store
                .compacted
                .store(rev, std::sync::atomic::Ordering::Release);
            store.purger.schedule(d, rev);
        }
        Ok(Applied {
            response: Ok(resp),
            revision: new_rev,
        })
    }
}
