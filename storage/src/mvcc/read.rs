//! Reads: key-range collection over `key_index` (optionally merged with a write txn's pending
//! changes), Range with etcd's options, and Txn compares.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use fjall::Readable;

use etch_protocol::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etch_protocol::etcdserverpb::range_request::{SortOrder, SortTarget};
use etch_protocol::etcdserverpb::{Compare, RangeRequest, RangeResponse, ResponseHeader};
use etch_protocol::mvccpb::KeyValue;

use super::keys::{
    FJALL_MAX_KEY_BYTES, IndexValue, Revision, index_prefix, split_index_key, unescape,
};
use super::{MvccStore, RequestError, View};
use crate::error::{Error, Result};

/// A write txn's changes not yet committed: key -> its new state (`None` = deleted).
pub(super) type Overlay = BTreeMap<Bytes, Option<KeyValue>>;

/// The key group being scanned: its escaped prefix and its newest entry at or below the read
/// revision.
type Group = Option<(Vec<u8>, Option<(Revision, IndexValue)>)>;

/// One live key found by a range.
pub(super) struct Hit {
    pub(super) key: Bytes,
    pub(super) rev: Revision,
    pub(super) iv: IndexValue,
    /// Set when the key's state comes from the write txn's overlay (value included).
    pub(super) pending: Option<KeyValue>,
}

impl Hit {
    fn from_pending(kv: KeyValue) -> Hit {
        Hit {
            key: kv.key.clone(),
            rev: Revision::new(kv.mod_revision, 0),
            iv: IndexValue {
                tombstone: false,
                create_revision: kv.create_revision,
                version: kv.version,
                lease: kv.lease,
            },
            pending: Some(kv),
        }
    }

    /// The KeyValue without its value.
    fn meta_kv(&self) -> KeyValue {
        KeyValue {
            key: self.key.clone(),
            create_revision: self.iv.create_revision,
            mod_revision: self.rev.main,
            version: self.iv.version,
            value: Bytes::new(),
            lease: self.iv.lease,
        }
    }

    pub(super) fn full_kv(&self, store: &MvccStore, v: &View) -> Result<KeyValue> {
        match &self.pending {
            Some(kv) => Ok(kv.clone()),
            None => store.kv_at(v, self.rev),
        }
    }
}

