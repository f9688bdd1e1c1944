//! Block stores: where block contents live.
//!
//! The image above guarantees, for any one block, that `write_at` creating a
//! block, `zero_range` and `delete` never run concurrently with any other
//! call for the same block; reads and writes of an existing block may run in
//! parallel with each other. Different blocks are always independent. Layers
//! (cache, checks, fault injection) wrap another `BlockStore` and keep this
//! contract.

pub mod blockfile;
pub mod cache;
#[cfg(any(test, feature = "testing"))]
pub mod crash;
pub mod dir;
#[cfg(any(test, feature = "testing"))]
pub mod fault;
#[cfg(any(test, feature = "testing"))]
pub mod memory;

use std::io;

pub use dir::DirStore;
#[cfg(any(test, feature = "testing"))]
pub use memory::MemStore;

/// What is known about a block after part of it was zeroed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeroed {
    /// The block is now all zeros and may be deleted.
    AllZero,
    /// The block still holds data (or the store cannot tell cheaply).
    MayHoldData,
}

pub trait BlockStore: Send + Sync {
    /// Blocks present when the store is opened (unordered).
    fn list(&self) -> io::Result<Vec<u64>>;

    /// Reads part of a stored block. Bytes the store does not hold (a short
    /// block file, a missing block after a race) read as zeros.
    fn read_at(&self, block: u64, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes part of a block. With `create`, the block did not exist: the
    /// rest of it is zeros.
    fn write_at(&self, block: u64, offset: u64, data: &[u8], create: bool) -> io::Result<()>;

    /// Zeroes part of a stored block and says whether the whole block is now
    /// zero.
    fn zero_range(&self, block: u64, offset: u64, len: u64) -> io::Result<Zeroed>;

    /// Removes a block; removing an absent block is not an error.
    fn delete(&self, block: u64) -> io::Result<()>;

    /// Makes every completed write and delete durable.
    fn sync(&self) -> io::Result<()>;

    /// Bytes the store really holds for `block` (after holes), if it can tell.
    fn stored_bytes(&self, _block: u64) -> Option<u64> {
        None
    }
}
