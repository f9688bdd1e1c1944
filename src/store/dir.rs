//! The local directory store: block `i` is the file `blk-<i+1>` holding
//! exactly the raw bytes of that block (holes where it was zeroed), so a store
//! stays readable with standard tools.

use super::blockfile::{Cached, Flushed};
use super::{BlockStore, Zeroed};
use crate::confined::{Access, ConfinedDir, Kind};
use crate::core::Geometry;
use crate::sync::lock;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Open descriptors are cached in this many shards of at most this many.
const FD_SHARDS: usize = 16;
const FDS_PER_SHARD: usize = 64;
/// Descriptors the rest of the process may need (FUSE workers, rings, the
/// lock, logging, a second mount in the same daemon) beside the cache.
const FDS_RESERVED: u64 = 128;

/// Written at a clean unmount: the store directory's stamp at a moment when
/// every block file was known to be exactly one block long. A mount that
/// finds the directory unchanged since (no file created, removed or renamed)
/// lists names only instead of checking 100 000 file sizes one `stat` at a
/// time; a block file resized in place is still caught when it is opened.
pub const CLEAN_MARK: &str = "onefs.clean";

/// A file written beside its final name and renamed or linked into place
/// (`.NAME.tmp`); one still there was left by a crash.
pub fn is_temporary(name: &str) -> bool {
    name.len() > ".tmp".len() + 1 && name.starts_with('.') && name.ends_with(".tmp")
}

pub struct DirStore {
    root: PathBuf,
    /// Every name is opened relative to this descriptor, never following a
    /// link: renaming the store while mounted changes nothing.
    dir: ConfinedDir,
    /// Block size and names. Its size is the one at open: an image grown
    /// while mounted changes neither a name nor the block size, so nothing
    /// here needs to know.
    geometry: Geometry,
    /// A read-only mount opens block files read-only and writes nothing.
    read_only: bool,
    /// Descriptors each shard may keep open, from the open-file limit.
    fds_per_shard: usize,
    /// Descriptor cache and dirty set, sharded by block so that no lock or
    /// counter is shared by all I/O.
    shards: Vec<Shard>,
    /// Created/removed files and sticky flush failures.
    flush: super::blockfile::FlushState,
    /// Whether the store's filesystem serves `RWF_NOWAIT` reads.
    nonblocking_reads: AtomicBool,
}

/// One shard on its own cache lines: neighbouring shards locked from
/// different CPUs must not bounce a shared line.
#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<FdShard>);

#[derive(Default)]
struct FdShard {
    files: HashMap<u64, CachedFd>,
    /// Shard-local clock for least-recently-used eviction.
    clock: u64,
    /// Blocks of this shard written since the last sync.
    dirty: HashSet<u64>,
}

