//! The FUSE adapter: one directory holding one file, `disk.img`.
//!
//! Thin by design: decode a request, call the [`Image`], turn an error into
//! an errno (plus one log line when it is not an expected answer), reply.

use crate::errors::errno;
use crate::image::Image;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::cell::RefCell;
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DISK_NAME: &str = "disk.img";
const DISK_INO: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(1);
/// The largest write the kernel will send (it caps FUSE at 1 MiB anyway).
pub const MAX_WRITE: u32 = 1 << 20;

/// Gives the mount the readahead of the disk that holds the store (at
/// least one full FUSE request), once the mount is live.
///
/// FUSE starts every mount at 128 KiB, while a loop device without
/// `--direct-io` reads disk.img through the page cache one request at a
/// time: readahead is its only read parallelism, and a loop over a plain
/// file enjoys the disk's (often several MiB). Best effort: needs root.
pub fn match_readahead(mountpoint: &Path, store: &Path) {
    use std::os::unix::fs::MetadataExt;
    fn read_kb(path: &str) -> Option<u64> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
    let dev = |path: &Path| std::fs::metadata(path).ok().map(|m| (libc::major(m.dev()), libc::minor(m.dev())));
    let Some((major, minor)) = dev(mountpoint) else { return };
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    let Some(current) = read_kb(&knob) else { return };
    // A partition has no queue of its own: its disk's is one level up.
    let disk = dev(store).and_then(|(ma, mi)| {
        read_kb(&format!("/sys/dev/block/{ma}:{mi}/queue/read_ahead_kb"))
            .or_else(|| read_kb(&format!("/sys/dev/block/{ma}:{mi}/../queue/read_ahead_kb")))
    });
    let want = disk.unwrap_or(0).clamp(u64::from(MAX_WRITE) >> 10, 16 << 10);
    if want > current {
        match std::fs::write(&knob, want.to_string()) {
            Ok(()) => log::debug!("readahead of {} raised to {want} KiB", mountpoint.display()),
            Err(err) => log::debug!("cannot raise readahead of {}: {err}", mountpoint.display()),
        }
    }
}

/// Who owns disk.img and how it may be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub uid: u32,
    pub gid: u32,
    pub mode: u16,
    pub read_only: bool,
}

pub struct OnefsFs {
    image: Arc<Image>,
    access: Access,
    /// Last modification of disk.img, in nanoseconds since the epoch.
    mtime_ns: AtomicU64,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn fuse_errno(err: &io::Error) -> Errno {
    Errno::from_i32(errno(err))
}

thread_local! {
    /// One read buffer per worker thread, reused across requests.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl OnefsFs {
    pub fn new(image: Arc<Image>, access: Access) -> Self {
        Self { image, access, mtime_ns: AtomicU64::new(now_ns()) }
    }

    fn touch(&self) {
        self.mtime_ns.store(now_ns(), Ordering::Relaxed);
    }

    fn disk_attr(&self) -> FileAttr {
        let mtime = UNIX_EPOCH + Duration::from_nanos(self.mtime_ns.load(Ordering::Relaxed));
        let stored = self.image.stored_blocks() * self.image.geometry().block_size();
        FileAttr {
            ino: DISK_INO,
            size: self.image.size(),
            blocks: stored / 512,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: FileType::RegularFile,
            perm: self.access.mode,
            nlink: 1,
            uid: self.access.uid,
            gid: self.access.gid,
            rdev: 0,
            blksize: self.image.geometry().block_size().min(1 << 20) as u32,
            flags: 0,
        }
    }

    fn root_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo::ROOT,
            size: 0,
            blocks: 0,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            blksize: 4096,
            ..self.disk_attr()
        }
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        match ino {
            INodeNo::ROOT => Some(self.root_attr()),
            DISK_INO => Some(self.disk_attr()),
            _ => None,
        }
    }

    /// Logs an unexpected failure once and answers with its errno.
    fn failed(&self, what: std::fmt::Arguments<'_>, err: &io::Error) -> Errno {
        log::error!("{what}: {err}");
        fuse_errno(err)
    }
}

