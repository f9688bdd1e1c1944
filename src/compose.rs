//! The storage stack of a mount, composed in one place.
//!
//! From the kernel down:
//!
//! ```text
//! FUSE ─ Image ─┬─ DirStore(store dir)                          store = "/path"
//!               └─ CacheStore(cache dir) ─ ObjectBackend         [backend] + [cache]
//!                                            ├─ DirObjects(path)   type = "dir"
//!                                            ├─ S3Backend          type = "s3"
//!                                            └─ RcloneBackend      type = "rclone"
//! ```
//!
//! A definition's `[backend]` chooses the backend; `[cache]` the cache in
//! front of it. The image description `onefs.json` lives beside the blocks:
//! a file in a store directory, an object in a backend.
//!
//! Retries (see `backend::retry`): the cache gets the backend itself and
//! retries its requests for `retry_timeout`; the description, `create`, the
//! remote lock and `break-lock` get it wrapped in [`Retrying`] with the
//! backend's attempts.

use crate::backend::remote_lock::{LOCK_KEY, LockInfo, LockTiming, PendingLock, read_lock};
use crate::backend::{DirObjects, ObjectBackend, RcloneBackend, RemoteLock, Retry, Retrying, S3Backend};
use crate::config::{BackendDef, RemoteDef};
use crate::meta::{META_FILE, Meta};
use crate::store::cache::{CacheConfig, CacheStore, EPOCH_KEY};
use crate::store::{BlockStore, DirStore};
use anyhow::{Context, bail};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The backend a `[backend]` table describes, retrying each request with
/// its attempts.
pub fn open_backend(def: &BackendDef) -> anyhow::Result<Arc<dyn ObjectBackend>> {
    Ok(open_retrying(def)?)
}

/// [`open_backend`], with the backend without retries at hand
/// ([`Retrying::single_attempt`]) for the cache.
fn open_retrying(def: &BackendDef) -> anyhow::Result<Arc<Retrying>> {
    let (backend, retry): (Arc<dyn ObjectBackend>, Retry) = match def {
        // A local directory: nothing that waiting would fix.
        BackendDef::Dir { path } => {
            (Arc::new(DirObjects::new(path).map_err(|e| anyhow::anyhow!("backend: {e}"))?), Retry::attempts(1))
        }
        BackendDef::S3(config) => (Arc::new(S3Backend::new(config)?), config.retry()),
        BackendDef::Rclone(config) => (Arc::new(RcloneBackend::new(config)?), Retry::attempts(Retry::DEFAULT_ATTEMPTS)),
    };
    Ok(Arc::new(Retrying::new(backend, retry)))
}

/// Reads `onefs.json` from a backend.
pub fn load_meta(backend: &dyn ObjectBackend) -> anyhow::Result<Meta> {
    let name = format!("{}/{META_FILE}", backend.describe().trim_end_matches('/'));
    let Some(data) = backend.get(META_FILE).with_context(|| name.clone())? else {
        bail!("{name}: no image description: not an onefs store (create one with onefs create --definition NAME)");
    };
    let text = String::from_utf8(data).map_err(|_| anyhow::anyhow!("{name}: not UTF-8 text"))?;
    Ok(Meta::parse(&text, Path::new(&name))?)
}

/// Where an image's description is: `onefs.json` in a store directory, or
/// the object of that name in a backend.
#[derive(Clone)]
pub enum MetaPlace {
    Dir(PathBuf),
    Backend(Arc<dyn ObjectBackend>),
}

impl MetaPlace {
    pub fn load(&self) -> anyhow::Result<Meta> {
        match self {
            MetaPlace::Dir(store) => crate::meta::load_explained(store),
            MetaPlace::Backend(backend) => load_meta(&**backend),
        }
    }

    /// Replaces the description: atomically and durably in a directory
    /// ([`Meta::replace`]), as one PUT of a whole object in a backend (which
    /// holds the old object or the new one, never part of either). Call
    /// with the store's lock held (a mount's, or `onefs grow`'s).
    pub fn replace(&self, meta: &Meta) -> anyhow::Result<()> {
        match self {
            MetaPlace::Dir(store) => {
                meta.replace(store).map_err(|e| anyhow::anyhow!("cannot write the image description: {e}"))
            }
            MetaPlace::Backend(backend) => backend
                .put(META_FILE, meta.to_json().as_bytes())
                .with_context(|| format!("{}: cannot write the image description {META_FILE}", backend.describe())),
        }
    }

