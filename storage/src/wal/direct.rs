//! Writes to the current segment that bypass the page cache (`O_DIRECT`, Linux).
//!
//! A buffered write copies the records into the page cache, and the `fdatasync` after it then
//! finds and writes back the dirty pages before it flushes the device's cache. A direct write
//! hands the records to the device at once, so the `fdatasync` only flushes the device's
//! cache. On this project's test machine that made a one-client put a little faster (3
//! members, etcd's benchmark tool: 1,188 -> 1,244 puts/s, medians of 4 alternated runs) and
//! left the CPU per write as it was (docs/performance.md).
//!
//! A direct write must start and end on a block boundary and come from memory aligned to it.
//! [`Tail`] keeps the segment's last partial block in an aligned buffer: each write starts at
//! the block that holds the log's end, rewrites that block's records as they are, adds the
//! new records and pads the last block with zeros (the segment's unused tail is zero anyway).
//! Rewriting a block that already holds synced records is safe: its bytes are the same, so a
//! write torn by a crash leaves them as they were.
//!
//! A filesystem that refuses `O_DIRECT` (tmpfs) or its alignment gets buffered writes, as
//! before: [`open`] answers `None` and the WAL writes through the page cache.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The alignment and granularity of direct writes, bytes: the page size, and the physical
/// sector of 4Kn disks (a 512-byte write there is a read-modify-write inside the disk).
pub(super) const BLOCK: usize = 4096;

/// The open flag `O_DIRECT`: Linux's, whose alignment rules [`Tail`] follows; elsewhere the
/// WAL writes through the page cache.
#[cfg(target_os = "linux")]
const DIRECT: Option<i32> = Some(rustix::fs::OFlags::DIRECT.bits() as i32);
#[cfg(not(target_os = "linux"))]
const DIRECT: Option<i32> = None;

/// The most buffer a [`Tail`] keeps between writes, in blocks (4 MiB): a larger batch (a
/// snapshot record, a huge entry) gets its buffer back after its write.
const KEEP_BLOCKS: usize = 1024;

/// One aligned block of the write buffer.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(4096))]
struct Block([u8; BLOCK]);

/// The aligned write buffer of a segment opened with `O_DIRECT`. Its first
/// `offset % BLOCK` bytes are the records already in the block that holds the log's end.
pub(super) struct Tail {
    blocks: Vec<Block>,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("blocks", &self.blocks.len())
            .finish()
    }
}

/// Opens the segment at `path` for direct writes, the log ending at `offset` (bytes), and
/// checks that the filesystem takes them by writing the block holding `offset` again as it
/// is (zeros past `offset`, as the segment's unused tail). Returns `None` when the
/// filesystem refuses `O_DIRECT` or its alignment (`EINVAL`): the caller writes through the
/// page cache.
///
/// # Errors
/// Any other error opening, reading or writing the file.
pub(super) fn open(path: &Path, offset: u64) -> std::io::Result<Option<(File, Tail)>> {
    let Some(direct) = DIRECT else {
        return Ok(None);
    };
    let file = match OpenOptions::new()
        .write(true)
        .custom_flags(direct)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut tail = Tail {
        blocks: vec![Block([0; BLOCK])],
    };
    let (start, head) = block_of(offset);
    // A buffered read sees the direct writes: the kernel drops the cached pages they cover.
    File::open(path)?.read_exact_at(&mut tail.blocks.as_mut_bytes()[..head], start)?;
    match file.write_all_at(tail.blocks.as_bytes(), start) {
        Ok(()) => Ok(Some((file, tail))),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The block that holds byte `offset`: its start (bytes) and how far into it `offset` is.
fn block_of(offset: u64) -> (u64, usize) {
    let head = (offset % BLOCK as u64) as usize;
    (offset - head as u64, head)
}

/// Where a direct write of a log ending at `end` (bytes) ends: the next block boundary.
pub(super) fn padded_end(end: u64) -> u64 {
    end.next_multiple_of(BLOCK as u64)
}

impl Tail {
    /// Writes `records` to `file` (opened by [`open`]) at `offset`, the log's end (bytes):
    /// whole blocks from the one holding `offset` to [`padded_end`]`(offset + len)`.
    ///
    /// # Errors
    /// The write's; the buffer no longer matches the file then (the WAL is not used after a
    /// write error).
    pub(super) fn write(
        &mut self,
        file: &File,
        offset: u64,
        records: &[u8],
    ) -> std::io::Result<()> {
        let (start, head) = block_of(offset);
        let len = head + records.len();
        let padded = len.next_multiple_of(BLOCK);
        if self.blocks.len() < padded / BLOCK {
            self.blocks.resize(padded / BLOCK, Block([0; BLOCK]));
        }
        let bytes = self.blocks.as_mut_bytes();
        bytes[head..len].copy_from_slice(records);
        bytes[len..padded].fill(0);
        file.write_all_at(&bytes[..padded], start)?;
        // The new end's block, with the records it holds so far, opens the next write.
        let keep = len % BLOCK;
        bytes.copy_within(len - keep..len, 0);
        if self.blocks.len() > KEEP_BLOCKS {
            self.blocks.truncate(1);
            self.blocks.shrink_to_fit();
        }
        Ok(())
    }
}
