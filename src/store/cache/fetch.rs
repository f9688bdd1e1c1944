//! Filling the cache: a block that is not cached is fetched from the
//! backend, checked against its CRC-32C trailer and installed in `blocks/`.

use super::state::{BlockAt, BlockEntry, PinnedBlock};
use super::{CacheCore, crc, eio};
use crate::confined::Access;
use crate::core::is_zero;
use crate::errors::context;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl CacheCore {
    /// The verified bytes of a block from the backend.
    pub(super) fn fetch(&self, block: u64) -> io::Result<Vec<u8>> {
        let key = self.key(block);
        let mut corrupt = 0;
        loop {
            let object = self.request(|| self.backend.get(&key))?;
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

    /// A cached, pinned block for reading, fetching it if needed; a cache
    /// full of dirty blocks answers from memory instead (writes never come
    /// here: see `overlay.rs`).
    pub(super) fn get_block(&self, block: u64) -> io::Result<BlockAt<'_>> {
        // One fetch of a block at a time; nothing else waits for it (no
        // lock shared with other blocks is held while the backend answers).
        let mut s = self.state();
        loop {
            if let Some(pin) = self.pin_in(&mut s, block) {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(BlockAt::Cached(pin));
            }
            if s.fetching.insert(block) {
                break;
            }
            s = self.wait(s, Duration::from_millis(100));
        }
        drop(s);
        let _claim = FetchClaim { core: self, block };
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let data = self.fetch(block)?;
        let (s, room) = self.reserve(self.state(), false);
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
        // Before the claim goes (it locks the state).
        drop(s);
        Ok(BlockAt::Cached(PinnedBlock { core: self, block }))
    }
}

/// A reader's fetch of a block in progress (`CacheState::fetching`);
/// dropped once the block is installed, or the fetch failed.
struct FetchClaim<'a> {
    core: &'a CacheCore,
    block: u64,
}

impl Drop for FetchClaim<'_> {
    fn drop(&mut self) {
        self.core.state().fetching.remove(&self.block);
        self.core.changed.notify_all();
    }
}
