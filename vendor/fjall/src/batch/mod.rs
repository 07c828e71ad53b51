// Copyright (c) 2024-present, fjall-rs
// This source code is licensed under both the Apache 2.0 and MIT License
// (found in the LICENSE-* files in the repository)

pub mod item;

use crate::{Database, Keyspace, PersistMode};
use item::Item;
use lsm_tree::{AbstractTree, UserKey, UserValue, ValueType};
use std::sync::Arc;

/// An atomic write batch
///
/// Allows atomically writing across keyspaces inside the [`Database`].
pub struct WriteBatch {
    pub(crate) data: Vec<Item>,
    db: Database,
    durability: Option<PersistMode>,
}

impl WriteBatch {
    /// Initializes a new write batch.
    ///
    /// This function is called by [`Database::batch`].
    pub(crate) fn new(db: Database) -> Self {
        Self {
            data: Vec::new(),
            db,
            durability: None,
        }
    }

    /// Initializes a new write batch with preallocated capacity.
    ///
    /// ### Note
    ///
    /// "Capacity" refers to the number of batch item slots, not their size in memory.
    #[must_use]
    pub fn with_capacity(db: Database, capacity: usize) -> Self {
        Self {
            data: Vec::with_capacity(capacity),
            db,
            durability: None,
        }
    }

    /// Gets the number of batched items.
    #[must_use]
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Returns `true` if there are no batches items (yet).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets the durability level.
    #[must_use]
    pub fn durability(mut self, mode: Option<PersistMode>) -> Self {
        self.durability = mode;
        self
    }

    /// Inserts a key-value pair into the batch.
    pub fn insert<K: Into<UserKey>, V: Into<UserValue>>(&mut self, p: &Keyspace, key: K, value: V) {
        self.data
            .push(Item::new(p.clone(), key, value, ValueType::Value));
    }

    /// Removes a key-value pair.
    pub fn remove<K: Into<UserKey>>(&mut self, p: &Keyspace, key: K) {
        self.data
            .push(Item::new(p.clone(), key, vec![], ValueType::Tombstone));
    }

    /// Adds a weak tombstone marker for a key.
    ///
    /// The tombstone marker of this delete operation will vanish when it
    /// collides with its corresponding insertion.
    /// This may cause older versions of the value to be resurrected, so it should
    /// only be used and preferred in scenarios where a key is only ever written once.
    ///
    /// # Experimental
    ///
    /// This function is currently experimental.
    #[doc(hidden)]
    pub fn remove_weak<K: Into<UserKey>>(&mut self, p: &Keyspace, key: K) {
        self.data
            .push(Item::new(p.clone(), key, vec![], ValueType::WeakTombstone));
    }

