use super::*;
use crate::backend::MemBackend;
use crate::backend::retry::permanent;
use crate::core::is_zero;
use crate::image::Image;
use crate::meta::Meta;
use proptest::prelude::*;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

const BS: u64 = 4096;

/// A backend for tests: can be switched down, made to refuse everything
/// for good or to fail a few requests, slowed down; counts gets and puts.
#[derive(Default)]
struct TestBackend {
    mem: MemBackend,
    down: AtomicBool,
    /// Every request fails permanently (as S3 answers 403).
    refuse: AtomicBool,
    /// The next this many requests fail transiently (connection refused).
    blips: AtomicUsize,
    delay_ms: AtomicU64,
    list_delay_ms: AtomicU64,
    gets: AtomicUsize,
    puts: AtomicUsize,
    deletes: AtomicUsize,
}

impl TestBackend {
    fn check(&self, request: &str, key: &str) -> io::Result<()> {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if self.refuse.load(Ordering::Relaxed) {
            let denied = format!("test: {request} {key}: HTTP 403 AccessDenied");
            return Err(permanent(io::Error::new(io::ErrorKind::PermissionDenied, denied)));
        }
        if self.blips.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            let refused = format!("test: {request} {key}: connection refused");
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, refused));
        }
        if self.down.load(Ordering::Relaxed) { Err(io::Error::other("backend down (test)")) } else { Ok(()) }
    }
    fn block(&self, block: u64, geometry: &Geometry) -> Option<Vec<u8>> {
        self.mem.snapshot().get(&block_key(block, &geometry.block_name(block))).cloned()
    }
    fn block_keys(&self) -> Vec<String> {
        self.mem.snapshot().keys().filter(|k| k.starts_with('d')).cloned().collect()
    }
}

impl ObjectBackend for TestBackend {
    fn describe(&self) -> String {
        "test".into()
    }
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.check("GET", key)?;
        self.mem.get(key)
    }
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        self.check("PUT", key)?;
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.mem.put(key, data)
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        self.check("DELETE", key)?;
        self.deletes.fetch_add(1, Ordering::Relaxed);
        self.mem.delete(key)
    }
    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.check("LIST", prefix)?;
        let listed = self.mem.list(prefix);
        std::thread::sleep(Duration::from_millis(self.list_delay_ms.load(Ordering::Relaxed)));
        listed
    }
}

