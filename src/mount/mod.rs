//! The life of one mount: checks, lock, FUSE session, readiness, signals,
//! clean or lazy unmount.

pub mod control;
pub mod detach;

use crate::config::MountSpec;
use crate::fuse::ring::ENABLE_KNOB;
use crate::fuse::ring::{ENTRIES_PER_THREAD, RingMode, Rings, StartError};
use crate::fuse::{Disk, KernelCache, OnefsFs};
use crate::image::Image;
use crate::mountinfo;
use crate::probe;
use crate::store_lock::StoreLock;
use anyhow::{Context, bail};
use fuser::{MountOption, SessionACL};
use nix::mount::{MntFlags, umount2};
use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const FUSE_TYPE: &str = "fuse.onefs";
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Called once the mount is live (and with the error if it never gets there).
pub trait Readiness {
    fn ready(&mut self, message: &str);
    fn failed(&mut self, error: &anyhow::Error);
}

/// Makes `path` usable as a mountpoint: it must be an existing directory that
/// is not already a mount point. A dead FUSE mount left by a killed daemon
/// (ENOTCONN) is cleared. A path whose filesystem does not answer (a stopped
/// or stuck mount at or above it) is refused within [`probe::MOUNT_LIMIT`].
pub fn prepare_mountpoint(path: &Path) -> anyhow::Result<PathBuf> {
    if clear_dead_mount(path)? {
        log::warn!("{}: cleared a dead mount left by a crashed daemon", path.display());
    }
    let path = mountpoint_dir(path)?;
    if let Some(existing) = mountinfo::mount_at(&path) {
        let mut by = String::new();
        if existing.fstype == FUSE_TYPE {
            // The holder is recorded in that mount's store, which may hang too.
            let store = PathBuf::from(&existing.source);
            let holder = probe::ask(("holder", store.clone()), probe::LIMIT, move || crate::store_lock::holder(&store));
            if let Ok(Some(holder)) = holder {
                if let Some(pid) = holder.pid {
                    by += &format!(", served by onefs pid {pid}");
                }
                if let Some(unit) = holder.unit {
                    by += &format!(" of unit {unit}");
                }
            }
        }
        bail!(
            "mountpoint {} is already a mount point ({} from {}{by})",
            path.display(),
            existing.fstype,
            existing.source
        );
    }
    Ok(path)
}

/// Refuses a mountpoint that would hide the store (its own directory, one
/// inside it, or one of its ancestors): the mount would cover the very
/// files it serves, and stored data would read as zeros. Both paths
/// canonical.
fn refuse_overlap(store: &Path, mountpoint: &Path, cache: bool) -> anyhow::Result<()> {
    let what = if cache { "cache directory" } else { "store" };
    let (m, s) = (mountpoint.display(), store.display());
    if mountpoint == store {
        bail!("mountpoint {m} is the {what} itself; mount it elsewhere");
    }
    if mountpoint.starts_with(store) {
        bail!("mountpoint {m} is inside the {what} {s}; mount it elsewhere");
    }
    if store.starts_with(mountpoint) {
        bail!("mountpoint {m} holds the {what} {s}: mounting there would hide it; mount it elsewhere");
    }
    Ok(())
}

/// Refuses a mountpoint that holds files (the mount would hide them), as
/// mount(8) users expect of a disk; `-o nonempty` says it is meant.
fn refuse_non_empty(mountpoint: &Path) -> anyhow::Result<()> {
    let mut entries =
        std::fs::read_dir(mountpoint).map_err(|e| anyhow::anyhow!("mountpoint {}: {e}", mountpoint.display()))?;
    if let Some(entry) = entries.next() {
        let name = entry.map(|e| e.file_name().to_string_lossy().into_owned()).unwrap_or_default();
        bail!(
            "mountpoint {} is not empty (it holds {name:?}); mount on an empty directory, or with -o nonempty to hide what it holds",
            mountpoint.display()
        );
    }
    Ok(())
}

