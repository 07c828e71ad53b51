//! The write-ahead log: the durable record of raft entries and hard state.
//!
//! # Files
//! `<dir>/{seq:016x}-{first_index:016x}.wal`: `seq` counts segments from 0 without gaps;
//! `first_index` is the raft index of the first entry the segment may hold. A segment is
//! preallocated to [`SEGMENT_BYTES`] (64 MiB unless configured) and filled from the start; the
//! unused tail is zero. When the next record does not fit, a new segment is cut (a record
//! larger than a segment gets a segment of its own, longer than the preallocation). A segment
//! is created sparse; a thread of the WAL's own writes real zeros a few MiB ahead of the
//! writer (the `zeroer` module), so an `fdatasync` after a write needs no block allocation.
//!
//! # Record
//! ```text
//! offset  size  field
//! 0       4     length   u32 little-endian: bytes of type + payload (>= 1; 0 marks the end)
//! 4       4     crc      u32 little-endian: CRC-32 (IEEE, crc32fast) of type + payload,
//!                        seeded with the previous record's crc (chained, as etcd's WAL);
//!                        the first record of every segment is seeded with 0
//! 8       1     type     1 = Seed, 2 = Entry, 3 = HardState, 4 = Snapshot, 5 = Install
//! 9       n     payload  length - 1 bytes
//! ```
//! Payloads: `Seed` holds the previous segment's last crc (u32 LE; 0 for the first segment),
//! so the chain continues across files; `Entry` is a raft-rs `eraftpb::Entry`, `HardState` an
//! `eraftpb::HardState`, `Snapshot` an `eraftpb::SnapshotMetadata` (index, term, conf state)
//! marking that the log up to `index` was released (later entries stay), `Install` the same
//! metadata for a snapshot installed from the leader (the log restarts there: every entry
//! before the record is dropped), all protobuf-encoded (raft-rs's codec).
//!
//! Worked example: a segment's first record, a Seed with crc 0 from no previous segment:
//! `05 00 00 00 | c(01 00 00 00 00) | 01 | 00 00 00 00`, where `c` is the little-endian
//! CRC-32 of the 5 bytes `01 00 00 00 00` seeded with 0.
//!
//! # Recovery
//! [`Wal::open`] reads every segment in order and checks every record. In the LAST segment,
//! the first bad record (CRC mismatch, length past the end of the file, unknown type) and
//! everything after it is a torn tail left by a crash during a write that was never
//! acknowledged: it is zeroed and reported ([`Recovered::truncated_bytes`]). A bad record in
//! any OTHER segment is corruption: [`crate::Error::Corrupt`] names the file and offset and
//! the node refuses to start.
//!
//! # Durability
//! [`Wal::append`] writes records to the OS; [`Wal::sync`] makes everything appended so far
//! durable with one `fdatasync` (group commit: callers append many records, then sync once).

mod segment;
mod zeroer;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, SnapshotMetadata};

use crate::error::{Error, Result};
pub use segment::{RECORD_HEADER_BYTES, RecordType};
use segment::{SegmentName, read_segment};

/// Default size of one preallocated segment file: 64 MiB.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Smallest segment size accepted: 64 KiB.
pub const MIN_SEGMENT_BYTES: u64 = 64 * 1024;

/// What [`Wal::open`] found on disk.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The latest log-release point, if any: entries at or below its index are gone.
    pub snapshot: Option<SnapshotMetadata>,
    /// The last hard state written.
    pub hard_state: Option<HardState>,
    /// Entries after the snapshot, in index order, with later writes of an index replacing
    /// earlier ones (raft log truncation).
    pub entries: Vec<Entry>,
    /// Bytes of torn tail zeroed in the last segment (0 when the log was clean).
    pub truncated_bytes: u64,
}

