use super::*;

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

fn hs(term: u64, commit: u64) -> HardState {
    HardState {
        term,
        commit,
        ..Default::default()
    }
}

/// A hard state with a term and a vote (what a release must never lose).
fn term_and_vote() -> HardState {
    HardState {
        term: 7,
        vote: 3,
        commit: 1,
        ..Default::default()
    }
}

/// Records the release point `index` (term `term`), syncs, and releases the segments it
/// covers; returns how many went.
fn release(w: &mut Wal, index: u64, term: u64) -> usize {
    let m = SnapshotMetadata {
        index,
        term,
        ..Default::default()
    };
    w.append_snapshot(&m).unwrap();
    w.sync().unwrap();
    w.release_to(index).unwrap()
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

#[test]
fn append_sync_reopen_round_trip() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut w, rec) = Wal::open(d.path()).unwrap();
        assert!(rec.entries.is_empty());
        w.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")], Some(&hs(1, 2)))
            .unwrap();
        w.sync().unwrap();
    }
    let (mut w, rec) = Wal::open(d.path()).unwrap();
    assert_eq!(rec.entries.len(), 2);
    assert_eq!(rec.hard_state.unwrap().commit, 2);
    assert_eq!(rec.truncated_bytes, 0);
    // A rewrite of index 2 replaces the old entry 2 (raft log truncation).
    w.append(&[entry(2, 2, b"c")], None).unwrap();
    w.sync().unwrap();
    drop(w);
    let (_, rec) = Wal::open(d.path()).unwrap();
    assert_eq!(rec.entries.len(), 2);
    assert_eq!(rec.entries[1].term, 2);
    assert_eq!(&rec.entries[1].data[..], b"c");
}

#[test]
fn torn_tail_in_last_segment_is_truncated() {
    let d = tempfile::tempdir().unwrap();
    let tail_offset;
    {
        let (mut w, _) = Wal::open(d.path()).unwrap();
        w.append(&[entry(1, 1, b"keep")], None).unwrap();
        w.sync().unwrap();
        tail_offset = w.offset;
        w.append(&[entry(2, 1, b"torn-away")], None).unwrap();
        w.sync().unwrap();
    }
    let path = &segment_paths(d.path())[0];
    // Damage the payload of the last record: its crc no longer matches.
    overwrite_at(path, tail_offset + 12, b"XX").unwrap();
    let (mut w, rec) = Wal::open(d.path()).unwrap();
    assert_eq!(rec.entries.len(), 1);
    assert!(rec.truncated_bytes > 0);
    // Appending after the repair works and survives another reopen.
    w.append(&[entry(2, 1, b"new")], None).unwrap();
    w.sync().unwrap();
    drop(w);
    let (_, rec) = Wal::open(d.path()).unwrap();
    assert_eq!(rec.entries.len(), 2);
    assert_eq!(&rec.entries[1].data[..], b"new");
    assert_eq!(rec.truncated_bytes, 0);
}

/// A flipped bit in a record of the last segment that valid records follow is corruption
/// (the node refuses to start, naming file and offset), not a torn tail to cut away: cutting
/// it would drop acknowledged records. Both a damaged payload and a damaged stored crc.
#[test]
fn a_flipped_bit_before_valid_records_of_the_last_segment_is_corruption() {
    for damage in [12u64, 5, 1] {
        let d = tempfile::tempdir().unwrap();
        let victim;
        {
            let (mut w, _) = Wal::open(d.path()).unwrap();
            w.append(&[entry(1, 1, b"first")], None).unwrap();
            victim = w.offset;
            w.append(
                &[entry(2, 1, b"flipped"), entry(3, 1, b"after")],
                Some(&hs(1, 3)),
            )
            .unwrap();
            w.sync().unwrap();
        }
        let path = &segment_paths(d.path())[0];
        let byte = fs::read(path).unwrap()[(victim + damage) as usize];
        overwrite_at(path, victim + damage, &[byte ^ 0x10]).unwrap();
        let Err(Error::Corrupt { file, offset, .. }) = Wal::open(d.path()) else {
            panic!("corruption at +{damage} must be refused as Corrupt")
        };
        assert_eq!((&file, offset), (path, victim), "damage at +{damage}");
    }
}

