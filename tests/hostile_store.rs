//! A store directory is input from someone else: every name in it may be a
//! link, a directory, a FIFO, a device, a file edited by hand, or gone.
//! onefs never reads or writes outside the store, never serves stored data
//! as zeros, and never hangs on what it finds.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{FileExt, symlink};
use std::path::Path;
use std::process::{Command, Output};

const MIB: usize = 1 << 20;

/// Runs onefs with a time limit: a hang is a failure, not a stuck test.
fn onefs_within(seconds: u32, args: &[&str]) -> Output {
    Command::new("timeout").arg(seconds.to_string()).arg(onefs_bin()).args(args).output().expect("run onefs")
}

/// Runs onefs expecting a one-line refusal that mentions every part.
fn refused(args: &[&str], parts: &[&str]) -> String {
    let out = onefs_within(30, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(out.status.code(), Some(124), "onefs {args:?} hung");
    if out.status.success() && args.first() == Some(&"mount") {
        // Leave nothing mounted behind a failing test.
        let _ = Command::new("umount").arg(args[args.len() - 1]).status();
    }
    assert!(!out.status.success(), "onefs {args:?} succeeded");
    assert_eq!(err.trim_end().lines().count(), 1, "onefs {args:?}: expected one line, got:\n{err}");
    for part in parts {
        assert!(err.contains(part), "{err:?} does not mention {part:?}");
    }
    err
}

/// `onefs fsck STORE`: exit code and stdout.
fn fsck(store: &Path) -> (Option<i32>, String) {
    let out = onefs_within(60, &["fsck", store.to_str().unwrap()]);
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// A store of 64 MiB in 1 MiB blocks with data in blocks 1 and 3 (0-based).
fn store_with_data(s: &Scratch) -> std::path::PathBuf {
    let store = s.path("store");
    create(&store, "64M", "1M");
    let mnt = s.dir("mnt");
    let m = OnefsMount::new(&store, &mnt, &[]);
    pwrite(&m.disk(), MIB as u64, &pattern(1, MIB));
    pwrite(&m.disk(), 3 * MIB as u64, &pattern(3, MIB));
    m.unmount();
    store
}

fn secret(s: &Scratch) -> std::path::PathBuf {
    let outside = s.dir("outside");
    let secret = outside.join("secret");
    fs::write(&secret, b"precious data outside the store").unwrap();
    secret
}

fn assert_untouched(secret: &Path) {
    assert_eq!(fs::read(secret).unwrap(), b"precious data outside the store", "a file outside the store changed");
}

#[test]
fn block_names_that_are_links_directories_or_fifos_are_refused_and_never_followed() {
    let s = Scratch::new();
    let store = store_with_data(&s);
    let secret = secret(&s);
    let mnt = s.dir("mnt2");
    let blk = store.join("blk-00006");
    let plant: [(&str, &dyn Fn(&Path)); 3] = [
        ("a symbolic link", &|p| symlink(&secret, p).unwrap()),
        ("a directory", &|p| fs::create_dir(p).unwrap()),
        ("a FIFO", &|p| nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).unwrap()),
    ];
    for (kind, make) in plant {
        make(&blk);
        refused(&["mount", store.to_str().unwrap(), mnt.to_str().unwrap()], &["blk-00006", kind, "not a regular file"]);
        assert!(!is_mountpoint(&mnt));
        let (code, out) = fsck(&store);
        assert_eq!(code, Some(1), "fsck must report {kind}: {out}");
        assert!(out.contains("blk-00006: block name but") && out.contains(kind), "{out}");
        if blk.is_dir() && !blk.is_symlink() {
            fs::remove_dir(&blk).unwrap();
        } else {
            fs::remove_file(&blk).unwrap();
        }
        assert_untouched(&secret);
    }
    // A block file swapped for a link while the store is not mounted, under
    // a name the image already has, is refused just the same.
    let second = store.join("blk-00002");
    fs::remove_file(&second).unwrap();
    symlink(&secret, &second).unwrap();
    refused(&["mount", store.to_str().unwrap(), mnt.to_str().unwrap()], &["blk-00002", "a symbolic link"]);
    assert_untouched(&secret);
}

#[test]
fn lock_and_clean_mark_planted_as_links_never_change_their_targets() {
    let s = Scratch::new();
    let store = store_with_data(&s);
    let secret = secret(&s);
    let mnt = s.dir("mnt2");
    let (lock, mark) = (store.join("onefs.lock"), store.join("onefs.clean"));

    fs::remove_file(&lock).unwrap();
    symlink(&secret, &lock).unwrap();
    refused(&["mount", store.to_str().unwrap(), mnt.to_str().unwrap()], &["onefs.lock", "a symbolic link"]);
    refused(&["fsck", store.to_str().unwrap()], &["onefs.lock", "a symbolic link"]);
    refused(&["fsck", "--repair", store.to_str().unwrap()], &["onefs.lock", "a symbolic link"]);
    assert_untouched(&secret);
    fs::remove_file(&lock).unwrap();

    // The clean mark is written at unmount: through a link it would
    // truncate and overwrite the target.
    fs::remove_file(&mark).unwrap();
    symlink(&secret, &mark).unwrap();
    let m = OnefsMount::new(&store, &mnt, &[]);
    assert!(pread(&m.disk(), MIB as u64, MIB) == pattern(1, MIB), "data differs");
    m.unmount();
    assert_untouched(&secret);
    assert!(mark.is_symlink(), "the link is left for fsck to report");
    let (code, out) = fsck(&store);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("onefs.clean: a symbolic link (never followed or opened)"), "{out}");
    let repaired = onefs_within(60, &["fsck", "--repair", store.to_str().unwrap()]);
    assert_eq!(repaired.status.code(), Some(0), "{}", String::from_utf8_lossy(&repaired.stdout));
    assert!(!mark.exists() && !mark.is_symlink());
    assert_untouched(&secret);
}

