//! Helpers for files that hold one block's raw bytes (the directory store's
//! block files, the cache's block files, fsck's view of both).

use crate::core::is_zero;
use crate::sync::lock;
use std::fmt::Display;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// True if the first `len` bytes of `file` hold no non-zero byte. Reads only
/// the data extents the filesystem reports (SEEK_DATA/SEEK_HOLE), so a
/// mostly-punched block is cheap; reads everything where those are missing.
pub fn holds_only_zeros(file: &File, len: u64, buf: &mut [u8]) -> io::Result<bool> {
    let fd = file.as_raw_fd();
    let mut pos = 0u64;
    while pos < len {
        // SAFETY: plain lseek on a descriptor we own.
        let data = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(true),
                Some(libc::EINVAL) => scan(file, pos, len, buf),
                _ => Err(err),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { len } else { (hole as u64).min(len) };
        if !scan(file, data as u64, hole, buf)? {
            return Ok(false);
        }
        pos = hole;
    }
    Ok(true)
}

/// Fills `buf` from `file` at `offset`; bytes past the end of the file read
/// as zeros (a short block file means zeros there).
pub fn read_or_zeros(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// What `read_cached` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Cached {
    /// This many bytes (short at the end of the file or of what is cached).
    Read(usize),
    /// The first page is not in the page cache (or the read failed: the
    /// blocking read that follows reports it).
    Miss,
    /// The file's filesystem cannot read without blocking.
    Unsupported,
}

/// Reads what the page cache already holds of `buf`'s range without waiting
/// for the disk.
pub fn read_cached(file: &File, offset: u64, buf: &mut [u8]) -> Cached {
    let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: one iovec over a live, exclusively borrowed buffer.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset as i64, libc::RWF_NOWAIT) };
    if n >= 0 {
        return Cached::Read(n as usize);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => Cached::Unsupported,
        _ => Cached::Miss,
    }
}

fn scan(file: &File, mut pos: u64, end: u64, buf: &mut [u8]) -> io::Result<bool> {
    while pos < end {
        let want = buf.len().min((end - pos) as usize);
        let got = match file.read_at(&mut buf[..want], pos) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if !is_zero(&buf[..got]) {
            return Ok(false);
        }
        pos += got as u64;
    }
    Ok(true)
}

/// fsync of many block files runs on this many threads: the disk sees one
/// deep queue instead of a chain of single flushes.
const SYNC_THREADS: usize = 8;

/// Runs `sync_one` for every block, on several threads when there are
/// several blocks; returns the failures.
pub fn sync_blocks<F>(blocks: &[u64], sync_one: F) -> Vec<io::Error>
where
    F: Fn(u64) -> io::Result<()> + Sync,
{
    let sync_one = &sync_one;
    if blocks.len() <= 1 {
        return blocks.iter().filter_map(|&b| sync_one(b).err()).collect();
    }
    crate::sync::in_chunks(blocks, SYNC_THREADS, |chunk| chunk.iter().filter_map(|&b| sync_one(b).err()).collect())
        .into_iter()
        // A panic left its chunk unsynced: that must fail the sync, not vanish.
        .flat_map(|failures: Option<Vec<io::Error>>| {
            failures.unwrap_or_else(|| vec![io::Error::other("a sync thread panicked")])
        })
        .collect()
}

/// Durability bookkeeping of a store that flushes files and directories.
#[derive(Default)]
pub struct FlushState {
    /// A file was created or removed since the last sync.
    pub names_dirty: AtomicBool,
    /// Once an fsync failed, the kernel may have dropped the data: every
    /// later sync must fail too, or a lost write would look durable.
    failed: AtomicBool,
    /// Held for the whole of a sync (see `sync`).
    turn: Mutex<()>,
}

/// What one sync's flush reports: the files that failed to flush, and the
/// directories' flush.
pub struct Flushed {
    pub files: Vec<io::Error>,
    pub dirs: io::Result<()>,
}