struct Setup {
    backend: Arc<TestBackend>,
    meta: Meta,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(blocks: u64) -> Self {
        let geometry = Geometry::new(blocks * BS, BS).unwrap();
        Setup {
            backend: Arc::new(TestBackend::default()),
            meta: Meta::new(&geometry),
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn config(&self, durability: Durability, cache_blocks: u64, delay_ms: u64) -> CacheConfig {
        CacheConfig {
            dir: self.dir.path().join("cache"),
            size: cache_blocks * BS,
            durability,
            upload_workers: 3,
            upload_delay: Duration::from_millis(delay_ms),
            retry_timeout: Duration::from_millis(600),
        }
    }
    fn open(&self, config: &CacheConfig) -> (Arc<CacheStore>, Image) {
        let store = Arc::new(CacheStore::open(self.backend.clone(), &self.meta, config).unwrap());
        let image = Image::open(self.meta.geometry().unwrap(), store.clone()).unwrap();
        (store, image)
    }
    fn geometry(&self) -> Geometry {
        self.meta.geometry().unwrap()
    }
    /// Writes `data` at `offset` through a cache that is then removed: the
    /// data is only in the backend.
    fn only_in_backend(&self, config: &CacheConfig, offset: u64, data: &[u8]) {
        let (store, img) = self.open(config);
        img.write(offset, data).unwrap();
        store.close().unwrap();
        drop((img, store));
        std::fs::remove_dir_all(&config.dir).unwrap();
    }
    fn gets(&self) -> usize {
        self.backend.gets.load(Ordering::Relaxed)
    }
}

fn object(data: &[u8]) -> Vec<u8> {
    let mut o = data.to_vec();
    o.extend_from_slice(&crc::trailer(crc::crc32c(data)));
    o
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn remote_sync_puts_whole_blocks_with_checksums_and_zero_blocks_delete_objects() {
    let t = Setup::new(8);
    let (store, img) = t.open(&t.config(Durability::Remote, 8, 5_000));
    img.write(BS + 10, b"hello").unwrap();
    img.sync().unwrap();
    let mut want = vec![0u8; BS as usize];
    want[10..15].copy_from_slice(b"hello");
    assert_eq!(t.backend.block(1, &t.geometry()), Some(object(&want)));
    assert_eq!(t.backend.block_keys(), ["d0000/blk-00002"]);
    assert_eq!(store.stats().dirty_blocks, 0);
    img.write(BS + 10, &[0u8; 5]).unwrap();
    img.sync().unwrap();
    assert!(t.backend.block_keys().is_empty(), "an all-zero block deletes its object");
    store.close().unwrap();
}

#[test]
fn rewrites_within_the_delay_coalesce_into_one_upload() {
    let t = Setup::new(4);
    let (store, img) = t.open(&t.config(Durability::Remote, 4, 300));
    for i in 0..50u8 {
        img.write(0, &[i + 1; 100]).unwrap();
    }
    img.write(BS * 2, b"x").unwrap();
    wait_for("uploads", || store.stats().dirty_blocks == 0);
    assert_eq!(t.backend.puts.load(Ordering::Relaxed), 2 + 1, "two blocks plus the epoch");
    let mut buf = [0u8; 100];
    img.read(0, &mut buf).unwrap();
    assert_eq!(buf, [50u8; 100]);
    store.close().unwrap();
}

#[test]
fn local_durability_survives_a_crash_and_uploads_on_the_next_start() {
    let t = Setup::new(8);
    let config = t.config(Durability::Local, 8, 0);
    {
        let (store, img) = t.open(&config);
        t.backend.down.store(true, Ordering::Relaxed);
        img.write(0, &vec![3u8; BS as usize * 2]).unwrap();
        img.write(5 * BS + 1, b"tail").unwrap();
        img.sync().unwrap();
        // A crash: no close, nothing uploaded.
        drop(img);
        drop(store);
    }
    assert!(t.backend.block_keys().is_empty());
    t.backend.down.store(false, Ordering::Relaxed);
    let (store, img) = t.open(&config);
    assert_eq!(img.stored_blocks(), 3, "the journal's blocks are part of the image before they are uploaded");
    store.flush().unwrap();
    assert_eq!(t.backend.block_keys().len(), 3);
    assert_eq!(t.backend.block(0, &t.geometry()), Some(object(&[3u8; BS as usize])));
    let mut buf = [0u8; 4];
    img.read(5 * BS + 1, &mut buf).unwrap();
    assert_eq!(&buf, b"tail");
    store.close().unwrap();
}

#[test]
fn journal_uploads_racing_the_opening_listing_lose_no_block() {
    // Workers start uploading the journal as soon as the cache opens; one
    // finishing while the image lists the store must not hide its block.
    let t = Setup::new(8);
    let config = t.config(Durability::Local, 8, 0);
    {
        let (store, img) = t.open(&config);
        img.write(3 * BS, b"three").unwrap();
        store.flush().unwrap();
        t.backend.down.store(true, Ordering::Relaxed);
        img.write(0, &vec![3u8; BS as usize * 2]).unwrap();
        img.write(5 * BS + 1, b"tail").unwrap();
        img.write(3 * BS, &[0u8; 5]).unwrap(); // block 3 now all zeros: its object goes
        img.sync().unwrap();
        drop(img);
        drop(store); // crash
    }
    t.backend.down.store(false, Ordering::Relaxed);
    t.backend.list_delay_ms.store(300, Ordering::Relaxed);
    let (store, img) = t.open(&config);
    t.backend.list_delay_ms.store(0, Ordering::Relaxed);
    let stored: Vec<u64> = (0..8).filter(|&b| img.is_stored(b)).collect();
    assert_eq!(stored, [0, 1, 5]);
    store.flush().unwrap();
    assert_eq!(t.backend.block_keys(), ["d0000/blk-00001", "d0000/blk-00002", "d0000/blk-00006"]);
    store.close().unwrap();
}

#[test]
fn after_a_crash_unjournaled_cached_blocks_are_dropped_and_refetched() {
    let t = Setup::new(4);
    let config = t.config(Durability::Remote, 4, 0);
    {
        let (store, img) = t.open(&config);
        img.write(0, b"synced").unwrap();
        img.sync().unwrap();
        drop(img);
        drop(store); // crash
    }
    let (store, img) = t.open(&config);
    let mut buf = [0u8; 6];
    img.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"synced");
    assert_eq!(store.stats().misses, 1, "the crashed cache's clean copy was not trusted");
    store.close().unwrap();
    drop(img);
    drop(store);
    // After a clean shutdown the cache is kept.
    let (store, img) = t.open(&config);
    img.read(0, &mut buf).unwrap();
    assert_eq!((store.stats().hits, store.stats().misses), (1, 0));
    store.close().unwrap();
}

#[test]
fn a_cache_another_host_used_since_is_not_trusted() {
    let t = Setup::new(4);
    let config = t.config(Durability::Remote, 4, 0);
    {
        let (store, img) = t.open(&config);
        img.write(0, b"old").unwrap();
        store.close().unwrap();
    }
    {
        let mut other = config.clone();
        other.dir = t.dir.path().join("other-cache");
        let (store, img) = t.open(&other);
        img.write(0, b"new").unwrap();
        store.close().unwrap();
    }
    let (store, img) = t.open(&config);
    let mut buf = [0u8; 3];
    img.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"new");
    store.close().unwrap();
}

#[test]
fn backend_down_writes_land_reads_of_uncached_blocks_fail_then_recover() {
    let t = Setup::new(8);
    let config = t.config(Durability::Local, 8, 0);
    {
        let (store, img) = t.open(&config);
        img.write(0, b"remote only").unwrap();
        store.close().unwrap();
    }
    std::fs::remove_dir_all(&config.dir).unwrap();
    let (store, img) = t.open(&config);
    t.backend.down.store(true, Ordering::Relaxed);
    img.write(3 * BS, b"new block").unwrap();
    img.sync().unwrap();
    let mut buf = [0u8; 11];
    let err = img.read(0, &mut buf).unwrap_err();
    assert_eq!(crate::errors::errno(&err), libc::EIO, "{err}");
    img.read(3 * BS, &mut buf[..9]).unwrap();
    assert_eq!(&buf[..9], b"new block");
    wait_for("the failure to show", || store.stats().failing_for.is_some());
    assert_eq!(store.stats().dirty_blocks, 1);
    t.backend.down.store(false, Ordering::Relaxed);
    img.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"remote only");
    store.flush().unwrap();
    assert!(t.backend.block(3, &t.geometry()).is_some());
    assert_eq!(store.stats().failing_for, None);
    store.close().unwrap();
}

