//! A stopped onefs (SIGSTOP: every request to its mount waits) must not
//! freeze `onefs status`, `onefs mount` of other stores, `onefs daemon` or
//! `onefs cleanup`: they report the mount as not answering and go on.

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a command may take before the test kills it and fails.
const BOUND: Duration = Duration::from_secs(30);
/// What "finishes within a few seconds" means here.
const QUICK: Duration = Duration::from_secs(15);

/// Kills `child` if it has not exited within BOUND, and fails the test.
fn wait_bounded(mut child: Child, what: &str) -> (Output, Duration) {
    let started = Instant::now();
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => break,
            None if started.elapsed() > BOUND => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {BOUND:?}: it hangs on the stopped mount");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let elapsed = started.elapsed();
    (child.wait_with_output().expect("collect output"), elapsed)
}

/// Runs `onefs ARGS` with the BOUND.
fn onefs_bounded(args: &[&str]) -> (Output, Duration) {
    let child = Command::new(onefs_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run onefs");
    wait_bounded(child, &format!("onefs {args:?}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A process stopped with SIGSTOP until dropped (SIGCONT). Declare it after
/// the mount it stops: a stopped FUSE daemon with a request pending blocks
/// the unmount, so it must be continued first.
struct Stopped(i32);

impl Stopped {
    fn new(pid: i32) -> Self {
        let stopped = Stopped(pid);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        let deadline = Instant::now() + Duration::from_secs(10);
        // /proc/PID/stat: "PID (comm) STATE ...".
        let state = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()))
        };
        while state() != Some('T') {
            assert!(Instant::now() < deadline, "onefs pid {pid} did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGCONT);
    }
}

/// The `onefs status --json` entry for `mountpoint`.
fn status_of(json: &serde_json::Value, mountpoint: &Path) -> serde_json::Value {
    let entries = json.as_array().expect("a JSON array");
    entries
        .iter()
        .find(|e| e["mountpoint"].as_str() == mountpoint.to_str())
        .cloned()
        .unwrap_or_else(|| panic!("no entry for {}: {json}", mountpoint.display()))
}

#[test]
fn a_stopped_onefs_does_not_freeze_status_or_mounts_of_other_stores() {
    let s = Scratch::new();
    let (a, b, c) = (s.path("a"), s.path("b"), s.path("c"));
    let (mnt_a, mnt_b) = (s.dir("mnt-a"), s.dir("mnt-b"));
    for store in [&a, &b, &c] {
        create(store, "64M", "1M");
    }
    let onefs_a = OnefsMount::new(&a, &mnt_a, &[]);
    let pid_a = onefs_a.pid();
    let stopped = Stopped::new(pid_a);

    // status: finishes, says which mount does not answer, still shows who serves it.
    let (out, took) = onefs_bounded(&["status", "--json", "--config-dir", s.path("no-conf").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(took < QUICK, "status took {took:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let entry = status_of(&json, &mnt_a);
    assert_eq!(entry["state"], "not answering", "{entry}");
    assert_eq!(entry["pid"], pid_a, "{entry}");
    let (out, took) = onefs_bounded(&["status", "--config-dir", s.path("no-conf").to_str().unwrap()]);
    assert!(took < QUICK, "status took {took:?}");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.lines().any(|l| l.contains(": not answering ") && l.contains(mnt_a.to_str().unwrap())),
        "{}",
        text(&out)
    );

    // Another store at another mountpoint mounts, undelayed.
    let (out, took) = onefs_bounded(&["mount", b.to_str().unwrap(), mnt_b.to_str().unwrap()]);
    let onefs_b = OnefsMount { store: b.clone(), mountpoint: mnt_b.clone() };
    assert!(out.status.success(), "{}", text(&out));
    assert!(took < QUICK, "mount took {took:?}");
    pwrite(&onefs_b.disk(), MIB, b"next to a stopped neighbour");
    assert_eq!(pread(&onefs_b.disk(), MIB, 27), b"next to a stopped neighbour");
    let (out, _) = onefs_bounded(&["status", "--json", "--config-dir", s.path("no-conf").to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(status_of(&json, &mnt_b)["state"], "mounted", "{json}");
    assert_eq!(status_of(&json, &mnt_a)["state"], "not answering", "{json}");

    // A mount at (or under) the stopped mount fails in one line naming it.
    for at in [mnt_a.clone(), mnt_a.join("sub")] {
        let (out, took) = onefs_bounded(&["mount", c.to_str().unwrap(), at.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(took < QUICK, "mount at {} took {took:?}", at.display());
        assert!(err.contains("not answering") && err.contains(at.to_str().unwrap()), "{}", text(&out));
        assert_eq!(err.lines().count(), 1, "{}", text(&out));
    }

    drop(stopped);
    onefs_b.unmount();
    onefs_a.unmount();
}

#[test]
fn daemon_and_cleanup_go_on_past_a_definition_whose_mountpoint_is_stopped() {
    let s = Scratch::new();
    let (a, good, stuck) = (s.path("a"), s.path("good"), s.path("stuck"));
    let (mnt_a, mnt_good) = (s.dir("mnt-a"), s.dir("mnt-good"));
    for store in [&a, &good, &stuck] {
        create(store, "64M", "1M");
    }
    let conf = s.dir("conf");
    for (name, store, mnt) in [("good", &good, &mnt_good), ("stuck", &stuck, &mnt_a)] {
        std::fs::write(
            conf.join(format!("{name}.toml")),
            format!("store = \"{}\"\nmountpoint = \"{}\"\n", store.display(), mnt.display()),
        )
        .expect("write definition");
    }
    let onefs_a = OnefsMount::new(&a, &mnt_a, &[]);
    let stopped = Stopped::new(onefs_a.pid());

    let stderr = s.path("daemon.stderr");
    let daemon = Command::new(onefs_bin())
        .args(["daemon", "--config-dir", conf.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn onefs daemon");
    // Stopped (killed if need be) before anything else is undone.
    let daemon = Daemon { child: daemon, mountpoint: mnt_good.clone() };
    let started = Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
        if log.contains("ready: ") {
            break log;
        }
        assert!(started.elapsed() < BOUND, "the daemon never got ready: it hangs on the stopped mount\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(log.contains("failed: stuck") && log.contains("not answering"), "{log}");
    assert!(is_mountpoint(&mnt_good), "{log}");

    let (out, took) = onefs_bounded(&["status", "--json", "--config-dir", conf.to_str().unwrap()]);
    assert!(took < QUICK, "status took {took:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(status_of(&json, &mnt_good)["state"], "mounted", "{json}");
    // The definition is not mounted; the stopped mount in its place is listed on its own.
    let entries = json.as_array().expect("a JSON array");
    let stuck_def = entries.iter().find(|e| e["name"] == "stuck").expect("the stuck definition");
    assert_eq!(stuck_def["state"], "not mounted", "{json}");
    let in_its_place = entries
        .iter()
        .find(|e| e["name"].is_null() && e["mountpoint"].as_str() == mnt_a.to_str())
        .expect("the stopped mount");
    assert_eq!(in_its_place["state"], "not answering", "{json}");
    let (out, took) = onefs_bounded(&["status", "stuck", "--config-dir", conf.to_str().unwrap()]);
    assert!(took < QUICK, "status stuck took {took:?}");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    // cleanup clears nothing here, but must not hang on the stopped mount.
    let (out, took) = onefs_bounded(&["cleanup", "--config-dir", conf.to_str().unwrap()]);
    assert!(took < QUICK, "cleanup took {took:?}");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not answering"), "{}", text(&out));

    drop(daemon);
    drop(stopped);
    onefs_a.unmount();
}

/// A running `onefs daemon`: SIGTERM on drop, SIGKILL if it has not exited
/// within 20 s, then its mountpoint is detached.
struct Daemon {
    child: Child,
    mountpoint: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
    }
}
