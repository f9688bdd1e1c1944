//! Recovery at open: what `CacheStore::open` does with the cache directory
//! it finds (the journal, cached blocks, `cache.json`, the backend's epoch)
//! before serving.

use super::overlay::{self, Ranges};
use super::state::{BlockEntry, CacheState};
use super::stats::Counters;
use super::{CACHE_INFO, CLEAN_SHUTDOWN, CacheConfig, CacheCore, CacheStore, EPOCH_KEY, FETCH_STRIPES, write_atomic};
use crate::backend::ObjectBackend;
use crate::confined::{ConfinedDir, Kind};
use crate::core::Geometry;
use crate::errors::context;
use crate::meta::Meta;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, UNIX_EPOCH};

/// `cache.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheInfo {
    format: String,
    backend: String,
    epoch: String,
    meta: Meta,
}

/// The image description kept in a cache directory (for `onefs status`).
pub fn cached_meta(dir: &Path) -> Option<Meta> {
    let text = ConfinedDir::open(dir).ok()?.read_small(CACHE_INFO, 1 << 20).ok()?;
    serde_json::from_slice::<CacheInfo>(&text).ok().map(|i| i.meta)
}

fn mkdir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(context(path.display(), e)),
    }
}

/// Reads the small file `name` of `dir`; `None` if it is absent.
fn read_optional(dir: &ConfinedDir, name: &str) -> io::Result<Option<Vec<u8>>> {
    match dir.read_small(name, 1 << 20) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The cache directory and its parts, every name opened relative to them
/// and never through a link (see `ConfinedDir`).
struct CacheDirs {
    root: ConfinedDir,
    blocks: ConfinedDir,
    journal: ConfinedDir,
    overlay: ConfinedDir,
    tmp: ConfinedDir,
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
        let dirs = open_dirs(&config.dir)?;
        let mut journal = read_journal(&dirs.journal, &geometry)?;
        let overlays = read_overlays(&dirs.overlay, &geometry)?;
        let was_clean = take_clean_shutdown(&dirs.root)?;
        let own_info = read_own_info(&dirs.root, &journal, meta, &config.dir, &*backend)?;
        let core = CacheCore::new(backend, geometry, config, dirs);
        let keep_clean = core.may_keep_clean_blocks(was_clean, own_info.as_ref(), &journal)?;
        let mut cached = core.keep_cached_blocks(&journal, keep_clean)?;
        let overlays = core.keep_overlays(overlays, &mut journal, &mut cached)?;
        core.rebuild_state(&cached, &journal, overlays);
        core.claim_store(meta)?;
        let core = Arc::new(core);
        let threads = start_threads(&core)?;
        Ok(Self { core, threads: Mutex::new(threads), closed: AtomicBool::new(false) })
    }
}

/// Creates what is missing of the cache directory and empties `tmp/`.
fn open_dirs(dir: &Path) -> io::Result<CacheDirs> {
    mkdir(dir)?;
    let root = ConfinedDir::open(dir)?;
    let blocks = root.create_subdir("blocks", 0o700)?;
    let journal = root.create_subdir("dirty", 0o700)?;
    let overlay = root.create_subdir("overlay", 0o700)?;
    let tmp = root.create_subdir("tmp", 0o700)?;
    for (name, _) in tmp.entries()? {
        if let Some(name) = name.to_str() {
            let _ = tmp.remove(name);
        }
    }
    Ok(CacheDirs { root, blocks, journal, overlay, tmp })
}

/// The blocks named in `dirty/`: not yet in the backend. Only the cache's
/// own names are accepted: a link, FIFO or device in their place was put
/// there by someone else and is never followed or opened.
fn read_journal(journal: &ConfinedDir, geometry: &Geometry) -> io::Result<HashSet<u64>> {
    let mut blocks = HashSet::new();
    for (name, kind) in journal.entries()? {
        let path = journal.path().join(&name);
        let block = name.to_str().and_then(|n| geometry.parse_block_name(n)).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a block of this image", path.display()))
        })?;
        if kind != Kind::File {
            return Err(crate::confined::not_a_file(&path, kind));
        }
        blocks.insert(block);
    }
    Ok(blocks)
}

/// The records of `overlay/`: the new ranges of partial blocks. Untrusted
/// like the journal: only the cache's own names, regular files, well-formed
/// records; leftovers of a replacement cut short (`.blk-N.tmp`) are removed.
fn read_overlays(dir: &ConfinedDir, geometry: &Geometry) -> io::Result<HashMap<u64, Ranges>> {
    let mut records = HashMap::new();
    for (name, kind) in dir.entries()? {
        let path = dir.path().join(&name);
        let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display()));
        let Some(name) = name.to_str() else { return Err(invalid("not a block of this image")) };
        if name.starts_with('.') && name.ends_with(".tmp") && kind == Kind::File {
            dir.remove(name)?;
            continue;
        }
        let block = geometry.parse_block_name(name).ok_or_else(|| invalid("not a block of this image"))?;
        if kind != Kind::File {
            return Err(crate::confined::not_a_file(&path, kind));
        }
        let text = dir.read_small(name, overlay::RECORD_CAP)?;
        let ranges = overlay::decode(&text, geometry.block_size()).ok_or_else(|| invalid("not an overlay record"))?;
        records.insert(block, ranges);
    }
    Ok(records)
}

