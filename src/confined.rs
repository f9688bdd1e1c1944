//! A directory whose entries are untrusted: a store, a cache directory.
//!
//! Everything is opened relative to the directory's descriptor, held from
//! the moment it is opened, so renaming or moving the directory changes
//! nothing; a name is never followed when it is a symbolic link, and only a
//! regular file is ever opened as a file (a FIFO, socket or device in its
//! place is refused without blocking). Anyone who can write a store could
//! otherwise make a root daemon read or overwrite any file on the machine.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What a name in a directory is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl Kind {
    fn from_mode(mode: libc::mode_t) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Directory,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            _ => Kind::Unknown,
        }
    }

    fn from_dirent(kind: Option<nix::dir::Type>) -> Option<Self> {
        use nix::dir::Type;
        Some(match kind? {
            Type::File => Kind::File,
            Type::Directory => Kind::Directory,
            Type::Symlink => Kind::Symlink,
            Type::Fifo => Kind::Fifo,
            Type::Socket => Kind::Socket,
            Type::CharacterDevice => Kind::CharDevice,
            Type::BlockDevice => Kind::BlockDevice,
        })
    }

    /// "a symbolic link", "a FIFO", … for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Directory => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Fifo => "a FIFO",
            Kind::Socket => "a socket",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
            Kind::Unknown => "of an unknown kind",
        }
    }
}

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
    /// Read and write, created with this mode if absent.
    Create(u32),
    /// Write, created with this mode; an existing name is an error.
    CreateNew(u32),
}

/// The error for a name that is there but is not a regular file. Its errno
/// is EIO for the kernel; the message says what was found.
pub fn not_a_file(path: &Path, kind: Kind) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: is {}, not a regular file (onefs never follows or opens it)", path.display(), kind.describe()),
    )
}

fn c_name(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a plain file name")));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} holds a NUL byte")))
}

#[derive(Debug)]
pub struct ConfinedDir {
    dir: File,
    path: PathBuf,
}