/// A power loss during one write of several records can leave a sector of the preallocated
/// segment unwritten while later records reached the disk: that is a torn write, truncated,
/// not corruption.
#[test]
fn an_unwritten_sector_before_valid_records_is_a_torn_write() {
    let d = tempfile::tempdir().unwrap();
    let victim;
    {
        let (mut w, _) = Wal::open(d.path()).unwrap();
        w.append(&[entry(1, 1, b"first")], None).unwrap();
        victim = w.offset;
        w.append(&[entry(2, 1, &[7u8; 3000]), entry(3, 1, b"after")], None)
            .unwrap();
        w.sync().unwrap();
    }
    let path = &segment_paths(d.path())[0];
    let sector = (victim as usize + 8).div_ceil(512) * 512 + 512;
    overwrite_at(path, sector as u64, &[0u8; 512]).unwrap();
    let (_, rec) = Wal::open(d.path()).unwrap();
    assert_eq!(rec.entries.len(), 1, "entries 2 and 3 are a torn tail");
    assert!(rec.truncated_bytes > 0);
}

/// A crash while a segment is cut can leave the new (last) segment zero-filled or empty: it is
/// seeded again at open, so the records appended next are read back after another restart
/// (they used to be written without a seed, and that open failed with "segment does not
/// start with a seed record").
#[test]
fn a_last_segment_torn_while_created_is_seeded_again() {
    for torn in [&[][..], &[0u8; 64 * 1024][..], &[5, 0, 0, 0, 0x3c][..]] {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut w, _) = Wal::open(d.path()).unwrap();
            w.append(&[entry(1, 1, b"first")], None).unwrap();
            w.cut().unwrap();
        }
        let paths = segment_paths(d.path());
        fs::write(&paths[1], torn).unwrap();
        let (mut w, rec) = Wal::open(d.path()).unwrap();
        assert_eq!(rec.entries.len(), 1);
        w.append(&[entry(2, 1, b"second")], None).unwrap();
        w.sync().unwrap();
        drop(w);
        let (_, rec) = Wal::open(d.path()).unwrap();
        assert_eq!(rec.entries.len(), 2, "torn segment {torn:?}");
        assert_eq!(&rec.entries[1].data[..], b"second");
        assert_eq!(rec.truncated_bytes, 0);
    }
    // A damaged seed with records after it is corruption, not a torn creation.
    let d = tempfile::tempdir().unwrap();
    {
        let (mut w, _) = Wal::open(d.path()).unwrap();
        w.append(&[entry(1, 1, b"first")], None).unwrap();
        w.sync().unwrap();
    }
    overwrite_at(&segment_paths(d.path())[0], 9, b"!").unwrap();
    assert!(matches!(
        Wal::open(d.path()),
        Err(Error::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn corruption_in_an_older_segment_is_fatal_and_named() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut w, _) = Wal::open(d.path()).unwrap();
        w.append(&[entry(1, 1, b"first")], None).unwrap();
        w.sync().unwrap();
        w.cut().unwrap();
        w.append(&[entry(2, 1, b"second")], None).unwrap();
        w.sync().unwrap();
    }
    let paths = segment_paths(d.path());
    assert_eq!(paths.len(), 2);
    // Offset 14: first entry record starts after the 13-byte seed record.
    overwrite_at(&paths[0], 13 + 12, b"!").unwrap();
    let err = Wal::open(d.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Corrupt { offset: 13, .. }), "{msg}");
    assert!(msg.contains(&paths[0].file_name().unwrap().to_string_lossy().to_string()));
}

#[test]
fn snapshot_record_releases_entries_and_segments() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = Wal::open(d.path()).unwrap();
    w.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")], None)
        .unwrap();
    w.cut().unwrap();
    w.append(&[entry(3, 1, b"c")], None).unwrap();
    assert_eq!(release(&mut w, 2, 1), 1);
    drop(w);
    let (_, rec) = Wal::open(d.path()).unwrap();
    assert_eq!(rec.snapshot.unwrap().index, 2);
    assert_eq!(rec.entries.len(), 1);
    assert_eq!(rec.entries[0].index, 3);
}

