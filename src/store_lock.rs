//! One mount of a store at a time: an exclusive `flock` on `STORE/onefs.lock`.
//!
//! The kernel drops the lock when the holder exits, even after `kill -9`, so a
//! lock is never stale. The file records who holds it, for error messages.

use crate::confined::{Access, ConfinedDir};
use crate::mountinfo;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const LOCK_FILE: &str = "onefs.lock";
/// How long to wait for a previous onefs that is still finishing an unmount.
pub const RELEASE_WAIT: Duration = Duration::from_secs(15);

pub struct StoreLock {
    /// `None` for a read-only mount of a store that cannot hold a lock file
    /// (read-only media, where nothing can change the store anyway).
    _file: Option<File>,
}

/// The largest lock record onefs reads (its own are under 200 bytes).
const RECORD_CAP: u64 = 4096;

/// What the holder of a store's lock is doing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serving a mount.
    #[default]
    Mount,
    /// `onefs fsck`.
    Fsck,
    /// `onefs grow` of an unmounted store (a moment's work).
    Grow,
}

impl Role {
    fn record(self) -> &'static str {
        match self {
            Role::Mount => "",
            Role::Fsck => "fsck",
            Role::Grow => "grow",
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    pub mountpoint: Option<PathBuf>,
    pub unit: Option<String>,
    pub role: Role,
}

impl Holder {
    fn parse(text: &str) -> Self {
        let mut holder = Holder::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("pid", v)) => holder.pid = v.parse().ok(),
                Some(("mountpoint", v)) if !v.is_empty() => holder.mountpoint = Some(PathBuf::from(v)),
                Some(("unit", v)) if !v.is_empty() => holder.unit = Some(v.into()),
                Some(("role", "fsck")) => holder.role = Role::Fsck,
                Some(("role", "grow")) => holder.role = Role::Grow,
                _ => {}
            }
        }
        holder
    }

    fn describe(&self) -> String {
        let mut parts = vec![];
        if let Some(mp) = &self.mountpoint {
            parts.push(format!("at {}", mp.display()));
        }
        if let Some(pid) = self.pid {
            let command = match self.role {
                Role::Mount => "",
                Role::Fsck => "fsck ",
                Role::Grow => "grow ",
            };
            parts.push(format!("by onefs {command}pid {pid}"));
        }
        if let Some(unit) = &self.unit {
            parts.push(format!("(unit {unit})"));
        }
        parts.join(" ")
    }
}

/// The systemd unit this process runs in: `ONEFS_UNIT` when the unit sets
/// it, else the unit named by our cgroup (`/system.slice/NAME.service`,
/// `….mount` for a mount started from fstab).
pub fn current_unit() -> Option<String> {
    if let Ok(unit) = std::env::var("ONEFS_UNIT")
        && !unit.is_empty()
    {
        return Some(unit);
    }
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    unit_from_cgroup(&text)
}

fn unit_from_cgroup(text: &str) -> Option<String> {
    // Prefer systemd's own hierarchy (v1 name=systemd, or the v2 line "0::").
    let line =
        text.lines().find(|l| l.contains(":name=systemd:")).or_else(|| text.lines().find(|l| l.starts_with("0::")))?;
    let path = line.splitn(3, ':').nth(2)?;
    path.split('/').rev().find(|c| [".service", ".mount"].iter().any(|s| c.ends_with(s))).map(str::to_string)
}

/// Who holds the lock of `store`, if a live onefs process does.
pub fn holder(store: &Path) -> Option<Holder> {
    let text = ConfinedDir::open(store).ok()?.read_small(LOCK_FILE, RECORD_CAP).ok()?;
    let holder = Holder::parse(&String::from_utf8_lossy(&text));
    let pid = holder.pid?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.trim_end();
    (comm == "onefs" || comm.starts_with("mount.")).then_some(())?;
    // A holder that exited but was not reaped yet (a detached mount's
    // parent is gone) still has a comm: it holds nothing any more.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())?;
    (state != 'Z' && state != 'X').then_some(holder)
}

/// Opens (creating if needed) the lock file for reading and writing; never
/// through a link, and only a regular file.
fn open_lock_file(store: &ConfinedDir) -> io::Result<File> {
    store.open_file(LOCK_FILE, Access::Create(0o600))
}

/// The lock file opened for reading only, for a read-only mount or fsck:
/// one that is absent is created if the store allows it, and without one
/// the store is on read-only media (`Ok(None)`).
fn open_lock_file_read_only(store: &ConfinedDir) -> io::Result<Option<File>> {
    match store.open_file(LOCK_FILE, Access::Read) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match open_lock_file(store) {
            Ok(file) => Ok(Some(file)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS | libc::EACCES | libc::EPERM)) => Ok(None),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

fn try_flock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(err) }
}