#[test]
fn a_description_that_is_a_fifo_a_device_or_huge_is_refused_at_once() {
    let s = Scratch::new();
    let store = store_with_data(&s);
    let mnt = s.dir("mnt2");
    let meta = store.join("onefs.json");
    let original = fs::read(&meta).unwrap();
    let st = store.to_str().unwrap();
    let cases: [(&str, &dyn Fn(&Path)); 3] = [
        ("a FIFO", &|p| nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).unwrap()),
        ("a symbolic link", &|p| symlink("/dev/zero", p).unwrap()),
        ("longer than 65536 bytes", &|p| fs::write(p, vec![b' '; 1 << 20]).unwrap()),
    ];
    for (what, make) in cases {
        fs::remove_file(&meta).unwrap();
        make(&meta);
        refused(&["mount", st, mnt.to_str().unwrap()], &["onefs.json", what]);
        refused(&["fsck", st], &["onefs.json", what]);
    }
    fs::remove_file(&meta).unwrap();
    fs::write(&meta, original).unwrap();
    OnefsMount::new(&store, &mnt, &[]).unmount();
}

#[test]
fn a_description_edited_by_hand_is_refused_not_remapped() {
    let s = Scratch::new();
    let store = store_with_data(&s);
    let mnt = s.dir("mnt2");
    let meta = store.join("onefs.json");
    let text = fs::read_to_string(&meta).unwrap();
    // 64 MiB of 1 MiB blocks -> 128 MiB of 2 MiB blocks: still consistent,
    // and every stored byte would move.
    let edited = text
        .replace("\"size\": 67108864", "\"size\": 134217728")
        .replace("\"block_size\": 1048576", "\"block_size\": 2097152");
    assert_ne!(edited, text);
    fs::write(&meta, &edited).unwrap();
    let st = store.to_str().unwrap();
    refused(&["mount", st, mnt.to_str().unwrap()], &["onefs.json", "changed after onefs wrote it"]);
    refused(&["fsck", st], &["onefs.json", "changed after onefs wrote it"]);
    assert_eq!(fs::read_to_string(&meta).unwrap(), edited, "nothing was rewritten");
}

#[test]
fn a_stored_block_that_vanished_reads_as_an_error_never_as_zeros() {
    let s = Scratch::new();
    let store = store_with_data(&s);
    let mnt = s.dir("mnt2");
    let m = OnefsMount::new(&store, &mnt, &[]);
    fs::remove_file(store.join("blk-00002")).unwrap();
    let disk = fs::File::open(m.disk()).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = disk.read_exact_at(&mut buf, MIB as u64 + 8192).expect_err("a vanished block must not read as zeros");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // The other block is served as before.
    assert!(pread(&m.disk(), 3 * MIB as u64, MIB) == pattern(3, MIB), "data differs");
    drop(disk);
    m.unmount();
}

