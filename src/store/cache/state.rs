//! The cache's bookkeeping in memory: an entry per block that is cached,
//! dirty or in use, the LRU of evictable blocks, pins, room in the cache,
//! and marking blocks dirty (the journal).
//!
//! Fields are `pub` in this private module: the cache module's other files
//! read and update them under the state's mutex.

use super::CacheCore;
use crate::confined::Access;
use crate::sync::lock;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What the cache knows of one block that is cached, dirty or in use
/// (blocks that are none of these have no entry).
pub(super) struct BlockEntry {
    /// `blocks/blk-N` holds the block.
    pub cached: bool,
    /// The backend must be brought up to date (upload the file, or delete
    /// the object when not cached).
    pub dirty: bool,
    /// `dirty/blk-N` exists.
    pub journaled: bool,
    /// Sequence number of the last modification.
    pub generation: u64,
    /// Generation last confirmed in the backend.
    pub synced_gen: u64,
    /// In the upload queue.
    pub queued: bool,
    /// An upload worker has it.
    pub uploading: bool,
    pub dirty_since: Instant,
    /// Readers, writers and uploads using the cached file: never evicted then.
    pub pins: u32,
    /// Position in the LRU of evictable (clean, cached) blocks.
    pub lru_tick: Option<u64>,
    /// Partial: only these byte ranges of the file are the block's, the
    /// rest is its base in the backend (`overlay.rs`).
    pub overlay: Option<super::overlay::Ranges>,
}

impl BlockEntry {
    pub(super) fn new(seq: u64) -> Self {
        BlockEntry {
            cached: false,
            dirty: false,
            journaled: false,
            generation: seq,
            synced_gen: seq,
            queued: false,
            uploading: false,
            dirty_since: Instant::now(),
            pins: 0,
            lru_tick: None,
            overlay: None,
        }
    }
}

/// The cache's bookkeeping, under one mutex (`CacheCore::state`).
#[derive(Default)]
pub(super) struct CacheState {
    pub entries: HashMap<u64, BlockEntry>,
    /// Evictable blocks by LRU tick, oldest first.
    pub lru: BTreeMap<u64, u64>,
    pub lru_clock: u64,
    /// The last generation handed out (see `BlockEntry::generation`).
    pub seq: u64,
    /// Cached blocks, counting space reserved for fetches and creations.
    pub cached_blocks: u64,
    pub dirty_blocks: u64,
    pub uploads_in_flight: u64,
    /// Dirty blocks waiting for an upload worker, oldest first.
    pub queue: VecDeque<u64>,
    /// Threads waiting for every dirty block to be uploaded (no delay then).
    pub flushers: u32,
    /// More blocks cached than the size allows (dirty ones the backend
    /// has not taken yet): logged once each time it happens.
    pub over_size: bool,
    pub failing_since: Option<Instant>,
    /// The last upload failure no retry can fix, and when its attempt
    /// began: syncs that began before that fail with it at once. Cleared by
    /// an upload that succeeds.
    pub permanent_failure: Option<(Instant, String)>,
    /// Waits for uploads begun: a new one ends the workers' pauses.
    pub syncs_started: u64,
    pub stop: bool,
    /// Blocks a reader is fetching into the cache: other readers wait for
    /// it, and so does the first write into it (which would otherwise be
    /// replaced by the install).
    pub fetching: HashSet<u64>,
}

impl CacheState {
    pub(super) fn lru_insert(&mut self, block: u64) {
        self.lru_clock += 1;
        let tick = self.lru_clock;
        if let Some(e) = self.entries.get_mut(&block) {
            if let Some(old) = e.lru_tick.replace(tick) {
                self.lru.remove(&old);
            }
            self.lru.insert(tick, block);
        }
    }

    pub(super) fn lru_remove(&mut self, block: u64) {
        if let Some(t) = self.entries.get_mut(&block).and_then(|e| e.lru_tick.take()) {
            self.lru.remove(&t);
        }
    }

    pub(super) fn forget_if_idle(&mut self, block: u64) {
        if let Some(e) = self.entries.get(&block)
            && !e.cached
            && !e.dirty
            && !e.uploading
            && !e.queued
            && e.pins == 0
        {
            self.entries.remove(&block);
        }
    }
}

/// Unpins a cached block when dropped.
pub(super) struct PinnedBlock<'a> {
    pub core: &'a CacheCore,
    pub block: u64,
}

impl Drop for PinnedBlock<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.core.state);
        if let Some(e) = s.entries.get_mut(&self.block) {
            e.pins = e.pins.saturating_sub(1);
        }
    }
}

