//! Shared harness for the integration tests. Every resource is a guard
//! that releases itself on drop, so a failing test leaves nothing behind.
//! Declare guards outermost first (onefs mount, loop device, inner mount):
//! Rust drops them in reverse. Use from a test crate with `mod common;`.
//!
//! - here: running onefs and tools, root, scratch directories, waiting,
//!   mountinfo, the store lock, the mount/loop/inner-mount guards, data
//!   patterns, the io_uring knob and a pids cgroup;
//! - [`skip`]: prerequisites a test needs, and `ONEFS_TEST_ALLOW_SKIP`;
//! - [`remote`]: Garage (S3) and rclone servers on loopback.
#![allow(dead_code)]

pub mod remote;
pub mod skip;

use skip::Prereq;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

pub const MIB: u64 = 1 << 20;

pub fn onefs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_onefs")
}

pub fn onefs(args: &[&str]) -> Output {
    Command::new(onefs_bin()).args(args).output().expect("run onefs")
}

/// A path in the source tree.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "these tests mount filesystems or install packages: run them as root");
}

/// Whether `program` is an executable on the PATH.
pub fn has_program(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .any(|dir| fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Fails the test, naming the package, unless `program` is on the PATH: a
/// missing tool must not turn into a skipped test.
pub fn require_program(program: &str, package: &str) {
    assert!(has_program(program), "{program} is not installed: install {package} (scripts/deps does)");
}

/// Whether a real systemd can be booted in a container here (tests/systemd:
/// systemd-nspawn and debootstrap installed). If not, the test fails, or
/// with `ONEFS_TEST_ALLOW_SKIP=systemd` this is false and the test returns.
#[track_caller]
pub fn require_systemd_container() -> bool {
    let missing: Vec<&str> = ["systemd-nspawn", "debootstrap"].into_iter().filter(|p| !has_program(p)).collect();
    skip::require(Prereq::Systemd, missing.is_empty(), &format!("{} not on the PATH", missing.join(" and ")))
}

/// A unique directory under `$ONEFS_TEST_DIR`, else `/var/tmp` (a real disk,
/// not tmpfs), its name starting with `prefix`; removed on drop.
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    let base = std::env::var_os("ONEFS_TEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp"));
    tempfile::Builder::new().prefix(prefix).tempdir_in(&base).unwrap_or_else(|e| panic!("scratch dir in {base:?}: {e}"))
}

/// A scratch directory for a test that mounts (so: root), removed on drop.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    pub fn new() -> Self {
        require_root();
        Scratch(scratch_dir("onefs-test-"))
    }
    pub fn root(&self) -> &Path {
        self.0.path()
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        fs::create_dir_all(&p).expect("mkdir");
        p
    }
}

/// Polls `cond` every 20 ms until it is true (true) or `limit` has passed (false).
pub fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `cond` is true; fails the test, naming `what`, after `limit`.
pub fn wait_until(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    assert!(poll_until(limit, cond), "timed out after {limit:?} waiting for {what}");
}

