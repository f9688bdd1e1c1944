//! onefs under a real systemd: boots systemd as PID 1 in a systemd-nspawn
//! container over a cached debootstrap'ed Debian (tests/systemd/box.sh; the
//! first run debootstraps into /var/tmp/onefs-systemd-rootfs, a minute or
//! two), installs the built onefs with systemd/install.sh and runs
//! tests/systemd/inner.sh: start reaches active only with disk.img visible,
//! reload, one unit per definition, kill -9 + Restart=, stop unmounts,
//! onefs.service, fstab `fuse.onefs` + ext4-in-disk.img with `mount -a` and
//! as generated .mount units.
//!
//! Needs root and the packages systemd-container and debootstrap.
//! ONEFS_SKIP_SYSTEMD_TEST=1 skips it (saying so).

use std::path::Path;
use std::process::Command;

#[test]
fn onefs_under_a_real_systemd() {
    if std::env::var_os("ONEFS_SKIP_SYSTEMD_TEST").is_some() {
        eprintln!("SKIPPED: ONEFS_SKIP_SYSTEMD_TEST is set");
        return;
    }
    assert!(nix::unistd::geteuid().is_root(), "the systemd container test needs root");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/systemd/run.sh");
    let out = Command::new(&script).arg(env!("CARGO_BIN_EXE_onefs")).output().expect("cannot run tests/systemd/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL SYSTEMD TESTS PASSED"),
        "tests/systemd/run.sh failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    eprintln!("{stdout}");
}
