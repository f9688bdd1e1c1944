//! onefs: one giant sparse file, `disk.img`, over numbered block files.
//!
//! Layers, from the kernel down:
//! - [`fuse`]: the thin FUSE adapter (the only module that knows fuser);
//! - [`image`]: byte ranges to blocks, zero detection, punch, seek, per-block locks;
//! - [`store`]: the `BlockStore` trait and its backends;
//! - [`core`]: pure geometry, block map and zero detection.
//!
//! Around them: [`meta`] (`onefs.json`), [`create`], [`mount`] (the life of
//! a mount), [`lock`], [`cli`].

pub mod backend;
pub mod cli;
pub mod compose;
pub mod config;
pub mod core;
pub mod create;
pub mod errors;
pub mod fsck;
pub mod fuse;
pub mod image;
pub mod lock;
pub mod logging;
pub mod meta;
pub mod mount;
pub mod mountinfo;
pub mod options;
pub mod service;
pub mod status;
pub mod store;
pub mod sync;

/// Unit tests' side of `ONEFS_TEST_ALLOW_SKIP`: the one implementation, shared
/// with the integration tests.
#[cfg(test)]
#[path = "../tests/common/skip.rs"]
pub(crate) mod test_skip;
