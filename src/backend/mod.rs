//! Object backends: remote stores that hold whole objects by key (S3,
//! rclone remotes such as Box). They sit under the cache layer
//! (`store::cache`), which turns the image's partial block reads and writes
//! into whole-object transfers, so a backend only ever moves whole blocks.
//!
//! Keys are `/`-separated relative names (`onefs.json`, `d0000/blk-000001`);
//! a backend maps them under its own bucket, prefix or folder.
//!
//! A call makes one attempt; the caller retries ([`retry`] says who and how).

pub mod dir;
#[cfg(any(test, feature = "testing"))]
pub mod fault;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod rclone;
pub mod remote_lock;
pub mod retry;
pub mod s3;

use std::io;
use std::path::Path;

pub use dir::DirObjects;
#[cfg(any(test, feature = "testing"))]
pub use memory::MemBackend;
pub use rclone::{RcloneBackend, RcloneConfig};
pub use remote_lock::RemoteLock;
pub use retry::{Retry, Retrying};
pub use s3::{S3Backend, S3Config};

/// Whole objects by key. Each call makes exactly one attempt; a failure
/// that no attempt can fix is marked with [`retry::permanent`], every other
/// one is worth retrying. Errors name the backend, the operation and the key.
/// What the methods promise is checked for every backend by one function,
/// `check_contract` in tests/backend_contract.rs: a new backend gets a test
/// there.
pub trait ObjectBackend: Send + Sync {
    /// Where this backend points, for messages (`s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// The object's bytes, or `None` if it does not exist.
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>>;

    /// Creates or replaces an object.
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()>;

    /// Uploads a local file as an object (backends that can stream or copy
    /// a file, like rclone's `operations/copyfile`, override this).
    fn put_file(&self, key: &str, path: &Path) -> io::Result<()> {
        let data = std::fs::read(path).map_err(|e| {
            crate::errors::context(format!("{}: PUT {key} from {}", self.describe(), path.display()), e)
        })?;
        self.put(key, &data)
    }

    /// Removes an object; removing a missing object is not an error.
    fn delete(&self, key: &str) -> io::Result<()>;

    /// Every key under `prefix` (recursively), in no particular order.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
}

/// Runs one backend request and logs at debug level how long it took
/// (`--log-level debug` shows where a mount's time goes).
pub(crate) fn timed<T>(
    store: &str,
    what: impl FnOnce() -> String,
    request: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    if !log::log_enabled!(log::Level::Debug) {
        return request();
    }
    let started = std::time::Instant::now();
    let result = request();
    let outcome = if result.is_ok() { "done" } else { "failed" };
    log::debug!("{store}: {} {outcome} in {} ms", what(), started.elapsed().as_millis());
    result
}

/// Objects per folder on remote stores: cloud drives list folders 1000
/// entries a page, so blocks are spread over subfolders of at most this many.
pub const BLOCKS_PER_FOLDER: u64 = 1000;

/// The key of block `block` (0-based) given its file name
/// (`Geometry::block_name`): `d0000/blk-000001`, `d0001/blk-001001`, ...
pub fn block_key(block: u64, block_name: &str) -> String {
    format!("d{:04}/{block_name}", block / BLOCKS_PER_FOLDER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_keys_spread_over_folders_of_a_thousand() {
        assert_eq!(block_key(0, "blk-000001"), "d0000/blk-000001");
        assert_eq!(block_key(999, "blk-001000"), "d0000/blk-001000");
        assert_eq!(block_key(1000, "blk-001001"), "d0001/blk-001001");
    }
}