impl FlushState {
    /// Runs one sync of a store: `flush` is told whether names changed since
    /// the last sync, takes the store's dirty set and flushes it.
    ///
    /// Syncs run one at a time. Each takes the dirty set, so a sync running
    /// beside another finds the blocks it must make durable already taken and
    /// would report success while the other is still flushing them, and a
    /// power cut in that window would lose an acknowledged write. The kernel
    /// sends FSYNCs of disk.img one at a time, but an FSYNCDIR of the mount's
    /// root runs beside them. `what` names the store in the poisoned-sync
    /// error.
    pub fn sync(&self, what: &dyn Display, flush: impl FnOnce(bool) -> Flushed) -> io::Result<()> {
        let _turn = lock(&self.turn);
        let names_dirty = self.names_dirty.swap(false, Ordering::AcqRel);
        let flushed = flush(names_dirty);
        // A failed file flush poisons every later sync; a failed directory
        // flush is retried by the next one.
        if let Some(err) = flushed.files.into_iter().next() {
            self.failed.store(true, Ordering::Release);
            return Err(err);
        }
        if let Err(err) = flushed.dirs {
            self.names_dirty.store(true, Ordering::Release);
            return Err(err);
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(io::Error::other(format!(
                "{what}: an earlier flush failed; data written since mount may be lost"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Drops a file's (clean) pages from the page cache.
    pub(crate) fn evict(file: &File) {
        file.sync_all().unwrap();
        // SAFETY: advice on a live descriptor.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }

    /// How many of the first `len` bytes' pages are in the page cache.
    pub(crate) fn cached_pages(file: &File, len: usize) -> usize {
        const PAGE: usize = 4096;
        // SAFETY: a private read-only mapping of a live file, unmapped below;
        // mincore only reports residency and never faults pages in.
        unsafe {
            let map = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0);
            assert_ne!(map, libc::MAP_FAILED);
            let mut resident = vec![0u8; len.div_ceil(PAGE)];
            assert_eq!(libc::mincore(map, len, resident.as_mut_ptr()), 0);
            libc::munmap(map, len);
            resident.iter().filter(|&&r| r & 1 != 0).count()
        }
    }

    /// How many of a file's pages are dirty or under writeback, by
    /// cachestat(2); None on kernels before 6.5, which lack it.
    pub(crate) fn unwritten_pages(file: &File) -> Option<u64> {
        #[repr(C)]
        struct Range {
            offset: u64,
            len: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct Stat {
            cache: u64,
            dirty: u64,
            writeback: u64,
            evicted: u64,
            recently_evicted: u64,
        }
        const SYS_CACHESTAT: libc::c_long = 451;
        let range = Range { offset: 0, len: 0 };
        let mut stat = Stat::default();
        // SAFETY: both structs match the kernel's layout and outlive the call.
        let rc = unsafe { libc::syscall(SYS_CACHESTAT, file.as_raw_fd(), &range, &mut stat, 0) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            assert_eq!(error.raw_os_error(), Some(libc::ENOSYS), "cachestat: {error}");
            return None;
        }
        Some(stat.dirty + stat.writeback)
    }

    #[test]
    fn read_cached_serves_only_what_the_page_cache_holds() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options().read(true).write(true).create_new(true).open(dir.path().join("b")).unwrap();
        file.write_all_at(&[7u8; 8192], 0).unwrap();
        let mut buf = vec![0u8; 16384];
        assert_eq!(read_cached(&file, 0, &mut buf), Cached::Read(8192), "short at the end of the file");
        assert!(buf[..8192].iter().all(|&b| b == 7));
        assert_eq!(read_cached(&file, 8192, &mut buf), Cached::Read(0), "the end of the file is not a miss");
        evict(&file);
        assert_eq!(cached_pages(&file, 8192), 0, "{:?} must drop clean pages", dir.path());
        // A miss starts reading the page; on a fast disk it may already be
        // there when the call looks again, so either answer can come back.
        buf.fill(0);
        match read_cached(&file, 0, &mut buf[..4096]) {
            Cached::Miss => {}
            Cached::Read(n) => assert!(n == 4096 && buf[..4096].iter().all(|&b| b == 7), "{n} bytes"),
            Cached::Unsupported => panic!("{:?} cannot read without blocking", dir.path()),
        }
        // procfs has no non-blocking reads.
        let proc = File::open("/proc/version").unwrap();
        assert_eq!(read_cached(&proc, 0, &mut buf), Cached::Unsupported);
    }

    #[test]
    fn sees_data_past_a_hole_and_ignores_holes() {
        let mut file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        let mut buf = vec![0u8; 4096];
        assert!(holds_only_zeros(&file, 1 << 20, &mut buf).unwrap());
        file.write_all_at(&[0u8; 8192], 4096).unwrap();
        assert!(holds_only_zeros(&file, 1 << 20, &mut buf).unwrap(), "written zeros are zeros");
        file.write_all_at(b"x", 900_000).unwrap();
        assert!(!holds_only_zeros(&file, 1 << 20, &mut buf).unwrap());
        assert!(holds_only_zeros(&file, 800_000, &mut buf).unwrap(), "only the first len bytes count");
        file.flush().unwrap();
    }

    fn flushed(files: Vec<io::Error>, dirs: io::Result<()>) -> Flushed {
        Flushed { files, dirs }
    }

    fn eio() -> io::Error {
        io::Error::from_raw_os_error(libc::EIO)
    }

    #[test]
    fn a_failed_flush_poisons_later_syncs_and_a_failed_directory_flush_retries() {
        let state = FlushState::default();
        state.names_dirty.store(true, Ordering::Release);
        let dir_err = state.sync(&"s", |names| {
            assert!(names);
            flushed(vec![], Err(eio()))
        });
        assert!(dir_err.is_err());
        assert!(state.sync(&"s", |names| flushed(vec![], if names { Ok(()) } else { Err(eio()) })).is_ok(), "retried");
        assert!(state.sync(&"s", |names| flushed(vec![], if names { Err(eio()) } else { Ok(()) })).is_ok(), "once");
        assert!(state.sync(&"s", |_| flushed(vec![eio()], Ok(()))).is_err());
        let later = state.sync(&"/store", |_| flushed(vec![], Ok(()))).unwrap_err();
        assert!(later.to_string().contains("/store: an earlier flush failed"), "{later}");
    }

    #[test]
    fn a_sync_does_not_return_while_an_earlier_one_is_still_flushing() {
        use std::sync::mpsc::channel;
        let state = &FlushState::default();
        let (started, first_is_flushing) = channel();
        let (release, released) = channel::<()>();
        let (done, second_done) = channel();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                state.sync(&"s", |_| {
                    started.send(()).unwrap();
                    released.recv().unwrap();
                    flushed(vec![eio()], Ok(()))
                })
            });
            first_is_flushing.recv().unwrap();
            // Nothing left dirty for the second one: it must still wait.
            scope.spawn(move || done.send(state.sync(&"s", |_| flushed(vec![], Ok(())))).unwrap());
            let early = second_done.recv_timeout(std::time::Duration::from_millis(200));
            release.send(()).unwrap();
            assert!(early.is_err(), "the second sync returned {early:?} while the first was flushing");
            let second = second_done.recv().unwrap();
            assert!(second.is_err(), "the first sync's failure reaches the second");
        });
    }

    #[test]
    fn sync_blocks_visits_every_block_and_collects_failures() {
        let seen = std::sync::Mutex::new(vec![]);
        let failures = sync_blocks(&(0..20).collect::<Vec<_>>(), |b| {
            seen.lock().unwrap().push(b);
            if b % 7 == 0 { Err(io::Error::from_raw_os_error(libc::EIO)) } else { Ok(()) }
        });
        assert_eq!(failures.len(), 3);
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
    }
}
