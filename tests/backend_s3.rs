//! What only the `s3` backend does, against a real single-node Garage on
//! loopback: listing pages, credentials, outages and retries, the remote
//! lock. The put/get/list/delete contract every backend keeps is in
//! tests/backend_contract.rs.

mod common;

use common::remote::Garage;
use common::wait_until;
use onefs::backend::s3::S3Credentials;
use onefs::backend::{ObjectBackend, Retry, Retrying, S3Backend, block_key};
use std::time::{Duration, Instant};

#[test]
fn listing_follows_continuation_pages() {
    let garage = Garage::start();
    let mut b = garage.backend("paged");
    assert_eq!(b.describe(), format!("s3://{}/paged/", garage.bucket));
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
    let dir = common::remote::scratch("s3denied");
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
    use onefs::backend::remote_lock::{LockTiming, read_lock};
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
    wait_until("host a to notice it lost the lock", Duration::from_secs(5), || a.lost());
    drop(a);
    assert_eq!(read_lock(&*host_a).unwrap().unwrap().mountpoint, "/srv/b", "a's release leaves b's lock alone");
    b.release().unwrap();
    assert_eq!(read_lock(&*host_a).unwrap(), None);
}
