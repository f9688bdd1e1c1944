//! `onefs grow` for real: a 1 GiB image with ext4 (and with btrfs) on a loop
//! device grown to 1 TiB while mounted and in use, the filesystem grown
//! live, data written past the old end, everything unmounted and checked;
//! kill -9 of onefs at every step of an online grow; a grow past the width
//! of the block names; a Garage-backed image grown online and offline.
//! Refusals are in tests/bad_input.rs.

mod common;

use common::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
const BLOCK: u64 = 4 * MIB;
/// Written after the grow: more than the old filesystem could hold, so a
/// good part of it lies past the old end of disk.img.
const PAST_CHUNKS: u64 = 70;
const CHUNK: u64 = 16 * MIB;

fn grow_ok(args: &[&str]) -> String {
    let mut all = vec!["grow"];
    all.extend_from_slice(args);
    let out = onefs(&all);
    assert!(out.status.success(), "onefs {all:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn size_of(path: &Path) -> u64 {
    fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).len()
}

fn described_size(store: &Path) -> u64 {
    let text = fs::read_to_string(store.join("onefs.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["size"].as_u64().unwrap()
}

fn described_id(store: &Path) -> String {
    let text = fs::read_to_string(store.join("onefs.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["id"].as_str().unwrap().to_string()
}

/// Whether this process may grow a mounted ext4 (EXT4_IOC_RESIZE_FS needs
/// CAP_SYS_RESOURCE, which some containers withhold even from root).
fn may_resize_mounted_ext4() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(str::trim).unwrap_or("0");
    u64::from_str_radix(eff, 16).is_ok_and(|caps| caps & (1 << 24) != 0) // CAP_SYS_RESOURCE
}

/// Files written before the grow: (name, seed, length).
const BEFORE: &[(&str, u64, usize)] = &[
    ("small.txt", 1, 300),
    ("one.bin", 2, MIB as usize + 17),
    ("big.bin", 3, 40 * MIB as usize + 5),
    ("dir/a", 4, 70_000),
    ("dir/b", 5, 4 * MIB as usize - 1),
];

fn write_before(dir: &Path) -> Vec<(String, String)> {
    fs::create_dir_all(dir.join("dir")).unwrap();
    for &(name, seed, len) in BEFORE {
        fs::write(dir.join(name), pattern(seed, len)).unwrap();
    }
    run("sync", &["-f", dir.to_str().unwrap()]);
    BEFORE.iter().map(|&(name, _, _)| (name.to_string(), sha256(&dir.join(name)))).collect()
}

/// Writes `past.bin`, 1.1 GiB of pattern data, in chunks (never all in memory).
fn write_past(dir: &Path) {
    let mut file = fs::File::create(dir.join("past.bin")).unwrap();
    for i in 0..PAST_CHUNKS {
        file.write_all(&pattern(1000 + i, CHUNK as usize)).unwrap();
    }
    file.sync_all().unwrap();
}

fn check_past(dir: &Path) {
    let file = fs::File::open(dir.join("past.bin")).unwrap();
    assert_eq!(file.metadata().unwrap().len(), PAST_CHUNKS * CHUNK);
    let mut buf = vec![0u8; CHUNK as usize];
    for i in 0..PAST_CHUNKS {
        file.read_exact_at(&mut buf, i * CHUNK).unwrap();
        assert!(buf == pattern(1000 + i, CHUNK as usize), "past.bin chunk {i} differs");
    }
}

fn check_before(dir: &Path, sums: &[(String, String)]) {
    for (name, sum) in sums {
        assert_eq!(&sha256(&dir.join(name)), sum, "{name} changed");
    }
}

/// Block numbers (1-based, as named) of the block files in a store.
fn block_numbers(store: &Path) -> Vec<u64> {
    let mut numbers: Vec<u64> = block_files(store)
        .iter()
        .map(|n| n["blk-".len()..].parse().unwrap_or_else(|_| panic!("{n}: no block number")))
        .collect();
    numbers.sort_unstable();
    numbers
}

/// Bytes stored in blocks past `old_size`.
fn stored_past(store: &Path, old_size: u64) -> u64 {
    block_files(store)
        .iter()
        .filter(|n| n["blk-".len()..].parse::<u64>().is_ok_and(|number| (number - 1) * BLOCK >= old_size))
        .map(|n| {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(store.join(n)).unwrap().blocks() * 512
        })
        .sum()
}

/// Every stored block file equals its range of the mounted disk.img and lies
/// inside it (reading the stored blocks only: the image is 1 TiB).
fn assert_stored_blocks_match(store: &Path, disk: &Path) {
    let image = fs::File::open(disk).unwrap();
    let count = image.metadata().unwrap().len() / BLOCK;
    let mut range = vec![0u8; BLOCK as usize];
    for name in block_files(store) {
        let number: u64 = name["blk-".len()..].parse().unwrap();
        assert!((1..=count).contains(&number), "{name} lies outside a disk.img of {count} blocks");
        image.read_exact_at(&mut range, (number - 1) * BLOCK).unwrap();
        assert!(fs::read(store.join(&name)).unwrap() == range, "{name} differs from its range of disk.img");
    }
}

fn fsck_clean(store: &Path) -> String {
    let out = onefs(&["fsck", store.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "fsck: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(" 0 problems found"), "{text}");
    text
}

#[test]
fn ext4_grows_online_from_1g_to_1t_and_survives_remount() {
    for (program, package) in [("mkfs.ext4", "e2fsprogs"), ("resize2fs", "e2fsprogs"), ("e2fsck", "e2fsprogs")] {
        require_program(program, package);
    }
    let s = Scratch::new();
    let (store, mnt, dir) = (s.path("store"), s.dir("mnt"), s.dir("ext4"));
    create(&store, "1G", "4M");
    let id = described_id(&store);
    let sums;
    {
        let onefs = OnefsMount::new(&store, &mnt, &[]);
        let dev = Loop::attach(&onefs.disk(), &["--direct-io=on"]);
        run("mkfs.ext4", &["-q", &dev.0]);
        let mut inner = Some(DevMount::new(&dev.0, &dir));
        sums = write_before(&dir);

        let started = Instant::now();
        let said = grow_ok(&["--size", "1T", store.to_str().unwrap()]);
        let grow_took = started.elapsed();
        assert!(said.contains("online") && said.contains("1G -> 1T") && said.contains(&dev.0), "{said}");
        assert_eq!(size_of(&onefs.disk()), TIB, "stat shows the new size at once");
        assert_eq!((described_size(&store), described_id(&store)), (TIB, id.clone()));
        run("losetup", &["-c", &dev.0]);
        assert_eq!(run("blockdev", &["--getsize64", &dev.0]).trim(), TIB.to_string());

        let started = Instant::now();
        if may_resize_mounted_ext4() {
            run("resize2fs", &[&dev.0]);
        } else {
            // Online resize needs CAP_SYS_RESOURCE; without it, resize the
            // unmounted ext4 while onefs keeps serving the grown image.
            eprintln!("no CAP_SYS_RESOURCE here: resize2fs of the unmounted ext4 on the live, grown loop device");
            inner.take().unwrap().unmount();
            run("e2fsck", &["-fy", &dev.0]);
            run("resize2fs", &[&dev.0]);
            inner = Some(DevMount::new(&dev.0, &dir));
        }
        let resize_took = started.elapsed();
        let stat = nix::sys::statvfs::statvfs(&dir).unwrap();
        let fs_size = stat.blocks() * stat.fragment_size();
        assert!(fs_size > 900 * GIB, "ext4 is {fs_size} bytes after resize2fs");
        eprintln!("online grow 1G -> 1T: {grow_took:?} (onefs grow, until stat shows it); resize2fs: {resize_took:?}");

        write_past(&dir);
        check_before(&dir, &sums);
        run("sync", &["-f", dir.to_str().unwrap()]);
        let past = stored_past(&store, GIB);
        assert!(past > 64 * MIB, "only {past} bytes stored past the old end");
        inner.take().unwrap().unmount();
        dev.detach();
        onefs.unmount();
    }
    fsck_clean(&store);
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    assert_eq!(size_of(&onefs.disk()), TIB);
    assert_stored_blocks_match(&store, &onefs.disk());
    assert!(block_numbers(&store).last().is_some_and(|&n| n > 99_999), "names past the width of 5 digits");
    let dev = Loop::attach(&onefs.disk(), &["--direct-io=on"]);
    run("e2fsck", &["-fn", &dev.0]);
    let inner = DevMount::new(&dev.0, &dir);
    check_before(&dir, &sums);
    check_past(&dir);
    inner.unmount();
    dev.detach();
    onefs.unmount();
}

#[test]
fn btrfs_grows_online_from_1g_to_1t_and_survives_remount() {
    require_program("mkfs.btrfs", "btrfs-progs");
    require_program("btrfs", "btrfs-progs");
    let s = Scratch::new();
    let (store, mnt, dir) = (s.path("store"), s.dir("mnt"), s.dir("btrfs"));
    create(&store, "1G", "4M");
    let sums;
    {
        let onefs = OnefsMount::new(&store, &mnt, &[]);
        let dev = Loop::attach(&onefs.disk(), &["--direct-io=on"]);
        run("mkfs.btrfs", &["-f", "-q", &dev.0]);
        let inner = DevMount::with_options(&dev.0, &dir, "nodiscard");
        sums = write_before(&dir);

        let started = Instant::now();
        let said = grow_ok(&["--size", "1T", store.to_str().unwrap()]);
        let grow_took = started.elapsed();
        assert!(said.contains("1G -> 1T"), "{said}");
        assert_eq!(size_of(&onefs.disk()), TIB);
        run("losetup", &["-c", &dev.0]);
        let started = Instant::now();
        run("btrfs", &["filesystem", "resize", "max", dir.to_str().unwrap()]);
        let resize_took = started.elapsed();
        let stat = nix::sys::statvfs::statvfs(&dir).unwrap();
        assert!(stat.blocks() * stat.fragment_size() > 900 * GIB, "btrfs did not grow");
        eprintln!("online grow 1G -> 1T: {grow_took:?}; btrfs filesystem resize max: {resize_took:?}");

        write_past(&dir);
        check_before(&dir, &sums);
        run("sync", &["-f", dir.to_str().unwrap()]);
        let past = stored_past(&store, GIB);
        assert!(past > 64 * MIB, "only {past} bytes stored past the old end");
        let scrub = Command::new("btrfs").args(["scrub", "start", "-B"]).arg(&dir).output().unwrap();
        assert!(scrub.status.success(), "scrub: {}", String::from_utf8_lossy(&scrub.stdout));
        inner.unmount();
        dev.detach();
        onefs.unmount();
    }
    fsck_clean(&store);
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    assert_eq!(size_of(&onefs.disk()), TIB);
    assert_stored_blocks_match(&store, &onefs.disk());
    let dev = Loop::attach(&onefs.disk(), &["--direct-io=on"]);
    let check = Command::new("btrfs").args(["check", "--readonly", &dev.0]).output().unwrap();
    assert!(check.status.success(), "btrfs check: {}", String::from_utf8_lossy(&check.stderr));
    let inner = DevMount::new(&dev.0, &dir);
    check_before(&dir, &sums);
    check_past(&dir);
    inner.unmount();
    dev.detach();
    onefs.unmount();
}

/// The steps of an online grow that a kill -9 can interrupt, and whether the
/// store mounts with the new size afterwards.
const KILL_STEPS: &[(&str, bool)] = &[
    ("before-description", false),
    ("description-temporary", false),
    ("description-renamed", true),
    ("description-written", true),
    ("image-grown", true),
    ("kernel-told", true),
];

/// Data written before the grow: (offset, seed, length), the last piece up
/// to the old end.
const KEPT: &[(u64, u64, usize)] = &[(0, 1, 5000), (123_456_789, 2, 3 * MIB as usize), (GIB - 8192, 3, 8192)];

fn write_kept(disk: &Path) {
    for &(offset, seed, len) in KEPT {
        pwrite(disk, offset, &pattern(seed, len));
    }
}

fn check_kept(disk: &Path) {
    for &(offset, seed, len) in KEPT {
        assert!(pread(disk, offset, len) == pattern(seed, len), "data at {offset} lost");
    }
}

/// Whether process `pid` is gone (or a zombie waiting to be reaped).
fn is_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()));
        if state.is_none_or(|s| s == 'Z' || s == 'X') {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A mount whose onefs kills itself at `step` of a grow.
fn mount_killed_at(store: &Path, mnt: &Path, step: &str) -> OnefsMount {
    let mut command = Command::new(onefs_bin());
    command.args(["mount", store.to_str().unwrap(), mnt.to_str().unwrap()]).env("ONEFS_TEST_KILL_AT", step);
    OnefsMount::start(&mut command, store, mnt)
}

#[test]
fn kill_9_at_every_step_of_an_online_grow_loses_nothing() {
    let s = Scratch::new();
    let mnt = s.dir("mnt");
    for &(step, grown) in KILL_STEPS {
        let store = s.path(&format!("store-{step}"));
        create(&store, "1G", "4M");
        let onefs = mount_killed_at(&store, &mnt, step);
        write_kept(&onefs.disk());
        let pid = onefs.pid();
        let out = common::onefs(&["grow", "--size", "1T", store.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{step}: grow succeeded though onefs was killed");
        assert_eq!(err.trim_end().lines().count(), 1, "{step}: {err}");
        assert!(err.contains(&format!("onefs pid {pid}")), "{step}: {err}");
        wait_store_released(&store);
        assert!(is_gone(pid), "{step}: onefs pid {pid} still runs");
        drop(onefs);

        let temporary = store.join(".onefs.json.grow.tmp").exists();
        assert_eq!(temporary, step == "description-temporary", "{step}: the new description's temporary file");
        let expected = if grown { TIB } else { GIB };
        assert_eq!(described_size(&store), expected, "{step}: the description");
        let onefs = OnefsMount::new(&store, &mnt, &[]);
        assert_eq!(size_of(&onefs.disk()), expected, "{step}: the size mounted");
        assert!(!store.join(".onefs.json.grow.tmp").exists(), "{step}: the mount removes the temporary");
        check_kept(&onefs.disk());
        if !grown {
            grow_ok(&["--size", "1T", store.to_str().unwrap()]);
            assert_eq!(size_of(&onefs.disk()), TIB, "{step}: grown on a second try");
        }
        let past = pattern(9, 2 * MIB as usize);
        pwrite(&onefs.disk(), GIB + 5 * MIB, &past);
        onefs.unmount();
        fsck_clean(&store);
        let onefs = OnefsMount::new(&store, &mnt, &[]);
        check_kept(&onefs.disk());
        assert!(pread(&onefs.disk(), GIB + 5 * MIB, past.len()) == past, "{step}: data past the old end");
        onefs.unmount();
        eprintln!("kill -9 at {step}: mounts with {} and loses nothing", if grown { "1T" } else { "1G" });
    }

    // After a grow that finished: data written past the old end and
    // fsync'ed survives a kill -9 too.
    let store = s.path("store-after");
    create(&store, "1G", "4M");
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    write_kept(&onefs.disk());
    grow_ok(&["--size", "1T", store.to_str().unwrap()]);
    let past = pattern(10, 3 * MIB as usize);
    pwrite(&onefs.disk(), TIB - past.len() as u64, &past);
    let pid = onefs.pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_store_released(&store);
    drop(onefs);
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    assert_eq!(size_of(&onefs.disk()), TIB);
    check_kept(&onefs.disk());
    assert!(pread(&onefs.disk(), TIB - past.len() as u64, past.len()) == past, "data at the new end");
    onefs.unmount();
    fsck_clean(&store);
}

#[test]
fn growing_past_the_name_width_keeps_every_name_and_parses_one_way() {
    const BS: u64 = 4096;
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    // 16384 blocks: names of 5 digits (the least width).
    create(&store, "64M", "4K");
    let writes: &[(u64, u64)] = &[(0, 1), (16_383, 2), (99_998, 3), (99_999, 4), (100_000, 5), (262_143, 6)];
    {
        let onefs = OnefsMount::new(&store, &mnt, &[]);
        pwrite(&onefs.disk(), 0, &pattern(1, 100));
        pwrite(&onefs.disk(), 16_383 * BS, &pattern(2, 100));
        let said = grow_ok(&["--size", "1G", store.to_str().unwrap()]);
        assert!(said.contains("64M -> 1G") && said.contains("262144 blocks of 4K"), "{said}");
        for &(block, seed) in &writes[2..] {
            pwrite(&onefs.disk(), block * BS + 7, &pattern(seed, 100));
        }
        let status = run(onefs_bin(), &["status", "--config-dir", s.dir("etc").to_str().unwrap()]);
        assert!(status.contains("disk.img 1G in 262144 blocks of 4K: 6 blocks stored"), "{status}");
        onefs.unmount();
    }
    let json = fs::read_to_string(store.join("onefs.json")).unwrap();
    assert!(json.contains("\"width\": 5") && json.contains("\"block_count\": 262144"), "{json}");
    assert_eq!(
        block_files(&store),
        ["blk-00001", "blk-100000", "blk-100001", "blk-16384", "blk-262144", "blk-99999"],
        "old names unchanged, new ones with every digit"
    );
    let report = fsck_clean(&store);
    assert!(report.contains(": 6 blocks"), "{report}");

    // One name per block: a padded wide name or a wider name for an old
    // block is not a second copy of it, it is refused naming the file.
    for planted in ["blk-0100000", "blk-000001"] {
        fs::copy(store.join("blk-00001"), store.join(planted)).unwrap();
        let out = onefs(&["mount", store.to_str().unwrap(), mnt.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(planted) && err.contains("not a block of this image"), "{err}");
        let out = onefs(&["fsck", store.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.code() == Some(1) && text.contains(&format!("{planted}: not a block")), "{text}");
        fs::remove_file(store.join(planted)).unwrap();
    }

    // Grown again offline: nothing is renamed.
    let said = grow_ok(&["--size", "2G", store.to_str().unwrap()]);
    eprint!("{said}");
    assert!(said.contains("1G -> 2G") && said.contains("not mounted"), "{said}");
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    assert_eq!(size_of(&onefs.disk()), 2 * GIB);
    for &(block, seed) in writes {
        let offset = if block < 16_384 { block * BS } else { block * BS + 7 };
        assert!(pread(&onefs.disk(), offset, 100) == pattern(seed, 100), "block {block}");
    }
    pwrite(&onefs.disk(), 524_287 * BS, b"the last block of 2G");
    onefs.unmount();
    assert!(block_files(&store).contains(&"blk-524288".to_string()));
    fsck_clean(&store);
}

// ------------------------------------------------------------- remote

/// `onefs run` of a definition on Garage, stopped on drop.
struct Served {
    child: std::process::Child,
    mountpoint: PathBuf,
}

impl Served {
    fn start(config_dir: &Path, mountpoint: &Path, log: &Path) -> Self {
        let child = Command::new(onefs_bin())
            .args(["run", "data", "--config-dir", config_dir.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .expect("onefs run");
        let served = Served { child, mountpoint: mountpoint.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(is_mountpoint(mountpoint) && mountpoint.join("disk.img").exists()) {
            assert!(
                Instant::now() < deadline,
                "mount did not come up: {}",
                fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        served
    }

    fn stop(mut self) {
        run("umount", &[self.mountpoint.to_str().unwrap()]);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "onefs run failed: {status}");
                break;
            }
            assert!(Instant::now() < deadline, "onefs run did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::mem::forget(self);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_garage_backed_image_grows_online_and_offline() {
    use onefs::backend::ObjectBackend;
    let garage = common::remote::Garage::start();
    let s = Scratch::new();
    let (etc, mnt, cache) = (s.dir("etc"), s.dir("mnt"), s.path("cache"));
    let definition = format!(
        "mountpoint = \"{}\"\n[backend]\ntype = \"s3\"\nendpoint = \"{}\"\nregion = \"garage\"\nbucket = \"{}\"\nprefix = \"grow/\"\npath_style = true\ncredentials_file = \"{}\"\n[cache]\ndir = \"{}\"\nsize = \"64M\"\nupload_delay = \"100ms\"\n[create]\nsize = \"64M\"\nblock_size = \"1M\"\n",
        mnt.display(),
        garage.endpoint,
        garage.bucket,
        garage.credentials_file().display(),
        cache.display()
    );
    fs::write(etc.join("data.toml"), definition).unwrap();
    let config_dir = etc.to_str().unwrap();
    let backend = garage.backend("grow/");
    let remote_size = || {
        let text = backend.get("onefs.json").unwrap().expect("onefs.json in the bucket");
        let json: serde_json::Value = serde_json::from_slice(&text).unwrap();
        json["size"].as_u64().unwrap()
    };
    let log = s.path("onefs.log");

    let served = Served::start(&etc, &mnt, &log);
    let disk = mnt.join("disk.img");
    assert_eq!(size_of(&disk), 64 * MIB);
    pwrite(&disk, 64 * MIB - 4096, &pattern(1, 4096));
    let started = Instant::now();
    let said = grow_ok(&["--size", "128G", "--definition", "data", "--config-dir", config_dir]);
    eprintln!("online grow of a Garage-backed image 64M -> 128G: {:?}", started.elapsed());
    assert!(said.contains("online") && said.contains("64M -> 128G") && said.contains("s3://"), "{said}");
    assert!(said.contains("[create] size = \"64M\""), "the definition's [create] differs: {said}");
    assert_eq!(size_of(&disk), 128 * GIB);
    assert_eq!(remote_size(), 128 * GIB, "the description in the bucket");
    // Block 100000 and on: names past 5 digits, keys in folder d0100.
    pwrite(&disk, 100_000 * MIB, &pattern(2, 2 * MIB as usize));
    pwrite(&disk, 128 * GIB - 4096, &pattern(3, 4096));
    let status = run(onefs_bin(), &["status", "data", "--config-dir", config_dir]);
    assert!(status.contains("disk.img 128G in blocks of 1M"), "{status}");
    served.stop();
    let keys = backend.list("").unwrap();
    for key in ["d0100/blk-100001", "d0100/blk-100002", "d0131/blk-131072", "d0000/blk-00064"] {
        assert!(keys.iter().any(|k| k == key), "{key} not in {keys:?}");
    }
    assert!(!keys.iter().any(|k| k == "onefs.lock"), "the remote lock is released");

    // Unmounted: grown under the remote lock, which is released after.
    let said = grow_ok(&["--size", "256G", "--definition", "data", "--config-dir", config_dir]);
    assert!(said.contains("128G -> 256G") && said.contains("not mounted"), "{said}");
    assert_eq!(remote_size(), 256 * GIB);
    assert!(backend.get("onefs.lock").unwrap().is_none(), "offline grow released the remote lock");

    // From an empty cache: everything from the bucket, at the new size.
    fs::remove_dir_all(&cache).unwrap();
    let served = Served::start(&etc, &mnt, &log);
    assert_eq!(size_of(&disk), 256 * GIB);
    assert!(pread(&disk, 64 * MIB - 4096, 4096) == pattern(1, 4096));
    assert!(pread(&disk, 100_000 * MIB, 2 * MIB as usize) == pattern(2, 2 * MIB as usize));
    assert!(pread(&disk, 128 * GIB - 4096, 4096) == pattern(3, 4096));
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("[create] asks for size 64M"), "a differing [create] is reported: {text}");
    served.stop();
}

#[test]
fn a_stopped_onefs_is_named_not_waited_for() {
    let s = Scratch::new();
    let (store, mnt) = (s.path("store"), s.dir("mnt"));
    create(&store, "1G", "4M");
    let onefs = OnefsMount::new(&store, &mnt, &[]);
    let pid = nix::unistd::Pid::from_raw(onefs.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    let out = common::onefs(&["grow", "--size", "2G", store.to_str().unwrap()]);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && started.elapsed() < Duration::from_secs(5), "{err}");
    assert!(err.contains("which is stopped (kill -CONT") && err.trim_end().lines().count() == 1, "{err}");
    assert_eq!(described_size(&store), GIB, "nothing changed");
    grow_ok(&["--size", "2G", store.to_str().unwrap()]);
    assert_eq!(size_of(&onefs.disk()), 2 * GIB);
    onefs.unmount();
}
