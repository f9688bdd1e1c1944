//! A store for crash and failure tests: in memory, with power cuts and
//! injected errors.
//!
//! [`CrashStore`] keeps two states. Writes, zeroes and deletes change the
//! *volatile* one (what a running system sees); a successful [`sync`]
//! makes it *durable*. [`CrashStore::power_cut`] throws the volatile state
//! away; [`CrashStore::power_cut_partial`] is harsher and more realistic: any
//! subset of the operations since the last sync may have reached the disk,
//! in any combination (as with a page cache written back in no set order).
//!
//! Failures: the next operation of a kind, every operation of a kind, or the
//! Nth operation of any kind can be made to fail with a chosen errno, before
//! it changes anything. A failed sync is sticky, like [`super::DirStore`]'s:
//! once a flush failed the kernel may have dropped dirty data, so every later
//! sync fails too and nothing written since the last good sync is durable.
//!
//! [`sync`]: BlockStore::sync

use super::{BlockStore, Zeroed};
use crate::core::is_zero;
use std::collections::HashMap;
use std::io;
use std::sync::{Mutex, MutexGuard};

/// Kinds of store operations, for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    List,
    Read,
    Write,
    Zero,
    Delete,
    Sync,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The next operation of this kind fails once.
    Next(Op, i32),
    /// Every operation of this kind fails until cleared.
    Always(Op, i32),
    /// The operation with this sequence number (counting every operation,
    /// from 1) fails.
    Nth(u64, i32),
}

/// A change that has not been made durable yet.
#[derive(Debug, Clone)]
enum Change {
    Write { block: u64, offset: usize, data: Vec<u8> },
    Zero { block: u64, offset: usize, len: usize },
    Delete { block: u64 },
}

type Blocks = HashMap<u64, Vec<u8>>;

#[derive(Default)]
struct State {
    durable: Blocks,
    volatile: Blocks,
    /// Changes since the last successful sync, in order.
    pending: Vec<Change>,
    faults: Vec<Fault>,
    ops: u64,
    injected: u64,
    sync_failed: bool,
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

    /// The next operation of kind `op` fails with `errno`.
    pub fn fail_next(&self, op: Op, errno: i32) {
        self.state().faults.push(Fault::Next(op, errno));
    }

    /// Every operation of kind `op` fails with `errno` until [`Self::clear_faults`].
    pub fn fail_always(&self, op: Op, errno: i32) {
        self.state().faults.push(Fault::Always(op, errno));
    }

    /// The `n`th operation from now (1 = the next one), of any kind, fails.
    pub fn fail_nth(&self, n: u64, errno: i32) {
        let mut state = self.state();
        let at = state.ops + n;
        state.faults.push(Fault::Nth(at, errno));
    }

    /// Removes every pending fault (a failed sync stays failed).
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Operations seen so far, and how many of them were made to fail.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state();
        (state.ops, state.injected)
    }

    /// The power goes out: only what was synced survives. Faults and a
    /// failed sync are forgotten (the machine restarts).
    pub fn power_cut(&self) {
        let mut state = self.state();
        state.volatile = state.durable.clone();
        state.pending.clear();
        state.sync_failed = false;
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
        state.sync_failed = false;
    }

    /// The blocks a running system sees.
    pub fn volatile_snapshot(&self) -> Blocks {
        self.state().volatile.clone()
    }

    /// The blocks that would survive a power cut now.
    pub fn durable_snapshot(&self) -> Blocks {
        self.state().durable.clone()
    }

    /// Counts an operation and fails it if a fault says so.
    fn enter(&self, op: Op) -> io::Result<MutexGuard<'_, State>> {
        let mut state = self.state();
        state.ops += 1;
        let seq = state.ops;
        let hit = state.faults.iter().position(|f| match *f {
            Fault::Next(o, _) | Fault::Always(o, _) => o == op,
            Fault::Nth(n, _) => n == seq,
        });
        if let Some(i) = hit {
            let errno = match state.faults[i] {
                Fault::Next(_, e) | Fault::Always(_, e) | Fault::Nth(_, e) => e,
            };
            if !matches!(state.faults[i], Fault::Always(..)) {
                state.faults.remove(i);
            }
            state.injected += 1;
            if op == Op::Sync {
                state.sync_failed = true;
            }
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(state)
    }

    fn check_range(&self, offset: u64, len: usize) -> io::Result<usize> {
        let offset = offset as usize;
        if offset.checked_add(len).is_none_or(|end| end > self.block_size) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(offset)
    }

    fn change(&self, state: &mut State, change: Change) {
        apply(&mut state.volatile, self.block_size, &change);
        state.pending.push(change);
    }
}

