//! fjall's LSM tree as etch builds it (`vendor/lsm-tree`): a flush or a compaction finishes its
//! tables and persists its new version (fsyncs) without holding the version history's write
//! lock, which every write batch needs for a moment, and takes that lock only to append the
//! version. A memtable rotation can run in between; the appended version must then keep the
//! rotated memtables. The first test writes while another thread flushes and compacts,
//! rotating the memtable every few hundred writes; the second writes and rotates from inside
//! one flush, at that point, through a hook of the vendored tree built for etch's tests only.
//! Both read every write back, before and after the tree is reopened from disk.

use lsm_tree::{AbstractTree, AnyTree, Config, SequenceNumberCounter, compaction::Leveled};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The `i`th key, in a scrambled order (as etch's key index receives its keys).
fn key(i: u64) -> [u8; 8] {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
}

/// The `i`th key's value (32 bytes).
fn value(i: u64) -> Vec<u8> {
    i.to_le_bytes().repeat(4)
}

fn open(dir: &Path, seqno: &SequenceNumberCounter) -> AnyTree {
    Config::new(dir, seqno.clone(), SequenceNumberCounter::default())
        .open()
        .expect("open the tree")
}

/// Fails unless the tree returns each of the keys `0..n` with its value at `seqno`, naming
/// the count and the first few keys it lost `when`.
fn assert_all_readable(tree: &AnyTree, n: u64, seqno: u64, when: &str) {
    let lost: Vec<u64> = (0..n)
        .filter(|&i| tree.get(key(i), seqno).expect("read").as_deref() != Some(value(i).as_slice()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {n} writes lost {when} (first: {:?})",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Flushes that wrote tables during [`write_during_maintenance`] before the writes stop.
const FLUSHES: u64 = 100;

/// Writes keys `0, 1, ...`, rotating the memtable every `rotate_every` writes, while another
/// thread flushes every sealed memtable and compacts (leveled, as fjall's keyspaces do), until
/// that thread has made [`FLUSHES`] flushes or `max` keys are written. The writer waits while
/// more than eight memtables wait for a flush. Returns the number of
/// keys written and of flushes made.
fn write_during_maintenance(
    tree: &AnyTree,
    seqno: &SequenceNumberCounter,
    max: u64,
    rotate_every: u64,
) -> (u64, u64) {
    let done = AtomicBool::new(false);
    let flushes = AtomicU64::new(0);
    std::thread::scope(|s| {
        let maintenance = s.spawn(|| {
            let strategy = Arc::new(Leveled::default());
            while !done.load(Ordering::Acquire) {
                let lock = tree.get_flush_lock();
                if tree.flush(&lock, 0).expect("flush").is_some() {
                    flushes.fetch_add(1, Ordering::AcqRel);
                }
                drop(lock);
                tree.compact(strategy.clone(), 0).expect("compact");
                std::thread::yield_now();
            }
        });
        let mut n = 0;
        while n < max && flushes.load(Ordering::Acquire) < FLUSHES {
            tree.insert(key(n), value(n), seqno.next());
            n += 1;
            if n % rotate_every == 0 {
                tree.rotate_memtable();
                // As fjall stalls writes while flushes fall behind: keep each flush small, so
                // that many run (and install versions) while the writes go on.
                while tree.sealed_memtable_count() > 8 && !maintenance.is_finished() {
                    std::thread::yield_now();
                }
            }
        }
        done.store(true, Ordering::Release);
        (n, flushes.load(Ordering::Acquire))
    })
}

#[test]
fn no_write_is_lost_when_memtables_rotate_while_versions_are_installed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let seqno = SequenceNumberCounter::default();
    let tree = open(dir.path(), &seqno);

    let (n, flushes) = write_during_maintenance(&tree, &seqno, 2_000_000, 100);
    // The run must have installed versions while writes went on, or it shows nothing.
    assert!(
        flushes >= FLUSHES,
        "only {flushes} flushes ran during {n} writes"
    );

    assert_all_readable(&tree, n, seqno.get(), "after flushes and compactions");

    // What is on disk is the whole tree once the last memtable is flushed.
    tree.flush_active_memtable(0).expect("last flush");
    drop(tree);
    let reopened = open(dir.path(), &seqno);
    assert_all_readable(&reopened, n, seqno.get(), "after reopening");
}

/// The same race, reached every run: a hook in the tree (`lsm_tree::test_hooks`, built for
/// etch's tests only) runs between a flush persisting its new version and appending it, and
/// there writes keys, rotates the memtable (sealing them) and writes more into the new active
/// memtable. The appended version must keep both memtables; a version built from the state
/// the flush started from would lose every key the hook wrote.
#[test]
fn writes_and_a_rotation_between_a_flushes_persist_and_append_are_kept() {
    /// Keys in the sealed memtable the flush writes out.
    const SEALED: u64 = 1_000;
    /// Keys the hook writes before its rotation, and as many after it.
    const DURING: u64 = 500;
    let dir = tempfile::tempdir().expect("temp dir");
    let seqno = SequenceNumberCounter::default();
    let tree = open(dir.path(), &seqno);
    for i in 0..SEALED {
        tree.insert(key(i), value(i), seqno.next());
    }
    tree.rotate_memtable().expect("a memtable to seal");

    let ran = Arc::new(AtomicU64::new(0));
    {
        let (tree, seqno, ran) = (tree.clone(), seqno.clone(), ran.clone());
        let own = std::fs::canonicalize(dir.path()).expect("the tree's directory");
        lsm_tree::test_hooks::set_before_version_append(Some(Box::new(move |path| {
            // Other tests' trees in this process reach the hook too.
            if std::fs::canonicalize(path).ok().as_deref() != Some(own.as_path())
                || ran.fetch_add(1, Ordering::AcqRel) > 0
            {
                return;
            }
            for i in SEALED..SEALED + DURING {
                tree.insert(key(i), value(i), seqno.next());
            }
            tree.rotate_memtable().expect("the hook's memtable to seal");
            for i in SEALED + DURING..SEALED + 2 * DURING {
                tree.insert(key(i), value(i), seqno.next());
            }
        })));
    }
    let lock = tree.get_flush_lock();
    let flushed = tree.flush(&lock, 0).expect("flush");
    drop(lock);
    // Cleared (and the hook's handle on the tree dropped) before any assertion can fail.
    lsm_tree::test_hooks::set_before_version_append(None);
    assert!(flushed.is_some(), "the flush wrote a table");
    assert_eq!(
        ran.load(Ordering::Acquire),
        1,
        "the hook ran once, inside the flush"
    );
    assert_eq!(
        tree.sealed_memtable_count(),
        1,
        "the memtable the hook sealed waits for the next flush"
    );
    let n = SEALED + 2 * DURING;
    assert_all_readable(&tree, n, seqno.get(), "after the flush");

    tree.flush_active_memtable(0).expect("last flush");
    drop(tree);
    let reopened = open(dir.path(), &seqno);
    assert_all_readable(&reopened, n, seqno.get(), "after reopening");
}
