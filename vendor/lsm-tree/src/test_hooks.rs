//! etch patch: hooks that let etch's tests run code at a chosen point inside the tree, so a
//! race they check is reached every run instead of by timing. Compiled only with the
//! `etch-test-hooks` feature (a dev-dependency feature of etch's storage crate): never in what
//! `cargo build` builds; a `cargo test` build compiles it in, with no hook set.

use std::path::Path;
use std::sync::Mutex;

/// A hook: called with the tree's directory, on the thread that reaches its point (every
/// tree of the process reaches it: a hook acts only on its own tree's directory).
pub type Hook = Box<dyn FnMut(&Path) + Send>;

static BEFORE_VERSION_APPEND: Mutex<Option<Hook>> = Mutex::new(None);

/// Sets (or with `None` clears) the hook that a flush or compaction runs after it persisted
/// its new version and before it takes the version history's write lock to append it
/// (`SuperVersions::upgrade_version_outside_lock`). The hook may write to the tree and rotate
/// its memtable (neither takes a lock the flush holds there), but must not flush, compact or
/// set a hook: it runs under the hook's lock, which every tree's flush and compaction takes
/// at that point (they wait while it runs). One hook per process: a test that sets one clears
/// it before it ends.
pub fn set_before_version_append(hook: Option<Hook>) {
    *BEFORE_VERSION_APPEND
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = hook;
}

/// Runs the hook set by [`set_before_version_append`], if any, for the tree at `tree_path`.
pub(crate) fn before_version_append(tree_path: &Path) {
    // Run under the lock: a hook taken out while it ran would be missed by another tree's
    // flush reaching this point meanwhile, and that may be the one it waits for.
    if let Some(hook) = BEFORE_VERSION_APPEND
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_mut()
    {
        hook(tree_path);
    }
}
