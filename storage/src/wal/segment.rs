//! One segment file: naming, creation (preallocated, seeded), record encoding and the
//! checked read used by recovery. The format is specified in the parent module.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Bytes before a record's payload: length (4), crc (4), type (1).
pub const RECORD_HEADER_BYTES: usize = 9;

/// Bytes of a seed record: header and the previous segment's crc (u32).
const SEED_RECORD_BYTES: usize = RECORD_HEADER_BYTES + 4;

/// A WAL record's type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// First record of each segment: the previous segment's last crc.
    Seed = 1,
    /// A raft entry.
    Entry = 2,
    /// A raft hard state.
    HardState = 3,
    /// A log-release point (snapshot metadata): entries up to its index are gone.
    Snapshot = 4,
    /// A snapshot installed from the leader (snapshot metadata): the log restarts at its
    /// index, and every entry written before it is gone (raft-rs's `restore` drops the whole
    /// log: entries past the index were another term's and must not come back at restart).
    Install = 5,
}

impl RecordType {
    fn from_u8(b: u8) -> Option<RecordType> {
        Some(match b {
            1 => RecordType::Seed,
            2 => RecordType::Entry,
            3 => RecordType::HardState,
            4 => RecordType::Snapshot,
            5 => RecordType::Install,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SegmentName {
    pub(super) seq: u64,
    pub(super) first_index: u64,
}

impl SegmentName {
    pub(super) fn parse(s: &str) -> Option<SegmentName> {
        let stem = s.strip_suffix(".wal")?;
        let (a, b) = stem.split_once('-')?;
        if a.len() != 16 || b.len() != 16 {
            return None;
        }
        Some(SegmentName {
            seq: u64::from_str_radix(a, 16).ok()?,
            first_index: u64::from_str_radix(b, 16).ok()?,
        })
    }

    pub(super) fn file_name(&self) -> String {
        format!("{:016x}-{:016x}.wal", self.seq, self.first_index)
    }
}

/// Appends one record to `buf`; returns its crc (the next record's seed).
pub(super) fn encode_record(buf: &mut Vec<u8>, seed: u32, ty: RecordType, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(&[ty as u8]);
    h.update(payload);
    let crc = h.finalize();
    // Records are bounded far below 4 GiB by the request size limits; saturate defensively.
    let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.push(ty as u8);
    buf.extend_from_slice(payload);
    crc
}

/// Creates segment `name` preallocated to `size` bytes, writes its Seed record and syncs
/// it. Returns the file, the write offset after the seed, and the seed record's crc.
pub(super) fn create(
    dir: &Path,
    name: SegmentName,
    prev_crc: u32,
    size: u64,
) -> Result<(File, u64, u32)> {
    let path = dir.join(name.file_name());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    file.set_len(size).map_err(|e| Error::io(&path, e))?;
    let (offset, crc) = write_seed(&file, &path, prev_crc)?;
    Ok((file, offset, crc))
}

/// Writes the seed record carrying `prev_crc` at offset 0 and syncs. Returns the write offset
/// after it and its crc.
pub(super) fn write_seed(file: &File, path: &Path, prev_crc: u32) -> Result<(u64, u32)> {
    use std::os::unix::fs::FileExt;
    let mut buf = Vec::new();
    let crc = encode_record(&mut buf, 0, RecordType::Seed, &prev_crc.to_le_bytes());
    file.write_all_at(&buf, 0)
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io(path, e))?;
    Ok((buf.len() as u64, crc))
}

/// Zeroes `[from, end of file)` and syncs: removes a torn tail so the next append starts clean.
pub(super) fn zero_tail(file: &File, path: &Path, from: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let zeros = vec![0u8; 1 << 20];
    let mut off = from;
    while off < len {
        let n = ((len - off) as usize).min(zeros.len());
        file.write_all_at(&zeros[..n], off)
            .map_err(|e| Error::io(path, e))?;
        off += n as u64;
    }
    file.sync_data().map_err(|e| Error::io(path, e))
}

pub(super) struct SegmentEnd {
    pub(super) end_offset: u64,
    pub(super) last_crc: u32,
    pub(super) truncated_bytes: u64,
    /// Whether the segment starts with a valid seed record. Only the last segment may lack
    /// one: a crash while [`create`] ran left it zero-filled, empty or with a torn seed and
    /// nothing after it; the caller writes the seed again before appending.
    pub(super) seeded: bool,
}

/// Reads and checks every record of one segment, calling `on_record(type, payload, offset)`.
/// `prev_crc`: the previous segment's last crc, `None` for the oldest segment.
/// `is_last`: a bad record is a torn tail (stop and report) instead of corruption; a bad or
/// missing seed with nothing written after it is a torn creation (reported as not seeded).
pub(super) fn read_segment(
    path: &Path,
    prev_crc: Option<u32>,
    is_last: bool,
    mut on_record: impl FnMut(RecordType, &[u8], u64) -> Result<()>,
) -> Result<SegmentEnd> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| Error::io(path, e))?;
    let mut off = 0usize;
    let mut crc = 0u32;
    let mut first = true;
    let bad = |off: usize, reason: String| -> Result<SegmentEnd> {
        Err(Error::Corrupt {
            file: path.to_owned(),
            offset: off as u64,
            reason,
        })
    };
    'records: loop {
        let fail = |reason: String| -> Option<String> { Some(reason) };
        let problem: Option<String> = 'rec: {
            if off + RECORD_HEADER_BYTES > data.len() {
                if data[off..].iter().all(|&b| b == 0) {
                    break 'rec None;
                }
                break 'rec fail("record header past end of file".into());
            }
            let len = u32::from_le_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
                as usize;
            if len == 0 {
                // End of written data, unless something non-zero follows (a damaged length).
                let rest = &data[off..(off + 4096).min(data.len())];
                if rest.iter().all(|&b| b == 0) {
                    break 'rec None;
                }
                break 'rec fail("zero length followed by data".into());
            }
            let end = off + 8 + len;
            if end > data.len() {
                break 'rec fail(format!("record length {len} past end of file"));
            }
            let want =
                u32::from_le_bytes([data[off + 4], data[off + 5], data[off + 6], data[off + 7]]);
            let body = &data[off + 8..end];
            let seed = if first { 0 } else { crc };
            let mut h = crc32fast::Hasher::new_with_initial(seed);
            h.update(body);
            let got = h.finalize();
            if got != want {
                break 'rec fail(format!(
                    "crc mismatch: stored {want:08x}, computed {got:08x}"
                ));
            }
            let Some(ty) = RecordType::from_u8(body[0]) else {
                break 'rec fail(format!("unknown record type {}", body[0]));
            };
            if first {
                if ty != RecordType::Seed || body.len() != 5 {
                    break 'rec fail("segment does not start with a seed record".into());
                }
                let seeded = u32::from_le_bytes([body[1], body[2], body[3], body[4]]);
                // The oldest remaining segment's predecessor may have been released.
                if let Some(prev_crc) = prev_crc
                    && seeded != prev_crc
                {
                    return bad(
                        off,
                        format!(
                            "seed {seeded:08x} does not continue the previous segment's crc {prev_crc:08x}"
                        ),
                    );
                }
                first = false;
            } else {
                on_record(ty, &body[1..], off as u64)?;
            }
            crc = got;
            off = end;
            continue 'records;
        };
        let tail = |from: usize| {
            data[from.min(data.len())..]
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |p| p + 1) as u64
        };
        return match problem {
            None => Ok(SegmentEnd {
                end_offset: off as u64,
                last_crc: crc,
                truncated_bytes: 0,
                seeded: !first,
            }),
            // A record that fails but is followed by valid ones, with no unwritten sector
            // between, was damaged after it was written (a flipped bit): that is corruption
            // even in the last segment, not a torn write.
            Some(reason) if is_last && !first && followed_by_valid_record(&data, off, crc) => bad(
                off,
                format!("{reason}; valid records follow it, so it is corruption, not a torn write"),
            ),
            Some(reason) if is_last && !first => {
                tracing::warn!(file = %path.display(), offset = off, %reason,
                    "WAL: torn tail in last segment");
                Ok(SegmentEnd {
                    end_offset: off as u64,
                    last_crc: crc,
                    truncated_bytes: tail(off),
                    seeded: true,
                })
            }
            // Nothing was ever written after the seed: the crash interrupted the segment's
            // creation, so no acknowledged record is lost by starting it again.
            Some(reason) if is_last && tail(SEED_RECORD_BYTES) == 0 => {
                tracing::warn!(file = %path.display(), %reason,
                    "WAL: torn seed record in the last segment");
                Ok(SegmentEnd {
                    end_offset: 0,
                    last_crc: 0,
                    truncated_bytes: tail(0),
                    seeded: false,
                })
            }
            Some(reason) => bad(off, reason),
        };
    }
}

