//! The `ObjectBackend` contract (src/backend/mod.rs), written once in
//! [`check_contract`] and run against every backend: memory, dir, S3 (a
//! single-node Garage on loopback) and rclone (a local-directory remote, and
//! a webdav remote over HTTP). A new backend gets a test here. What only one
//! backend does (S3 listing pages, credentials and outages; the rclone rcd's
//! life, its limits and errors) is in tests/backend_s3.rs and
//! tests/backend_rclone.rs.

mod common;

use common::remote::{self, Garage, RcloneServe, empty_rclone_conf, rclone_config};
use common::{MIB, pattern, scratch_dir};
use onefs::backend::{DirObjects, MemBackend, ObjectBackend, RcloneBackend, block_key};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Opens a backend on namespace `name` (a bucket prefix, a folder): the
/// same name again is another client of the same objects, another name a
/// separate set of objects, empty at first.
type Open<'a> = &'a dyn Fn(&str) -> Arc<dyn ObjectBackend>;

/// The key the cache gives block `n` (0-based): `d0000/blk-00001`, ...
fn block(n: u64) -> String {
    block_key(n, &format!("blk-{:05}", n + 1))
}

/// `b.list(prefix)`, sorted.
fn listed(b: &dyn ObjectBackend, prefix: &str) -> Vec<String> {
    let mut keys = b.list(prefix).unwrap_or_else(|e| panic!("{}: list {prefix:?}: {e}", b.describe()));
    keys.sort();
    keys
}

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

/// The keys of `objects`, sorted.
fn keys(objects: &HashMap<String, Vec<u8>>) -> Vec<String> {
    sorted(objects.keys().cloned().collect())
}

