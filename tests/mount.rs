//! Real mounts: onefs over a store directory, a loop device, ext4 on top.
//! Run as root. Every test uses its own scratch directory and guards.

mod common;

use common::skip::Prereq;
use common::*;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a test body over each transport, as `NAME::over_dev_fuse` and
/// `NAME::over_io_uring` (which needs FUSE over io_uring: see [`RingKnob::set`]).
macro_rules! over_both_transports {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[test]
            fn over_dev_fuse() {
                super::$name(Transport::DevFuse);
            }

            #[test]
            fn over_io_uring() {
                if let Some(_knob) = RingKnob::set(true) {
                    super::$name(Transport::Ring);
                }
            }
        }
    };
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().expect("an OS error")
}

over_both_transports!(ext4_on_onefs_survives_unmount_and_remount);
fn ext4_on_onefs_survives_unmount_and_remount(t: Transport) {
    let s = Scratch::new();
    let (store, mnt, ext) = (s.path("store"), s.dir("mnt"), s.dir("ext"));
    create(&store, "1G", "1M");

    let files = [
        ("big.bin", pattern(1, 9 * MIB as usize + 123)),
        ("one.bin", pattern(2, MIB as usize)),
        ("note.txt", b"hello onefs\n".to_vec()),
    ];
    let mut sums = vec![];
    {
        let onefs = t.mount(&store, &mnt);
        let dev = Loop::attach(&onefs.disk(), &[]);
        run("mkfs.ext4", &["-q", &dev.0]);
        let inner = DevMount::new(&dev.0, &ext);
        for (name, data) in &files {
            let path = ext.join(name);
            fs::write(&path, data).unwrap();
            fs::File::open(&path).unwrap().sync_all().unwrap();
            sums.push(sha256(&path));
        }
        run("sync", &["-f", ext.to_str().unwrap()]);
        inner.unmount();
        dev.detach();
        onefs.unmount();
    }

    // What landed in the store: well-named block files of exactly one block.
    let names = block_files(&store);
    assert!(!names.is_empty());
    for name in &names {
        assert_eq!(name.len(), "blk-".len() + 5, "{name}");
        let number: u64 = name[4..].parse().unwrap();
        assert!((1..=1024).contains(&number), "{name}");
        assert_eq!(fs::metadata(store.join(name)).unwrap().len(), MIB, "{name} is one block");
    }
    let stored: u64 = names.iter().map(|n| fs::metadata(store.join(n)).unwrap().blocks() * 512).sum();
    assert!(stored < 200 * MIB, "a fresh ext4 with 10 MiB of files stores {stored} bytes");

    let onefs = t.mount(&store, &mnt);
    // Every block file holds exactly its byte range of disk.img, and every
    // block without a file reads as zeros.
    assert_eq!(fs::metadata(onefs.disk()).unwrap().len(), 1 << 30);
    assert_store_matches_image(&store, &onefs.disk(), MIB);
    let stat = fs::metadata(onefs.disk()).unwrap();
    assert_eq!(stat.blocks() * 512, names.len() as u64 * MIB, "st_blocks counts stored blocks");

    let dev = Loop::attach(&onefs.disk(), &[]);
    let fsck = Command::new("e2fsck").args(["-fn", &dev.0]).output().unwrap();
    assert!(fsck.status.success(), "e2fsck: {}", String::from_utf8_lossy(&fsck.stdout));
    let inner = DevMount::new(&dev.0, &ext);
    for ((name, _), sum) in files.iter().zip(&sums) {
        assert_eq!(&sha256(&ext.join(name)), sum, "{name} changed across remount");
    }
    inner.unmount();
    dev.detach();
    onefs.unmount();
}

