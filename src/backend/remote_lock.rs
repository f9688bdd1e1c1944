//! The remote mount lock: a store on a remote backend is mounted by one host
//! at a time.
//!
//! The lock is the object `onefs.lock` beside the blocks, JSON:
//! `{"holder": HOST, "pid": PID, "mountpoint": PATH, "since": UNIX_SECONDS,
//! "heartbeat": UNIX_SECONDS, "token": RANDOM}`. The holder rewrites
//! `heartbeat` every [`LockTiming::heartbeat`] (15 s) from a thread and
//! deletes the object on release. `acquire` refuses while a lock's heartbeat
//! is younger than [`LockTiming::stale`] (60 s), and takes over an older one
//! (a crashed host), saying so.
//!
//! No conditional PUT is used (Garage ignores `If-None-Match`), so after
//! writing its lock a host waits [`LockTiming::settle`] (at least twice its
//! own read-then-write time), reads the lock back and goes on only if it
//! still holds its own token; a host that finds another's token backs off.
//! The settle is what the lock's safety costs a mount: two hosts may both
//! read "no lock" and both write theirs; the last write wins, and each must
//! wait long enough for the other's write to land before reading back (on
//! an eventually-consistent store, also for it to show). That is 1 s at
//! least, 2.5 s on a drive limited to 4 requests a second (read 0.25 s +
//! rclone's write 1 s, doubled). [`RemoteLock::begin`] writes the lock and
//! [`PendingLock::confirm`] waits out what is left of the settle and reads
//! back, so read-only startup work (the image description, the cache's
//! epoch) overlaps the settle; nothing is written to the store before the
//! lock is confirmed.
//! Residual race, documented: two hosts whose read-then-write takes longer
//! than the settle time, or a store that is not read-after-write
//! consistent, could both believe they won. Heartbeats re-check the token,
//! so such a double mount is noticed ([`RemoteLock::lost`]) within one
//! heartbeat. Hosts' clocks must agree to well within the stale time.
//!
//! **Breaking a stale lock.** If the holder is known to be gone (its host
//! died and will not come back within a minute, or a lock is unreadable),
//! [`RemoteLock::break_lock`] deletes the lock object and returns what it
//! held; the CLI exposes it as `onefs break-lock`. Breaking the lock of a
//! host that is still mounted makes its next heartbeat notice, but writes it
//! has in flight can still land: only break a lock whose holder is gone.

use super::ObjectBackend;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The lock object's key.
pub const LOCK_KEY: &str = "onefs.lock";

/// What a lock object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub holder: String,
    pub pid: u32,
    pub mountpoint: String,
    /// Unix seconds when the lock was taken.
    pub since: u64,
    /// Unix seconds of the last heartbeat.
    pub heartbeat: u64,
    /// Random per acquisition: tells our lock from another's.
    pub token: String,
}

impl LockInfo {
    /// `HOST pid PID at MOUNTPOINT since TIME, last heartbeat N s ago`.
    pub fn describe(&self, now: u64) -> String {
        format!(
            "{} pid {} at {} since {}, last heartbeat {} s ago",
            self.holder,
            self.pid,
            self.mountpoint,
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(self.since)),
            now.saturating_sub(self.heartbeat)
        )
    }
}

/// Timing of the lock protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTiming {
    /// A lock whose heartbeat is older than this is taken over.
    pub stale: Duration,
    /// How often the holder refreshes its heartbeat.
    pub heartbeat: Duration,
    /// Least wait between writing the lock and reading it back.
    pub settle: Duration,
}

impl Default for LockTiming {
    fn default() -> Self {
        LockTiming {
            stale: Duration::from_secs(60),
            heartbeat: Duration::from_secs(15),
            settle: Duration::from_secs(1),
        }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Reads the lock object: `None` if there is none.
pub fn read_lock(backend: &dyn ObjectBackend) -> io::Result<Option<LockInfo>> {
    match backend.get(LOCK_KEY)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {LOCK_KEY} is unreadable ({e}); if no host holds the store, break the lock (onefs break-lock)",
                    backend.describe()
                ),
            )
        }),
    }
}

struct Heart {
    stop: Mutex<bool>,
    wake: Condvar,
    lost: AtomicBool,
}

fn refuse(store: &str, timing: &LockTiming, other: &LockInfo) -> anyhow::Error {
    let left = timing.stale.as_secs().saturating_sub(now().saturating_sub(other.heartbeat));
    anyhow::anyhow!(
        "{store} is mounted by {}; if that host is gone, the lock goes stale in {left} s, or break it with `onefs break-lock`",
        other.describe(now())
    )
}

