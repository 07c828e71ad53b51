//! etcd's KV service (`etcdserverpb.KV`): Range, Put, DeleteRange, Txn, Compact.

use super::*;

impl Service {
    /// Range for a caller whose identity is already known (the server's own reads, lock and
    /// election helpers): [`Service::range_as`].
    ///
    /// # Errors
    /// As [`Service::range_as`].
    pub async fn range(&self, who: &AuthInfo, req: RangeRequest) -> Res<RangeResponse> {
        self.range_as(|| Ok(who.clone()), req).await
    }

    /// Range: linearizable unless `serializable`. A single key is read on the task that serves
    /// the request; a key range (`range_end` set) on tokio's blocking pool, so a long scan
    /// never holds the runtime's workers (etch runs one: `node/src/main.rs`). The caller is
    /// identified (`who`) and its permission checked after the read barrier, against the
    /// auth state the read sees (etcd v3.5 `Range`: `doSerialize`, which reads the caller's
    /// auth info, runs after `linearizableReadNotify`): an `auth enable`, a token or a
    /// permission change committed before the read applies to it on every member.
    ///
    /// # Errors
    /// Empty key, compacted or future revision, no leader, timeout; etcd's auth errors.
    pub async fn range_as(
        &self,
        who: impl FnOnce() -> Res<AuthInfo>,
        req: RangeRequest,
    ) -> Res<RangeResponse> {
        mvcc::validate_range(&req)?;
        if !req.serializable {
            self.linearizable().await?;
        }
        self.check_read(&who()?, &req.key, &req.range_end)?;
        let mut r = if req.range_end.is_empty() {
            self.store.range(&req).map_err(Self::store_err)??
        } else {
            self.blocking(move |s| s.range(&req)).await??
        };
        r.header = self.header(r.header);
        crate::metrics::hot().range_total.increment(1);
        Ok(r)
    }

    /// Put through consensus.
    ///
    /// # Errors
    /// etcd's Put errors, no leader, timeout, too large; no space (quota or NOSPACE alarm).
    pub async fn put(&self, who: &AuthInfo, req: PutRequest) -> Res<PutResponse> {
        self.check_quota(maintenance::cost_put(&req)).await?;
        mvcc::validate_put(&req)?;
        match self.propose(Some(who), Request::Put(req)).await? {
            WriteResponse::Put(mut r) => {
                r.header = self.header(r.header);
                Ok(r)
            }
            _ => Err(ApiError::Unimplemented),
        }
    }

    /// DeleteRange through consensus.
    ///
    /// # Errors
    /// Empty key, no leader, timeout, too large.
    pub async fn delete_range(
        &self,
        who: &AuthInfo,
        req: DeleteRangeRequest,
    ) -> Res<DeleteRangeResponse> {
        mvcc::validate_delete(&req)?;
        match self.propose(Some(who), Request::DeleteRange(req)).await? {
            WriteResponse::DeleteRange(mut r) => {
                r.header = self.header(r.header);
                Ok(r)
            }
            _ => Err(ApiError::Unimplemented),
        }
    }

    /// Txn for a caller whose identity is already known: [`Service::txn_as`].
    ///
    /// # Errors
    /// As [`Service::txn_as`].
    pub async fn txn(&self, who: &AuthInfo, req: TxnRequest) -> Res<TxnResponse> {
        self.txn_as(|| Ok(who.clone()), req).await
    }

    /// Txn: through consensus if any branch writes; otherwise served as a read (linearizable
    /// unless every range in it is serializable), as etcd does, identifying the caller
    /// (`who`) after the read barrier as [`Service::range_as`] does, and like a Range read on
    /// the serving task when every compare and range names one key, on the blocking pool
    /// otherwise.
    ///
    /// # Errors
    /// etcd's Txn errors, no leader, timeout, too large; no space for a Txn that puts.
    pub async fn txn_as(
        &self,
        who: impl FnOnce() -> Res<AuthInfo>,
        req: TxnRequest,
    ) -> Res<TxnResponse> {
        let cost = maintenance::cost_txn(&req);
        if cost > 0 {
            self.check_quota(cost).await?;
        }
        mvcc::validate_txn(&req, self.limits.max_txn_ops)?;
        if txn_is_read_only(&req) {
            // Writes are checked at apply; a read-only Txn never reaches apply.
            if !txn_is_serializable(&req) {
                self.linearizable().await?;
            }
            self.store
                .auth()
                .check_txn(&who()?, &req, &mut |_| Ok(()))?;
            let mut r = if txn_reads_single_keys(&req) {
                self.store.txn_read(&req).map_err(Self::store_err)??
            } else {
                self.blocking(move |s| s.txn_read(&req)).await??
            };
            r.header = self.header(r.header);
            crate::metrics::hot().txn_total.increment(1);
            return Ok(r);
        }
        match self.propose(Some(&who()?), Request::Txn(req)).await? {
            WriteResponse::Txn(mut r) => {
                r.header = self.header(r.header);
                Ok(r)
            }
            _ => Err(ApiError::Unimplemented),
        }
    }

    /// Compaction through consensus. Apply records the compaction point (reads below it fail
    /// from then on) and the store deletes the history in the background; with `physical`
    /// (etcdctl `compact --physical`) the answer waits until this member's deletion is written,
    /// at most [`PHYSICAL_COMPACTION_WAIT`].
    ///
    /// # Errors
    /// Compacted or future revision, no leader, timeout; a physical compaction whose deletion
    /// failed or outlasted the wait.
    /// Not permission-checked, as in etcd v3.5 (any client may compact).
    pub async fn compact(&self, who: &AuthInfo, req: CompactionRequest) -> Res<CompactionResponse> {
        let (rev, physical) = (req.revision, req.physical);
        match self.propose(Some(who), Request::Compaction(req)).await? {
            WriteResponse::Compaction(mut r) => {
                if physical {
                    // etcd answers a physical compaction once this member deleted the history.
                    self.blocking(move |s| s.wait_purged(rev, PHYSICAL_COMPACTION_WAIT))
                        .await?;
                }
                r.header = self.header(r.header);
                Ok(r)
            }
            _ => Err(ApiError::Unimplemented),
        }
    }
}

fn txn_is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            None | Some(Op::RequestRange(_)) => true,
            Some(Op::RequestTxn(t)) => txn_is_read_only(t),
            Some(_) => false,
        })
}

/// Whether every compare and range of a read-only Txn names one key: such a Txn is read on the
/// task that serves it; one over key ranges goes to the blocking pool (see
/// [`Service::range_as`]).
fn txn_reads_single_keys(r: &TxnRequest) -> bool {
    r.compare.iter().all(|c| c.range_end.is_empty())
        && r.success
            .iter()
            .chain(&r.failure)
            .all(|op| match &op.request {
                None => true,
                Some(Op::RequestRange(rr)) => rr.range_end.is_empty(),
                Some(Op::RequestTxn(t)) => txn_reads_single_keys(t),
                Some(_) => false,
            })
}

fn txn_is_serializable(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            None => true,
            Some(Op::RequestRange(rr)) => rr.serializable,
            Some(Op::RequestTxn(t)) => txn_is_serializable(t),
            Some(_) => false,
        })
}