/// What every backend promises:
/// 1. `describe` is one line;
/// 2. a new namespace lists nothing; a missing object is `None`, at the top
///    and in a folder that does not exist, and deleting it is no error;
/// 3. `put` then `get` returns the bytes: small, empty, every byte value, a
///    whole 4 MiB block with its 8-byte trailer, under the keys the cache
///    uses (`onefs.json`, `dNNNN/blk-NNNNN` in folders of 1000);
/// 4. `list` is every key starting with the prefix, recursively: all, one
///    folder, a prefix ending inside a folder or file name, a whole key,
///    nothing;
/// 5. `put` over an object replaces it whole (longer, then shorter);
/// 6. `put_file` uploads a local file, again once it changed; a missing file
///    is an error naming the file and the key, and changes nothing;
/// 7. a second client of the namespace sees the same objects; another
///    namespace, even one whose name extends this one's, sees none of them
///    and shows none of its own here;
/// 8. `delete` removes that object only, and again is no error; a folder
///    whose last object went lists nothing;
/// 9. threads may put, get, delete and list at once.
fn check_contract(open: Open) {
    let b = open("contract");
    let label = b.describe();
    eprintln!("contract: {label}");
    assert!(!label.is_empty() && !label.contains('\n'), "describe() = {label:?}");

    // 2. Empty and missing.
    assert_eq!(listed(&*b, ""), Vec::<String>::new(), "{label}: a new namespace lists nothing");
    for key in ["onefs.json", &block(0), &block(5000)] {
        assert_eq!(b.get(key).unwrap(), None, "{label}: missing {key} is None");
        b.delete(key).unwrap_or_else(|e| panic!("{label}: deleting the missing {key}: {e}"));
    }

    // 3. Round trips.
    let whole_block = pattern(1, 4 * MIB as usize + 8);
    let mut objects: HashMap<String, Vec<u8>> = HashMap::from([
        ("onefs.json".into(), b"{\"format\":\"onefs\"}".to_vec()),
        ("onefs.epoch".into(), (0..=255).collect()),
        ("onefs.empty".into(), vec![]),
        (block(999), pattern(2, 4096)),
        (block(1000), pattern(3, 1)),
        (block(12345), pattern(4, 65537)),
    ]);
    for (key, data) in &objects {
        b.put(key, data).unwrap_or_else(|e| panic!("{label}: put {key}: {e}"));
    }
    let t = Instant::now();
    b.put(&block(0), &whole_block).unwrap();
    let put = t.elapsed();
    let t = Instant::now();
    assert!(b.get(&block(0)).unwrap() == Some(whole_block.clone()), "{label}: a whole block reads back as written");
    eprintln!("{label}: 4 MiB put {put:.1?}, get {:.1?}", t.elapsed());
    objects.insert(block(0), whole_block.clone());
    for (key, data) in &objects {
        assert!(b.get(key).unwrap().as_ref() == Some(data), "{label}: {key} reads back as written");
    }

    // 4. Listing.
    assert_eq!(listed(&*b, ""), keys(&objects), "{label}: everything");
    assert_eq!(listed(&*b, "d0000/"), [block(0), block(999)], "{label}: one folder");
    assert_eq!(listed(&*b, "d001"), [block(12345)], "{label}: a prefix ending inside a folder name");
    assert_eq!(listed(&*b, "onefs.e"), ["onefs.empty", "onefs.epoch"], "{label}: a prefix ending inside a name");
    assert_eq!(listed(&*b, &block(1000)), [block(1000)], "{label}: a whole key");
    assert!(listed(&*b, "d0009/").is_empty() && listed(&*b, "x").is_empty(), "{label}: nothing");

    // 5. Overwrites.
    for data in [pattern(5, 2 * MIB as usize), b"short".to_vec()] {
        b.put(&block(999), &data).unwrap();
        assert!(b.get(&block(999)).unwrap() == Some(data.clone()), "{label}: an overwrite replaces the object whole");
        objects.insert(block(999), data);
    }
    assert_eq!(listed(&*b, ""), keys(&objects), "{label}: overwrites add no keys");

    // 6. put_file.
    let dir = scratch_dir("onefs-contract-");
    let file = dir.path().join("cached-block");
    for seed in [6, 7] {
        std::fs::write(&file, pattern(seed, 4 * MIB as usize + 8)).unwrap();
        b.put_file(&block(1), &file).unwrap_or_else(|e| panic!("{label}: put_file: {e}"));
        assert!(b.get(&block(1)).unwrap() == Some(pattern(seed, 4 * MIB as usize + 8)), "{label}: put_file {seed}");
    }
    objects.insert(block(1), pattern(7, 4 * MIB as usize + 8));
    let absent = dir.path().join("absent");
    let err = b.put_file("onefs.json", &absent).expect_err("put_file of a missing file").to_string();
    assert!(err.contains(&absent.display().to_string()) && err.contains("PUT onefs.json"), "{label}: {err}");
    assert!(b.get("onefs.json").unwrap() == objects.get("onefs.json").cloned(), "{label}: a failed put_file");

    // 7. Clients and namespaces.
    let again = open("contract");
    assert!(again.get(&block(0)).unwrap() == Some(whole_block), "{label}: a second client reads the same objects");
    again.put("onefs.lock", b"held by the second client").unwrap();
    objects.insert("onefs.lock".into(), b"held by the second client".to_vec());
    let other = open("contract-other");
    assert!(listed(&*other, "").is_empty(), "{label}: another namespace is empty");
    assert_eq!(other.get("onefs.json").unwrap(), None, "{label}: another namespace");
    other.put("onefs.json", b"other").unwrap();
    other.put(&block(2), b"other").unwrap();
    assert_eq!(listed(&*b, ""), keys(&objects), "{label}: another namespace's objects are not here");
    assert!(b.get("onefs.json").unwrap() == objects.get("onefs.json").cloned(), "{label}: namespaces are apart");

    // 8. Deletes.
    b.delete(&block(12345)).unwrap();
    objects.remove(&block(12345));
    assert_eq!(b.get(&block(12345)).unwrap(), None, "{label}: deleted");
    b.delete(&block(12345)).unwrap_or_else(|e| panic!("{label}: deleting again: {e}"));
    assert!(listed(&*b, "d0012/").is_empty() && listed(&*b, "d001").is_empty(), "{label}: an emptied folder");
    assert_eq!(listed(&*b, ""), keys(&objects), "{label}: a delete removes one object");
    assert_eq!(listed(&*other, ""), sorted(vec!["onefs.json".into(), block(2)]), "{label}: and nothing elsewhere");

    // 9. Threads.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (b, label) = (&b, &label);
            s.spawn(move || {
                for n in (2000 + 10 * t)..(2000 + 10 * t + 5) {
                    b.put(&block(n), &pattern(n, 70_000)).unwrap();
                    assert!(
                        b.get(&block(n)).unwrap() == Some(pattern(n, 70_000)),
                        "{label}: block {n} from thread {t}"
                    );
                    assert!(b.list("d0002/").unwrap().contains(&block(n)), "{label}: block {n} listed");
                }
                b.delete(&block(2000 + 10 * t)).unwrap();
            });
        }
    });
    let written: Vec<String> = (0..4u64).flat_map(|t| (2000 + 10 * t + 1)..(2000 + 10 * t + 5)).map(block).collect();
    assert_eq!(listed(&*b, "d0002/"), sorted(written), "{label}: what the threads left");

    // Leave the namespace as it was found.
    for key in listed(&*b, "") {
        b.delete(&key).unwrap();
    }
    assert!(listed(&*b, "").is_empty(), "{label}: everything deleted");
}