/// Checks that `path` is an existing directory and returns its canonical
/// form, within [`probe::MOUNT_LIMIT`].
pub fn mountpoint_dir(path: &Path) -> anyhow::Result<PathBuf> {
    let owned = path.to_path_buf();
    let answer = probe::ask(("mountpoint", path.to_path_buf()), probe::MOUNT_LIMIT, move || {
        let path = owned.as_path();
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("mountpoint {} does not exist", path.display()));
            }
            Err(e) => return Err(format!("mountpoint {}: {e}", path.display())),
            Ok(meta) if !meta.is_dir() => return Err(format!("mountpoint {} is not a directory", path.display())),
            Ok(_) => {}
        }
        path.canonicalize().map_err(|e| format!("mountpoint {}: {e}", path.display()))
    });
    match answer {
        Ok(result) => result.map_err(anyhow::Error::msg),
        Err(why) => Err(not_answering(path, &why)),
    }
}

/// The one-line error for a mountpoint whose filesystem does not answer,
/// naming the mount in the way when mountinfo knows it.
fn not_answering(path: &Path, why: &probe::Unanswered) -> anyhow::Error {
    let probe::Unanswered::NotAnswering(waited) = why else {
        return anyhow::anyhow!("mountpoint {}: {why}", path.display());
    };
    // The nearest mount at or above the path (no canonicalize: it would hang).
    let mounts = mountinfo::mounts();
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let culprit = absolute
        .ancestors()
        .find_map(|dir| mounts.iter().rev().find(|m| m.mountpoint == dir))
        .filter(|m| m.mountpoint != Path::new("/"));
    let what = match culprit {
        Some(m) if m.fstype == FUSE_TYPE => {
            format!(": the onefs mount of {} at {} is stopped or stuck", m.source, m.mountpoint.display())
        }
        Some(m) => format!(": the {} mount at {} is stopped or stuck", m.fstype, m.mountpoint.display()),
        None => String::new(),
    };
    anyhow::anyhow!("mountpoint {} is not answering (no answer in {:.0}s){what}", path.display(), waited.as_secs_f64())
}

/// Clears a dead FUSE mount (ENOTCONN: its daemon was killed) at `path`.
/// Returns whether there was one; a live mount or a plain directory is left
/// alone, and a path that does not answer is an error.
pub fn clear_dead_mount(path: &Path) -> anyhow::Result<bool> {
    // statfs, not stat: stat may answer from the attribute cache for a second.
    match probe::statfs(path).wait_until(Instant::now() + probe::MOUNT_LIMIT) {
        Ok(Err(nix::errno::Errno::ENOTCONN)) => {
            umount2(path, MntFlags::MNT_DETACH)
                .with_context(|| format!("{}: cannot clear dead mount", path.display()))?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(why) => Err(not_answering(path, &why)),
    }
}

/// Whether `mountpoint` is the live FUSE mount of `store`: in mountinfo and
/// answering statfs with the FUSE magic by `deadline`.
fn is_live(mountpoint: &Path, store: &Path, deadline: Instant) -> bool {
    let fuse = probe::statfs(mountpoint).wait_until(deadline) == Ok(Ok(FUSE_SUPER_MAGIC));
    fuse && mountinfo::mount_at(mountpoint).is_some_and(|m| m.fstype == FUSE_TYPE && Path::new(&m.source) == store)
}

/// The canonical path of a store directory, within [`probe::MOUNT_LIMIT`].
fn store_dir(store: &Path) -> anyhow::Result<PathBuf> {
    let owned = store.to_path_buf();
    match probe::ask(("canonicalize", store.to_path_buf()), probe::MOUNT_LIMIT, move || {
        owned.canonicalize().map_err(|e| e.to_string())
    }) {
        Ok(result) => result.map_err(|e| anyhow::anyhow!("store {}: {e}", store.display())),
        Err(why @ probe::Unanswered::NotAnswering(_)) => {
            bail!("store {} is {why}: is the filesystem it is on stuck?", store.display())
        }
        Err(why) => bail!("store {}: {why}", store.display()),
    }
}

/// Threads of this process that fuser runs its workers on (`fuser-N`), by id.
fn fuser_workers() -> HashSet<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return HashSet::new() };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let worker = comm.trim().strip_prefix("fuser-").is_some_and(|n| n.parse::<usize>().is_ok());
            worker.then(|| task.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// Whether the kernel will offer FUSE over io_uring to a new mount.
fn ring_offered() -> anyhow::Result<()> {
    match std::fs::read_to_string(ENABLE_KNOB) {
        Ok(value) if value.trim() == "Y" => Ok(()),
        Ok(value) => bail!("the kernel does not offer it ({ENABLE_KNOB} is {})", value.trim()),
        Err(_) => bail!("this kernel has no FUSE over io_uring ({ENABLE_KNOB} is missing)"),
    }
}

/// Lets a daemon that serves a loop device survive memory pressure: the
/// kernel will not make it wait on writeback it is itself needed for.
fn mark_io_flusher() {
    const PR_SET_IO_FLUSHER: libc::c_int = 57;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) } != 0 {
        log::debug!("PR_SET_IO_FLUSHER unavailable: {}", std::io::Error::last_os_error());
    }
}

