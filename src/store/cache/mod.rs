//! The cache store: a local cache directory in front of an object backend.
//!
//! Layout of the cache directory:
//!
//! | path | what |
//! |---|---|
//! | `cache.json` | which image and backend the cache belongs to, and its epoch |
//! | `blocks/blk-N` | cached blocks, raw bytes like a directory store |
//! | `dirty/blk-N` | journal: block N's local state is newer than the backend (upload the file, or delete the object if the file is gone) |
//! | `tmp/` | upload snapshots and fetches in progress (emptied at start) |
//! | `clean-shutdown` | present only between a clean shutdown and the next start |
//! | `status.json` | live statistics for `onefs status`, rewritten every second |
//! | `onefs.lock` | the mount lock, as in a directory store |
//!
//! Reads fill the cache; clean blocks are evicted least-recently-used once
//! the cache holds `size` bytes of blocks. Writes complete locally and mark
//! the block dirty (creating its journal entry); upload workers send a dirty
//! block `upload_delay` after it was first dirtied (rewrites in between
//! coalesce), as one whole object with a CRC-32C trailer ([`crc`]). A block
//! deleted locally deletes its object. Dirty blocks are never evicted: when
//! the cache is full of them, writers wait for uploads.
//!
//! Durability: with [`Durability::Local`], `sync` fsyncs the cached blocks
//! and the journal; after a crash the journal's blocks are uploaded on the
//! next start, and every other cached block is dropped (it may hold writes
//! that were never synced). With [`Durability::Remote`], `sync` returns once
//! every block dirtied before it is in the backend.
//!
//! A snapshot of a block is copied to `tmp/` before it is uploaded; each
//! modification bumps the block's generation *after* the bytes are written,
//! so an upload that raced a write leaves the block dirty and it is sent again.

pub mod crc;
#[cfg(test)]
mod tests;

use super::{BlockStore, Zeroed};
use crate::backend::{ObjectBackend, block_key};
use crate::core::{Geometry, is_zero};
use crate::errors::context;
use crate::meta::Meta;
use crate::store::blockfile::Flushed;
use crate::store::confined::{Access, ConfinedDir, Kind};
use crate::sync::lock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

pub const CACHE_INFO: &str = "cache.json";
pub const STATUS_FILE: &str = "status.json";
const CLEAN_SHUTDOWN: &str = "clean-shutdown";
/// The backend object naming the cache that last mounted the store.
pub const EPOCH_KEY: &str = "onefs.epoch";
const FETCH_STRIPES: usize = 64;
const COPY_CHUNK: usize = 1 << 20;
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync returns once the cache is durable on local disk.
    Local,
    /// fsync returns once every block dirtied before it is in the backend.
    Remote,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Local => "local",
            Durability::Remote => "remote",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Bytes of blocks the cache may hold (dirty blocks may exceed it only
    /// while writers wait).
    pub size: u64,
    pub durability: Durability,
    pub upload_workers: usize,
    /// How long after a block is first dirtied it is uploaded.
    pub upload_delay: Duration,
    /// How long a read of an uncached block (or a `remote` fsync) keeps
    /// retrying a failing backend before EIO.
    pub retry_timeout: Duration,
}

impl CacheConfig {
    pub const DEFAULT_SIZE: u64 = 10 << 30;
    pub const DEFAULT_WORKERS: usize = 4;
    pub const DEFAULT_DELAY: Duration = Duration::from_secs(2);
    pub const DEFAULT_RETRY: Duration = Duration::from_secs(30);

    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            size: Self::DEFAULT_SIZE,
            durability: Durability::Local,
            upload_workers: Self::DEFAULT_WORKERS,
            upload_delay: Self::DEFAULT_DELAY,
            retry_timeout: Self::DEFAULT_RETRY,
        }
    }
}

/// `cache.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheInfo {
    format: String,
    backend: String,
    epoch: String,
    meta: Meta,
}

