//! Zero-fills the current segment ahead of the writer, on a thread of its own.
//!
//! A segment is created at its full size with `set_len`, which leaves it sparse: every write
//! into a hole makes the filesystem allocate blocks, and the `fdatasync` that follows must
//! then commit that allocation through the filesystem's journal as well as the data. Blocks
//! that already hold zeros need no allocation, so the `fdatasync` of a write into them flushes
//! the data alone. On this project's ext4 test machine that halved an `fdatasync` of 2 KiB
//! (about 340 us -> 150 us, and about 60 us less CPU per call; docs/performance.md). etcd
//! preallocates with `fallocate`, whose unwritten extents still need converting at the first
//! write.
//!
//! The zeroer keeps [`AHEAD_BYTES`] of zeros in front of the writer's end, [`CHUNK_BYTES`] at
//! a time, each chunk written with `pwrite` and made durable with `fdatasync` outside any lock.
//! It never writes below the writer's end: the writer announces each write's end first
//! ([`Zeroer::before_write`]), and waits only if that write reaches into the chunk being
//! zeroed (at most one chunk's write). In a new segment it starts [`GAP_BYTES`] past the end
//! of the writer's first write, so the writes right after it do not wait for a chunk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Zeros kept in front of the writer's end, bytes.
pub(super) const AHEAD_BYTES: u64 = 4 * 1024 * 1024;

/// Bytes zeroed (and synced) at a time: small, since a writer's `fdatasync` that falls
/// between a chunk's write and its sync writes the chunk back too.
const CHUNK_BYTES: u64 = 256 * 1024;

/// Where zeroing starts past the end of the writer's first write to a segment, bytes.
const GAP_BYTES: u64 = 64 * 1024;

/// The handle the WAL holds; stops and joins the thread when dropped.
#[derive(Debug)]
pub(super) struct Zeroer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signals the thread (work or stop) and the writer (a chunk finished).
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// The segment being filled and its path (for logs); `None` before the first.
    file: Option<(Arc<File>, PathBuf)>,
    /// The writer's end: no zero is written below it, bytes.
    written: u64,
    /// Zeros are written up to here, bytes.
    zeroed: u64,
    /// Where the segment's preallocation ends, bytes.
    end: u64,
    /// The chunk being zeroed now (start, end).
    filling: Option<(u64, u64)>,
    /// The writer wrote to the segment since it was handed over: zeroing starts only then,
    /// past that first write (which, at a cut, is often a large batch).
    armed: bool,
    /// The thread waits for the writer to move.
    idle: bool,
    stop: bool,
}

impl State {
    /// The next chunk to zero, if any.
    fn next_chunk(&self) -> Option<(u64, u64)> {
        self.file.as_ref()?;
        if !self.armed {
            return None;
        }
        let from = self.zeroed.max(self.written);
        if from >= self.end || from >= self.written + AHEAD_BYTES {
            return None;
        }
        Some((from, (from + CHUNK_BYTES).min(self.end)))
    }
}

impl Zeroer {
    /// Starts the thread on the segment at `path` ([`Zeroer::set_segment`]). If it cannot
    /// start, segments stay sparse (writes work as before, their `fdatasync` is slower):
    /// logged, not an error.
    pub(super) fn start(path: PathBuf, written: u64, end: u64) -> Zeroer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("etch-wal-zero".into())
            .spawn(move || run(&s))
            .inspect_err(|e| tracing::warn!(error = %e, "WAL: cannot start the zeroing thread; segments stay sparse"))
            .ok();
        let z = Zeroer { shared, thread };
        z.set_segment(path, written, end);
        z
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer moved to the segment at `path`, whose writes end at `written` and whose
    /// preallocation ends at `end` (bytes). Waits for a chunk of the previous segment being
    /// zeroed. Zeroing starts after the writer's next write. The zeroer opens the file itself:
    /// a write-back error is reported once per open file, so with a shared one the zeroer's
    /// sync could take an error the writer's next `fdatasync` must see.
    pub(super) fn set_segment(&self, path: PathBuf, written: u64, end: u64) {
        if self.thread.is_none() {
            return;
        }
        let file = match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                tracing::warn!(error = %e, file = %path.display(), "WAL: segment left sparse");
                let mut st = self.lock();
                while st.filling.is_some() {
                    st = self.wait(st);
                }
                st.file = None;
                return;
            }
        };
        let mut st = self.lock();
        while st.filling.is_some() {
            st = self.wait(st);
        }
        st.file = Some((file, path));
        st.written = written;
        st.zeroed = written;
        st.end = end;
        st.armed = false;
    }

    /// The writer is about to write up to `to` (bytes, its new end): waits while that write
    /// would reach into the chunk being zeroed, then records the new end so no later chunk
    /// starts below it.
    pub(super) fn before_write(&self, to: u64) {
        if self.thread.is_none() {
            return;
        }
        let mut st = self.lock();
        while st.filling.is_some_and(|(from, _)| to > from) {
            st = self.wait(st);
        }
        st.written = st.written.max(to);
        if !st.armed {
            st.armed = true;
            st.zeroed = st.zeroed.max(to + GAP_BYTES);
            self.shared.changed.notify_all();
            return;
        }
        // Wake the thread once half the zeros ahead are used up (not on every write: a
        // wake-up is a syscall).
        if st.idle && st.zeroed < st.end && st.zeroed < st.written + AHEAD_BYTES / 2 {
            st.idle = false;
            self.shared.changed.notify_all();
        }
    }

    fn wait<'a>(&'a self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.shared
            .changed
            .wait(st)
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Zeros written up to here in the current segment, bytes (tests).
    #[cfg(test)]
    pub(super) fn zeroed(&self) -> u64 {
        self.lock().zeroed
    }
}

impl Drop for Zeroer {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: zero the next chunk, or wait for the writer to move.
fn run(shared: &Shared) {
    let lock = || shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let zeros = vec![0u8; CHUNK_BYTES as usize];
    let mut st = lock();
    loop {
        if st.stop {
            return;
        }
        let Some((from, to)) = st.next_chunk() else {
            st.idle = true;
            st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        let Some((file, path)) = st.file.clone() else {
            continue;
        };
        st.filling = Some((from, to));
        drop(st);
        let r = file
            .write_all_at(&zeros[..(to - from) as usize], from)
            .and_then(|()| file.sync_data());
        st = lock();
        st.filling = None;
        match r {
            Ok(()) => st.zeroed = to,
            Err(e) => {
                // Not fatal: the rest of this segment stays sparse; the writer's own write
                // and fdatasync (on its own open file, told of write-back errors as well)
                // report any real disk failure.
                tracing::warn!(error = %e, file = %path.display(), "WAL: zeroing ahead failed; segment left sparse");
                st.zeroed = st.end;
            }
        }
        shared.changed.notify_all();
    }
}
