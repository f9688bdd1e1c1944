//! The cache store: a local cache directory in front of an object backend.
//!
//! Layout of the cache directory:
//!
//! | path | what |
//! |---|---|
//! | `cache.json` | which image and backend the cache belongs to, and its epoch |
//! | `blocks/blk-N` | cached blocks, raw bytes like a directory store |
//! | `dirty/blk-N` | journal: block N's local state is newer than the backend (upload the file, or delete the object if the file is gone) |
//! | `overlay/blk-N` | block N is partial: only these byte ranges of `blocks/blk-N` are its bytes, the rest is its base in the backend, merged in before reads outside them and before the upload (`overlay.rs`) |
//! | `tmp/` | upload snapshots and fetches in progress (emptied at start) |
//! | `clean-shutdown` | present only between a clean shutdown and the next start |
//! | `status.json` | live statistics for `onefs status`, rewritten every second |
//! | `onefs.lock` | the mount lock, as in a directory store |
//!
//! Reads fill the cache; clean blocks are evicted least-recently-used once
//! the cache holds `size` bytes of blocks. Writes complete locally, never
//! waiting for the backend (a write into an uncached block fetches nothing:
//! see `overlay.rs`), and mark the block dirty (creating its journal
//! entry); upload workers send a dirty block `upload_delay` after it was
//! first dirtied (rewrites in between coalesce), as one whole object with a
//! CRC-32C trailer ([`crc`]). A block deleted locally deletes its object. Dirty blocks are never evicted: when
//! the cache is full of them, it goes over its size (logged once; uploads
//! are then urgent) and shrinks back as they are uploaded. The size bounds
//! clean blocks; the local disk bounds dirty ones.
//!
//! Durability: with [`Durability::Local`], `sync` fsyncs the cached blocks
//! and the journal (with the overlay records); after a crash the journal's
//! blocks are uploaded on the next start, and every other cached block is
//! dropped (it may hold writes that were never synced). With [`Durability::Remote`], `sync` returns once
//! every block dirtied before it is in the backend.
//!
//! A snapshot of a block is copied to `tmp/` before it is uploaded; each
//! modification bumps the block's generation *after* the bytes are written,
//! so an upload that raced a write leaves the block dirty and it is sent again.
//!
//! Retries: the backend makes one attempt a call; the cache is the one
//! layer that retries its requests (`backend::retry`): reads, the epoch and
//! the listing for `retry_timeout`, uploads until they succeed; a permanent
//! failure is not retried (see `uploader.rs` for what uploads do then).

//! The code, a file a job:
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | [`CacheStore`] and its [`BlockStore`] operations |
//! | `config.rs` | [`CacheConfig`] and [`Durability`] |
//! | `state.rs` | the per-block entries, the LRU, pins, room in the cache, marking blocks dirty |
//! | `fetch.rs` | filling the cache from the backend |
//! | `overlay.rs` | writes that never fetch: partial blocks, merging their base |
//! | `uploader.rs` | upload workers, waiting for uploads |
//! | `recovery.rs` | `CacheStore::open`: what it keeps of the cache directory it finds |
//! | `stats.rs` | [`CacheStats`], counters, `status.json` |
//! | `crc.rs` | the objects' CRC-32C trailer |

mod config;
pub mod crc;
mod fetch;
mod overlay;
mod recovery;
mod state;
mod stats;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_overlay;
mod uploader;

pub use config::{CacheConfig, Durability};
pub use recovery::cached_meta;
pub use stats::{CacheStats, read_stats};

use super::{BlockStore, Zeroed};
use crate::backend::retry::Retry;
use crate::backend::{ObjectBackend, block_key};
use crate::confined::{Access, ConfinedDir};
use crate::core::Geometry;
use crate::errors::context;
use crate::store::blockfile::Flushed;
use crate::sync::lock;
use state::{BlockAt, BlockEntry, CacheState, PinnedBlock};
use stats::Counters;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub const CACHE_INFO: &str = "cache.json";
pub const STATUS_FILE: &str = "status.json";
const CLEAN_SHUTDOWN: &str = "clean-shutdown";
/// The backend object naming the cache that last mounted the store.
pub const EPOCH_KEY: &str = "onefs.epoch";
const FETCH_STRIPES: usize = 64;
const COPY_CHUNK: usize = 1 << 20;

/// What the store and its threads (upload workers, statistics writer)
/// share.
struct CacheCore {
    backend: Arc<dyn ObjectBackend>,
    geometry: Geometry,
    config: CacheConfig,
    /// The cache directory and its parts, every name opened relative to
    /// them and never through a link (see `ConfinedDir`).
    root: ConfinedDir,
    blocks_dir: ConfinedDir,
    journal_dir: ConfinedDir,
    /// `overlay/`: the new byte ranges of partial blocks (`overlay.rs`).
    overlay_dir: ConfinedDir,
    tmp_dir: ConfinedDir,
    max_blocks: u64,
    state: Mutex<CacheState>,
    changed: Condvar,
    /// Lock stripes serializing, per block, the first write into an
    /// uncached block, writes into partial blocks and merges of their base
    /// (`overlay.rs`); never held while the backend answers.
    fetch_locks: Box<[Mutex<()>]>,
    /// Blocks written since the last local sync.
    unsynced: Mutex<HashSet<u64>>,
    /// Created/removed files and sticky flush failures.
    flush: crate::store::blockfile::FlushState,
    counters: Counters,
    tmp_counter: AtomicU64,
}

