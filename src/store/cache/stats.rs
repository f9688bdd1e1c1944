//! Statistics: counters kept while serving, and `status.json`, rewritten
//! every second for `onefs status`.

use super::{CacheCore, STATUS_FILE, write_atomic};
use crate::confined::ConfinedDir;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

#[derive(Default)]
pub(super) struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub uploads: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub deletes: AtomicU64,
    pub evictions: AtomicU64,
    pub errors: AtomicU64,
}

impl CacheCore {
    pub(super) fn stats(&self) -> CacheStats {
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

    pub(super) fn stats_writer(self: &Arc<Self>) {
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