/// A lock written but not yet read back ([`RemoteLock::begin`]): the store
/// is not ours until [`confirm`](Self::confirm) says so. Dropped
/// unconfirmed, it deletes its lock object if that is still ours.
pub struct PendingLock {
    backend: Arc<dyn ObjectBackend>,
    info: LockInfo,
    timing: LockTiming,
    settled_at: Instant,
    confirmed: bool,
}

impl PendingLock {
    /// Waits out what is left of the settle time, reads the lock back and
    /// goes on only if it still holds our token; starts the heartbeat.
    pub fn confirm(mut self) -> anyhow::Result<RemoteLock> {
        let store = self.backend.describe();
        let left = self.settled_at.saturating_duration_since(Instant::now());
        log::debug!("{store}: {LOCK_KEY}: {} ms of the settle time left", left.as_millis());
        std::thread::sleep(left);
        match read_lock(&*self.backend).map_err(|e| anyhow::anyhow!("{store}: reading {LOCK_KEY} back: {e}"))? {
            Some(now_there) if now_there.token == self.info.token => {}
            Some(other) => {
                // Another host's lock replaced ours: nothing of ours to delete.
                self.confirmed = true;
                return Err(refuse(&store, &self.timing, &other));
            }
            None => {
                self.confirmed = true;
                anyhow::bail!(
                    "{store}: {LOCK_KEY} vanished right after it was written: another host is breaking or taking the lock"
                )
            }
        }
        let heart = Arc::new(Heart { stop: Mutex::new(false), wake: Condvar::new(), lost: AtomicBool::new(false) });
        let thread = {
            let (backend, heart, info) = (self.backend.clone(), heart.clone(), self.info.clone());
            let every = self.timing.heartbeat;
            std::thread::Builder::new()
                .name("onefs-lock".into())
                .spawn(move || beat(&*backend, &heart, info, every))
                .map_err(|e| anyhow::anyhow!("{store}: lock heartbeat thread: {e}"))?
        };
        self.confirmed = true;
        log::info!("{store}: locked for {} at {}", self.info.holder, self.info.mountpoint);
        Ok(RemoteLock { backend: self.backend.clone(), info: self.info.clone(), heart, thread: Some(thread) })
    }
}

impl Drop for PendingLock {
    fn drop(&mut self) {
        if self.confirmed {
            return;
        }
        let result = match read_lock(&*self.backend) {
            Ok(Some(there)) if there.token == self.info.token => self.backend.delete(LOCK_KEY),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            log::warn!("{}: removing the unconfirmed {LOCK_KEY}: {e}", self.backend.describe());
        }
    }
}

/// A held remote lock; released (deleted) by [`release`](Self::release) or on drop.
pub struct RemoteLock {
    backend: Arc<dyn ObjectBackend>,
    info: LockInfo,
    heart: Arc<Heart>,
    thread: Option<JoinHandle<()>>,
}

impl RemoteLock {
    /// Takes the lock for `mountpoint` with the default timing.
    pub fn acquire(backend: Arc<dyn ObjectBackend>, mountpoint: &Path) -> anyhow::Result<Self> {
        Self::acquire_with(backend, mountpoint, LockTiming::default())
    }

    /// Takes the lock, refusing (one line naming the holder) while another
    /// host's heartbeat is fresh: [`begin`](Self::begin) then
    /// [`PendingLock::confirm`].
    pub fn acquire_with(
        backend: Arc<dyn ObjectBackend>,
        mountpoint: &Path,
        timing: LockTiming,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let held =
            read_lock(&*backend).map_err(|e| anyhow::anyhow!("{}: reading {LOCK_KEY}: {e}", backend.describe()))?;
        Self::begin(backend, mountpoint, timing, held, started)?.confirm()
    }

    /// The first half of taking the lock: `held` is what the lock object
    /// held when read at `read_started` (refused while another host's
    /// heartbeat is fresh); writes ours. The settle time runs from here:
    /// read-only startup work (the image description, say) can overlap it,
    /// but nothing may write to the store before [`PendingLock::confirm`].
    pub fn begin(
        backend: Arc<dyn ObjectBackend>,
        mountpoint: &Path,
        timing: LockTiming,
        held: Option<LockInfo>,
        read_started: Instant,
    ) -> anyhow::Result<PendingLock> {
        let store = backend.describe();
        if let Some(other) = held {
            if now().saturating_sub(other.heartbeat) < timing.stale.as_secs().max(1) {
                return Err(refuse(&store, &timing, &other));
            }
            log::warn!("{store}: taking over the stale lock of {}", other.describe(now()));
        }
        let t = now();
        let info = LockInfo {
            holder: hostname(),
            pid: std::process::id(),
            mountpoint: mountpoint.display().to_string(),
            since: t,
            heartbeat: t,
            token: uuid::Uuid::new_v4().to_string(),
        };
        let bytes = serde_json::to_vec(&info).map_err(|e| anyhow::anyhow!("{store}: {e}"))?;
        backend.put(LOCK_KEY, &bytes).map_err(|e| anyhow::anyhow!("{store}: writing {LOCK_KEY}: {e}"))?;
        // Anyone who read "no lock" just before our write has written theirs
        // within their own read-then-write time: twice ours, at least
        // `timing.settle`, from now.
        let settle = timing.settle.max(read_started.elapsed() * 2);
        log::debug!("{store}: {LOCK_KEY} written; reading it back after {} ms", settle.as_millis());
        Ok(PendingLock { backend, info, timing, settled_at: Instant::now() + settle, confirmed: false })
    }