    /// Commits the batch to the [`Database`] atomically.
    ///
    /// # Errors
    ///
    /// Will return `Err` if an IO error occurs.
    #[allow(clippy::missing_panics_doc)]
    pub fn commit(mut self) -> crate::Result<()> {
        if self.is_empty() {
            return Ok(());
        }

        log::trace!("batch: Acquiring journal writer");
        let mut journal_writer = self.db.supervisor.journal.get_writer()?;

        // IMPORTANT: Check the poisoned flag after getting journal mutex, otherwise TOCTOU
        if self.db.is_poisoned.is_poisoned() {
            return Err(crate::Error::Poisoned);
        }

        let batch_seqno = self.db.supervisor.seqno.next();

        journal_writer
            .write_batch(self.data.iter(), self.data.len(), batch_seqno)
            .inspect_err(|e| {
                log::error!(
                    "persist failed, which is a FATAL, and possibly hardware-related, failure: {e:?}",
                );
                self.db.is_poisoned.poison();
            })?;

        if let Some(mode) = self.durability {
            journal_writer.persist(mode).inspect_err(|e| {
                log::error!(
                    "persist failed, which is a FATAL, and possibly hardware-related, failure: {e:?}",
                );
                self.db.is_poisoned.poison();
            })?;
        }

        // etch patch: the keyspaces this batch wrote, found by id in a short list (a HashSet
        // hashed each item's keyspace name and cloned its Arc for every item), each with its
        // active memtable, taken once per batch. Inserting through the tree took the version
        // history's read lock and cloned its latest super version (three Arcs) for every item.
        // The journal lock held until the items are in is what every replacement of an
        // active memtable takes (`Keyspace::rotate_memtable`, `Keyspace::clear`), so the
        // memtable taken is the active one for the whole batch.
        let mut keyspaces_with_possible_stall: Vec<(Keyspace, Arc<lsm_tree::Memtable>)> =
            Vec::new();

        #[expect(clippy::expect_used)]
        let keyspaces = self
            .db
            .supervisor
            .keyspaces
            .read()
            .expect("lock is poisoned");

        let mut batch_size = 0u64;

        log::trace!("Applying batch (size={}) to memtable(s)", self.data.len());

        // etch patch: every PREFETCH_CHUNK items, the memtable paths of the next chunk's items
        // of a keyspace that asked for it are prefetched together (`prefetch_chunk`).
        let mut items = std::mem::take(&mut self.data).into_iter();
        let mut unprefetched = 0usize;
        loop {
            if unprefetched == 0 {
                let rest = items.as_slice();
                prefetch_chunk(
                    &rest[..rest.len().min(PREFETCH_CHUNK)],
                    batch_seqno,
                    &mut keyspaces_with_possible_stall,
                );
                unprefetched = PREFETCH_CHUNK;
            }
            let Some(item) = items.next() else { break };
            unprefetched -= 1;
            let slot = memtable_slot(&mut keyspaces_with_possible_stall, &item.keyspace);
            let value = match item.value_type {
                ValueType::Value => lsm_tree::InternalValue::from_components(
                    item.key,
                    item.value,
                    batch_seqno,
                    ValueType::Value,
                ),
                ValueType::Tombstone => {
                    lsm_tree::InternalValue::new_tombstone(item.key, batch_seqno)
                }
                ValueType::WeakTombstone => {
                    lsm_tree::InternalValue::new_weak_tombstone(item.key, batch_seqno)
                }
                ValueType::Indirection => unreachable!(),
            };
            let (item_size, _) = keyspaces_with_possible_stall[slot].1.insert(value);

            batch_size += item_size;
        }

        self.db.supervisor.snapshot_tracker.publish(batch_seqno);

        drop(journal_writer);

        log::trace!("batch: Freed journal writer");

        drop(keyspaces);

        // IMPORTANT: Add batch size to current write buffer size
        // Otherwise write buffer growth is unbounded when using batches
        self.db.supervisor.write_buffer_size.allocate(batch_size);

        // Check each affected keyspace for write stall/halt
        for (keyspace, _) in &keyspaces_with_possible_stall {
            let memtable_size = keyspace.tree.active_memtable().size();
            keyspace.check_memtable_rotate(memtable_size);
            keyspace.local_backpressure();
        }

        Ok(())
    }
}

/// etch patch: the run of a write batch's items whose memtable paths (of the one keyspace that
/// asked for it, [`prefetch_chunk`]) are prefetched at once: about 16 for etch, which writes a
/// `kv` and a `key_index` item per put. 16 to 64 paths at once measured alike, 8 a little
/// slower (a path is about 36 nodes; 64 paths stay well within a core's L2 cache).
const PREFETCH_CHUNK: usize = 32;

/// etch patch: the slot of `keyspace` in a batch's list of the keyspaces it writes, each with
/// its active memtable, added at its first item (see `WriteBatch::commit`).
fn memtable_slot(
    list: &mut Vec<(Keyspace, Arc<lsm_tree::Memtable>)>,
    keyspace: &Keyspace,
) -> usize {
    if let Some(slot) = list.iter().position(|(k, _)| k.id == keyspace.id) {
        return slot;
    }
    // IMPORTANT: Clone the handle, because we don't want to keep the keyspaces lock open
    list.push((keyspace.clone(), keyspace.tree.active_memtable()));
    list.len() - 1
}

/// etch patch: prefetches the memtable search paths of the items in `chunk` that belong to the
/// first keyspace in it that asked for it ([`Keyspace::set_prefetch_inserts`]); one keyspace
/// per chunk, as etch asks it of one keyspace only. The memtable is the batch's, from `list`.
fn prefetch_chunk(
    chunk: &[Item],
    seqno: lsm_tree::SeqNo,
    list: &mut Vec<(Keyspace, Arc<lsm_tree::Memtable>)>,
) {
    use std::sync::atomic::Ordering;

    let mut keyspace: Option<&Keyspace> = None;
    let mut keys = Vec::new();
    for item in chunk {
        if item.value_type != ValueType::Value
            || !item.keyspace.prefetch_inserts.load(Ordering::Relaxed)
        {
            continue;
        }
        match keyspace {
            Some(k) if k.id != item.keyspace.id => continue,
            Some(_) => {}
            None => keyspace = Some(&item.keyspace),
        }
        keys.push(item.key.clone());
    }
    if let Some(k) = keyspace {
        if keys.len() > 1 {
            let slot = memtable_slot(list, k);
            list[slot].1.prefetch_insert_paths(&keys, seqno);
        }
    }
}
