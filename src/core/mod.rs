//! The pure core of onefs: image geometry, the map of stored blocks and zero
//! detection. Nothing here does I/O or knows about FUSE.

pub mod blockmap;
pub mod crc32c;
pub mod geometry;
pub mod size;
pub mod zero;

pub use blockmap::BlockMap;
pub use geometry::{Geometry, GeometryError, Segment};
pub use zero::is_zero;
