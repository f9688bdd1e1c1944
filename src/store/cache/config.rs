//! Configuration of the cache: its `[cache]` table.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync returns once the cache is durable on local disk.
    Local,
    /// fsync returns once every block dirtied before it is in the backend.
    Remote,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Local => "local",
            Durability::Remote => "remote",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Bytes of clean blocks the cache holds; dirty blocks go past it while
    /// uploads cannot drain (writers never wait for the backend).
    pub size: u64,
    pub durability: Durability,
    pub upload_workers: usize,
    /// How long after a block is first dirtied it is uploaded.
    pub upload_delay: Duration,
    /// How long a read of an uncached block (or a `remote` fsync) keeps
    /// retrying a backend that fails transiently before EIO (a permanent
    /// failure is EIO at once).
    pub retry_timeout: Duration,
}

impl CacheConfig {
    pub const DEFAULT_SIZE: u64 = 10 << 30;
    pub const DEFAULT_WORKERS: usize = 4;
    pub const DEFAULT_DELAY: Duration = Duration::from_secs(2);
    pub const DEFAULT_RETRY: Duration = Duration::from_secs(30);

    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            size: Self::DEFAULT_SIZE,
            durability: Durability::Local,
            upload_workers: Self::DEFAULT_WORKERS,
            upload_delay: Self::DEFAULT_DELAY,
            retry_timeout: Self::DEFAULT_RETRY,
        }
    }
}
