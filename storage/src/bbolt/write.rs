//! Writing a bbolt file in one pass (see the module doc of `super` for the layout).

use std::io::{self, Seek, SeekFrom, Write};

use super::*;

/// Writes a bbolt file: [`Writer::bucket`] once per top-level bucket, in bytewise name order,
/// each with its entries in bytewise key order, then [`Writer::finish`]. Memory holds one page
/// plus the first key of every page of the bucket being written.
pub struct Writer<W: Write + Seek> {
    out: W,
    next_pgid: u64,
    /// (name, root page) of every bucket written.
    buckets: Vec<(Vec<u8>, u64)>,
}

/// What one written page holds: its first key and its page id.
type Child = (Vec<u8>, u64);

impl<W: Write + Seek> Writer<W> {
    /// Starts a file on `out` (at its start): room for the two meta pages, and an empty
    /// freelist page.
    ///
    /// # Errors
    /// IO errors.
    pub fn new(mut out: W) -> io::Result<Writer<W>> {
        out.seek(SeekFrom::Start(0))?;
        out.write_all(&[0u8; 2 * PAGE_SIZE])?;
        let mut freelist = vec![0u8; PAGE_SIZE];
        header(&mut freelist, 2, FREELIST_PAGE, 0, 0);
        out.write_all(&freelist)?;
        Ok(Writer {
            out,
            next_pgid: 3,
            buckets: Vec::new(),
        })
    }

    /// Writes bucket `name` with `entries` (sorted by key, no duplicates).
    ///
    /// # Errors
    /// IO errors, an error of `entries`, and `InvalidInput` for a name or key out of order or
    /// a key or value over 4 GiB.
    pub fn bucket(
        &mut self,
        name: &[u8],
        entries: impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>>,
    ) -> io::Result<()> {
        if self
            .buckets
            .last()
            .is_some_and(|(n, _)| n.as_slice() >= name)
        {
            return Err(invalid("bucket names must be written in order"));
        }
        let root = self.tree(entries.map(|r| r.map(|(k, v)| (k, v, 0))))?;
        self.buckets.push((name.to_vec(), root));
        Ok(())
    }