over_both_transports!(raw_writes_map_to_block_files_and_zeros_are_never_stored);
fn raw_writes_map_to_block_files_and_zeros_are_never_stored(t: Transport) {
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "64M", "1M");
    let onefs = t.mount(&store, &mnt);
    let disk = onefs.disk();
    assert_eq!(fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>(), vec!["disk.img"]);
    assert_eq!(fs::metadata(&disk).unwrap().len(), 64 * MIB);

    // Reading never-written blocks returns zeros and creates nothing.
    assert!(pread(&disk, 5 * MIB, 2 * MIB as usize).iter().all(|&b| b == 0));
    assert!(block_files(&store).is_empty());

    // Zeros create nothing, partial or whole.
    pwrite(&disk, 20 * MIB + 7, &[0u8; 5000]);
    pwrite(&disk, 21 * MIB, &vec![0u8; MIB as usize]);
    assert!(block_files(&store).is_empty());

    let before = fs::metadata(&disk).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    pwrite(&disk, 3 * MIB + 100, b"0123456789");
    assert!(fs::metadata(&disk).unwrap().modified().unwrap() > before, "a write moves disk.img's mtime");
    pwrite(&disk, 10 * MIB, &pattern(3, MIB as usize));
    assert_eq!(block_files(&store), vec!["blk-00004", "blk-00011"]);
    let raw = fs::read(store.join("blk-00004")).unwrap();
    assert_eq!(raw.len() as u64, MIB);
    assert_eq!(&raw[100..110], b"0123456789");
    assert!(raw[..100].iter().chain(&raw[110..]).all(|&b| b == 0));
    assert_eq!(fs::read(store.join("blk-00011")).unwrap(), pattern(3, MIB as usize));
    assert_eq!(fs::metadata(&disk).unwrap().blocks() * 512, 2 * MIB);

    // A full-block zero write deletes the block; so does zeroing its only data.
    pwrite(&disk, 10 * MIB, &vec![0u8; MIB as usize]);
    assert_eq!(block_files(&store), vec!["blk-00004"]);
    pwrite(&disk, 3 * MIB + 100, &[0u8; 10]);
    assert!(block_files(&store).is_empty());

    // Punch and zero-range free whole blocks and zero partial ones.
    pwrite(&disk, 0, &pattern(4, 3 * MIB as usize));
    let f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    let punch = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
    nix::fcntl::fallocate(&f, punch, (MIB / 2) as i64, MIB as i64 * 2).unwrap();
    assert_eq!(block_files(&store), vec!["blk-00001", "blk-00003"]);
    let zero = nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
    nix::fcntl::fallocate(&f, zero, 0, (MIB / 2) as i64).unwrap();
    nix::fcntl::fallocate(&f, zero, (2 * MIB + MIB / 2) as i64, (MIB / 2) as i64).unwrap();
    assert!(block_files(&store).is_empty(), "{:?}", block_files(&store));
    let mut expect = pattern(4, 3 * MIB as usize);
    expect[..].fill(0);
    assert_eq!(pread(&disk, 0, 3 * MIB as usize), expect);
    drop(f);
    onefs.unmount();
}

over_both_transports!(seek_data_and_seek_hole_follow_stored_blocks);
fn seek_data_and_seek_hole_follow_stored_blocks(t: Transport) {
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "16M", "1M");
    let onefs = t.mount(&store, &mnt);
    let disk = onefs.disk();
    for block in [5u64, 6, 9] {
        pwrite(&disk, block * MIB + 17, b"data");
    }
    let f = fs::File::open(&disk).unwrap();
    let seek = |off: u64, whence| nix::unistd::lseek(&f, off as i64, whence).map(|o| o as u64);
    use nix::unistd::Whence::{SeekData, SeekHole};
    assert_eq!(seek(0, SeekData), Ok(5 * MIB));
    assert_eq!(seek(5 * MIB + 3, SeekData), Ok(5 * MIB + 3));
    assert_eq!(seek(5 * MIB, SeekHole), Ok(7 * MIB));
    assert_eq!(seek(7 * MIB, SeekData), Ok(9 * MIB));
    assert_eq!(seek(9 * MIB, SeekHole), Ok(10 * MIB));
    assert_eq!(seek(10 * MIB, SeekData), Err(nix::errno::Errno::ENXIO));
    assert_eq!(seek(16 * MIB, SeekHole), Err(nix::errno::Errno::ENXIO));

    // A sparse-aware copy skips the holes.
    let copy = s.path("copy.img");
    run("cp", &["--sparse=always", disk.to_str().unwrap(), copy.to_str().unwrap()]);
    assert!(fs::metadata(&copy).unwrap().blocks() * 512 <= 3 * MIB, "cp --sparse copied holes");
    assert_eq!(fs::read(&copy).unwrap(), fs::read(&disk).unwrap());
    drop(f);
    onefs.unmount();
}