#[test]
fn the_store_renamed_while_mounted_keeps_serving_from_where_it_went() {
    let s = Scratch::new();
    let store = store_with_data(&s);
    let moved = s.path("moved");
    let mnt = s.dir("mnt2");
    let mut m = OnefsMount::new(&store, &mnt, &[]);
    fs::rename(&store, &moved).unwrap();
    m.store = moved.clone();
    // Nothing is cached yet: every block file is opened after the rename.
    assert!(pread(&m.disk(), MIB as u64, MIB) == pattern(1, MIB), "data differs");
    assert!(pread(&m.disk(), 3 * MIB as u64, MIB) == pattern(3, MIB), "data differs");
    pwrite(&m.disk(), 10 * MIB as u64, &pattern(10, MIB));
    fs::File::open(m.disk()).unwrap().sync_all().unwrap();
    assert!(moved.join("blk-00011").is_file(), "a new block lands in the moved store");
    assert!(!store.exists(), "nothing is created at the old path");
    m.unmount();
    let m = OnefsMount::new(&moved, &mnt, &[]);
    for block in [1, 3, 10] {
        assert!(pread(&m.disk(), block * MIB as u64, MIB) == pattern(block, MIB), "block {block} data differs");
    }
    m.unmount();
    assert_eq!(fsck(&moved).0, Some(0));
}

#[test]
fn a_mountpoint_that_would_hide_the_store_or_its_files_is_refused() {
    let s = Scratch::new();
    let store = store_with_data(&s);
    let st = store.to_str().unwrap();
    let before = snapshot(&store);
    refused(&["mount", st, st], &[st, "is the store itself"]);
    let inside = store.join("sub");
    fs::create_dir(&inside).unwrap();
    refused(&["mount", st, inside.to_str().unwrap()], &["inside the store"]);
    fs::remove_dir(&inside).unwrap();
    let parent = store.parent().unwrap().to_str().unwrap();
    refused(&["mount", st, parent], &["would hide it"]);
    assert_eq!(snapshot(&store), before, "a refused mount changes nothing in the store");

    let full = s.dir("full");
    fs::write(full.join("keep"), b"x").unwrap();
    refused(&["mount", st, full.to_str().unwrap()], &["is not empty", "keep", "nonempty"]);
    let m = OnefsMount::new(&store, &full, &["-o", "nonempty"]);
    assert!(pread(&m.disk(), MIB as u64, MIB) == pattern(1, MIB), "data differs");
    m.unmount();
    assert_eq!(fs::read(full.join("keep")).unwrap(), b"x");
}

#[test]
fn a_low_open_file_limit_never_fails_writes() {
    let s = Scratch::new();
    let store = s.path("store");
    create(&store, "64M", "4K");
    let mnt = s.dir("mnt");
    let (st, mt) = (store.to_str().unwrap(), mnt.to_str().unwrap());
    let mut mount = Command::new("prlimit");
    mount.args(["--nofile=512:512", onefs_bin(), "mount", st, mt]);
    let m = OnefsMount::start(&mut mount, &store, &mnt);
    // Far more distinct blocks than 512 descriptors.
    const BLOCKS: u64 = 3000;
    let disk = fs::OpenOptions::new().read(true).write(true).open(m.disk()).unwrap();
    for block in 0..BLOCKS {
        disk.write_all_at(&(block + 1).to_le_bytes(), block * 4096 + 100).unwrap();
    }
    disk.sync_all().expect("fsync under a low open-file limit");
    for block in (0..BLOCKS).rev() {
        let mut got = [0u8; 8];
        disk.read_exact_at(&mut got, block * 4096 + 100).unwrap();
        assert_eq!(u64::from_le_bytes(got), block + 1);
    }
    drop(disk);
    m.unmount();
    assert_eq!(block_files(&store).len() as u64, BLOCKS);
}

#[test]
fn a_read_only_store_mounts_read_only_and_is_left_as_it_was() {
    let s = Scratch::new();
    let store = store_with_data(&s);
    let mnt = s.dir("mnt2");
    let before = snapshot(&store);
    {
        let _ro = DevMount::bind_read_only(&store);
        let m = OnefsMount::new(&store, &mnt, &["-o", "ro"]);
        assert!(pread(&m.disk(), MIB as u64, MIB) == pattern(1, MIB), "data differs");
        m.unmount();
    }
    assert_eq!(snapshot(&store), before);

    // An immutable block file (chattr +i) on a writable store: a read-only
    // mount reads it and writes nothing at all, not even the lock record.
    let blk = store.join("blk-00002");
    let _immutable = Immutable::set(&blk);
    let m = OnefsMount::new(&store, &mnt, &["-o", "ro"]);
    assert!(pread(&m.disk(), MIB as u64, MIB) == pattern(1, MIB), "data differs");
    m.unmount();
    assert_eq!(snapshot(&store), before, "a read-only mount changed the store");
}