    /// Writes the root bucket and the meta pages; returns the file's size, bytes.
    ///
    /// # Errors
    /// IO errors.
    pub fn finish(mut self) -> io::Result<u64> {
        let buckets = std::mem::take(&mut self.buckets);
        let root = self.tree(buckets.into_iter().map(|(name, pgid)| {
            let mut v = pgid.to_le_bytes().to_vec();
            v.extend_from_slice(&0u64.to_le_bytes());
            Ok((name, v, BUCKET_FLAG))
        }))?;
        let pages = self.next_pgid;
        for (id, txid) in [(0u64, 2u64), (1, 1)] {
            let mut page = vec![0u8; PAGE_SIZE];
            header(&mut page, id, META_PAGE, 0, 0);
            let m = &mut page[PAGE_HEADER..PAGE_HEADER + META_BYTES];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            m[16..24].copy_from_slice(&root.to_le_bytes());
            m[32..40].copy_from_slice(&2u64.to_le_bytes());
            m[40..48].copy_from_slice(&pages.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv64a(&m[..56]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
            self.out.seek(SeekFrom::Start(id * PAGE_SIZE as u64))?;
            self.out.write_all(&page)?;
        }
        self.out.seek(SeekFrom::Start(pages * PAGE_SIZE as u64))?;
        self.out.flush()?;
        Ok(pages * PAGE_SIZE as u64)
    }

    /// Writes the leaves of one bucket, then its branch levels; returns the root page.
    fn tree(
        &mut self,
        entries: impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>, u32)>>,
    ) -> io::Result<u64> {
        let mut children: Vec<Child> = Vec::new();
        let mut page: Vec<(Vec<u8>, Vec<u8>, u32)> = Vec::new();
        let mut used = PAGE_HEADER;
        let mut last: Option<Vec<u8>> = None;
        for e in entries {
            let (k, v, flags) = e?;
            if last.as_ref().is_some_and(|l| *l >= k) {
                return Err(invalid("keys must be written in order"));
            }
            if u32::try_from(k.len()).is_err() || u32::try_from(v.len()).is_err() {
                return Err(invalid("key or value over 4 GiB"));
            }
            last = Some(k.clone());
            let size = ELEMENT + k.len() + v.len();
            if !page.is_empty() && used + size > PAGE_SIZE {
                children.push(self.leaf(&std::mem::take(&mut page))?);
                used = PAGE_HEADER;
            }
            used += size;
            page.push((k, v, flags));
        }
        if !page.is_empty() || children.is_empty() {
            children.push(self.leaf(&page)?);
        }
        while children.len() > 1 {
            let mut level = Vec::new();
            let mut page: Vec<Child> = Vec::new();
            let mut used = PAGE_HEADER;
            for c in children {
                let size = ELEMENT + c.0.len();
                if !page.is_empty() && used + size > PAGE_SIZE {
                    level.push(self.branch(&std::mem::take(&mut page))?);
                    used = PAGE_HEADER;
                }
                used += size;
                page.push(c);
            }
            level.push(self.branch(&page)?);
            children = level;
        }
        Ok(children[0].1)
    }

    fn leaf(&mut self, items: &[(Vec<u8>, Vec<u8>, u32)]) -> io::Result<Child> {
        let data: usize = items.iter().map(|(k, v, _)| k.len() + v.len()).sum();
        let mut body = Vec::with_capacity(PAGE_HEADER + items.len() * ELEMENT + data);
        body.resize(PAGE_HEADER + items.len() * ELEMENT, 0);
        for (i, (k, v, flags)) in items.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            let pos = (body.len() - at) as u32;
            body[at..at + 4].copy_from_slice(&flags.to_le_bytes());
            body[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
            body[at + 8..at + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
            body[at + 12..at + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            body.extend_from_slice(k);
            body.extend_from_slice(v);
        }
        let first = items.first().map(|(k, _, _)| k.clone()).unwrap_or_default();
        self.page(body, LEAF_PAGE, items.len())
            .map(|id| (first, id))
    }

    fn branch(&mut self, children: &[Child]) -> io::Result<Child> {
        let mut body = vec![0u8; PAGE_HEADER + children.len() * ELEMENT];
        for (i, (k, pgid)) in children.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            let pos = (body.len() - at) as u32;
            body[at..at + 4].copy_from_slice(&pos.to_le_bytes());
            body[at + 4..at + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
            body[at + 8..at + 16].copy_from_slice(&pgid.to_le_bytes());
            body.extend_from_slice(k);
        }
        let first = children.first().map(|c| c.0.clone()).unwrap_or_default();
        self.page(body, BRANCH_PAGE, children.len())
            .map(|id| (first, id))
    }

    /// Writes one page (with overflow pages when `body` needs them); returns its id.
    fn page(&mut self, mut body: Vec<u8>, flags: u16, count: usize) -> io::Result<u64> {
        let count = u16::try_from(count).map_err(|_| invalid("too many elements in a page"))?;
        let pages = body.len().div_ceil(PAGE_SIZE).max(1);
        body.resize(pages * PAGE_SIZE, 0);
        let id = self.next_pgid;
        header(&mut body, id, flags, count, (pages - 1) as u32);
        self.out.write_all(&body)?;
        self.next_pgid += pages as u64;
        Ok(id)
    }
}

fn header(page: &mut [u8], id: u64, flags: u16, count: u16, overflow: u32) {
    page[0..8].copy_from_slice(&id.to_le_bytes());
    page[8..10].copy_from_slice(&flags.to_le_bytes());
    page[10..12].copy_from_slice(&count.to_le_bytes());
    page[12..16].copy_from_slice(&overflow.to_le_bytes());
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why.to_owned())
}
