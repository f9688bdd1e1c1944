//! onefs: one giant sparse file, `disk.img`, over numbered block files.
//!
//! Layers, from the bottom up; a module uses only modules of its own layer
//! or below (`tests/layers.rs` checks this list against the code):
//! 0. helpers with no knowledge of onefs: [`errors`], [`sync`], [`core`]
//!    (pure geometry, block map, zero detection, CRC-32C), [`confined`]
//!    (an untrusted directory, opened beneath its descriptor), [`probe`]
//!    (questions to a path's filesystem with a time limit), [`paths`],
//!    [`mountinfo`], [`logging`], [`kill_point`] (the crash tests' kill -9
//!    at a chosen step);
//! 1. [`backend`]: `ObjectBackend` (whole objects by key: dir, S3, rclone,
//!    the remote lock) and [`meta`] (`onefs.json`);
//! 2. [`store`]: the `BlockStore` trait, the directory store and the cache
//!    over an object backend;
//! 3. [`image`] (byte ranges to blocks over a `BlockStore`) and [`options`]
//!    (mount options);
//! 4. [`fuse`] (the thin FUSE adapter, the only module that knows fuser) and
//!    [`config`] (definitions in `/etc/onefs`);
//! 5. [`compose`] (the storage stack of a mount, built in one place) and
//!    [`store_lock`] (one mount of a store at a time);
//! 6. [`create`] (the one way to make an image) and [`mount`] (the life of a
//!    mount, and detaching from `onefs mount`);
//! 7. the commands: [`fsck`], [`status`], [`service`] (`run`, `daemon`,
//!    reload, sd_notify), [`mount_helper`] (`mount.fuse.onefs`) and
//!    [`grow`] (`onefs grow`, offline or through the running onefs);
//! 8. [`cli`].

pub mod backend;
pub mod cli;
pub mod compose;
pub mod config;
pub mod confined;
pub mod core;
pub mod create;
pub mod errors;
pub mod fsck;
pub mod fuse;
pub mod grow;
pub mod image;
pub mod kill_point;
pub mod logging;
pub mod meta;
pub mod mount;
pub mod mount_helper;
pub mod mountinfo;
pub mod options;
pub mod paths;
pub mod probe;
pub mod service;
pub mod status;
pub mod store;
pub mod store_lock;
pub mod sync;

/// Unit tests' side of `ONEFS_TEST_ALLOW_SKIP`: the one implementation, shared
/// with the integration tests.
#[cfg(test)]
#[path = "../tests/common/skip.rs"]
pub(crate) mod test_skip;
