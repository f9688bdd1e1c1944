//! Writes never wait for the remote: overlays of uncached blocks, GET
//! counts, outages, kill -9 with an overlay pending, a full cache during an
//! outage.

use super::*;
use crate::backend::MemBackend;
use crate::backend::fault::FaultyBackend;
use crate::meta::Meta;
use std::time::Instant;

const BS: u64 = 64 << 10;
/// Past `FETCH_STRIPES`: blocks 0 and 64 share a lock stripe.
const BLOCKS: u64 = 80;

struct Stack {
    backend: Arc<FaultyBackend<MemBackend>>,
    meta: Meta,
    dir: tempfile::TempDir,
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..BS).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

impl Stack {
    fn new() -> Self {
        let geometry = Geometry::new(BLOCKS * BS, BS).unwrap();
        Stack {
            backend: Arc::new(FaultyBackend::new(MemBackend::new())),
            meta: Meta::new(&geometry),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, cache: &str, blocks: u64) -> CacheConfig {
        let mut config = CacheConfig::new(&self.dir.path().join(cache));
        config.size = blocks * BS;
        config.upload_workers = 2;
        // Uploads only when asked (flush): overlays stay pending.
        config.upload_delay = Duration::from_secs(600);
        config.retry_timeout = Duration::from_millis(300);
        config.durability = Durability::Local;
        config
    }

    fn open(&self, cache: &str, blocks: u64) -> CacheStore {
        CacheStore::open(self.backend.clone(), &self.meta, &self.config(cache, blocks)).unwrap()
    }

    /// Blocks 0..n, each `pattern(block)`, only in the backend.
    fn remote_blocks(&self, n: u64) {
        let store = self.open("seed", BLOCKS);
        for b in 0..n {
            store.write_at(b, 0, &pattern(b as u8), true).unwrap();
        }
        store.close().unwrap();
    }

    /// Block `block` as the backend alone holds it (through a new cache).
    fn from_backend(&self, block: u64) -> Vec<u8> {
        let fresh = self.open(&format!("fresh-{}", uuid::Uuid::new_v4()), BLOCKS);
        let mut buf = vec![0u8; BS as usize];
        fresh.read_at(block, 0, &mut buf).unwrap();
        fresh.close().unwrap();
        buf
    }
}

#[test]
fn a_full_block_overwrite_of_an_uncached_remote_block_fetches_nothing() {
    let t = Stack::new();
    t.remote_blocks(2);
    let store = t.open("cache", 4);
    let gets = t.backend.gets();
    store.write_at(1, 0, &pattern(9), false).unwrap();
    store.sync().unwrap();
    assert_eq!(t.backend.gets(), gets, "a whole-block write fetched its block");
    let mut buf = vec![0u8; BS as usize];
    store.read_at(1, 0, &mut buf).unwrap();
    assert_eq!(buf, pattern(9));
    store.flush().unwrap();
    assert_eq!(t.backend.gets(), gets, "uploading a whole-block write fetched its block");
    store.close().unwrap();
    assert_eq!(t.from_backend(1), pattern(9));
}

#[test]
fn a_small_write_into_an_uncached_remote_block_fetches_nothing_until_it_is_merged() {
    let t = Stack::new();
    t.remote_blocks(2);
    let store = t.open("cache", 4);
    let gets = t.backend.gets();
    store.write_at(1, 8192, &[7u8; 4096], false).unwrap();
    store.zero_range(0, 100, 50).unwrap();
    assert_eq!(t.backend.gets(), gets, "a 4 KiB write or a punch fetched its block");
    let mut small = [0u8; 4096];
    store.read_at(1, 8192, &mut small).unwrap();
    assert_eq!(small, [7u8; 4096]);
    assert_eq!(t.backend.gets(), gets, "reading the overlay fetched the block");
    // The upload waits for the base: one GET per block to merge it.
    store.flush().unwrap();
    assert_eq!(t.backend.gets(), gets + 2);
    store.close().unwrap();
    let mut want = pattern(1);
    want[8192..12288].fill(7);
    assert_eq!(t.from_backend(1), want);
    let mut want = pattern(0);
    want[100..150].fill(0);
    assert_eq!(t.from_backend(0), want);
}

#[test]
fn a_partial_write_during_an_outage_lands_at_once_and_merges_once_the_backend_returns() {
    let t = Stack::new();
    t.remote_blocks(2);
    let store = t.open("cache", 4);
    t.backend.set_down(true);
    let started = Instant::now();
    store.write_at(1, 1000, &[0xAB; 3000], false).unwrap();
    store.zero_range(0, 0, 4096).unwrap();
    store.sync().unwrap();
    assert!(started.elapsed() < Duration::from_millis(300), "writes waited for the backend");
    let mut buf = [0u8; 3000];
    store.read_at(1, 1000, &mut buf).unwrap();
    assert_eq!(buf, [0xAB; 3000]);
    let mut zeros = [1u8; 4096];
    store.read_at(0, 0, &mut zeros).unwrap();
    assert_eq!(zeros, [0u8; 4096]);
    // Bytes of the base cannot be had during the outage: an error, never made-up data.
    assert!(store.read_at(1, 0, &mut [0u8; 10]).is_err());
    assert!(store.flush().is_err());
    t.backend.set_down(false);
    let mut whole = vec![0u8; BS as usize];
    store.read_at(1, 0, &mut whole).unwrap();
    let mut want = pattern(1);
    want[1000..4000].fill(0xAB);
    assert_eq!(whole, want);
    store.flush().unwrap();
    store.close().unwrap();
    assert_eq!(t.from_backend(1), want);
    let mut want0 = pattern(0);
    want0[..4096].fill(0);
    assert_eq!(t.from_backend(0), want0);
}

#[test]
fn a_killed_cache_keeps_a_pending_overlay_and_merges_it_after_the_restart() {
    let t = Stack::new();
    t.remote_blocks(3);
    let store = t.open("cache", 4);
    t.backend.set_down(true);
    store.write_at(2, 5, &[0x5A; 20], false).unwrap();
    store.write_at(2, 40_000, &[0x77; 100], false).unwrap();
    // kill -9: no flush, no clean shutdown (the page cache survives).
    drop(store);
    let config = t.config("cache", 4);
    assert!(config.dir.join("overlay").join(t.meta.geometry().unwrap().block_name(2)).exists());
    t.backend.set_down(false);
    let gets = t.backend.gets();
    let store = t.open("cache", 4);
    let mut part = [0u8; 20];
    store.read_at(2, 5, &mut part).unwrap();
    assert_eq!(part, [0x5A; 20]);
    assert_eq!(t.backend.gets(), gets + 1, "only the epoch was read");
    let mut want = pattern(2);
    want[5..25].fill(0x5A);
    want[40_000..40_100].fill(0x77);
    let mut whole = vec![0u8; BS as usize];
    store.read_at(2, 0, &mut whole).unwrap();
    assert_eq!(whole, want);
    store.flush().unwrap();
    store.close().unwrap();
    assert_eq!(t.from_backend(2), want);
}

#[test]
fn a_journaled_overlay_whose_file_was_lost_leaves_the_backend_copy() {
    let t = Stack::new();
    t.remote_blocks(2);
    let store = t.open("cache", 4);
    t.backend.set_down(true);
    store.write_at(1, 5, &[0x5A; 20], false).unwrap();
    drop(store);
    // A power cut before any sync: the record and journal entry made it, the file did not.
    let config = t.config("cache", 4);
    std::fs::remove_file(config.dir.join("blocks").join(t.meta.geometry().unwrap().block_name(1))).unwrap();
    t.backend.set_down(false);
    let store = t.open("cache", 4);
    let mut whole = vec![0u8; BS as usize];
    store.read_at(1, 0, &mut whole).unwrap();
    assert_eq!(whole, pattern(1));
    store.close().unwrap();
    assert_eq!(t.from_backend(1), pattern(1));
}

#[test]
fn a_full_cache_during_an_outage_never_makes_writers_wait() {
    let t = Stack::new();
    const N: u64 = 8;
    t.remote_blocks(N);
    let store = t.open("cache", 2);
    t.backend.set_down(true);
    let started = Instant::now();
    for b in 0..N {
        store.write_at(b, 64, &[b as u8 + 1; 64], false).unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(2), "writers waited for the backend");
    assert!(store.stats().cached_blocks > 2, "{:?}", store.stats());
    t.backend.set_down(false);
    store.flush().unwrap();
    // Once uploaded, the clean blocks are evicted back within the size.
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.stats().cached_blocks > 2 {
        assert!(Instant::now() < deadline, "{:?}", store.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    store.close().unwrap();
    for b in 0..N {
        let mut want = pattern(b as u8);
        want[64..128].fill(b as u8 + 1);
        assert_eq!(t.from_backend(b), want, "block {b}");
    }
}

#[test]
fn a_first_write_never_waits_for_a_fetch_of_another_block_of_its_stripe() {
    let t = Stack::new();
    t.remote_blocks(FETCH_STRIPES as u64 + 1);
    let store = t.open("cache", 4);
    t.backend.set_down(true);
    std::thread::scope(|scope| {
        // A read of uncached block 0 retries for `retry_timeout` (300 ms), then fails.
        let reader = scope.spawn(|| store.read_at(0, 0, &mut [0u8; 16]));
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        store.write_at(FETCH_STRIPES as u64, 10, &[1u8; 10], false).unwrap();
        assert!(started.elapsed() < Duration::from_millis(150), "the write waited for the read's fetch");
        assert!(reader.join().unwrap().is_err());
    });
    t.backend.set_down(false);
    store.flush().unwrap();
    store.close().unwrap();
    let mut want = pattern(FETCH_STRIPES as u8);
    want[10..20].fill(1);
    assert_eq!(t.from_backend(FETCH_STRIPES as u64), want);
}

#[test]
fn an_overlay_record_without_its_journal_entry_is_dropped_at_the_start() {
    let t = Stack::new();
    t.remote_blocks(2);
    let store = t.open("cache", 4);
    t.backend.set_down(true);
    store.write_at(1, 5, &[0x5A; 20], false).unwrap();
    drop(store);
    // A power cut before any sync: the record made it, the journal entry did not.
    let config = t.config("cache", 4);
    let name = t.meta.geometry().unwrap().block_name(1);
    std::fs::remove_file(config.dir.join("dirty").join(&name)).unwrap();
    t.backend.set_down(false);
    let store = t.open("cache", 4);
    assert!(!config.dir.join("overlay").join(&name).exists());
    let mut whole = vec![0u8; BS as usize];
    store.read_at(1, 0, &mut whole).unwrap();
    assert_eq!(whole, pattern(1));
    store.close().unwrap();
}

#[test]
fn a_damaged_or_linked_overlay_record_is_refused_never_followed() {
    let t = Stack::new();
    t.remote_blocks(2);
    let store = t.open("cache", 4);
    t.backend.set_down(true);
    store.write_at(1, 5, &[0x5A; 20], false).unwrap();
    drop(store);
    t.backend.set_down(false);
    let config = t.config("cache", 4);
    let record = config.dir.join("overlay").join(t.meta.geometry().unwrap().block_name(1));
    std::fs::write(&record, b"onefs-overlay 1\n5 999999999\n").unwrap();
    let err = CacheStore::open(t.backend.clone(), &t.meta, &config).err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    std::fs::remove_file(&record).unwrap();
    let elsewhere = t.dir.path().join("elsewhere");
    std::fs::write(&elsewhere, b"onefs-overlay 1\n5 25\n").unwrap();
    std::os::unix::fs::symlink(&elsewhere, &record).unwrap();
    assert!(CacheStore::open(t.backend.clone(), &t.meta, &config).is_err());
    // Put right by hand, the cache serves again.
    std::fs::remove_file(&record).unwrap();
    std::fs::write(&record, b"onefs-overlay 1\n5 25\n").unwrap();
    let store = t.open("cache", 4);
    let mut whole = vec![0u8; BS as usize];
    store.read_at(1, 0, &mut whole).unwrap();
    let mut want = pattern(1);
    want[5..25].fill(0x5A);
    assert_eq!(whole, want);
    store.close().unwrap();
}
