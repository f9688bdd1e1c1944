//! The image: `disk.img`'s bytes over a [`BlockStore`].
//!
//! Turns byte-range requests into per-block operations, keeps the map of
//! stored blocks, and upholds the central invariant: a block is stored iff it
//! holds a non-zero byte (up to partial zero writes, see [`Image::write`]);
//! an absent block reads as zeros without touching the store.
//!
//! Concurrency: requests for different blocks never wait on each other.
//! Each block maps to one of many lock stripes; reads and overwrites of a
//! stored block share it, while creating, zeroing or deleting a block holds it
//! exclusively, so the block map and the store never disagree.
//!
//! Growing ([`Image::grow`]) stops nobody either: the block map makes room
//! first, then the new size is published with one atomic store. A request
//! sees the old size or the new one, and the blocks past the old end exist
//! in the map before any request can reach them.

use crate::core::{BlockMap, Geometry, GeometryError, Segment, is_zero};
use crate::store::{BlockStore, Zeroed};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

const LOCK_STRIPES: usize = 4096;

pub struct Image {
    /// Block size and names; its size is the one at open (see `size`).
    base: Geometry,
    /// The current size in bytes: grows, never shrinks.
    size: AtomicU64,
    /// Serialises growing (requests never take it).
    growing: Mutex<()>,
    store: Arc<dyn BlockStore>,
    map: BlockMap,
    stripes: Box<[RwLock<()>]>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl Image {
    /// Opens an image, learning which blocks are stored from the store.
    pub fn open(geometry: Geometry, store: Arc<dyn BlockStore>) -> io::Result<Self> {
        let map = BlockMap::new(geometry.block_count());
        for block in store.list()? {
            map.insert(block);
        }
        Ok(Self {
            base: geometry,
            size: AtomicU64::new(geometry.size()),
            growing: Mutex::new(()),
            store,
            map,
            stripes: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
        })
    }

    /// The geometry at this moment (its size grows with [`Image::grow`]).
    pub fn geometry(&self) -> Geometry {
        // Only sizes `grow` checked are ever stored.
        self.base.at_size(self.size())
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Grows the image to `size` bytes while requests go on: the blocks past
    /// the old end read as zeros and can be written once this returns.
    /// Returns the old size. The caller must have made the new size durable
    /// in the image's description first, or a crash would forget blocks
    /// written past the old end.
    pub fn grow(&self, size: u64) -> Result<u64, GeometryError> {
        let _one_at_a_time = self.growing.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.size();
        let grown = self.geometry().grown(size)?;
        self.map.grow(grown.block_count());
        self.size.store(size, Ordering::Release);
        Ok(old)
    }

    pub fn store(&self) -> &Arc<dyn BlockStore> {
        &self.store
    }

    /// Number of blocks stored.
    pub fn stored_blocks(&self) -> u64 {
        self.map.present_count()
    }

    pub fn is_stored(&self, block: u64) -> bool {
        self.map.contains(block)
    }

    pub fn map_memory_bytes(&self) -> usize {
        self.map.memory_bytes()
    }

    fn shared(&self, block: u64) -> RwLockReadGuard<'_, ()> {
        self.stripes[block as usize % LOCK_STRIPES].read().unwrap_or_else(|p| p.into_inner())
    }

    fn exclusive(&self, block: u64) -> RwLockWriteGuard<'_, ()> {
        self.stripes[block as usize % LOCK_STRIPES].write().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns the count read
    /// (short only at the end of the image).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.size() {
            return Ok(0);
        }
        let geometry = self.geometry();
        let len = (buf.len() as u64).min(geometry.size() - offset);
        for seg in geometry.segments(offset, len) {
            let out = &mut buf[seg.buf_offset..seg.buf_offset + seg.len as usize];
            let _guard = self.shared(seg.block);
            if self.map.contains(seg.block) {
                self.store.read_at(seg.block, seg.offset, out)?;
            } else {
                out.fill(0);
            }
        }
        Ok(len as usize)
    }

    /// Writes `data` at `offset`. Writing at or past the end fails with EFBIG;
    /// a write that runs past the end is cut short there.
    ///
    /// Zero detection looks at the written buffer only: zeros never create a
    /// block, a full-block write of zeros deletes one, and zeros written over
    /// part of a stored block punch a hole in it (deleting the block if that
    /// leaves it empty).
    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if offset >= self.size() {
            return Err(errno(libc::EFBIG));
        }
        let geometry = self.geometry();
        let len = (data.len() as u64).min(geometry.size() - offset);
        for seg in geometry.segments(offset, len) {
            let chunk = &data[seg.buf_offset..seg.buf_offset + seg.len as usize];
            if is_zero(chunk) {
                self.zero_segment(seg)?;
            } else {
                self.write_segment(seg, chunk)?;
            }
        }
        Ok(len as usize)
    }

    fn write_segment(&self, seg: Segment, chunk: &[u8]) -> io::Result<()> {
        {
            let _guard = self.shared(seg.block);
            if self.map.contains(seg.block) {
                return self.store.write_at(seg.block, seg.offset, chunk, false);
            }
        }
        let _guard = self.exclusive(seg.block);
        let create = !self.map.contains(seg.block);
        self.store.write_at(seg.block, seg.offset, chunk, create)?;
        self.map.insert(seg.block);
        Ok(())
    }

    /// Makes one block segment read as zeros, storing nothing.
    fn zero_segment(&self, seg: Segment) -> io::Result<()> {
        if !self.map.contains(seg.block) {
            return Ok(());
        }
        let _guard = self.exclusive(seg.block);
        if !self.map.contains(seg.block) {
            return Ok(());
        }
        if seg.is_full_block(&self.base) || self.store.zero_range(seg.block, seg.offset, seg.len)? == Zeroed::AllZero {
            self.store.delete(seg.block)?;
            self.map.remove(seg.block);
        }
        Ok(())
    }

    /// Makes `[offset, offset + len)` read as zeros and frees every block that
    /// ends up empty (PUNCH_HOLE and ZERO_RANGE alike: both keep the size).
    /// The part past the end of the image is ignored.
    pub fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        if offset >= self.size() || len == 0 {
            return Ok(());
        }
        let geometry = self.geometry();
        let end = offset.saturating_add(len).min(geometry.size());
        let first = geometry.block_of(offset);
        let last = geometry.block_of(end - 1);
        // Visit stored blocks only: a discard of a whole 16 TiB image must not
        // walk billions of absent blocks.
        let mut next = self.map.next_present(first);
        while let Some(block) = next.filter(|&b| b <= last) {
            let start = geometry.block_start(block).max(offset);
            let stop = (geometry.block_start(block) + geometry.block_size()).min(end);
            let seg = Segment { block, offset: start - geometry.block_start(block), len: stop - start, buf_offset: 0 };
            self.zero_segment(seg)?;
            next = self.map.next_present(block + 1);
        }
        Ok(())
    }

    /// SEEK_DATA: the first offset at or after `offset` inside a stored block.
    pub fn seek_data(&self, offset: u64) -> io::Result<u64> {
        let geometry = self.geometry();
        if offset >= geometry.size() {
            return Err(errno(libc::ENXIO));
        }
        let block = geometry.block_of(offset);
        match self.map.next_present(block).filter(|&b| b < geometry.block_count()) {
            Some(b) if b == block => Ok(offset),
            Some(b) => Ok(geometry.block_start(b)),
            None => Err(errno(libc::ENXIO)),
        }
    }

    /// SEEK_HOLE: the first offset at or after `offset` inside an absent
    /// block, or the end of the image (which counts as a hole).
    pub fn seek_hole(&self, offset: u64) -> io::Result<u64> {
        let geometry = self.geometry();
        if offset >= geometry.size() {
            return Err(errno(libc::ENXIO));
        }
        let block = geometry.block_of(offset);
        match self.map.next_absent(block).filter(|&b| b < geometry.block_count()) {
            Some(b) if b == block => Ok(offset),
            Some(b) => Ok(geometry.block_start(b)),
            None => Ok(geometry.size()),
        }
    }

    /// Makes every completed write and punch durable.
    pub fn sync(&self) -> io::Result<()> {
        self.store.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use proptest::prelude::*;

    const BS: u64 = 4096;

    fn image(blocks: u64) -> (Image, Arc<MemStore>) {
        let store = Arc::new(MemStore::new(BS));
        let geometry = Geometry::new(blocks * BS, BS).unwrap();
        (Image::open(geometry, store.clone()).unwrap(), store)
    }

    #[test]
    fn unwritten_image_reads_zeros_and_stores_nothing() {
        let (img, store) = image(4);
        let mut buf = vec![1u8; 3 * BS as usize];
        assert_eq!(img.read(100, &mut buf).unwrap(), buf.len());
        assert!(is_zero(&buf));
        assert!(store.snapshot().is_empty());
    }

    #[test]
    fn zero_writes_store_nothing_and_full_zero_blocks_are_deleted() {
        let (img, store) = image(4);
        img.write(0, &vec![0u8; 2 * BS as usize]).unwrap();
        assert!(store.snapshot().is_empty());
        img.write(BS + 10, b"hello").unwrap();
        assert_eq!(store.snapshot().keys().copied().collect::<Vec<_>>(), vec![1]);
        img.write(BS + 10, &[0u8; 5]).unwrap();
        assert!(store.snapshot().is_empty(), "partial zero write emptied the block");
        img.write(BS, &vec![7u8; BS as usize]).unwrap();
        img.write(BS, &vec![0u8; BS as usize]).unwrap();
        assert!(store.snapshot().is_empty());
        assert_eq!(img.stored_blocks(), 0);
    }

    #[test]
    fn punch_frees_whole_blocks_and_zeroes_partial_ones() {
        let (img, store) = image(4);
        img.write(0, &vec![9u8; 4 * BS as usize]).unwrap();
        img.punch(BS / 2, 2 * BS).unwrap();
        let snap = store.snapshot();
        assert_eq!(snap.len(), 3, "block 1 freed");
        assert!(!snap.contains_key(&1));
        assert!(is_zero(&snap[&0][BS as usize / 2..]));
        assert!(is_zero(&snap[&2][..BS as usize / 2]));
        img.punch(0, u64::MAX).unwrap();
        assert!(store.snapshot().is_empty());
    }

    #[test]
    fn size_is_fixed() {
        let (img, _) = image(2);
        assert_eq!(img.write(2 * BS, b"x").unwrap_err().raw_os_error(), Some(libc::EFBIG));
        assert_eq!(img.write(2 * BS - 2, b"xyz").unwrap(), 2);
        let mut buf = [0u8; 8];
        assert_eq!(img.read(2 * BS, &mut buf).unwrap(), 0);
        assert_eq!(img.read(2 * BS - 2, &mut buf).unwrap(), 2);
    }

    #[test]
    fn seek_reports_stored_blocks() {
        let (img, _) = image(8);
        assert_eq!(img.seek_data(0).unwrap_err().raw_os_error(), Some(libc::ENXIO));
        assert_eq!(img.seek_hole(5).unwrap(), 5);
        img.write(3 * BS + 1, b"a").unwrap();
        img.write(4 * BS, b"b").unwrap();
        assert_eq!(img.seek_data(0).unwrap(), 3 * BS);
        assert_eq!(img.seek_data(3 * BS + 7).unwrap(), 3 * BS + 7);
        assert_eq!(img.seek_hole(3 * BS).unwrap(), 5 * BS);
        assert_eq!(img.seek_data(5 * BS).unwrap_err().raw_os_error(), Some(libc::ENXIO));
        assert_eq!(img.seek_hole(8 * BS).unwrap_err().raw_os_error(), Some(libc::ENXIO));
        img.write(0, &vec![1u8; 8 * BS as usize]).unwrap();
        assert_eq!(img.seek_hole(0).unwrap(), 8 * BS, "end of image is a hole");
    }

    #[test]
    fn reopening_sees_stored_blocks() {
        let (img, store) = image(4);
        img.write(2 * BS, b"keep").unwrap();
        let again = Image::open(img.geometry(), store).unwrap();
        let mut buf = [0u8; 4];
        again.read(2 * BS, &mut buf).unwrap();
        assert_eq!(&buf, b"keep");
        assert_eq!(again.stored_blocks(), 1);
    }

    #[test]
    fn grows_while_in_use_and_keeps_every_byte() {
        let (img, store) = image(4);
        img.write(3 * BS + 5, b"last block").unwrap();
        assert_eq!(img.write(4 * BS, b"x").unwrap_err().raw_os_error(), Some(libc::EFBIG));
        assert_eq!(img.grow(10 * BS).unwrap(), 4 * BS);
        assert_eq!((img.size(), img.geometry().block_count()), (10 * BS, 10));
        let mut buf = [0u8; 10];
        img.read(3 * BS + 5, &mut buf).unwrap();
        assert_eq!(&buf, b"last block");
        assert_eq!(img.read(4 * BS, &mut buf).unwrap(), 10, "the new end reads");
        assert!(is_zero(&buf), "as zeros");
        img.write(9 * BS, b"past the old end").unwrap();
        let mut stored: Vec<u64> = store.snapshot().keys().copied().collect();
        stored.sort();
        assert_eq!(stored, [3, 9]);
        assert_eq!(img.seek_hole(3 * BS).unwrap(), 4 * BS);
        assert_eq!(img.seek_data(4 * BS).unwrap(), 9 * BS);
        assert_eq!(img.seek_hole(9 * BS).unwrap(), 10 * BS, "the new end is a hole");
        let err = img.grow(8 * BS).unwrap_err().to_string();
        assert!(err.contains("never shrinks"), "{err}");
        assert!(img.grow(10 * BS).is_err(), "the same size");
        assert!(img.grow(10 * BS + 1).is_err(), "not a multiple");
        assert_eq!(img.size(), 10 * BS, "a refused grow changes nothing");
        let again = Image::open(img.geometry(), store).unwrap();
        assert_eq!(again.stored_blocks(), 2);
    }

    #[test]
    fn requests_go_on_while_it_grows() {
        let (img, _) = image(4);
        let img = Arc::new(img);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let started = Arc::new(std::sync::Barrier::new(4));
        let workers: Vec<_> = (0..3u8)
            .map(|t| {
                let (img, stop, rounds, started) = (img.clone(), stop.clone(), rounds.clone(), started.clone());
                std::thread::spawn(move || {
                    started.wait();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let offset = (n % 4) * BS + u64::from(t) * 100;
                        img.write(offset, &[t + 1; 50]).unwrap();
                        let mut buf = [0u8; 50];
                        img.read(offset, &mut buf).unwrap();
                        assert_eq!(buf, [t + 1; 50]);
                        n += 1;
                        rounds.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        // The grows run while the workers write and read.
        started.wait();
        for blocks in 5..200 {
            img.grow(blocks * BS).unwrap();
            img.write((blocks - 1) * BS, &[9u8; 10]).unwrap();
        }
        // The workers have been round all four blocks before they stop (the
        // grows may finish before a busy machine ran the workers much).
        while rounds.load(Ordering::Relaxed) < 3 * 4 * 4 {
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(img.stored_blocks(), 4 + 195);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write { offset: u64, len: usize, byte: u8 },
        Zero { offset: u64, len: usize },
        Punch { offset: u64, len: u64 },
        Read { offset: u64, len: usize },
        SeekData { offset: u64 },
        SeekHole { offset: u64 },
    }

    fn op(size: u64) -> impl Strategy<Value = Op> {
        let off = 0..size + BS;
        prop_oneof![
            (off.clone(), 1..3 * BS as usize, 1u8..=255).prop_map(|(offset, len, byte)| Op::Write {
                offset,
                len,
                byte
            }),
            (off.clone(), 1..3 * BS as usize).prop_map(|(offset, len)| Op::Zero { offset, len }),
            (off.clone(), 0..3 * BS).prop_map(|(offset, len)| Op::Punch { offset, len }),
            (off.clone(), 0..3 * BS as usize).prop_map(|(offset, len)| Op::Read { offset, len }),
            off.clone().prop_map(|offset| Op::SeekData { offset }),
            off.prop_map(|offset| Op::SeekHole { offset }),
        ]
    }

    proptest! {
        /// The image behaves like a plain byte vector, and stores exactly the
        /// blocks that hold a non-zero byte.
        #[test]
        fn behaves_like_a_byte_vector(ops in prop::collection::vec(op(6 * BS), 1..60)) {
            let blocks = 6u64;
            let size = blocks * BS;
            let (img, store) = image(blocks);
            let mut model = vec![0u8; size as usize];
            for op in ops {
                match op {
                    Op::Write { offset, len, byte } => {
                        let data: Vec<u8> = (0..len).map(|i| if i % 3 == 0 { 0 } else { byte }).collect();
                        let result = img.write(offset, &data);
                        if offset >= size { prop_assert!(result.is_err()); continue; }
                        let n = result.unwrap();
                        prop_assert_eq!(n as u64, (len as u64).min(size - offset));
                        model[offset as usize..offset as usize + n].copy_from_slice(&data[..n]);
                    }
                    Op::Zero { offset, len } => {
                        let result = img.write(offset, &vec![0u8; len]);
                        if offset >= size { prop_assert!(result.is_err()); continue; }
                        let n = result.unwrap();
                        model[offset as usize..offset as usize + n].fill(0);
                    }
                    Op::Punch { offset, len } => {
                        img.punch(offset, len).unwrap();
                        if offset < size {
                            let end = (offset + len).min(size);
                            model[offset as usize..end as usize].fill(0);
                        }
                    }
                    Op::Read { offset, len } => {
                        let mut buf = vec![0xAAu8; len];
                        let n = img.read(offset, &mut buf).unwrap();
                        let expect = if offset >= size { &[][..] } else { &model[offset as usize..(offset + len as u64).min(size) as usize] };
                        prop_assert_eq!(&buf[..n], expect);
                    }
                    Op::SeekData { offset } => {
                        let got = img.seek_data(offset).ok();
                        if offset >= size { prop_assert_eq!(got, None); continue; }
                        // Every byte before the answer lies in an all-zero block.
                        let stop = got.unwrap_or(size);
                        prop_assert!(is_zero(&model[offset as usize..stop as usize]));
                        if let Some(at) = got {
                            let b = at / BS;
                            prop_assert!(!is_zero(&model[(b * BS) as usize..((b + 1) * BS) as usize]));
                        }
                    }
                    Op::SeekHole { offset } => {
                        let got = img.seek_hole(offset).ok();
                        if offset >= size { prop_assert_eq!(got, None); continue; }
                        let at = got.unwrap();
                        prop_assert!(at >= offset && at <= size);
                        if at < size {
                            let b = at / BS;
                            prop_assert!(is_zero(&model[(b * BS) as usize..((b + 1) * BS) as usize]));
                        }
                    }
                }
                // Invariant: a block is stored iff it holds a non-zero byte.
                let snap = store.snapshot();
                for b in 0..blocks {
                    let nonzero = !is_zero(&model[(b * BS) as usize..((b + 1) * BS) as usize]);
                    prop_assert_eq!(snap.contains_key(&b), nonzero, "block {}", b);
                    prop_assert_eq!(img.is_stored(b), nonzero);
                }
            }
        }
    }
}