#[test]
fn releasing_segments_keeps_the_newest_hard_state() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = Wal::open_with_segment_bytes(d.path(), MIN_SEGMENT_BYTES).unwrap();
    // Term 7 and a vote, then entries over several segments with no hard state of their own
    // (commit-only hard states are not written on their own).
    let first = term_and_vote();
    w.append(&[entry(1, 7, b"a")], Some(&first)).unwrap();
    let big = vec![b'x'; 8 * 1024];
    for i in 2..=40 {
        w.append(&[entry(i, 7, &big)], None).unwrap();
    }
    assert!(w.segment_count() >= 3, "{} segments", w.segment_count());
    assert!(release(&mut w, 35, 7) >= 2);
    drop(w);
    let (_, rec) = Wal::open(d.path()).unwrap();
    assert_eq!(
        rec.hard_state,
        Some(first),
        "term and vote survive the release"
    );
    assert_eq!(rec.entries.first().map(|e| e.index), Some(36));
}

#[test]
fn a_segment_that_lost_its_hard_state_copy_gets_it_again_at_open() {
    let d = tempfile::tempdir().unwrap();
    let first = term_and_vote();
    {
        let (mut w, _) = Wal::open_with_segment_bytes(d.path(), MIN_SEGMENT_BYTES).unwrap();
        w.append(&[entry(1, 7, b"a")], Some(&first)).unwrap();
        w.sync().unwrap();
        // The new segment's copy waits in the buffer: a crash now loses it.
        w.cut().unwrap();
    }
    {
        let (mut w, rec) = Wal::open_with_segment_bytes(d.path(), MIN_SEGMENT_BYTES).unwrap();
        assert_eq!(rec.hard_state.as_ref(), Some(&first));
        w.append(&[entry(2, 7, b"b")], None).unwrap();
        assert_eq!(release(&mut w, 1, 7), 1);
    }
    let (_, rec) = Wal::open(d.path()).unwrap();
    assert_eq!(
        rec.hard_state,
        Some(first),
        "term and vote survive the release"
    );
}

/// A follower's log from an old term (indexes 1..=3), then a snapshot from the leader
/// installed at index 2 (term 3), then `after`; what recovery returns.
fn recover_after_install(after: &[Entry]) -> Recovered {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = Wal::open(d.path()).unwrap();
    w.append(
        &[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")],
        None,
    )
    .unwrap();
    let m = SnapshotMetadata {
        index: 2,
        term: 3,
        ..Default::default()
    };
    w.append_install(&m).unwrap();
    w.append(after, None).unwrap();
    w.sync().unwrap();
    drop(w);
    Wal::open(d.path()).unwrap().1
}

#[test]
fn an_installed_snapshot_drops_the_old_log_at_recovery() {
    let rec = recover_after_install(&[entry(3, 3, b"new")]);
    assert_eq!(rec.snapshot.unwrap().index, 2);
    assert_eq!(rec.entries.len(), 1, "{:?}", rec.entries);
    assert_eq!((rec.entries[0].index, rec.entries[0].term), (3, 3));
    // Without entries after it, nothing of the old log comes back.
    let rec = recover_after_install(&[]);
    assert_eq!(rec.snapshot.unwrap().index, 2);
    assert!(rec.entries.is_empty(), "{:?}", rec.entries);
}

#[test]
fn seed_record_matches_worked_example() {
    let mut buf = Vec::new();
    encode_record_for_test(&mut buf);
    assert_eq!(&buf[..4], &[5, 0, 0, 0]);
    assert_eq!(buf[8], 1);
    assert_eq!(&buf[9..], &[0, 0, 0, 0]);
    let mut h = crc32fast::Hasher::new_with_initial(0);
    h.update(&[1, 0, 0, 0, 0]);
    assert_eq!(&buf[4..8], &h.finalize().to_le_bytes());
}

fn encode_record_for_test(buf: &mut Vec<u8>) {
    segment::encode_record(buf, 0, RecordType::Seed, &0u32.to_le_bytes());
}

/// Waits (at most 10 s) until `cond` holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn the_segment_ahead_of_the_writer_is_zero_filled() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let size = 4 * 1024 * 1024;
    let (mut w, _) = Wal::open_with_segment_bytes(d.path(), size).unwrap();
    w.append(&[entry(1, 1, b"a")], Some(&hs(1, 1))).unwrap();
    w.sync().unwrap();
    wait_for("zeros to the segment's end", || w.zeroer.zeroed() == size);
    // Written blocks, not holes: a write there needs no block allocation before its fsync.
    let path = segment_paths(d.path()).pop().unwrap();
    let allocated = fs::metadata(&path).unwrap().blocks() * 512;
    assert!(
        allocated >= size - 128 * 1024,
        "{allocated} of {size} bytes allocated"
    );
    // The zeros did not touch what was written.
    drop(w);
    let (_, rec) = Wal::open(d.path()).unwrap();
    assert_eq!(rec.entries.len(), 1);
    assert_eq!(rec.hard_state.unwrap().commit, 1);
}

