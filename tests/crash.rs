//! Crashes and faults for real: kill -9 of the daemon (with ext4 or btrfs
//! inside disk.img), a power cut of the store's filesystem, a full store, a
//! store removed under a live mount, and a writer under memory pressure.
//! Every acknowledged (fsync'ed) record must survive; nothing may panic.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RECORD: usize = 4096;

fn record(i: u64) -> Vec<u8> {
    let mut r = pattern(i + 1000, RECORD);
    r[..12].copy_from_slice(format!("REC{i:09}").as_bytes());
    r
}

/// Appends fsync'ed records to `path` until told to stop or an error; returns
/// the indices whose fdatasync succeeded.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(vec![]));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let Ok(f) = fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o644).open(&path) else {
                return;
            };
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                if f.write_all_at(&record(i), i * RECORD as u64).is_err() || f.sync_data().is_err() {
                    return;
                }
                a.lock().unwrap().push(i);
                i += 1;
            }
        });
        Writer { stop, acked, thread: Some(thread) }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` records are acknowledged, however loaded the machine.
    fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.acked_count() < n {
            assert!(!self.thread.as_ref().unwrap().is_finished(), "writer failed before the crash");
            assert!(Instant::now() < deadline, "writer acknowledged only {} records in 120 s", self.acked_count());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.thread.as_ref().unwrap().is_finished() {
            assert!(Instant::now() < deadline, "writer hung after the crash");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.thread.take().unwrap().join().unwrap();
        self.acked.lock().unwrap().clone()
    }
}

fn wait_pid_gone(pid: i32) {
    wait_until(&format!("pid {pid} to exit"), Duration::from_secs(20), || !Path::new(&format!("/proc/{pid}")).exists());
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_pid_gone(pid);
}

/// A pseudo-random pause so the crash lands at a different point each run.
fn random_pause(min_ms: u64, span_ms: u64) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    std::thread::sleep(Duration::from_millis(min_ms + nanos % span_ms));
}

/// The filesystem inside disk.img that the crash tests write to: how to make
/// it, recover it after a crash (journal or log replay), and check it.
struct InnerFs {
    /// Where its tools come from.
    package: &'static str,
    /// The command that makes it; the device is appended.
    mkfs: &'static [&'static str],
    replay: Replay,
    /// A read-only check that must come out clean after the replay; the
    /// device is appended.
    fsck: &'static [&'static str],
}

enum Replay {
    /// A repairing fsck replays the journal (exit 1, "errors corrected", is
    /// fine); the device is appended.
    Fsck(&'static [&'static str]),
    /// Mounting replays the log (and unmounting writes the result back).
    Mount,
}

const EXT4: InnerFs = InnerFs {
    package: "e2fsprogs",
    mkfs: &["mkfs.ext4", "-q"],
    replay: Replay::Fsck(&["e2fsck", "-fy"]),
    fsck: &["e2fsck", "-fn"],
};

const BTRFS: InnerFs = InnerFs {
    package: "btrfs-progs",
    mkfs: &["mkfs.btrfs", "-f", "-q"],
    replay: Replay::Mount,
    fsck: &["btrfs", "check", "--readonly"],
};

impl InnerFs {
    /// Fails at once, naming the package, if a tool is missing.
    fn require_tools(&self) {
        for program in [self.mkfs[0], self.fsck[0]] {
            require_program(program, self.package);
        }
    }

    fn mkfs(&self, dev: &str) {
        run(self.mkfs[0], &[&self.mkfs[1..], &[dev]].concat());
    }

    /// Replays the journal or log on `dev`, then checks it read-only.
    fn recover_and_check(&self, dev: &str, dir: &Path) {
        match self.replay {
            Replay::Fsck(fsck) => {
                let replay = Command::new(fsck[0]).args(&fsck[1..]).arg(dev).output().unwrap();
                assert!(
                    replay.status.code().unwrap_or(8) <= 1,
                    "{fsck:?}: {}",
                    String::from_utf8_lossy(&replay.stdout)
                );
            }
            Replay::Mount => DevMount::new(dev, dir).unmount(),
        }
        let check = Command::new(self.fsck[0]).args(&self.fsck[1..]).arg(dev).output().unwrap();
        assert!(
            check.status.success(),
            "{:?} after replay: {}{}",
            self.fsck,
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

/// Checks the inner filesystem after a crash (replay, then a clean
/// read-only check) and that every acknowledged record is intact.
fn verify_after_crash(inner_fs: &InnerFs, store: &Path, mnt: &Path, ext: &Path, acked: &[u64]) {
    let onefs = OnefsMount::new(store, mnt, &[]);
    let dev = Loop::attach(&onefs.disk(), &[]);
    inner_fs.recover_and_check(&dev.0, ext);
    let inner = DevMount::new(&dev.0, ext);
    let log = fs::read(ext.join("log")).unwrap_or_default();
    for &i in acked {
        let at = i as usize * RECORD;
        assert!(log.len() >= at + RECORD, "acknowledged record {i} missing (log is {} bytes)", log.len());
        assert!(log[at..at + RECORD] == record(i)[..], "acknowledged record {i} damaged");
    }
    inner.unmount();
    dev.detach();
    onefs.unmount();
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    kill_9_under_an_fsyncing_writer(&EXT4);
}

#[test]
fn kill_9_loses_no_acknowledged_write_on_btrfs() {
    kill_9_under_an_fsyncing_writer(&BTRFS);
}

/// `kill -9` of the daemon while a writer appends fsync'ed records to a
/// file on `inner_fs` in disk.img: every acknowledged record survives.
fn kill_9_under_an_fsyncing_writer(inner_fs: &InnerFs) {
    inner_fs.require_tools();
    let s = Scratch::new();
    let (store, mnt, ext) = (s.path("store"), s.dir("mnt"), s.dir("ext"));
    create(&store, "512M", "1M");
    let acked = {
        let onefs = OnefsMount::new(&store, &mnt, &[]);
        let dev = Loop::attach(&onefs.disk(), &[]);
        inner_fs.mkfs(&dev.0);
        let inner = DevMount::new(&dev.0, &ext);
        let writer = Writer::start(ext.join("log"));
        writer.wait_for(20);
        random_pause(0, 500);
        kill9(onefs.pid());
        let acked = writer.finish();
        drop(inner);
        drop(dev);
        drop(onefs);
        acked
    };
    assert!(acked.len() > 10, "the writer got going before the crash ({} records)", acked.len());
    verify_after_crash(inner_fs, &store, &mnt, &ext, &acked);
}

/// An ext4 of its own for the store, so its power can be cut alone.
struct StoreFs {
    dir: PathBuf,
    _mount: DevMount,
    _dev: Loop,
}

impl StoreFs {
    fn new(s: &Scratch, size: &str) -> (Self, PathBuf) {
        let image = s.path("storefs.img");
        run("truncate", &["-s", size, image.to_str().unwrap()]);
        run("mkfs.ext4", &["-q", image.to_str().unwrap()]);
        let dev = Loop::attach(&image, &[]);
        let dir = s.dir("storefs");
        let mount = DevMount::new(&dev.0, &dir);
        (StoreFs { dir: dir.clone(), _mount: mount, _dev: dev }, dir.join("store"))
    }
}

#[test]
fn power_cut_of_the_store_loses_no_acknowledged_write() {
    let s = Scratch::new();
    let (storefs, store) = StoreFs::new(&s, "1G");
    let (mnt, ext) = (s.dir("mnt"), s.dir("ext"));
    create(&store, "512M", "1M");
    let acked = {
        let onefs = OnefsMount::new(&store, &mnt, &[]);
        let dev = Loop::attach(&onefs.disk(), &["--direct-io=on"]);
        run("mkfs.ext4", &["-q", &dev.0]);
        let inner = DevMount::new(&dev.0, &ext);
        run("sync", &[]);
        let writer = Writer::start(ext.join("log"));
        writer.wait_for(20);
        random_pause(0, 500);
        // The power cut: nothing the store's filesystem had not made durable survives.
        let pid = onefs.pid();
        let before = writer.acked_count();
        run("xfs_io", &["-x", "-c", "shutdown", storefs.dir.to_str().unwrap()]);
        kill9(pid);
        let acked = writer.finish();
        assert!(acked.len() >= before);
        drop(inner);
        drop(dev);
        let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
        std::mem::forget(onefs);
        // Only what was acknowledged before the cut began must survive. The
        // shutdown ioctl is not quite a power cut: an ext4 fsync already past
        // its shutdown check when the journal is aborted can still return 0
        // (jbd2_complete_transaction counts a transaction that is neither
        // running nor committing as committed, and an aborted one is
        // neither). onefs's fsync then succeeds and a record written during
        // the cut is acknowledged though the store never committed it; a real
        // power cut would have stopped that acknowledgement. Seen in about 1
        // run in 40 (trace: acknowledged at the moment the ioctl returned).
        acked[..before].to_vec()
    };
    // Power back on: remount the store's filesystem (journal replay).
    let dev = storefs._dev.0.clone();
    run("umount", &[storefs.dir.to_str().unwrap()]);
    run("mount", &[&dev, storefs.dir.to_str().unwrap()]);
    assert!(acked.len() > 10, "the writer got going before the power cut ({} records)", acked.len());
    verify_after_crash(&EXT4, &store, &mnt, &ext, &acked);
    drop(storefs);
}

#[test]
fn a_full_store_gives_enospc_and_keeps_what_was_stored() {
    let s = Scratch::new();
    let (storefs, store) = StoreFs::new(&s, "64M");
    let mnt = s.dir("mnt");
    create(&store, "1G", "1M");
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    let f = fs::OpenOptions::new().write(true).open(onefs.disk()).unwrap();
    let mut synced = 0u64;
    let errno = loop {
        let chunk = pattern(synced, MIB as usize);
        if let Err(e) = f.write_all_at(&chunk, synced * MIB).and_then(|()| f.sync_data()) {
            break e.raw_os_error();
        }
        synced += 1;
        assert!(synced < 200, "a 64 MiB store took 200 MiB");
    };
    assert_eq!(errno, Some(libc::ENOSPC));
    assert!(synced > 20, "only {synced} MiB fit");
    drop(f);
    onefs.unmount();
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    for i in 0..synced {
        assert!(pread(&onefs.disk(), i * MIB, MIB as usize) == pattern(i, MIB as usize), "block {i} damaged by ENOSPC");
    }
    onefs.unmount();
    drop(storefs);
}

#[test]
fn a_store_removed_under_a_live_mount_gives_errors_not_a_crash() {
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "64M", "1M");
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    pwrite(&onefs.disk(), 0, b"before");
    let pid = onefs.pid();
    // The whole directory, gone: onefs works from the descriptor it holds
    // (a rename changes nothing), and nothing can be created in a removed
    // directory.
    fs::remove_dir_all(&store).unwrap();
    let f = fs::OpenOptions::new().write(true).open(onefs.disk()).unwrap();
    let result = f.write_all_at(b"after", 10 * MIB).and_then(|()| f.sync_all());
    assert!(result.is_err(), "writing into a removed store succeeded");
    drop(f);
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "daemon died");
    run("umount", &[mnt.to_str().unwrap()]);
    wait_pid_gone(pid);
    std::mem::forget(onefs);
}

#[test]
fn a_writer_under_memory_pressure_finishes_with_its_data_intact() {
    let s = Scratch::new();
    let (store, mnt, ext) = (s.path("store"), s.dir("mnt"), s.dir("ext"));
    create(&store, "1G", "1M");
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    let dev = Loop::attach(&onefs.disk(), &[]);
    run("mkfs.ext4", &["-q", &dev.0]);
    let inner = DevMount::new(&dev.0, &ext);

    let limit = 32 * MIB;
    let group = MemoryGroup::new(&s, limit);
    let data = ext.join("big");
    let script = format!(
        "echo $$ > {procs}; head -c {size} /dev/urandom > {out}.tmp && dd if={out}.tmp of={out} bs=1M conv=fsync status=none && sha256sum {out}.tmp",
        procs = group.procs.display(),
        size = 8 * limit,
        out = data.display()
    );
    let started = Instant::now();
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "writer in a {limit}-byte cgroup failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(300));
    let expected = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string();
    drop(group);
    inner.unmount();
    dev.detach();
    onefs.unmount();

    let onefs = OnefsMount::new(&store, &mnt, &[]);
    let dev = Loop::attach(&onefs.disk(), &[]);
    let inner = DevMount::new(&dev.0, &ext);
    assert_eq!(sha256(&data), expected);
    inner.unmount();
    dev.detach();
    onefs.unmount();
}

/// A memory cgroup (v1 where the controller lives there, else v2).
struct MemoryGroup {
    path: PathBuf,
    procs: PathBuf,
}

impl MemoryGroup {
    fn new(s: &Scratch, limit: u64) -> Self {
        let name = s.path("").file_name().unwrap().to_string_lossy().into_owned();
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (path, file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(&name), "memory.limit_in_bytes")
        } else {
            (Path::new("/sys/fs/cgroup").join(&name), "memory.max")
        };
        fs::create_dir(&path).expect("create memory cgroup");
        fs::write(path.join(file), limit.to_string()).expect("set memory limit");
        MemoryGroup { procs: path.join("cgroup.procs"), path }
    }
}

impl Drop for MemoryGroup {
    fn drop(&mut self) {
        // Move anything left back to the root group, then remove ours.
        if let Ok(pids) = fs::read_to_string(&self.procs) {
            let root = self.path.parent().unwrap().join("cgroup.procs");
            for pid in pids.lines() {
                let _ = fs::write(&root, pid);
            }
        }
        let _ = fs::remove_dir(&self.path);
    }
}

#[test]
fn temporaries_left_by_a_crash_are_removed_on_mount() {
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "8M", "1M");
    fs::write(store.join(".onefs.json.tmp"), b"half a description").unwrap();
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    assert!(!store.join(".onefs.json.tmp").exists());
    assert!(store.join("onefs.json").exists());
    onefs.unmount();
}

#[test]
fn a_store_turned_read_only_under_a_live_mount_gives_errors_not_a_crash() {
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "64M", "1M");
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    pwrite(&onefs.disk(), 0, b"written before");
    onefs.unmount();

    let onefs = OnefsMount::new(&store, &mnt, &[]);
    let pid = onefs.pid();
    // onefs holds the store's directory descriptor, so a read-only bind
    // mount over its path would change nothing; an immutable directory
    // refuses new block files the way a read-only filesystem does.
    let ro = Immutable::set(&store);
    assert_eq!(pread(&onefs.disk(), 0, 14), b"written before", "reads keep working");
    let f = fs::OpenOptions::new().write(true).open(onefs.disk()).unwrap();
    let err = f.write_all_at(b"after", 10 * MIB).and_then(|()| f.sync_all()).expect_err("wrote into a read-only store");
    assert!(matches!(err.raw_os_error(), Some(libc::EROFS | libc::EIO | libc::EPERM)), "{err}");
    drop(f);
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "daemon died");
    onefs.unmount();
    drop(ro);
}