/// An open write-ahead log. Single writer; not `Sync`-shared.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    segments: Vec<SegmentName>,
    file: File,
    /// Write offset within the current (last) segment, bytes.
    offset: u64,
    /// crc of the last record written (the chain's seed for the next one).
    crc: u32,
    /// Bytes encoded but not yet written.
    buf: Vec<u8>,
    /// Index of the last entry appended (for naming the next segment).
    last_index: u64,
    /// Size of new segments, bytes.
    segment_bytes: u64,
    /// The newest hard state appended (or recovered): written again at the start of every new
    /// segment, so [`Wal::release_to`] never deletes the only record of the term and vote
    /// (the member's Raft hard state may go unwritten for many segments: a hard state that
    /// only moves the commit index waits for the next entries).
    hard_state: Option<HardState>,
    /// Zero-fills the current segment ahead of the writes (see the `zeroer` module).
    zeroer: zeroer::Zeroer,
}

impl Wal {
    /// Opens the WAL in `dir`, creating it (with an empty first segment) if there is none, and
    /// recovers its contents.
    ///
    /// # Errors
    /// [`Error::Io`] on file errors, [`Error::Corrupt`] for a bad record outside the last
    /// segment's tail, [`Error::SegmentSequence`] for missing segments.
    pub fn open(dir: &Path) -> Result<(Wal, Recovered)> {
        Self::open_with_segment_bytes(dir, SEGMENT_BYTES)
    }

    /// [`Wal::open`] with new segments of `segment_bytes` (at least [`MIN_SEGMENT_BYTES`]);
    /// tests use small segments to exercise segment boundaries.
    ///
    /// # Errors
    /// As [`Wal::open`].
    pub fn open_with_segment_bytes(dir: &Path, segment_bytes: u64) -> Result<(Wal, Recovered)> {
        let segment_bytes = segment_bytes.max(MIN_SEGMENT_BYTES);
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut names = Vec::new();
        for ent in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let ent = ent.map_err(|e| Error::io(dir, e))?;
            if let Some(name) = ent.file_name().to_str().and_then(SegmentName::parse) {
                names.push(name);
            }
        }
        names.sort_by_key(|n| n.seq);
        for w in names.windows(2) {
            if w[1].seq != w[0].seq + 1 {
                return Err(Error::SegmentSequence {
                    dir: dir.to_owned(),
                    reason: format!("segment {} follows {}", w[1].seq, w[0].seq),
                });
            }
        }
        if names.is_empty() {
            let first = SegmentName {
                seq: 0,
                first_index: 1,
            };
            let (file, offset, crc) = segment::create(dir, first, 0, segment_bytes)?;
            sync_dir(dir)?;
            let zeroer = zeroer::Zeroer::start(dir.join(first.file_name()), offset, segment_bytes);
            let wal = Wal {
                dir: dir.to_owned(),
                segments: vec![first],
                file,
                offset,
                crc,
                buf: Vec::new(),
                last_index: 0,
                segment_bytes,
                hard_state: None,
                zeroer,
            };
            return Ok((wal, Recovered::default()));
        }

