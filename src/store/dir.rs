//! The local directory store: block `i` is the file `blk-<i+1>` holding
//! exactly the raw bytes of that block (holes where it was zeroed), so a store
//! stays readable with standard tools.

use super::{BlockStore, Zeroed};
use crate::core::Geometry;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const FD_SHARDS: usize = 16;
const FDS_PER_SHARD: usize = 64;

pub struct DirStore {
    root: PathBuf,
    dir: File,
    geometry: Geometry,
    fds: Vec<Mutex<FdShard>>,
    clock: AtomicU64,
    /// Blocks written since the last sync.
    dirty: Mutex<HashSet<u64>>,
    /// Created/removed files and sticky flush failures.
    flush: super::blockfile::FlushState,
}

#[derive(Default)]
struct FdShard {
    files: HashMap<u64, (Arc<File>, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts writing a block file's dirty pages to disk without waiting.
///
/// Called when a write reaches the end of a block, which is where a stream
/// of writes leaves it: the disk starts on it now instead of at the next
/// fsync, which then has that much less to do. A hint only: durability still
/// comes from `sync`, so a failure here is ignored.
fn start_writeback(file: &File) {
    // SAFETY: plain syscall on a descriptor we own; offset 0, length 0 = whole file.
    unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Names the block file in an I/O error, keeping its errno.
fn at(path: &Path, err: io::Error) -> io::Error {
    crate::errors::context(path.display(), err)
}

impl DirStore {
    pub fn open(root: &Path, geometry: Geometry) -> io::Result<Self> {
        let dir = File::open(root).map_err(|e| at(root, e))?;
        Ok(Self {
            root: root.to_path_buf(),
            dir,
            geometry,
            fds: (0..FD_SHARDS).map(|_| Mutex::new(FdShard::default())).collect(),
            clock: AtomicU64::new(0),
            dirty: Mutex::new(HashSet::new()),
            flush: Default::default(),
        })
    }

    /// Removes temporary files (`.NAME.tmp`) a crash may have left, so a
    /// store holds only its description, lock and block files. Only called
    /// when a mount takes the store, under its lock: nothing else is running.
    pub fn remove_temporaries(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.root).map_err(|e| at(&self.root, e))? {
            let entry = entry.map_err(|e| at(&self.root, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') && name.ends_with(".tmp") {
                fs::remove_file(entry.path()).map_err(|e| at(&entry.path(), e))?;
                log::warn!("{}: removed a temporary file left by a crash", entry.path().display());
                removed += 1;
            }
        }
        if removed > 0 {
            self.dir.sync_all().map_err(|e| at(&self.root, e))?;
        }
        Ok(removed)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn block_path(&self, block: u64) -> PathBuf {
        self.root.join(self.geometry.block_name(block))
    }

    fn shard(&self, block: u64) -> &Mutex<FdShard> {
        &self.fds[(block as usize) % FD_SHARDS]
    }

    /// An open descriptor for a block file, from the cache or freshly opened.
    fn file(&self, block: u64, create: bool) -> io::Result<Arc<File>> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Some((file, used)) = lock(self.shard(block)).files.get_mut(&block) {
            *used = now;
            return Ok(file.clone());
        }
        let path = self.block_path(block);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOATIME)
            .open(&path)
            .or_else(|e| {
                // O_NOATIME is refused for files we do not own; retry without.
                if e.raw_os_error() == Some(libc::EPERM) {
                    OpenOptions::new().read(true).write(true).create(create).mode(0o600).open(&path)
                } else {
                    Err(e)
                }
            })
            .or_else(|e| {
                // A store that turned read-only still serves reads; writes
                // through this descriptor then fail with EBADF, as they should.
                if !create && matches!(e.raw_os_error(), Some(libc::EROFS | libc::EACCES)) {
                    File::open(&path)
                } else {
                    Err(e)
                }
            })
            .map_err(|e| at(&path, e))?;
        let file = Arc::new(file);
        let mut shard = lock(self.shard(block));
        if shard.files.len() >= FDS_PER_SHARD {
            if let Some(oldest) = shard.files.iter().min_by_key(|(_, (_, used))| *used).map(|(b, _)| *b) {
                shard.files.remove(&oldest);
            }
        }
        shard.files.insert(block, (file.clone(), now));
        Ok(file)
    }

    fn forget_fd(&self, block: u64) {
        lock(self.shard(block)).files.remove(&block);
    }

    fn mark_dirty(&self, block: u64) {
        lock(&self.dirty).insert(block);
    }

    /// True if the block file holds no non-zero byte.
    fn is_all_zero(&self, file: &File) -> io::Result<bool> {
        let len = file.metadata()?.len();
        super::blockfile::holds_only_zeros(file, len, &mut vec![0u8; 64 << 10])
    }

    fn fsync_blocks(&self, blocks: &[u64]) -> Vec<io::Error> {
        let sync_one = |block: u64| -> io::Result<()> {
            // Runs without the block's lock: a descriptor opened here must not
            // enter the cache, or a concurrent delete + re-create could leave
            // writers holding the unlinked file.
            let cached = lock(self.shard(block)).files.get(&block).map(|(f, _)| f.clone());
            let file = match cached {
                Some(file) => Ok(file),
                None => File::open(self.block_path(block)).map_err(|e| at(&self.block_path(block), e)).map(Arc::new),
            };
            match file {
                Ok(file) => file.sync_data().map_err(|e| at(&self.block_path(block), e)),
                // Deleted since it was written: the directory sync covers it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        };
        super::blockfile::sync_blocks(blocks, sync_one)
    }
}

impl BlockStore for DirStore {
    fn list(&self) -> io::Result<Vec<u64>> {
        const SHORT_WARNINGS: u64 = 10;
        let mut blocks = Vec::new();
        let mut short = 0u64;
        for entry in fs::read_dir(&self.root).map_err(|e| at(&self.root, e))? {
            let entry = entry.map_err(|e| at(&self.root, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(crate::core::geometry::BLOCK_PREFIX) {
                continue;
            }
            match self.geometry.parse_block_name(name) {
                Some(block) => {
                    let path = self.root.join(name);
                    let len = entry.metadata().map_err(|e| at(&path, e))?.len();
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
                    if len < self.geometry.block_size() {
                        // A crash between creating a block file and sizing it
                        // leaves one short; its missing tail reads as zeros,
                        // which is exactly what it means.
                        short += 1;
                        if short <= SHORT_WARNINGS {
                            log::warn!(
                                "{}: short block file ({len} of {} bytes, reads as zeros past its end); run onefs fsck --repair",
                                path.display(),
                                self.geometry.block_size()
                            );
                        }
                    }
                    blocks.push(block)
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: not a block of this image (names run {} to {})",
                            self.root.join(name).display(),
                            self.geometry.block_name(0),
                            self.geometry.block_name(self.geometry.block_count() - 1)
                        ),
                    ));
                }
            }
        }
        if short > SHORT_WARNINGS {
            log::warn!("{}: {} more short block files; run onefs fsck --repair", self.root.display(), short - SHORT_WARNINGS);
        }
        Ok(blocks)
    }

    fn read_at(&self, block: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let file = match self.file(block, false) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                buf.fill(0);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(at(&self.block_path(block), e)),
            }
        }
        buf[done..].fill(0);
        Ok(())
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
        file.write_all_at(data, offset).map_err(|e| at(&self.block_path(block), e))?;
        self.mark_dirty(block);
        if offset + data.len() as u64 == self.geometry.block_size() {
            start_writeback(&file);
        }
        Ok(())
    }

    fn zero_range(&self, block: u64, offset: u64, len: u64) -> io::Result<Zeroed> {
        let file = match self.file(block, false) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Zeroed::AllZero),
            Err(e) => return Err(e),
        };
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
        let path = self.block_path(block);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(&path, e)),
        }
        lock(&self.dirty).remove(&block);
        self.flush.names_dirty.store(true, Ordering::Release);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let blocks: Vec<u64> = std::mem::take(&mut *lock(&self.dirty)).into_iter().collect();
        let names_dirty = self.flush.take_names_dirty();
        let failures = self.fsync_blocks(&blocks);
        let dir_result = if names_dirty { self.dir.sync_all().map_err(|e| at(&self.root, e)) } else { Ok(()) };
        self.flush.finish(failures, dir_result, &self.root.display())
    }

    fn stored_bytes(&self, block: u64) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(self.block_path(block)).ok().map(|m| m.blocks() * 512)
    }
}
