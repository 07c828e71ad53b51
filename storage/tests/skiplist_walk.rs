//! crossbeam-skiplist as etch vendors it (`vendor/crossbeam-skiplist/ETCH-PATCH.md`): the walk
//! in stretches (`SkipMap::entries_in_order`) and the drop that frees nodes in the walk's order
//! must see exactly the linked entries, also after replacements and removals, whose old nodes
//! the epoch frees: the walk must not yield them, and the drop must not free them again (nor
//! any node twice). During concurrent writes the walk must stay safe and still find every
//! entry that stays in the map.

use crossbeam_skiplist::SkipMap;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

/// A value that records its id in `drops` when dropped; `key` is the key it was inserted under.
struct Tracked {
    id: u64,
    key: u64,
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
                key: k,
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
    // Entries left: none, a few (less than one stretch, about 16 nodes), about one group of 16
    // stretches (about 256 nodes) and many groups.
    for n in [0u64, 1, 2, 17, 60, 300, 600, 5_000, 60_000] {
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

/// Pins and flushes the epoch until `done` holds; the collector frees a removed node once no
/// thread is pinned in an epoch that could see it. Fails after 60 s (other tests of this
/// binary pin only briefly, so it takes milliseconds).
fn collect_until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "the epoch did not free the removed values"
        );
        crossbeam_epoch::pin().flush();
        std::thread::yield_now();
    }
}

#[test]
fn the_drop_frees_every_linked_entry_once_and_no_removed_one() {
    for n in [0u64, 1, 17, 300, 5_000, 60_000] {
        let drops = Arc::new(Mutex::new(Vec::new()));
        let (map, model) = build(n, &drops);
        let live: HashSet<u64> = model.values().copied().collect();
        // Every replaced or removed value is freed by the epoch, and no live one, before the
        // drop; the drop then frees exactly the live ones.
        collect_until(|| drops.lock().expect("drops").len() as u64 >= n - live.len() as u64);
        let before: HashSet<u64> = drops.lock().expect("drops").iter().copied().collect();
        assert_eq!(
            before.len() as u64,
            n - live.len() as u64,
            "{n} inserts: freed once"
        );
        assert!(
            before.is_disjoint(&live),
            "{n} inserts: no live value freed before the drop"
        );
        drop(map);
        let after = drops.lock().expect("drops").clone();
        let by_drop: Vec<u64> = after[before.len()..].to_vec();
        let by_drop_set: HashSet<u64> = by_drop.iter().copied().collect();
        assert_eq!(
            by_drop.len(),
            by_drop_set.len(),
            "{n} inserts: a value was freed twice"
        );
        assert_eq!(
            by_drop_set, live,
            "{n} inserts: the drop frees exactly the live values"
        );
    }
}

#[test]
fn the_walk_during_concurrent_writers_finds_every_entry_that_stays() {
    // Even keys stay in the map throughout; two writers insert and remove odd keys while the
    // walk runs (removed nodes include level-4 ones, the walk's stretch ends). A walk may then
    // miss or repeat odd keys, but must find every even key, and every entry it yields must be
    // a live or not yet freed node (its value names its key).
    let drops = Arc::new(Mutex::new(Vec::new()));
    let map = Arc::new(SkipMap::new());
    for k in (0..8_000u64).step_by(2) {
        map.insert(
            k,
            Tracked {
                id: k,
                key: k,
                drops: drops.clone(),
            },
        );
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let (map, drops, stop) = (map.clone(), drops.clone(), stop.clone());
            std::thread::spawn(move || {
                for i in 0..200_000u64 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let id = (t + 1) * 1_000_000 + i;
                    let k = key(id, 4_000) * 2 + 1;
                    if i % 2 == 0 {
                        map.insert(
                            k,
                            Tracked {
                                id,
                                key: k,
                                drops: drops.clone(),
                            },
                        );
                    } else {
                        map.remove(&k);
                    }
                }
            })
        })
        .collect();
    for _ in 0..200 {
        let entries = map.entries_in_order();
        let mut evens = HashSet::new();
        for i in 0..entries.len() {
            let (k, v) = entries.get(i).expect("an entry below len");
            assert_eq!(*k, v.key, "an entry's value belongs to its key");
            if k % 2 == 0 {
                evens.insert(*k);
            }
        }
        assert_eq!(evens.len(), 4_000, "every even key in each walk");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer thread");
    }
    // Quiet again: the walk is exact.
    let plain: Vec<(u64, u64)> = map.iter().map(|e| (*e.key(), e.value().id)).collect();
    assert_eq!(walked(&map), plain);
    assert!(plain.windows(2).all(|w| w[0].0 < w[1].0), "keys ascend");
}
