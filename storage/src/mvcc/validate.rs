//! Request checks made before a request is proposed (etcd `v3rpc/key.go`: `checkPutRequest`,
//! `checkTxnRequest`, `checkIntervals`): requests that break them never enter the raft log.

use std::collections::BTreeSet;

use etch_protocol::etcdserverpb::request_op::Request as Op;
use etch_protocol::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use super::RequestError;
use super::keys::MAX_KEY_BYTES;

/// etcd's default `--max-txn-ops`: compares, success ops and failure ops per Txn, each.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

type Res = Result<(), RequestError>;

/// A Range needs a key.
///
/// # Errors
/// [`RequestError::EmptyKey`].
pub fn validate_range(r: &RangeRequest) -> Res {
    if r.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    Ok(())
}

/// A Put needs a key of at most [`MAX_KEY_BYTES`]; `ignore_value` excludes a value and
/// `ignore_lease` a lease.
///
/// # Errors
/// [`RequestError::EmptyKey`], [`RequestError::KeyTooLarge`], [`RequestError::ValueProvided`],
/// [`RequestError::LeaseProvided`].
pub fn validate_put(r: &PutRequest) -> Res {
    if r.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    if r.key.len() > MAX_KEY_BYTES {
        return Err(RequestError::KeyTooLarge);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(RequestError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(RequestError::LeaseProvided);
    }
    Ok(())
}

/// A DeleteRange needs a key.
///
/// # Errors
/// [`RequestError::EmptyKey`].
pub fn validate_delete(r: &DeleteRangeRequest) -> Res {
    if r.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    Ok(())
}

/// A Txn: at most `max_txn_ops` compares and ops per branch, every op valid, and no key written
/// twice in one branch (etcd `checkIntervals`: a put may not repeat another put or fall in a
/// delete range of the same branch, nested txns included; the two branches of a nested txn may
/// put the same key).
///
/// # Errors
/// [`RequestError::TooManyOps`], [`RequestError::DuplicateKey`], and the errors of the single
/// request checks.
pub fn validate_txn(r: &TxnRequest, max_txn_ops: usize) -> Res {
    check_txn(r, max_txn_ops)?;
    intervals(&r.success)?;
    intervals(&r.failure)?;
    Ok(())
}

fn check_txn(r: &TxnRequest, max: usize) -> Res {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max {
        return Err(RequestError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(RequestError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            // etcd `checkRequestOp`: an empty op (a request the client could not encode, e.g.
            // gateway JSON with misspelled fields) is refused, not skipped.
            None => return Err(RequestError::KeyNotFound),
            Some(Op::RequestRange(x)) => validate_range(x)?,
            Some(Op::RequestPut(x)) => validate_put(x)?,
            Some(Op::RequestDeleteRange(x)) => validate_delete(x)?,
            Some(Op::RequestTxn(x)) => check_txn(x, max)?,
        }
    }
    Ok(())
}

/// A delete range `[start, end)`; `end = None` means every key from `start` on, a point delete
/// is `[key, key\0)`.
#[derive(Clone)]
struct Del {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Del {
    fn contains(&self, k: &[u8]) -> bool {
        k >= self.start.as_slice() && self.end.as_ref().is_none_or(|e| k < e.as_slice())
    }
}

fn intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<Del>), RequestError> {
    let mut dels: Vec<Del> = Vec::new();
    for op in ops {
        if let Some(Op::RequestDeleteRange(d)) = &op.request {
            let end = if d.range_end.is_empty() {
                let mut e = d.key.to_vec();
                e.push(0);
                Some(e)
            } else if d.range_end.as_ref() == [0] {
                None
            } else {
                Some(d.range_end.to_vec())
            };
            dels.push(Del {
                start: d.key.to_vec(),
                end,
            });
        }
    }
    let hit = |dels: &[Del], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        if let Some(Op::RequestTxn(t)) = &op.request {
            let (puts_then, dels_then) = intervals(&t.success)?;
            let (puts_else, dels_else) = intervals(&t.failure)?;
            for k in &puts_then {
                if puts.contains(k) || hit(&dels, k) {
                    return Err(RequestError::DuplicateKey);
                }
                puts.insert(k.clone());
            }
            for k in &puts_else {
                if (puts.contains(k) && !puts_then.contains(k)) || hit(&dels, k) {
                    return Err(RequestError::DuplicateKey);
                }
                puts.insert(k.clone());
            }
            dels.extend(dels_then);
            dels.extend(dels_else);
        }
    }
    for op in ops {
        if let Some(Op::RequestPut(p)) = &op.request {
            let k = p.key.to_vec();
            if puts.contains(&k) || hit(&dels, &k) {
                return Err(RequestError::DuplicateKey);
            }
            puts.insert(k);
        }
    }
    Ok((puts, dels))
}
