//! fjall's memtable as etch builds it (`vendor/lsm-tree`, `vendor/crossbeam-skiplist`): a
//! flush reads a sealed memtable with `Memtable::iter_sealed`, a walk of the skiplist's
//! bottom level in stretches together. It must yield exactly what the plain iterator yields,
//! in the same order, whatever the size (empty, fewer nodes than one stretch, many stretches)
//! and however the keys arrived.

use lsm_tree::{InternalValue, Memtable, ValueType};
use proptest::prelude::*;

/// (user key, seqno, value type, value) of every item, in the iterator's order.
fn items(it: impl Iterator<Item = InternalValue>) -> Vec<(Vec<u8>, u64, ValueType, Vec<u8>)> {
    it.map(|v| {
        (
            v.key.user_key.to_vec(),
            v.key.seqno,
            v.key.value_type,
            v.value.to_vec(),
        )
    })
    .collect()
}

/// A memtable holding `keys` (in that order), each at its own seqno, with a value derived
/// from it (some above the 20 bytes a slice keeps inline, some below).
fn memtable(keys: &[Vec<u8>]) -> Memtable {
    let mt = Memtable::new(1);
    for (seqno, k) in keys.iter().enumerate() {
        let value = k.repeat(seqno % 3 + 1);
        let kind = if seqno % 7 == 0 {
            ValueType::Tombstone
        } else {
            ValueType::Value
        };
        mt.insert(InternalValue::from_components(
            k.clone(),
            value,
            seqno as u64,
            kind,
        ));
    }
    mt
}

#[test]
fn a_sealed_memtable_yields_every_item_in_order_at_every_size() {
    // Sizes around one stretch (16 nodes on the walk's anchor level are about 256 nodes)
    // and well beyond it; keys in a scrambled order, as etch's key index receives them.
    for n in [0usize, 1, 2, 15, 16, 17, 255, 256, 257, 5_000, 60_000] {
        let keys: Vec<Vec<u8>> = (0..n as u64)
            .map(|i| {
                let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
                let mut k = x.to_le_bytes().to_vec();
                k.extend_from_slice(&i.to_be_bytes()[..(i % 30) as usize % 9]);
                k
            })
            .collect();
        let mt = memtable(&keys);
        let sealed = items(mt.iter_sealed());
        assert_eq!(sealed.len(), n, "{n} items");
        assert_eq!(sealed, items(mt.iter()), "{n} items in the same order");
        assert!(
            sealed.windows(2).all(
                |w| (&w[0].0, std::cmp::Reverse(w[0].1)) < (&w[1].0, std::cmp::Reverse(w[1].1))
            ),
            "{n} items: ascending keys, newest version first"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any keys, repeated ones included (each insert has its own seqno, so a key may have
    /// several versions): the sealed walk and the plain iterator agree, and reversing it
    /// gives the plain iterator's reverse.
    #[test]
    fn sealed_walk_matches_the_plain_iterator(
        keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..24), 0..3_000)
    ) {
        let mt = memtable(&keys);
        prop_assert_eq!(items(mt.iter_sealed()), items(mt.iter()));
        prop_assert_eq!(items(mt.iter_sealed().rev()), items(mt.iter().rev()));
    }
}