/// Whether the (bad) record at `off` (chained from `seed`) was damaged after it was written
/// rather than torn: a valid record follows it, chained either from its stored crc (its
/// payload was damaged) or from the crc its bytes give (its stored crc was damaged), or, when
/// its length is damaged, found within the next 16 KiB; and no 512-byte sector between them is
/// all zeros (a write torn by a power loss can leave a sector of the preallocated segment
/// unwritten while later ones reached the disk, as etcd's `isTornEntry` allows).
fn followed_by_valid_record(data: &[u8], off: usize, seed: u32) -> bool {
    const SECTOR: usize = 512;
    /// Candidate records in the length scan are at most this long (a record is one raft entry,
    /// bounded by the request size limit): keeps the scan's cost bounded on garbage.
    const SCAN_MAX_RECORD: usize = 4 << 20;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
    };
    let valid_at = |at: usize, seed: u32, max: usize| -> bool {
        let (Some(len), Some(want)) = (word(at), word(at + 4)) else {
            return false;
        };
        let end = at + 8 + len as usize;
        if len == 0 || len as usize > max || end > data.len() {
            return false;
        }
        let body = &data[at + 8..end];
        if RecordType::from_u8(body[0]).is_none() {
            return false;
        }
        let mut h = crc32fast::Hasher::new_with_initial(seed);
        h.update(body);
        h.finalize() == want
    };
    let lost_sector = |to: usize| -> bool {
        let first = off.div_ceil(SECTOR) * SECTOR;
        (first..to.min(data.len()))
            .step_by(SECTOR)
            .any(|s| s + SECTOR <= to && data[s..s + SECTOR].iter().all(|&b| b == 0))
    };
    let (Some(len), Some(stored)) = (word(off), word(off + 4)) else {
        return false;
    };
    if len == 0 {
        return false;
    }
    let next = off + 8 + len as usize;
    if next <= data.len() {
        let computed = {
            let mut h = crc32fast::Hasher::new_with_initial(seed);
            h.update(&data[off + 8..next]);
            h.finalize()
        };
        if valid_at(next, stored, usize::MAX) || valid_at(next, computed, usize::MAX) {
            return !lost_sector(next);
        }
    }
    // A damaged length: look for the next record, chained from the stored crc, within the
    // next 16 KiB (the records of a torn tail are followed by zeros, which no candidate
    // survives).
    (off + 9..data.len().min(off + 8 + 16 * 1024))
        .find(|&at| valid_at(at, stored, SCAN_MAX_RECORD))
        .is_some_and(|at| !lost_sector(at))
}
