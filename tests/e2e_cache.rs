//! End to end: definitions with `[backend] type = "dir"` and `[cache]`,
//! served by `onefs run` for real (FUSE, loop device, ext4).

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BS: u64 = 1 << 20;
const TRAILER: usize = 8;

struct Setup {
    scratch: Scratch,
    config_dir: PathBuf,
    /// The `[backend]` table (a directory of objects unless replaced).
    backend: String,
    objects: PathBuf,
    cache: PathBuf,
    mountpoint: PathBuf,
}

impl Setup {
    fn new(cache_keys: &str) -> Self {
        let scratch = Scratch::new();
        let config_dir = scratch.dir("etc");
        let objects = scratch.dir("objects");
        let mountpoint = scratch.dir("mnt");
        let cache = scratch.path("cache");
        let backend = format!("type = \"dir\"\npath = \"{}\"\n", objects.display());
        let s = Setup { scratch, config_dir, backend, objects, cache, mountpoint };
        s.define(cache_keys);
        s
    }

    fn with_backend(mut self, backend: String, cache_keys: &str) -> Self {
        self.backend = backend;
        self.define(cache_keys);
        self
    }

    fn define(&self, cache_keys: &str) {
        let text = format!(
            "mountpoint = \"{}\"\n[backend]\n{}[cache]\ndir = \"{}\"\n{cache_keys}\n",
            self.mountpoint.display(),
            self.backend,
            self.cache.display()
        );
        fs::write(self.config_dir.join("data.toml"), text).unwrap();
    }

