//! Writes that never wait for the remote: the overlay.
//!
//! A write (or zeroing) into a block that is stored remotely but not cached
//! does not fetch it first. A write covering the whole block simply creates
//! the cached file. A partial one creates the cached file holding only the
//! new bytes at their offsets (the rest is a hole) and records which byte
//! ranges are new in `overlay/blk-N`: the block is *partial*. Later writes
//! into a partial block add their ranges. Its base (the object in the
//! backend) is merged in under the new ranges, which win, when
//!
//! - a read needs a byte outside the ranges (reads inside are served from
//!   the file at once),
//! - an upload worker takes the block (the upload waits for its base:
//!   fetch, merge, then upload; an outage fails the upload, never a write),
//! - or the ranges come to cover the whole block (no fetch then).
//!
//! Merging writes the base's bytes into the gaps, fsyncs the file and only
//! then removes the record, so a crash in between leaves either the record
//! (merged again, the same result) or a complete file.
//!
//! Crash safety: the record of a block that becomes partial is durable
//! (file and directory fsynced) before the cached file and the journal
//! entry are created, so a journal entry of a partial block always comes
//! with its record. Records are replaced atomically (written to a
//! temporary name, fsynced, renamed), so a crash leaves the old or the new
//! set of ranges, never a torn one. `local_sync` fsyncs the block files and,
//! when names changed, the `overlay/` directory: a sync covers the overlay
//! data and its ranges. At the next start (`recovery.rs`) a record whose
//! block is journaled and cached makes the block partial again; a record
//! without a journal entry is a write that never completed and is removed;
//! a journaled record without its cached file is an unsynced first write
//! into the block whose data did not survive: record and journal entry are
//! dropped and the block is the backend's again.
//!
//! The record is text: `onefs-overlay 1` then one `start end` line per
//! range (sorted, disjoint, within the block). It is read as untrusted:
//! anything else is refused.

use super::state::{BlockEntry, PinnedBlock};
use super::{CacheCore, FETCH_STRIPES};
use crate::confined::Access;
use crate::core::is_zero;
use crate::errors::context;
use crate::store::Zeroed;
use crate::sync::lock;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

/// Sorted, disjoint, non-adjacent half-open byte ranges `[start, end)`.
pub(super) type Ranges = Vec<(u64, u64)>;

const HEADER: &str = "onefs-overlay 1";
/// The largest record read back (a block written in many small pieces).
pub(super) const RECORD_CAP: u64 = 64 << 20;

/// Adds `[start, end)` to `ranges`, merging what touches it.
pub(super) fn add(ranges: &mut Ranges, start: u64, end: u64) {
    let (mut start, mut end) = (start, end);
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(s, e) in ranges.iter() {
        if e < start || s > end {
            out.push((s, e));
        } else {
            start = start.min(s);
            end = end.max(e);
        }
    }
    out.push((start, end));
    out.sort_unstable();
    *ranges = out;
}

/// True if `ranges` hold every byte of `[start, end)`.
pub(super) fn covers(ranges: &Ranges, start: u64, end: u64) -> bool {
    start >= end || ranges.iter().any(|&(s, e)| s <= start && end <= e)
}