over_both_transports!(size_and_namespace_are_fixed);
fn size_and_namespace_are_fixed(t: Transport) {
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "8M", "1M");
    let onefs = t.mount(&store, &mnt);
    let disk = onefs.disk();
    let f = fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
    assert_eq!(errno_of(f.write_at(b"x", 8 * MIB)), libc::EFBIG);
    assert_eq!(f.write_at(b"xyz", 8 * MIB - 2).unwrap(), 2, "a write across the end stops there");
    assert_eq!(errno_of(f.set_len(4 * MIB)), libc::EPERM);
    assert_eq!(errno_of(f.set_len(16 * MIB)), libc::EFBIG);
    assert_eq!(errno_of(fs::write(mnt.join("other"), b"x")), libc::EPERM);
    assert_eq!(errno_of(fs::create_dir(mnt.join("dir"))), libc::EPERM);
    assert_eq!(errno_of(fs::remove_file(&disk)), libc::EPERM);
    assert_eq!(errno_of(fs::rename(&disk, mnt.join("x.img"))), libc::EPERM);
    assert_eq!(errno_of(fs::OpenOptions::new().write(true).truncate(true).open(&disk)), libc::EPERM);
    assert_eq!(fs::metadata(&disk).unwrap().len(), 8 * MIB);
    assert_eq!(fs::metadata(&disk).unwrap().mode() & 0o7777, 0o600, "disk.img is 0600 by default");
    // No extended attributes: ENODATA, not ENOSYS (which floods logs).
    let name = std::ffi::CString::new("user.test").unwrap();
    let path = std::ffi::CString::new(disk.to_str().unwrap()).unwrap();
    // SAFETY: valid C strings and a null buffer of size 0.
    let rc = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(rc, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENODATA));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0) }, 0);
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts.lines().find(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap())).expect("in /proc/mounts");
    assert_eq!(line.split(' ').nth(2), Some("fuse.onefs"), "{line}");
    assert_eq!(line.split(' ').next(), Some(store.to_str().unwrap()), "{line}");
    drop(f);
    onefs.unmount();
}

over_both_transports!(fstrim_after_deleting_files_shrinks_the_store);
fn fstrim_after_deleting_files_shrinks_the_store(t: Transport) {
    let s = Scratch::new();
    let (store, mnt, ext) = (s.path("store"), s.dir("mnt"), s.dir("ext"));
    create(&store, "512M", "1M");
    let onefs = t.mount(&store, &mnt);
    let dev = Loop::attach(&onefs.disk(), &[]);
    run("mkfs.ext4", &["-q", &dev.0]);
    let after_mkfs = block_files(&store).len();
    let inner = DevMount::new(&dev.0, &ext);
    fs::write(ext.join("data"), pattern(5, 64 * MIB as usize)).unwrap();
    run("sync", &["-f", ext.to_str().unwrap()]);
    let full = block_files(&store).len();
    assert!(full >= after_mkfs + 60, "64 MiB of data stored ({after_mkfs} -> {full} blocks)");
    fs::remove_file(ext.join("data")).unwrap();
    run("sync", &["-f", ext.to_str().unwrap()]);
    run("fstrim", &[ext.to_str().unwrap()]);
    let trimmed = block_files(&store).len();
    assert!(trimmed + 60 <= full, "fstrim freed blocks ({full} -> {trimmed})");
    inner.unmount();
    dev.detach();
    onefs.unmount();
}

#[test]
fn mkfs_of_a_terabyte_image_stores_little() {
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "1T", "4M");
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    let dev = Loop::attach(&onefs.disk(), &[]);
    run("mkfs.ext4", &["-q", &dev.0]);
    dev.detach();
    let bytes: u64 = block_files(&store).iter().map(|n| fs::metadata(store.join(n)).unwrap().blocks() * 512).sum();
    assert!(bytes < 256 * MIB, "mkfs.ext4 of 1 TiB stored {bytes} bytes");
    onefs.unmount();
}