impl BlockStore for CrashStore {
    fn list(&self) -> io::Result<Vec<u64>> {
        let state = self.enter(Op::List)?;
        Ok(state.volatile.keys().copied().collect())
    }

    fn read_at(&self, block: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let offset = self.check_range(offset, buf.len())?;
        let state = self.enter(Op::Read)?;
        match state.volatile.get(&block) {
            Some(data) => buf.copy_from_slice(&data[offset..offset + buf.len()]),
            None => buf.fill(0),
        }
        Ok(())
    }

    fn write_at(&self, block: u64, offset: u64, data: &[u8], _create: bool) -> io::Result<()> {
        let offset = self.check_range(offset, data.len())?;
        let mut state = self.enter(Op::Write)?;
        self.change(&mut state, Change::Write { block, offset, data: data.to_vec() });
        Ok(())
    }

    fn zero_range(&self, block: u64, offset: u64, len: u64) -> io::Result<Zeroed> {
        let offset = self.check_range(offset, len as usize)?;
        let mut state = self.enter(Op::Zero)?;
        if !state.volatile.contains_key(&block) {
            return Ok(Zeroed::AllZero);
        }
        self.change(&mut state, Change::Zero { block, offset, len: len as usize });
        let all_zero = state.volatile.get(&block).is_none_or(|b| is_zero(b));
        Ok(if all_zero { Zeroed::AllZero } else { Zeroed::MayHoldData })
    }

    fn delete(&self, block: u64) -> io::Result<()> {
        let mut state = self.enter(Op::Delete)?;
        self.change(&mut state, Change::Delete { block });
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.enter(Op::Sync)?;
        if state.sync_failed {
            return Err(io::Error::other("an earlier flush failed; data written since may be lost"));
        }
        state.durable = state.volatile.clone();
        state.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Geometry;
    use crate::errors::errno;
    use crate::image::Image;
    use proptest::prelude::*;
    use std::sync::Arc;

    const BS: u64 = 4096;
    const BLOCKS: u64 = 6;
    const SIZE: usize = (BS * BLOCKS) as usize;

    fn setup() -> (Arc<CrashStore>, Geometry, Image) {
        let store = Arc::new(CrashStore::new(BS));
        let geometry = Geometry::new(BLOCKS * BS, BS).unwrap();
        let image = Image::open(geometry, store.clone()).unwrap();
        (store, geometry, image)
    }

    fn read_all(image: &Image) -> Vec<u8> {
        let mut buf = vec![0xEEu8; SIZE];
        assert_eq!(image.read(0, &mut buf).unwrap(), SIZE);
        buf
    }

    #[test]
    fn power_cut_keeps_exactly_what_was_synced() {
        let (store, geometry, image) = setup();
        image.write(10, b"durable").unwrap();
        image.sync().unwrap();
        image.write(10, b"VOLATIL").unwrap();
        image.write(3 * BS, b"lost").unwrap();
        store.power_cut();
        let image = Image::open(geometry, store.clone()).unwrap();
        let all = read_all(&image);
        assert_eq!(&all[10..17], b"durable");
        assert!(is_zero(&all[3 * BS as usize..]));
        assert_eq!(image.stored_blocks(), 1);
    }

    #[test]
    fn injected_errors_surface_with_their_errno() {
        let (store, geometry, image) = setup();
        image.write(0, b"base").unwrap();

        store.fail_next(Op::Write, libc::ENOSPC);
        let err = image.write(2 * BS, b"new block").unwrap_err();
        assert_eq!(errno(&err), libc::ENOSPC);
        assert!(!image.is_stored(2), "a block whose creation failed is not in the map");
        image.write(2 * BS, b"new block").unwrap();

        store.fail_next(Op::Write, libc::EIO);
        assert_eq!(errno(&image.write(1, b"x").unwrap_err()), libc::EIO);

        store.fail_next(Op::Read, libc::EIO);
        let mut buf = [0u8; 4];
        assert_eq!(errno(&image.read(0, &mut buf).unwrap_err()), libc::EIO);
        image.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"base");
        // Absent blocks never reach the store, so cannot fail.
        store.fail_always(Op::Read, libc::EIO);
        image.read(4 * BS, &mut buf).unwrap();
        store.clear_faults();

        store.fail_next(Op::Zero, libc::EIO);
        assert_eq!(errno(&image.write(0, &[0u8; 2]).unwrap_err()), libc::EIO);
        store.fail_next(Op::Delete, libc::EIO);
        assert_eq!(errno(&image.write(2 * BS, &vec![0u8; BS as usize]).unwrap_err()), libc::EIO);
        assert!(image.is_stored(2), "a block whose delete failed stays in the map");
        store.fail_next(Op::Delete, libc::EIO);
        assert_eq!(errno(&image.punch(0, u64::MAX).unwrap_err()), libc::EIO);

        store.fail_next(Op::List, libc::EIO);
        assert_eq!(errno(&Image::open(geometry, store.clone()).err().unwrap()), libc::EIO);
        let (ops, injected) = store.counts();
        assert!(ops > 10 && injected == 7, "{ops} {injected}");
    }

