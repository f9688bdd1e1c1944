//! Image geometry: how byte ranges of `disk.img` map onto numbered blocks.
//!
//! Block `i` (0-based) holds bytes `[i * block_size, (i + 1) * block_size)`
//! and is stored under the name `blk-` + `i + 1`, zero-padded to a width fixed
//! at creation, so that names sort in block order (`blk-00001` is the first).
//!
//! An image grown past what that width can count keeps it: a number with
//! more digits is written with all of them and no padding (`printf
//! "blk-%05d"` does exactly that), so no existing name ever changes and every
//! block has exactly one name. Parsing accepts only that one name (`width`
//! digits, or more without a leading zero): `blk-000001` beside `blk-00001`
//! is a stray, never a second copy of block 0.

use super::size::Size;

pub const MIN_BLOCK_SIZE: u64 = 4 << 10;
pub const MAX_BLOCK_SIZE: u64 = 1 << 30;
/// Keeps the in-memory block map small and names at most 10 digits wide.
pub const MAX_BLOCK_COUNT: u64 = 1 << 32;
pub const MIN_NAME_WIDTH: usize = 5;
pub const BLOCK_PREFIX: &str = "blk-";

/// Widest block names: every u64 block number fits in 20 digits.
pub const MAX_NAME_WIDTH: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error("block size {0} is not a power of two (4K, 8K, 16K, ... up to 1G)")]
    BlockSizeNotPowerOfTwo(u64),
    #[error("block size {} is out of range (4K to 1G)", Size(*.0))]
    BlockSizeOutOfRange(u64),
    #[error("size must be positive")]
    ZeroSize,
    #[error("{}", not_multiple(*.0, *.1))]
    NotMultiple(u64, u64),
    #[error("{}", too_many_blocks(*.0, *.1))]
    TooManyBlocks(u64, u64),
    #[error("block name width {0} is too small (at least {MIN_NAME_WIDTH} digits)")]
    NameWidthTooSmall(usize),
    #[error("block name width {0} is too large (at most {MAX_NAME_WIDTH} digits)")]
    NameWidthTooLarge(usize),
    #[error(
        "size {} is smaller than the image ({}): onefs never shrinks an image, the filesystem on it would lose data",
        Size(*.to), Size(*.from)
    )]
    Shrink { from: u64, to: u64 },
    #[error("size {} is the image's size already; give a larger one", Size(*.0))]
    Unchanged(u64),
    #[error("{}", too_large_to_grow(*.0, *.1))]
    TooLargeToGrow(u64, u64),
}

/// The largest an image of `block_size` blocks can grow to: its block size
/// never changes.
fn too_large_to_grow(size: u64, block_size: u64) -> String {
    let largest = (MAX_BLOCK_COUNT * block_size).min(i64::MAX as u64 / block_size * block_size);
    format!(
        "size {} is too large for this image's blocks of {} (at most {MAX_BLOCK_COUNT} blocks: {} at most; the block size never changes)",
        Size(size),
        Size(block_size),
        Size(largest)
    )
}

fn not_multiple(size: u64, block_size: u64) -> String {
    if size < block_size {
        format!("size {} is smaller than one block ({})", Size(size), Size(block_size))
    } else {
        format!("size {} is not a multiple of the block size {}", Size(size), Size(block_size))
    }
}

/// Says how to fit: larger blocks when there are any, else the largest image.
fn too_many_blocks(size: u64, block_size: u64) -> String {
    let needed = size.div_ceil(MAX_BLOCK_COUNT).max(MIN_BLOCK_SIZE).checked_next_power_of_two();
    match needed.filter(|&b| b <= MAX_BLOCK_SIZE) {
        Some(needed) => format!(
            "size {} is too large for blocks of {}: {} blocks exceed the limit of {MAX_BLOCK_COUNT} (use blocks of {} or larger)",
            Size(size),
            Size(block_size),
            size / block_size,
            Size(needed)
        ),
        None => format!(
            "size {} is too large: the largest image is {} ({MAX_BLOCK_COUNT} blocks of {})",
            Size(size),
            Size(MAX_BLOCK_COUNT * MAX_BLOCK_SIZE),
            Size(MAX_BLOCK_SIZE)
        ),
    }
}

