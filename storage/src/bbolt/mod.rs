//! bbolt's file format, the one etcd keeps its backend in and streams as its snapshot: a
//! writer ([`Writer`]) so that etch's `Maintenance.Snapshot` is a file `etcdctl snapshot
//! status` and `etcdctl snapshot restore` accept, and a reader ([`read_buckets`]) so that
//! `etchctl snapshot status|restore` read etch's and etcd's snapshots alike.
//!
//! # Format (bbolt 1.3.6, `page.go`, `node.go`, `db.go`, `bucket.go`; little-endian)
//! The file is a sequence of pages of `page_size` bytes (4096 here); a page may extend over
//! `overflow` following pages.
//! - Page header, 16 bytes: `id u64 | flags u16 | count u16 | overflow u32`; flags: branch
//!   0x01, leaf 0x02, meta 0x04, freelist 0x10.
//! - Pages 0 and 1 are meta pages; after the header: `magic u32 (0xED0CDAED) | version u32 (2)
//!   | page_size u32 | flags u32 | root bucket {root pgid u64, sequence u64} | freelist pgid u64
//!   | pgid u64 (pages in the file) | txid u64 | checksum u64` (FNV-1a 64 of the 56 bytes before
//!   it). A reader takes the valid meta with the higher txid.
//! - Freelist page: `count` free page ids (u64) after the header (0 here: nothing is free).
//! - Leaf page: `count` elements of 16 bytes, `flags u32 | pos u32 | ksize u32 | vsize u32`,
//!   where the key starts `pos` bytes after the element itself and the value follows the key.
//!   Flag 0x01 marks a bucket: its value is `{root pgid u64, sequence u64}`, and when `root` is
//!   0 the bucket is inline: a leaf page follows in the value.
//! - Branch page: elements `pos u32 | ksize u32 | pgid u64`, the key being the first key of the
//!   child page. Keys are sorted bytewise within a bucket, children left to right.
//!
//! The writer lays every bucket out as its own tree of full pages (no inline buckets), leaves
//! first, then the levels of branches above them, then the root bucket's tree, then the two
//! meta pages; the result passes bbolt's `Tx.Check`.

mod read;
mod write;

pub use read::{BoltError, read_buckets};

/// One bucket's entries, (key, value), in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A top-level bucket: its name and entries.
pub type Bucket = (Vec<u8>, Entries);
pub use write::Writer;

/// Page size of the files written here (bbolt's default on Linux).
pub const PAGE_SIZE: usize = 4096;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
const BUCKET_FLAG: u32 = 0x01;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const META_BYTES: usize = 64;

/// FNV-1a 64 (bbolt's meta checksum).
fn fnv64a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(n: usize, vlen: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| (format!("key{i:08}").into_bytes(), vec![i as u8; vlen]))
            .collect()
    }

    #[test]
    fn written_files_read_back() {
        let buckets: Vec<Bucket> = vec![
            (b"empty".to_vec(), vec![]),
            (b"key".to_vec(), kv(5000, 40)),
            (b"large".to_vec(), kv(3, 10_000)),
            (b"meta".to_vec(), kv(2, 8)),
        ];
        let mut out = std::io::Cursor::new(Vec::new());
        let mut w = Writer::new(&mut out).unwrap();
        for (name, entries) in &buckets {
            w.bucket(name, entries.iter().cloned().map(Ok)).unwrap();
        }
        let size = w.finish().unwrap();
        let bytes = out.into_inner();
        assert_eq!(size as usize, bytes.len());
        assert_eq!(bytes.len() % PAGE_SIZE, 0);
        assert_eq!(read_buckets(&bytes).unwrap(), buckets);
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut w = Writer::new(&mut out).unwrap();
        w.bucket(b"key", kv(300, 20).into_iter().map(Ok)).unwrap();
        w.finish().unwrap();
        let bytes = out.into_inner();
        assert!(read_buckets(&bytes[..100]).is_err());
        let mut bad_meta = bytes.clone();
        bad_meta[20] ^= 1;
        bad_meta[PAGE_SIZE + 20] ^= 1;
        assert!(read_buckets(&bad_meta).is_err());
        // Any byte of a data page flipped: an error or other data, never a panic.
        for i in (2 * PAGE_SIZE..bytes.len()).step_by(97) {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = read_buckets(&b);
        }
    }
}
