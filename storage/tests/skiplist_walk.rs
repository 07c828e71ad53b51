//! crossbeam-skiplist as etch vendors it (`vendor/crossbeam-skiplist/ETCH-PATCH.md`): the walk
//! in stretches (`SkipMap::entries_in_order`) and the drop that frees nodes in the walk's order
//! must see exactly the linked entries, also after replacements and removals, whose old nodes
//! the epoch frees later: the walk must not yield them, and the drop must not free them (nor
//! any node twice).

use crossbeam_skiplist::SkipMap;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// A value that records its id in `drops` when dropped.
struct Tracked {
    id: u64,
    drops: Arc<Mutex<Vec<u64>>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.id);
    }
}

/// A scrambled key in `0..space`, as etch's key index receives keys (not in key order).
fn key(i: u64, space: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % space
}

/// A map from `n` inserts of keys in `0..2n/3` (so about a third replace an earlier entry),
/// with every fifth insert followed by the removal of another key; and the model of what it
/// holds (key -> id of the live value).
fn build(n: u64, drops: &Arc<Mutex<Vec<u64>>>) -> (SkipMap<u64, Tracked>, BTreeMap<u64, u64>) {
    let space = (2 * n / 3).max(1);
    let (map, mut model) = (SkipMap::new(), BTreeMap::new());
    for id in 0..n {
        let k = key(id, space);
        map.insert(
            k,
            Tracked {
                id,
                drops: drops.clone(),
            },
        );
        model.insert(k, id);
        if id % 5 == 4 {
            let gone = key(id * 7 + 3, space);
            map.remove(&gone);
            model.remove(&gone);
        }
    }
    (map, model)
}

/// (key, id) of every entry, in the order `entries_in_order` gives.
fn walked(map: &SkipMap<u64, Tracked>) -> Vec<(u64, u64)> {
    let entries = map.entries_in_order();
    (0..entries.len())
        .map(|i| {
            let (k, v) = entries.get(i).expect("an entry below len");
            (*k, v.id)
        })
        .collect()
}

#[test]
fn the_walk_yields_the_linked_entries_after_replacements_and_removals() {
    // Sizes around one stretch (16 nodes of level 4 are about 256 nodes) and well beyond.
    for n in [0u64, 1, 2, 17, 255, 256, 257, 5_000, 60_000] {
        let drops = Arc::new(Mutex::new(Vec::new()));
        let (map, model) = build(n, &drops);
        let want: Vec<(u64, u64)> = model.into_iter().collect();
        let plain: Vec<(u64, u64)> = map.iter().map(|e| (*e.key(), e.value().id)).collect();
        assert_eq!(
            plain, want,
            "{n} inserts: the plain iterator matches the model"
        );
        assert_eq!(
            walked(&map),
            want,
            "{n} inserts: the walk matches the model"
        );
        assert_eq!(map.entries_in_order().len(), map.len(), "{n} inserts");
    }
}

#[test]
fn the_drop_frees_every_linked_entry_once_and_no_removed_one() {
    for n in [0u64, 1, 17, 257, 5_000, 60_000] {
        let drops = Arc::new(Mutex::new(Vec::new()));
        let (map, model) = build(n, &drops);
        // Values replaced or removed so far may already be freed by the epoch, or not yet.
        let live: std::collections::HashSet<u64> = model.values().copied().collect();
        let before: Vec<u64> = drops.lock().expect("drops").clone();
        assert!(
            before.iter().all(|id| !live.contains(id)),
            "{n} inserts: no live value was freed before the drop"
        );
        drop(map);
        let after = drops.lock().expect("drops").clone();
        let mut times: HashMap<u64, usize> = HashMap::new();
        for id in &after {
            *times.entry(*id).or_default() += 1;
        }
        assert!(
            times.values().all(|&t| t == 1),
            "{n} inserts: a value was freed twice"
        );
        for live in model.values() {
            assert_eq!(
                times.get(live),
                Some(&1),
                "{n} inserts: live value {live} freed once by the drop"
            );
        }
        assert!(
            after.len() as u64 <= n,
            "{n} inserts: at most one drop per value"
        );
    }
}

#[test]
fn the_walk_after_concurrent_writers_matches_the_plain_iterator() {
    let drops = Arc::new(Mutex::new(Vec::new()));
    let map = Arc::new(SkipMap::new());
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let (map, drops) = (map.clone(), drops.clone());
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    let id = t * 1_000_000 + i;
                    map.insert(
                        key(id, 15_000),
                        Tracked {
                            id,
                            drops: drops.clone(),
                        },
                    );
                    if i % 4 == 3 {
                        map.remove(&key(id + 11, 15_000));
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("a writer thread");
    }
    let plain: Vec<(u64, u64)> = map.iter().map(|e| (*e.key(), e.value().id)).collect();
    assert_eq!(walked(&map), plain);
    assert!(plain.windows(2).all(|w| w[0].0 < w[1].0), "keys ascend");
}
