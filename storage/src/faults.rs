//! Disk fault injection for tests through real processes (etch's `--debug-disk-faults FILE`,
//! hidden from `--help`).
//!
//! When installed, every WAL write (`write(2)` of buffered records), WAL `fdatasync` and MVCC
//! store commit first reads the fault file: one rule per line, `POINT=ACTION`, where POINT is
//! `wal-write`, `wal-fsync` or `store-write` and ACTION is
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
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::WalWrite => "wal-write",
            Point::WalFsync => "wal-fsync",
            Point::StoreWrite => "store-write",
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
    for line in text.lines() {
        let Some((p, action)) = line.trim().split_once('=') else {
            continue;
        };
        if p.trim() != point.name() {
            continue;
        }
        match action.trim() {
            "enospc" => return Err(std::io::Error::from_raw_os_error(28)),
            "eio" => return Err(std::io::Error::from_raw_os_error(5)),
            a => {
                if let Some(d) = a
                    .strip_prefix("delay=")
                    .and_then(|d| humantime::parse_duration(d).ok())
                {
                    std::thread::sleep(d.min(Duration::from_secs(60)));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_decides_each_point() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("faults");
        install(f.clone());
        assert!(check(Point::WalWrite).is_ok(), "no file, no fault");
        std::fs::write(
            &f,
            "wal-fsync=eio\nstore-write=enospc\nbogus\nwal-write=delay=1ms\n",
        )
        .unwrap();
        assert!(check(Point::WalWrite).is_ok());
        assert_eq!(check(Point::WalFsync).unwrap_err().raw_os_error(), Some(5));
        assert_eq!(
            check(Point::StoreWrite).unwrap_err().raw_os_error(),
            Some(28)
        );
        std::fs::write(&f, "").unwrap();
        assert!(check(Point::StoreWrite).is_ok());
    }
}