fn read_holder(file: &mut File) -> Holder {
    let mut text = Vec::new();
    let _ = file.rewind().and_then(|_| file.take(RECORD_CAP).read_to_end(&mut text));
    Holder::parse(&String::from_utf8_lossy(&text))
}

impl StoreLock {
    /// Takes the store's lock for a mount at `mountpoint`. A holder whose
    /// mount is still in place is refused at once; one that is unmounted but
    /// still finishing (flushing, or serving a lazily detached mount) is
    /// waited for, up to [`RELEASE_WAIT`].
    /// A read-only mount writes nothing: it locks an existing lock file
    /// through a read-only descriptor, records no holder, and on read-only
    /// media without a lock file goes unlocked.
    pub fn acquire(store: &Path, mountpoint: &Path, read_only: bool) -> anyhow::Result<Self> {
        let path = store.join(LOCK_FILE);
        let cannot_open = |e: io::Error| anyhow::anyhow!("cannot open the lock file: {e}");
        let dir = ConfinedDir::open(store).map_err(|e| anyhow::anyhow!("store {e}"))?;
        let file = if read_only { open_lock_file_read_only(&dir) } else { open_lock_file(&dir).map(Some) };
        let Some(mut file) = file.map_err(cannot_open)? else {
            log::info!("{}: read-only store without a lock file: mounted unlocked", store.display());
            return Ok(Self { _file: None });
        };
        let started = Instant::now();
        let mut announced = false;
        while !try_flock(&file).map_err(|e| anyhow::anyhow!("{}: cannot lock: {e}", path.display()))? {
            let holder = read_holder(&mut file);
            // An offline `onefs grow` is done in a moment: waited for below.
            if holder.role == Role::Fsck {
                anyhow::bail!(
                    "store {} is being checked {}; mount it when the check has finished",
                    store.display(),
                    holder.describe()
                );
            }
            let ours = |m: &mountinfo::MountEntry| m.fstype == "fuse.onefs" && Path::new(&m.source) == store;
            let mut holder = holder;
            let mut still_mounted =
                holder.mountpoint.as_deref().and_then(mountinfo::mount_at).is_some_and(|m| ours(&m));
            if holder.mountpoint.is_none() {
                // A read-only mount records no holder: find it by its source.
                if let Some(m) = mountinfo::mounts().into_iter().find(|m| ours(m)) {
                    holder.mountpoint = Some(m.mountpoint);
                    still_mounted = true;
                }
            }
            if still_mounted {
                let hint = if holder.unit.as_deref().is_some_and(|u| u.starts_with("onefs")) {
                    " (a definition is served by either onefs@NAME.service or onefs.service, not both; stop that unit first)"
                } else {
                    ""
                };
                anyhow::bail!("store {} is already mounted {}{hint}", store.display(), holder.describe());
            }
            if started.elapsed() >= RELEASE_WAIT {
                anyhow::bail!(
                    "store {} is still in use {} (unmounted but still serving: is a loop device still attached to its disk.img?)",
                    store.display(),
                    holder.describe()
                );
            }
            if !announced {
                log::info!(
                    "waiting up to {}s for the previous onefs {} to finish",
                    RELEASE_WAIT.as_secs(),
                    holder.describe()
                );
                announced = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !read_only {
            let unit = current_unit().unwrap_or_default();
            let record = format!("pid={}\nmountpoint={}\nunit={unit}\n", std::process::id(), mountpoint.display());
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(record.as_bytes()))
                .map_err(|e| anyhow::anyhow!("{}: cannot record lock holder: {e}", path.display()))?;
        }
        Ok(Self { _file: Some(file) })
    }

    /// Takes the store's lock for `onefs fsck`, without waiting: a store that
    /// is mounted (or still finishing an unmount, or being checked) is
    /// refused at once, naming the holder. Held, it keeps mounts out until
    /// dropped. Without `write`, a store whose lock file cannot be opened for
    /// writing (read-only media) is still locked through a read-only open.
    pub fn try_acquire_for_fsck(store: &Path, write: bool) -> anyhow::Result<Self> {
        Self::try_acquire_offline(store, write, Role::Fsck)
    }

    /// Takes the store's lock for `onefs grow` of an unmounted store, like
    /// [`StoreLock::try_acquire_for_fsck`] with `write`: mounts that start
    /// meanwhile wait for it (it takes a moment), fsck is refused.
    pub fn try_acquire_for_grow(store: &Path) -> anyhow::Result<Self> {
        Self::try_acquire_offline(store, true, Role::Grow)
    }

    fn try_acquire_offline(store: &Path, write: bool, role: Role) -> anyhow::Result<Self> {
        let path = store.join(LOCK_FILE);
        let cannot_open = |e: io::Error| anyhow::anyhow!("cannot open the lock file: {e}");
        let dir = ConfinedDir::open(store).map_err(|e| anyhow::anyhow!("store {e}"))?;
        let (mut file, writable) = match open_lock_file(&dir) {
            Ok(file) => (file, true),
            Err(e) if !write && matches!(e.raw_os_error(), Some(libc::EROFS | libc::EACCES | libc::EPERM)) => {
                match open_lock_file_read_only(&dir).map_err(cannot_open)? {
                    Some(file) => (file, false),
                    // Read-only media: nothing can mount it for writing either.
                    None => return Ok(Self { _file: None }),
                }
            }
            Err(e) => return Err(cannot_open(e)),
        };
        if !try_flock(&file).map_err(|e| anyhow::anyhow!("{}: cannot lock: {e}", path.display()))? {
            let holder = read_holder(&mut file);
            let what = match holder.role {
                Role::Fsck => "being checked",
                Role::Grow => "being grown",
                Role::Mount => "in use",
            };
            let who = holder.describe();
            let who = if who.is_empty() { "by another process".to_string() } else { who };
            let advice = match role {
                Role::Grow => "run onefs grow again once that has finished",
                _ => "unmount it before running fsck",
            };
            anyhow::bail!("store {} is {what} {who}; {advice}", store.display());
        }
        if writable {
            let record = format!("pid={}\nmountpoint=\nunit=\nrole={}\n", std::process::id(), role.record());
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(record.as_bytes()))
                .map_err(|e| anyhow::anyhow!("{}: cannot record lock holder: {e}", path.display()))?;
        }
        Ok(Self { _file: Some(file) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_comes_from_the_systemd_cgroup() {
        let v1 = "12:pids:/system.slice/onefs@data.service\n1:name=systemd:/system.slice/onefs@data.service\n0::/system.slice/onefs@data.service\n";
        assert_eq!(unit_from_cgroup(v1).as_deref(), Some("onefs@data.service"));
        assert_eq!(
            unit_from_cgroup("0::/system.slice/srv-onefs-data.mount\n").as_deref(),
            Some("srv-onefs-data.mount")
        );
        assert_eq!(unit_from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"), None);
        assert_eq!(unit_from_cgroup("0::/\n"), None);
    }

    #[test]
    fn second_lock_on_a_mounted_store_is_refused_quickly_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = StoreLock::acquire(dir.path(), Path::new("/"), false).unwrap();
        // "/" is a mount point but not of this store: the holder counts as
        // finishing, so the second waits; give it a short leash by dropping.
        let store = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || StoreLock::acquire(&store, Path::new("/elsewhere"), false).map(|_| ()));
        std::thread::sleep(Duration::from_millis(200));
        drop(first);
        waiter.join().unwrap().unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(text.contains("mountpoint=/elsewhere"), "{text}");
    }

    #[test]
    fn fsck_lock_does_not_wait_and_keeps_mounts_out() {
        let dir = tempfile::tempdir().unwrap();
        let mount = StoreLock::acquire(dir.path(), Path::new("/mnt/x"), false).unwrap();
        let started = Instant::now();
        let err = StoreLock::try_acquire_for_fsck(dir.path(), false).err().unwrap().to_string();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(err.contains("at /mnt/x") && err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(mount);
        let fsck = StoreLock::try_acquire_for_fsck(dir.path(), true).unwrap();
        let err = StoreLock::acquire(dir.path(), Path::new("/mnt/x"), false).err().unwrap().to_string();
        assert!(err.contains("being checked by onefs fsck pid"), "{err}");
        let err = StoreLock::try_acquire_for_fsck(dir.path(), true).err().unwrap().to_string();
        assert!(err.contains("being checked"), "{err}");
        drop(fsck);
        StoreLock::acquire(dir.path(), Path::new("/mnt/x"), false).unwrap();
    }

    #[test]
    fn an_offline_grow_is_waited_for_by_a_mount_and_refuses_fsck() {
        let dir = tempfile::tempdir().unwrap();
        let grow = StoreLock::try_acquire_for_grow(dir.path()).unwrap();
        let record = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(record.contains("role=grow"), "{record}");
        let err = StoreLock::try_acquire_for_fsck(dir.path(), false).err().unwrap().to_string();
        assert!(err.contains("is being grown by onefs grow pid"), "{err}");
        let store = dir.path().to_path_buf();
        let mount = std::thread::spawn(move || StoreLock::acquire(&store, Path::new("/mnt/y"), false).map(|_| ()));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!mount.is_finished(), "the mount waits for the grow");
        drop(grow);
        mount.join().unwrap().unwrap();
        assert!(StoreLock::try_acquire_for_grow(dir.path()).is_ok(), "nothing holds it any more");
    }
}