#[test]
fn memory_backend_keeps_the_contract() {
    let namespaces: Mutex<HashMap<String, Arc<MemBackend>>> = Mutex::default();
    check_contract(&|name| {
        namespaces.lock().unwrap().entry(name.to_string()).or_default().clone() as Arc<dyn ObjectBackend>
    });
}

#[test]
fn dir_backend_keeps_the_contract() {
    let root = scratch_dir("onefs-contract-dir-");
    check_contract(&|name| {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Arc::new(DirObjects::new(&dir).unwrap())
    });
}

#[test]
fn s3_backend_on_garage_keeps_the_contract() {
    let garage = Garage::start();
    check_contract(&|name| Arc::new(garage.backend(name)));
}

#[test]
fn rclone_backend_on_a_local_remote_keeps_the_contract() {
    let dir = remote::scratch("rclone-contract");
    let conf = empty_rclone_conf(dir.path());
    check_contract(&|name| {
        let remote = dir.path().join("remote").join(name);
        Arc::new(RcloneBackend::new(&rclone_config(&remote.display().to_string(), &conf)).unwrap())
    });
}

#[test]
fn rclone_backend_on_a_webdav_remote_keeps_the_contract() {
    let dir = remote::scratch("rclone-webdav-contract");
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    let server = RcloneServe::webdav(&served, &[]);
    let conf = dir.path().join("rclone.conf");
    std::fs::write(&conf, format!("[drive]\ntype = webdav\nurl = {}\nvendor = other\n", server.url)).unwrap();
    check_contract(&|name| {
        Arc::new(RcloneBackend::new(&rclone_config(&format!("drive:onefs/{name}"), &conf)).unwrap())
    });
}

/// A memory backend with one flaw, to show the contract notices it.
struct Flawed {
    objects: Arc<MemBackend>,
    flaw: Flaw,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Flaw {
    /// Deleting a missing object is an error.
    DeleteMissingFails,
    /// An overwrite keeps the old object's tail.
    OverwriteKeepsTail,
    /// Listing a prefix lists its whole folder.
    ListsWholeFolders,
    /// An empty object reads as missing.
    EmptyIsMissing,
}

impl ObjectBackend for Flawed {
    fn describe(&self) -> String {
        format!("flawed memory ({:?})", self.flaw)
    }
    fn get(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        let data = self.objects.get(key)?;
        Ok(data.filter(|d| !(self.flaw == Flaw::EmptyIsMissing && d.is_empty())))
    }
    fn put(&self, key: &str, data: &[u8]) -> std::io::Result<()> {
        let mut data = data.to_vec();
        if let (Flaw::OverwriteKeepsTail, Some(old)) = (self.flaw, self.objects.get(key)?) {
            data.extend(old.get(data.len()..).unwrap_or_default());
        }
        self.objects.put(key, &data)
    }
    fn delete(&self, key: &str) -> std::io::Result<()> {
        if self.flaw == Flaw::DeleteMissingFails && self.objects.get(key)?.is_none() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
        }
        self.objects.delete(key)
    }
    fn list(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        match (self.flaw, prefix.rfind('/')) {
            (Flaw::ListsWholeFolders, Some(i)) => self.objects.list(&prefix[..=i]),
            (Flaw::ListsWholeFolders, None) => self.objects.list(""),
            _ => self.objects.list(prefix),
        }
    }
}

#[test]
fn the_contract_notices_a_backend_that_breaks_it() {
    use Flaw::*;
    for flaw in [DeleteMissingFails, OverwriteKeepsTail, ListsWholeFolders, EmptyIsMissing] {
        let namespaces: Mutex<HashMap<String, Arc<MemBackend>>> = Mutex::default();
        let open = |name: &str| {
            let objects = namespaces.lock().unwrap().entry(name.to_string()).or_default().clone();
            Arc::new(Flawed { objects, flaw }) as Arc<dyn ObjectBackend>
        };
        let kept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_contract(&open)));
        assert!(kept.is_err(), "a backend where {flaw:?} passed the contract");
    }
}