#[test]
fn writes_beside_the_zeroing_thread_are_all_recovered() {
    let d = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 + 1).collect();
    let mut index = 0;
    {
        let (mut w, _) = Wal::open_with_segment_bytes(d.path(), 2 * 1024 * 1024).unwrap();
        // About 9 MiB over 2 MiB segments: cuts, and every segment zeroed while written.
        for round in 0..1500u64 {
            let n = 1 + (round % 7) as usize;
            let batch: Vec<Entry> = (0..n)
                .map(|k| {
                    index += 1;
                    entry(index, 1, &data[..1000 + (k * 300) % 2000])
                })
                .collect();
            w.append(&batch, Some(&hs(1, index))).unwrap();
            if round % 3 == 0 {
                w.sync().unwrap();
            }
        }
        w.sync().unwrap();
        assert!(w.segment_count() > 3, "{} segments", w.segment_count());
    }
    let (_, rec) = Wal::open_with_segment_bytes(d.path(), 2 * 1024 * 1024).unwrap();
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(rec.entries.len() as u64, index);
    for (i, e) in rec.entries.iter().enumerate() {
        assert_eq!(e.index, i as u64 + 1);
        let len = e.data.len();
        assert_eq!(&e.data[..], &data[..len], "entry {}", e.index);
    }
    assert_eq!(rec.hard_state.unwrap().commit, index);
}

#[test]
fn records_of_every_size_survive_reopens_and_segment_cuts() {
    let d = tempfile::tempdir().unwrap();
    // Entry sizes from 1 byte to past a 4 KiB page, in batches of 1-6, reopened every 7 batches,
    // in 64 KiB segments so some batches cut a new one.
    let mut next = 1u64;
    let mut sizes = (0u64..).map(|i| 1 + (i * 2_654_435_761 % 5_000) as usize);
    for round in 0..6 {
        let (mut w, rec) = Wal::open_with_segment_bytes(d.path(), MIN_SEGMENT_BYTES).unwrap();
        assert_eq!(rec.truncated_bytes, 0, "round {round}");
        assert_eq!(rec.entries.len() as u64, next - 1, "round {round}");
        for (i, e) in rec.entries.iter().enumerate() {
            assert_eq!(e.index, i as u64 + 1);
            assert!(
                e.data.iter().all(|&b| b == e.index as u8),
                "entry {}",
                e.index
            );
        }
        for batch in 0..7u64 {
            let entries: Vec<Entry> = (0..1 + (round + batch) % 6)
                .map(|_| {
                    let n = sizes.next().unwrap();
                    let e = entry(next, 1, &vec![next as u8; n]);
                    next += 1;
                    e
                })
                .collect();
            w.append(&entries, Some(&hs(1, next - 1))).unwrap();
            w.sync().unwrap();
        }
    }
    let (w, rec) = Wal::open_with_segment_bytes(d.path(), MIN_SEGMENT_BYTES).unwrap();
    assert_eq!(rec.entries.len() as u64, next - 1);
    assert!(w.segment_count() > 3, "the load cut segments");
}
