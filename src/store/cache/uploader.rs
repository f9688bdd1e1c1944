//! Upload workers: each takes a dirty block once it is due, uploads a
//! snapshot of it (or deletes its object) and settles its entry;
//! `wait_uploaded` waits for them.
//!
//! Retries: a worker makes one attempt per block it takes (the backend
//! makes one request); a block that failed goes back to the front of the
//! queue and the worker holds off. After a transient failure it holds off
//! as the cache's other requests do (0.1 s doubling to 10 s, with jitter);
//! after a permanent one (`backend::retry::is_permanent`) for
//! [`PERMANENT_PAUSE`], logging the cause once, and syncs waiting for
//! uploads fail at once with it. Dirty data is never dropped: a block stays
//! in the cache and the journal until it is uploaded, and a sync starting
//! ends the pauses (it wants an attempt now).

use super::state::CacheState;
use super::{COPY_CHUNK, CacheCore, crc, eio};
use crate::backend::retry::{Retry, is_permanent};
use crate::confined::Access;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a worker holds off after a failure no retry can fix: a fixed
/// bucket policy or token is picked up without a remount, and the backend
/// is not hammered meanwhile.
const PERMANENT_PAUSE: Duration = Duration::from_secs(60);

/// A block a worker took from the queue: upload it (cached) or delete its
/// object (not cached), as of `generation`.
struct Job {
    block: u64,
    generation: u64,
    cached: bool,
    /// When the attempt began: a refusal counts against the syncs that
    /// began before it, not against one that began while it was in flight.
    started: Instant,
}

impl CacheCore {
    /// Copies a block to a snapshot file with its trailer and uploads it.
    fn upload(&self, block: u64) -> io::Result<u64> {
        // A partial block waits for its base (fetched and merged first).
        self.ensure_base(block)?;
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
        let mut failures = 0u32;
        let mut warned_at: Option<Instant> = None;
        while let Some(job) = self.next_job() {
            let result =
                if job.cached { self.upload(job.block) } else { self.backend.delete(&self.key(job.block)).map(|()| 0) };
            let pause = match &result {
                Ok(_) => None,
                Err(err) if is_permanent(err) => Some(PERMANENT_PAUSE),
                Err(_) => {
                    failures += 1;
                    Some(Retry::within(self.config.retry_timeout).delay(failures))
                }
            };
            if result.is_ok() {
                failures = 0;
            }
            if self.settle(&job, result, &mut warned_at) {
                self.make_evictable(&job);
            }
            if let Some(pause) = pause {
                self.pause(pause);
            }
        }
    }

    /// The next block due for upload, waiting for one; `None` once stopping.
    fn next_job(&self) -> Option<Job> {
        let mut s = self.state();
        loop {
            if s.stop {
                return None;
            }
            let urgent = s.flushers > 0 || s.cached_blocks > self.max_blocks;
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
            return Some(Job { block, generation: e.generation, cached: e.cached, started: Instant::now() });
        }
    }

    /// Records how a job went: a block sent as of its generation is clean,
    /// one modified meanwhile is queued again, one that failed goes back to
    /// the front of the queue. True if the block is now clean and cached.
    fn settle(&self, job: &Job, result: io::Result<u64>, warned_at: &mut Option<Instant>) -> bool {
        let block = job.block;
        let mut s = self.state();
        s.uploads_in_flight -= 1;
        let Some(e) = s.entries.get_mut(&block) else { return false };
        e.uploading = false;
        if job.cached {
            e.pins = e.pins.saturating_sub(1);
        }
        let mut clean = false;
        match result {
            Ok(bytes) => {
                if job.cached {
                    self.counters.uploads.fetch_add(1, Ordering::Relaxed);
                    self.counters.uploaded_bytes.fetch_add(bytes, Ordering::Relaxed);
                } else {
                    self.counters.deletes.fetch_add(1, Ordering::Relaxed);
                }
                if e.generation == job.generation && e.cached == job.cached {
                    e.dirty = false;
                    e.synced_gen = job.generation;
                    if e.journaled {
                        if let Err(err) = self.journal_dir.remove(&self.geometry.block_name(block)) {
                            log::warn!("{err}");
                        }
                        e.journaled = false;
                    }
                    clean = job.cached;
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
                s.permanent_failure = None;
            }
            Err(err) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                e.queued = true;
                s.queue.push_front(block);
                s.failing_since.get_or_insert_with(Instant::now);
                report_failure(&mut s, &err, job.started, warned_at);
            }
        }
        self.changed.notify_all();
        clean
    }

    /// Puts a block that became clean into the LRU, once the removal of its
    /// journal entry is durable: a journal entry that came back after a
    /// crash, with its file evicted, would mean "delete".
    fn make_evictable(&self, job: &Job) {
        let synced = self.journal_dir.sync();
        let mut s = self.state();
        if let Some(e) = s.entries.get(&job.block)
            && synced.is_ok()
            && e.cached
            && !e.dirty
            && e.generation == job.generation
            && e.lru_tick.is_none()
        {
            s.lru_insert(job.block);
            self.shrink_to_size(&mut s);
        }
    }

    /// Holds this worker off for `pause` after a failure; stopping ends the
    /// pause, and so does a sync starting.
    fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut s = self.state();
        let syncs = s.syncs_started;
        while !s.stop && s.syncs_started == syncs {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = self.wait(s, left);
        }
    }

    /// Waits until every block dirty now is in the backend; fails once the
    /// backend has been failing for `retry_timeout`, or at once when it
    /// refuses an upload for good.
    pub(super) fn wait_uploaded(&self) -> io::Result<()> {
        let mut s = self.state();
        let mut targets: Vec<(u64, u64)> =
            s.entries.iter().filter(|(_, e)| e.dirty).map(|(b, e)| (*b, e.generation)).collect();
        if targets.is_empty() {
            return Ok(());
        }
        s.flushers += 1;
        s.syncs_started += 1;
        self.changed.notify_all();
        let started = Instant::now();
        let result = loop {
            targets.retain(|(b, g)| s.entries.get(b).is_some_and(|e| e.dirty && e.synced_gen < *g));
            if targets.is_empty() {
                break Ok(());
            }
            // A refusal from before this sync began may be stale: the
            // workers, woken above, try again first.
            if let Some((at, why)) = &s.permanent_failure
                && *at >= started
            {
                break Err(eio(format!(
                    "{why}; {} blocks not uploaded yet (kept in the cache {})",
                    targets.len(),
                    self.config.dir.display()
                )));
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

/// Logs an upload failure: a permanent one once per cause, a transient one
/// at most every 30 s per worker.
fn report_failure(s: &mut CacheState, err: &io::Error, attempt_started: Instant, warned_at: &mut Option<Instant>) {
    if is_permanent(err) {
        let why = err.to_string();
        if s.permanent_failure.as_ref().is_none_or(|(_, seen)| *seen != why) {
            log::error!(
                "{why}; {} dirty blocks kept in the cache, tried again in {} s or at the next sync",
                s.dirty_blocks,
                PERMANENT_PAUSE.as_secs()
            );
        }
        s.permanent_failure = Some((attempt_started, why));
    } else if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
        log::warn!("{err}; {} dirty blocks kept in the cache, retrying", s.dirty_blocks);
        *warned_at = Some(Instant::now());
    }
}