/// A cache directory in front of an object backend, as a [`BlockStore`].
pub struct CacheStore {
    core: Arc<CacheCore>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    closed: AtomicBool,
}

fn eio(message: String) -> io::Error {
    io::Error::other(message)
}

/// Writes the small file `name` of `dir` atomically; durably with `durable`.
fn write_atomic(dir: &ConfinedDir, name: &str, data: &[u8], durable: bool) -> io::Result<()> {
    let tmp = format!(".{name}.tmp");
    let result = dir.open_file(&tmp, Access::Create(0o600)).and_then(|mut f| {
        f.set_len(0)
            .and_then(|()| f.write_all(data))
            .and_then(|()| if durable { f.sync_all() } else { Ok(()) })
            .map_err(|e| context(dir.join(&tmp).display(), e))
    });
    let result = result.and_then(|()| dir.rename(&tmp, name));
    if result.is_err() {
        let _ = dir.remove(&tmp);
    }
    result?;
    if durable { dir.sync() } else { Ok(()) }
}

/// True if the file holds no non-zero byte (looking at data extents only).
fn file_is_zero(file: &File, len: u64) -> io::Result<bool> {
    crate::store::blockfile::holds_only_zeros(file, len, &mut vec![0u8; 64 << 10])
}

impl CacheCore {
    fn state(&self) -> MutexGuard<'_, CacheState> {
        lock(&self.state)
    }

    /// Waits up to `timeout` for a change of the state.
    fn wait<'a>(&'a self, s: MutexGuard<'a, CacheState>, timeout: Duration) -> MutexGuard<'a, CacheState> {
        crate::sync::wait(&self.changed, s, timeout)
    }

    fn name(&self, block: u64) -> String {
        self.geometry.block_name(block)
    }

    /// For messages.
    fn block_path(&self, block: u64) -> PathBuf {
        self.blocks_dir.join(&self.name(block))
    }

    /// The cached block's file, opened as `access` allows.
    fn block_file(&self, block: u64, access: Access) -> io::Result<File> {
        self.blocks_dir.open_file(&self.name(block), access)
    }

    fn key(&self, block: u64) -> String {
        block_key(block, &self.geometry.block_name(block))
    }

    fn bs(&self) -> u64 {
        self.geometry.block_size()
    }

    /// One backend request, its transient failures retried for up to
    /// `retry_timeout`: the only loop around it, as the backend makes one
    /// attempt a call. A permanent failure comes back at once. What fails
    /// is EIO with the backend's message (whoever gets it logs it once).
    fn request<T>(&self, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        let counted = || {
            op().inspect_err(|_| {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
            })
        };
        Retry::within(self.config.retry_timeout).run(counted).map_err(|err| eio(err.to_string()))
    }

    /// fsyncs the blocks written since the last sync, and the directories
    /// when names changed (see `FlushState::sync`).
    fn local_sync(&self) -> io::Result<()> {
        self.flush.sync(&self.config.dir.display(), |names_dirty| {
            let blocks: Vec<u64> = std::mem::take(&mut *lock(&self.unsynced)).into_iter().collect();
            let vanished = AtomicBool::new(false);
            let files = crate::store::blockfile::sync_blocks(&blocks, |block| {
                match self.block_file(block, Access::Read) {
                    Ok(f) => f.sync_data().map_err(|e| context(self.block_path(block).display(), e)),
                    // Removed meanwhile: the directory flush below makes that durable.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        vanished.store(true, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            });
            let dirs = if names_dirty || vanished.into_inner() {
                self.journal_dir.sync().and_then(|()| self.overlay_dir.sync()).and_then(|()| self.blocks_dir.sync())
            } else {
                Ok(())
            };
            Flushed { files, dirs }
        })
    }
}

impl CacheStore {
    pub fn stats(&self) -> CacheStats {
        self.core.stats()
    }

    /// Waits until every block dirty now is in the backend.
    pub fn flush(&self) -> io::Result<()> {
        self.core.wait_uploaded()
    }

    fn stop_threads(&self) {
        self.core.state().stop = true;
        self.core.changed.notify_all();
        for handle in std::mem::take(&mut *lock(&self.threads)) {
            let _ = handle.join();
        }
    }

    /// Uploads what it can (giving up once the backend has been failing for
    /// `retry_timeout`, or at once when it refuses an upload for good:
    /// those blocks stay in the journal for the next start), stops the
    /// workers and marks the cache cleanly shut down.
    pub fn close(&self) -> io::Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let flushed = self.core.wait_uploaded();
        if let Err(err) = &flushed {
            log::warn!("{err}; they will be uploaded at the next start");
        }
        self.stop_threads();
        let root = &self.core.root;
        let _ = root.remove(STATUS_FILE);
        // Every cached block, clean or dirty, durable before saying so.
        // SAFETY: syncfs on a descriptor we own.
        if unsafe { libc::syncfs(self.core.blocks_dir.as_file().as_raw_fd()) } != 0 {
            return Err(context(root.path().display(), io::Error::last_os_error()));
        }
        root.open_file(CLEAN_SHUTDOWN, Access::Create(0o600))?;
        root.sync()?;
        flushed
    }
}

impl Drop for CacheStore {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire) {
            self.stop_threads();
        }
    }
}

