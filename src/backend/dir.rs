//! `dir`: objects as files under a local directory (a slow disk, an NFS
//! mount), for a cache in front of it and for tests.
//!
//! Key `d0000/blk-000001` is the file `ROOT/d0000/blk-000001`; folders are
//! created as needed. A put writes a temporary file beside the object,
//! fsyncs it, renames it into place and fsyncs the folder, so an object is
//! always whole. The root itself is never created: if it disappears (an
//! unmounted NFS share), every operation fails instead of writing elsewhere.

use super::ObjectBackend;
use super::retry::permanent;
use crate::errors::context;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Temporary files start with this; `list` skips them.
const TMP_PREFIX: &str = ".tmp-";

pub struct DirObjects {
    root: PathBuf,
    counter: AtomicU64,
}

impl DirObjects {
    /// A backend over the existing directory `root`.
    pub fn new(root: &Path) -> io::Result<Self> {
        let meta = fs::metadata(root).map_err(|e| context(root.display(), e))?;
        if !meta.is_dir() {
            return Err(context(root.display(), io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        Ok(Self { root: root.to_path_buf(), counter: AtomicU64::new(0) })
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        let bad = key.is_empty()
            || key.starts_with('/')
            || key.split('/').any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with(TMP_PREFIX));
        if bad {
            return Err(permanent(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: invalid object key {key:?}", self.root.display()),
            )));
        }
        Ok(self.root.join(key))
    }

    /// Fails (ENOENT) when the root has gone, so a missing object is only
    /// reported as missing while the backend is really there.
    fn check_root(&self) -> io::Result<()> {
        fs::metadata(&self.root).map(drop).map_err(|e| failure(&self.root, e))
    }

    fn sync_dir(dir: &Path) -> io::Result<()> {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| failure(dir, e))
    }
}

/// A local error as a backend failure naming `path`: a permission or
/// read-only error needs an operator (permanent); others, such as a
/// vanished NFS mount, may pass (transient).
fn failure(path: &Path, e: io::Error) -> io::Error {
    let needs_operator = matches!(e.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem);
    let e = context(path.display(), e);
    if needs_operator { permanent(e) } else { e }
}

impl ObjectBackend for DirObjects {
    fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        match fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.check_root().map(|()| None),
            Err(e) => Err(failure(&path, e)),
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let path = self.path(key)?;
        self.check_root()?;
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        if parent != self.root {
            // Only below the root, which must exist.
            fs::create_dir_all(&parent).map_err(|e| failure(&parent, e))?;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = parent.join(format!("{TMP_PREFIX}{}-{n}-{name}", std::process::id()));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_data()))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(failure(&path, e));
        }
        Self::sync_dir(&parent)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Self::sync_dir(path.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.check_root(),
            Err(e) => Err(failure(&path, e)),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.check_root()?;
        let mut keys = vec![];
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            for entry in fs::read_dir(&dir).map_err(|e| failure(&dir, e))? {
                let entry = entry.map_err(|e| failure(&dir, e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
                if name.starts_with(TMP_PREFIX) {
                    continue;
                }
                let key = if rel.is_empty() { name } else { format!("{rel}/{}", name) };
                let kind = entry.file_type().map_err(|e| failure(&entry.path(), e))?;
                if kind.is_dir() {
                    stack.push((entry.path(), key));
                } else if kind.is_file() && key.starts_with(prefix) {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // What every backend promises (round trips, listing, deletes) is checked
    // in tests/backend_contract.rs; here, what is particular to files.

    #[test]
    fn objects_are_plain_files_keys_stay_inside_and_temporaries_are_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let b = DirObjects::new(dir.path()).unwrap();
        b.put("d0001/blk-001001", b"two").unwrap();
        assert_eq!(fs::read(dir.path().join("d0001/blk-001001")).unwrap(), b"two");
        fs::write(dir.path().join("d0001").join(format!("{TMP_PREFIX}1-2-blk-001002")), b"half").unwrap();
        assert_eq!(b.list("").unwrap(), ["d0001/blk-001001"], "a temporary is not an object");
        for bad in ["", "/abs", "a/../b", "a//b", ".tmp-x", "d0001/.tmp-1-2-blk-001002"] {
            assert!(b.put(bad, b"x").is_err(), "{bad:?} accepted");
            assert!(b.get(bad).is_err(), "{bad:?} read");
        }
    }

    #[test]
    fn a_vanished_root_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("objects");
        fs::create_dir(&root).unwrap();
        let b = DirObjects::new(&root).unwrap();
        b.put("d0000/blk-000001", b"one").unwrap();
        fs::rename(&root, dir.path().join("away")).unwrap();
        assert!(b.get("d0000/blk-000001").is_err());
        assert!(b.put("d0000/blk-000002", b"x").is_err());
        assert!(b.list("").is_err());
        assert!(!root.exists(), "put recreated the root");
    }
}
