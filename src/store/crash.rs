//! An in-memory disk for crash tests: power cuts at any moment.
//!
//! [`CrashStore`] keeps two states. Writes, zeroes and deletes change the
//! *volatile* one (what a running system sees); a successful [`sync`]
//! makes it *durable*. [`CrashStore::power_cut`] throws the volatile state
//! away; [`CrashStore::power_cut_partial`] is harsher and more realistic: any
//! subset of the operations since the last sync may have reached the disk,
//! in any combination (as with a page cache written back in no set order).
//!
//! Failures are not its business: wrap it, or any other store, in
//! [`super::fault::Faulty`]. A sync that fails there never reaches this
//! store, so nothing written since the last good sync becomes durable.
//!
//! [`sync`]: BlockStore::sync

use super::{BlockStore, Zeroed};
use crate::core::is_zero;
use std::collections::HashMap;
use std::io;
use std::sync::{Mutex, MutexGuard};

/// A change that has not been made durable yet.
#[derive(Debug, Clone)]
enum Change {
    Write { block: u64, offset: usize, data: Vec<u8> },
    Zero { block: u64, offset: usize, len: usize },
    Delete { block: u64 },
}

pub type Blocks = HashMap<u64, Vec<u8>>;

#[derive(Default)]
struct State {
    durable: Blocks,
    volatile: Blocks,
    /// Changes since the last successful sync, in order.
    pending: Vec<Change>,
}

pub struct CrashStore {
    block_size: usize,
    state: Mutex<State>,
}

fn apply(blocks: &mut Blocks, block_size: usize, change: &Change) {
    match change {
        Change::Write { block, offset, data } => {
            let stored = blocks.entry(*block).or_insert_with(|| vec![0; block_size]);
            stored[*offset..*offset + data.len()].copy_from_slice(data);
        }
        Change::Zero { block, offset, len } => {
            if let Some(stored) = blocks.get_mut(block) {
                stored[*offset..*offset + *len].fill(0);
            }
        }
        Change::Delete { block } => {
            blocks.remove(block);
        }
    }
}

impl CrashStore {
    pub fn new(block_size: u64) -> Self {
        Self { block_size: block_size as usize, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// The power goes out: only what was synced survives.
    pub fn power_cut(&self) {
        let mut state = self.state();
        state.volatile = state.durable.clone();
        state.pending.clear();
    }

    /// The power goes out after the disk received some of the changes made
    /// since the last sync: each one independently, chosen by `keep` (called
    /// once per change, in order).
    pub fn power_cut_partial(&self, mut keep: impl FnMut() -> bool) {
        let mut state = self.state();
        let mut survived = state.durable.clone();
        for change in &state.pending {
            if keep() {
                apply(&mut survived, self.block_size, change);
            }
        }
        state.durable = survived.clone();
        state.volatile = survived;
        state.pending.clear();
    }

    /// The blocks a running system sees.
    pub fn volatile_snapshot(&self) -> Blocks {
        self.state().volatile.clone()
    }

    /// The blocks that would survive a power cut now.
    pub fn durable_snapshot(&self) -> Blocks {
        self.state().durable.clone()
    }

    fn check_range(&self, offset: u64, len: usize) -> io::Result<usize> {
        let offset = offset as usize;
        if offset.checked_add(len).is_none_or(|end| end > self.block_size) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(offset)
    }

    fn change(&self, change: Change) {
        let mut state = self.state();
        apply(&mut state.volatile, self.block_size, &change);
        state.pending.push(change);
    }
}

impl BlockStore for CrashStore {
    fn list(&self) -> io::Result<Vec<u64>> {
        Ok(self.state().volatile.keys().copied().collect())
    }

    fn read_at(&self, block: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let offset = self.check_range(offset, buf.len())?;
        match self.state().volatile.get(&block) {
            Some(data) => buf.copy_from_slice(&data[offset..offset + buf.len()]),
            None => buf.fill(0),
        }
        Ok(())
    }

    fn write_at(&self, block: u64, offset: u64, data: &[u8], _create: bool) -> io::Result<()> {
        let offset = self.check_range(offset, data.len())?;
        self.change(Change::Write { block, offset, data: data.to_vec() });
        Ok(())
    }

    fn zero_range(&self, block: u64, offset: u64, len: u64) -> io::Result<Zeroed> {
        let offset = self.check_range(offset, len as usize)?;
        if !self.state().volatile.contains_key(&block) {
            return Ok(Zeroed::AllZero);
        }
        self.change(Change::Zero { block, offset, len: len as usize });
        let all_zero = self.state().volatile.get(&block).is_none_or(|b| is_zero(b));
        Ok(if all_zero { Zeroed::AllZero } else { Zeroed::MayHoldData })
    }

    fn delete(&self, block: u64) -> io::Result<()> {
        self.change(Change::Delete { block });
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.state();
        state.durable = state.volatile.clone();
        state.pending.clear();
        Ok(())
    }
}
