//! `onefs fsck`: what it finds, what --repair fixes and what it leaves, and
//! the block-file length checks at mount.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::Output;

const BS: usize = 4096;

fn fsck(store: &Path, repair: bool) -> (i32, String, String) {
    let mut args = vec!["fsck"];
    if repair {
        args.push("--repair");
    }
    args.push(store.to_str().unwrap());
    let out: Output = onefs(&args);
    (
        out.status.code().expect("fsck exited by signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A 64 MiB store of 4K blocks (width 5).
fn store(s: &Scratch) -> std::path::PathBuf {
    let store = s.path("store");
    create(&store, "64M", "4K");
    store
}

fn put_block(store: &Path, name: &str, data: &[u8]) {
    fs::write(store.join(name), data).unwrap();
}

/// A full-size block file with some data in it.
fn good_block(store: &Path, name: &str, seed: u64) {
    let mut data = vec![0u8; BS];
    data[100..300].copy_from_slice(&pattern(seed, 200));
    put_block(store, name, &data);
}

/// The line of `out` naming `path`.
fn line_for<'a>(out: &'a str, path: &Path) -> &'a str {
    let prefix = format!("{}: ", path.display());
    out.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no line for {}:\n{out}", path.display()))
}

/// Everything but the lock file (whose holder record fsck rewrites).
fn contents(store: &Path) -> Vec<(String, Vec<u8>)> {
    snapshot(store).into_iter().filter(|(n, _)| n != "onefs.lock").collect()
}

fn summary(out: &str) -> &str {
    out.lines().last().unwrap_or_default()
}

#[test]
fn clean_store_passes() {
    let s = Scratch::new();
    let store = store(&s);
    let (code, out, err) = fsck(&store, false);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(summary(&out).contains("0 blocks") && summary(&out).contains("0 problems found"), "{out}");

    for (i, name) in ["blk-00001", "blk-00002", "blk-16384"].iter().enumerate() {
        good_block(&store, name, i as u64 + 1);
    }
    // Data only in the last byte, after a hole: not an all-zero block.
    let sparse = fs::File::create(store.join("blk-00009")).unwrap();
    sparse.set_len(BS as u64).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"z", BS as u64 - 1).unwrap();
    drop(sparse);
    let before = contents(&store);
    let (code, out, err) = fsck(&store, false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(summary(&out).contains("4 blocks") && summary(&out).contains("0 problems found"), "{out}");
    assert_eq!(contents(&store), before);
    // --repair on a clean store changes nothing either.
    assert_eq!(fsck(&store, true).0, 0);
    assert_eq!(contents(&store), before);
}

struct Damaged {
    tmp: std::path::PathBuf,
    short: std::path::PathBuf,
    short_data: Vec<u8>,
    long: std::path::PathBuf,
    zero: std::path::PathBuf,
    holey_zero: std::path::PathBuf,
    empty: std::path::PathBuf,
    bad_name: std::path::PathBuf,
    stray: std::path::PathBuf,
    good: std::path::PathBuf,
}

fn damage(store: &Path) -> Damaged {
    good_block(store, "blk-00001", 1);
    let short_data = pattern(2, 1000);
    put_block(store, "blk-00002", &short_data);
    put_block(store, "blk-00003", &pattern(3, BS + 1));
    put_block(store, "blk-00004", &vec![0u8; BS]);
    let holey = store.join("blk-00005");
    fs::File::create(&holey).unwrap().set_len(BS as u64).unwrap();
    put_block(store, "blk-00006", b"");
    put_block(store, "blk-99999", b"not mine");
    put_block(store, ".onefs.json.tmp", b"{\"format\":");
    put_block(store, "notes.txt", b"precious");
    Damaged {
        tmp: store.join(".onefs.json.tmp"),
        short: store.join("blk-00002"),
        short_data,
        long: store.join("blk-00003"),
        zero: store.join("blk-00004"),
        holey_zero: holey,
        empty: store.join("blk-00006"),
        bad_name: store.join("blk-99999"),
        stray: store.join("notes.txt"),
        good: store.join("blk-00001"),
    }
}

#[test]
fn every_problem_kind_is_found_and_named_without_changing_anything() {
    let s = Scratch::new();
    let store = store(&s);
    let d = damage(&store);
    let before = contents(&store);
    let (code, out, err) = fsck(&store, false);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.is_empty(), "{err}");
    assert!(line_for(&out, &d.tmp).contains("temporary"), "{out}");
    assert!(line_for(&out, &d.short).contains("short block file: 1000 of 4096 bytes"), "{out}");
    assert!(line_for(&out, &d.long).contains("4097 bytes, longer than the block size"), "{out}");
    assert!(line_for(&out, &d.zero).contains("only zeros"), "{out}");
    assert!(line_for(&out, &d.holey_zero).contains("only zeros"), "{out}");
    assert!(line_for(&out, &d.empty).contains("only zeros"), "{out}");
    assert!(line_for(&out, &d.bad_name).contains("not a block of this image"), "{out}");
    assert!(line_for(&out, &d.stray).contains("stray"), "{out}");
    assert!(!out.contains(&format!("{}:", d.good.display())), "{out}");
    assert!(!out.contains("onefs.json:") && !out.contains("onefs.lock:"), "{out}");
    assert_eq!(out.lines().count(), 9, "8 findings and a summary:\n{out}");
    assert!(summary(&out).contains("6 blocks") && summary(&out).contains("8 problems found, 0 repaired"), "{out}");
    assert_eq!(contents(&store), before, "fsck without --repair changed the store");
}

