//! `onefs run`, `onefs daemon`, `onefs reload`, `onefs status`,
//! `onefs cleanup` and the `mount.fuse.onefs` helper, on the host (root and
//! /dev/fuse needed), with a fake sd_notify socket.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A scratch directory whose mounts are lazily detached and whose processes
/// are killed on drop, even when the test fails.
struct Service {
    scratch: Scratch,
    children: Vec<Child>,
}

impl std::ops::Deref for Service {
    type Target = Scratch;
    fn deref(&self) -> &Scratch {
        &self.scratch
    }
}

impl Service {
    fn new() -> Self {
        Self { scratch: Scratch::new(), children: vec![] }
    }
    /// Writes CONF/NAME.toml for a store and mountpoint under the scratch dir.
    fn define(&self, name: &str, extra: &str) -> (PathBuf, PathBuf) {
        let store = self.path(&format!("store-{name}"));
        let mnt = self.dir(&format!("mnt-{name}"));
        let conf = self.dir("conf");
        std::fs::write(
            conf.join(format!("{name}.toml")),
            format!(
                "store = \"{}\"\nmountpoint = \"{}\"\n{extra}\n[create]\nsize = \"1G\"\nblock_size = \"1M\"\n",
                store.display(),
                mnt.display()
            ),
        )
        .expect("write definition");
        (store, mnt)
    }
    fn spawn(&mut self, args: &[&str], env: &[(&str, &str)]) -> u32 {
        let child = Command::new(onefs_bin())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path("stderr")).expect("stderr file"))
            .spawn()
            .expect("spawn onefs");
        let pid = child.id();
        self.children.push(child);
        pid
    }
    fn wait_exit(&mut self, pid: u32) -> std::process::ExitStatus {
        let i = self.children.iter().position(|c| c.id() == pid).expect("known child");
        let mut child = self.children.remove(i);
        wait_child(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("onefs pid {pid} did not exit; stderr: {}", self.stderr());
        })
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("stderr")).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
        if let Ok(entries) = std::fs::read_dir(self.root()) {
            for e in entries.flatten() {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// A fake NOTIFY_SOCKET that collects what onefs tells systemd.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl Notify {
    fn new(scratch: &Scratch) -> Self {
        let path = scratch.path("notify");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        Self { socket, path, seen: vec![] }
    }
    /// Waits for a message containing `line`; `check` runs the moment it
    /// arrives. Returns the message.
    fn expect(&mut self, line: &str, timeout: Duration, check: impl FnOnce(&str)) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            assert!(Instant::now() < deadline, "no {line:?} from onefs; saw {:?}", self.seen);
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if msg.lines().any(|l| l == line) {
                    check(&msg);
                    return msg;
                }
            }
        }
    }
}

