//! The FUSE adapter: one directory holding one file, `disk.img`.
//!
//! Thin by design: decode a request, call the [`Image`], turn an error into
//! an errno (plus one log line when it is not an expected answer), reply.
//! [`Disk`] answers every operation; two transports deliver the requests:
//! fuser's `/dev/fuse` loop ([`OnefsFs`]) and, where the kernel allows it,
//! FUSE over io_uring ([`ring`]), which takes over once it is registered.

mod abi;
pub mod ring;

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
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DISK_NAME: &str = "disk.img";
const DISK_INO: INodeNo = INodeNo(2);
pub(crate) const TTL: Duration = Duration::from_secs(1);
/// The largest write the kernel will send (it caps FUSE at 1 MiB anyway).
pub const MAX_WRITE: u32 = 1 << 20;
/// Longest name `statfs` admits to.
pub(crate) const NAME_MAX: u32 = 255;

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
    // The mount may have been covered by a stuck one since, and the store's
    // disk may hang: ask with a time limit.
    let dev = |path: &Path| {
        let owned = path.to_path_buf();
        crate::probe::ask(("dev", path.to_path_buf()), crate::probe::LIMIT, move || {
            std::fs::metadata(&owned).ok().map(|m| (libc::major(m.dev()), libc::minor(m.dev())))
        })
        .ok()
        .flatten()
    };
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

pub use crate::options::Access;

/// What the kernel caches of disk.img, told when onefs changes it behind
/// the kernel's back: its size, when the image grows while mounted.
pub struct KernelCache(fuser::Notifier);

impl KernelCache {
    pub fn new(notifier: fuser::Notifier) -> Self {
        Self(notifier)
    }

    /// Makes the kernel drop its cached attributes of disk.img (and any
    /// cached pages from `old_size` on), so that the next `stat`, or the
    /// loop driver's `LOOP_SET_CAPACITY`, asks onefs for the new size
    /// instead of waiting out the attribute timeout. A disk.img the kernel
    /// has not looked up yet has nothing cached: that is no error.
    pub fn size_changed(&self, old_size: u64) -> io::Result<()> {
        self.0.inval_inode(DISK_INO, i64::try_from(old_size).unwrap_or(i64::MAX), 0)
    }
}

/// What `statfs` reports, in units of onefs blocks.
pub struct Statfs {
    pub blocks: u64,
    pub free: u64,
    pub block_size: u32,
}

