//! Reading a bbolt file's top-level buckets (see the module doc of `super` for the layout).
//! Every offset, size and page id is checked before use: a damaged or hostile file is an
//! error, never a panic or an unbounded walk.

use super::*;

/// Why a file is not a readable bbolt file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid bbolt file: {0}")]
pub struct BoltError(pub String);

fn bad(why: impl Into<String>) -> BoltError {
    BoltError(why.into())
}

/// Deepest tree walked (bbolt trees of any real size are a few levels deep).
const MAX_DEPTH: usize = 64;

/// Every top-level bucket of the bbolt file `bytes`, in name order, with its entries in key
/// order (nested buckets are not followed: etcd has none).
///
/// # Errors
/// [`BoltError`] naming what is wrong: no valid meta page, a page out of the file, a page of
/// the wrong type, an element out of its page, a tree too deep.
pub fn read_buckets(bytes: &[u8]) -> Result<Vec<Bucket>, BoltError> {
    let meta = |page: usize, size: usize| -> Option<(u64, u64, u32)> {
        let at = page * size + PAGE_HEADER;
        let m = bytes.get(at..at + META_BYTES)?;
        let u32_at = |i: usize| u32::from_le_bytes(m[i..i + 4].try_into().unwrap_or_default());
        let u64_at = |i: usize| u64::from_le_bytes(m[i..i + 8].try_into().unwrap_or_default());
        let valid = u32_at(0) == MAGIC && u32_at(4) == VERSION && u64_at(56) == fnv64a(&m[..56]);
        // (txid, root, page size)
        valid.then(|| (u64_at(48), u64_at(16), u32_at(8)))
    };
    let first = meta(0, PAGE_SIZE);
    let page_size = first.map_or(PAGE_SIZE, |m| m.2 as usize);
    if !(512..=1 << 20).contains(&page_size) {
        return Err(bad(format!("page size {page_size}")));
    }
    let (_, root, _) = [first, meta(1, page_size)]
        .into_iter()
        .flatten()
        .max_by_key(|m| m.0)
        .ok_or_else(|| bad("no valid meta page"))?;
    let file = File {
        bytes,
        page_size,
        seen: Default::default(),
    };
    let mut buckets = Vec::new();
    for (name, value, flags) in file.entries(root)? {
        if flags & BUCKET_FLAG == 0 {
            return Err(bad("a top-level entry that is not a bucket"));
        }
        let entries = file.bucket(&value)?;
        buckets.push((name, entries.into_iter().map(|(k, v, _)| (k, v)).collect()));
    }
    Ok(buckets)
}

struct File<'a> {
    bytes: &'a [u8],
    page_size: usize,
    /// Pages already walked: each may be reached once (bbolt's `Tx.Check` rule), so a crafted
    /// file cannot make the walk revisit shared subtrees exponentially.
    seen: std::cell::RefCell<std::collections::HashSet<u64>>,
}

type Entry = (Vec<u8>, Vec<u8>, u32);

impl File<'_> {
    /// The entries of a bucket whose value (`{root, sequence}`, then an inline page when
    /// root is 0) is `value`.
    fn bucket(&self, value: &[u8]) -> Result<Vec<Entry>, BoltError> {
        let root = value
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .ok_or_else(|| bad("short bucket value"))?;
        if root != 0 {
            return self.entries(root);
        }
        let inline = value.get(16..).ok_or_else(|| bad("short inline bucket"))?;
        let mut out = Vec::new();
        leaf(inline, &mut out)?;
        Ok(out)
    }

    /// Every leaf entry of the tree rooted at page `root`, in order.
    fn entries(&self, root: u64) -> Result<Vec<Entry>, BoltError> {
        let mut out = Vec::new();
        self.walk(root, 0, &mut out)?;
        Ok(out)
    }

    fn walk(&self, pgid: u64, depth: usize, out: &mut Vec<Entry>) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(bad("tree too deep (a page loop?)"));
        }
        if !self.seen.borrow_mut().insert(pgid) {
            return Err(bad(format!("page {pgid} is reached twice")));
        }
        let page = self.page(pgid)?;
        let flags = u16::from_le_bytes([page[8], page[9]]);
        match flags {
            LEAF_PAGE => leaf(page, out),
            BRANCH_PAGE => {
                let count = usize::from(u16::from_le_bytes([page[10], page[11]]));
                for i in 0..count {
                    let at = PAGE_HEADER + i * ELEMENT;
                    let e = page
                        .get(at..at + ELEMENT)
                        .ok_or_else(|| bad(format!("page {pgid}: element out of page")))?;
                    let child = u64::from_le_bytes(e[8..16].try_into().unwrap_or_default());
                    self.walk(child, depth + 1, out)?;
                }
                Ok(())
            }
            f => Err(bad(format!("page {pgid}: flags {f:#x}, not a tree page"))),
        }
    }

    /// Page `pgid` with its overflow pages.
    fn page(&self, pgid: u64) -> Result<&[u8], BoltError> {
        let out_of_file = || bad(format!("page {pgid} is out of the file"));
        let start = usize::try_from(pgid)
            .ok()
            .and_then(|p| p.checked_mul(self.page_size))
            .ok_or_else(out_of_file)?;
        let head_end = start.checked_add(PAGE_HEADER).ok_or_else(out_of_file)?;
        let head = self.bytes.get(start..head_end).ok_or_else(out_of_file)?;
        let overflow = u32::from_le_bytes(head[12..16].try_into().unwrap_or_default()) as usize;
        let len = overflow
            .checked_add(1)
            .and_then(|n| n.checked_mul(self.page_size))
            .ok_or_else(out_of_file)?;
        let end = start.checked_add(len).ok_or_else(out_of_file)?;
        self.bytes.get(start..end).ok_or_else(out_of_file)
    }
}

/// The entries of the leaf page `page`.
fn leaf(page: &[u8], out: &mut Vec<Entry>) -> Result<(), BoltError> {
    let head = page
        .get(..PAGE_HEADER)
        .ok_or_else(|| bad("short leaf page"))?;
    let count = usize::from(u16::from_le_bytes([head[10], head[11]]));
    for i in 0..count {
        let at = PAGE_HEADER + i * ELEMENT;
        let e = page
            .get(at..at + ELEMENT)
            .ok_or_else(|| bad("leaf element out of page"))?;
        let word =
            |j: usize| u32::from_le_bytes(e[j..j + 4].try_into().unwrap_or_default()) as usize;
        let (flags, pos, ksize, vsize) = (word(0) as u32, word(4), word(8), word(12));
        let k0 = at
            .checked_add(pos)
            .ok_or_else(|| bad("leaf key out of page"))?;
        let k1 = k0
            .checked_add(ksize)
            .ok_or_else(|| bad("leaf key out of page"))?;
        let v1 = k1
            .checked_add(vsize)
            .ok_or_else(|| bad("leaf value out of page"))?;
        let k = page
            .get(k0..k1)
            .ok_or_else(|| bad("leaf key out of page"))?;
        let v = page
            .get(k1..v1)
            .ok_or_else(|| bad("leaf value out of page"))?;
        out.push((k.to_vec(), v.to_vec(), flags));
    }
    Ok(())
}