#[test]
fn a_store_mounts_once_and_a_mountpoint_holds_one_mount() {
    let s = Scratch::new();
    let (store, other, mnt, mnt2) = (s.path("store"), s.path("other"), s.dir("mnt"), s.dir("mnt2"));
    create(&store, "8M", "1M");
    create(&other, "8M", "1M");
    let first = OnefsMount::new(&store, &mnt, &[]);

    let out = onefs(&["mount", store.to_str().unwrap(), mnt2.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("already mounted") && err.contains(mnt.to_str().unwrap()), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = onefs(&["mount", other.to_str().unwrap(), mnt.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("already a mount point"), "{err}");
    first.unmount();
}

#[test]
fn kill_9_leaves_a_dead_mount_that_the_next_mount_clears() {
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "8M", "1M");
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    pwrite(&onefs.disk(), 2 * MIB, b"survives kill -9");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(onefs.pid()), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_store_released(&store);
    // statfs, not stat: stat may answer from the attribute cache for a second.
    assert_eq!(nix::sys::statfs::statfs(&mnt).map(|_| ()), Err(nix::errno::Errno::ENOTCONN));
    drop(onefs);

    // Make the dead mount again (drop cleared it) and let onefs clear it.
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(onefs.pid()), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_store_released(&store);
    // Keep the dead mount for the next `onefs mount` to clear, but never
    // leak it if that fails.
    std::mem::forget(onefs);
    let _dead = LazyUnmount(mnt.clone());
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    assert_eq!(pread(&onefs.disk(), 2 * MIB, 16), b"survives kill -9");
    onefs.unmount();
}

#[test]
fn sigterm_stops_a_foreground_mount_cleanly() {
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "8M", "1M");
    let steady = knob_steady();
    let mut child = Command::new(onefs_bin())
        .args(["mount", "--foreground", store.to_str().unwrap(), mnt.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = OnefsMount { store: store.clone(), mountpoint: mnt.clone() };
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::metadata(guard.disk()).is_err() {
        assert!(Instant::now() < deadline, "foreground mount never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(steady);
    fs::OpenOptions::new().write(true).open(guard.disk()).unwrap().write_all_at(b"flushed on exit", MIB).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(fs::metadata(mnt.join("disk.img")).is_err(), "still mounted");
    assert_eq!(&fs::read(store.join("blk-00002")).unwrap()[..15], b"flushed on exit");
    drop(guard);
}

#[test]
fn a_busy_mount_detaches_lazily_and_serves_until_the_loop_device_lets_go() {
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "8M", "1M");
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    pwrite(&onefs.disk(), 0, b"still served");
    let dev = Loop::attach(&onefs.disk(), &[]);
    let pid = onefs.pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::metadata(mnt.join("disk.img")).is_ok() {
        assert!(Instant::now() < deadline, "mount was not detached");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Detached from the tree, yet the daemon still serves the loop device.
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "daemon exited while a loop device held disk.img");
    let mut buf = [0u8; 12];
    let devf = fs::File::open(&dev.0).unwrap();
    devf.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"still served");
    drop(devf);
    dev.detach();
    wait_store_released(&store);
    std::mem::forget(onefs);
}

#[test]
fn mount_right_after_umount_waits_for_the_old_daemon() {
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "256M", "1M");
    for round in 0..3u64 {
        let onefs = OnefsMount::new(&store, &mnt, &[]);
        {
            let f = fs::OpenOptions::new().write(true).open(onefs.disk()).unwrap();
            f.write_all_at(&pattern(round, 64 * MIB as usize), 0).unwrap();
        }
        // No wait for the daemon: the next mount must cope.
        run("umount", &[mnt.to_str().unwrap()]);
        std::mem::forget(onefs);
    }
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    assert_eq!(pread(&onefs.disk(), 0, 4096), pattern(2, 4096));
    onefs.unmount();
}

/// Detaches whatever is mounted at a path when dropped.
struct LazyUnmount(std::path::PathBuf);

impl Drop for LazyUnmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn io_uring_on_is_refused_in_one_line_when_the_kernel_does_not_offer_it() {
    let Some(_knob) = RingKnob::set(false) else { return };
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "16M", "1M");
    let before = snapshot(&store);
    let out = onefs(&["mount", "-o", "io_uring=on", store.to_str().unwrap(), mnt.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted without io_uring: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("enable_uring is N") && err.contains("io_uring=on"), "{err}");
    assert!(!is_mountpoint(&mnt));
    wait_store_released(&store);
    assert_eq!(snapshot(&store), before, "a refused mount changes nothing");

    // The default (auto) serves through /dev/fuse instead.
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    assert_eq!(ring_threads(onefs.pid()), 0);
    pwrite(&onefs.disk(), 3 * MIB, b"still a disk");
    assert_eq!(pread(&onefs.disk(), 3 * MIB, 12), b"still a disk");
    onefs.unmount();
}

/// A pids limit (systemd's `TasksMax`) can leave the daemon unable to start
/// a thread. An fsync spreads its work over threads; it must then do the
/// work itself, not fail, and certainly not forget the blocks it took to flush.
#[test]
fn fsync_works_when_no_thread_can_be_started() {
    let Some(cgroup) = PidsCgroup::new() else { return };
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "64M", "1M");
    let args = ["mount", "-o", "io_uring=off", store.to_str().unwrap(), mnt.to_str().unwrap()];
    let onefs = OnefsMount::start(&mut cgroup.command(onefs_bin(), &args), &store, &mnt);
    cgroup.limit(cgroup.tasks());

    let disk = fs::OpenOptions::new().read(true).write(true).open(onefs.disk()).expect("open disk.img");
    for round in 0..2u64 {
        for block in 0..8 {
            disk.write_all_at(&pattern(round * 8 + block, 4096), block * MIB + 8192).expect("write");
        }
        disk.sync_all().unwrap_or_else(|e| panic!("fsync {round} with no thread to spare: {e}"));
    }
    assert_eq!(block_files(&store).len(), 8);
    drop(disk);
    cgroup.unlimit();
    onefs.unmount();

    let onefs = OnefsMount::new(&store, &mnt, &[]);
    for block in 0..8 {
        assert_eq!(pread(&onefs.disk(), block * MIB + 8192, 4096), pattern(8 + block, 4096), "block {block}");
    }
    onefs.unmount();
}

/// A ring thread answers several entries in turn. An fsync, which may take
/// seconds, must not hold up the requests the kernel hands to that thread's
/// other entries meanwhile.
#[test]
fn reads_are_answered_while_an_fsync_flushes_over_io_uring() {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let Some(_knob) = RingKnob::set(true) else { return };
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "4G", "4M");
    // Twice `threads` entries spread over the queues: 4 a queue, one thread
    // each, so the fsync and the reads below meet in one thread.
    let option = format!("io_uring=on,threads={}", 2 * online_cpus());
    let onefs = OnefsMount::new(&store, &mnt, &["-o", &option]);
    assert!(ring_threads(onefs.pid()) > 0, "not serving over io_uring");

    // 1 GiB left in the store's page cache: a flush that takes a while.
    // No write ends a block, so none starts its block's writeback early.
    const DIRTY: u64 = 1024 * MIB;
    let disk = fs::OpenOptions::new().read(true).write(true).open(onefs.disk()).expect("open disk.img");
    let chunk = pattern(3, MIB as usize - 4096);
    for offset in (0..DIRTY).step_by(MIB as usize) {
        disk.write_all_at(&chunk, offset).expect("write");
    }

    // The kernel queues a request for the CPU that sends it.
    let cpu = pin_to_first_allowed_cpu();
    let flushed = Arc::new(AtomicBool::new(false));
    let flusher = {
        let flushed = flushed.clone();
        std::thread::spawn(move || {
            pin_to_cpu(cpu);
            let result = disk.sync_all();
            flushed.store(true, Ordering::SeqCst);
            result
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let direct = fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(onefs.disk()).expect("open");
    let mut buffer = vec![0u8; 8192];
    let aligned = buffer.as_ptr().align_offset(4096);
    let (mut during, mut reads) = (0, 0);
    while !flushed.load(Ordering::SeqCst) && reads < 1000 {
        let offset = (reads * 7 * MIB) % DIRTY;
        direct.read_exact_at(&mut buffer[aligned..aligned + 4096], offset).expect("read");
        assert_eq!(buffer[aligned..aligned + 4096], chunk[..4096]);
        reads += 1;
        if !flushed.load(Ordering::SeqCst) {
            during += 1;
        }
    }
    flusher.join().expect("flusher thread").expect("fsync");
    assert!(during > 0, "no read was answered while the fsync ran ({reads} reads in all)");
    drop(direct);
    onefs.unmount();
}

/// Pins the calling thread to the first CPU it may run on; returns that CPU.
fn pin_to_first_allowed_cpu() -> usize {
    // SAFETY: cpu_set_t is plain data, filled in by the kernel.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(rc, 0, "sched_getaffinity");
    // SAFETY: CPU_ISSET reads the set within its bounds.
    let cpu = (0..libc::CPU_SETSIZE as usize).find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).expect("a CPU");
    pin_to_cpu(cpu);
    cpu
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: as above; CPU_SET writes within the set's bounds.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "sched_setaffinity {cpu}");
}

/// The kernel holds every request until each CPU's io_uring queue has an
/// entry: when a queue's thread cannot be started, the mount must make the
/// kernel fall back to /dev/fuse, not wait for that queue forever.
#[test]
fn a_ring_thread_that_cannot_start_leaves_the_mount_serving_over_dev_fuse() {
    let Some(_knob) = RingKnob::set(true) else { return };
    let Some(cgroup) = PidsCgroup::new() else { return };
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "64M", "1M");
    let (store_arg, mnt_arg) = (store.to_str().unwrap(), mnt.to_str().unwrap());
    let _last_resort = KillOnDrop { store: store.clone(), mountpoint: mnt.clone() };

    // The daemon's own tasks without rings.
    let args = ["mount", "-o", "io_uring=off,threads=2", store_arg, mnt_arg];
    let onefs = OnefsMount::start(&mut cgroup.command(onefs_bin(), &args), &store, &mnt);
    let daemon_tasks = cgroup.tasks();
    onefs.unmount();

    // Room for `timeout`, the `onefs mount` that waits for readiness, the
    // daemon, and ring threads for every queue but the last.
    let queues = possible_cpus();
    cgroup.limit(2 + daemon_tasks + queues - 1);
    let limit = "60";
    let args = [limit, onefs_bin(), "mount", "-o", "io_uring=auto,threads=2", store_arg, mnt_arg];
    let onefs = OnefsMount::start(&mut cgroup.command("timeout", &args), &store, &mnt);
    let rings = ring_threads(onefs.pid());
    assert!(rings < queues, "{rings} ring threads for {queues} queues: the limit did not bite");
    pwrite(&onefs.disk(), 5 * MIB, b"served anyway");
    assert_eq!(pread(&onefs.disk(), 5 * MIB, 13), b"served anyway");
    fs::File::open(onefs.disk()).and_then(|f| f.sync_all()).expect("fsync");
    onefs.unmount();
}

/// Puts a sysctl back as it was when dropped.
struct SysctlGuard(&'static str, String);

impl SysctlGuard {
    fn set(path: &'static str, value: &str) -> Option<Self> {
        let previous = fs::read_to_string(path).ok()?.trim().to_string();
        fs::write(path, value).ok()?;
        Some(SysctlGuard(path, previous))
    }
}

/// Sets `kernel.io_uring_disabled` until dropped. On a kernel without it the
/// test fails, or with `ONEFS_TEST_ALLOW_SKIP=io_uring_sysctl` this is
/// `None` (said on the terminal) and the test returns.
#[track_caller]
fn io_uring_disabled(value: &str) -> Option<SysctlGuard> {
    let present = Path::new(IO_URING_DISABLED).exists();
    if !skip::require(Prereq::IoUringSysctl, present, &format!("this kernel has no {IO_URING_DISABLED}")) {
        return None;
    }
    Some(SysctlGuard::set(IO_URING_DISABLED, value).unwrap_or_else(|| panic!("cannot set {IO_URING_DISABLED}")))
}

const IO_URING_DISABLED: &str = "/proc/sys/kernel/io_uring_disabled";

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let _ = fs::write(self.0, &self.1);
    }
}