/// Where the bytes of a block asked for are.
pub(super) enum BlockAt<'a> {
    Cached(PinnedBlock<'a>),
    /// Fetched but not cached (the cache is full of dirty blocks).
    Memory(Vec<u8>),
}

impl CacheCore {
    pub(super) fn pin_cached(&self, block: u64) -> Option<PinnedBlock<'_>> {
        self.pin_in(&mut self.state(), block)
    }

    /// `pin_cached` with the state already locked.
    pub(super) fn pin_in(&self, s: &mut CacheState, block: u64) -> Option<PinnedBlock<'_>> {
        let e = s.entries.get_mut(&block)?;
        if !e.cached {
            return None;
        }
        e.pins += 1;
        let in_lru = e.lru_tick.is_some();
        if in_lru {
            s.lru_insert(block);
        }
        Some(PinnedBlock { core: self, block })
    }

    /// Makes room for one more cached block, evicting clean ones. When
    /// every cached block is dirty or in use: with `may_exceed` (writers)
    /// the cache goes over its size, as writers never wait for the backend
    /// (the size bounds clean blocks; the local disk bounds dirty ones);
    /// without, returns false.
    pub(super) fn reserve<'a>(
        &'a self,
        mut s: MutexGuard<'a, CacheState>,
        may_exceed: bool,
    ) -> (MutexGuard<'a, CacheState>, bool) {
        while s.cached_blocks >= self.max_blocks {
            if self.evict_one(&mut s) {
                continue;
            }
            if !may_exceed {
                return (s, false);
            }
            if !s.over_size {
                s.over_size = true;
                log::warn!(
                    "{}: cache full of blocks not yet uploaded to {} ({} dirty); going over its size until uploads catch up",
                    self.config.dir.display(),
                    self.backend.describe(),
                    s.dirty_blocks
                );
            }
            // Uploads are urgent now (see `next_job`).
            self.changed.notify_all();
            break;
        }
        s.cached_blocks += 1;
        (s, true)
    }

    /// Evicts the least recently used clean block not in use; false if none.
    pub(super) fn evict_one(&self, s: &mut CacheState) -> bool {
        let victim = s.lru.iter().find(|(_, b)| s.entries.get(b).is_some_and(|e| e.pins == 0)).map(|(t, b)| (*t, *b));
        let Some((tick, block)) = victim else { return false };
        s.lru.remove(&tick);
        s.entries.remove(&block);
        s.cached_blocks -= 1;
        if let Err(e) = self.blocks_dir.remove(&self.name(block)) {
            log::warn!("cannot evict: {e}");
        }
        self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Evicts clean blocks while over the size (after uploads made some).
    pub(super) fn shrink_to_size(&self, s: &mut CacheState) {
        while s.cached_blocks > self.max_blocks && self.evict_one(s) {}
        if s.over_size && s.cached_blocks <= self.max_blocks {
            s.over_size = false;
            log::info!("{}: cache back within its size", self.config.dir.display());
        }
    }

    pub(super) fn unreserve(&self) {
        let mut s = self.state();
        s.cached_blocks = s.cached_blocks.saturating_sub(1);
        self.changed.notify_all();
    }

    /// Records a modification of `block` (after its bytes were written or
    /// its file removed): journal entry, generation, upload queue.
    pub(super) fn mark_dirty(&self, s: &mut CacheState, block: u64) -> io::Result<()> {
        s.seq += 1;
        let seq = s.seq;
        s.lru_remove(block);
        let was_empty = s.queue.is_empty();
        let Some(e) = s.entries.get_mut(&block) else { return Ok(()) };
        let mut result = Ok(());
        if !e.journaled {
            match self.journal_dir.open_file(&self.geometry.block_name(block), Access::Create(0o600)) {
                Ok(_) => {
                    e.journaled = true;
                    self.flush.names_dirty.store(true, Ordering::Release);
                }
                Err(err) => result = Err(err),
            }
        }
        e.generation = seq;
        let newly = !e.dirty;
        if newly {
            e.dirty = true;
            e.dirty_since = Instant::now();
        }
        let enqueue = !e.queued && !e.uploading;
        if enqueue {
            e.queued = true;
        }
        if newly {
            s.dirty_blocks += 1;
        }
        if enqueue {
            s.queue.push_back(block);
            if was_empty {
                self.changed.notify_all();
            }
        }
        result
    }

    pub(super) fn finish_write(&self, block: u64, pin: PinnedBlock<'_>) -> io::Result<()> {
        let result = {
            let mut s = self.state();
            self.mark_dirty(&mut s, block)
        };
        drop(pin);
        lock(&self.unsynced).insert(block);
        result
    }
}
