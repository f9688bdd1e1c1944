//! An in-memory store, for tests of everything above the store.

use super::{BlockStore, Zeroed};
use crate::core::is_zero;
use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

pub struct MemStore {
    block_size: usize,
    blocks: Mutex<HashMap<u64, Vec<u8>>>,
}

impl MemStore {
    pub fn new(block_size: u64) -> Self {
        Self { block_size: block_size as usize, blocks: Mutex::new(HashMap::new()) }
    }

    fn blocks(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<u8>>> {
        // A panic while holding this lock can only come from a test assertion.
        crate::sync::lock(&self.blocks)
    }

    /// The stored blocks and their contents (for assertions).
    pub fn snapshot(&self) -> HashMap<u64, Vec<u8>> {
        self.blocks().clone()
    }
}

impl BlockStore for MemStore {
    fn list(&self) -> io::Result<Vec<u64>> {
        Ok(self.blocks().keys().copied().collect())
    }

    fn read_at(&self, block: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self.blocks().get(&block) {
            Some(data) => buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]),
            None => buf.fill(0),
        }
        Ok(())
    }

    fn write_at(&self, block: u64, offset: u64, data: &[u8], _create: bool) -> io::Result<()> {
        let mut blocks = self.blocks();
        let stored = blocks.entry(block).or_insert_with(|| vec![0; self.block_size]);
        stored[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn zero_range(&self, block: u64, offset: u64, len: u64) -> io::Result<Zeroed> {
        let mut blocks = self.blocks();
        let Some(stored) = blocks.get_mut(&block) else { return Ok(Zeroed::AllZero) };
        stored[offset as usize..(offset + len) as usize].fill(0);
        Ok(if is_zero(stored) { Zeroed::AllZero } else { Zeroed::MayHoldData })
    }

    fn delete(&self, block: u64) -> io::Result<()> {
        self.blocks().remove(&block);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}
