//! Fault injection as a layer: [`Faulty`] wraps any [`BlockStore`] (the
//! in-memory [`super::crash::CrashStore`], the real [`super::DirStore`], the
//! cache over a backend) and makes chosen operations fail with a chosen
//! errno before they reach it, so the same failure tests run over every
//! store, the way s3backer stacks its test layer under any store.
//!
//! Failures: the next operation of a kind, every operation of a kind, or the
//! Nth operation of any kind. A failed sync is sticky, as in the real stores:
//! once a flush failed the kernel may have dropped dirty data, so every later
//! sync fails too until [`Faulty::restart`] (the machine came back).

use super::{BlockStore, Zeroed};
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

#[derive(Default)]
struct Faults {
    pending: Vec<Fault>,
    ops: u64,
    injected: u64,
    sync_failed: bool,
}

pub struct Faulty<S> {
    inner: S,
    faults: Mutex<Faults>,
}

impl<S: BlockStore> Faulty<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, faults: Mutex::new(Faults::default()) }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        crate::sync::lock(&self.faults)
    }

    /// The next operation of kind `op` fails with `errno`.
    pub fn fail_next(&self, op: Op, errno: i32) {
        self.faults().pending.push(Fault::Next(op, errno));
    }

    /// Every operation of kind `op` fails with `errno` until [`Self::clear_faults`].
    pub fn fail_always(&self, op: Op, errno: i32) {
        self.faults().pending.push(Fault::Always(op, errno));
    }

    /// The `n`th operation from now (1 = the next one), of any kind, fails.
    pub fn fail_nth(&self, n: u64, errno: i32) {
        let mut faults = self.faults();
        let at = faults.ops + n;
        faults.pending.push(Fault::Nth(at, errno));
    }

    /// Removes every pending fault (a failed sync stays failed).
    pub fn clear_faults(&self) {
        self.faults().pending.clear();
    }

    /// The machine restarts: faults and a failed sync are forgotten.
    pub fn restart(&self) {
        *self.faults() = Faults::default();
    }

    /// Operations seen so far, and how many of them were made to fail.
    pub fn counts(&self) -> (u64, u64) {
        let faults = self.faults();
        (faults.ops, faults.injected)
    }

    /// Counts an operation and fails it if a fault says so.
    fn enter(&self, op: Op) -> io::Result<()> {
        let mut faults = self.faults();
        faults.ops += 1;
        let seq = faults.ops;
        if op == Op::Sync && faults.sync_failed {
            return Err(io::Error::other("an earlier flush failed; data written since may be lost"));
        }
        let hit = faults.pending.iter().position(|f| match *f {
            Fault::Next(o, _) | Fault::Always(o, _) => o == op,
            Fault::Nth(n, _) => n == seq,
        });
        let Some(i) = hit else { return Ok(()) };
        let (Fault::Next(_, errno) | Fault::Always(_, errno) | Fault::Nth(_, errno)) = faults.pending[i];
        if !matches!(faults.pending[i], Fault::Always(..)) {
            faults.pending.remove(i);
        }
        faults.injected += 1;
        if op == Op::Sync {
            faults.sync_failed = true;
        }
        Err(io::Error::from_raw_os_error(errno))
    }
}

impl<S: BlockStore> BlockStore for Faulty<S> {
    fn list(&self) -> io::Result<Vec<u64>> {
        self.enter(Op::List)?;
        self.inner.list()
    }

    fn read_at(&self, block: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.enter(Op::Read)?;
        self.inner.read_at(block, offset, buf)
    }

    fn write_at(&self, block: u64, offset: u64, data: &[u8], create: bool) -> io::Result<()> {
        self.enter(Op::Write)?;
        self.inner.write_at(block, offset, data, create)
    }

    fn zero_range(&self, block: u64, offset: u64, len: u64) -> io::Result<Zeroed> {
        self.enter(Op::Zero)?;
        self.inner.zero_range(block, offset, len)
    }

    fn delete(&self, block: u64) -> io::Result<()> {
        self.enter(Op::Delete)?;
        self.inner.delete(block)
    }

