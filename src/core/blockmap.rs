//! Which blocks are stored: a sparse bitmap that is read without locks.
//!
//! The image consults it on every request (a read of an absent block must not
//! touch the store), so lookups are a few atomic loads. Bits only change
//! while the image holds that block's exclusive lock. Memory grows with the
//! stored blocks, in chunks of 32768 blocks (4 KiB each).
//!
//! The map grows with an image grown while mounted, and nobody waits for
//! that: the chunks' slots sit in segments of doubling size (1, 2, 4, …
//! slots), each made on first use, so nothing is ever moved or copied, and
//! growing is a single store of the new block count. The slots take at most
//! twice what a slot per chunk up to the highest stored block would.

use super::geometry::MAX_BLOCK_COUNT;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

const CHUNK_BITS: u64 = 1 << 15;
const WORDS_PER_CHUNK: usize = (CHUNK_BITS / 64) as usize;
/// Segment `k` holds the slots of chunks `2^k - 1 .. 2^(k+1) - 1`: enough
/// segments for the chunks of the largest image.
const SEGMENTS: usize = (MAX_BLOCK_COUNT / CHUNK_BITS).ilog2() as usize + 1;

type Chunk = Box<[AtomicU64]>;
type Segment = Box<[OnceLock<Chunk>]>;

pub struct BlockMap {
    block_count: AtomicU64,
    segments: [OnceLock<Segment>; SEGMENTS],
    present: AtomicU64,
}

impl BlockMap {
    pub fn new(block_count: u64) -> Self {
        Self {
            block_count: AtomicU64::new(block_count.min(MAX_BLOCK_COUNT)),
            segments: std::array::from_fn(|_| OnceLock::new()),
            present: AtomicU64::new(0),
        }
    }

    pub fn block_count(&self) -> u64 {
        self.block_count.load(Ordering::Acquire)
    }

    /// Makes room for `block_count` blocks (never fewer than now): blocks
    /// past the old end start absent. Lookups and changes of other blocks
    /// go on meanwhile.
    pub fn grow(&self, block_count: u64) {
        self.block_count.fetch_max(block_count.min(MAX_BLOCK_COUNT), Ordering::AcqRel);
    }

    /// Number of blocks currently stored.
    pub fn present_count(&self) -> u64 {
        self.present.load(Ordering::Relaxed)
    }

    fn locate(block: u64) -> (u64, usize, u64) {
        let chunk = block / CHUNK_BITS;
        let bit = block % CHUNK_BITS;
        (chunk, (bit / 64) as usize, 1u64 << (bit % 64))
    }

    /// Segment and slot of a chunk.
    fn slot_of(chunk: u64) -> (usize, usize) {
        let n = chunk + 1;
        let segment = n.ilog2();
        (segment as usize, (n - (1 << segment)) as usize)
    }

    /// The chunk's bits, if any block of it was ever stored.
    fn chunk(&self, chunk: u64) -> Option<&[AtomicU64]> {
        let (segment, slot) = Self::slot_of(chunk);
        self.segments.get(segment)?.get()?.get(slot)?.get().map(|c| &c[..])
    }

    /// The chunk's bits, made if need be.
    fn chunk_or_make(&self, chunk: u64) -> &[AtomicU64] {
        let (segment, slot) = Self::slot_of(chunk);
        let slots = self.segments[segment].get_or_init(|| (0..1usize << segment).map(|_| OnceLock::new()).collect());
        slots[slot].get_or_init(|| (0..WORDS_PER_CHUNK).map(|_| AtomicU64::new(0)).collect())
    }

    pub fn contains(&self, block: u64) -> bool {
        if block >= self.block_count() {
            return false;
        }
        let (chunk, word, mask) = Self::locate(block);
        self.chunk(chunk).is_some_and(|c| c[word].load(Ordering::Acquire) & mask != 0)
    }

    /// Marks `block` stored; returns false if it already was.
    pub fn insert(&self, block: u64) -> bool {
        assert!(block < self.block_count(), "block {block} out of range");
        let (chunk, word, mask) = Self::locate(block);
        let words = self.chunk_or_make(chunk);
        let was_set = words[word].fetch_or(mask, Ordering::AcqRel) & mask != 0;
        if !was_set {
            self.present.fetch_add(1, Ordering::Relaxed);
        }
        !was_set
    }

    /// Marks `block` absent; returns false if it already was.
    pub fn remove(&self, block: u64) -> bool {
        if block >= self.block_count() {
            return false;
        }
        let (chunk, word, mask) = Self::locate(block);
        let Some(words) = self.chunk(chunk) else { return false };
        let was_set = words[word].fetch_and(!mask, Ordering::AcqRel) & mask != 0;
        if was_set {
            self.present.fetch_sub(1, Ordering::Relaxed);
        }
        was_set
    }

    /// First stored block at or after `from`.
    pub fn next_present(&self, from: u64) -> Option<u64> {
        self.next_matching(from, true)
    }

    /// First absent block at or after `from`.
    pub fn next_absent(&self, from: u64) -> Option<u64> {
        self.next_matching(from, false)
    }