#[test]
fn run_is_ready_only_when_live_pings_the_watchdog_reloads_and_stops_cleanly() {
    let mut s = Service::new();
    let (store, mnt) = s.define("data", "mode = \"0640\"");
    let mut notify = Notify::new(&s);
    let conf = s.path("conf");
    let pid = s.spawn(
        &["run", "data", "--config-dir", conf.to_str().unwrap()],
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "300000"),
            ("ONEFS_UNIT", "onefs@data.service"),
        ],
    );
    let ready = notify.expect("READY=1", Duration::from_secs(20), |_| {
        // At the moment READY=1 arrives the mount must already be live.
        assert!(is_onefs_mount(&mnt), "READY=1 before the mount is in mountinfo");
        let meta = std::fs::metadata(mnt.join("disk.img")).expect("disk.img visible at READY=1");
        assert_eq!(meta.len(), 1 << 30);
    });
    assert!(ready.contains(&format!("STATUS=serving {} at {}", store.display(), mnt.display())), "{ready}");
    notify.expect("WATCHDOG=1", Duration::from_secs(5), |_| {});
    notify.expect("WATCHDOG=1", Duration::from_secs(5), |_| {});

    // status names the definition, the unit and what is stored.
    pwrite(&mnt.join("disk.img"), 0, &vec![7u8; 3 << 20]);
    let out = onefs(&["status", "data", "--json", "--config-dir", conf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json[0]["state"], "mounted", "{json}");
    assert_eq!(json[0]["unit"], "onefs@data.service", "{json}");
    assert_eq!(json[0]["pid"], pid, "{json}");
    assert_eq!(json[0]["blocks_stored"], 3, "{json}");
    assert!(json[0]["bytes_stored"].as_u64().unwrap_or(0) >= 3 << 20, "{json}");

    // A second mount of the store names the unit holding it.
    let other = s.dir("other");
    let out = onefs(&["mount", store.to_str().unwrap(), other.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("onefs@data.service"), "{}", text(&out));

    // A reload with nothing changed: RELOADING=1 then READY=1, and `onefs reload` says so.
    let out = onefs(&["reload", "--pid", &pid.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("reloaded: serving"), "{}", text(&out));
    notify.expect("RELOADING=1", Duration::from_secs(5), |_| {});
    notify.expect("READY=1", Duration::from_secs(5), |_| {});

    // A change that needs a remount is reported, not applied.
    let def = conf.join("data.toml");
    let changed = std::fs::read_to_string(&def).unwrap().replace("mode = \"0640\"", "read_only = true");
    std::fs::write(&def, changed).unwrap();
    let out = onefs(&["reload", "--pid", &pid.to_string()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mount options changed; this needs a remount"),
        "{}",
        text(&out)
    );
    pwrite(&mnt.join("disk.img"), 0, b"still writable");
    std::fs::write(&def, "store = 5\n").unwrap();
    let out = onefs(&["reload", "--pid", &pid.to_string()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("data.toml:1: key `store`"), "{}", text(&out));
    assert!(is_onefs_mount(&mnt));

    // SIGTERM: STOPPING=1, unmounted, exit 0.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    notify.expect("STOPPING=1", Duration::from_secs(10), |_| {});
    let status = s.wait_exit(pid);
    assert!(status.success(), "{status:?}: {}", s.stderr());
    assert!(!is_onefs_mount(&mnt));
    assert!(!s.stderr().contains("Unmount failed"), "{}", s.stderr());
}

#[test]
fn daemon_serves_every_good_definition_and_reload_adds_and_removes() {
    let mut s = Service::new();
    let (_, mnt_a) = s.define("a", "");
    let (_, mnt_b) = s.define("b", "uid = 1\n");
    let conf = s.path("conf");
    std::fs::write(conf.join("broken.toml"), "store = \"/x\"\nmountpoint = \"/y\"\ncolour = \"red\"\n").unwrap();
    let mut notify = Notify::new(&s);
    let pid = s.spawn(
        &["daemon", "--config-dir", conf.to_str().unwrap()],
        &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())],
    );
    let ready = notify.expect("READY=1", Duration::from_secs(20), |_| {
        assert!(is_onefs_mount(&mnt_a) && is_onefs_mount(&mnt_b));
    });
    assert!(ready.contains("STATUS=serving 2 mounts"), "{ready}");
    assert!(ready.contains("failed: broken"), "{ready}");
    assert!(s.stderr().contains("broken.toml:3: key `colour`: unknown key"), "{}", s.stderr());

    // Remove a, add c: a is unmounted, c mounted, b untouched.
    std::fs::remove_file(conf.join("a.toml")).unwrap();
    let (_, mnt_c) = s.define("c", "");
    std::fs::remove_file(conf.join("broken.toml")).unwrap();
    let out = onefs(&["reload", "--pid", &pid.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(is_onefs_mount(&mnt_c) && is_onefs_mount(&mnt_b));
    wait_until("a unmounted", Duration::from_secs(10), || !is_onefs_mount(&mnt_a));

    let out = onefs(&["status", "--json", "--config-dir", conf.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<&str> = json.as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(names.contains(&"b") && names.contains(&"c") && !names.contains(&"a"), "{json}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    notify.expect("STOPPING=1", Duration::from_secs(10), |_| {});
    assert!(s.wait_exit(pid).success(), "{}", s.stderr());
    assert!(!is_onefs_mount(&mnt_b) && !is_onefs_mount(&mnt_c));
}

#[test]
fn run_refuses_unsafe_names_and_names_the_bad_key() {
    let s = Service::new();
    let conf = s.dir("conf");
    for name in ["../etc/passwd", "a/b", ".hidden"] {
        let out = onefs(&["run", name, "--config-dir", conf.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("definition name") && err.lines().count() == 1, "{}", text(&out));
    }
    std::fs::write(conf.join("x.toml"), "store = \"/s\"\nmountpoint = \"/m\"\nthreads = \"many\"\n").unwrap();
    let out = onefs(&["run", "x", "--config-dir", conf.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("x.toml:3: key `threads`: expected an integer, found string"),
        "{}",
        text(&out)
    );
}

#[test]
fn cleanup_clears_the_dead_mount_of_a_killed_daemon() {
    let mut s = Service::new();
    let (_, mnt) = s.define("data", "");
    let conf = s.path("conf");
    let pid = s.spawn(&["run", "data", "--config-dir", conf.to_str().unwrap()], &[]);
    wait_until("mounted", Duration::from_secs(20), || mnt.join("disk.img").exists());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    s.wait_exit(pid);
    assert_eq!(nix::sys::statfs::statfs(&mnt).err(), Some(nix::errno::Errno::ENOTCONN), "a dead mount");
    let out = onefs(&["status", "data", "--config-dir", conf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("data: dead"), "{}", text(&out));
    let out = onefs(&["cleanup", "data", "--config-dir", conf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!is_onefs_mount(&mnt));
    std::fs::metadata(&mnt).expect("mountpoint usable again");
}

#[test]
fn mount_helper_returns_once_live_validates_with_f_and_fails_with_32() {
    let s = Service::new();
    let (store, mnt) = s.define("data", "");
    let conf = s.path("conf");
    let helper = s.path("mount.fuse.onefs");
    std::os::unix::fs::symlink(onefs_bin(), &helper).unwrap();
    let run =
        |args: &[&str]| Command::new(&helper).args(args).env("ONEFS_CONFIG_DIR", &conf).output().expect("run helper");
    // -f: validate only (the store does not exist yet, [create] would make it).
    let out = run(&["data", mnt.to_str().unwrap(), "-f", "-v", "-o", "rw,_netdev,nofail"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("would mount"), "{}", text(&out));
    assert!(!is_onefs_mount(&mnt) && !store.exists());

    // The options mount(8) keeps are ignored; the helper returns once live.
    let out = run(&["data", mnt.to_str().unwrap(), "-n", "-o", "ro,_netdev,nofail,users,noatime"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(is_onefs_mount(&mnt), "helper returned before the mount was live");
    let err = std::fs::OpenOptions::new().write(true).open(mnt.join("disk.img")).expect_err("ro");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));

    // Mounting the same store again fails with 32 and the reason.
    let other = s.dir("other");
    let out = run(&[store.to_str().unwrap(), other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(32), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already mounted"), "{}", text(&out));
    let out = run(&["nosuch", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(32), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no definition"), "{}", text(&out));
    let out = run(&["data", other.to_str().unwrap(), "-o", "bogus"]);
    assert_eq!(out.status.code(), Some(32), "{}", text(&out));

    nix::mount::umount2(&mnt, nix::mount::MntFlags::empty()).expect("umount");
    wait_store_released(&store);
}
