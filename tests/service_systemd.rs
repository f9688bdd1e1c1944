//! onefs under a real systemd: boots systemd as PID 1 in a systemd-nspawn
//! container over a cached debootstrap'ed Debian (tests/systemd/box.sh; the
//! first run debootstraps into /var/tmp/onefs-systemd-rootfs, a minute or
//! two), installs the built onefs with systemd/install.sh and runs
//! tests/systemd/inner.sh: start reaches active only with disk.img visible,
//! reload, one unit per definition, kill -9 + Restart=, stop unmounts,
//! onefs.service, fstab `fuse.onefs` + ext4-in-disk.img with `mount -a` and
//! as generated .mount units.
//!
//! Needs root and the packages systemd-container and debootstrap; where
//! they cannot be had, `ONEFS_TEST_ALLOW_SKIP=systemd` lets it skip (saying
//! so). `cargo test -- --skip under_a_real_systemd` leaves it out by choice.

mod common;

use common::*;
use std::process::Command;

#[test]
fn onefs_under_a_real_systemd() {
    require_root();
    if !require_systemd_container() {
        return;
    }
    let script = repo("tests/systemd/run.sh");
    let out = Command::new(&script).arg(onefs_bin()).output().expect("cannot run tests/systemd/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL SYSTEMD TESTS PASSED"),
        "tests/systemd/run.sh failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    eprintln!("{stdout}");
}