impl Filesystem for OnefsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_WRITE) {
            let _ = config.set_max_readahead(max);
        }
        // Many requests in flight: a loop device queues deep.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        // The kernel would otherwise ask for security.capability before every
        // buffered write (to drop privileges); disk.img never has suid bits.
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(err) = self.image.sync() {
            log::error!("final flush failed: {err}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == DISK_NAME {
            reply.entry(&TTL, &self.disk_attr(), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(attr) = self.attr(ino) else { return reply.error(Errno::ENOENT) };
        // The size is fixed at creation; owner and mode come from the mount.
        match size {
            Some(s) if s > attr.size => return reply.error(Errno::EFBIG),
            Some(s) if s < attr.size => return reply.error(Errno::EPERM),
            _ => {}
        }
        if mode.is_some_and(|m| (m & 0o7777) as u16 != attr.perm)
            || uid.is_some_and(|u| u != attr.uid)
            || gid.is_some_and(|g| g != attr.gid)
        {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&TTL, &attr);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != DISK_INO {
            return reply.error(Errno::EISDIR);
        }
        if self.access.read_only && flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // O_DIRECT opens (loop --direct-io=on) bypass the page cache and may
        // write in parallel; buffered opens keep normal page-cache semantics.
        let fopen = if flags.0 & libc::O_DIRECT != 0 {
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(0), fopen);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        READ_BUF.with_borrow_mut(|buf| {
            buf.resize(size as usize, 0);
            match self.image.read(offset, buf) {
                Ok(n) => reply.data(&buf[..n]),
                Err(err) => reply.error(self.failed(format_args!("read {size} bytes at {offset}"), &err)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.access.read_only {
            return reply.error(Errno::EROFS);
        }
        match self.image.write(offset, data) {
            Ok(n) => {
                self.touch();
                reply.written(n as u32)
            }
            Err(err) if err.raw_os_error() == Some(libc::EFBIG) => reply.error(Errno::EFBIG),
            Err(err) => reply.error(self.failed(format_args!("write {} bytes at {offset}", data.len()), &err)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() promises nothing about durability; fsync does.
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.image.sync() {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(self.failed(format_args!("fsync"), &err)),
        }
    }

    fn fsyncdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        self.fsync(req, ino, fh, datasync, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino == INodeNo::ROOT {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::ENOTDIR);
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (DISK_INO, FileType::RegularFile, DISK_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let bsize = self.image.geometry().block_size();
        let total = self.image.geometry().block_count();
        let free = total - self.image.stored_blocks();
        // In units of onefs blocks: `df` on the mount shows what is stored.
        reply.statfs(total, free, free, 1, 0, bsize as u32, 255, bsize as u32);
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 { reply.size(0) } else { reply.data(&[]) }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOTSUP);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENODATA);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        if self.access.read_only {
            return reply.error(Errno::EROFS);
        }
        let past_end = offset.saturating_add(length) > self.image.size();
        let result = match mode {
            m if m == PUNCH | KEEP_SIZE || m == ZERO | KEEP_SIZE => self.image.punch(offset, length),
            m if m == ZERO && past_end => return reply.error(Errno::EFBIG),
            m if m == ZERO => self.image.punch(offset, length),
            // Plain allocation: every byte already exists; growing is refused.
            0 if past_end => return reply.error(Errno::EFBIG),
            0 | KEEP_SIZE => Ok(()),
            _ => return reply.error(Errno::EOPNOTSUPP),
        };
        match result {
            Ok(()) => {
                self.touch();
                reply.ok()
            }
            Err(err) => {
                reply.error(self.failed(format_args!("fallocate mode {mode:#x} {length} bytes at {offset}"), &err))
            }
        }
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let Ok(offset) = u64::try_from(offset) else { return reply.error(Errno::EINVAL) };
        let result = match whence {
            libc::SEEK_DATA => self.image.seek_data(offset),
            libc::SEEK_HOLE => self.image.seek_hole(offset),
            _ => return reply.error(Errno::EINVAL),
        };
        match result {
            Ok(pos) => reply.offset(pos as i64),
            Err(err) => reply.error(fuse_errno(&err)),
        }
    }

    // The namespace is fixed: exactly one file, no others.
    fn create(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, _: u32, _: i32, reply: ReplyCreate) {
        reply.error(Errno::EPERM);
    }
    fn mknod(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, _: u32, _: u32, reply: ReplyEntry) {
        reply.error(Errno::EPERM);
    }
    fn mkdir(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, _: u32, reply: ReplyEntry) {
        reply.error(Errno::EPERM);
    }
    fn symlink(&self, _: &Request, _: INodeNo, _: &OsStr, _: &Path, reply: ReplyEntry) {
        reply.error(Errno::EPERM);
    }
    fn link(&self, _: &Request, _: INodeNo, _: INodeNo, _: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EPERM);
    }
    fn unlink(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }
    fn rmdir(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }
    fn rename(
        &self,
        _: &Request,
        _: INodeNo,
        _: &OsStr,
        _: INodeNo,
        _: &OsStr,
        _: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }
}