impl ConfinedDir {
    /// Opens the directory `path` names. The path itself is the caller's to
    /// trust (an operator's choice, which may well go through a link).
    pub fn open(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| crate::errors::context(path.display(), e))?;
        Ok(Self { dir, path: path.to_path_buf() })
    }

    /// The path the directory was opened by, for messages (it may have been
    /// renamed since).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn as_file(&self) -> &File {
        &self.dir
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// A subdirectory, never through a link.
    pub fn subdir(&self, name: &str) -> io::Result<ConfinedDir> {
        let c = c_name(name)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: openat with a NUL-terminated name on a descriptor we own.
        let fd = unsafe { libc::openat(self.dir.as_raw_fd(), c.as_ptr(), flags) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                // ELOOP: the name is a link; ENOTDIR: something else.
                Some(libc::ELOOP | libc::ENOTDIR) => match self.kind(name) {
                    Ok(Some(kind)) if kind != Kind::Directory => io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: is {}, not a directory (onefs never follows it)",
                            self.join(name).display(),
                            kind.describe()
                        ),
                    ),
                    _ => crate::errors::context(self.join(name).display(), err),
                },
                _ => crate::errors::context(self.join(name).display(), err),
            });
        }
        // SAFETY: a descriptor openat just returned, owned by nobody else.
        Ok(ConfinedDir { dir: unsafe { File::from_raw_fd(fd) }, path: self.join(name) })
    }

    /// Creates the subdirectory `name` (mode `mode`) if it is absent, then
    /// opens it.
    pub fn create_subdir(&self, name: &str, mode: u32) -> io::Result<ConfinedDir> {
        match nix::sys::stat::mkdirat(self.fd(), name, nix::sys::stat::Mode::from_bits_truncate(mode)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => self.subdir(name),
            Err(e) => Err(crate::errors::context(self.join(name).display(), e.into())),
        }
    }

    /// Opens the regular file `name`. A link is never followed and anything
    /// but a regular file is refused, without blocking on a FIFO or device.
    pub fn open_file(&self, name: &str, access: Access) -> io::Result<File> {
        self.open_file_with(name, access, 0)
    }

    /// [`open_file`](Self::open_file) with extra `open(2)` flags (O_NOATIME).
    pub fn open_file_with(&self, name: &str, access: Access, extra: libc::c_int) -> io::Result<File> {
        let c = c_name(name)?;
        let (mut flags, mode) = match access {
            Access::Read => (libc::O_RDONLY, 0),
            Access::ReadWrite => (libc::O_RDWR, 0),
            Access::Create(mode) => (libc::O_RDWR | libc::O_CREAT, mode),
            Access::CreateNew(mode) => (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode),
        };
        flags |= libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC | extra;
        let path = || self.join(name);
        // SAFETY: openat with a NUL-terminated name on a descriptor we own.
        let fd = unsafe { libc::openat(self.dir.as_raw_fd(), c.as_ptr(), flags, mode as libc::c_uint) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ELOOP) {
                return Err(not_a_file(&path(), Kind::Symlink));
            }
            if err.raw_os_error() == Some(libc::EISDIR) {
                return Err(not_a_file(&path(), Kind::Directory));
            }
            return Err(crate::errors::context(path().display(), err));
        }
        // SAFETY: a descriptor openat just returned, owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let stat = nix::sys::stat::fstat(&file).map_err(|e| crate::errors::context(path().display(), e.into()))?;
        let kind = Kind::from_mode(stat.st_mode);
        if kind != Kind::File {
            return Err(not_a_file(&path(), kind));
        }
        // Regular files ignore O_NONBLOCK today; clear it so that no
        // filesystem ever answers a read with EAGAIN.
        // Only O_NONBLOCK goes: O_NOATIME (and anything else asked for) stays.
        let status = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| crate::errors::context(path().display(), e.into()))?;
        let status = nix::fcntl::OFlag::from_bits_truncate(status) - nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(status))
            .map_err(|e| crate::errors::context(path().display(), e.into()))?;
        Ok(file)
    }

    /// Reads the regular file `name` whole, refusing one longer than `cap`
    /// bytes (a description is small; `/dev/zero` in its place is not).
    pub fn read_small(&self, name: &str, cap: u64) -> io::Result<Vec<u8>> {
        let file = self.open_file(name, Access::Read)?;
        let mut data = Vec::new();
        file.take(cap + 1).read_to_end(&mut data).map_err(|e| crate::errors::context(self.join(name).display(), e))?;
        if data.len() as u64 > cap {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: longer than {cap} bytes; this is not the file onefs wrote", self.join(name).display()),
            ));
        }
        Ok(data)
    }

    /// What `name` is, without following it; `None` if it does not exist.
    pub fn kind(&self, name: &str) -> io::Result<Option<Kind>> {
        Ok(self.stat(name)?.map(|s| Kind::from_mode(s.st_mode)))
    }

    /// `lstat` of `name` relative to the directory; `None` if absent.
    pub fn stat(&self, name: &str) -> io::Result<Option<libc::stat>> {
        match nix::sys::stat::fstatat(self.fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(crate::errors::context(self.join(name).display(), e.into())),
        }
    }

    /// Removes the name `name` (a link itself, never its target); returns
    /// whether it was there.
    pub fn remove(&self, name: &str) -> io::Result<bool> {
        match nix::unistd::unlinkat(self.fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::ENOENT) => Ok(false),
            Err(e) => Err(crate::errors::context(self.join(name).display(), e.into())),
        }
    }

    /// Gives the file `from` the additional name `to`; fails if `to` exists.
    pub fn link(&self, from: &str, to: &str) -> io::Result<()> {
        nix::unistd::linkat(self.fd(), from, self.fd(), to, nix::fcntl::AtFlags::empty())
            .map_err(|e| crate::errors::context(self.join(to).display(), e.into()))
    }

    /// Renames `from` to `to` inside the directory, replacing `to`.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        nix::fcntl::renameat(self.fd(), from, self.fd(), to)
            .map_err(|e| crate::errors::context(self.join(to).display(), e.into()))
    }

    /// Moves `from` of this directory to `to` of `other` (same filesystem),
    /// replacing `to`.
    pub fn rename_into(&self, from: &str, other: &ConfinedDir, to: &str) -> io::Result<()> {
        nix::fcntl::renameat(self.fd(), from, other.fd(), to)
            .map_err(|e| crate::errors::context(other.join(to).display(), e.into()))
    }

    /// Makes the directory's entries durable.
    pub fn sync(&self) -> io::Result<()> {
        self.dir.sync_all().map_err(|e| crate::errors::context(self.path.display(), e))
    }

    /// Every name in the directory (but `.` and `..`) and what it is, read
    /// through the held descriptor.
    pub fn entries(&self) -> io::Result<Vec<(OsString, Kind)>> {
        let ctx = |e: nix::errno::Errno| crate::errors::context(self.path.display(), e.into());
        let mut dir = nix::dir::Dir::openat(
            self.fd(),
            ".",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(ctx)?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(ctx)?;
            let name: &CStr = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let name = OsStr::from_bytes(bytes).to_os_string();
            let kind = match Kind::from_dirent(entry.file_type()) {
                Some(kind) => kind,
                // Filesystems without d_type: ask.
                None => match name.to_str() {
                    Some(n) => self.kind(n)?.unwrap_or(Kind::Unknown),
                    None => Kind::Unknown,
                },
            };
            out.push((name, kind));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_and_special_files_are_never_opened() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"keep").unwrap();
        let dir = tempfile::tempdir().unwrap();
        symlink(&secret, dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let d = ConfinedDir::open(dir.path()).unwrap();
        for access in [Access::Read, Access::ReadWrite, Access::Create(0o600)] {
            let err = d.open_file("link", access).unwrap_err().to_string();
            assert!(err.contains("link: is a symbolic link, not a regular file"), "{err}");
            let err = d.open_file("sub", access).unwrap_err().to_string();
            assert!(err.contains("sub: is a directory"), "{err}");
            // A FIFO opened for reading would block forever without O_NONBLOCK.
            let err = d.open_file("fifo", access).unwrap_err().to_string();
            assert!(err.contains("fifo: is a FIFO"), "{err}");
        }
        assert!(d.read_small("link", 100).is_err());
        assert!(d.remove("link").unwrap(), "the link itself is removed");
        assert_eq!(std::fs::read(&secret).unwrap(), b"keep", "its target is untouched");
        assert!(d.subdir("fifo").unwrap_err().to_string().contains("is a FIFO, not a directory"));
        symlink(outside.path(), dir.path().join("dirlink")).unwrap();
        assert!(d.subdir("dirlink").unwrap_err().to_string().contains("is a symbolic link, not a directory"));
        let mut kinds = d.entries().unwrap();
        kinds.sort();
        let names: Vec<_> = kinds.iter().map(|(n, k)| (n.to_str().unwrap(), *k)).collect();
        assert_eq!(names, [("dirlink", Kind::Symlink), ("fifo", Kind::Fifo), ("sub", Kind::Directory)]);
        assert!(d.open_file("../x", Access::Read).is_err(), "only plain names");
    }

    #[test]
    fn works_from_the_descriptor_after_the_directory_is_renamed() {
        let base = tempfile::tempdir().unwrap();
        let first = base.path().join("a");
        std::fs::create_dir(&first).unwrap();
        let d = ConfinedDir::open(&first).unwrap();
        std::fs::rename(&first, base.path().join("b")).unwrap();
        std::fs::create_dir(&first).unwrap();
        use std::io::Write;
        d.open_file("f", Access::Create(0o600)).unwrap().write_all(b"x").unwrap();
        assert_eq!(std::fs::read(base.path().join("b/f")).unwrap(), b"x");
        assert!(!first.join("f").exists(), "nothing lands at the old path");
    }

    #[test]
    fn extra_flags_stay_and_only_o_nonblock_goes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let d = ConfinedDir::open(dir.path()).unwrap();
        let file = d.open_file_with("f", Access::ReadWrite, libc::O_NOATIME).unwrap();
        let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_NONBLOCK, 0, "O_NONBLOCK is cleared");
        assert_ne!(flags & libc::O_NOATIME, 0, "O_NOATIME is kept");
    }

    #[test]
    fn read_small_refuses_what_is_too_long() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![b'x'; 101]).unwrap();
        let d = ConfinedDir::open(dir.path()).unwrap();
        assert_eq!(d.read_small("f", 101).unwrap().len(), 101);
        assert!(d.read_small("f", 100).unwrap_err().to_string().contains("longer than 100 bytes"));
    }
}