/// Returns the live keys in `[key, range_end)` at `rev` (etcd's range_end rules: empty = just
/// `key`, `"\0"` = every key >= `key`), merged with `overlay`, in key order; and their total.
/// At most `keep` hits are returned when there is no overlay (the count is always complete).
pub(super) fn collect(
    store: &MvccStore,
    v: &View,
    key: &[u8],
    range_end: &[u8],
    rev: i64,
    overlay: Option<&Overlay>,
    keep: usize,
) -> Result<(Vec<Hit>, usize)> {
    let overlay = overlay.filter(|o| !o.is_empty());
    if range_end.is_empty() {
        if let Some(o) = overlay
            && let Some(state) = o.get(key)
        {
            return Ok(match state {
                Some(kv) => (vec![Hit::from_pending(kv.clone())], 1),
                None => (Vec::new(), 0),
            });
        }
        return Ok(match store.latest(v, key, rev)? {
            Some((r, iv)) if !iv.tombstone => (
                vec![Hit {
                    key: Bytes::copy_from_slice(key),
                    rev: r,
                    iv,
                    pending: None,
                }],
                1,
            ),
            _ => (Vec::new(), 0),
        });
    }
    let all_after = range_end == [0];
    if !all_after && range_end <= key {
        return Ok((Vec::new(), 0));
    }
    let (lo, lo_exact) = scan_bound(key);
    let (hi, hi_exact) = if all_after {
        (Bound::Unbounded, true)
    } else {
        match scan_bound(range_end) {
            (b, true) => (Bound::Excluded(b), true),
            (b, false) => (Bound::Included(b), false),
        }
    };
    // With a cut bound the scan is wider than `[key, range_end)`: check each key found.
    let in_range = |prefix: &[u8]| -> Result<bool> {
        if lo_exact && hi_exact {
            return Ok(true);
        }
        let k = unescape(prefix).ok_or_else(|| Error::CorruptStore("bad index key".into()))?;
        Ok(k.as_slice() >= key && (all_after || k.as_slice() < range_end))
    };
    let keep = if overlay.is_some() { usize::MAX } else { keep };
    let mut hits = Vec::new();
    let mut count = 0usize;
    // The newest entry at or below `rev` of the key group being scanned.
    let mut group: Group = None;
    let flush = |g: Group, hits: &mut Vec<Hit>, count: &mut usize| -> Result<()> {
        if let Some((prefix, Some((r, iv)))) = g
            && !iv.tombstone
            && in_range(&prefix)?
        {
            *count += 1;
            if hits.len() < keep {
                let k =
                    unescape(&prefix).ok_or_else(|| Error::CorruptStore("bad index key".into()))?;
                hits.push(Hit {
                    key: Bytes::from(k),
                    rev: r,
                    iv,
                    pending: None,
                });
            }
        }
        Ok(())
    };
    for g in v
        .snap
        .range::<Vec<u8>, _>(&v.d.index, (Bound::Included(lo), hi))
    {
        let (k, value) = g.into_inner()?;
        let (prefix, r) =
            split_index_key(&k).ok_or_else(|| Error::CorruptStore("short index key".into()))?;
        let same = group.as_ref().is_some_and(|(p, _)| p.as_slice() == prefix);
        if !same {
            flush(group.take(), &mut hits, &mut count)?;
            group = Some((prefix.to_vec(), None));
        }
        if r.main <= rev {
            let iv = IndexValue::decode(&value)
                .ok_or_else(|| Error::CorruptStore("bad index value".into()))?;
            if let Some((_, latest)) = group.as_mut() {
                *latest = Some((r, iv));
            }
        }
    }
    flush(group.take(), &mut hits, &mut count)?;

    if let Some(o) = overlay {
        let upper = if all_after {
            Bound::Unbounded
        } else {
            Bound::Excluded(Bytes::copy_from_slice(range_end))
        };
        let mut merged: BTreeMap<Bytes, Hit> =
            hits.into_iter().map(|h| (h.key.clone(), h)).collect();
        for (k, state) in o.range((Bound::Included(Bytes::copy_from_slice(key)), upper)) {
            match state {
                Some(kv) => {
                    merged.insert(k.clone(), Hit::from_pending(kv.clone()));
                }
                None => {
                    merged.remove(k);
                }
            }
        }
        let hits: Vec<Hit> = merged.into_values().collect();
        let n = hits.len();
        return Ok((hits, n));
    }
    Ok((hits, count))
}

/// The index-scan bound of user key `key`: `escape(key) ++ 00 00`, cut to the longest fjall
/// key when longer (fjall panics on a longer bound; a client may send any key in a Range,
/// DeleteRange or compare, though no key that long is stored). `false` when cut: the cut
/// bound sorts at or before the exact one and, as an upper bound, must become inclusive.
fn scan_bound(key: &[u8]) -> (Vec<u8>, bool) {
    let mut b = index_prefix(key);
    let exact = b.len() <= FJALL_MAX_KEY_BYTES;
    b.truncate(FJALL_MAX_KEY_BYTES);
    (b, exact)
}