/// Live numbers, written to `status.json` for `onefs status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    pub backend: String,
    pub durability: String,
    pub size_limit: u64,
    pub cached_blocks: u64,
    pub cached_bytes: u64,
    pub dirty_blocks: u64,
    pub upload_queue: u64,
    pub uploading: u64,
    pub hits: u64,
    pub misses: u64,
    pub uploads: u64,
    pub uploaded_bytes: u64,
    pub deletes: u64,
    pub evictions: u64,
    pub backend_errors: u64,
    /// Seconds the backend has been failing, if it is.
    pub failing_for: Option<u64>,
    /// The daemon writing these (for `onefs status` to tell stale ones).
    pub pid: u32,
}

impl CacheStats {
    pub fn hit_rate(&self) -> Option<f64> {
        let total = self.hits + self.misses;
        (total > 0).then(|| self.hits as f64 / total as f64)
    }
}

/// Reads the live statistics of a cache directory, if its daemon is running.
pub fn read_stats(dir: &Path) -> Option<CacheStats> {
    let text = ConfinedDir::open(dir).ok()?.read_small(STATUS_FILE, 1 << 20).ok()?;
    let stats: CacheStats = serde_json::from_slice(&text).ok()?;
    Path::new(&format!("/proc/{}", stats.pid)).exists().then_some(stats)
}

/// The image description kept in a cache directory (for `onefs status`).
pub fn cached_meta(dir: &Path) -> Option<Meta> {
    let text = ConfinedDir::open(dir).ok()?.read_small(CACHE_INFO, 1 << 20).ok()?;
    serde_json::from_slice::<CacheInfo>(&text).ok().map(|i| i.meta)
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    uploads: AtomicU64,
    uploaded_bytes: AtomicU64,
    deletes: AtomicU64,
    evictions: AtomicU64,
    errors: AtomicU64,
}

struct BlockEntry {
    /// `blocks/blk-N` holds the block.
    cached: bool,
    /// The backend must be brought up to date (upload the file, or delete
    /// the object when not cached).
    dirty: bool,
    /// `dirty/blk-N` exists.
    journaled: bool,
    /// Sequence number of the last modification.
    generation: u64,
    /// Generation last confirmed in the backend.
    synced_gen: u64,
    queued: bool,
    uploading: bool,
    dirty_since: Instant,
    pins: u32,
    /// Position in the LRU of evictable (clean, cached) blocks.
    lru_tick: Option<u64>,
}

impl BlockEntry {
    fn new(seq: u64) -> Self {
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
        }
    }
}

#[derive(Default)]
struct CacheState {
    entries: HashMap<u64, BlockEntry>,
    lru: BTreeMap<u64, u64>,
    lru_clock: u64,
    seq: u64,
    /// Cached blocks, counting space reserved for fetches and creations.
    cached_blocks: u64,
    dirty_blocks: u64,
    uploads_in_flight: u64,
    queue: VecDeque<u64>,
    /// Threads waiting for every dirty block to be uploaded (no delay then).
    flushers: u32,
    /// Writers waiting for room in the cache (no delay then either).
    space_waiters: u32,
    failing_since: Option<Instant>,
    stop: bool,
}

impl CacheState {
    fn lru_insert(&mut self, block: u64) {
        self.lru_clock += 1;
        let tick = self.lru_clock;
        if let Some(e) = self.entries.get_mut(&block) {
            if let Some(old) = e.lru_tick.replace(tick) {
                self.lru.remove(&old);
            }
            self.lru.insert(tick, block);
        }
    }

    fn lru_remove(&mut self, block: u64) {
        if let Some(t) = self.entries.get_mut(&block).and_then(|e| e.lru_tick.take()) {
            self.lru.remove(&t);
        }
    }