/// One `readdir` entry: inode, offset of the next entry, kind, name.
pub type DirEntry = (INodeNo, u64, FileType, &'static str);

/// The mounted filesystem's answers, whichever transport asked.
pub struct Disk {
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

/// Logs an unexpected failure once and answers with its errno.
fn failed(what: std::fmt::Arguments<'_>, err: &io::Error) -> Errno {
    log::error!("{what}: {err}");
    fuse_errno(err)
}

impl Disk {
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

    pub fn getattr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        match ino {
            INodeNo::ROOT => Ok(self.root_attr()),
            DISK_INO => Ok(self.disk_attr()),
            _ => Err(Errno::ENOENT),
        }
    }

    pub fn lookup(&self, parent: INodeNo, name: &[u8]) -> Result<FileAttr, Errno> {
        if parent == INodeNo::ROOT && name == DISK_NAME.as_bytes() { Ok(self.disk_attr()) } else { Err(Errno::ENOENT) }
    }

    pub fn setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
    ) -> Result<FileAttr, Errno> {
        let attr = self.getattr(ino)?;
        // The size changes only through onefs grow; owner and mode come from the mount.
        match size {
            Some(s) if s > attr.size => return Err(Errno::EFBIG),
            Some(s) if s < attr.size => return Err(Errno::EPERM),
            _ => {}
        }
        if mode.is_some_and(|m| (m & 0o7777) as u16 != attr.perm)
            || uid.is_some_and(|u| u != attr.uid)
            || gid.is_some_and(|g| g != attr.gid)
        {
            return Err(Errno::EPERM);
        }
        Ok(attr)
    }

    pub fn open(&self, ino: INodeNo, flags: i32) -> Result<FopenFlags, Errno> {
        if ino != DISK_INO {
            return Err(Errno::EISDIR);
        }
        if self.access.read_only && flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(Errno::EROFS);
        }
        // O_DIRECT opens (loop --direct-io=on) bypass the page cache and may
        // write in parallel; buffered opens keep normal page-cache semantics.
        Ok(if flags & libc::O_DIRECT != 0 {
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
        } else {
            FopenFlags::empty()
        })
    }

    pub fn opendir(&self, ino: INodeNo) -> Result<(), Errno> {
        if ino == INodeNo::ROOT { Ok(()) } else { Err(Errno::ENOTDIR) }
    }

    /// Fills `buf` from `offset`; returns how many bytes are valid.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        self.image.read(offset, buf).map_err(|err| failed(format_args!("read {} bytes at {offset}", buf.len()), &err))
    }

    pub fn write(&self, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        if self.access.read_only {
            return Err(Errno::EROFS);
        }
        match self.image.write(offset, data) {
            Ok(n) => {
                self.touch();
                Ok(n as u32)
            }
            Err(err) if err.raw_os_error() == Some(libc::EFBIG) => Err(Errno::EFBIG),
            Err(err) => Err(failed(format_args!("write {} bytes at {offset}", data.len()), &err)),
        }
    }

    pub fn fsync(&self) -> Result<(), Errno> {
        self.image.sync().map_err(|err| failed(format_args!("fsync"), &err))
    }

    /// The final flush when the kernel lets go of the mount.
    pub fn flush_on_unmount(&self) {
        if let Err(err) = self.image.sync() {
            log::error!("final flush failed: {err}");
        }
    }

    /// The root directory's entries from `offset` on.
    pub fn readdir(&self, ino: INodeNo, offset: u64) -> Result<impl Iterator<Item = DirEntry>, Errno> {
        if ino != INodeNo::ROOT {
            return Err(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (DISK_INO, FileType::RegularFile, DISK_NAME),
        ];
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        Ok(entries.into_iter().enumerate().skip(skip).map(|(i, (ino, kind, name))| (ino, (i + 1) as u64, kind, name)))
    }

    pub fn statfs(&self) -> Statfs {
        let total = self.image.geometry().block_count();
        // In units of onefs blocks: `df` on the mount shows what is stored.
        Statfs {
            blocks: total,
            free: total - self.image.stored_blocks(),
            block_size: self.image.geometry().block_size() as u32,
        }
    }

    pub fn fallocate(&self, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
        const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        if self.access.read_only {
            return Err(Errno::EROFS);
        }
        let past_end = offset.saturating_add(length) > self.image.size();
        let result = match mode {
            m if m == PUNCH | KEEP_SIZE || m == ZERO | KEEP_SIZE => self.image.punch(offset, length),
            m if m == ZERO && past_end => return Err(Errno::EFBIG),
            m if m == ZERO => self.image.punch(offset, length),
            // Plain allocation: every byte already exists; growing is refused.
            0 if past_end => return Err(Errno::EFBIG),
            0 | KEEP_SIZE => Ok(()),
            _ => return Err(Errno::EOPNOTSUPP),
        };
        result.map_err(|err| failed(format_args!("fallocate mode {mode:#x} {length} bytes at {offset}"), &err))?;
        self.touch();
        Ok(())
    }

    pub fn lseek(&self, offset: i64, whence: i32) -> Result<u64, Errno> {
        let offset = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let result = match whence {
            libc::SEEK_DATA => self.image.seek_data(offset),
            libc::SEEK_HOLE => self.image.seek_hole(offset),
            _ => return Err(Errno::EINVAL),
        };
        result.map_err(|err| fuse_errno(&err))
    }
}

thread_local! {
    /// One read buffer per worker thread, reused across requests.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// fuser's side: requests read from `/dev/fuse` by fuser's worker threads.
pub struct OnefsFs {
    disk: Arc<Disk>,
    /// Ask the kernel for FUSE over io_uring at INIT.
    want_ring: bool,
    /// Set during INIT: whether the kernel agreed to io_uring.
    ring_agreed: Arc<OnceLock<bool>>,
}

impl OnefsFs {
    pub fn new(disk: Arc<Disk>, want_ring: bool, ring_agreed: Arc<OnceLock<bool>>) -> Self {
        Self { disk, want_ring, ring_agreed }
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
        // Offered only while the fuse module's enable_uring is on.
        let agreed = self.want_ring && config.add_capabilities(InitFlags::FUSE_OVER_IO_URING).is_ok();
        let _ = self.ring_agreed.set(agreed);
        Ok(())
    }

    fn destroy(&mut self) {
        self.disk.flush_on_unmount();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.disk.lookup(parent, name.as_bytes()) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.disk.getattr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
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
        match self.disk.setattr(ino, mode, uid, gid, size) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.disk.open(ino, flags.0) {
            Ok(fopen) => reply.opened(FileHandle(0), fopen),
            Err(e) => reply.error(e),
        }
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
            match self.disk.read(offset, buf) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(e),
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
        match self.disk.write(offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() promises nothing about durability; fsync does.
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.disk.fsync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        self.fsync(req, ino, fh, datasync, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.disk.opendir(ino) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.disk.readdir(ino, offset) {
            Ok(entries) => {
                for (ino, next, kind, name) in entries {
                    if reply.add(ino, next, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.disk.statfs();
        reply.statfs(s.blocks, s.free, s.free, 1, 0, s.block_size, NAME_MAX, s.block_size);
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
        match self.disk.fallocate(offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        match self.disk.lseek(offset, whence) {
            Ok(pos) => reply.offset(pos as i64),
            Err(e) => reply.error(e),
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
