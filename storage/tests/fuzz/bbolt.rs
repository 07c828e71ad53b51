//! The bbolt reader (`etch_storage::bbolt::read_buckets`), fed the snapshot files users hand to
//! `etchctl snapshot status|restore`: files the writer made, read back unchanged; the same files
//! damaged (flipped bytes, truncation, garbage pages); and arbitrary bytes. Then a store is
//! restored from whatever decoded (`MvccStore::restore_etcd`): an error or a store, never a
//! panic.
//!
//! Long run: `PROPTEST_CASES=20000 cargo test --release -p etch-storage --test fuzz bbolt`.

use etch_storage::bbolt::{Bucket, Writer, read_buckets};
use etch_storage::mvcc::MvccStore;
use proptest::collection::vec;
use proptest::prelude::*;

fn buckets() -> impl Strategy<Value = Vec<Bucket>> {
    let entries = vec((vec(any::<u8>(), 1..40), vec(any::<u8>(), 0..600)), 0..80);
    vec((vec(any::<u8>(), 1..12), entries), 0..5).prop_map(|mut bs| {
        bs.sort_by(|a, b| a.0.cmp(&b.0));
        bs.dedup_by(|a, b| a.0 == b.0);
        for b in &mut bs {
            b.1.sort_by(|x, y| x.0.cmp(&y.0));
            b.1.dedup_by(|x, y| x.0 == y.0);
        }
        bs
    })
}

fn write(bs: &[Bucket]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut w = Writer::new(&mut out).expect("writer");
    for (name, entries) in bs {
        w.bucket(name, entries.iter().cloned().map(Ok))
            .expect("bucket");
    }
    w.finish().expect("finish");
    out.into_inner()
}

proptest! {
    #![proptest_config(crate::config(64))]

    #[test]
    fn written_files_read_back_and_damage_never_panics(
        bs in buckets(),
        flips in vec((any::<prop::sample::Index>(), 1u8..=255), 0..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let file = write(&bs);
        prop_assert_eq!(read_buckets(&file).expect("reads"), bs);
        let mut bad = file.clone();
        for (at, x) in &flips {
            let i = at.index(bad.len());
            bad[i] ^= x;
        }
        let _ = read_buckets(&bad);
        let _ = read_buckets(&file[..cut.index(file.len())]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..20_000)) {
        let _ = read_buckets(&bytes);
    }

    #[test]
    fn restoring_arbitrary_buckets_is_an_error_or_a_store(
        keys in vec((vec(any::<u8>(), 0..20), vec(any::<u8>(), 0..40)), 0..20),
        leases in vec((vec(any::<u8>(), 0..10), vec(any::<u8>(), 0..20)), 0..5),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MvccStore::open(dir.path()).expect("store");
        let bs = vec![(b"key".to_vec(), keys), (b"lease".to_vec(), leases)];
        let _ = store.restore_etcd(&bs);
    }
}
