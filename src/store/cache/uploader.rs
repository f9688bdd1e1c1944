//! Upload workers: each takes a dirty block once it is due, uploads a
//! snapshot of it (or deletes its object) and settles its entry;
//! `wait_uploaded` waits for them.

use super::{COPY_CHUNK, CacheCore, MAX_BACKOFF, crc, eio};
use crate::store::confined::Access;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl CacheCore {
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

    pub(super) fn worker(self: &Arc<Self>) {
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
    pub(super) fn wait_uploaded(&self) -> io::Result<()> {
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
}