/// The kernel may offer FUSE over io_uring while forbidding io_uring to
/// processes (`kernel.io_uring_disabled`, or a seccomp filter). Asking for
/// it at INIT would then leave every request waiting for queues that can
/// never be registered: auto serves through /dev/fuse, on refuses in one line.
#[test]
fn io_uring_forbidden_to_processes_means_dev_fuse_or_a_refusal() {
    let Some(_knob) = RingKnob::set(true) else { return };
    let Some(_forbidden) = io_uring_disabled("2") else { return };
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "16M", "1M");
    let (store_arg, mnt_arg) = (store.to_str().unwrap(), mnt.to_str().unwrap());
    let _last_resort = KillOnDrop { store: store.clone(), mountpoint: mnt.clone() };
    let before = snapshot(&store);

    let out = Command::new("timeout")
        .args(["60", onefs_bin(), "mount", "-o", "io_uring=on", store_arg, mnt_arg])
        .output()
        .expect("run onefs mount");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted without io_uring: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("cannot set up an io_uring") && err.contains("io_uring=on"), "{err}");
    assert!(!is_mountpoint(&mnt));
    wait_store_released(&store);
    assert_eq!(snapshot(&store), before, "a refused mount changes nothing");

    let mut mount = Command::new("timeout");
    mount.args(["60", onefs_bin(), "mount", "-o", "io_uring=auto", store_arg, mnt_arg]);
    let onefs = OnefsMount::start(&mut mount, &store, &mnt);
    assert_eq!(ring_threads(onefs.pid()), 0);
    pwrite(&onefs.disk(), 3 * MIB, b"still a disk");
    assert_eq!(pread(&onefs.disk(), 3 * MIB, 12), b"still a disk");
    onefs.unmount();
}