impl BlockStore for CacheStore {
    fn list(&self) -> io::Result<Vec<u64>> {
        let core = &self.core;
        // Held across the listing: an upload (or delete) finishing between
        // the listing and the look at the journal's entries below would
        // otherwise leave its block out of both, and the image would read it
        // as zeros. Only the upload workers wait: this runs before serving.
        let s = core.state();
        let keys = core.request(|| core.backend.list(""))?;
        let mut present = HashSet::new();
        for key in keys {
            let Some((folder, name)) = key.split_once('/') else { continue };
            if !folder.strip_prefix('d').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
                continue;
            }
            match core.geometry.parse_block_name(name) {
                Some(block) if block_key(block, name) == key => {
                    present.insert(block);
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: object {key} is not a block of this image", core.backend.describe()),
                    ));
                }
            }
        }
        for (block, e) in &s.entries {
            if e.dirty {
                if e.cached {
                    present.insert(*block);
                } else {
                    present.remove(block);
                }
            }
        }
        Ok(present.into_iter().collect())
    }

    fn read_at(&self, block: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self.core.get_block(block)? {
            BlockAt::Memory(data) => {
                let start = offset as usize;
                buf.copy_from_slice(&data[start..start + buf.len()]);
                Ok(())
            }
            BlockAt::Cached(_pin) => {
                // A partial block serves its new ranges; anything else needs its base.
                if let Some(ranges) = self.core.overlay_of(block)
                    && !overlay::covers(&ranges, offset, offset + buf.len() as u64)
                {
                    self.core.ensure_base(block)?;
                }
                let file = self.core.block_file(block, Access::Read)?;
                crate::store::blockfile::read_or_zeros(&file, offset, buf)
                    .map_err(|e| context(self.core.block_path(block).display(), e))
            }
        }
    }

    fn write_at(&self, block: u64, offset: u64, data: &[u8], create: bool) -> io::Result<()> {
        let core = &self.core;
        let path = core.block_path(block);
        if !create {
            // Never fetches: an uncached block gets an overlay (`overlay.rs`).
            return core.modify(block, offset, data.len() as u64, Some(data)).map(drop);
        }
        // A new block: room first (over the bound if the cache is full of dirty blocks).
        let pin = {
            let s = core.state();
            let cached = s.entries.get(&block).is_some_and(|e| e.cached);
            let (mut s, _) = if cached { (s, true) } else { core.reserve(s, true) };
            let seq = s.seq;
            let e = s.entries.entry(block).or_insert_with(|| BlockEntry::new(seq));
            e.cached = true;
            e.pins += 1;
            s.lru_remove(block);
            PinnedBlock { core, block }
        };
        let written = core.block_file(block, Access::Create(0o600)).and_then(|f| {
            f.set_len(0)
                .and_then(|()| f.set_len(core.bs()))
                .and_then(|()| f.write_all_at(data, offset))
                .map_err(|e| context(path.display(), e))
        });
        if let Err(err) = written {
            let _ = core.blocks_dir.remove(&core.name(block));
            let mut s = core.state();
            if let Some(e) = s.entries.get_mut(&block) {
                e.cached = false;
            }
            s.cached_blocks = s.cached_blocks.saturating_sub(1);
            drop(s);
            drop(pin);
            core.state().forget_if_idle(block);
            return Err(err);
        }
        core.flush.names_dirty.store(true, Ordering::Release);
        core.finish_write(block, pin)
    }

    fn zero_range(&self, block: u64, offset: u64, len: u64) -> io::Result<Zeroed> {
        // An uncached block gets an overlay of zeros (`overlay.rs`).
        self.core.modify(block, offset, len, None)
    }

    fn delete(&self, block: u64) -> io::Result<()> {
        let core = &self.core;
        let result = {
            let mut s = core.state();
            let seq = s.seq;
            let e = s.entries.entry(block).or_insert_with(|| BlockEntry::new(seq));
            let was_cached = std::mem::replace(&mut e.cached, false);
            if was_cached {
                s.cached_blocks = s.cached_blocks.saturating_sub(1);
                core.changed.notify_all();
            }
            core.mark_dirty(&mut s, block)
        };
        if core.blocks_dir.remove(&core.name(block))? {
            core.flush.names_dirty.store(true, Ordering::Release);
        }
        lock(&core.unsynced).remove(&block);
        core.drop_overlay(block)?;
        result
    }

    fn sync(&self) -> io::Result<()> {
        match self.core.config.durability {
            Durability::Local => self.core.local_sync(),
            Durability::Remote => self.core.wait_uploaded(),
        }
    }

    fn stored_bytes(&self, _block: u64) -> Option<u64> {
        Some(self.core.bs())
    }
}