        let mut rec = Recovered::default();
        let mut prev_crc: Option<u32> = None;
        let mut end = (0u64, 0u32);
        // The crc the last segment's seed carries, and whether it has a valid seed.
        let (mut last_seed, mut seeded) = (0u32, true);
        let last = names.len() - 1;
        // Whether the last segment holds a hard state (see `Wal::hard_state`).
        let mut last_has_hard_state = false;
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name.file_name());
            last_seed = prev_crc.unwrap_or(0);
            let seg = read_segment(&path, prev_crc, i == last, |ty, payload, offset| {
                if i == last && matches!(ty, RecordType::HardState) {
                    last_has_hard_state = true;
                }
                apply_record(&mut rec, ty, payload).map_err(|reason| Error::Corrupt {
                    file: path.clone(),
                    offset,
                    reason,
                })
            })?;
            prev_crc = Some(seg.last_crc);
            rec.truncated_bytes += seg.truncated_bytes;
            end = (seg.end_offset, seg.last_crc);
            seeded = seg.seeded;
        }
        let last_name = names[last];
        let path = dir.join(last_name.file_name());
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if !seeded {
            // A crash while the segment was created (zero-filled, empty, or a torn seed with
            // nothing after it): records appended without a seed would make the next open
            // fail, so write it now, continuing the previous segment's chain.
            segment::zero_tail(&file, &path, 0)?;
            end = segment::write_seed(&file, &path, last_seed)?;
            tracing::warn!(file = %path.display(), "WAL: last segment re-seeded");
        } else if rec.truncated_bytes > 0 {
            segment::zero_tail(&file, &path, end.0)?;
            tracing::warn!(file = %path.display(), offset = end.0, bytes = rec.truncated_bytes,
                "WAL: torn tail truncated");
        }
        let last_index = rec
            .entries
            .last()
            .map(|e| e.index)
            .or(rec.snapshot.as_ref().map(|s| s.index))
            .unwrap_or(0);
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let zeroer = zeroer::Zeroer::start(path, end.0, len);
        let mut wal = Wal {
            dir: dir.to_owned(),
            segments: names,
            file,
            offset: end.0,
            crc: end.1,
            buf: Vec::new(),
            last_index,
            segment_bytes,
            hard_state: rec.hard_state.clone(),
            zeroer,
        };
        if !last_has_hard_state && wal.segments.len() > 1 {
            // A crash right after a cut (or a torn tail) lost the segment's copy of the hard
            // state: write it again before anything can release the older segments.
            if let Some(hs) = wal.hard_state.clone() {
                wal.push(RecordType::HardState, &encode(&hs))?;
                wal.sync()?;
            }
        }
        Ok((wal, rec))
    }

    /// Appends `entries` then `hard_state` (if any) to the write buffer and writes them to the
    /// OS. Not durable until [`Wal::sync`].
    ///
    /// # Errors
    /// [`Error::Io`]; the WAL must not be used after an error (the node stops).
    pub fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<()> {
        for e in entries {
            self.push(RecordType::Entry, &encode(e))?;
            self.last_index = e.index;
        }
        if let Some(hs) = hard_state {
            self.push(RecordType::HardState, &encode(hs))?;
            self.hard_state = Some(hs.clone());
        }
        self.flush()
    }

    /// Records that the log before `meta.index` is released (a snapshot point) and writes it
    /// to the OS. Not durable until [`Wal::sync`].
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn append_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<()> {
        self.push(RecordType::Snapshot, &encode(meta))?;
        self.last_index = self.last_index.max(meta.index);
        self.flush()
    }

    /// Records that a snapshot from the leader was installed at `meta.index`: at recovery the
    /// log restarts there, without any entry written before this record. Not durable until
    /// [`Wal::sync`].
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn append_install(&mut self, meta: &SnapshotMetadata) -> Result<()> {
        self.push(RecordType::Install, &encode(meta))?;
        self.last_index = meta.index;
        self.flush()
    }

    /// Makes every record appended so far durable (`fdatasync`).
    ///
    /// # Errors
    /// [`Error::Io`]: fatal, the caller stops the node.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        crate::faults::check(crate::faults::Point::WalFsync)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io(self.current_path(), e))
    }

    /// Deletes whole segments that hold only entries at or below `index` (never the current
    /// one); returns how many. The newest hard state survives: every segment starts with a
    /// copy of the one written before it.
    /// Call only after the state machine is durable up to `index` and a Snapshot record for it
    /// is synced.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn release_to(&mut self, index: u64) -> Result<usize> {
        let mut removed = 0;
        // Segment i holds entries from its first_index up to the next segment's first_index - 1.
        while self.segments.len() > 1 && self.segments[1].first_index <= index + 1 {
            let name = self.segments.remove(0);
            let path = self.dir.join(name.file_name());
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The WAL's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn current_path(&self) -> PathBuf {
        let last = self.segments[self.segments.len() - 1];
        self.dir.join(last.file_name())
    }

    fn push(&mut self, ty: RecordType, payload: &[u8]) -> Result<()> {
        let need = (RECORD_HEADER_BYTES + payload.len()) as u64;
        let pending = self.buf.len() as u64;
        if self.offset + pending + need > self.segment_bytes && self.offset + pending > 0 {
            self.cut()?;
        }
        self.crc = segment::encode_record(&mut self.buf, self.crc, ty, payload);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        use std::os::unix::fs::FileExt;
        self.zeroer
            .before_write(self.offset + self.buf.len() as u64);
        crate::faults::check(crate::faults::Point::WalWrite)
            .and_then(|()| self.file.write_all_at(&self.buf, self.offset))
            .map_err(|e| Error::io(self.current_path(), e))?;
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Finishes the current segment (flush + fsync) and starts the next one.
    fn cut(&mut self) -> Result<()> {
        self.flush()?;
        self.file
            .sync_data()
            .map_err(|e| Error::io(self.current_path(), e))?;
        let last = self.segments[self.segments.len() - 1];
        let name = SegmentName {
            seq: last.seq + 1,
            first_index: self.last_index + 1,
        };
        let (file, offset, crc) = segment::create(&self.dir, name, self.crc, self.segment_bytes)?;
        sync_dir(&self.dir)?;
        self.zeroer
            .set_segment(self.dir.join(name.file_name()), offset, self.segment_bytes);
        self.file = file;
        self.offset = offset;
        self.crc = crc;
        self.segments.push(name);
        // The newest hard state opens the segment: older segments may go (`release_to`).
        if let Some(hs) = &self.hard_state {
            let payload = encode(hs);
            self.crc =
                segment::encode_record(&mut self.buf, self.crc, RecordType::HardState, &payload);
        }
        tracing::debug!(
            seq = name.seq,
            first_index = name.first_index,
            "WAL: segment cut"
        );
        Ok(())
    }
}