impl GeometryError {
    /// Which of the two creation inputs is at fault: `size` or `block_size`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::BlockSizeNotPowerOfTwo(_) | Self::BlockSizeOutOfRange(_) => "block_size",
            _ => "size",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    size: u64,
    block_size: u64,
    name_width: usize,
}

/// The part of one block that a byte range covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub block: u64,
    /// Offset inside the block.
    pub offset: u64,
    pub len: u64,
    /// Offset of this segment inside the caller's buffer.
    pub buf_offset: usize,
}

impl Segment {
    pub fn is_full_block(&self, geometry: &Geometry) -> bool {
        self.offset == 0 && self.len == geometry.block_size()
    }
}

impl Geometry {
    /// Geometry for a new image; the name width is the smallest that fits.
    pub fn new(size: u64, block_size: u64) -> Result<Self, GeometryError> {
        Self::check(size, block_size)?;
        let count = size / block_size;
        Ok(Self { size, block_size, name_width: digits(count).max(MIN_NAME_WIDTH) })
    }

    /// Geometry as recorded in an existing image's metadata. The width may
    /// be narrower than the last block's number once the image has grown.
    pub fn with_name_width(size: u64, block_size: u64, name_width: usize) -> Result<Self, GeometryError> {
        let geometry = Self::new(size, block_size)?;
        if name_width > MAX_NAME_WIDTH {
            return Err(GeometryError::NameWidthTooLarge(name_width));
        }
        if name_width < MIN_NAME_WIDTH {
            return Err(GeometryError::NameWidthTooSmall(name_width));
        }
        Ok(Self { name_width, ..geometry })
    }

    /// The same image grown to `size` bytes: same block size, same name
    /// width. Refuses a smaller or equal size, one that is not a multiple
    /// of the block size, and one past the block limit.
    pub fn grown(&self, size: u64) -> Result<Self, GeometryError> {
        if size < self.size {
            return Err(GeometryError::Shrink { from: self.size, to: size });
        }
        if size == self.size {
            return Err(GeometryError::Unchanged(size));
        }
        match Self::check(size, self.block_size) {
            Ok(()) => Ok(Self { size, ..*self }),
            Err(GeometryError::TooManyBlocks(..)) => Err(GeometryError::TooLargeToGrow(size, self.block_size)),
            Err(e) => Err(e),
        }
    }