/// Raises the open-file limit: the block store caches descriptors.
fn raise_fd_limit() {
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Opens the store, mounts, reports readiness and serves until unmounted or
/// told to stop by SIGTERM/SIGINT. Returns once the session has ended.
pub fn serve(spec: &MountSpec, readiness: &mut dyn Readiness) -> anyhow::Result<()> {
    // Before mounting: a SIGTERM that arrives the moment the mount is live
    // must unmount cleanly, not kill the process; and a signal thread that
    // could not start after mounting would leave a mount no signal unmounts.
    let signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
        .context("cannot install signal handlers")?;
    let signals_handle = signals.handle();
    let (tx, rx) = mpsc::channel();
    let ended_tx = tx.clone();
    let started = forward_signals(signals, tx)
        .and_then(|()| Mounted::start(spec, Box::new(move || drop(ended_tx.send(Event::Ended)))));
    let mounted = match started {
        Ok(mounted) => mounted,
        Err(err) => {
            signals_handle.close();
            readiness.failed(&err);
            return Err(err);
        }
    };
    readiness.ready(&format!("mounted {} at {}", mounted.store.display(), mounted.mountpoint.display()));
    let result = run_until_ended(mounted, rx);
    signals_handle.close();
    control::close();
    result
}

fn forward_signals(mut signals: signal_hook::iterator::Signals, tx: mpsc::Sender<Event>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if tx.send(Event::Signal(signal)).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// How a request to unmount went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmount {
    /// Unmounted; the session ends shortly.
    Done,
    /// Busy (a loop device holds disk.img): detached lazily, still serving
    /// until the last user lets go.
    Detached,
    /// Already detached earlier; nothing more to do.
    AlreadyDetached,
    Failed(String),
}

/// A live mount whose session runs on background threads, controlled by its
/// owner: [`Mounted::unmount`] then [`Mounted::finish`] once the session
/// ended (the `on_end` callback given to [`Mounted::start`] says when).
pub struct Mounted {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    image: Arc<Image>,
    session: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// FUSE over io_uring, when in use.
    rings: Option<Rings>,
    detached: bool,
    /// A read-only mount leaves the store exactly as it found it.
    read_only: bool,
    stack: crate::compose::Stack,
    /// Reachable by `onefs grow` through the control socket until finished.
    control: Option<control::Registration>,
    _lock: StoreLock,
}

impl Mounted {
    /// Checks, locks, opens and mounts; returns once the mount is live (in
    /// mountinfo and answering statfs with the FUSE magic). `on_end` runs on
    /// a background thread when the FUSE session has ended.
    pub fn start(spec: &MountSpec, on_end: Box<dyn FnOnce() + Send>) -> anyhow::Result<Self> {
        // Paths that mountinfo and the lock file could not hold as one line.
        crate::paths::check_resolved(if spec.remote.is_some() { "cache directory" } else { "store" }, &spec.store)?;
        crate::paths::check_resolved("mountpoint", &spec.mountpoint)?;
        // Whether to ask for io_uring at INIT. Once the kernel agrees it holds
        // every request until the queues are registered, so first make sure
        // this process can set up a ring at all (kernel.io_uring_disabled,
        // a seccomp filter).
        let mode = match spec.options.io_uring {
            RingMode::Off => RingMode::Off,
            wanted => {
                match ring_offered().and_then(|()| crate::fuse::ring::probe().context("cannot set up an io_uring")) {
                    Ok(()) => wanted,
                    Err(e) if wanted == RingMode::On => {
                        bail!("FUSE over io_uring unavailable: {e:#} (mount option io_uring=on)")
                    }
                    Err(e) => {
                        log::info!("FUSE over io_uring unavailable: {e:#}; serving through /dev/fuse");
                        RingMode::Off
                    }
                }
            }
        };
        if spec.remote.is_some() {
            // The cache directory of a remote store is made on first use.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&spec.store)
                .map_err(|e| anyhow::anyhow!("cache directory {}: {e}", spec.store.display()))?;
        }
        let store = store_dir(&spec.store)?;
        let backing = crate::compose::Backing::new(&store, spec.remote.as_ref())?;
        // A directory store's description comes first (what is wrong with
        // the store is said before anything else); a remote store's is read
        // below, while its lock settles.
        let dir_meta = match spec.remote {
            None => {
                let meta = backing.meta()?;
                meta.geometry().map_err(|e| anyhow::anyhow!("{}: {e}", backing.describe()))?;
                Some(meta)
            }
            Some(_) => None,
        };
        let mountpoint = prepare_mountpoint(&spec.mountpoint)?;
        refuse_overlap(&store, &mountpoint, spec.remote.is_some())?;
        if let Some(crate::config::RemoteDef { backend: crate::config::BackendDef::Dir { path }, .. }) = &spec.remote {
            let objects = path.canonicalize().unwrap_or_else(|_| path.clone());
            refuse_overlap(&objects, &mountpoint, false)?;
        }
        if !spec.options.nonempty {
            refuse_non_empty(&mountpoint)?;
        }
        let lock = StoreLock::acquire(&store, &mountpoint, spec.options.access.read_only)?;
        raise_fd_limit();
        mark_io_flusher();

        let started = Instant::now();
        // A remote store's lock settles while its description is read.
        let remote_lock = backing.begin_lock(&mountpoint)?;
        let meta = match dir_meta {
            Some(meta) => meta,
            None => backing.meta()?,
        };
        let geometry = meta.geometry().map_err(|e| anyhow::anyhow!("{}: {e}", backing.describe()))?;
        let described = backing.describe();
        let meta_place = backing.meta_place();
        let stack = backing.open(&meta, &mountpoint, spec.options.access.read_only, remote_lock)?;
        let image = Arc::new(Image::open(geometry, stack.store.clone())?);
        log::info!(
            "opened {} ({} blocks stored of {}) in {:?}",
            described,
            image.stored_blocks(),
            geometry.block_count(),
            started.elapsed()
        );

        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName(store.display().to_string()),
            // fuser's pure-Rust mount drops MountOption::Subtype; this reaches the kernel.
            MountOption::CUSTOM("subtype=onefs".into()),
            MountOption::DefaultPermissions,
            MountOption::NoSuid,
            MountOption::NoDev,
            MountOption::NoExec,
            MountOption::NoAtime,
        ];
        if spec.options.access.read_only {
            config.mount_options.push(MountOption::RO);
        }
        config.acl = if spec.options.allow_other { SessionACL::All } else { SessionACL::Owner };
        config.n_threads = Some(spec.options.threads);
        config.clone_fd = true;

        let disk = Arc::new(Disk::new(image.clone(), spec.options.access));
        let ring_agreed = Arc::new(OnceLock::new());
        let fs = OnefsFs::new(disk.clone(), mode != RingMode::Off, ring_agreed.clone());
        let session = fuser::Session::new(fs, &mountpoint, &config)
            .map_err(|e| anyhow::anyhow!("cannot mount at {}: {e}", mountpoint.display()))?;
        let fuse_fd = session.as_fd().try_clone_to_owned().context("cannot duplicate the /dev/fuse descriptor")?;
        // The daemon serves several mounts from one process (and unmounts
        // some while mounting others): wait for new workers only.
        let workers_before = fuser_workers();
        let background = session.spawn().context("cannot start FUSE workers")?;
        let kernel = KernelCache::new(background.notifier());
        let session = std::thread::Builder::new()
            .name("session".into())
            .spawn(move || {
                let result = background.join();
                on_end();
                result
            })
            .context("cannot start the session thread")?;
        let growable = control::Growable::new(
            store.clone(),
            mountpoint.clone(),
            image.clone(),
            kernel,
            meta_place,
            meta,
            spec.options.access.read_only,
        );
        let mut mounted = Mounted {
            store,
            mountpoint,
            image,
            session: Some(session),
            rings: None,
            detached: false,
            read_only: spec.options.access.read_only,
            stack,
            // From the start: the mount is visible (and may be asked to grow)
            // before this returns.
            control: Some(control::register(Arc::new(growable))),
            _lock: lock,
        };

        // fuser starts its workers one by one after INIT; one the OS refuses
        // (a pids limit such as systemd's TasksMax) ends the session moments
        // later. Wait for all of them, so that such a mount fails here with
        // the reason instead of dying once reported ready, and so that the
        // ring threads below compete with none of them.
        if let Err(err) = mounted.wait_for_workers(&workers_before, spec.options.threads) {
            let _ = mounted.unmount();
            return Err(err);
        }
        // Once the kernel agreed to io_uring it holds every request until
        // the queues are registered (or a registration fails): register
        // before anything asks the mount a question.
        if mode != RingMode::Off
            && let Err(err) = mounted.start_rings(fuse_fd, disk, &ring_agreed, spec)
        {
            let why = format!("FUSE over io_uring unavailable: {err:#}");
            // A kernel that still waits for queues holds every request: such
            // a mount would answer nothing (the unmount needs no request).
            let stuck = err.chain().any(|e| e.downcast_ref::<StartError>().is_some_and(|e| !e.fell_back));
            if mode == RingMode::On || stuck {
                // Close the store as cleanly as any unmount would.
                let _ = mounted.unmount();
                let _ = mounted.finish();
                if stuck {
                    bail!("{why}; unmounted again: mount anew, or with io_uring=off");
                }
                bail!("{why} (mount option io_uring=on)");
            }
            log::info!("{why}; serving through /dev/fuse");
        }
        // Each statfs waits at most until the deadline: a mount that hangs
        // (the kernel still waiting for something) fails here, it does not
        // leave `onefs mount` waiting forever.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_live(&mounted.mountpoint, &mounted.store, deadline) {
            if Instant::now() > deadline {
                let _ = mounted.unmount();
                bail!("mount at {} did not come up (answer statfs) within 10s", mounted.mountpoint.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(rings) = &mounted.rings {
            if !rings.used() {
                // Cannot happen while the kernel keeps its word; say so if it does not.
                log::warn!("io_uring queues registered, but no request came through them");
            } else {
                log::info!("serving {} through FUSE over io_uring", mounted.mountpoint.display());
            }
        }
        crate::fuse::match_readahead(&mounted.mountpoint, &mounted.store);
        log::info!("mounted {} at {}", mounted.store.display(), mounted.mountpoint.display());
        Ok(mounted)
    }

    /// Waits (up to 10 s) until fuser runs `threads` workers that were not
    /// in `before`; fails with the session's error if it ended instead.
    fn wait_for_workers(&mut self, before: &HashSet<String>, threads: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.session.as_ref().is_some_and(|session| session.is_finished()) {
                let why = match self.session.take().map(|session| session.join()) {
                    Some(Ok(Err(err))) => err.to_string(),
                    Some(Err(_)) => "it panicked".to_string(),
                    _ => "no error given".to_string(),
                };
                bail!("the FUSE session ended while starting {threads} workers: {why}");
            }
            if fuser_workers().difference(before).count() >= threads {
                return Ok(());
            }
            if Instant::now() > deadline {
                log::warn!("fewer than {threads} FUSE workers running after 10s; going on");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Moves request handling onto io_uring queues, once fuser has
    /// answered INIT and the kernel agreed to it.
    fn start_rings(
        &mut self,
        fuse_fd: OwnedFd,
        disk: Arc<Disk>,
        agreed: &OnceLock<bool>,
        spec: &MountSpec,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let agreed = loop {
            match agreed.get() {
                Some(&agreed) => break agreed,
                None if Instant::now() > deadline => bail!("no INIT from the kernel within 10s"),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        if !agreed {
            ring_offered()?;
            bail!("the kernel did not offer it at INIT");
        }
        // A thread answers all its entries' requests in turn: several
        // entries a thread when requests are served from memory or the local
        // disk, one when a request may wait for a remote store.
        let entries_per_thread = if spec.remote.is_some() { 1 } else { ENTRIES_PER_THREAD };
        let rings = Rings::start(fuse_fd, disk, spec.options.threads, entries_per_thread);
        self.rings = Some(rings.context("cannot register io_uring queues")?);
        Ok(())
    }

    /// Whether the mount is still in place and answers statfs by `deadline`
    /// (false once detached or unmounted). While one such question is
    /// unanswered, asking again joins it: a stuck mount costs one thread.
    pub fn is_live(&self, deadline: Instant) -> bool {
        !self.detached && is_live(&self.mountpoint, &self.store, deadline)
    }

    /// Starts the statfs that [`Mounted::is_live`] waits for, so that the
    /// mounts of a service are asked at once rather than one after another.
    pub fn ask_if_live(&self) {
        if !self.detached {
            drop(probe::statfs(&self.mountpoint));
        }
    }

    pub fn is_detached(&self) -> bool {
        self.detached
    }

    /// Blocks of the image currently stored.
    pub fn stored_blocks(&self) -> u64 {
        self.image.stored_blocks()
    }

    /// Flushes, then unmounts; EBUSY (a loop device on disk.img) detaches
    /// lazily and the session serves until released.
    pub fn unmount(&mut self) -> Unmount {
        if self.detached {
            return Unmount::AlreadyDetached;
        }
        log::info!("flushing and unmounting {}", self.mountpoint.display());
        if let Err(err) = self.image.sync() {
            log::error!("flush before unmount failed: {err}");
        }
        match umount2(&self.mountpoint, MntFlags::empty()) {
            Ok(()) => Unmount::Done,
            Err(nix::errno::Errno::EBUSY) => {
                log::warn!(
                    "{} is busy (is a loop device attached to disk.img?): detached it lazily; serving until released",
                    self.mountpoint.display()
                );
                self.detached = true;
                match umount2(&self.mountpoint, MntFlags::MNT_DETACH) {
                    Ok(()) => Unmount::Detached,
                    Err(err) => {
                        let message = format!("lazy unmount of {} failed: {err}", self.mountpoint.display());
                        log::error!("{message}");
                        Unmount::Failed(message)
                    }
                }
            }
            Err(err) => {
                let message = format!("unmount of {} failed: {err}", self.mountpoint.display());
                log::error!("{message}");
                Unmount::Failed(message)
            }
        }
    }

    /// Waits for the session to end, flushes a last time and releases the
    /// store. Call once `on_end` has run (or after a successful unmount).
    pub fn finish(mut self) -> anyhow::Result<()> {
        // No grow writes the description once the store is let go of.
        if let Some(control) = self.control.take() {
            control.close();
        }
        let result = match self.session.take().map(|h| h.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the session thread panicked")),
            None => Ok(()),
        };
        if let Some(rings) = self.rings.take() {
            rings.join(Duration::from_secs(5));
        }
        // destroy() flushed already when the kernel said goodbye; flush again
        // in case the session ended without it, and report the outcome.
        let flushed = self.image.sync();
        if result.is_ok() && flushed.is_ok() && !self.read_only {
            self.stack.mark_clean();
        }
        let closed = self.stack.close();
        log::info!("unmounted {} from {}", self.store.display(), self.mountpoint.display());
        result.context("FUSE session failed")?;
        flushed.context("final flush failed")?;
        closed?;
        Ok(())
    }
}

enum Event {
    Signal(i32),
    Ended,
}

fn run_until_ended(mut mounted: Mounted, rx: mpsc::Receiver<Event>) -> anyhow::Result<()> {
    loop {
        match rx.recv() {
            Ok(Event::Signal(libc::SIGHUP)) => log::info!("SIGHUP: nothing to reload for a single mount"),
            Ok(Event::Signal(signal)) if mounted.is_detached() => {
                log::warn!("signal {signal}: still serving the detached mount until its user lets go")
            }
            Ok(Event::Signal(signal)) => {
                log::info!("signal {signal}: stopping");
                let _ = mounted.unmount();
            }
            Ok(Event::Ended) | Err(_) => break,
        }
    }
    mounted.finish()
}
