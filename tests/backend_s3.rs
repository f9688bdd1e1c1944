//! The `s3` backend against a real single-node Garage on loopback.

mod remote;

use onefs::backend::s3::S3Credentials;
use onefs::backend::{ObjectBackend, Retry, Retrying, S3Backend, block_key};
use remote::Garage;
use std::time::{Duration, Instant};

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn put_get_list_delete_and_missing_objects() {
    let garage = Garage::start();
    let b = garage.backend("data");
    assert_eq!(b.describe(), format!("s3://{}/data/", garage.bucket));
    assert_eq!(b.get("onefs.json").unwrap(), None, "a missing object is None");
    b.delete("d0000/blk-000001").unwrap(); // deleting a missing object is fine

    b.put("onefs.json", b"{\"format\":\"onefs\"}").unwrap();
    let block = pattern(7, 4 << 20);
    let t = Instant::now();
    b.put(&block_key(0, "blk-000001"), &block).unwrap();
    let put_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let back = b.get("d0000/blk-000001").unwrap().expect("stored");
    let get_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(back == block, "the block reads back as written");
    eprintln!("garage: 4 MiB put {put_ms:.1} ms, get {get_ms:.1} ms");

    // put_file uploads a local file; overwrite replaces.
    let dir = remote::scratch("s3file");
    let file = dir.path().join("cached-block");
    std::fs::write(&file, pattern(9, 1 << 20)).unwrap();
    b.put_file("d0001/blk-001001", &file).unwrap();
    assert_eq!(b.get("d0001/blk-001001").unwrap(), Some(pattern(9, 1 << 20)));
    b.put("d0001/blk-001001", b"new").unwrap();
    assert_eq!(b.get("d0001/blk-001001").unwrap().as_deref(), Some(&b"new"[..]));
    let err = b.put_file("x", &dir.path().join("absent")).unwrap_err().to_string();
    assert!(err.contains("absent") && err.contains("PUT x"), "{err}");

    let mut keys = b.list("").unwrap();
    keys.sort();
    assert_eq!(keys, ["d0000/blk-000001", "d0001/blk-001001", "onefs.json"]);
    assert_eq!(b.list("d0001/").unwrap(), ["d0001/blk-001001"]);
    assert!(b.list("d0002/").unwrap().is_empty());

    // Another prefix in the same bucket sees nothing of this one.
    let other = garage.backend("other/");
    assert!(other.list("").unwrap().is_empty());
    assert_eq!(other.get("onefs.json").unwrap(), None);

    b.delete("d0000/blk-000001").unwrap();
    assert_eq!(b.get("d0000/blk-000001").unwrap(), None);
    let mut keys = b.list("").unwrap();
    keys.sort();
    assert_eq!(keys, ["d0001/blk-001001", "onefs.json"]);
}

#[test]
fn listing_follows_continuation_pages() {
    let garage = Garage::start();
    let mut b = garage.backend("paged");
    b.set_page_size(7);
    let mut expected: Vec<String> =
        (0..45u64).map(|n| block_key(n * 100, &format!("blk-{:06}", n * 100 + 1))).collect();
    std::thread::scope(|s| {
        for chunk in expected.chunks(12) {
            let b = &b;
            s.spawn(move || chunk.iter().for_each(|k| b.put(k, k.as_bytes()).unwrap()));
        }
    });
    let mut keys = b.list("").unwrap();
    keys.sort();
    expected.sort();
    assert_eq!(keys, expected, "45 keys over 7 pages");
    assert_eq!(b.list("d0001/").unwrap().len(), 10);
}

#[test]
fn bad_credentials_and_a_missing_bucket_are_one_clear_line() {
    let garage = Garage::start();
    let mut config = garage.s3_config("");
    let wrong = S3Credentials { secret_access_key: "0".repeat(64), ..garage.credentials() };
    let b = S3Backend::with_credentials(&config, wrong).unwrap();
    let err = b.check().unwrap_err().to_string();
    assert!(err.contains(&garage.endpoint) && err.contains(&garage.bucket) && err.contains("access denied"), "{err}");
    let err = b.get("onefs.json").unwrap_err().to_string();
    assert!(err.contains("GET onefs.json: HTTP 403") && err.contains("check the credentials"), "{err}");
    assert!(!err.contains('\n'), "{err:?}");

    // Refused credentials are not retried: a cache over them fails to open
    // at once (EIO naming the cause), not after its 30 s retry_timeout.
    let dir = remote::scratch("s3denied");
    let cache = onefs::store::cache::CacheConfig::new(&dir.path().join("cache"));
    let meta = onefs::meta::Meta::new(&onefs::core::Geometry::new(1 << 30, 4 << 20).unwrap());
    let t = Instant::now();
    let err = onefs::store::cache::CacheStore::open(std::sync::Arc::new(b), &meta, &cache).err().unwrap();
    let text = err.to_string();
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}: {text}", t.elapsed());
    assert!(text.contains("GET onefs.epoch: HTTP 403") && !text.contains("gave up"), "{text}");
    assert_eq!(onefs::errors::errno(&err), libc::EIO);

    config.bucket = "no-such-bucket".into();
    config.credentials_file = Some(garage.credentials_file());
    let err = S3Backend::new(&config).unwrap_err().to_string();
    assert!(err.contains("bucket no-such-bucket") && !err.contains('\n'), "{err}");
    assert!(err.contains("does not exist") || err.contains("access denied"), "{err}");

    // Credentials from the environment are the fallback when no file is named.
    let mut config = garage.s3_config("");
    config.credential = Some("s3".into());
    let err = S3Backend::new(&config).unwrap_err().to_string();
    assert!(err.contains("CREDENTIALS_DIRECTORY"), "{err}");
}