/// The gaps between the ranges within `[0, len)`.
fn gaps(ranges: &Ranges, len: u64) -> Vec<(u64, u64)> {
    let mut out = vec![];
    let mut at = 0;
    for &(s, e) in ranges {
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < len {
        out.push((at, len));
    }
    out
}

pub(super) fn encode(ranges: &Ranges) -> Vec<u8> {
    let mut text = format!("{HEADER}\n");
    for (s, e) in ranges {
        text.push_str(&format!("{s} {e}\n"));
    }
    text.into_bytes()
}

/// Parses a record; `None` unless it is well formed for blocks of `bs`
/// bytes (read from the cache directory: untrusted).
pub(super) fn decode(data: &[u8], bs: u64) -> Option<Ranges> {
    let text = std::str::from_utf8(data).ok()?;
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut ranges: Ranges = vec![];
    for line in lines {
        let (s, e) = line.split_once(' ')?;
        let (s, e): (u64, u64) = (s.parse().ok()?, e.parse().ok()?);
        let after_last = ranges.last().is_none_or(|&(_, last)| last < s);
        if s >= e || e > bs || !after_last {
            return None;
        }
        ranges.push((s, e));
    }
    Some(ranges)
}

impl CacheCore {
    fn stripe(&self, block: u64) -> &std::sync::Mutex<()> {
        &self.fetch_locks[block as usize % FETCH_STRIPES]
    }

    /// The block's new ranges if it is partial.
    pub(super) fn overlay_of(&self, block: u64) -> Option<Ranges> {
        self.state().entries.get(&block).and_then(|e| e.overlay.clone())
    }

    /// Replaces `overlay/blk-N` atomically with its content fsynced; with
    /// `new`, the directory too (the record must be durable before the
    /// block's file and journal entry exist). Callers hold the stripe lock.
    fn write_record(&self, block: u64, ranges: &Ranges, new: bool) -> io::Result<()> {
        let dir = &self.overlay_dir;
        let name = self.name(block);
        let tmp = format!(".{name}.tmp");
        let result = dir.open_file(&tmp, Access::Create(0o600)).and_then(|mut f| {
            f.set_len(0)
                .and_then(|()| f.write_all(&encode(ranges)))
                .and_then(|()| f.sync_data())
                .map_err(|e| context(dir.join(&tmp).display(), e))
        });
        let result = result.and_then(|()| dir.rename(&tmp, &name));
        if result.is_err() {
            let _ = dir.remove(&tmp);
        }
        result?;
        self.flush.names_dirty.store(true, Ordering::Release);
        if new { dir.sync() } else { Ok(()) }
    }

    /// Writes `len` bytes of `data` (zeros when `None`) at `offset` of an
    /// existing block without fetching it: the one write path for
    /// `write_at` of an existing block and `zero_range`.
    pub(super) fn modify(&self, block: u64, offset: u64, len: u64, data: Option<&[u8]>) -> io::Result<Zeroed> {
        // Nothing to write (and no empty range ever goes into a record).
        if len == 0 {
            return Ok(Zeroed::MayHoldData);
        }
        // Fast path: a cached block that is not partial never becomes
        // partial while pinned (only uncached blocks do).
        if let Some(pin) = self.pin_cached(block) {
            if self.overlay_of(block).is_none() {
                return self.apply(pin, offset, len, data, None);
            }
            drop(pin);
        }
        loop {
            // A reader fetching the block would install it over a file made
            // here: wait for it (it ends within `retry_timeout`) without the
            // stripe lock, so the stripe's other blocks never wait for it.
            self.wait_fetched(block);
            // Partial or uncached: serialized with other writes into it and
            // with merges of its base.
            let _stripe = lock(self.stripe(block));
            if let Some(pin) = self.pin_cached(block) {
                let ranges = self.overlay_of(block);
                return self.apply(pin, offset, len, data, ranges);
            }
            if let Some(done) = self.create_overlay(block, offset, len, data) {
                return done;
            }
        }
    }

    fn wait_fetched(&self, block: u64) {
        let mut s = self.state();
        while s.fetching.contains(&block) {
            s = self.wait(s, std::time::Duration::from_millis(100));
        }
    }

    /// Writes into a cached block (partial when `ranges` is given, with the
    /// stripe lock held) and marks it dirty.
    fn apply(
        &self,
        pin: PinnedBlock<'_>,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
        ranges: Option<Ranges>,
    ) -> io::Result<Zeroed> {
        let block = pin.block;
        let path = self.block_path(block);
        let file = self.block_file(block, Access::ReadWrite)?;
        match data {
            Some(data) => file.write_all_at(data, offset).map_err(|e| context(path.display(), e))?,
            None => punch(&file, offset, len).map_err(|e| context(path.display(), e))?,
        }
        let mut whole = true;
        if let Some(mut ranges) = ranges {
            let before = ranges.clone();
            add(&mut ranges, offset, offset + len);
            if ranges != before {
                self.write_record(block, &ranges, false)?;
                if let Some(e) = self.state().entries.get_mut(&block) {
                    e.overlay = Some(ranges.clone());
                }
            }
            whole = covers(&ranges, 0, self.bs());
        }
        let zeroed = if data.is_none() && whole && crate::store::cache::file_is_zero(&file, self.bs())? {
            Zeroed::AllZero
        } else {
            Zeroed::MayHoldData
        };
        self.finish_write(block, pin)?;
        Ok(zeroed)
    }

    /// The first write into a block that is not cached: its file holds just
    /// the new bytes; unless they cover the block, a record says which.
    /// Never waits for the backend nor for room (see `reserve`).
    /// `None` if a reader started fetching the block, or installed it,
    /// since the caller looked: it waits for that and tries again.
    fn create_overlay(&self, block: u64, offset: u64, len: u64, data: Option<&[u8]>) -> Option<io::Result<Zeroed>> {
        let whole = offset == 0 && len == self.bs();
        let pin = {
            let s = self.state();
            if s.fetching.contains(&block) || s.entries.get(&block).is_some_and(|e| e.cached) {
                return None;
            }
            let (mut s, _) = self.reserve(s, true);
            let seq = s.seq;
            let e = s.entries.entry(block).or_insert_with(|| BlockEntry::new(seq));
            e.cached = true;
            e.pins += 1;
            // Partial (with nothing yet) while the file is made: readers
            // and writers of the block wait on the stripe lock held here.
            e.overlay = Some(vec![]);
            s.lru_remove(block);
            PinnedBlock { core: self, block }
        };
        let ranges: Ranges = vec![(offset, offset + len)];
        let path = self.block_path(block);
        let made = if whole { Ok(()) } else { self.write_record(block, &ranges, true) };
        let made = made.and_then(|()| {
            self.block_file(block, Access::Create(0o600)).and_then(|f| {
                f.set_len(0)
                    .and_then(|()| f.set_len(self.bs()))
                    .and_then(|()| data.map_or(Ok(()), |d| f.write_all_at(d, offset)))
                    .map_err(|e| context(path.display(), e))
            })
        });
        if let Err(err) = made {
            let _ = self.blocks_dir.remove(&self.name(block));
            let _ = self.overlay_dir.remove(&self.name(block));
            let mut s = self.state();
            if let Some(e) = s.entries.get_mut(&block) {
                e.cached = false;
                e.overlay = None;
            }
            s.cached_blocks = s.cached_blocks.saturating_sub(1);
            drop(s);
            drop(pin);
            self.state().forget_if_idle(block);
            return Some(Err(err));
        }
        self.flush.names_dirty.store(true, Ordering::Release);
        if let Some(e) = self.state().entries.get_mut(&block) {
            e.overlay = if whole { None } else { Some(ranges) };
        }
        let zeroed = if whole && data.is_none_or(is_zero) { Zeroed::AllZero } else { Zeroed::MayHoldData };
        Some(self.finish_write(block, pin).map(|()| zeroed))
    }

    /// Merges the base from the backend into a partial block (no fetch if
    /// its ranges cover it); nothing to do for any other block. The base is
    /// fetched without the stripe lock: writers of the block (and of the
    /// other blocks of its stripe) never wait for the backend; the merge
    /// itself, under the lock, fills the gaps of the ranges as they are then
    /// (ranges only grow, so the fetched base covers them).
    pub(super) fn ensure_base(&self, block: u64) -> io::Result<()> {
        if self.overlay_of(block).is_some_and(|r| r.is_empty()) {
            // Being made by a first write (which holds the stripe lock):
            // once it is done, the block may need no base at all.
            drop(lock(self.stripe(block)));
        }
        let Some(ranges) = self.overlay_of(block) else { return Ok(()) };
        let Some(pin) = self.pin_cached(block) else { return Ok(()) };
        let base = if covers(&ranges, 0, self.bs()) {
            None
        } else {
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            Some(self.fetch(block)?)
        };
        let _stripe = lock(self.stripe(block));
        // Merged meanwhile by another reader or the uploader.
        let Some(ranges) = self.overlay_of(block) else { return Ok(()) };
        let path = self.block_path(block);
        let holes = gaps(&ranges, self.bs());
        if let Some(base) = base.as_deref().filter(|_| !holes.is_empty()) {
            let file = self.block_file(block, Access::ReadWrite)?;
            for (start, end) in holes {
                // The file is a hole there: only non-zero pieces are written.
                let mut at = start;
                while at < end {
                    let next = (at + (64 << 10)).min(end);
                    let piece = &base[at as usize..next as usize];
                    if !is_zero(piece) {
                        file.write_all_at(piece, at).map_err(|e| context(path.display(), e))?;
                    }
                    at = next;
                }
            }
        }
        // Merged bytes durable before the record goes: a crash leaves a
        // record (merged again) or a complete file, never a file with gaps.
        self.block_file(block, Access::Read).and_then(|f| f.sync_data().map_err(|e| context(path.display(), e)))?;
        self.overlay_dir.remove(&self.name(block))?;
        self.flush.names_dirty.store(true, Ordering::Release);
        if let Some(e) = self.state().entries.get_mut(&block) {
            e.overlay = None;
        }
        drop(pin);
        Ok(())
    }

    /// After a partial block's file was removed (`delete`): its record goes
    /// too, once the file's removal is durable (a record without a file is
    /// dropped at recovery; a file without its record would be taken whole).
    pub(super) fn drop_overlay(&self, block: u64) -> io::Result<()> {
        let was = self.state().entries.get_mut(&block).and_then(|e| e.overlay.take());
        if was.is_none() {
            return Ok(());
        }
        self.blocks_dir.sync()?;
        self.overlay_dir.remove(&self.name(block))?;
        self.flush.names_dirty.store(true, Ordering::Release);
        Ok(())
    }
}

/// Zeroes `[offset, offset + len)` of a cached file (a hole if it can).
fn punch(file: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
    let punched = nix::fcntl::fallocate(
        file,
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as i64,
        len as i64,
    );
    match punched {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP) => file.write_all_at(&vec![0u8; len as usize], offset),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_cover_and_round_trip() {
        let mut r = Ranges::new();
        add(&mut r, 10, 20);
        add(&mut r, 30, 40);
        add(&mut r, 20, 30);
        assert_eq!(r, vec![(10, 40)]);
        add(&mut r, 0, 5);
        assert!(covers(&r, 12, 40) && !covers(&r, 4, 6));
        assert_eq!(gaps(&r, 50), vec![(5, 10), (40, 50)]);
        assert_eq!(decode(&encode(&r), 50), Some(r.clone()));
        assert_eq!(decode(&encode(&r), 39), None);
        assert_eq!(decode(b"onefs-overlay 1\n5 3\n", 50), None);
        assert_eq!(decode(b"onefs-overlay 1\n1 3\n2 4\n", 50), None);
        assert_eq!(decode(b"junk", 50), None);
    }
}
