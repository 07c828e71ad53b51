//! Disk fault injection for tests through real processes (etch's `--debug-disk-faults FILE`,
//! hidden from `--help`).
//!
//! When installed, every WAL write (`write(2)` of buffered records), WAL `fdatasync`, MVCC
//! store commit and chunk of a snapshot read for a peer first reads the fault file: one rule
//! per line, `POINT=ACTION`, where POINT is `wal-write`, `wal-fsync`, `store-write` or
//! `snapshot-read` and ACTION is
//! - `enospc`: fail with "No space left on device" (errno 28) before touching the file;
//! - `eio`: fail with "Input/output error" (errno 5) before touching the file (for `wal-fsync`
//!   after the write was done: what a failed `fsync` looks like);
//! - `delay=DURATION` (humantime, e.g. `5s`): sleep that long, then go on.
//!
//! A missing or empty file injects nothing. Unknown lines are ignored (a test writes the file
//! while the member runs; a half-written line must not stop it). Without `install` nothing is
//! read: the cost is one atomic load per call.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Writing buffered WAL records to the OS.
    WalWrite,
    /// `fdatasync` of the current WAL segment.
    WalFsync,
    /// Committing a batch into the MVCC store (fjall).
    StoreWrite,
    /// Handing on each chunk of the MVCC store read for a raft snapshot sent to a peer
    /// (`MvccStore::export`).
    SnapshotRead,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::WalWrite => "wal-write",
            Point::WalFsync => "wal-fsync",
            Point::StoreWrite => "store-write",
            Point::SnapshotRead => "snapshot-read",
        }
    }
}

static FAULT_FILE: OnceLock<PathBuf> = OnceLock::new();

/// Reads faults from `file` from now on (first call wins; later calls are ignored).
pub fn install(file: PathBuf) {
    let _ = FAULT_FILE.set(file);
}

/// What the fault file says for `point`: `Ok(())` to go on (after any delay), or the injected
/// OS error.
///
/// # Errors
/// The injected `std::io::Error` (`ENOSPC` or `EIO`).
pub fn check(point: Point) -> std::io::Result<()> {
    let Some(file) = FAULT_FILE.get() else {
        return Ok(());
    };
    let Ok(text) = std::fs::read_to_string(file) else {
        return Ok(());
    };
    match decide(&text, point) {
        Some(Fault::Error(errno)) => Err(std::io::Error::from_raw_os_error(errno)),
        Some(Fault::Delay(d)) => {
            std::thread::sleep(d);
            Ok(())
        }
        None => Ok(()),
    }
}

/// A fault the file asks for.
#[derive(Debug, PartialEq, Eq)]
enum Fault {
    /// Fail with this errno.
    Error(i32),
    /// Sleep this long (at most 60 s), then go on.
    Delay(Duration),
}

/// The first rule of `text` for `point` that parses.
fn decide(text: &str, point: Point) -> Option<Fault> {
    text.lines().find_map(|line| {
        let (p, action) = line.trim().split_once('=')?;
        if p.trim() != point.name() {
            return None;
        }
        match action.trim() {
            "enospc" => Some(Fault::Error(28)),
            "eio" => Some(Fault::Error(5)),
            a => a
                .strip_prefix("delay=")
                .and_then(|d| humantime::parse_duration(d).ok())
                .map(|d| Fault::Delay(d.min(Duration::from_secs(60)))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // `decide`, not `install`: the fault file is process-wide and other tests of this crate
    // write WALs in parallel.
    #[test]
    fn the_file_decides_each_point() {
        let text =
            "wal-fsync=eio\nstore-write=enospc\nbogus\nwal-write=delay=1ms\nsnapshot-read=eio\n";
        assert_eq!(
            decide(text, Point::WalWrite),
            Some(Fault::Delay(Duration::from_millis(1)))
        );
        assert_eq!(decide(text, Point::WalFsync), Some(Fault::Error(5)));
        assert_eq!(decide(text, Point::StoreWrite), Some(Fault::Error(28)));
        assert_eq!(decide(text, Point::SnapshotRead), Some(Fault::Error(5)));
        assert_eq!(decide("", Point::StoreWrite), None);
    }
}