/// Waits up to `limit` for `child` to exit.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let mut status = None;
    poll_until(limit, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

pub fn create(store: &Path, size: &str, block_size: &str) {
    let out = onefs(&["create", "--size", size, "--block-size", block_size, store.to_str().unwrap()]);
    assert!(out.status.success(), "create failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The mountinfo lines of what is mounted at `path`.
fn mounts_at(path: &Path) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let path = path.to_string_lossy().replace(' ', "\\040");
    text.lines().filter(|l| l.split(' ').nth(4) == Some(path.as_str())).map(str::to_string).collect()
}

/// Something is mounted at `path`.
pub fn is_mountpoint(path: &Path) -> bool {
    !mounts_at(path).is_empty()
}

/// onefs is mounted at `path` (live or dead: after a kill -9 the mount stays).
pub fn is_onefs_mount(path: &Path) -> bool {
    mounts_at(path).iter().any(|l| l.split(" - ").nth(1).is_some_and(|r| r.starts_with("fuse.onefs ")))
}

/// onefs is mounted at `path` and answers (statfs).
pub fn is_live_onefs_mount(path: &Path) -> bool {
    is_onefs_mount(path) && nix::sys::statfs::statfs(path).is_ok()
}

/// Nobody holds the store lock (no onefs serves the store, or none is left).
pub fn store_lock_free(store: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = fs::File::open(store.join("onefs.lock")) else { return true };
    // SAFETY: flock on our own descriptor; closing it releases the lock.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Waits until nobody holds the store lock any more (the daemon exited).
pub fn wait_store_released(store: &Path) {
    wait_until(&format!("onefs for {} to exit", store.display()), Duration::from_secs(20), || store_lock_free(store));
}

pub fn lock_holder_pid(store: &Path) -> i32 {
    let text = fs::read_to_string(store.join("onefs.lock")).expect("lock file");
    text.lines().find_map(|l| l.strip_prefix("pid=")).and_then(|p| p.parse().ok()).expect("pid in lock file")
}

/// A mounted onefs (started with `onefs mount`, detached).
pub struct OnefsMount {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
}

impl OnefsMount {
    pub fn new(store: &Path, mountpoint: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["mount"];
        args.extend_from_slice(extra);
        args.extend([store.to_str().unwrap(), mountpoint.to_str().unwrap()]);
        Self::start(Command::new(onefs_bin()).args(&args), store, mountpoint)
    }

    /// Runs `mount`, a `onefs mount` command line (wrapped as the caller likes).
    pub fn start(mount: &mut Command, store: &Path, mountpoint: &Path) -> Self {
        let steady = knob_steady();
        let out = mount.output().expect("run onefs mount");
        drop(steady);
        assert!(out.status.success(), "mount failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        assert!(is_mountpoint(mountpoint), "onefs mount returned before the mount was live");
        OnefsMount { store: store.to_path_buf(), mountpoint: mountpoint.to_path_buf() }
    }

    pub fn disk(&self) -> PathBuf {
        self.mountpoint.join("disk.img")
    }

    pub fn pid(&self) -> i32 {
        lock_holder_pid(&self.store)
    }

    /// Unmounts and waits for the daemon to finish.
    /// Unmounts and waits for the daemon to finish. A mount that is busy
    /// for a moment (a descriptor of disk.img still being released by the
    /// kernel, another test's `blkid` or `udev` probe) is tried again for a
    /// few seconds; one that stays busy fails the test.
    pub fn unmount(self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = Command::new("umount").arg(&self.mountpoint).output().expect("umount");
            if out.status.success() {
                break;
            }
            let busy = String::from_utf8_lossy(&out.stderr).contains("busy");
            assert!(
                busy && Instant::now() < deadline,
                "umount {} failed: {}",
                self.mountpoint.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        wait_store_released(&self.store);
        std::mem::forget(self);
    }
}

impl Drop for OnefsMount {
    fn drop(&mut self) {
        if is_mountpoint(&self.mountpoint)
            && Command::new("umount").arg(&self.mountpoint).status().map_or(true, |s| !s.success())
        {
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
        // A dead mount (after kill -9) is not in the way of removing the dir
        // once lazily unmounted.
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        wait_store_released(&self.store);
    }
}

/// A loop device attached to a file.
pub struct Loop(pub String);

impl Loop {
    pub fn attach(file: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["-f", "--show"];
        args.extend_from_slice(extra);
        args.push(file.to_str().unwrap());
        Loop(run("losetup", &args).trim().to_string())
    }
    /// Detaches and waits until the device has let go of its file. While
    /// anybody else holds the device open (udev probing it after an
    /// unmount), `losetup -d` only marks it for auto-clear and returns, and
    /// the file it holds would make the next `umount` fail with EBUSY.
    pub fn detach(self) {
        run("losetup", &["-d", &self.0]);
        assert!(self.wait_released(Duration::from_secs(20)), "{} still holds its file 20 s after losetup -d", self.0);
        std::mem::forget(self);
    }

    fn wait_released(&self, timeout: Duration) -> bool {
        let name = self.0.trim_start_matches("/dev/");
        let backing = PathBuf::from(format!("/sys/block/{name}/loop/backing_file"));
        poll_until(timeout, || !backing.exists())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
        self.wait_released(Duration::from_secs(5));
    }
}

/// A block device mounted somewhere (the ext4 inside disk.img).
pub struct DevMount(pub PathBuf);

impl DevMount {
    pub fn new(dev: &str, dir: &Path) -> Self {
        run("mount", &[dev, dir.to_str().unwrap()]);
        DevMount(dir.to_path_buf())
    }
    /// Mounts with `-o OPTIONS`.
    pub fn with_options(dev: &str, dir: &Path, options: &str) -> Self {
        run("mount", &["-o", options, dev, dir.to_str().unwrap()]);
        DevMount(dir.to_path_buf())
    }
    pub fn unmount(self) {
        run("umount", &[self.0.to_str().unwrap()]);
        std::mem::forget(self);
    }

    /// Makes `dir` read-only in place (a read-only bind mount over itself).
    pub fn bind_read_only(dir: &Path) -> Self {
        let d = dir.to_str().unwrap();
        run("mount", &["--bind", d, d]);
        let guard = DevMount(dir.to_path_buf());
        run("mount", &["-o", "remount,bind,ro", d]);
        guard
    }
}

impl Drop for DevMount {
    fn drop(&mut self) {
        if Command::new("umount").arg(&self.0).status().map_or(true, |s| !s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), never all zero.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha256(path: &Path) -> String {
    run("sha256sum", &[path.to_str().unwrap()]).split_whitespace().next().unwrap_or_default().to_string()
}

/// Block files in a store, sorted by name.
pub fn block_files(store: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store)
        .expect("list store")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("blk-"))
        .collect();
    names.sort();
    names
}

/// What a store holds: block files, and the bytes they really take on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub files: usize,
    pub bytes: u64,
}

impl Stored {
    pub fn of(store: &Path) -> Self {
        let names = block_files(store);
        let bytes = names.iter().map(|n| fs::metadata(store.join(n)).map_or(0, |m| m.blocks() * 512)).sum();
        Stored { files: names.len(), bytes }
    }
}

/// The store invariant, checked through a mounted `disk`: every block file
/// holds exactly its byte range of disk.img, no block file lies past its end,
/// and every block without a file reads as zeros. Reads a block at a time.
pub fn assert_store_matches_image(store: &Path, disk: &Path, block_size: u64) {
    let image = fs::File::open(disk).expect("open disk.img");
    let size = image.metadata().expect("stat disk.img").len();
    assert_eq!(size % block_size, 0, "disk.img is not a whole number of blocks");
    let count = size / block_size;
    let files: std::collections::BTreeMap<u64, String> = block_files(store)
        .into_iter()
        .map(|name| (name["blk-".len()..].parse().unwrap_or_else(|_| panic!("{name}: no block number")), name))
        .collect();
    if let Some((&number, name)) = files.iter().find(|&(&n, _)| n == 0 || n > count) {
        panic!("{name} (block {number}) lies outside a disk.img of {count} blocks");
    }
    let mut range = vec![0u8; block_size as usize];
    for block in 0..count {
        image.read_exact_at(&mut range, block * block_size).expect("read disk.img");
        match files.get(&(block + 1)) {
            Some(name) => {
                let raw = fs::read(store.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
                assert!(raw == range, "{name} differs from its range of disk.img");
            }
            None => assert!(range.iter().all(|&b| b == 0), "block {block} has data but no file"),
        }
    }
}

pub fn pwrite(path: &Path, offset: u64, data: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).expect("open for write");
    f.write_all_at(data, offset).expect("pwrite");
    f.sync_all().expect("fsync");
}

pub fn pread(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = fs::File::open(path).expect("open for read");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).expect("pread");
    buf
}

/// Everything in a directory (names and contents), to prove nothing changed.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let data = fs::read(e.path()).unwrap_or_default();
            out.push((name, data));
        }
    }
    out.sort();
    out
}

/// Which way requests reach the daemon: fuser's `/dev/fuse` loop, or FUSE
/// over io_uring (needs [`RingKnob::set`]`(true)` held).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    DevFuse,
    Ring,
}