    fn check(size: u64, block_size: u64) -> Result<(), GeometryError> {
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(GeometryError::BlockSizeOutOfRange(block_size));
        }
        if !block_size.is_power_of_two() {
            return Err(GeometryError::BlockSizeNotPowerOfTwo(block_size));
        }
        if size == 0 {
            return Err(GeometryError::ZeroSize);
        }
        if !size.is_multiple_of(block_size) {
            return Err(GeometryError::NotMultiple(size, block_size));
        }
        if size / block_size > MAX_BLOCK_COUNT || size > i64::MAX as u64 {
            return Err(GeometryError::TooManyBlocks(size, block_size));
        }
        Ok(())
    }

    /// This geometry at `size` bytes, which [`grown`](Self::grown)
    /// accepted before (the image keeps its checked size in an atomic).
    pub fn at_size(&self, size: u64) -> Self {
        debug_assert!(size.is_multiple_of(self.block_size) && size / self.block_size <= MAX_BLOCK_COUNT);
        Self { size, ..*self }
    }

    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn block_size(&self) -> u64 {
        self.block_size
    }
    pub fn block_count(&self) -> u64 {
        self.size / self.block_size
    }
    pub fn name_width(&self) -> usize {
        self.name_width
    }
    pub fn block_of(&self, offset: u64) -> u64 {
        offset / self.block_size
    }
    pub fn block_start(&self, block: u64) -> u64 {
        block * self.block_size
    }

    /// File name of block `block` (0-based): `blk-00001` for block 0; a
    /// number wider than the width keeps all its digits (`blk-100000`).
    pub fn block_name(&self, block: u64) -> String {
        format!("{BLOCK_PREFIX}{:0width$}", block + 1, width = self.name_width)
    }

    /// The block a file name stands for, if it is a well-formed block name of
    /// this image (right prefix, width and range).
    pub fn parse_block_name(&self, name: &str) -> Option<u64> {
        self.parse_block_number(name).filter(|&block| block < self.block_count())
    }

    /// The block a name stands for in an image of any size with this name
    /// width: exactly the name [`block_name`](Self::block_name) gives it
    /// (`width` digits, or more without a leading zero), whatever the range.
    pub fn parse_block_number(&self, name: &str) -> Option<u64> {
        let digits = name.strip_prefix(BLOCK_PREFIX)?;
        if digits.len() < self.name_width
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > self.name_width && digits.starts_with('0'))
        {
            return None;
        }
        let number: u64 = digits.parse().ok()?;
        number.checked_sub(1)
    }

    /// Splits `[offset, offset + len)` into per-block segments. The range
    /// must lie inside the image; callers clamp first.
    pub fn segments(&self, offset: u64, len: u64) -> impl Iterator<Item = Segment> + '_ {
        debug_assert!(offset.checked_add(len).is_some_and(|end| end <= self.size));
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let block = pos / self.block_size;
            let in_block = pos % self.block_size;
            let seg_len = (self.block_size - in_block).min(end - pos);
            let segment = Segment { block, offset: in_block, len: seg_len, buf_offset: (pos - offset) as usize };
            pos += seg_len;
            Some(segment)
        })
    }
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    #[test]
    fn validates_sizes() {
        assert!(Geometry::new(1 << 40, 4 * M).is_ok());
        assert_eq!(Geometry::new(1 << 40, 3 * M), Err(GeometryError::BlockSizeNotPowerOfTwo(3 * M)));
        assert_eq!(Geometry::new(1 << 40, 2048), Err(GeometryError::BlockSizeOutOfRange(2048)));
        assert_eq!(Geometry::new(1 << 40, 2 << 30), Err(GeometryError::BlockSizeOutOfRange(2 << 30)));
        assert_eq!(Geometry::new(0, 4 * M), Err(GeometryError::ZeroSize));
        assert_eq!(Geometry::new(5 * M, 4 * M), Err(GeometryError::NotMultiple(5 * M, 4 * M)));
        assert!(matches!(Geometry::new(1 << 60, 4096), Err(GeometryError::TooManyBlocks(..))));
        assert_eq!(Geometry::new(1 << 40, 0), Err(GeometryError::BlockSizeOutOfRange(0)));
        assert_eq!(Geometry::new(1 << 40, 3 << 30), Err(GeometryError::BlockSizeOutOfRange(3 << 30)));
    }

    #[test]
    fn every_bound_says_which_way_it_is_crossed() {
        let text = |size, block_size| Geometry::new(size, block_size).unwrap_err().to_string();
        assert_eq!(
            text(17 << 40, 4096),
            "size 17T is too large for blocks of 4K: 4563402752 blocks exceed the limit of 4294967296 (use blocks of 8K or larger)"
        );
        assert_eq!(text(8 << 60, 1 << 30), "size 8E is too large: the largest image is 4E (4294967296 blocks of 1G)");
        assert_eq!(text(8 << 60, 4096), "size 8E is too large: the largest image is 4E (4294967296 blocks of 1G)");
        assert!(Geometry::new(4 << 60, 1 << 30).is_ok(), "the largest image");
        assert_eq!(text(4096, 8192), "size 4K is smaller than one block (8K)");
        assert_eq!(text(12288, 8192), "size 12K is not a multiple of the block size 8K");
        assert!(text(1 << 40, 3 * M).contains("3145728 is not a power of two"));
        assert!(text(1 << 40, 1 << 31).contains("2G is out of range (4K to 1G)"));
        let width = |w| Geometry::with_name_width(8 * M, 4 * M, w).unwrap_err().to_string();
        assert_eq!(width(21), "block name width 21 is too large (at most 20 digits)");
        assert_eq!(width(4), "block name width 4 is too small (at least 5 digits)");
        assert_eq!(Geometry::with_name_width(8 * M, 4 * M, 20).unwrap().name_width(), 20);
        // A grown image keeps the width its first blocks were named with.
        assert_eq!(Geometry::with_name_width(1 << 40, 4096, 5).unwrap().name_width(), 5);
    }

    #[test]
    fn names_sort_in_block_order() {
        let g = Geometry::new(1 << 40, 4 * M).unwrap();
        assert_eq!(g.block_count(), 262_144);
        assert_eq!(g.name_width(), 6);
        assert_eq!(g.block_name(0), "blk-000001");
        assert_eq!(g.block_name(262_143), "blk-262144");
        let small = Geometry::new(8 * M, 4 * M).unwrap();
        assert_eq!(small.block_name(0), "blk-00001");
        assert_eq!(small.block_name(1), "blk-00002");
        let mut names: Vec<String> = (0..2000).map(|b| g.block_name(b)).collect();
        let sorted = {
            let mut s = names.clone();
            s.sort();
            s
        };
        assert_eq!(names, sorted);
        names.clear();
    }

    #[test]
    fn parses_only_valid_names() {
        let g = Geometry::new(8 * M, 4 * M).unwrap();
        assert_eq!(g.parse_block_name("blk-00001"), Some(0));
        assert_eq!(g.parse_block_name("blk-00002"), Some(1));
        for bad in
            ["blk-00000", "blk-00003", "blk-0001", "blk-000001", "blk-0000a", "xblk-00001", "blk-+0001", "onefs.json"]
        {
            assert_eq!(g.parse_block_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn grows_keeping_block_size_and_names() {
        let g = Geometry::new(1 << 30, 4 * M).unwrap();
        let big = g.grown(1 << 40).unwrap();
        assert_eq!((big.size(), big.block_size(), big.name_width()), (1 << 40, 4 * M, 5));
        assert_eq!(big.block_count(), 262_144);
        assert_eq!(big.block_name(0), g.block_name(0));
        let text = |size| g.grown(size).unwrap_err().to_string();
        assert_eq!(
            text(512 * M),
            "size 512M is smaller than the image (1G): onefs never shrinks an image, the filesystem on it would lose data"
        );
        assert_eq!(text(1 << 30), "size 1G is the image's size already; give a larger one");
        assert_eq!(text((1 << 30) + 4096), "size 1048580K is not a multiple of the block size 4M");
        assert_eq!(
            text(17 << 50),
            "size 17P is too large for this image's blocks of 4M (at most 4294967296 blocks: 16P at most; the block size never changes)"
        );
        assert!(g.grown(16 << 50).is_ok(), "2^32 blocks is the limit");
        let huge = Geometry::new(1 << 30, 1 << 30).unwrap();
        assert!(huge.grown(4 << 60).is_ok());
        assert!(huge.grown(8 << 60).unwrap_err().to_string().contains("too large"));
    }

    #[test]
    fn names_past_the_width_keep_every_digit_and_parse_only_one_way() {
        // 99999 blocks fit in 5 digits; growing past them keeps width 5.
        let g = Geometry::with_name_width(200_000 * 4096, 4096, 5).unwrap();
        assert_eq!(g.block_name(99_998), "blk-99999");
        assert_eq!(g.block_name(99_999), "blk-100000");
        assert_eq!(g.block_name(199_999), "blk-200000");
        for block in [0, 1, 9_999, 99_998, 99_999, 100_000, 123_456, 199_999] {
            assert_eq!(g.parse_block_name(&g.block_name(block)), Some(block), "{block}");
        }
        // Every block has one name: a padded wide name or a short one is
        // not a block, and neither is a name past the end.
        for bad in ["blk-0100000", "blk-099999", "blk-000001", "blk-0001", "blk-200001", "blk-00000", "blk-"] {
            assert_eq!(g.parse_block_name(bad), None, "{bad}");
        }
        assert_eq!(g.parse_block_number("blk-200001"), Some(200_000), "in range of a larger image");
        assert_eq!(g.parse_block_number("blk-99999999999999999999999"), None, "overflows u64");
    }

    #[test]
    fn splits_ranges_at_block_boundaries() {
        let g = Geometry::new(16 * M, 4 * M).unwrap();
        let segs: Vec<_> = g.segments(3 * M, 6 * M).collect();
        assert_eq!(
            segs,
            vec![
                Segment { block: 0, offset: 3 * M, len: M, buf_offset: 0 },
                Segment { block: 1, offset: 0, len: 4 * M, buf_offset: M as usize },
                Segment { block: 2, offset: 0, len: M, buf_offset: 5 * M as usize },
            ]
        );
        assert!(segs[1].is_full_block(&g));
        assert_eq!(g.segments(0, 0).count(), 0);
    }
}