/// Range with etcd v3.5's semantics (`applierV3backend.Range`).
pub(super) fn range(
    store: &MvccStore,
    v: &View,
    req: &RangeRequest,
    overlay: Option<&Overlay>,
    current: i64,
    compacted: i64,
) -> Result<std::result::Result<RangeResponse, RequestError>> {
    let rev = if req.revision <= 0 {
        current
    } else {
        req.revision
    };
    if rev > current {
        return Ok(Err(RequestError::FutureRevision));
    }
    if rev < compacted {
        return Ok(Err(RequestError::Compacted));
    }
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    // etcd: without an order, a target other than KEY sorts ascending.
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    let fetch_all = req.sort_order != SortOrder::None as i32 || filtered;
    let keep = if req.count_only {
        0
    } else if fetch_all || req.limit <= 0 {
        usize::MAX
    } else {
        usize::try_from(req.limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    };
    let (mut hits, count) = collect(store, v, &req.key, &req.range_end, rev, overlay, keep)?;
    if req.count_only {
        hits.clear();
    }
    if filtered {
        hits.retain(|h| {
            !(req.max_mod_revision != 0 && h.rev.main > req.max_mod_revision
                || req.min_mod_revision != 0 && h.rev.main < req.min_mod_revision
                || req.max_create_revision != 0 && h.iv.create_revision > req.max_create_revision
                || req.min_create_revision != 0 && h.iv.create_revision < req.min_create_revision)
        });
    }
    let mut kvs: Vec<KeyValue> = Vec::with_capacity(hits.len());
    let values_needed = !req.keys_only;
    if order != SortOrder::None && target == SortTarget::Value {
        for h in &hits {
            kvs.push(h.full_kv(store, v)?);
        }
    } else {
        kvs.extend(hits.iter().map(Hit::meta_kv));
    }
    if order != SortOrder::None {
        match target {
            SortTarget::Key => {}
            SortTarget::Version => kvs.sort_by_key(|k| k.version),
            SortTarget::Create => kvs.sort_by_key(|k| k.create_revision),
            SortTarget::Mod => kvs.sort_by_key(|k| k.mod_revision),
            SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if order == SortOrder::Descend {
            kvs.reverse();
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() as u64 > req.limit as u64 {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if values_needed && !(order != SortOrder::None && target == SortTarget::Value) {
        // Values are fetched only for what is returned.
        let by_key: BTreeMap<&Bytes, &Hit> = hits.iter().map(|h| (&h.key, h)).collect();
        for kv in &mut kvs {
            if let Some(h) = by_key.get(&kv.key) {
                kv.value = h.full_kv(store, v)?.value;
            }
        }
    } else if !values_needed {
        for kv in &mut kvs {
            kv.value = Bytes::new();
        }
    }
    Ok(Ok(RangeResponse {
        header: Some(ResponseHeader {
            revision: current,
            ..Default::default()
        }),
        kvs,
        more,
        count: count as i64,
    }))
}

/// Evaluates one Txn compare (etcd `applyCompare`): every key in the range must satisfy it; a
/// missing key compares as an empty KeyValue, except that a VALUE compare on it is false.
pub(super) fn compare(
    store: &MvccStore,
    v: &View,
    c: &Compare,
    rev: i64,
    overlay: &Overlay,
) -> Result<bool> {
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    let need_value = target == CompareTarget::Value;
    let (hits, _) = collect(
        store,
        v,
        &c.key,
        &c.range_end,
        rev,
        Some(overlay),
        usize::MAX,
    )?;
    if hits.is_empty() {
        if need_value {
            return Ok(false);
        }
        return Ok(compare_kv(c, target, &KeyValue::default()));
    }
    for h in &hits {
        let kv = if need_value {
            h.full_kv(store, v)?
        } else {
            h.meta_kv()
        };
        if !compare_kv(c, target, &kv) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn compare_kv(c: &Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let union = c.target_union.as_ref();
    let int = |f: fn(&TargetUnion) -> Option<i64>| union.and_then(f).unwrap_or(0);
    let ord = match target {
        CompareTarget::Value => {
            let want: &[u8] = match union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_ref().cmp(want)
        }
        CompareTarget::Create => kv.create_revision.cmp(&int(|u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Mod => kv.mod_revision.cmp(&int(|u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Version => kv.version.cmp(&int(|u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Lease => kv.lease.cmp(&int(|u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}
