//! Byte encodings of the MVCC store's fjall keyspaces.
//!
//! # `kv`: revision -> KeyValue
//! Key: `main` (8 bytes, big-endian) ++ `sub` (8 bytes, big-endian), plus one byte `t` for a
//! tombstone (a delete). Value: the protobuf `mvccpb.KeyValue` (for a tombstone only `key` and
//! `mod_revision` are set). Big-endian makes byte order equal revision order, so a scan from a
//! revision yields every change after it in order (watch catch-up, history).
//!
//! Example: the put at revision {main: 2, sub: 0} is stored under
//! `00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 00`.
//!
//! # `key_index`: user key ++ revision -> index value
//! Key: `escape(user key)` ++ `00 00` ++ `main` BE ++ `sub` BE, where `escape` replaces every
//! `00` byte by `00 FF`. The escaping keeps user-key order and makes the encoding prefix-free,
//! so the entries of one key are adjacent and sorted by revision, and a user-key range
//! `[a, b)` is exactly the index range `[escape(a) 00 00, escape(b) 00 00)`.
//! Value (25 bytes): `flags` (bit 0 = tombstone) ++ `create_revision` i64 BE ++ `version` i64
//! BE ++ `lease` i64 BE. With the mod revision in the key, this is every field of the
//! `KeyValue` but the value, so keys-only and count-only reads never touch `kv`.
//!
//! Example: key `a\0b` at revision {3, 1} is
//! `61 00 FF 62 00 00 | 00..03 | 00..01`.

/// A revision: `main` is the cluster-wide revision a write (Put, DeleteRange, Txn) creates;
/// `sub` numbers the changes within it, from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// The main revision (what etcd reports as `mod_revision`, header `revision`).
    pub main: i64,
    /// The change's position within the main revision.
    pub sub: i64,
}

impl Revision {
    /// Revision `{main, sub}`.
    pub fn new(main: i64, sub: i64) -> Revision {
        Revision { main, sub }
    }

    /// The 16-byte big-endian form.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.main.to_be_bytes());
        b[8..].copy_from_slice(&self.sub.to_be_bytes());
        b
    }

    /// Parses the 16 bytes at the start of `b`; `None` if shorter.
    pub fn from_bytes(b: &[u8]) -> Option<Revision> {
        let main = i64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        let sub = i64::from_be_bytes(b.get(8..16)?.try_into().ok()?);
        Some(Revision { main, sub })
    }
}

/// Longest key fjall stores: 65,535 bytes (it asserts this, and a non-empty key, on every
/// insert).
pub(crate) const FJALL_MAX_KEY_BYTES: usize = u16::MAX as usize;

/// Longest user key the store takes: 32,758 bytes. Its index key (`escape(key) ++ 00 00 ++
/// revision`, up to `2 * len + 18` bytes when every byte is `00`) must fit in a fjall key;
/// longer keys are refused with [`super::RequestError::KeyTooLarge`]. etcd has no key limit
/// of its own beyond the request size (`--max-request-bytes`, 1.5 MiB by default).
pub const MAX_KEY_BYTES: usize = (FJALL_MAX_KEY_BYTES - 18) / 2;

/// Suffix byte of a tombstone's `kv` key.
pub(crate) const TOMBSTONE_SUFFIX: u8 = b't';

/// The `kv` key of a revision: 16 bytes, 17 for a tombstone.
pub fn kv_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&rev.to_bytes());
    if tombstone {
        k.push(TOMBSTONE_SUFFIX);
    }
    k
}

/// `escape(key) ++ 00 00`: the prefix shared by every index entry of `key` (`key.len() + 2`
/// bytes and one more per `00` byte of `key`).
pub fn index_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 18);
    push_index_prefix(&mut out, key);
    out
}

/// The index key of `key` at `rev`: [`index_prefix`] ++ the revision's 16 bytes.
pub fn index_key(key: &[u8], rev: Revision) -> Vec<u8> {
    let mut k = Vec::new();
    index_key_into(&mut k, key, rev);
    k
}