impl Transport {
    /// Mounts with this transport and checks that it is the one in use.
    pub fn mount(self, store: &Path, mountpoint: &Path) -> OnefsMount {
        let option = match self {
            Transport::DevFuse => "io_uring=off",
            Transport::Ring => "io_uring=on",
        };
        let mount = OnefsMount::new(store, mountpoint, &["-o", option]);
        let rings = ring_threads(mount.pid());
        match self {
            Transport::DevFuse => assert_eq!(rings, 0, "io_uring=off mounted with ring threads"),
            Transport::Ring => assert!(rings > 0, "io_uring=on mounted without ring threads"),
        }
        mount
    }
}

/// Threads of `pid` serving FUSE io_uring queues (named `ring-Q.N`).
pub fn ring_threads(pid: i32) -> usize {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("ring-"))
        .count()
}

pub const RING_KNOB: &str = "/sys/module/fuse/parameters/enable_uring";

/// Holds the fuse module's `enable_uring` at a value for the life of the
/// guard, then puts the old value back. The parameter is machine-wide, so
/// the guards of all test processes take one lock file in turn.
pub struct RingKnob {
    previous: String,
    _lock: nix::fcntl::Flock<fs::File>,
}

impl RingKnob {
    /// On a kernel without FUSE over io_uring the test fails here, or with
    /// `ONEFS_TEST_ALLOW_SKIP=io_uring` this is `None` (said on the
    /// terminal) and the test returns: see [`skip`].
    #[track_caller]
    pub fn set(on: bool) -> Option<Self> {
        let missing = format!("this kernel has no FUSE over io_uring ({RING_KNOB} is missing)");
        if !skip::require(Prereq::IoUring, Path::new(RING_KNOB).exists(), &missing) {
            return None;
        }
        let lock = lock_knob(nix::fcntl::FlockArg::LockExclusive);
        let previous = fs::read_to_string(RING_KNOB).expect("read enable_uring").trim().to_string();
        fs::write(RING_KNOB, if on { "Y" } else { "N" }).expect("set enable_uring");
        HOLDS_KNOB.set(true);
        Some(RingKnob { previous, _lock: lock })
    }
}