impl FdShard {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

struct CachedFd {
    file: Arc<File>,
    /// Clock value of the last use, for eviction.
    used: u64,
    /// Reads that missed the page cache since the block was last fetched whole.
    misses: u32,
}

/// A block that misses the page cache this many times while its descriptor
/// stays cached is read ahead whole: it is being read at random within a
/// working set small enough to keep. Measured with 4 MiB blocks, random 4 KiB
/// reads at depth 32 after dropping caches: over 1 GiB 27-33k -> 51-53k IOPS;
/// over 16 GiB (four times the descriptor cache) 13-17k before and 14-15k
/// after, where fetching at the second miss already pulled whole blocks for
/// single pages (3k).
const MISSES_BEFORE_READ_AHEAD: u32 = 8;

/// Writes at least this large that end a block start its writeback.
const WRITEBACK_MIN: usize = 128 << 10;

/// Largest single write into a block file (see `write_at`).
const WRITE_PIECE: usize = 64 << 10;

/// Starts writing a block file's dirty pages to disk without waiting.
///
/// Called when a large write reaches the end of a block, which is where a
/// stream of writes leaves it (the disk starts on it now instead of at the
/// next fsync), and by `sync` for every dirty block before waiting on any. A
/// hint only: durability comes from the fsyncs, so a failure here is ignored.
fn start_writeback(file: &File) {
    // SAFETY: plain syscall on a descriptor we own; offset 0, length 0 = whole file.
    unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Starts reading the first `len` bytes of a block file into the page cache
/// without waiting. A hint only, like `start_writeback`.
fn read_ahead(file: &File, len: u64) {
    // SAFETY: advice on a descriptor we own.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, len as i64, libc::POSIX_FADV_WILLNEED) };
}

/// Names the block file in an I/O error, keeping its errno.
fn at(path: &Path, err: io::Error) -> io::Error {
    crate::errors::context(path.display(), err)
}

/// What changes whenever a name in a directory is created, removed or
/// renamed (and then some): inode, mtime and ctime to the nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirStamp {
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl DirStamp {
    fn of(dir: &File) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = dir.metadata()?;
        Ok(Self { ino: m.ino(), mtime: (m.mtime(), m.mtime_nsec()), ctime: (m.ctime(), m.ctime_nsec()) })
    }

    fn render(&self, blocks: u64) -> String {
        format!(
            "onefs clean unmount v1 ino={} mtime={}.{:09} ctime={}.{:09} blocks={blocks}\n",
            self.ino, self.mtime.0, self.mtime.1, self.ctime.0, self.ctime.1
        )
    }

    fn parse(text: &str) -> Option<(Self, u64)> {
        let rest = text.trim_end().strip_prefix("onefs clean unmount v1 ")?;
        let mut fields = rest.split(' ');
        let mut field = |key: &str| fields.next()?.strip_prefix(key)?.strip_prefix('=');
        let time = |v: &str| -> Option<(i64, i64)> {
            let (s, ns) = v.split_once('.')?;
            Some((s.parse().ok()?, ns.parse().ok()?))
        };
        let ino = field("ino")?.parse().ok()?;
        let mtime = time(field("mtime")?)?;
        let ctime = time(field("ctime")?)?;
        let blocks = field("blocks")?.parse().ok()?;
        Some((Self { ino, mtime, ctime }, blocks))
    }
}

/// How many descriptors a shard may cache: all of `FDS_PER_SHARD` where the
/// open-file limit allows, else a share of it (a shell mount under
/// `ulimit -n 1024` must not fail writes with EMFILE).
fn fds_per_shard() -> usize {
    let soft =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    let budget = soft.saturating_sub(FDS_RESERVED) / 2;
    ((budget / FD_SHARDS as u64) as usize).clamp(1, FDS_PER_SHARD)
}

impl DirStore {
    pub fn open(root: &Path, geometry: Geometry, read_only: bool) -> io::Result<Self> {
        Ok(Self {
            root: root.to_path_buf(),
            dir: ConfinedDir::open(root)?,
            geometry,
            read_only,
            fds_per_shard: fds_per_shard(),
            shards: (0..FD_SHARDS).map(|_| Shard::default()).collect(),
            flush: Default::default(),
            nonblocking_reads: AtomicBool::new(true),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn block_path(&self, block: u64) -> PathBuf {
        self.root.join(self.geometry.block_name(block))
    }

    fn shard(&self, block: u64) -> &Mutex<FdShard> {
        &self.shards[(block as usize) % FD_SHARDS].0
    }

    /// An open descriptor for a block file, from the cache or freshly opened.
    fn file(&self, block: u64, create: bool) -> io::Result<Arc<File>> {
        {
            let mut shard = lock(self.shard(block));
            let now = shard.tick();
            if let Some(cached) = shard.files.get_mut(&block) {
                cached.used = now;
                return Ok(cached.file.clone());
            }
        }
        let path = self.block_path(block);
        let file = match self.open_block(block, create) {
            Ok(file) => file,
            // The image asks only for blocks its map holds (or creates): one
            // that is gone was removed behind onefs's back. Its data is lost,
            // which must read as an error, never as zeros.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => {
                return Err(io::Error::new(
                    io::ErrorKind::Other,
                    format!(
                        "{}: block file is missing, though the store held it (removed behind onefs's back?)",
                        path.display()
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        // The mount skips this check for a store unchanged since its clean
        // unmount; a file resized in place since is caught here.
        self.check_length(&path, file.metadata().map_err(|e| at(&path, e))?.len())?;
        let file = Arc::new(file);
        let mut shard = lock(self.shard(block));
        let now = shard.tick();
        if shard.files.len() >= self.fds_per_shard
            && let Some(oldest) = shard.files.iter().min_by_key(|(_, cached)| cached.used).map(|(b, _)| *b)
        {
            shard.files.remove(&oldest);
        }
        shard.files.insert(block, CachedFd { file: file.clone(), used: now, misses: 0 });
        Ok(file)
    }

    /// Opens a block file (never through a link, only a regular file). Out
    /// of descriptors, it closes cached ones and tries again: a limit onefs
    /// can work within is never an error.
    fn open_block(&self, block: u64, create: bool) -> io::Result<File> {
        let mut attempts = 0;
        loop {
            match self.open_block_once(block, create) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) && attempts < 3 => {
                    attempts += 1;
                    let closed = self.close_idle_descriptors();
                    log::debug!("{}: out of descriptors; closed {closed} cached ones", self.root.display());
                    if closed == 0 {
                        // Held by requests in flight: give them a moment.
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
                other => return other,
            }
        }
    }

    fn open_block_once(&self, block: u64, create: bool) -> io::Result<File> {
        let name = self.geometry.block_name(block);
        if self.read_only {
            return self.dir.open_file_with(&name, Access::Read, libc::O_NOATIME).or_else(|e| {
                // O_NOATIME is refused for files we do not own.
                if e.raw_os_error() == Some(libc::EPERM) { self.dir.open_file(&name, Access::Read) } else { Err(e) }
            });
        }
        let access = if create { Access::Create(0o600) } else { Access::ReadWrite };
        self.dir
            .open_file_with(&name, access, libc::O_NOATIME)
            .or_else(|e| if e.raw_os_error() == Some(libc::EPERM) { self.dir.open_file(&name, access) } else { Err(e) })
            .or_else(|e| {
                // A store that turned read-only (or an immutable block file)
                // still serves reads; writes through this descriptor then
                // fail with EBADF, as they should.
                if !create && matches!(e.raw_os_error(), Some(libc::EROFS | libc::EACCES | libc::EPERM)) {
                    self.dir.open_file(&name, Access::Read)
                } else {
                    Err(e)
                }
            })
    }

    /// Closes the older half of every shard's cached descriptors; returns
    /// how many it dropped (a descriptor still in use closes when its
    /// request ends).
    fn close_idle_descriptors(&self) -> usize {
        let mut closed = 0;
        for shard in &self.shards {
            let mut shard = lock(&shard.0);
            let mut by_age: Vec<(u64, u64)> = shard.files.iter().map(|(&b, c)| (c.used, b)).collect();
            by_age.sort_unstable();
            let drop = by_age.len().div_ceil(2);
            for &(_, block) in &by_age[..drop] {
                shard.files.remove(&block);
            }
            closed += drop;
        }
        closed
    }

    /// Counts a page-cache miss in `block`; true when it is time to read the
    /// whole block ahead.
    fn missed(&self, block: u64) -> bool {
        let mut shard = lock(self.shard(block));
        let Some(cached) = shard.files.get_mut(&block) else { return false };
        cached.misses += 1;
        if cached.misses >= MISSES_BEFORE_READ_AHEAD {
            cached.misses = 0;
            return true;
        }
        false
    }

    /// The block's descriptor if it is in the cache; never opens one.
    fn cached_file(&self, block: u64) -> Option<Arc<File>> {
        lock(self.shard(block)).files.get(&block).map(|cached| cached.file.clone())
    }

    fn forget_fd(&self, block: u64) {
        lock(self.shard(block)).files.remove(&block);
    }

    fn mark_dirty(&self, block: u64) {
        lock(self.shard(block)).dirty.insert(block);
    }

    /// True if the block file holds no non-zero byte.
    fn is_all_zero(&self, file: &File) -> io::Result<bool> {
        let len = file.metadata()?.len();
        super::blockfile::holds_only_zeros(file, len, &mut vec![0u8; 64 << 10])
    }

    /// Refuses an over-long block file (it would hide bytes past the block)
    /// and warns about short ones, which a crash between creating and sizing
    /// a block leaves: their missing tail reads as zeros, which is exactly
    /// what it means.
    fn check_block_lengths(&self, blocks: &[u64]) -> io::Result<()> {
        const SHORT_WARNINGS: u64 = 10;
        // Cold, each stat costs the kernel an inode lookup (~15 us of CPU
        // here): spread them over a few threads.
        const THREADS: usize = 4;
        let lengths: Vec<io::Result<u64>> = if blocks.len() < 1024 {
            blocks.iter().map(|&b| self.stored_len(b)).collect()
        } else {
            let chunks: Option<Vec<Vec<_>>> =
                crate::sync::in_chunks(blocks, THREADS, |chunk| chunk.iter().map(|&b| self.stored_len(b)).collect())
                    .into_iter()
                    .collect();
            chunks
                .ok_or_else(|| at(&self.root, io::Error::other("the length check panicked")))?
                .into_iter()
                .flatten()
                .collect()
        };
        let mut short = 0u64;
        for (&block, len) in blocks.iter().zip(lengths) {
            let path = self.block_path(block);
            let len = len?;
            self.check_length(&path, len)?;
            if len < self.geometry.block_size() {
                short += 1;
                if short <= SHORT_WARNINGS {
                    log::warn!(
                        "{}: short block file ({len} of {} bytes, reads as zeros past its end); run onefs fsck --repair",
                        path.display(),
                        self.geometry.block_size()
                    );
                }
            }
        }
        if short > SHORT_WARNINGS {
            log::warn!(
                "{}: {} more short block files; run onefs fsck --repair",
                self.root.display(),
                short - SHORT_WARNINGS
            );
        }
        Ok(())
    }

    /// A block file's length, looked up by name in the open store directory
    /// (no walk of the store's path for each of 100 000 files).
    fn stored_len(&self, block: u64) -> io::Result<u64> {
        let name = self.geometry.block_name(block);
        match self.dir.stat(&name)? {
            Some(stat) if stat.st_mode & libc::S_IFMT == libc::S_IFREG => Ok(stat.st_size as u64),
            Some(_) | None => self.dir.open_file(&name, Access::Read).and_then(|f| f.metadata()).map(|m| m.len()),
        }
    }

    fn check_length(&self, path: &Path, len: u64) -> io::Result<()> {
        if len > self.geometry.block_size() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: block file is {len} bytes, longer than the block size {}; check it with onefs fsck",
                    path.display(),
                    self.geometry.block_size()
                ),
            ));
        }
        Ok(())
    }

    /// The directory stamp and block count recorded by the last clean
    /// unmount, if any (and readable).
    fn read_clean_mark(&self) -> Option<(DirStamp, u64)> {
        let text = self.dir.read_small(CLEAN_MARK, 4096).ok()?;
        DirStamp::parse(std::str::from_utf8(&text).ok()?)
    }

    /// Records that the store is consistent as it stands: call after a
    /// successful final sync, with nothing else writing. Best effort: without
    /// the mark the next mount checks every block file's length.
    pub fn mark_clean(&self) -> io::Result<()> {
        let path = self.root.join(CLEAN_MARK);
        // Created once and rewritten in place afterwards, so writing it does
        // not change the directory it describes.
        let created = self.dir.kind(CLEAN_MARK)?.is_none();
        let mut file = self.dir.open_file(CLEAN_MARK, Access::Create(0o644))?;
        if created {
            self.dir.sync()?;
        }
        let blocks = self
            .dir
            .entries()?
            .iter()
            .filter(|(name, kind)| {
                // Any size: an image grown while mounted has names past the
                // end it was opened with.
                *kind == Kind::File && name.to_str().is_some_and(|n| self.geometry.parse_block_number(n).is_some())
            })
            .count() as u64;
        let stamp = DirStamp::of(self.dir.as_file()).map_err(|e| at(&self.root, e))?;
        use std::io::Write;
        file.set_len(0).map_err(|e| at(&path, e))?;
        file.write_all(stamp.render(blocks).as_bytes()).map_err(|e| at(&path, e))?;
        file.sync_all().map_err(|e| at(&path, e))
    }

    /// fsyncs the given block files; also tells whether one of them was
    /// deleted meanwhile.
    fn fsync_blocks(&self, blocks: &[u64]) -> (Vec<io::Error>, bool) {
        // Start writeback of every dirty block file before waiting for any:
        // the disk gets one deep queue instead of SYNC_THREADS files at a
        // time. Cached descriptors only; the fsyncs below make it durable.
        if blocks.len() > 1 {
            for &block in blocks {
                if let Some(file) = self.cached_file(block) {
                    start_writeback(&file);
                }
            }
        }
        let vanished = AtomicBool::new(false);
        let sync_one = |block: u64| -> io::Result<()> {
            // Runs without the block's lock: a descriptor opened here must not
            // enter the cache, or a concurrent delete + re-create could leave
            // writers holding the unlinked file.
            let file = match self.cached_file(block) {
                Some(file) => Ok(file),
                None => self.dir.open_file(&self.geometry.block_name(block), Access::Read).map(Arc::new),
            };
            match file {
                Ok(file) => file.sync_data().map_err(|e| at(&self.block_path(block), e)),
                // Deleted since it was written, maybe after this sync began and
                // took the names flag: the directory must be flushed, or the
                // deletion and the write before it could both be lost.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    vanished.store(true, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        let failures = super::blockfile::sync_blocks(blocks, sync_one);
        (failures, vanished.into_inner())
    }
}

impl BlockStore for DirStore {
    /// Also removes the temporaries a crash left (the only caller is a mount
    /// taking the store under its lock, so nothing else is writing), once
    /// the store is known to be mountable: a refused mount changes nothing.
    fn list(&self) -> io::Result<Vec<u64>> {
        let before = DirStamp::of(self.dir.as_file()).map_err(|e| at(&self.root, e))?;
        let mut blocks = Vec::new();
        let mut temporaries = Vec::new();
        for (name, kind) in self.dir.entries()? {
            let Some(name) = name.to_str() else { continue };
            if is_temporary(name) {
                temporaries.push((name.to_string(), kind));
                continue;
            }
            if !name.starts_with(crate::core::geometry::BLOCK_PREFIX) {
                continue;
            }
            let path = self.root.join(name);
            match self.geometry.parse_block_name(name) {
                // Never followed or opened: a link to a file elsewhere would
                // serve it as disk content and let writes change it.
                Some(_) if kind != Kind::File => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: block name but {}, not a regular file; onefs never follows or opens it (check the store with onefs fsck)",
                            path.display(),
                            kind.describe()
                        ),
                    ));
                }
                Some(block) => blocks.push(block),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: not a block of this image (names run {} to {})",
                            path.display(),
                            self.geometry.block_name(0),
                            self.geometry.block_name(self.geometry.block_count() - 1)
                        ),
                    ));
                }
            }
        }
        let unchanged = self.read_clean_mark().is_some_and(|mark| mark == (before, blocks.len() as u64));
        if unchanged {
            log::debug!("{}: unchanged since its clean unmount; block sizes not rechecked", self.root.display());
        } else {
            self.check_block_lengths(&blocks)?;
        }
        if self.read_only {
            if !temporaries.is_empty() {
                log::info!(
                    "{}: {} temporary files left by a crash (kept: the mount is read-only)",
                    self.root.display(),
                    temporaries.len()
                );
            }
            return Ok(blocks);
        }
        let mut removed = false;
        for (name, kind) in &temporaries {
            // Unlinking removes a link itself, never its target; a directory
            // or special file under a temporary name is left for fsck.
            if !matches!(kind, Kind::File | Kind::Symlink) {
                log::warn!(
                    "{}: {} under a temporary name, left alone",
                    self.root.join(name).display(),
                    kind.describe()
                );
                continue;
            }
            self.dir.remove(name)?;
            removed = true;
            log::warn!("{}: removed a temporary file left by a crash", self.root.join(name).display());
        }
        if removed {
            self.dir.sync()?;
        }
        Ok(blocks)
    }

    fn read_at(&self, block: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let file = self.file(block, false)?;
        // Served from the page cache without blocking when it holds the
        // range; only a miss is counted and waits for the disk.
        let mut cached = 0;
        if self.nonblocking_reads.load(Ordering::Relaxed) {
            match super::blockfile::read_cached(&file, offset, buf) {
                Cached::Read(n) => cached = n,
                Cached::Miss => {
                    if self.missed(block) {
                        read_ahead(&file, self.geometry.block_size());
                    }
                }
                Cached::Unsupported => {
                    log::debug!("{}: no non-blocking reads on this filesystem", self.root.display());
                    self.nonblocking_reads.store(false, Ordering::Relaxed);
                }
            }
        }
        super::blockfile::read_or_zeros(&file, offset + cached as u64, &mut buf[cached..])
            .map_err(|e| at(&self.block_path(block), e))
    }

    fn write_at(&self, block: u64, offset: u64, data: &[u8], create: bool) -> io::Result<()> {
        let file = self.file(block, create)?;
        if create {
            // Full length first: a block file is always exactly one block, the
            // unwritten rest a hole that reads as zeros.
            if file.metadata()?.len() < self.geometry.block_size() {
                file.set_len(self.geometry.block_size()).map_err(|e| at(&self.block_path(block), e))?;
            }
            self.flush.names_dirty.store(true, Ordering::Release);
        }
        // In pieces: one large pwrite puts the data in page-cache folios as
        // large as the write, and ext4 walks every buffer of a folio on each
        // later 4 KiB write into it. Random 4 KiB writes over 1 GiB just
        // written in 1 MiB requests, 4 MiB blocks: 34-38k IOPS with 1 MiB
        // pieces, 43-45k with 128/256 KiB, 47-49k with 64 KiB.
        for (i, piece) in data.chunks(WRITE_PIECE).enumerate() {
            let at_offset = offset + (i * WRITE_PIECE) as u64;
            file.write_all_at(piece, at_offset).map_err(|e| at(&self.block_path(block), e))?;
        }
        self.mark_dirty(block);
        // A stream of large writes, not a small random one that happens to
        // touch a block's last page.
        if data.len() >= WRITEBACK_MIN && offset + data.len() as u64 == self.geometry.block_size() {
            start_writeback(&file);
        }
        Ok(())
    }

    fn zero_range(&self, block: u64, offset: u64, len: u64) -> io::Result<Zeroed> {
        let file = self.file(block, false)?;
        let punch = nix::fcntl::fallocate(
            &*file,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset as i64,
            len as i64,
        );
        if let Err(errno) = punch {
            if errno != nix::errno::Errno::EOPNOTSUPP {
                return Err(at(&self.block_path(block), errno.into()));
            }
            let zeros = vec![0u8; len as usize];
            file.write_all_at(&zeros, offset).map_err(|e| at(&self.block_path(block), e))?;
        }
        self.mark_dirty(block);
        Ok(if self.is_all_zero(&file)? { Zeroed::AllZero } else { Zeroed::MayHoldData })
    }

    fn delete(&self, block: u64) -> io::Result<()> {
        self.forget_fd(block);
        self.dir.remove(&self.geometry.block_name(block))?;
        lock(self.shard(block)).dirty.remove(&block);
        self.flush.names_dirty.store(true, Ordering::Release);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.flush.sync(&self.root.display(), |names_dirty| {
            let blocks: Vec<u64> =
                self.shards.iter().flat_map(|shard| std::mem::take(&mut lock(&shard.0).dirty)).collect();
            let (files, vanished) = self.fsync_blocks(&blocks);
            let dirs = if names_dirty || vanished { self.dir.sync() } else { Ok(()) };
            Flushed { files, dirs }
        })
    }

    fn stored_bytes(&self, block: u64) -> Option<u64> {
        let stat = self.dir.stat(&self.geometry.block_name(block)).ok()??;
        (stat.st_mode & libc::S_IFMT == libc::S_IFREG).then_some(stat.st_blocks as u64 * 512)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::blockfile::tests::{cached_pages, evict, unwritten_pages};
    use std::fs::{self, OpenOptions};

    const BS: u64 = 64 << 10;

    fn store(dir: &Path) -> DirStore {
        DirStore::open(dir, Geometry::new(64 * BS, BS).unwrap(), false).unwrap()
    }

    fn grow_in_place(path: &Path) {
        OpenOptions::new().write(true).open(path).unwrap().set_len(BS + 1).unwrap();
    }

    #[test]
    fn a_write_larger_than_a_piece_lands_whole_and_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let block_size = 1 << 20;
        let s = DirStore::open(dir.path(), Geometry::new(4 * block_size, block_size).unwrap(), false).unwrap();
        let data: Vec<u8> = (0..5 * WRITE_PIECE + 123).map(|i| (i % 251) as u8 + 1).collect();
        s.write_at(1, 5000, &data, true).unwrap();
        let raw = fs::read(s.block_path(1)).unwrap();
        assert_eq!(raw.len() as u64, block_size);
        assert!(raw[..5000].iter().all(|&b| b == 0));
        assert!(raw[5000..5000 + data.len()] == data[..], "the pieces are out of place");
        assert!(raw[5000 + data.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn sync_writes_out_every_block_written_since_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        // More blocks than shards, so every shard holds some; small writes
        // away from a block's end, which start no writeback of their own.
        let blocks: Vec<u64> = (0..2 * FD_SHARDS as u64 + 3).collect();
        for &block in &blocks {
            s.write_at(block, 4096, b"data", true).unwrap();
        }
        s.delete(7).unwrap();
        let unwritten = |block: u64| unwritten_pages(&File::open(s.block_path(block)).unwrap());
        let missing = "this kernel has no cachestat(2) to see dirty pages with";
        if !crate::test_skip::require(crate::test_skip::Prereq::Cachestat, unwritten(0).is_some(), missing) {
            return;
        }
        let live = || blocks.iter().copied().filter(|&b| b != 7);
        assert!(live().all(|b| unwritten(b) > Some(0)), "the writes are still in the page cache");
        s.sync().unwrap();
        for block in live() {
            assert_eq!(unwritten(block), Some(0), "block {block} was not written out by sync");
        }
    }

    #[test]
    fn a_clean_mark_skips_the_length_check_and_any_name_change_voids_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.write_at(2, 0, b"two", true).unwrap();
        s.write_at(5, 100, b"five", true).unwrap();
        s.sync().unwrap();
        s.mark_clean().unwrap();
        drop(s);

        // Resized in place: the directory is unchanged, so the mount trusts
        // the mark, and the block is refused when it is opened.
        let path = dir.path().join("blk-00003");
        grow_in_place(&path);
        let s = store(dir.path());
        let mut listed = s.list().unwrap();
        listed.sort();
        assert_eq!(listed, [2, 5]);
        let err = s.read_at(2, 0, &mut [0u8; 3]).unwrap_err();
        assert!(err.to_string().contains("blk-00003: block file is 65537 bytes, longer than the block size"), "{err}");
        let mut five = [0u8; 4];
        s.read_at(5, 100, &mut five).unwrap();
        assert_eq!(&five, b"five", "other blocks still serve");
        drop(s);

        // Any created name changes the directory: every length is checked.
        fs::write(dir.path().join("unrelated"), b"").unwrap();
        let err = store(dir.path()).list().unwrap_err();
        assert!(err.to_string().contains("blk-00003: block file is 65537 bytes"), "{err}");
    }

    #[test]
    fn without_a_clean_mark_every_length_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.write_at(0, 0, b"x", true).unwrap();
        s.sync().unwrap();
        drop(s);
        grow_in_place(&dir.path().join("blk-00001"));
        let err = store(dir.path()).list().unwrap_err();
        assert!(err.to_string().contains("longer than the block size"), "{err}");
    }

    #[test]
    fn a_damaged_or_stale_mark_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.write_at(0, 0, b"x", true).unwrap();
        s.sync().unwrap();
        s.mark_clean().unwrap();
        let text = fs::read_to_string(dir.path().join(CLEAN_MARK)).unwrap();
        let (stamp, blocks) = DirStamp::parse(&text).unwrap();
        assert_eq!((stamp, blocks), (DirStamp::of(s.dir.as_file()).unwrap(), 1));
        for bad in ["", "onefs clean unmount v1 ino=1", "onefs clean unmount v2 ino=1 mtime=1.0 ctime=1.0 blocks=1"] {
            assert_eq!(DirStamp::parse(bad), None, "{bad:?}");
        }
        // A block count that no longer matches voids the mark.
        fs::write(dir.path().join(CLEAN_MARK), stamp.render(7)).unwrap();
        grow_in_place(&dir.path().join("blk-00001"));
        let s = store(dir.path());
        assert!(s.list().is_err(), "a stale mark must not skip the check");
    }

    #[test]
    fn reads_are_exact_whether_cached_evicted_or_past_a_short_end() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data: Vec<u8> = (0..BS).map(|i| (i % 251) as u8 + 1).collect();
        s.write_at(3, 0, &data, true).unwrap();
        let file = s.file(3, false).unwrap();
        let read = |offset: usize, len: usize| {
            let mut buf = vec![0u8; len];
            s.read_at(3, offset as u64, &mut buf).unwrap();
            buf
        };
        assert_eq!(read(4096, 8192), data[4096..12288], "cached");
        evict(&file);
        assert_eq!(read(8192, 4096), data[8192..12288], "evicted");
        evict(&file);
        assert_eq!(read(0, 4096), data[..4096]);
        assert_eq!(read(0, 3 * 4096), data[..3 * 4096], "first page cached, the rest maybe not");
        file.set_len(BS / 2).unwrap();
        let across = read(BS as usize / 2 - 4096, 8192);
        assert_eq!(across[..4096], data[BS as usize / 2 - 4096..BS as usize / 2]);
        assert!(across[4096..].iter().all(|&b| b == 0), "a short block file reads as zeros past its end");
    }

    #[test]
    fn a_block_that_keeps_missing_the_page_cache_is_read_ahead_whole() {
        const BIG: u64 = 4 << 20;
        let dir = tempfile::tempdir().unwrap();
        let s = DirStore::open(dir.path(), Geometry::new(4 * BIG, BIG).unwrap(), false).unwrap();
        s.write_at(1, 0, &vec![9u8; BIG as usize], true).unwrap();
        let file = s.file(1, false).unwrap();
        let all_cached = |file: &File| cached_pages(file, BIG as usize) == (BIG / 4096) as usize;
        for miss in 1..MISSES_BEFORE_READ_AHEAD {
            evict(&file);
            s.read_at(1, 0, &mut [0u8; 4096]).unwrap();
            assert!(!all_cached(&file), "read ahead whole after only {miss} misses");
        }
        // A miss can be served after all when the disk answers within the
        // call, so keep missing until the block is read ahead.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        'missing: loop {
            evict(&file);
            s.read_at(1, 0, &mut [0u8; 4096]).unwrap();
            for _ in 0..200 {
                if all_cached(&file) {
                    break 'missing;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(std::time::Instant::now() < deadline, "never read ahead whole");
        }
        assert!(!s.missed(7), "a block without a cached descriptor is not counted");
    }
}