#[test]
fn operations_ride_out_a_restart_and_fail_cleanly_when_it_stays_down() {
    let mut garage = Garage::start();
    let s3: std::sync::Arc<dyn ObjectBackend> = std::sync::Arc::new(garage.backend("outage"));
    let patient = Retry { first: Duration::from_millis(100), max: Duration::from_millis(250), ..Retry::attempts(40) };
    let b = Retrying::new(s3.clone(), patient);
    b.put("d0000/blk-000001", b"before").unwrap();

    garage.stop();
    let t = Instant::now();
    std::thread::scope(|s| {
        let reader = s.spawn(|| b.get("d0000/blk-000001"));
        let writer = s.spawn(|| b.put("d0000/blk-000002", b"during"));
        std::thread::sleep(Duration::from_millis(700));
        garage.start_again();
        assert_eq!(reader.join().unwrap().unwrap().as_deref(), Some(&b"before"[..]));
        writer.join().unwrap().unwrap();
    });
    eprintln!("garage outage ridden out in {} ms", t.elapsed().as_millis());
    assert_eq!(b.get("d0000/blk-000002").unwrap().as_deref(), Some(&b"during"[..]));

    garage.stop();
    let b = Retrying::new(
        s3,
        Retry { first: Duration::from_millis(20), max: Duration::from_millis(20), ..Retry::attempts(3) },
    );
    let err = b.get("d0000/blk-000001").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&garage.endpoint)
            && text.contains("GET outage/d0000/blk-000001")
            && text.contains("gave up after 3 attempts"),
        "{text}"
    );
    assert_eq!(text.matches("GET outage/d0000/blk-000001").count(), 1, "the request is named once: {text}");
    assert_eq!(onefs::errors::errno(&err), libc::EIO, "a backend that stays down is EIO");
}

#[test]
fn the_remote_lock_admits_one_mount_and_can_be_broken() {
    use onefs::backend::RemoteLock;
    use onefs::backend::lock::{LockTiming, read_lock};
    use std::path::Path;
    use std::sync::Arc;
    let garage = Garage::start();
    let timing = LockTiming {
        stale: Duration::from_secs(3),
        heartbeat: Duration::from_millis(200),
        settle: Duration::from_millis(100),
    };
    // Two hosts: two clients on the same bucket and prefix.
    let host_a: Arc<dyn ObjectBackend> = Arc::new(garage.backend("locked"));
    let host_b: Arc<dyn ObjectBackend> = Arc::new(garage.backend("locked"));
    let a = RemoteLock::acquire_with(host_a.clone(), Path::new("/srv/a"), timing).unwrap();
    let err = RemoteLock::acquire_with(host_b.clone(), Path::new("/srv/b"), timing).err().unwrap().to_string();
    assert!(
        err.contains(&format!("s3://{}/locked/ is mounted by", garage.bucket)) && err.contains("at /srv/a"),
        "{err}"
    );
    // Heartbeats keep it fresh past the stale time.
    std::thread::sleep(Duration::from_millis(3500));
    assert!(RemoteLock::acquire_with(host_b.clone(), Path::new("/srv/b"), timing).is_err());

    let broken = RemoteLock::break_lock(&*host_b).unwrap().expect("a lock to break");
    assert_eq!(broken.mountpoint, "/srv/a");
    let b = RemoteLock::acquire_with(host_b.clone(), Path::new("/srv/b"), timing).unwrap();
    assert!(remote::wait_until(Duration::from_secs(5), || a.lost()), "host a notices it lost the lock");
    drop(a);
    assert_eq!(read_lock(&*host_a).unwrap().unwrap().mountpoint, "/srv/b", "a's release leaves b's lock alone");
    b.release().unwrap();
    assert_eq!(read_lock(&*host_a).unwrap(), None);
}