impl Drop for RingKnob {
    fn drop(&mut self) {
        let _ = fs::write(RING_KNOB, &self.previous);
        HOLDS_KNOB.set(false);
    }
}

thread_local! {
    /// This test holds a [`RingKnob`] (tests run a thread each).
    static HOLDS_KNOB: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn lock_knob(how: nix::fcntl::FlockArg) -> nix::fcntl::Flock<fs::File> {
    let file = fs::File::create("/tmp/onefs-tests-enable-uring.lock").expect("knob lock file");
    nix::fcntl::Flock::lock(file, how).map_err(|(_, e)| e).expect("lock the knob")
}

/// Keeps `enable_uring` from changing while a mount starts. A mount that
/// asks for io_uring and sees the kernel agree at INIT cannot register its
/// queues if another test turns the parameter off in between (the kernel
/// then refuses them and holds every request). `None` inside a test that
/// holds the knob itself.
pub fn knob_steady() -> Option<nix::fcntl::Flock<fs::File>> {
    (!HOLDS_KNOB.get()).then(|| lock_knob(nix::fcntl::FlockArg::LockShared))
}

/// A pids cgroup of its own (cgroup v2, or v1's pids hierarchy), in which a
/// process can be kept from starting threads as systemd's `TasksMax` does.
/// Removed on drop: declare it before the mounts started in it.
pub struct PidsCgroup(PathBuf);

impl PidsCgroup {
    /// Where there is no pids controller the test fails here, or with
    /// `ONEFS_TEST_ALLOW_SKIP=pids_cgroup` this is `None` (said on the
    /// terminal) and the test returns: see [`skip`].
    #[track_caller]
    pub fn new() -> Option<Self> {
        let v2 = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|list| list.split_whitespace().any(|c| c == "pids"));
        let parent = if v2 {
            // A child group gets the controller only if its parent hands it down.
            let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+pids");
            PathBuf::from("/sys/fs/cgroup")
        } else if Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists() {
            PathBuf::from("/sys/fs/cgroup/pids")
        } else {
            let missing =
                "no pids cgroup controller (neither in /sys/fs/cgroup/cgroup.controllers nor at /sys/fs/cgroup/pids)";
            skip::require(Prereq::PidsCgroup, false, missing);
            return None;
        };
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent.join(format!("onefs-test-{}-{n}", std::process::id()));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Some(PidsCgroup(dir))
    }

    /// `program args`, run inside the group (`sh` joins it, then execs).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", "echo $$ > \"$0\" && shift && exec \"$@\""]);
        command.arg(self.0.join("cgroup.procs")).arg("--").arg(program).args(args);
        command
    }

    /// Tasks (processes and threads) in the group now.
    pub fn tasks(&self) -> usize {
        let text = fs::read_to_string(self.0.join("pids.current")).expect("pids.current");
        text.trim().parse().expect("a number in pids.current")
    }

    /// From now on no task beyond `max` can start in the group.
    pub fn limit(&self, max: usize) {
        fs::write(self.0.join("pids.max"), max.to_string()).expect("set pids.max");
    }

    pub fn unlimit(&self) {
        let _ = fs::write(self.0.join("pids.max"), "max");
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        self.unlimit();
        // The daemons in it exit shortly after their unmount.
        poll_until(Duration::from_secs(10), || fs::remove_dir(&self.0).is_ok());
    }
}

/// Possible CPUs, as the kernel counts its FUSE io_uring queues.
pub fn possible_cpus() -> usize {
    count_cpus("possible")
}

/// Online CPUs, over whose queues onefs spreads its ring entries.
pub fn online_cpus() -> usize {
    count_cpus("online")
}

fn count_cpus(which: &str) -> usize {
    let list = fs::read_to_string(format!("/sys/devices/system/cpu/{which}")).expect("CPU list");
    list.trim()
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((lo, hi)) => hi.parse::<usize>().unwrap() - lo.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// Kills whatever still serves `store` and detaches `mountpoint`: the last
/// resort for a test whose mount may hang instead of failing.
pub struct KillOnDrop {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        let holder = fs::read_to_string(self.store.join("onefs.lock"))
            .ok()
            .and_then(|text| text.lines().find_map(|l| l.strip_prefix("pid=")).and_then(|p| p.parse::<i32>().ok()));
        let is_onefs = |pid: &i32| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "onefs");
        if let Some(pid) = holder.filter(is_onefs) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// `chattr +i` on a file or directory (the scratch filesystem must support
/// it), undone on drop so that the scratch directory can be removed.
pub struct Immutable(PathBuf);

impl Immutable {
    pub fn set(path: &Path) -> Self {
        run("chattr", &["+i", path.to_str().unwrap()]);
        Immutable(path.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}