    fn next_matching(&self, from: u64, want_present: bool) -> Option<u64> {
        let count = self.block_count();
        let mut block = from;
        while block < count {
            let (chunk, word, _) = Self::locate(block);
            let Some(words) = self.chunk(chunk) else {
                if !want_present {
                    return Some(block);
                }
                block = (chunk + 1) * CHUNK_BITS;
                continue;
            };
            let bit = block % 64;
            let raw = words[word].load(Ordering::Acquire);
            let bits = if want_present { raw } else { !raw } >> bit;
            if bits != 0 {
                let found = block + bits.trailing_zeros() as u64;
                return (found < count).then_some(found);
            }
            block += 64 - bit;
        }
        None
    }

    /// Stored blocks in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut next = 0;
        std::iter::from_fn(move || {
            let found = self.next_present(next)?;
            next = found + 1;
            Some(found)
        })
    }

    /// Bytes of memory held by the map (for status and memory budgets).
    pub fn memory_bytes(&self) -> usize {
        let (mut slots, mut chunks) = (0, 0);
        for segment in self.segments.iter().filter_map(OnceLock::get) {
            slots += segment.len();
            chunks += segment.iter().filter(|c| c.get().is_some()).count();
        }
        std::mem::size_of::<Self>() + slots * std::mem::size_of::<OnceLock<Chunk>>() + chunks * WORDS_PER_CHUNK * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn empty_map() {
        let map = BlockMap::new(100_000);
        assert_eq!(map.next_present(0), None);
        assert_eq!(map.next_absent(0), Some(0));
        assert_eq!(map.next_absent(99_999), Some(99_999));
        assert_eq!(map.next_absent(100_000), None);
        assert_eq!(map.present_count(), 0);
    }

    #[test]
    fn full_map_has_no_absent_block() {
        let map = BlockMap::new(130);
        for b in 0..130 {
            assert!(map.insert(b));
        }
        assert_eq!(map.next_absent(0), None);
        assert_eq!(map.next_present(129), Some(129));
        assert_eq!(map.present_count(), 130);
    }

    #[test]
    fn grows_in_place_keeping_what_is_stored() {
        let map = BlockMap::new(1000);
        assert!(map.insert(999));
        assert!(!map.contains(1000) && map.next_absent(999).is_none());
        map.grow(10 * CHUNK_BITS);
        assert_eq!(map.block_count(), 10 * CHUNK_BITS);
        assert!(map.contains(999));
        assert_eq!(map.next_absent(999), Some(1000), "the new blocks start absent");
        assert!(map.insert(10 * CHUNK_BITS - 1));
        assert_eq!(map.iter().collect::<Vec<_>>(), [999, 10 * CHUNK_BITS - 1]);
        map.grow(5);
        assert_eq!(map.block_count(), 10 * CHUNK_BITS, "never shrinks");
        // The largest image: its last block has a slot.
        map.grow(MAX_BLOCK_COUNT);
        assert!(map.insert(MAX_BLOCK_COUNT - 1));
        assert_eq!(map.next_present(1000), Some(10 * CHUNK_BITS - 1));
        assert_eq!(map.next_present(10 * CHUNK_BITS), Some(MAX_BLOCK_COUNT - 1));
        assert_eq!(map.present_count(), 3);
    }

    #[test]
    fn memory_follows_what_is_stored_not_the_size() {
        let empty = BlockMap::new(MAX_BLOCK_COUNT).memory_bytes();
        assert!(empty < 1024, "an empty map of the largest image takes {empty} bytes");
        let map = BlockMap::new(1 << 20);
        map.insert(0);
        map.insert((1 << 20) - 1);
        // Chunks 0 and 31: 1 + 2 + 4 + 8 + 16 + 32 slots at most, two chunks.
        assert!(map.memory_bytes() < 2 * 4096 + 63 * 24 + 1024, "{}", map.memory_bytes());
    }

    #[test]
    fn lookups_and_inserts_go_on_while_it_grows() {
        let map = std::sync::Arc::new(BlockMap::new(CHUNK_BITS));
        let readers: Vec<_> = (0..4u64)
            .map(|t| {
                let map = map.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let block = (i * 7 + t) % CHUNK_BITS;
                        map.insert(block);
                        assert!(map.contains(block));
                    }
                })
            })
            .collect();
        for step in 2..200u64 {
            map.grow(step * CHUNK_BITS);
            let last = step * CHUNK_BITS - 1;
            assert!(map.insert(last));
        }
        for r in readers {
            r.join().unwrap();
        }
        for step in 2..200u64 {
            assert!(map.contains(step * CHUNK_BITS - 1));
        }
    }

    proptest! {
        #[test]
        fn agrees_with_a_set(count in 1u64..200_000, ops in prop::collection::vec((any::<bool>(), any::<u64>()), 0..200), probes in prop::collection::vec(any::<u64>(), 0..50)) {
            let map = BlockMap::new(count);
            let mut model = BTreeSet::new();
            for (add, raw) in ops {
                let b = raw % count;
                if add { prop_assert_eq!(map.insert(b), model.insert(b)); } else { prop_assert_eq!(map.remove(b), model.remove(&b)); }
            }
            prop_assert_eq!(map.present_count(), model.len() as u64);
            prop_assert_eq!(map.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            for raw in probes {
                let from = raw % (count + 10);
                prop_assert_eq!(map.next_present(from), model.range(from..).next().copied());
                let absent = (from..count).find(|b| !model.contains(b));
                prop_assert_eq!(map.next_absent(from), absent);
            }
        }
    }
}