/// [`index_key`] written into `out` (cleared first), so that a caller writing many keys
/// reuses one buffer.
pub fn index_key_into(out: &mut Vec<u8>, key: &[u8], rev: Revision) {
    index_prefix_into(out, key);
    out.extend_from_slice(&rev.to_bytes());
}

/// [`index_prefix`] written into `out` (cleared first), so that a caller escaping many keys
/// reuses one buffer.
pub(crate) fn index_prefix_into(out: &mut Vec<u8>, key: &[u8]) {
    out.clear();
    out.reserve(key.len() + 18);
    push_index_prefix(out, key);
}

/// Appends [`index_prefix`] of `key` to `out`. A key without a `00` byte (text keys, such as
/// Kubernetes' paths) is copied whole; otherwise byte by byte, escaping each `00`.
fn push_index_prefix(out: &mut Vec<u8>, key: &[u8]) {
    if key.contains(&0) {
        for &b in key {
            out.push(b);
            if b == 0 {
                out.push(0xFF);
            }
        }
    } else {
        out.extend_from_slice(key);
    }
    out.extend_from_slice(&[0, 0]);
}

/// Splits an index key into (escaped key with terminator, revision); `None` if shorter than
/// 16 bytes.
pub fn split_index_key(k: &[u8]) -> Option<(&[u8], Revision)> {
    let cut = k.len().checked_sub(16)?;
    Some((&k[..cut], Revision::from_bytes(&k[cut..])?))
}

/// Inverse of [`index_prefix`]: the user key from `escape(key) ++ 00 00`; `None` if `prefix`
/// is not such an encoding (no terminator, or a `00` not followed by `FF`).
pub fn unescape(prefix: &[u8]) -> Option<Vec<u8>> {
    let body = prefix.strip_suffix(&[0, 0])?;
    if !body.contains(&0) {
        return Some(body.to_vec());
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        out.push(body[i]);
        if body[i] == 0 {
            if body.get(i + 1) != Some(&0xFF) {
                return None;
            }
            i += 1;
        }
        i += 1;
    }
    Some(out)
}

/// The index value: everything of a key's state at one revision but its value and mod
/// revision (which is in the index key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexValue {
    /// The entry deletes the key (a DeleteRange, or a Txn's delete).
    pub tombstone: bool,
    /// The main revision of the key's creation (etcd `create_revision`).
    pub create_revision: i64,
    /// Changes since the key's creation, from 1 (etcd `version`).
    pub version: i64,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
}

impl IndexValue {
    /// The 25-byte form (the module doc's layout).
    pub fn encode(&self) -> [u8; 25] {
        let mut b = [0u8; 25];
        b[0] = u8::from(self.tombstone);
        b[1..9].copy_from_slice(&self.create_revision.to_be_bytes());
        b[9..17].copy_from_slice(&self.version.to_be_bytes());
        b[17..25].copy_from_slice(&self.lease.to_be_bytes());
        b
    }