/// Runs `flip` over and over on a thread until dropped.
struct Toggler(std::sync::Arc<std::sync::atomic::AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Toggler {
    fn start(flip: impl Fn() + Send + 'static) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let running = stop.clone();
        let thread = std::thread::spawn(move || {
            while !running.load(std::sync::atomic::Ordering::Relaxed) {
                flip();
            }
        });
        Toggler(stop, Some(thread))
    }
}

impl Drop for Toggler {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.1.take() {
            let _ = thread.join();
        }
    }
}

/// Between a mount's check that it may use io_uring and the registration of
/// its queues, an administrator may forbid io_uring (here: over and over).
/// The kernel has agreed at INIT by then and holds every request until the
/// queues exist, so such a mount must fail at once and cleanly, never hang.
#[test]
fn io_uring_forbidden_while_mounting_fails_the_mount_cleanly_or_not_at_all() {
    let Some(_knob) = RingKnob::set(true) else { return };
    let Some(_restore) = io_uring_disabled("0") else { return };
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "16M", "1M");
    let (store_arg, mnt_arg) = (store.to_str().unwrap(), mnt.to_str().unwrap());
    let _last_resort = KillOnDrop { store: store.clone(), mountpoint: mnt.clone() };

    // Stopped (on drop, also when an assertion fails) before `_restore` puts
    // the sysctl back.
    let toggler = Toggler::start(|| {
        let _ = fs::write(IO_URING_DISABLED, "2");
        let _ = fs::write(IO_URING_DISABLED, "0");
    });
    let (mut mounted, mut refused) = (0, 0);
    for _ in 0..40 {
        let out = Command::new("timeout")
            .args(["20", onefs_bin(), "mount", store_arg, mnt_arg])
            .output()
            .expect("run onefs mount");
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            mounted += 1;
            run("umount", &[mnt_arg]);
            wait_store_released(&store);
        } else {
            assert_ne!(out.status.code(), Some(124), "a mount hung");
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
            assert!(err.contains("io_uring"), "{err}");
            assert!(!is_mountpoint(&mnt), "a refused mount left a mount behind");
            wait_store_released(&store);
            refused += 1;
        }
    }
    drop(toggler);
    eprintln!("{mounted} mounted, {refused} refused");
    assert!(mounted > 0, "no mount got through");
}