    fn forget_if_idle(&mut self, block: u64) {
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

struct CacheCore {
    backend: Arc<dyn ObjectBackend>,
    geometry: Geometry,
    config: CacheConfig,
    /// The cache directory and its parts, every name opened relative to
    /// them and never through a link (see `ConfinedDir`).
    root: ConfinedDir,
    blocks_dir: ConfinedDir,
    journal_dir: ConfinedDir,
    tmp_dir: ConfinedDir,
    max_blocks: u64,
    state: Mutex<CacheState>,
    changed: Condvar,
    fetch_locks: Box<[Mutex<()>]>,
    /// Blocks written since the last local sync.
    unsynced: Mutex<HashSet<u64>>,
    /// Created/removed files and sticky flush failures.
    flush: crate::store::blockfile::FlushState,
    counters: Counters,
    tmp_counter: AtomicU64,
}

pub struct CacheStore {
    core: Arc<CacheCore>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    closed: AtomicBool,
}

fn eio(message: String) -> io::Error {
    io::Error::other(message)
}

fn mkdir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(context(path.display(), e)),
    }
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

/// Reads the small file `name` of `dir`; `None` if it is absent.
fn read_optional(dir: &ConfinedDir, name: &str) -> io::Result<Option<Vec<u8>>> {
    match dir.read_small(name, 1 << 20) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// True if the file holds no non-zero byte (looking at data extents only).
fn file_is_zero(file: &File, len: u64) -> io::Result<bool> {
    crate::store::blockfile::holds_only_zeros(file, len, &mut vec![0u8; 64 << 10])
}

/// Unpins a cached block when dropped.
struct PinnedBlock<'a> {
    core: &'a CacheCore,
    block: u64,
}

impl Drop for PinnedBlock<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.core.state);
        if let Some(e) = s.entries.get_mut(&self.block) {
            e.pins = e.pins.saturating_sub(1);
            if e.pins == 0 && s.space_waiters > 0 {
                self.core.changed.notify_all();
            }
        }
    }
}