    /// Parses [`IndexValue::encode`]'s form; `None` unless `b` is exactly 25 bytes.
    pub fn decode(b: &[u8]) -> Option<IndexValue> {
        if b.len() != 25 {
            return None;
        }
        Some(IndexValue {
            tombstone: b[0] & 1 == 1,
            create_revision: i64::from_be_bytes(b[1..9].try_into().ok()?),
            version: i64::from_be_bytes(b[9..17].try_into().ok()?),
            lease: i64::from_be_bytes(b[17..25].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_order_and_is_prefix_free() {
        let keys: Vec<&[u8]> = vec![
            b"", b"\0", b"\0\0", b"\0\x01", b"a", b"a\0", b"a\0b", b"ab", b"b",
        ];
        for w in keys.windows(2) {
            let a = index_key(w[0], Revision::new(i64::MAX, i64::MAX));
            let b = index_key(w[1], Revision::new(0, 0));
            assert!(a < b, "{:?} < {:?}", w[0], w[1]);
            assert_eq!(unescape(&index_prefix(w[1])).unwrap(), w[1]);
        }
    }

    #[test]
    fn worked_examples_match_module_doc() {
        assert_eq!(
            kv_key(Revision::new(2, 0), false),
            vec![0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let k = index_key(b"a\0b", Revision::new(3, 1));
        assert_eq!(&k[..6], &[0x61, 0, 0xFF, 0x62, 0, 0]);
        let (p, r) = split_index_key(&k).unwrap();
        assert_eq!(r, Revision::new(3, 1));
        assert_eq!(unescape(p).unwrap(), b"a\0b");
    }

    #[test]
    fn index_value_round_trips() {
        let v = IndexValue {
            tombstone: true,
            create_revision: 5,
            version: 7,
            lease: -1,
        };
        assert_eq!(IndexValue::decode(&v.encode()), Some(v));
        assert_eq!(IndexValue::decode(&[1, 2]), None);
    }

    /// Fuzz tests of the decoders of stored keys and values (a damaged store or a snapshot
    /// from the leader can hold any bytes). Long run:
    /// `PROPTEST_CASES=1000000 cargo test --release -p etch-storage --lib keys::tests::fuzz`.
    mod fuzz {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn config() -> proptest::test_runner::Config {
            let cases = std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2048);
            proptest::test_runner::Config::with_cases(cases)
        }

        /// Bytes rich in the escape bytes `00` and `FF`.
        fn key() -> impl Strategy<Value = Vec<u8>> {
            vec(
                prop_oneof![Just(0u8), Just(0xFF), Just(b'a'), any::<u8>()],
                0..12,
            )
        }

        fn rev() -> impl Strategy<Value = Revision> {
            (any::<i64>(), any::<i64>()).prop_map(|(m, s)| Revision::new(m, s))
        }

        proptest! {
            #![proptest_config(config())]

            /// Any bytes: the decoders answer or refuse, and what they accept is canonical.
            #[test]
            fn arbitrary_bytes(b in vec(prop_oneof![Just(0u8), Just(0xFF), any::<u8>()], 0..40)) {
                if let Some(r) = Revision::from_bytes(&b) {
                    prop_assert_eq!(&r.to_bytes()[..], &b[..16]);
                }
                if let Some((prefix, r)) = split_index_key(&b) {
                    prop_assert_eq!([prefix, &r.to_bytes()[..]].concat(), b.clone());
                }
                if let Some(k) = unescape(&b) {
                    prop_assert_eq!(index_prefix(&k), b.clone());
                }
                match IndexValue::decode(&b) {
                    Some(v) => {
                        prop_assert_eq!(b.len(), 25);
                        prop_assert_eq!(IndexValue::decode(&v.encode()), Some(v));
                    }
                    None => prop_assert_ne!(b.len(), 25),
                }
            }

            /// Index keys split and unescape back to their key and revision.
            #[test]
            fn index_keys_round_trip(k in key(), r in rev()) {
                let ik = index_key(&k, r);
                let (prefix, back) = split_index_key(&ik).expect("an index key splits");
                prop_assert_eq!(back, r);
                prop_assert_eq!(unescape(prefix), Some(k.clone()));
                let want = index_prefix(&k);
                prop_assert_eq!(prefix, want.as_slice());
            }

            /// Escaping keeps key order and groups a key's revisions: index keys sort by
            /// (key, revision), so ranges over user keys are ranges over index keys.
            #[test]
            fn index_keys_sort_by_key_then_revision(a in key(), b in key(), ra in rev(), rb in rev()) {
                let (ia, ib) = (index_key(&a, ra), index_key(&b, rb));
                // Big-endian two's complement: byte order is the order of the bits as u64.
                let by_bytes = |r: Revision| (r.main as u64, r.sub as u64);
                let want = (a.as_slice(), by_bytes(ra)).cmp(&(b.as_slice(), by_bytes(rb)));
                prop_assert_eq!(ia.cmp(&ib), want);
            }
        }
    }
}