#[test]
fn remote_sync_fails_with_eio_while_the_backend_stays_down_and_keeps_the_data() {
    let t = Setup::new(4);
    let (store, img) = t.open(&t.config(Durability::Remote, 4, 0));
    t.backend.down.store(true, Ordering::Relaxed);
    img.write(0, b"pending").unwrap();
    let err = img.sync().unwrap_err();
    assert_eq!(crate::errors::errno(&err), libc::EIO);
    t.backend.down.store(false, Ordering::Relaxed);
    img.sync().unwrap();
    assert!(t.backend.block(0, &t.geometry()).is_some());
    store.close().unwrap();
}

#[test]
fn a_corrupt_object_is_an_error_never_data() {
    let t = Setup::new(4);
    let config = t.config(Durability::Remote, 4, 0);
    {
        let (store, img) = t.open(&config);
        img.write(BS, &[5u8; BS as usize]).unwrap();
        store.close().unwrap();
    }
    std::fs::remove_dir_all(&config.dir).unwrap();
    let key = block_key(1, &t.geometry().block_name(1));
    let mut bad = t.backend.mem.get(&key).unwrap().unwrap();
    bad[100] ^= 0x40;
    t.backend.mem.put(&key, &bad).unwrap();
    let (store, img) = t.open(&config);
    let mut buf = [0u8; 16];
    let err = img.read(BS + 96, &mut buf).unwrap_err();
    assert_eq!(crate::errors::errno(&err), libc::EIO);
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    t.backend.mem.put(&key, &bad[..100]).unwrap();
    assert!(img.read(BS, &mut buf).unwrap_err().to_string().contains("expected"));
    store.close().unwrap();
}

#[test]
fn clean_blocks_are_evicted_lru_under_a_small_bound() {
    let t = Setup::new(16);
    let (store, img) = t.open(&t.config(Durability::Remote, 3, 0));
    for b in 0..10u64 {
        img.write(b * BS, &[b as u8 + 1; 64]).unwrap();
    }
    img.sync().unwrap();
    assert!(store.stats().cached_blocks <= 3, "{:?}", store.stats());
    for b in 0..10u64 {
        let mut buf = [0u8; 64];
        img.read(b * BS, &mut buf).unwrap();
        assert_eq!(buf, [b as u8 + 1; 64]);
    }
    let stats = store.stats();
    assert!(stats.cached_blocks <= 3 && stats.evictions >= 7, "{stats:?}");
    // The most recently used block stays; the least recently used goes.
    let mut buf = [0u8; 1];
    img.read(9 * BS, &mut buf).unwrap();
    assert_eq!(store.stats().misses, stats.misses);
    store.close().unwrap();
}