/// Whether the last shutdown was clean; removes the mark (durably), so a
/// crash from now on is seen as one.
fn take_clean_shutdown(root: &ConfinedDir) -> io::Result<bool> {
    match root.kind(CLEAN_SHUTDOWN)? {
        Some(Kind::File) => {
            root.remove(CLEAN_SHUTDOWN)?;
            root.sync()?;
            Ok(true)
        }
        Some(kind) => Err(crate::confined::not_a_file(&root.join(CLEAN_SHUTDOWN), kind)),
        None => Ok(false),
    }
}

/// `cache.json` if it belongs to `meta`'s image. A cache of another image
/// (or of none) is refused while its journal holds blocks not yet uploaded.
fn read_own_info(
    root: &ConfinedDir,
    journal: &HashSet<u64>,
    meta: &Meta,
    dir: &Path,
    backend: &dyn ObjectBackend,
) -> io::Result<Option<CacheInfo>> {
    let info: Option<CacheInfo> = read_optional(root, CACHE_INFO)?.and_then(|text| serde_json::from_slice(&text).ok());
    let same_image = info.as_ref().is_some_and(|i| i.meta.id == meta.id);
    if !same_image && !journal.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: the cache holds {} blocks not yet uploaded for another image{}; it cannot serve image {} of {}",
                dir.display(),
                journal.len(),
                info.as_ref().map(|i| format!(" ({} on {})", i.meta.id, i.backend)).unwrap_or_default(),
                meta.id,
                backend.describe()
            ),
        ));
    }
    Ok(info.filter(|_| same_image))
}

/// Starts the upload workers and the statistics writer; stops those
/// already started if one cannot be.
fn start_threads(core: &Arc<CacheCore>) -> io::Result<Vec<JoinHandle<()>>> {
    let mut threads = vec![];
    let mut spawn = |name: String, job: fn(&Arc<CacheCore>)| {
        let core = core.clone();
        std::thread::Builder::new().name(name).spawn(move || job(&core)).map(|t| threads.push(t))
    };
    let mut started = Ok(());
    for i in 0..core.config.upload_workers.max(1) {
        started = started.and_then(|()| spawn(format!("upload-{i}"), CacheCore::worker));
    }
    started = started.and_then(|()| spawn("cache-stats".into(), CacheCore::stats_writer));
    if let Err(e) = started {
        core.state().stop = true;
        core.changed.notify_all();
        threads.into_iter().for_each(|t| drop(t.join()));
        return Err(context("cannot start the cache's threads", e));
    }
    Ok(threads)
}

impl CacheCore {
    fn new(backend: Arc<dyn ObjectBackend>, geometry: Geometry, config: &CacheConfig, dirs: CacheDirs) -> Self {
        CacheCore {
            max_blocks: config.size / geometry.block_size(),
            geometry,
            root: dirs.root,
            blocks_dir: dirs.blocks,
            journal_dir: dirs.journal,
            overlay_dir: dirs.overlay,
            tmp_dir: dirs.tmp,
            config: config.clone(),
            backend,
            state: Mutex::new(CacheState::default()),
            changed: Condvar::new(),
            fetch_locks: (0..FETCH_STRIPES).map(|_| Mutex::new(())).collect(),
            unsynced: Mutex::new(HashSet::new()),
            flush: Default::default(),
            counters: Counters::default(),
            tmp_counter: AtomicU64::new(0),
        }
    }

    /// Clean cached blocks are kept only if this cache was the last to serve
    /// the store (the backend's epoch is the one in its `cache.json` of this
    /// image, `own_info`) and shut down cleanly: otherwise they may be stale
    /// or hold writes that were never synced.
    fn may_keep_clean_blocks(
        &self,
        was_clean: bool,
        own_info: Option<&CacheInfo>,
        journal: &HashSet<u64>,
    ) -> io::Result<bool> {
        let remote_epoch = self.request(|| self.backend.get(EPOCH_KEY))?;
        let last_to_serve = own_info.is_some_and(|i| remote_epoch.as_deref() == Some(i.epoch.as_bytes()));
        if own_info.is_some() && !last_to_serve && !journal.is_empty() {
            log::warn!(
                "{}: another cache served {} since this one last did; uploading this cache's {} unsent blocks over it",
                self.config.dir.display(),
                self.backend.describe(),
                journal.len()
            );
        }
        Ok(was_clean && last_to_serve)
    }