    /// What this lock holds.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// True once a heartbeat found the lock broken or taken by another host:
    /// this mount no longer owns the store and should stop writing.
    pub fn lost(&self) -> bool {
        self.heart.lost.load(Ordering::SeqCst)
    }

    /// Stops the heartbeat and deletes the lock (if it is still ours).
    pub fn release(mut self) -> io::Result<()> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else { return Ok(()) };
        *crate::sync::lock(&self.heart.stop) = true;
        self.heart.wake.notify_all();
        let _ = thread.join();
        match read_lock(&*self.backend) {
            Ok(Some(info)) if info.token == self.info.token => self.backend.delete(LOCK_KEY),
            Ok(_) => {
                log::warn!("{}: the lock was no longer ours at release; leaving it", self.backend.describe());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes the lock whoever holds it, returning what it held (`None`
    /// if there was none; an unreadable lock is deleted too). For a lock
    /// whose holder is known to be gone: see the module docs.
    pub fn break_lock(backend: &dyn ObjectBackend) -> io::Result<Option<LockInfo>> {
        let held = match read_lock(backend) {
            Ok(held) => held,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => None,
            Err(e) => return Err(e),
        };
        backend.delete(LOCK_KEY)?;
        if let Some(info) = &held {
            log::warn!("{}: broke the lock of {}", backend.describe(), info.describe(now()));
        }
        Ok(held)
    }
}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        if let Err(e) = self.release_inner() {
            log::warn!("{}: releasing {LOCK_KEY}: {e}", self.backend.describe());
        }
    }
}

/// The heartbeat: every `every`, check the lock is still ours and refresh it.
fn beat(backend: &dyn ObjectBackend, heart: &Heart, mut info: LockInfo, every: Duration) {
    let store = backend.describe();
    loop {
        {
            let stop = crate::sync::lock(&heart.stop);
            let (stop, _) = heart.wake.wait_timeout_while(stop, every, |s| !*s).unwrap_or_else(|p| p.into_inner());
            if *stop {
                return;
            }
        }
        match read_lock(backend) {
            Ok(Some(there)) if there.token == info.token => {}
            Ok(other) => {
                let who = other.map(|o| o.describe(now())).unwrap_or_else(|| "nobody (it was broken)".into());
                log::error!("{store}: lost the mount lock: it is now held by {who}; this mount must stop writing");
                heart.lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                log::warn!("{store}: lock heartbeat: {e}");
                continue;
            }
        }
        info.heartbeat = now();
        match serde_json::to_vec(&info) {
            Ok(bytes) => {
                if let Err(e) = backend.put(LOCK_KEY, &bytes) {
                    log::warn!("{store}: lock heartbeat: {e}");
                }
            }
            Err(e) => log::warn!("{store}: lock heartbeat: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;

    fn quick() -> LockTiming {
        LockTiming {
            stale: Duration::from_secs(2),
            heartbeat: Duration::from_millis(100),
            settle: Duration::from_millis(10),
        }
    }

    #[test]
    fn a_second_mount_is_refused_naming_the_holder_and_release_frees_it() {
        let b: Arc<dyn ObjectBackend> = Arc::new(MemBackend::new());
        let lock = RemoteLock::acquire_with(b.clone(), Path::new("/srv/a"), quick()).unwrap();
        let held = read_lock(&*b).unwrap().unwrap();
        assert_eq!(
            (held.pid, held.mountpoint.as_str(), held.token.as_str()),
            (std::process::id(), "/srv/a", lock.info().token.as_str())
        );
        let err = RemoteLock::acquire_with(b.clone(), Path::new("/srv/b"), quick()).err().unwrap().to_string();
        assert!(
            err.contains("memory is mounted by") && err.contains("at /srv/a") && err.contains("onefs break-lock"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        lock.release().unwrap();
        assert_eq!(read_lock(&*b).unwrap(), None, "release deletes the lock");
        drop(RemoteLock::acquire_with(b.clone(), Path::new("/srv/b"), quick()).unwrap());
        assert_eq!(read_lock(&*b).unwrap(), None, "drop releases too");
    }

    #[test]
    fn heartbeats_keep_a_lock_fresh_and_a_stale_one_is_taken_over() {
        let b: Arc<dyn ObjectBackend> = Arc::new(MemBackend::new());
        let lock = RemoteLock::acquire_with(b.clone(), Path::new("/srv/a"), quick()).unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        assert!(RemoteLock::acquire_with(b.clone(), Path::new("/srv/b"), quick()).is_err(), "heartbeats keep it fresh");
        assert!(!lock.lost());

        lock.release().unwrap();

        // A crashed holder: its heartbeat stopped 5 s ago, the lock is stale.
        let crashed = LockInfo {
            holder: "gone".into(),
            pid: 1,
            mountpoint: "/srv/a".into(),
            since: now() - 50,
            heartbeat: now() - 5,
            token: "crashed".into(),
        };
        b.put(LOCK_KEY, &serde_json::to_vec(&crashed).unwrap()).unwrap();
        let taken = RemoteLock::acquire_with(b.clone(), Path::new("/srv/b"), quick()).unwrap();
        assert_eq!(read_lock(&*b).unwrap().unwrap().mountpoint, "/srv/b");
        drop(taken);
    }

    #[test]
    fn break_lock_deletes_any_lock_and_the_holder_notices() {
        let b: Arc<dyn ObjectBackend> = Arc::new(MemBackend::new());
        assert_eq!(RemoteLock::break_lock(&*b).unwrap(), None);
        let lock = RemoteLock::acquire_with(b.clone(), Path::new("/srv/a"), quick()).unwrap();
        let broken = RemoteLock::break_lock(&*b).unwrap().unwrap();
        assert_eq!(broken.mountpoint, "/srv/a");
        let again = RemoteLock::acquire_with(b.clone(), Path::new("/srv/b"), quick()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lock.lost() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(lock.lost(), "the old holder's heartbeat notices");
        drop(lock); // must not delete the new holder's lock
        assert_eq!(read_lock(&*b).unwrap().unwrap().mountpoint, "/srv/b");
        drop(again);

        b.put(LOCK_KEY, b"{garbage").unwrap();
        let err = RemoteLock::acquire_with(b.clone(), Path::new("/srv/c"), quick()).err().unwrap().to_string();
        assert!(err.contains("unreadable") && err.contains("break-lock"), "{err}");
        assert_eq!(RemoteLock::break_lock(&*b).unwrap(), None);
        assert_eq!(b.get(LOCK_KEY).unwrap(), None);
    }

    #[test]
    fn a_pending_lock_settles_while_other_work_runs_and_is_removed_if_dropped() {
        let b: Arc<dyn ObjectBackend> = Arc::new(MemBackend::new());
        let timing = LockTiming { settle: Duration::from_millis(300), ..quick() };
        let started = Instant::now();
        let pending = RemoteLock::begin(b.clone(), Path::new("/srv/a"), timing, None, started).unwrap();
        // Work overlapping the settle does not lengthen it.
        std::thread::sleep(Duration::from_millis(200));
        let lock = pending.confirm().unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(450), "{took:?}");
        drop(lock);

        let pending = RemoteLock::begin(b.clone(), Path::new("/srv/a"), timing, None, Instant::now()).unwrap();
        assert!(read_lock(&*b).unwrap().is_some());
        drop(pending);
        assert_eq!(read_lock(&*b).unwrap(), None, "an unconfirmed lock is removed");

        // Another host writes its lock during our settle: it wins, we back off
        // and leave its lock alone.
        let pending = RemoteLock::begin(b.clone(), Path::new("/srv/a"), timing, None, Instant::now()).unwrap();
        let theirs = RemoteLock::begin(b.clone(), Path::new("/srv/b"), timing, None, Instant::now()).unwrap();
        let err = pending.confirm().err().unwrap().to_string();
        assert!(err.contains("is mounted by") && err.contains("at /srv/b"), "{err}");
        let theirs = theirs.confirm().unwrap();
        assert_eq!(read_lock(&*b).unwrap().unwrap().mountpoint, "/srv/b");
        drop(theirs);
    }

    #[test]
    fn racing_acquirers_end_with_one_winner() {
        let b: Arc<dyn ObjectBackend> = Arc::new(MemBackend::new());
        let timing = LockTiming { settle: Duration::from_millis(300), ..quick() };
        let winners: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let b = b.clone();
                    s.spawn(move || RemoteLock::acquire_with(b, Path::new(&format!("/srv/{i}")), timing).ok())
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(winners.len(), 1, "exactly one of eight racing mounts wins");
    }
}