#[test]
fn a_cache_full_of_dirty_blocks_goes_over_its_size_instead_of_slowing_writers() {
    let t = Setup::new(32);
    let (store, img) = t.open(&t.config(Durability::Local, 2, 10_000));
    t.backend.delay_ms.store(20, Ordering::Relaxed);
    std::thread::scope(|scope| {
        for w in 0..4u64 {
            let img = &img;
            scope.spawn(move || {
                for b in (w..32).step_by(4) {
                    img.write(b * BS + 7, &[b as u8 + 1; 33]).unwrap();
                }
            });
        }
    });
    store.flush().unwrap();
    assert_eq!(t.backend.block_keys().len(), 32);
    // Uploaded, the blocks are clean again: evicted back within the size.
    wait_for("eviction", || store.stats().cached_blocks <= 2);
    for b in 0..32u64 {
        let mut buf = [0u8; 33];
        img.read(b * BS + 7, &mut buf).unwrap();
        assert_eq!(buf, [b as u8 + 1; 33]);
    }
    store.close().unwrap();
}

#[test]
fn a_cache_of_another_image_with_unsent_blocks_is_refused() {
    let t = Setup::new(4);
    let config = t.config(Durability::Local, 4, 60_000);
    {
        let (store, img) = t.open(&config);
        t.backend.down.store(true, Ordering::Relaxed);
        img.write(0, b"x").unwrap();
        img.sync().unwrap();
        drop(store);
    }
    t.backend.down.store(false, Ordering::Relaxed);
    let other = Meta::new(&t.geometry());
    let err = CacheStore::open(t.backend.clone(), &other, &config).err().unwrap().to_string();
    assert!(err.contains("not yet uploaded for another image"), "{err}");
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: usize, byte: u8 },
    Punch { offset: u64, len: u64 },
    Read { offset: u64, len: usize },
    Sync,
    Pause,
    Reopen { crash: bool, empty: bool },
}

fn op(size: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..size, 1..3 * BS as usize, 0u8..=255).prop_map(|(offset, len, byte)| Op::Write { offset, len, byte }),
        2 => (0..size, 0..3 * BS).prop_map(|(offset, len)| Op::Punch { offset, len }),
        3 => (0..size, 1..3 * BS as usize).prop_map(|(offset, len)| Op::Read { offset, len }),
        1 => Just(Op::Sync),
        1 => Just(Op::Pause),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(crash, empty)| Op::Reopen { crash, empty }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Through the image, a cache over a backend behaves like a byte vector;
    /// after a sync (and a crash or a lost cache), synced data is intact;
    /// after a final flush the backend alone holds exactly the non-zero blocks.
    #[test]
    fn cache_over_a_backend_behaves_like_a_byte_vector(
        ops in prop::collection::vec(op(8 * BS), 1..40),
        remote in any::<bool>(),
        cache_blocks in 2u64..6,
    ) {
        let blocks = 8u64;
        let size = blocks * BS;
        let t = Setup::new(blocks);
        let durability = if remote { Durability::Remote } else { Durability::Local };
        let config = t.config(durability, cache_blocks, 3);
        let (mut store, mut img) = t.open(&config);
        let mut model = vec![0u8; size as usize];
        for op in ops {
            match op {
                Op::Write { offset, len, byte } => {
                    let data: Vec<u8> = (0..len).map(|i| if i % 5 == 0 { 0 } else { byte }).collect();
                    let n = img.write(offset, &data).unwrap();
                    model[offset as usize..offset as usize + n].copy_from_slice(&data[..n]);
                }
                Op::Punch { offset, len } => {
                    img.punch(offset, len).unwrap();
                    let end = (offset + len).min(size);
                    model[offset as usize..end as usize].fill(0);
                }
                Op::Read { offset, len } => {
                    let mut buf = vec![0xAAu8; len];
                    let n = img.read(offset, &mut buf).unwrap();
                    prop_assert_eq!(&buf[..n], &model[offset as usize..offset as usize + n]);
                }
                Op::Sync => img.sync().unwrap(),
                Op::Pause => std::thread::sleep(Duration::from_millis(8)),
                Op::Reopen { crash, empty } => {
                    if crash {
                        // A crash right after a sync: everything synced survives.
                        img.sync().unwrap();
                    } else {
                        store.close().unwrap();
                    }
                    drop(img);
                    drop(store);
                    if empty && !crash {
                        std::fs::remove_dir_all(&config.dir).unwrap();
                    }
                    let (s, i) = t.open(&config);
                    store = s;
                    img = i;
                    let mut all = vec![0u8; size as usize];
                    img.read(0, &mut all).unwrap();
                    prop_assert!(all == model, "content after reopen differs");
                }
            }
        }
        store.close().unwrap();
        // The backend alone: exactly the non-zero blocks, with the right bytes.
        let keys = t.backend.block_keys();
        for b in 0..blocks {
            let want = &model[(b * BS) as usize..((b + 1) * BS) as usize];
            let got = t.backend.block(b, &t.geometry());
            // A punch that zeroes the rest of an uncached block cannot tell
            // the block is now zero without fetching it (writes never wait
            // for the remote): its object may hold the zeros.
            if is_zero(want) {
                prop_assert!(got.is_none() || got == Some(object(want)), "block {} should have no object ({:?})", b, keys);
            } else {
                prop_assert_eq!(got, Some(object(want)), "block {}", b);
            }
        }
    }
}