    #[test]
    fn a_failed_sync_is_sticky_and_keeps_nothing_since_the_last_good_one() {
        let (store, geometry, image) = setup();
        image.write(0, b"one").unwrap();
        image.sync().unwrap();
        image.write(0, b"two").unwrap();
        store.fail_next(Op::Sync, libc::EIO);
        assert_eq!(errno(&image.sync().unwrap_err()), libc::EIO);
        // The fault is gone, but the store must not claim durability now.
        assert!(image.sync().is_err());
        image.write(BS, b"three").unwrap();
        assert!(image.sync().is_err());
        assert_eq!(store.durable_snapshot()[&0][..3], *b"one");
        store.power_cut();
        let image = Image::open(geometry, store.clone()).unwrap();
        let all = read_all(&image);
        assert_eq!(&all[..3], b"one");
        assert!(is_zero(&all[BS as usize..]));
        image.write(0, b"four").unwrap();
        image.sync().unwrap();
    }

    #[derive(Debug, Clone)]
    enum Step {
        Write { offset: u64, data: Vec<u8> },
        Punch { offset: u64, len: u64 },
        Sync,
    }

    fn step() -> impl Strategy<Value = Step> {
        let off = 0..SIZE as u64;
        prop_oneof![
            4 => (off.clone(), 1..2 * BS as usize, any::<u8>(), 0u8..4).prop_map(|(offset, len, seed, kind)| {
                let data = match kind {
                    0 => vec![0u8; len],
                    1 => vec![seed | 1; len],
                    _ => (0..len).map(|i| if i % 7 == 0 { 0 } else { seed.wrapping_add(i as u8) | 1 }).collect(),
                };
                Step::Write { offset, data }
            }),
            1 => (off, 0..3 * BS).prop_map(|(offset, len)| Step::Punch { offset, len }),
            1 => Just(Step::Sync),
        ]
    }

    /// Per byte: its value at the last completed sync, and every value
    /// written to it since.
    struct Model {
        synced: Vec<u8>,
        current: Vec<u8>,
        since: Vec<Vec<u8>>,
    }

    impl Model {
        fn new() -> Self {
            Self { synced: vec![0; SIZE], current: vec![0; SIZE], since: vec![Vec::new(); SIZE] }
        }
        fn set(&mut self, at: usize, value: u8) {
            self.current[at] = value;
            if !self.since[at].contains(&value) {
                self.since[at].push(value);
            }
        }
        fn sync(&mut self) {
            self.synced.copy_from_slice(&self.current);
            self.since.iter_mut().for_each(Vec::clear);
        }
        fn allowed(&self, at: usize, value: u8) -> bool {
            value == self.synced[at] || self.since[at].contains(&value)
        }
    }