    fn sync(&self) -> io::Result<()> {
        self.enter(Op::Sync)?;
        self.inner.sync()
    }

    fn stored_bytes(&self, block: u64) -> Option<u64> {
        self.inner.stored_bytes(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;
    use crate::backend::fault::FaultyBackend;
    use crate::core::{Geometry, is_zero};
    use crate::errors::errno;
    use crate::image::Image;
    use crate::store::DirStore;
    use crate::store::cache::{CacheConfig, CacheStore, Durability};
    use crate::store::crash::CrashStore;
    use proptest::prelude::*;
    use std::sync::Arc;

    const BS: u64 = 4096;
    const BLOCKS: u64 = 6;
    const SIZE: usize = (BS * BLOCKS) as usize;

    fn geometry() -> Geometry {
        Geometry::new(BLOCKS * BS, BS).unwrap()
    }

    fn setup() -> (Arc<Faulty<CrashStore>>, Geometry, Image) {
        let store = Arc::new(Faulty::new(CrashStore::new(BS)));
        let image = Image::open(geometry(), store.clone()).unwrap();
        (store, geometry(), image)
    }

    /// The real directory store, in a fresh directory.
    fn dir_store() -> (Arc<Faulty<DirStore>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path(), geometry(), false).unwrap();
        (Arc::new(Faulty::new(store)), dir)
    }

    /// The cache over a backend that can fail: what a remote mount runs on.
    struct CacheStack {
        backend: Arc<FaultyBackend<MemBackend>>,
        meta: crate::meta::Meta,
        dir: tempfile::TempDir,
    }

    impl CacheStack {
        fn new() -> Self {
            let backend = Arc::new(FaultyBackend::new(MemBackend::new()));
            Self { backend, meta: crate::meta::Meta::new(&geometry()), dir: tempfile::tempdir().unwrap() }
        }

        fn config(&self, cache: &str) -> CacheConfig {
            let mut config = CacheConfig::new(&self.dir.path().join(cache));
            config.size = 3 * BS;
            config.upload_workers = 2;
            config.upload_delay = std::time::Duration::from_millis(20);
            config.retry_timeout = std::time::Duration::from_millis(200);
            config.durability = Durability::Local;
            config
        }

        fn open(&self, cache: &str) -> Arc<Faulty<CacheStore>> {
            self.open_sized(cache, 3)
        }

        /// With room for `blocks` cached blocks.
        fn open_sized(&self, cache: &str, blocks: u64) -> Arc<Faulty<CacheStore>> {
            let mut config = self.config(cache);
            config.size = blocks * BS;
            let store = CacheStore::open(self.backend.clone(), &self.meta, &config).unwrap();
            Arc::new(Faulty::new(store))
        }
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
        store.inner().power_cut();
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
        assert_eq!(store.inner().durable_snapshot()[&0][..3], *b"one");
        store.inner().power_cut();
        store.restart();
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

    /// With failures injected at random operations of `store`, the image
    /// never panics, every failure is an Err with the injected errno, a
    /// failed write leaves each byte it covered at its old or new value, and
    /// afterwards the map agrees with what the store lists.
    fn random_failures<S: BlockStore + 'static>(
        store: Arc<Faulty<S>>,
        steps: &[Step],
        fail_at: Vec<u64>,
        enospc: bool,
    ) -> Result<(), TestCaseError> {
        let geometry = geometry();
        let image = Image::open(geometry, store.clone()).unwrap();
        let code = if enospc { libc::ENOSPC } else { libc::EIO };
        for n in fail_at {
            store.fail_nth(n, code);
        }
        let mut model = Model::new();
        let mut sync_failed = false;
        for step in steps {
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
        let mut listed = store.inner().list().unwrap();
        listed.sort();
        let mapped: Vec<u64> = (0..BLOCKS).filter(|&b| image.is_stored(b)).collect();
        prop_assert_eq!(listed, mapped, "the map and the store disagree");
        Ok(())
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
                store.inner().power_cut_partial(|| {
                    bits = bits.rotate_right(1);
                    bits & 1 == 1
                });
            } else {
                store.inner().power_cut();
            }
            store.restart();
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

        /// The same, over the in-memory disk, the real directory store and
        /// the cache over a backend that fails now and then too.
        #[test]
        fn random_failures_are_errors_never_panics(
            steps in prop::collection::vec(step(), 1..40),
            fail_at in prop::collection::vec(1u64..60, 0..6),
            enospc in any::<bool>(),
        ) {
            random_failures(setup().0, &steps, fail_at, enospc)?;
        }

        #[test]
        fn random_failures_of_the_directory_store_are_errors_never_panics(
            steps in prop::collection::vec(step(), 1..40),
            fail_at in prop::collection::vec(1u64..60, 0..6),
            enospc in any::<bool>(),
        ) {
            let (store, _dir) = dir_store();
            random_failures(store, &steps, fail_at, enospc)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn random_failures_of_the_cache_are_errors_never_panics(
            steps in prop::collection::vec(step(), 1..30),
            fail_at in prop::collection::vec(1u64..60, 0..6),
            enospc in any::<bool>(),
        ) {
            let stack = CacheStack::new();
            random_failures(stack.open("cache"), &steps, fail_at, enospc)?;
        }

        /// kill -9 of the daemon at any point over the cache stack: after a
        /// restart from the cache directory and the backend, every write
        /// made reads back (the page cache survives a killed process); once
        /// the uploads drained, the backend alone, behind a new empty cache,
        /// holds exactly the same image.
        #[test]
        fn a_killed_cache_restarts_with_every_write_and_the_backend_ends_up_with_them(
            steps in prop::collection::vec(step(), 1..30),
            cut in any::<prop::sample::Index>(),
            outage_at in any::<Option<prop::sample::Index>>(),
        ) {
            let stack = CacheStack::new();
            // Room for 3 of the image's blocks: during an outage a cache
            // full of dirty blocks goes over its size, never making writers
            // wait (issue 21).
            let store = stack.open("cache");
            let image = Image::open(geometry(), store.clone()).unwrap();
            let mut model = Model::new();
            let cut = cut.index(steps.len() + 1);
            // A backend outage from some step on, after the blocks written
            // so far were uploaded (and all but 3 evicted): writes never wait
            // for the remote (uncached blocks get an overlay), so every step
            // succeeds.
            let outage_at = outage_at.map(|i| i.index(cut + 1));
            let outage = outage_at.is_some();
            for (i, step) in steps[..cut].iter().enumerate() {
                if outage_at == Some(i) {
                    store.inner().flush().unwrap();
                    stack.backend.set_down(true);
                }
                let done = match step {
                    Step::Write { offset, data } => image.write(*offset, data).map(|n| {
                        (0..n).for_each(|i| model.set(*offset as usize + i, data[i]));
                    }),
                    Step::Punch { offset, len } => image.punch(*offset, *len).map(|()| {
                        let end = (offset + len).min(SIZE as u64);
                        (*offset..end).for_each(|at| model.set(at as usize, 0));
                    }),
                    Step::Sync => image.sync().map(|()| model.sync()),
                };
                prop_assert!(done.is_ok(), "a step failed (outage: {}): {:?}", outage, done);
            }
            if !outage {
                prop_assert_eq!(read_all(&image), model.current.clone());
            }
            if outage_at == Some(cut) {
                store.inner().flush().unwrap();
                stack.backend.set_down(true);
            }
            // kill -9: no flush, no clean shutdown.
            drop(image);
            drop(store);
            stack.backend.set_down(false);
            let store = stack.open("cache");
            let image = Image::open(geometry(), store.clone()).unwrap();
            let after = read_all(&image);
            prop_assert_eq!(&after, &model.current, "a write was lost across the kill");
            for (at, &value) in after.iter().enumerate() {
                prop_assert!(model.allowed(at, value), "byte {} reads {:#x}", at, value);
            }
            store.inner().flush().unwrap();
            store.inner().close().unwrap();
            drop(image);
            drop(store);
            let fresh = stack.open("empty-cache");
            let from_backend = read_all(&Image::open(geometry(), fresh.clone()).unwrap());
            prop_assert_eq!(from_backend, after, "the backend does not hold the image");
            fresh.inner().close().unwrap();
        }
    }
}
