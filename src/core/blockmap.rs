//! Which blocks are stored: a sparse bitmap that is read without locks.
//!
//! The image consults it on every request (a read of an absent block must not
//! touch the store), so lookups are single atomic loads. Bits only change
//! while the image holds that block's exclusive lock. Memory grows with the
//! stored blocks, in chunks of 32768 blocks (4 KiB each).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

const CHUNK_BITS: u64 = 1 << 15;
const WORDS_PER_CHUNK: usize = (CHUNK_BITS / 64) as usize;

type Chunk = Box<[AtomicU64]>;

pub struct BlockMap {
    block_count: u64,
    chunks: Box<[OnceLock<Chunk>]>,
    present: AtomicU64,
}

impl BlockMap {
    pub fn new(block_count: u64) -> Self {
        let chunk_count = block_count.div_ceil(CHUNK_BITS) as usize;
        Self { block_count, chunks: (0..chunk_count).map(|_| OnceLock::new()).collect(), present: AtomicU64::new(0) }
    }

    pub fn block_count(&self) -> u64 {
        self.block_count
    }

    /// Number of blocks currently stored.
    pub fn present_count(&self) -> u64 {
        self.present.load(Ordering::Relaxed)
    }

    fn locate(block: u64) -> (usize, usize, u64) {
        let chunk = (block / CHUNK_BITS) as usize;
        let bit = block % CHUNK_BITS;
        (chunk, (bit / 64) as usize, 1u64 << (bit % 64))
    }

    pub fn contains(&self, block: u64) -> bool {
        if block >= self.block_count {
            return false;
        }
        let (chunk, word, mask) = Self::locate(block);
        self.chunks[chunk].get().is_some_and(|c| c[word].load(Ordering::Acquire) & mask != 0)
    }

    /// Marks `block` stored; returns false if it already was.
    pub fn insert(&self, block: u64) -> bool {
        assert!(block < self.block_count, "block {block} out of range");
        let (chunk, word, mask) = Self::locate(block);
        let words = self.chunks[chunk].get_or_init(|| (0..WORDS_PER_CHUNK).map(|_| AtomicU64::new(0)).collect());
        let was_set = words[word].fetch_or(mask, Ordering::AcqRel) & mask != 0;
        if !was_set {
            self.present.fetch_add(1, Ordering::Relaxed);
        }
        !was_set
    }

    /// Marks `block` absent; returns false if it already was.
    pub fn remove(&self, block: u64) -> bool {
        if block >= self.block_count {
            return false;
        }
        let (chunk, word, mask) = Self::locate(block);
        let Some(words) = self.chunks[chunk].get() else { return false };
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
        let mut block = from;
        while block < self.block_count {
            let (chunk, word, _) = Self::locate(block);
            let Some(words) = self.chunks[chunk].get() else {
                if !want_present {
                    return Some(block);
                }
                block = (chunk as u64 + 1) * CHUNK_BITS;
                continue;
            };
            let bit = block % 64;
            let raw = words[word].load(Ordering::Acquire);
            let bits = if want_present { raw } else { !raw } >> bit;
            if bits != 0 {
                let found = block + bits.trailing_zeros() as u64;
                return (found < self.block_count).then_some(found);
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
        let chunks = self.chunks.iter().filter(|c| c.get().is_some()).count();
        self.chunks.len() * std::mem::size_of::<OnceLock<Chunk>>() + chunks * WORDS_PER_CHUNK * 8
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