#[test]
fn links_and_special_files_in_the_cache_directory_are_never_followed() {
    let t = Setup::new(8);
    let config = t.config(Durability::Local, 8, 60_000);
    let (store, img) = t.open(&config);
    img.write(BS, b"journalled").unwrap();
    img.sync().unwrap();
    drop(img);
    drop(store);
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"keep").unwrap();
    let cache = config.dir.clone();
    // A journalled block replaced by a link to a file elsewhere: the link
    // would be uploaded as the block's content and written through.
    let block = cache.join("blocks/blk-00002");
    std::fs::remove_file(&block).unwrap();
    std::os::unix::fs::symlink(&secret, &block).unwrap();
    let err = CacheStore::open(t.backend.clone(), &t.meta, &config).err().unwrap().to_string();
    assert!(err.contains("blk-00002: is a symbolic link, not a regular file"), "{err}");
    std::fs::remove_file(&block).unwrap();
    // A cache part that is a link to another directory.
    let tmp = cache.join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::os::unix::fs::symlink(outside.path(), &tmp).unwrap();
    let err = CacheStore::open(t.backend.clone(), &t.meta, &config).err().unwrap().to_string();
    assert!(err.contains("tmp: is a symbolic link, not a directory"), "{err}");
    assert_eq!(std::fs::read(&secret).unwrap(), b"keep");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1, "nothing was written outside");
}

#[test]
fn a_permanent_failure_is_not_retried_and_is_eio_at_once() {
    let t = Setup::new(4);
    let mut config = t.config(Durability::Remote, 4, 0);
    config.retry_timeout = Duration::from_secs(30);
    t.only_in_backend(&config, 0, b"remote");
    let (store, img) = t.open(&config);
    t.backend.refuse.store(true, Ordering::Relaxed);
    let (gets, started) = (t.gets(), Instant::now());
    let err = img.read(0, &mut [0u8; 6]).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(t.gets() - gets, 1, "one attempt: {err}");
    assert_eq!(crate::errors::errno(&err), libc::EIO);
    let text = err.to_string();
    assert_eq!(text, "test: GET d0000/blk-00001: HTTP 403 AccessDenied", "the cause, named once");

    // An upload refused for good: a remote sync fails at once, the block stays.
    img.write(BS, b"kept").unwrap();
    let started = Instant::now();
    let err = img.sync().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(crate::errors::errno(&err), libc::EIO);
    let text = err.to_string();
    assert!(text.starts_with("test: PUT d0000/blk-00002: HTTP 403 AccessDenied; 1 blocks not uploaded yet"), "{text}");
    assert_eq!(text.matches("test: PUT").count(), 1, "{text}");
    assert_eq!(store.stats().dirty_blocks, 1);
    // Allowed again: the next sync wakes the paused workers and succeeds.
    t.backend.refuse.store(false, Ordering::Relaxed);
    let started = Instant::now();
    img.sync().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let mut want = vec![0u8; BS as usize];
    want[..4].copy_from_slice(b"kept");
    assert_eq!(t.backend.block(1, &t.geometry()), Some(object(&want)));
    store.close().unwrap();
}

#[test]
fn a_transient_failure_is_retried_until_it_succeeds() {
    let t = Setup::new(4);
    let config = t.config(Durability::Remote, 4, 0);
    t.only_in_backend(&config, 0, b"remote");
    let (store, img) = t.open(&config);
    t.backend.blips.store(2, Ordering::Relaxed);
    let gets = t.gets();
    let mut buf = [0u8; 6];
    img.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"remote");
    assert_eq!(t.gets() - gets, 3, "two refused, the third answered");
    assert_eq!(store.stats().backend_errors, 2);
    store.close().unwrap();
}