    /// For messages: the store directory or the backend.
    pub fn describe(&self) -> String {
        match self {
            MetaPlace::Dir(store) => store.display().to_string(),
            MetaPlace::Backend(backend) => backend.describe(),
        }
    }
}

/// Takes a backend's remote lock for `what` (a mountpoint, or a command),
/// first clearing a lock left by an onefs of this host that is gone.
pub fn lock_remote(backend: Arc<dyn ObjectBackend>, what: &Path) -> anyhow::Result<RemoteLock> {
    begin_remote_lock(backend, what)?.confirm()
}

/// The first half of [`lock_remote`]: one read of the lock object (a lock
/// left by a dead onefs of this host is cleared), our lock written. Read-only
/// work can overlap the settle time before [`PendingLock::confirm`].
pub fn begin_remote_lock(backend: Arc<dyn ObjectBackend>, what: &Path) -> anyhow::Result<PendingLock> {
    let started = Instant::now();
    let store = backend.describe();
    let mut held = read_lock(&*backend).map_err(|e| anyhow::anyhow!("{store}: reading {LOCK_KEY}: {e}"))?;
    if let Some(info) = &held
        && own_dead_lock(info)
    {
        log::warn!(
            "{store}: {LOCK_KEY} was left by onefs pid {} of this host, which is gone; taking it over",
            info.pid
        );
        RemoteLock::break_lock(&*backend).with_context(|| format!("{store}: breaking the dead lock"))?;
        held = None;
    }
    RemoteLock::begin(backend, what, LockTiming::default(), held, started)
}

/// A backend whose first `GET onefs.epoch` is answered by a read made
/// ahead, while the remote lock settled (saving that request's time at
/// mount). Safe because only the holder of a confirmed lock writes the
/// epoch: a host racing us for the lock backs off before it could.
struct EpochRead {
    backend: Arc<dyn ObjectBackend>,
    ahead: Mutex<Option<Option<Vec<u8>>>>,
}

impl EpochRead {
    /// Reads the epoch now; a failed read is simply made again when asked.
    fn ahead(backend: Arc<dyn ObjectBackend>) -> Arc<dyn ObjectBackend> {
        let ahead = backend.get(EPOCH_KEY).ok();
        Arc::new(EpochRead { backend, ahead: Mutex::new(ahead) })
    }
}

impl ObjectBackend for EpochRead {
    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        if key == EPOCH_KEY
            && let Some(read) = crate::sync::lock(&self.ahead).take()
        {
            return Ok(read);
        }
        self.backend.get(key)
    }

    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        if key == EPOCH_KEY {
            crate::sync::lock(&self.ahead).take();
        }
        self.backend.put(key, data)
    }

    fn put_file(&self, key: &str, path: &Path) -> io::Result<()> {
        self.backend.put_file(key, path)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.backend.delete(key)
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.backend.list(prefix)
    }
}

/// Where a mount's blocks are, before it is locked and opened.
pub enum Backing {
    Dir { store: PathBuf },
    Remote { backend: Arc<Retrying>, cache: CacheConfig },
}

impl Backing {
    /// `store` is the store directory, or the cache directory of a remote.
    pub fn new(store: &Path, remote: Option<&RemoteDef>) -> anyhow::Result<Self> {
        Ok(match remote {
            None => Backing::Dir { store: store.to_path_buf() },
            Some(remote) => {
                let mut cache = remote.cache.clone();
                cache.dir = store.to_path_buf();
                Backing::Remote { backend: open_retrying(&remote.backend)?, cache }
            }
        })
    }

    pub fn meta(&self) -> anyhow::Result<Meta> {
        self.meta_place().load()
    }

    /// Where the description is (for `onefs grow` of the mounted image).
    pub fn meta_place(&self) -> MetaPlace {
        match self {
            Backing::Dir { store } => MetaPlace::Dir(store.clone()),
            Backing::Remote { backend, .. } => MetaPlace::Backend(backend.clone()),
        }
    }

    /// For messages: the store directory or `BACKEND (cache DIR)`.
    pub fn describe(&self) -> String {
        match self {
            Backing::Dir { store } => store.display().to_string(),
            Backing::Remote { backend, cache } => format!("{} (cache {})", backend.describe(), cache.dir.display()),
        }
    }

