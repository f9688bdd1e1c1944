//! Recovery at open: what `CacheStore::open` does with the cache directory
//! it finds (the journal, cached blocks, `cache.json`, the backend's epoch)
//! before serving.

use super::state::{BlockEntry, CacheState};
use super::stats::Counters;
use super::{CACHE_INFO, CLEAN_SHUTDOWN, CacheConfig, CacheCore, CacheStore, EPOCH_KEY, FETCH_STRIPES, write_atomic};
use crate::backend::ObjectBackend;
use crate::errors::context;
use crate::meta::Meta;
use crate::store::confined::{ConfinedDir, Kind};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};
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
}