enum BlockAt<'a> {
    Cached(PinnedBlock<'a>),
    /// Fetched but not cached (the cache is full of dirty blocks).
    Memory(Vec<u8>),
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

    /// Runs a backend operation, retrying with exponential backoff for up
    /// to `retry_timeout`.
    fn retrying<T>(&self, what: &str, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        let deadline = Instant::now() + self.config.retry_timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(err) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() + backoff > deadline {
                        log::error!(
                            "{}: {what}: {err} (gave up after {:?})",
                            self.backend.describe(),
                            self.config.retry_timeout
                        );
                        return Err(eio(format!("{}: {what}: {err}", self.backend.describe())));
                    }
                    log::debug!("{}: {what}: {err}; retrying in {backoff:?}", self.backend.describe());
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn pin_cached(&self, block: u64) -> Option<PinnedBlock<'_>> {
        let mut s = self.state();
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

    /// Makes room for one more cached block. With `wait`, waits while every
    /// cached block is dirty or in use; without, returns false then.
    fn reserve<'a>(&'a self, mut s: MutexGuard<'a, CacheState>, wait: bool) -> (MutexGuard<'a, CacheState>, bool) {
        loop {
            if s.cached_blocks < self.max_blocks {
                s.cached_blocks += 1;
                return (s, true);
            }
            let victim =
                s.lru.iter().find(|(_, b)| s.entries.get(b).is_some_and(|e| e.pins == 0)).map(|(t, b)| (*t, *b));
            if let Some((tick, block)) = victim {
                s.lru.remove(&tick);
                s.entries.remove(&block);
                s.cached_blocks -= 1;
                if let Err(e) = self.blocks_dir.remove(&self.name(block)) {
                    log::warn!("cannot evict: {e}");
                }
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if !wait {
                return (s, false);
            }
            s.space_waiters += 1;
            self.changed.notify_all();
            s = self.wait(s, Duration::from_secs(1));
            s.space_waiters -= 1;
        }
    }

    fn unreserve(&self) {
        let mut s = self.state();
        s.cached_blocks = s.cached_blocks.saturating_sub(1);
        self.changed.notify_all();
    }

    /// The verified bytes of a block from the backend.
    fn fetch(&self, block: u64) -> io::Result<Vec<u8>> {
        let key = self.key(block);
        let mut corrupt = 0;
        loop {
            let object = self.retrying(&format!("get {key}"), || self.backend.get(&key))?;
            let Some(object) = object else {
                log::error!(
                    "{}: object {key} is missing (the image holds block {})",
                    self.backend.describe(),
                    block + 1
                );
                return Err(eio(format!("{}: object {key} is missing", self.backend.describe())));
            };
            match crc::verify(object, self.bs()) {
                Ok(data) => return Ok(data),
                Err(why) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    log::error!("{}: object {key}: {why}", self.backend.describe());
                    corrupt += 1;
                    if corrupt >= 2 {
                        return Err(eio(format!("{}: object {key}: {why}", self.backend.describe())));
                    }
                }
            }
        }
    }

    /// Writes fetched bytes to `blocks/blk-N` (sparse: zero runs stay holes).
    fn install(&self, block: u64, data: &[u8]) -> io::Result<()> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = format!("fetch-{block}-{n}");
        let result = (|| {
            let file = self.tmp_dir.open_file(&tmp, Access::CreateNew(0o600))?;
            file.set_len(self.bs())?;
            for (i, chunk) in data.chunks(64 << 10).enumerate() {
                if !is_zero(chunk) {
                    file.write_all_at(chunk, (i * (64 << 10)) as u64)?;
                }
            }
            self.tmp_dir.rename_into(&tmp, &self.blocks_dir, &self.name(block))
        })();
        if result.is_err() {
            let _ = self.tmp_dir.remove(&tmp);
        }
        result.map_err(|e| context(self.block_path(block).display(), e))
    }

    /// A cached, pinned block, fetching it if needed. Without `for_write`, a
    /// cache full of dirty blocks answers from memory instead of waiting.
    fn get_block(&self, block: u64, for_write: bool) -> io::Result<BlockAt<'_>> {
        if let Some(pin) = self.pin_cached(block) {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(BlockAt::Cached(pin));
        }
        let _fetching = lock(&self.fetch_locks[block as usize % FETCH_STRIPES]);
        if let Some(pin) = self.pin_cached(block) {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(BlockAt::Cached(pin));
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let data = self.fetch(block)?;
        let (s, room) = self.reserve(self.state(), for_write);
        drop(s);
        if !room {
            return Ok(BlockAt::Memory(data));
        }
        if let Err(err) = self.install(block, &data) {
            self.unreserve();
            return Err(err);
        }
        let mut s = self.state();
        let seq = s.seq;
        let e = s.entries.entry(block).or_insert_with(|| BlockEntry::new(seq));
        e.cached = true;
        e.pins += 1;
        let clean = !e.dirty;
        if clean {
            s.lru_insert(block);
        }
        Ok(BlockAt::Cached(PinnedBlock { core: self, block }))
    }

    /// Records a modification of `block` (after its bytes were written or
    /// its file removed): journal entry, generation, upload queue.
    fn mark_dirty(&self, s: &mut CacheState, block: u64) -> io::Result<()> {
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

    fn finish_write(&self, block: u64, pin: PinnedBlock<'_>) -> io::Result<()> {
        let result = {
            let mut s = self.state();
            self.mark_dirty(&mut s, block)
        };
        drop(pin);
        lock(&self.unsynced).insert(block);
        result
    }

    /// Copies a block to a snapshot file with its trailer and uploads it.
    fn upload(&self, block: u64) -> io::Result<u64> {
        let src = self.block_file(block, Access::Read)?;
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp_name = format!("upload-{block}-{n}");
        let tmp = self.tmp_dir.join(&tmp_name);
        let result = (|| {
            let mut out = self.tmp_dir.open_file(&tmp_name, Access::CreateNew(0o600))?;
            let mut crc = crc::Crc32c::new();
            let mut buf = vec![0u8; COPY_CHUNK.min(self.bs() as usize)];
            let mut pos = 0u64;
            while pos < self.bs() {
                let want = buf.len().min((self.bs() - pos) as usize);
                crate::store::blockfile::read_or_zeros(&src, pos, &mut buf[..want])?;
                crc.update(&buf[..want]);
                out.write_all(&buf[..want])?;
                pos += want as u64;
            }
            out.write_all(&crc::trailer(crc.finish()))?;
            drop(out);
            self.backend.put_file(&self.key(block), &tmp)
        })();
        let _ = self.tmp_dir.remove(&tmp_name);
        result.map(|()| self.bs())
    }

    fn worker(self: &Arc<Self>) {
        let mut backoff: Option<Duration> = None;
        let mut warned_at: Option<Instant> = None;
        loop {
            let (block, generation, cached) = {
                let mut s = self.state();
                loop {
                    if s.stop {
                        return;
                    }
                    let urgent = s.flushers > 0 || s.space_waiters > 0;
                    let now = Instant::now();
                    let Some(&block) = s.queue.front() else {
                        s = self.wait(s, Duration::from_secs(1));
                        continue;
                    };
                    let Some(e) = s.entries.get(&block) else {
                        s.queue.pop_front();
                        continue;
                    };
                    let due = e.dirty_since + self.config.upload_delay;
                    if !urgent && now < due {
                        s = self.wait(s, due - now);
                        continue;
                    }
                    s.queue.pop_front();
                    s.uploads_in_flight += 1;
                    let Some(e) = s.entries.get_mut(&block) else { continue };
                    e.queued = false;
                    e.uploading = true;
                    if e.cached {
                        e.pins += 1;
                    }
                    break (block, e.generation, e.cached);
                }
            };
            let key = self.key(block);
            let result = if cached { self.upload(block) } else { self.backend.delete(&key).map(|()| 0) };
            let mut settle_lru = false;
            {
                let mut s = self.state();
                s.uploads_in_flight -= 1;
                let Some(e) = s.entries.get_mut(&block) else { continue };
                e.uploading = false;
                if cached {
                    e.pins = e.pins.saturating_sub(1);
                }
                match &result {
                    Ok(bytes) => {
                        if cached {
                            self.counters.uploads.fetch_add(1, Ordering::Relaxed);
                            self.counters.uploaded_bytes.fetch_add(*bytes, Ordering::Relaxed);
                        } else {
                            self.counters.deletes.fetch_add(1, Ordering::Relaxed);
                        }
                        if e.generation == generation && e.cached == cached {
                            e.dirty = false;
                            e.synced_gen = generation;
                            if e.journaled {
                                if let Err(err) = self.journal_dir.remove(&self.geometry.block_name(block)) {
                                    log::warn!("{err}");
                                }
                                e.journaled = false;
                            }
                            settle_lru = cached;
                            s.dirty_blocks -= 1;
                            s.forget_if_idle(block);
                        } else {
                            // Modified during the upload: send it again.
                            e.queued = true;
                            e.dirty_since = Instant::now();
                            s.queue.push_back(block);
                        }
                        if s.failing_since.take().is_some() {
                            log::info!("{}: backend answers again", self.backend.describe());
                        }
                        backoff = None;
                    }
                    Err(err) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        e.queued = true;
                        s.queue.push_front(block);
                        s.failing_since.get_or_insert_with(Instant::now);
                        if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                            log::warn!(
                                "{}: {} {key}: {err}; {} dirty blocks kept in the cache, retrying",
                                self.backend.describe(),
                                if cached { "upload" } else { "delete" },
                                s.dirty_blocks
                            );
                            warned_at = Some(Instant::now());
                        }
                        backoff = Some(backoff.map_or(Duration::from_millis(100), |b| (b * 2).min(MAX_BACKOFF)));
                    }
                }
                self.changed.notify_all();
            }
            if settle_lru {
                // The journal entry's removal must be durable before the
                // block may be evicted: a journal entry that came back after
                // a crash, with its file gone, would mean "delete".
                let synced = self.journal_dir.sync();
                let mut s = self.state();
                if let Some(e) = s.entries.get(&block)
                    && synced.is_ok()
                    && e.cached
                    && !e.dirty
                    && e.generation == generation
                    && e.lru_tick.is_none()
                {
                    s.lru_insert(block);
                    if s.space_waiters > 0 {
                        self.changed.notify_all();
                    }
                }
            }
            if let Some(pause) = backoff {
                let s = self.state();
                if !s.stop {
                    drop(self.wait(s, pause));
                }
            }
        }
    }

    /// Waits until every block dirty now is in the backend; fails once the
    /// backend has been failing for `retry_timeout`.
    fn wait_uploaded(&self) -> io::Result<()> {
        let mut s = self.state();
        let mut targets: Vec<(u64, u64)> =
            s.entries.iter().filter(|(_, e)| e.dirty).map(|(b, e)| (*b, e.generation)).collect();
        if targets.is_empty() {
            return Ok(());
        }
        s.flushers += 1;
        self.changed.notify_all();
        let started = Instant::now();
        let result = loop {
            targets.retain(|(b, g)| s.entries.get(b).is_some_and(|e| e.dirty && e.synced_gen < *g));
            if targets.is_empty() {
                break Ok(());
            }
            // Every sync gives a failing backend `retry_timeout` to recover.
            if let Some(since) = s.failing_since
                && since.max(started).elapsed() >= self.config.retry_timeout
            {
                break Err(eio(format!(
                    "{}: backend failing for {}s; {} blocks not uploaded yet (kept in the cache {})",
                    self.backend.describe(),
                    since.elapsed().as_secs(),
                    targets.len(),
                    self.config.dir.display()
                )));
            }
            if s.stop {
                break Err(eio("cache store stopped".into()));
            }
            s = self.wait(s, Duration::from_millis(200));
        };
        s.flushers -= 1;
        result
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
                self.journal_dir.sync().and_then(|()| self.blocks_dir.sync())
            } else {
                Ok(())
            };
            Flushed { files, dirs }
        })
    }

    fn stats(&self) -> CacheStats {
        let s = self.state();
        let c = &self.counters;
        CacheStats {
            backend: self.backend.describe(),
            durability: self.config.durability.as_str().into(),
            size_limit: self.max_blocks * self.bs(),
            cached_blocks: s.cached_blocks,
            cached_bytes: s.cached_blocks * self.bs(),
            dirty_blocks: s.dirty_blocks,
            upload_queue: s.queue.len() as u64,
            uploading: s.uploads_in_flight,
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            uploads: c.uploads.load(Ordering::Relaxed),
            uploaded_bytes: c.uploaded_bytes.load(Ordering::Relaxed),
            deletes: c.deletes.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            backend_errors: c.errors.load(Ordering::Relaxed),
            failing_for: s.failing_since.map(|t| t.elapsed().as_secs()),
            pid: std::process::id(),
        }
    }

    fn stats_writer(self: &Arc<Self>) {
        let mut last = None;
        loop {
            let stats = self.stats();
            if last.as_ref() != Some(&stats) {
                let text = serde_json::to_string(&stats).unwrap_or_default();
                if let Err(err) = write_atomic(&self.root, STATUS_FILE, text.as_bytes(), false) {
                    log::debug!("cannot write live statistics: {err}");
                }
                last = Some(stats);
            }
            let next = Instant::now() + Duration::from_secs(1);
            let mut s = self.state();
            while !s.stop && Instant::now() < next {
                s = self.wait(s, next - Instant::now());
            }
            if s.stop {
                return;
            }
        }
    }
}