    /// Begins taking a remote store's lock for `mountpoint` (one host at a
    /// time; `None` for a directory store). Call with the cache lock held;
    /// read the description ([`meta`](Self::meta)) while it settles, then
    /// hand it to [`open`](Self::open).
    pub fn begin_lock(&self, mountpoint: &Path) -> anyhow::Result<Option<PendingLock>> {
        match self {
            Backing::Dir { .. } => Ok(None),
            Backing::Remote { backend, .. } => Ok(Some(begin_remote_lock(backend.clone(), mountpoint)?)),
        }
    }

    /// The block store stack. Call with the store (or cache) lock held; a
    /// remote store's lock is confirmed here (begun by `begin_lock`, or taken
    /// now if `None`) before anything is written to it.
    pub fn open(
        self,
        meta: &Meta,
        mountpoint: &Path,
        read_only: bool,
        lock: Option<PendingLock>,
    ) -> anyhow::Result<Stack> {
        let geometry = meta.geometry().map_err(|e| anyhow::anyhow!("{e}"))?;
        match self {
            Backing::Dir { store } => {
                let dir_store = Arc::new(DirStore::open(&store, geometry, read_only)?);
                Ok(Stack { store: dir_store.clone(), dir: Some(dir_store), cache: None, remote_lock: None })
            }
            Backing::Remote { backend, cache } => {
                let described = backend.describe();
                let (remote_lock, objects) = match lock {
                    Some(pending) => {
                        // Still settling: read the epoch now (a read; only
                        // a lock holder writes it) for the cache to find.
                        let objects = EpochRead::ahead(backend.single_attempt().clone());
                        (pending.confirm()?, objects)
                    }
                    None => (lock_remote(backend.clone(), mountpoint)?, backend.single_attempt().clone()),
                };
                let cache = Arc::new(
                    CacheStore::open(objects, meta, &cache)
                        .map_err(|e| anyhow::anyhow!("cache for {described}: {e}"))?,
                );
                Ok(Stack { store: cache.clone(), dir: None, cache: Some(cache), remote_lock: Some(remote_lock) })
            }
        }
    }
}

/// An opened stack: the store the image sits on, and the cache layer if any
/// (to flush and shut down at unmount).
pub struct Stack {
    pub store: Arc<dyn BlockStore>,
    /// The directory store, when the image sits on one directly.
    dir: Option<Arc<DirStore>>,
    pub cache: Option<Arc<CacheStore>>,
    remote_lock: Option<RemoteLock>,
}

impl Stack {
    /// Records a clean unmount in a directory store, so the next mount can
    /// skip rechecking every block file. Call only after a successful final
    /// flush with the session ended.
    pub fn mark_clean(&self) {
        if let Some(dir) = &self.dir
            && let Err(err) = dir.mark_clean()
        {
            log::warn!("cannot record the clean unmount (the next mount rechecks every block file): {err}");
        }
    }

    /// Uploads what the cache holds, shuts it down cleanly and releases the
    /// remote lock.
    pub fn close(&mut self) -> anyhow::Result<()> {
        if let Some(cache) = &self.cache {
            cache.close().context("closing the cache")?;
        }
        if let Some(lock) = self.remote_lock.take() {
            if lock.lost() {
                log::error!("the remote lock was taken by another host while mounted: {}", lock.info().mountpoint);
            }
            lock.release().context("releasing the remote lock")?;
        }
        Ok(())
    }
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

fn onefs_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim_end() == "onefs" || c.starts_with("mount."))
}

/// A lock left by an onefs of this host that is gone (killed, crashed) is
/// ours to break: the host is here to say its holder is not running.
fn own_dead_lock(held: &LockInfo) -> bool {
    let host = this_host();
    !host.is_empty() && held.holder == host && !onefs_alive(held.pid)
}

/// `onefs break-lock`: removes the remote lock of a definition's backend and
/// says who held it.
pub fn break_lock(def: &BackendDef) -> anyhow::Result<String> {
    let backend = open_backend(def)?;
    let held =
        RemoteLock::break_lock(&*backend).with_context(|| format!("{}: cannot break the lock", backend.describe()))?;
    Ok(match held {
        Some(info) => format!(
            "{}: broke the lock of {} pid {} (mountpoint {})",
            backend.describe(),
            info.holder,
            info.pid,
            info.mountpoint
        ),
        None => format!("{}: there was no lock", backend.describe()),
    })
}