    fn create(&self, size: &str) {
        let out = onefs(&[
            "create",
            "--size",
            size,
            "--block-size",
            "1M",
            "--definition",
            "data",
            "--config-dir",
            self.config_dir.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "create failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn run(&self) -> Served {
        self.run_logging("info")
    }

    /// `onefs run` at this log level (its stderr in the log file, anew).
    fn run_logging(&self, level: &str) -> Served {
        let log = fs::File::create(self.scratch.path("onefs.log")).unwrap();
        let child = Command::new(onefs_bin())
            .args(["run", "data", "--log-level", level, "--config-dir", self.config_dir.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start onefs run");
        let served = Served { child, mountpoint: self.mountpoint.clone(), cache: self.cache.clone() };
        // Live, and onefs says so: an umount before onefs saw its own mount
        // answer would fail its start ("did not come up").
        let up = poll_until(Duration::from_secs(30), || {
            is_live_onefs_mount(&self.mountpoint) && self.log().contains("ready: ")
        });
        assert!(up, "mount did not come up: {}", self.log());
        served
    }

    fn log(&self) -> String {
        fs::read_to_string(self.scratch.path("onefs.log")).unwrap_or_default()
    }

    fn object_path(&self, block: u64) -> PathBuf {
        self.objects.join(format!("d{:04}", block / 1000)).join(format!("blk-{:05}", block + 1))
    }

    /// The block bytes of an object (checksum trailer stripped), if present.
    fn object(&self, block: u64) -> Option<Vec<u8>> {
        let mut data = fs::read(self.object_path(block)).ok()?;
        assert_eq!(data.len(), BS as usize + TRAILER, "object of block {block}");
        data.truncate(BS as usize);
        Some(data)
    }

    fn disk(&self) -> PathBuf {
        self.mountpoint.join("disk.img")
    }
}

/// A running `onefs run`; unmounts and waits for it on drop.
struct Served {
    child: Child,
    mountpoint: PathBuf,
    cache: PathBuf,
}

impl Served {
    /// Unmounts (flushing the cache) and waits for a clean exit.
    fn stop(self) {
        self.stop_logging(String::new)
    }

    /// [`stop`](Self::stop), naming `log()` if onefs fails.
    fn stop_logging(mut self, log: impl FnOnce() -> String) {
        // Something may still be looking at a fresh mount (EBUSY): try again.
        let unmounted = poll_until(Duration::from_secs(10), || {
            Command::new("umount").arg(&self.mountpoint).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        });
        assert!(unmounted, "umount {} kept failing", self.mountpoint.display());
        let status = wait_child(&mut self.child, Duration::from_secs(60)).expect("onefs run did not exit after umount");
        assert!(status.success(), "onefs run failed: {status}{}", log());
        std::mem::forget(self);
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        wait_store_released(&self.cache);
        std::mem::forget(self);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if Command::new("umount").arg(&self.mountpoint).status().map_or(true, |s| !s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
        if wait_child(&mut self.child, Duration::from_secs(30)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn dir_backend_ext4_cycle_then_remount_from_an_empty_cache() {
    let s = Setup::new("size = \"64M\"\nupload_delay = \"200ms\"\n");
    s.create("4G");
    assert!(s.objects.join("onefs.json").is_file(), "onefs.json is stored beside the blocks");
    ext4_cycle(&s, "dir");
    assert!(fs::read_dir(s.objects.join("d0000")).unwrap().count() > 96, "blocks are in the backend");
}

#[test]
fn s3_on_garage_ext4_cycle_then_remount_from_an_empty_cache() {
    let garage = remote::Garage::start();
    let backend = format!(
        "type = \"s3\"\nendpoint = \"{}\"\nregion = \"garage\"\nbucket = \"{}\"\nprefix = \"e2e/\"\npath_style = true\ncredentials_file = \"{}\"\n",
        garage.endpoint,
        garage.bucket,
        garage.credentials_file().display()
    );
    let s = Setup::new("").with_backend(backend, "size = \"64M\"\nupload_delay = \"200ms\"\n");
    s.create("4G");
    ext4_cycle(&s, "s3");
    let keys = onefs::backend::ObjectBackend::list(&garage.backend("e2e/"), "").unwrap();
    assert!(keys.iter().any(|k| k == "onefs.json") && keys.len() > 96, "{} objects", keys.len());
}

#[test]
fn rclone_local_remote_ext4_cycle_then_remount_from_an_empty_cache() {
    let rclone = remote::rclone_bin();
    let s = Setup::new("");
    let remote_dir = s.scratch.dir("rclone-remote");
    let backend =
        format!("type = \"rclone\"\nremote = \"{}\"\nrclone = \"{}\"\n", remote_dir.display(), rclone.display());
    let s = s.with_backend(backend, "size = \"64M\"\nupload_delay = \"200ms\"\n");
    s.create("4G");
    ext4_cycle(&s, "rclone");
    // Blocks landed as objects in folders of at most 1000, beside onefs.json.
    assert!(remote_dir.join("onefs.json").exists());
    let folders: Vec<_> = fs::read_dir(&remote_dir).unwrap().flatten().filter(|e| e.path().is_dir()).collect();
    assert!(!folders.is_empty());
    let objects: usize = folders.iter().map(|f| fs::read_dir(f.path()).unwrap().count()).sum();
    assert!(objects > 96, "{objects} block objects");
}

/// A first mount and umount of a fresh remote store at the default log
/// level says nothing alarming: the lock and epoch objects not existing yet
/// is expected, and a plain umount is the normal way to stop. Then three
/// mounts at debug level, timed from start to ready (median printed), with
/// onefs's per-step timings.
fn quiet_first_mount_then_mount_times(s: &Setup, label: &str) -> Duration {
    s.create("64M");
    let served = s.run_logging("info");
    served.stop_logging(|| s.log());
    let log = s.log();
    let alarming: Vec<&str> = log
        .lines()
        .filter(|l| ["error", "warning", "ERROR", "WARN", "<3>", "<4>"].iter().any(|w| l.contains(w)))
        .collect();
    let alarming = alarming.join("\n");

    let mut times = vec![];
    for _ in 0..3 {
        let started = Instant::now();
        let served = s.run_logging("debug");
        times.push(started.elapsed());
        served.stop_logging(|| s.log());
        let log = s.log();
        let steps: Vec<&str> = log.lines().filter(|l| l.contains(" ms") || l.contains("ms)")).collect();
        eprintln!("{label}: mount live after {:?}; steps:\n  {}", times[times.len() - 1], steps.join("\n  "));
    }
    times.sort();
    eprintln!("{label}: mount times {times:?}, median {:?}", times[1]);
    assert!(
        alarming.is_empty(),
        "{label}: a healthy first mount and umount logged:\n{alarming}\n--- whole log:\n{log}"
    );
    assert_eq!(log.matches("unmounted").count(), 1, "{label}: one calm line says it was unmounted:\n{log}");
    times[1]
}

#[test]
fn remote_mounts_are_quiet_when_healthy_and_quick() {
    let rclone = remote::rclone_bin();
    let s = Setup::new("size = \"64M\"");
    let remote_dir = s.scratch.dir("rclone-remote");
    let backend =
        format!("type = \"rclone\"\nremote = \"{}\"\nrclone = \"{}\"\n", remote_dir.display(), rclone.display());
    let s = s.with_backend(backend, "size = \"64M\"");
    quiet_first_mount_then_mount_times(&s, "rclone local");

    let garage = remote::Garage::start();
    let backend = format!(
        "type = \"s3\"\nendpoint = \"{}\"\nregion = \"garage\"\nbucket = \"{}\"\nprefix = \"quiet/\"\npath_style = true\ncredentials_file = \"{}\"\n",
        garage.endpoint,
        garage.bucket,
        garage.credentials_file().display()
    );
    let s = Setup::new("size = \"64M\"").with_backend(backend, "size = \"64M\"");
    quiet_first_mount_then_mount_times(&s, "garage");

    // A cloud drive at 4 requests a second: rclone's client-side --tpslimit.
    let s = Setup::new("size = \"64M\"");
    let served_dir = s.scratch.dir("webdav");
    let server = remote::RcloneServe::webdav(&served_dir, &[]);
    let conf = s.scratch.path("rclone.conf");
    fs::write(&conf, format!("[drive]\ntype = webdav\nurl = {}\nvendor = other\n", server.url)).unwrap();
    let backend = format!(
        "type = \"rclone\"\nremote = \"drive:onefs\"\nrclone = \"{}\"\nrclone_config = \"{}\"\nargs = [\"--tpslimit\", \"4\"]\n",
        rclone.display(),
        conf.display()
    );
    let s = s.with_backend(backend, "size = \"64M\"");
    quiet_first_mount_then_mount_times(&s, "webdav 4 tps");
}

/// mkfs.ext4, 96 MiB written, unmount (flushing the cache); delete the
/// cache; remount: e2fsck clean and the data intact.
fn ext4_cycle(s: &Setup, label: &str) {
    // A second create on the same (now non-empty) backend is refused.
    let out =
        onefs(&["create", "--size", "1G", "--definition", "data", "--config-dir", s.config_dir.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not empty"));

    let inner = s.scratch.dir("ext4");
    let data = pattern(7, 96 << 20);
    let started = Instant::now();
    {
        let served = s.run();
        let lo = Loop::attach(&s.disk(), &["--direct-io=on"]);
        run("mkfs.ext4", &["-q", "-F", &lo.0]);
        let m = DevMount::new(&lo.0, &inner);
        fs::write(inner.join("file"), &data).unwrap();
        run("sync", &[]);
        // Live numbers while mounted: the cache holds at most its size.
        let status = run(onefs_bin(), &["status", "data", "--config-dir", s.config_dir.to_str().unwrap()]);
        assert!(
            status.contains("cache: ") && status.contains("hit rate") && status.contains("dirty blocks"),
            "{status}"
        );
        m.unmount();
        lo.detach();
        served.stop();
    }
    let written = started.elapsed();

    // Lose the whole cache: everything comes back from the backend.
    fs::remove_dir_all(&s.cache).unwrap();
    let started = Instant::now();
    let served = s.run();
    let remounted = started.elapsed();
    let lo = Loop::attach(&s.disk(), &["--direct-io=on"]);
    run("e2fsck", &["-fn", &lo.0]);
    let m = DevMount::new(&lo.0, &inner);
    assert!(fs::read(inner.join("file")).unwrap() == data, "data intact after remount from an empty cache");
    m.unmount();
    lo.detach();
    served.stop();
    eprintln!(
        "{label}: mkfs + 96 MiB through ext4 + unmount with upload: {written:?}; remount from an empty cache: {remounted:?}"
    );
}

#[test]
fn kill_9_with_dirty_blocks_in_a_local_cache_then_restart_uploads_every_fsynced_byte() {
    // Nothing is uploaded while the first daemon lives.
    let s = Setup::new("durability = \"local\"\nupload_delay = \"1h\"\n");
    s.create("1G");
    let writes: Vec<(u64, Vec<u8>)> = (0..12u64).map(|i| (i * 5 * BS + i * 4097, pattern(100 + i, 200_000))).collect();
    let served = s.run();
    for (offset, data) in &writes {
        pwrite(&s.disk(), *offset, data); // fsyncs
    }
    assert!(s.object(0).is_none(), "uploaded too early: the delay is an hour");
    served.kill9();

    s.define("durability = \"local\"\nupload_delay = \"10ms\"\n");
    let served = s.run();
    let expect = |offset: u64, data: &[u8]| {
        // Every byte of the write, in the object(s) it spans.
        let mut pos = 0usize;
        while pos < data.len() {
            let at = offset + pos as u64;
            let (block, within) = (at / BS, (at % BS) as usize);
            let n = (BS as usize - within).min(data.len() - pos);
            let Some(object) = s.object(block) else { return false };
            if object[within..within + n] != data[pos..pos + n] {
                return false;
            }
            pos += n;
        }
        true
    };
    wait_until("the journal's blocks in the backend", Duration::from_secs(60), || {
        writes.iter().all(|(o, d)| expect(*o, d))
    });
    served.stop();
}

#[test]
fn backend_down_writes_land_uncached_reads_fail_with_eio_and_it_recovers() {
    let s = Setup::new("durability = \"local\"\nupload_delay = \"50ms\"\nretry_timeout = \"1s\"\n");
    s.create("1G");
    let old = pattern(1, 100_000);
    let served = s.run();
    pwrite(&s.disk(), 0, &old);
    served.stop();
    assert!(s.object(0).is_some());
    // Start from an empty cache, so block 0 is only in the backend.
    fs::remove_dir_all(&s.cache).unwrap();
    let served = s.run();
    let away = s.scratch.path("objects.away");
    fs::rename(&s.objects, &away).unwrap();

    let new = pattern(2, 300_000);
    pwrite(&s.disk(), 7 * BS + 11, &new); // a new block: lands in the cache, fsync succeeds
    assert_eq!(pread(&s.disk(), 7 * BS + 11, new.len()), new);
    let file = fs::File::open(s.disk()).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = file.read_exact_at(&mut buf, 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    wait_until("status to show the failing backend", Duration::from_secs(10), || {
        run(onefs_bin(), &["status", "data", "--config-dir", s.config_dir.to_str().unwrap()])
            .contains("backend failing")
    });

    fs::rename(&away, &s.objects).unwrap();
    let mut buf = vec![0u8; old.len()];
    file.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == old, "the backend's data after recovery");
    wait_until("the block written while down to be uploaded", Duration::from_secs(60), || {
        s.object(7).is_some_and(|o| o[11..11 + new.len()] == new[..])
    });
    drop(file);
    served.stop();
}

#[test]
fn remote_durability_fsync_returns_once_the_objects_are_in_the_backend() {
    let s = Setup::new("durability = \"remote\"\nupload_delay = \"1h\"\n");
    s.create("1G");
    let served = s.run();
    let data = pattern(3, 3 * BS as usize);
    let file = fs::OpenOptions::new().write(true).open(s.disk()).unwrap();
    file.write_all_at(&data, 2 * BS).unwrap();
    assert!(s.object(2).is_none(), "not uploaded before fsync: the delay is an hour");
    file.sync_all().unwrap();
    for i in 0..3u64 {
        assert!(s.object(2 + i).unwrap()[..] == data[(i * BS) as usize..((i + 1) * BS) as usize], "block {}", 2 + i);
    }
    // Zeroing a whole block deletes its object, also by the next fsync.
    file.write_all_at(&vec![0u8; BS as usize], 3 * BS).unwrap();
    file.sync_all().unwrap();
    assert!(s.object(3).is_none());
    drop(file);
    served.stop();
}