impl CacheStore {
    /// Opens (creating if needed) the cache directory for `meta`'s image on
    /// `backend`, recovers its journal and starts the upload workers.
    pub fn open(backend: Arc<dyn ObjectBackend>, meta: &Meta, config: &CacheConfig) -> io::Result<Self> {
        let geometry = meta.geometry().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let bs = geometry.block_size();
        if config.size < bs {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: cache size {} is smaller than one block ({bs} bytes)", config.dir.display(), config.size),
            ));
        }
        let dir = &config.dir;
        mkdir(dir)?;
        let root = ConfinedDir::open(dir)?;
        let blocks = root.create_subdir("blocks", 0o700)?;
        let dirty = root.create_subdir("dirty", 0o700)?;
        let tmp = root.create_subdir("tmp", 0o700)?;
        for (name, _) in tmp.entries()? {
            if let Some(name) = name.to_str() {
                let _ = tmp.remove(name);
            }
        }
        // The cache's own names: a link, FIFO or device in their place was
        // put there by someone else and is never followed or opened.
        let block_of = |name: &std::ffi::OsStr, kind: Kind, dir: &ConfinedDir| -> io::Result<u64> {
            let path = dir.path().join(name);
            let block = name.to_str().and_then(|n| geometry.parse_block_name(n)).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a block of this image", path.display()))
            })?;
            if kind != Kind::File {
                return Err(crate::store::confined::not_a_file(&path, kind));
            }
            Ok(block)
        };
        let mut marked = HashSet::new();
        for (name, kind) in dirty.entries()? {
            marked.insert(block_of(&name, kind, &dirty)?);
        }
        let was_clean = match root.kind(CLEAN_SHUTDOWN)? {
            Some(Kind::File) => true,
            Some(kind) => return Err(crate::store::confined::not_a_file(&root.join(CLEAN_SHUTDOWN), kind)),
            None => false,
        };
        if was_clean {
            root.remove(CLEAN_SHUTDOWN)?;
            root.sync()?;
        }
        let info: Option<CacheInfo> =
            read_optional(&root, CACHE_INFO)?.and_then(|text| serde_json::from_slice(&text).ok());
        let same_image = info.as_ref().is_some_and(|i| i.meta.id == meta.id);
        if !same_image && !marked.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: the cache holds {} blocks not yet uploaded for another image{}; it cannot serve image {} of {}",
                    dir.display(),
                    marked.len(),
                    info.as_ref().map(|i| format!(" ({} on {})", i.meta.id, i.backend)).unwrap_or_default(),
                    meta.id,
                    backend.describe()
                ),
            ));
        }
        let core = CacheCore {
            geometry,
            max_blocks: config.size / bs,
            root,
            blocks_dir: blocks,
            journal_dir: dirty,
            tmp_dir: tmp,
            config: config.clone(),
            backend,
            state: Mutex::new(CacheState::default()),
            changed: Condvar::new(),
            fetch_locks: (0..FETCH_STRIPES).map(|_| Mutex::new(())).collect(),
            unsynced: Mutex::new(HashSet::new()),
            flush: Default::default(),
            counters: Counters::default(),
            tmp_counter: AtomicU64::new(0),
        };
        // Clean cached blocks are kept only if this cache was the last to
        // serve the store and shut down cleanly.
        let remote_epoch = core.retrying(&format!("get {EPOCH_KEY}"), || core.backend.get(EPOCH_KEY))?;
        let keep_clean = was_clean
            && same_image
            && info.as_ref().is_some_and(|i| remote_epoch.as_deref() == Some(i.epoch.as_bytes()));
        if same_image
            && !keep_clean
            && info.as_ref().is_some_and(|i| remote_epoch.as_deref() != Some(i.epoch.as_bytes()))
            && !marked.is_empty()
        {
            log::warn!(
                "{}: another cache served {} since this one last did; uploading this cache's {} unsent blocks over it",
                dir.display(),
                core.backend.describe(),
                marked.len()
            );
        }
        let mut files = vec![];
        for (name, kind) in core.blocks_dir.entries()? {
            let path = core.blocks_dir.path().join(&name);
            let Some(name) = name.to_str() else {
                log::warn!("{}: not a cached block; left alone", path.display());
                continue;
            };
            let Some(block) = geometry.parse_block_name(name) else {
                // Unlinking removes a link itself, never its target.
                log::warn!("{}: not a cached block ({}); removing it", path.display(), kind.describe());
                let _ = core.blocks_dir.remove(name);
                continue;
            };
            if kind != Kind::File {
                return Err(crate::store::confined::not_a_file(&path, kind));
            }
            if !marked.contains(&block) && !keep_clean {
                core.blocks_dir.remove(name)?;
                continue;
            }
            let Some(stat) = core.blocks_dir.stat(name)? else { continue };
            if stat.st_size as u64 > bs {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: cached block is longer than a block", path.display()),
                ));
            }
            let used = UNIX_EPOCH
                + Duration::new(stat.st_mtime.max(0) as u64, stat.st_mtime_nsec.clamp(0, 999_999_999) as u32);
            files.push((used, block));
        }
        files.sort();
        {
            let mut s = core.state();
            for (_, block) in &files {
                s.seq += 1;
                let mut e = BlockEntry::new(s.seq);
                e.cached = true;
                s.entries.insert(*block, e);
                s.cached_blocks += 1;
                if !marked.contains(block) {
                    s.lru_insert(*block);
                }
            }
            let mut journal: Vec<u64> = marked.iter().copied().collect();
            journal.sort();
            for block in journal {
                s.seq += 1;
                let seq = s.seq;
                let e = s.entries.entry(block).or_insert_with(|| BlockEntry::new(seq));
                e.journaled = true;
                e.dirty = true;
                e.queued = true;
                e.generation = seq;
                e.synced_gen = 0;
                s.dirty_blocks += 1;
                s.queue.push_back(block);
            }
            // Over the bound (a smaller size than last time): evict clean ones.
            while s.cached_blocks > core.max_blocks {
                let Some((tick, block)) = s.lru.iter().next().map(|(t, b)| (*t, *b)) else { break };
                s.lru.remove(&tick);
                s.entries.remove(&block);
                s.cached_blocks -= 1;
                let _ = core.blocks_dir.remove(&core.name(block));
            }
            if !marked.is_empty() {
                log::info!(
                    "{}: {} blocks from the journal will be uploaded to {}",
                    dir.display(),
                    marked.len(),
                    core.backend.describe()
                );
            }
        }
        let epoch = uuid::Uuid::new_v4().to_string();
        core.retrying(&format!("put {EPOCH_KEY}"), || core.backend.put(EPOCH_KEY, epoch.as_bytes()))?;
        let info =
            CacheInfo { format: "onefs-cache".into(), backend: core.backend.describe(), epoch, meta: meta.clone() };
        let info_text = serde_json::to_string_pretty(&info).unwrap_or_default() + "\n";
        write_atomic(&core.root, CACHE_INFO, info_text.as_bytes(), true)?;

        let core = Arc::new(core);
        let mut threads = vec![];
        for i in 0..config.upload_workers.max(1) {
            let worker = core.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("upload-{i}"))
                    .spawn(move || worker.worker())
                    .map_err(|e| context("cannot start an upload worker", e))?,
            );
        }
        let writer = core.clone();
        threads.push(
            std::thread::Builder::new()
                .name("cache-stats".into())
                .spawn(move || writer.stats_writer())
                .map_err(|e| context("cannot start the statistics writer", e))?,
        );
        Ok(Self { core, threads: Mutex::new(threads), closed: AtomicBool::new(false) })
    }

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
    /// `retry_timeout`: those blocks stay in the journal for the next
    /// start), stops the workers and marks the cache cleanly shut down.
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
        let keys = core.retrying("list", || core.backend.list(""))?;
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
        match self.core.get_block(block, false)? {
            BlockAt::Memory(data) => {
                let start = offset as usize;
                buf.copy_from_slice(&data[start..start + buf.len()]);
                Ok(())
            }
            BlockAt::Cached(_pin) => {
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
            let BlockAt::Cached(pin) = core.get_block(block, true)? else {
                return Err(eio(format!("{}: no room in the cache", path.display())));
            };
            let file = core.block_file(block, Access::ReadWrite)?;
            file.write_all_at(data, offset).map_err(|e| context(path.display(), e))?;
            return core.finish_write(block, pin);
        }
        // A new block: room first (waiting for uploads if the cache is full of dirty blocks).
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
        let core = &self.core;
        let path = core.block_path(block);
        let BlockAt::Cached(pin) = core.get_block(block, true)? else {
            return Err(eio(format!("{}: no room in the cache", path.display())));
        };
        let file = core.block_file(block, Access::ReadWrite)?;
        let punch = nix::fcntl::fallocate(
            &file,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset as i64,
            len as i64,
        );
        if let Err(errno) = punch {
            if errno != nix::errno::Errno::EOPNOTSUPP {
                return Err(context(path.display(), errno.into()));
            }
            file.write_all_at(&vec![0u8; len as usize], offset).map_err(|e| context(path.display(), e))?;
        }
        let zero = file_is_zero(&file, core.bs()).map_err(|e| context(path.display(), e))?;
        core.finish_write(block, pin)?;
        Ok(if zero { Zeroed::AllZero } else { Zeroed::MayHoldData })
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
