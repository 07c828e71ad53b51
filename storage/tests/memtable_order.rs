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

#[test]
fn an_item_inserted_twice_at_one_seqno_is_read_once() {
    // lsm-tree's memtable replaces an equal internal key (user key and seqno), as etch's
    // `lease_keys` sees when one batch puts a key twice under one lease. The walk relies on
    // it: the replaced node is unlinked before the insert returns, so a walk of the sealed
    // memtable, which follows links, yields the second item alone.
    let mt = Memtable::new(1);
    for round in 0..2u8 {
        for i in 0..3_000u64 {
            let k = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes().to_vec();
            mt.insert(InternalValue::from_components(
                k,
                vec![round; 1 + (i % 40) as usize],
                i,
                ValueType::Value,
            ));
        }
    }
    let sealed = items(mt.iter_sealed());
    assert_eq!(sealed.len(), 3_000);
    assert_eq!(sealed, items(mt.iter()));
    assert!(
        sealed.iter().all(|(_, _, _, v)| v.iter().all(|&b| b == 1)),
        "the second insert's value"
    );
}

#[test]
fn a_flush_of_several_sealed_memtables_keeps_every_version() -> lsm_tree::Result<()> {
    use lsm_tree::{AbstractTree, Config, Guard, SequenceNumberCounter};
    // Three sealed memtables (fjall flushes them together when flushes fall behind): the
    // flush merges them, the path a single memtable skips. Keys overlap across memtables,
    // with newer versions and deletes in the later ones.
    let dir = tempfile::tempdir()?;
    let tree = Config::new(
        dir.path(),
        SequenceNumberCounter::default(),
        SequenceNumberCounter::default(),
    )
    .open()?;
    let mut seqno = 1;
    let mut marks = Vec::new();
    for m in 0..3u64 {
        for i in 0..2_000u64 {
            let k = (i * 3 + m).wrapping_mul(0x9E37_79B9_7F4A_7C15) % 4_000;
            if m > 0 && i % 9 == 0 {
                tree.remove(k.to_be_bytes(), seqno);
            } else {
                tree.insert(k.to_be_bytes(), format!("{m}:{i}"), seqno);
            }
            seqno += 1;
        }
        marks.push(seqno);
        tree.rotate_memtable();
    }
    assert_eq!(tree.sealed_memtable_count(), 3);
    let read = |at: u64| -> lsm_tree::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        tree.iter(at, None)
            .map(|g| g.into_inner().map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect()
    };
    let before: Vec<_> = marks.iter().map(|&at| read(at)).collect::<Result<_, _>>()?;
    let lock = tree.get_flush_lock();
    tree.flush(&lock, 0)?;
    drop(lock);
    assert_eq!(tree.sealed_memtable_count(), 0);
    assert!(tree.table_count() >= 1);
    let after: Vec<_> = marks.iter().map(|&at| read(at)).collect::<Result<_, _>>()?;
    assert_eq!(
        after, before,
        "every memtable's state, read at its last seqno"
    );
    assert!(before.iter().all(|s| !s.is_empty()));
    Ok(())
}