    /// Goes through `blocks/`: keeps the journal's blocks, and the clean
    /// ones with `keep_clean`; removes the rest and strays. Returns the kept
    /// blocks, least recently used first.
    fn keep_cached_blocks(&self, journal: &HashSet<u64>, keep_clean: bool) -> io::Result<Vec<u64>> {
        let mut kept = vec![];
        for (name, kind) in self.blocks_dir.entries()? {
            let path = self.blocks_dir.path().join(&name);
            let Some(name) = name.to_str() else {
                log::warn!("{}: not a cached block; left alone", path.display());
                continue;
            };
            let Some(block) = self.geometry.parse_block_name(name) else {
                // Unlinking removes a link itself, never its target.
                log::warn!("{}: not a cached block ({}); removing it", path.display(), kind.describe());
                let _ = self.blocks_dir.remove(name);
                continue;
            };
            if kind != Kind::File {
                return Err(crate::confined::not_a_file(&path, kind));
            }
            if !journal.contains(&block) && !keep_clean {
                self.blocks_dir.remove(name)?;
                continue;
            }
            let Some(stat) = self.blocks_dir.stat(name)? else { continue };
            if stat.st_size as u64 > self.bs() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: cached block is longer than a block", path.display()),
                ));
            }
            let used = UNIX_EPOCH
                + Duration::new(stat.st_mtime.max(0) as u64, stat.st_mtime_nsec.clamp(0, 999_999_999) as u32);
            kept.push((used, block));
        }
        kept.sort();
        Ok(kept.into_iter().map(|(_, block)| block).collect())
    }

    /// The overlay records that still describe a partial block: journaled
    /// and cached. A record without a journal entry is from a first write
    /// that never completed: removed (with its file). A journaled record
    /// whose file is gone is an unsynced first write whose data did not
    /// survive: record and journal entry are dropped, the block is the
    /// backend's (see `overlay.rs` for why no other state can occur).
    fn keep_overlays(
        &self,
        records: HashMap<u64, Ranges>,
        journal: &mut HashSet<u64>,
        cached: &mut Vec<u64>,
    ) -> io::Result<HashMap<u64, Ranges>> {
        let mut kept = HashMap::new();
        let mut removed = false;
        for (block, ranges) in records {
            let name = self.name(block);
            let is_cached = cached.contains(&block);
            if journal.contains(&block) && is_cached {
                kept.insert(block, ranges);
                continue;
            }
            if journal.remove(&block) {
                log::warn!(
                    "{}: the unsynced first write into block {} was lost in a crash; the backend's copy stands",
                    self.config.dir.display(),
                    block + 1
                );
                self.journal_dir.remove(&name)?;
            }
            if is_cached {
                self.blocks_dir.remove(&name)?;
                cached.retain(|b| *b != block);
            }
            self.overlay_dir.remove(&name)?;
            removed = true;
        }
        if removed {
            self.blocks_dir.sync()?;
            self.journal_dir.sync()?;
            self.overlay_dir.sync()?;
        }
        Ok(kept)
    }

    /// Entries for the cached blocks (clean ones in the LRU) and the
    /// journal's (dirty, queued for upload); evicts clean blocks beyond the
    /// size, which may be smaller than last time.
    fn rebuild_state(&self, cached: &[u64], journal: &HashSet<u64>, mut overlays: HashMap<u64, Ranges>) {
        let mut s = self.state();
        for &block in cached {
            s.seq += 1;
            let mut e = BlockEntry::new(s.seq);
            e.cached = true;
            s.entries.insert(block, e);
            s.cached_blocks += 1;
            if !journal.contains(&block) {
                s.lru_insert(block);
            }
        }
        let mut dirty: Vec<u64> = journal.iter().copied().collect();
        dirty.sort();
        for block in dirty {
            s.seq += 1;
            let seq = s.seq;
            let e = s.entries.entry(block).or_insert_with(|| BlockEntry::new(seq));
            e.journaled = true;
            e.dirty = true;
            e.queued = true;
            e.generation = seq;
            e.synced_gen = 0;
            e.overlay = overlays.remove(&block);
            s.dirty_blocks += 1;
            s.queue.push_back(block);
        }
        while s.cached_blocks > self.max_blocks {
            let Some((tick, block)) = s.lru.iter().next().map(|(t, b)| (*t, *b)) else { break };
            s.lru.remove(&tick);
            s.entries.remove(&block);
            s.cached_blocks -= 1;
            let _ = self.blocks_dir.remove(&self.name(block));
        }
        if !journal.is_empty() {
            log::info!(
                "{}: {} blocks from the journal will be uploaded to {}",
                self.config.dir.display(),
                journal.len(),
                self.backend.describe()
            );
        }
    }

    /// Makes this cache the one that last served the store: a new epoch in
    /// the backend, then in `cache.json`.
    fn claim_store(&self, meta: &Meta) -> io::Result<()> {
        let epoch = uuid::Uuid::new_v4().to_string();
        self.request(|| self.backend.put(EPOCH_KEY, epoch.as_bytes()))?;
        let info =
            CacheInfo { format: "onefs-cache".into(), backend: self.backend.describe(), epoch, meta: meta.clone() };
        let info_text = serde_json::to_string_pretty(&info).unwrap_or_default() + "\n";
        write_atomic(&self.root, CACHE_INFO, info_text.as_bytes(), true)
    }
}