#[test]
fn repair_fixes_what_it_may_and_leaves_the_rest() {
    let s = Scratch::new();
    let store = store(&s);
    let d = damage(&store);
    let long_before = fs::read(&d.long).unwrap();
    let good_before = fs::read(&d.good).unwrap();
    let (code, out, err) = fsck(&store, true);
    assert_eq!(code, 1, "stray and long files remain:\n{out}{err}");
    for path in [&d.tmp, &d.short, &d.zero, &d.holey_zero, &d.empty] {
        assert!(line_for(&out, path).contains(": repaired ("), "{out}");
    }
    for path in [&d.long, &d.bad_name, &d.stray] {
        assert!(!line_for(&out, path).contains(": repaired ("), "{out}");
    }
    assert!(summary(&out).contains("8 problems found, 5 repaired"), "{out}");
    assert!(summary(&out).contains("3 blocks"), "{out}");

    assert!(!d.tmp.exists() && !d.zero.exists() && !d.holey_zero.exists() && !d.empty.exists());
    let short = fs::read(&d.short).unwrap();
    assert_eq!(short.len(), BS);
    assert_eq!(&short[..1000], &d.short_data[..]);
    assert!(short[1000..].iter().all(|&b| b == 0));
    assert_eq!(fs::read(&d.long).unwrap(), long_before, "over-long block must never be changed");
    assert_eq!(fs::read(&d.stray).unwrap(), b"precious");
    assert_eq!(fs::read(&d.bad_name).unwrap(), b"not mine");
    assert_eq!(fs::read(&d.good).unwrap(), good_before);

    // What is left is reported again, and only that.
    let (code, out, _) = fsck(&store, true);
    assert_eq!(code, 1);
    assert_eq!(out.lines().count(), 4, "{out}");
    fs::remove_file(&d.long).unwrap();
    fs::remove_file(&d.bad_name).unwrap();
    fs::remove_file(&d.stray).unwrap();
    let (code, out, err) = fsck(&store, false);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn repair_of_only_repairable_problems_exits_zero() {
    let s = Scratch::new();
    let store = store(&s);
    put_block(&store, "blk-00007", &pattern(7, 10));
    put_block(&store, "blk-00008", &[0u8; 100]);
    put_block(&store, ".onefs.json.tmp", b"");
    let (code, out, err) = fsck(&store, true);
    assert_eq!(code, 0, "{out}{err}");
    assert!(summary(&out).contains("3 problems found, 3 repaired"), "{out}");
    assert_eq!(fsck(&store, false).0, 0);
}

#[test]
fn damaged_description_is_one_line_and_exit_2() {
    let s = Scratch::new();
    let store = store(&s);
    let meta = store.join("onefs.json");
    let good = fs::read_to_string(&meta).unwrap();
    fs::write(&meta, &good[..good.len() / 2]).unwrap();
    let (code, out, err) = fsck(&store, true);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("onefs: error: ") && err.contains(meta.to_str().unwrap()), "{err}");
    assert!(!store.join("onefs.lock").exists(), "no lock file before the store is known good");

    let (code, _, err) = fsck(&s.path("absent"), false);
    assert_eq!(code, 2);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("absent"), "{err}");

    let (code, _, err) = {
        let out = onefs(&["fsck"]);
        (out.status.code().unwrap(), (), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(code, 2, "{err}");
}

#[test]
fn a_mounted_store_is_refused_naming_the_holder() {
    let s = Scratch::new();
    let store = store(&s);
    let mnt = s.dir("mnt");
    good_block(&store, "blk-00001", 1);
    {
        let mount = OnefsMount::new(&store, &mnt, &[]);
        let pid = mount.pid();
        let started = std::time::Instant::now();
        let (code, out, err) = fsck(&store, true);
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "fsck waited for the lock");
        assert_eq!(code, 2, "{out}{err}");
        assert!(out.is_empty(), "{out}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(store.to_str().unwrap()) && err.contains(mnt.to_str().unwrap()), "{err}");
        assert!(err.contains(&format!("pid {pid}")), "{err}");
        mount.unmount();
    }
    let (code, out, err) = fsck(&store, false);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn mount_refuses_an_over_long_block_file_and_accepts_a_short_one() {
    let s = Scratch::new();
    let store = store(&s);
    let mnt = s.dir("mnt");
    let long = store.join("blk-00003");
    put_block(&store, "blk-00003", &pattern(3, BS + 10));
    let before = contents(&store);
    let out = onefs(&["mount", store.to_str().unwrap(), mnt.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(long.to_str().unwrap()) && err.contains("longer than the block size"), "{err}");
    assert_eq!(contents(&store), before, "a refused mount changed the store");
    wait_store_released(&store);

    // A short block is accepted: its missing tail reads as zeros.
    fs::remove_file(&long).unwrap();
    let data = pattern(5, 700);
    put_block(&store, "blk-00002", &data);
    let mount = OnefsMount::new(&store, &mnt, &[]);
    let got = pread(&mount.disk(), BS as u64, BS);
    assert_eq!(&got[..700], &data[..]);
    assert!(got[700..].iter().all(|&b| b == 0));
    mount.unmount();
}

#[test]
fn a_block_file_grown_after_a_clean_unmount_is_refused_when_opened() {
    use std::os::unix::fs::FileExt;
    let s = Scratch::new();
    let store = store(&s);
    let mnt = s.dir("mnt");
    let mount = OnefsMount::new(&store, &mnt, &[]);
    pwrite(&mount.disk(), 0, b"first");
    pwrite(&mount.disk(), 5 * BS as u64, b"sixth");
    mount.unmount();
    assert!(store.join("onefs.clean").is_file(), "a clean unmount records itself");
    let (code, out, err) = fsck(&store, false);
    assert_eq!(code, 0, "fsck must accept onefs.clean:\n{out}{err}");

    // Grown in place: the directory did not change, so the mount lists names
    // without re-checking lengths, and the block is refused once opened.
    let long = store.join("blk-00001");
    fs::OpenOptions::new().write(true).open(&long).unwrap().set_len(BS as u64 + 1).unwrap();
    let mount = OnefsMount::new(&store, &mnt, &[]);
    let disk = fs::File::open(mount.disk()).unwrap();
    let err = disk.read_at(&mut [0u8; 5], 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(pread(&mount.disk(), 5 * BS as u64, 5), b"sixth", "other blocks still serve");
    drop(disk);
    mount.unmount();
    assert!(line_for(&fsck(&store, false).1, &long).contains("longer than the block size"));
}