    /// Reads, retrying while injected faults (each fails one operation) hit.
    fn read_through_faults(image: &Image, offset: u64, buf: &mut [u8], code: i32) -> Result<(), TestCaseError> {
        loop {
            match image.read(offset, buf) {
                Ok(_) => return Ok(()),
                Err(e) => prop_assert_eq!(errno(&e), code),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// After a power cut anywhere, every byte synced before reads back
        /// exactly; every other byte reads its synced value or a value
        /// written since, never anything else.
        #[test]
        fn power_cut_anywhere_loses_nothing_synced(
            steps in prop::collection::vec(step(), 1..40),
            cut in any::<prop::sample::Index>(),
            partial in any::<bool>(),
            keep_bits in any::<u64>(),
        ) {
            let (store, geometry, image) = setup();
            let mut model = Model::new();
            let cut = cut.index(steps.len() + 1);
            for step in &steps[..cut] {
                match step {
                    Step::Write { offset, data } => {
                        let n = image.write(*offset, data).unwrap();
                        for (i, &value) in data[..n].iter().enumerate() {
                            model.set(*offset as usize + i, value);
                        }
                    }
                    Step::Punch { offset, len } => {
                        image.punch(*offset, *len).unwrap();
                        let end = (offset + len).min(SIZE as u64);
                        for at in *offset..end {
                            model.set(at as usize, 0);
                        }
                    }
                    Step::Sync => {
                        image.sync().unwrap();
                        model.sync();
                    }
                }
            }
            prop_assert_eq!(read_all(&image), model.current.clone());
            drop(image);
            if partial {
                let mut bits = keep_bits;
                store.power_cut_partial(|| {
                    bits = bits.rotate_right(1);
                    bits & 1 == 1
                });
            } else {
                store.power_cut();
            }
            let image = Image::open(geometry, store.clone()).unwrap();
            let all = read_all(&image);
            for (at, &value) in all.iter().enumerate() {
                prop_assert!(
                    model.allowed(at, value),
                    "byte {} reads {:#x}: synced {:#x}, written since {:?}", at, value, model.synced[at], model.since[at]
                );
                if model.since[at].is_empty() {
                    prop_assert_eq!(value, model.synced[at], "synced byte {} changed", at);
                }
            }
            // The surviving image is usable: it takes writes and syncs.
            image.write(0, b"after").unwrap();
            image.sync().unwrap();
        }

        /// With failures injected at random operations, the image never
        /// panics, every failure is an Err with the injected errno, and a
        /// failed write leaves each byte it covered at its old or new value.
        #[test]
        fn random_failures_are_errors_never_panics(
            steps in prop::collection::vec(step(), 1..40),
            fail_at in prop::collection::vec(1u64..60, 0..6),
            enospc in any::<bool>(),
        ) {
            let (store, geometry, image) = setup();
            let code = if enospc { libc::ENOSPC } else { libc::EIO };
            for n in fail_at {
                store.fail_nth(n, code);
            }
            let mut model = Model::new();
            let mut sync_failed = false;
            for step in &steps {
                match step {
                    Step::Write { offset, data } => match image.write(*offset, data) {
                        Ok(n) => (0..n).for_each(|i| model.set(*offset as usize + i, data[i])),
                        Err(e) => {
                            prop_assert_eq!(errno(&e), code);
                            let end = (*offset as usize + data.len()).min(SIZE);
                            for at in *offset as usize..end {
                                let new = data[at - *offset as usize];
                                // Either value may now be there; allow both from here on.
                                model.since[at].push(model.current[at]);
                                model.since[at].push(new);
                                model.current[at] = new;
                            }
                            // Re-read to learn what is really there.
                            let mut buf = vec![0u8; end - *offset as usize];
                            read_through_faults(&image, *offset, &mut buf, code)?;
                            for (i, &v) in buf.iter().enumerate() {
                                let at = *offset as usize + i;
                                prop_assert!(model.since[at].contains(&v), "failed write left byte {} = {:#x}", at, v);
                                model.current[at] = v;
                            }
                        }
                    },
                    Step::Punch { offset, len } => {
                        let end = (offset + len).min(SIZE as u64) as usize;
                        match image.punch(*offset, *len) {
                            Ok(()) => (*offset as usize..end.max(*offset as usize)).for_each(|at| model.set(at, 0)),
                            Err(e) => {
                                prop_assert_eq!(errno(&e), code);
                                let mut buf = vec![0u8; end.saturating_sub(*offset as usize)];
                                read_through_faults(&image, *offset, &mut buf, code)?;
                                for (i, &v) in buf.iter().enumerate() {
                                    let at = *offset as usize + i;
                                    prop_assert!(v == 0 || v == model.current[at]);
                                    model.set(at, v);
                                }
                            }
                        }
                    }
                    Step::Sync => match image.sync() {
                        Ok(()) => {
                            prop_assert!(!sync_failed, "a sync succeeded after a failed one");
                            model.sync();
                        }
                        Err(_) => sync_failed = true,
                    },
                }
            }
            store.clear_faults();
            prop_assert_eq!(read_all(&image), model.current.clone());
            // The map agrees with the store after all those failures.
            let reopened = Image::open(geometry, store.clone()).unwrap();
            prop_assert_eq!(read_all(&reopened), model.current.clone());
            for b in 0..BLOCKS {
                prop_assert_eq!(image.is_stored(b), store.volatile_snapshot().contains_key(&b));
            }
        }
    }
}