fn encode<M: protobuf::Message>(m: &M) -> Vec<u8> {
    // Encoding an in-memory raft message into a Vec cannot fail (no IO, sizes < 2 GiB).
    m.write_to_bytes().unwrap_or_default()
}

fn apply_record(
    rec: &mut Recovered,
    ty: RecordType,
    payload: &[u8],
) -> std::result::Result<(), String> {
    match ty {
        RecordType::Seed => {}
        RecordType::Entry => {
            let e = Entry::parse_from_bytes(payload).map_err(|e| format!("entry: {e}"))?;
            // A later write of index i replaces the log from i on (raft log truncation).
            while rec.entries.last().is_some_and(|l| l.index >= e.index) {
                rec.entries.pop();
            }
            if let Some(l) = rec.entries.last()
                && l.index + 1 != e.index
            {
                return Err(format!("entry index {} follows {}", e.index, l.index));
            }
            rec.entries.push(e);
        }
        RecordType::HardState => {
            let hs =
                HardState::parse_from_bytes(payload).map_err(|e| format!("hard state: {e}"))?;
            rec.hard_state = Some(hs);
        }
        RecordType::Snapshot => {
            let m = SnapshotMetadata::parse_from_bytes(payload)
                .map_err(|e| format!("snapshot: {e}"))?;
            rec.entries.retain(|e| e.index > m.index);
            rec.snapshot = Some(m);
        }
        RecordType::Install => {
            let m = SnapshotMetadata::parse_from_bytes(payload)
                .map_err(|e| format!("installed snapshot: {e}"))?;
            rec.entries.clear();
            rec.snapshot = Some(m);
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Writes a byte sequence at an offset, for tests that damage files.
#[doc(hidden)]
pub fn overwrite_at(path: &Path, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(bytes, offset)?;
    f.sync_all()?;
    let _ = Write::flush(&mut &f);
    Ok(())
}

#[cfg(test)]
mod tests;
