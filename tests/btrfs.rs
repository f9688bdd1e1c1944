//! Real mounts with btrfs inside disk.img: onefs over a store directory, a
//! loop device with direct I/O, btrfs on top. Run as root; needs btrfs-progs.
//! The kill -9 test under an fsync'ing writer on btrfs is in tests/crash.rs.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

const BLOCK: u64 = 4 * MIB;
/// The file deleted before fstrim.
const BIG: usize = 256 * MIB as usize;

/// Files of pattern data: inline in btrfs's metadata, small, many small in a
/// directory, one of a MiB and a bit, one large; their expected contents.
fn mixed_files() -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("note.txt".to_string(), b"hello btrfs on onefs\n".to_vec()),
        ("inline.bin".to_string(), pattern(10, 1500)),
        ("small.bin".to_string(), pattern(11, 70_000)),
        ("one.bin".to_string(), pattern(12, MIB as usize + 17)),
        ("large.bin".to_string(), pattern(13, 48 * MIB as usize + 4096 + 5)),
    ];
    for i in 0..40u64 {
        files.push((format!("dir/f{i:02}"), pattern(100 + i, 512 + 997 * i as usize)));
    }
    files
}

/// Overwrites of parts of files, inside and across blocks and extents:
/// (file, offset, length, seed).
const OVERWRITES: &[(&str, usize, usize, u64)] = &[
    ("large.bin", 0, 4096, 20),
    ("large.bin", 5 * MIB as usize + 123, 100_000, 21),
    ("large.bin", 4 * MIB as usize - 3000, 8 * MIB as usize, 22),
    ("large.bin", 48 * MIB as usize, 4101, 23),
    ("one.bin", 777, 5000, 24),
    ("small.bin", 65_536, 4464, 25),
    ("big.bin", 100 * MIB as usize, 3 * MIB as usize, 26),
];

fn write_and_overwrite(dir: &Path, files: &mut [(String, Vec<u8>)]) {
    fs::create_dir(dir.join("dir")).unwrap();
    for (name, data) in files.iter() {
        fs::write(dir.join(name), data).unwrap();
    }
    run("sync", &["-f", dir.to_str().unwrap()]);
    for &(name, offset, len, seed) in OVERWRITES {
        let data = pattern(seed, len);
        let f = fs::OpenOptions::new().write(true).open(dir.join(name)).unwrap();
        f.write_all_at(&data, offset as u64).unwrap();
        let (_, expected) = files.iter_mut().find(|(n, _)| n == name).unwrap();
        expected[offset..offset + len].copy_from_slice(&data);
    }
}

fn scrub(dir: &Path) {
    let out = Command::new("btrfs").args(["scrub", "start", "-B"]).arg(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "btrfs scrub failed ({}): {text}", out.status);
    assert!(text.contains("no errors found"), "btrfs scrub: {text}");
}

#[test]
fn btrfs_on_onefs_scrubs_trims_and_survives_remount() {
    require_program("mkfs.btrfs", "btrfs-progs");
    require_program("btrfs", "btrfs-progs");
    require_program("fstrim", "util-linux");
    let s = Scratch::new();
    let (store, mnt, dir) = (s.path("store"), s.dir("mnt"), s.dir("btrfs"));
    create(&store, "2G", "4M");

    let mut files = mixed_files();
    files.push(("big.bin".to_string(), pattern(14, BIG)));
    let kept = files.len() - 1;
    let sums: Vec<String>;
    {
        let onefs = OnefsMount::new(&store, &mnt, &[]);
        let dev = Loop::attach(&onefs.disk(), &["--direct-io=on"]);
        run("mkfs.btrfs", &["-f", "-q", &dev.0]);
        let after_mkfs = Stored::of(&store);
        assert!(after_mkfs.bytes < 16 * MIB, "mkfs.btrfs of 2 GiB stored {after_mkfs:?}");
        // nodiscard: a loop device over FUSE counts as non-rotational, so
        // btrfs would discard freed extents in the background (discard=async)
        // some seconds later; without it the store shrinks only by fstrim,
        // and is measured once fstrim is done.
        let inner = DevMount::with_options(&dev.0, &dir, "nodiscard");
        write_and_overwrite(&dir, &mut files);
        run("sync", &["-f", dir.to_str().unwrap()]);
        scrub(&dir);
        sums = files.iter().map(|(name, _)| sha256(&dir.join(name))).collect();
        let full = Stored::of(&store);
        assert!(full.bytes >= after_mkfs.bytes + BIG as u64, "the data is stored ({after_mkfs:?} -> {full:?})");

        fs::remove_file(dir.join("big.bin")).unwrap();
        run("sync", &["-f", dir.to_str().unwrap()]);
        run("fstrim", &[dir.to_str().unwrap()]);
        let trimmed = Stored::of(&store);
        eprintln!("store after mkfs {after_mkfs:?}, after writing {full:?}, after rm big.bin + fstrim {trimmed:?}");
        // At least most of the 64 blocks the deleted file covered are gone,
        // and almost all of its bytes.
        assert!(
            trimmed.files + BIG / BLOCK as usize / 2 <= full.files,
            "fstrim freed blocks ({full:?} -> {trimmed:?})"
        );
        assert!(trimmed.bytes + (BIG as u64) * 3 / 4 <= full.bytes, "fstrim freed bytes ({full:?} -> {trimmed:?})");
        scrub(&dir);
        inner.unmount();
        dev.detach();
        onefs.unmount();
    }

    let onefs = OnefsMount::new(&store, &mnt, &[]);
    assert_store_matches_image(&store, &onefs.disk(), BLOCK);
    let dev = Loop::attach(&onefs.disk(), &["--direct-io=on"]);
    let check = Command::new("btrfs").args(["check", "--readonly", &dev.0]).output().unwrap();
    assert!(
        check.status.success(),
        "btrfs check --readonly: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let inner = DevMount::new(&dev.0, &dir);
    assert!(!dir.join("big.bin").exists(), "the deleted file came back");
    for ((name, expected), sum) in files[..kept].iter().zip(&sums) {
        let path = dir.join(name);
        assert_eq!(&sha256(&path), sum, "{name} changed across remount");
        assert!(fs::read(&path).unwrap() == *expected, "{name} does not hold what was written");
    }
    inner.unmount();
    dev.detach();
    onefs.unmount();
}
